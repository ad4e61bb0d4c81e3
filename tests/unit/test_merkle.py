"""RFC 9162 section 2.1: the tree, inclusion and consistency proofs, against the definition."""

from __future__ import annotations

from collections.abc import Sequence

from cart_course.ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH as RFC 9162 2.1.1 defines it, recursively."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


LEAVES = [leaf_hash(f"row {i}".encode()) for i in range(70)]


def test_root_and_frontier_equal_the_definition() -> None:
    frontier = Frontier()
    for n in range(0, 70):
        assert root(LEAVES, n) == mth(LEAVES[:n])
        assert frontier.root() == mth(LEAVES[:n])
        again = Frontier.from_json(frontier.to_json())
        assert again.size == n and again.root() == frontier.root()
        frontier.append(LEAVES[n])


def test_known_answer_from_rfc_leaf_and_node_prefixes() -> None:
    assert leaf_hash(b"") == bytes.fromhex(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert root([], 0) == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_every_inclusion_proof_verifies_and_nothing_else_does() -> None:
    for n in range(1, 40):
        top = mth(LEAVES[:n])
        for i in range(n):
            proof = inclusion_proof(LEAVES, i, n)
            assert verify_inclusion(LEAVES[i], i, n, proof, top)
            assert not verify_inclusion(LEAVES[i + 1], i, n, proof, top)
            if n > 1:
                assert not verify_inclusion(LEAVES[i], (i + 1) % n, n, proof, top)


def test_every_consistency_proof_verifies_and_a_changed_leaf_does_not() -> None:
    for n in range(1, 40):
        new_root = mth(LEAVES[:n])
        for m in range(1, n + 1):
            proof = consistency_proof(LEAVES, m, n)
            old_root = mth(LEAVES[:m])
            assert verify_consistency(m, n, old_root, new_root, proof), (m, n)
            changed = list(LEAVES[:n])
            changed[m - 1] = leaf_hash(b"forged")
            assert not verify_consistency(m, n, mth(changed[:m]), new_root, proof)
            assert not verify_consistency(m, n, old_root, mth(changed), proof) or m == n
