"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1, over leaf hashes.

- leaf hash: SHA-256(0x00 || leaf bytes); node hash: SHA-256(0x01 || left || right);
- the tree of n leaves: the left subtree holds the largest power of two below n leaves;
- inclusion proofs (2.1.3) and consistency proofs (2.1.4), with the verification algorithms of
  2.1.3.2 and 2.1.4.2, which use nothing but the proof, the sizes and the roots.

Everything here is pure: the functions take the leaf hashes (bytes of 32) as a sequence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    digest = _sha256(b"\x00")
    digest.update(data)
    return digest.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = _sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


class Frontier:
    """The perfect subtrees of the leaves appended so far (at most log2(n) hashes): the root of
    the tree of every leaf appended, at any time, in O(log n); appending is O(1) amortised."""

    __slots__ = ("size", "stack")

    def __init__(self, size: int = 0, stack: Iterable[tuple[int, bytes]] = ()) -> None:
        self.size = size
        self.stack: list[tuple[int, bytes]] = list(stack)

    def append(self, leaf: bytes) -> None:
        size, digest = 1, leaf
        stack = self.stack
        while stack and stack[-1][0] == size:
            left = stack.pop()[1]
            digest = node_hash(left, digest)
            size <<= 1
        stack.append((size, digest))
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        digest = self.stack[-1][1]
        for _size, left in reversed(self.stack[:-1]):
            digest = node_hash(left, digest)
        return digest

    def to_json(self) -> list[list[object]]:
        return [[size, digest.hex()] for size, digest in self.stack]

    @classmethod
    def from_json(cls, data: list[list[object]]) -> Frontier:
        stack = [(int(str(size)), bytes.fromhex(str(digest))) for size, digest in data]
        return cls(sum(size for size, _ in stack), stack)


def root(leaves: Sequence[bytes], size: int | None = None) -> bytes:
    """MTH of the first ``size`` leaves (all by default)."""
    frontier = Frontier()
    frontier.extend(leaves[: len(leaves) if size is None else size])
    return frontier.root()


def _subtree(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 1:
        return leaves[lo]
    k = _split(n)
    return node_hash(_subtree(leaves, lo, lo + k), _subtree(leaves, lo + k, hi))


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 2.1.3.1."""
    n = len(leaves) if size is None else size
    if not 0 <= index < n <= len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {n} leaves")
    proof: list[bytes] = []
    lo, hi = 0, n
    # Walk down from the root; siblings are collected top-down, the proof lists them bottom-up.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(_subtree(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_subtree(leaves, lo, lo + k))
            lo = lo + k
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    """RFC 9162 2.1.3.2: whether ``leaf`` (a leaf hash) is leaf ``index`` of the tree of
    ``size`` leaves whose root is ``root_hash``."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def consistency_proof(leaves: Sequence[bytes], old: int, new: int | None = None) -> list[bytes]:
    """PROOF(old, D[new]) of RFC 9162 2.1.4.1."""
    n = len(leaves) if new is None else new
    if not 0 < old <= n <= len(leaves):
        raise ValueError(f"no consistency proof from {old} to {n} leaves")
    return _subproof(leaves, old, 0, n, True)


def _subproof(leaves: Sequence[bytes], m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if complete else [_subtree(leaves, lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(leaves, m, lo, lo + k, complete), _subtree(leaves, lo + k, hi)]
    return [*_subproof(leaves, m - k, lo + k, hi, False), _subtree(leaves, lo, lo + k)]


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: whether the tree of ``new`` leaves with root ``new_root`` extends the
    tree of ``old`` leaves with root ``old_root`` (its first ``old`` leaves unchanged)."""
    if not 0 < old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node of the path
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
