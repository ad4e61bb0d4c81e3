"""Signed checkpoints in the C2SP checkpoint format (a signed note), text an auditor archives.

```
<origin>
<tree size>
<base64 root hash>
cart-course-time <ISO 8601 UTC>
cart-course-notification <highest notification id covered>

— <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>
```

The signature covers the note's text: every line before the blank line, each ending with a
newline (C2SP signed-note). The two extension lines are covered by the signature like the rest.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Sequence

import attrs

from ..keys import PublicKey, SigningKey

#: The default origin line: the log's name (``CART_COURSE_LOG_ORIGIN`` to name a deployment).
DEFAULT_ORIGIN = "cart-course"
DASH = "\u2014"
TIME_LINE = "cart-course-time "
NOTIFICATION_LINE = "cart-course-notification "


class CheckpointFormatError(ValueError):
    """Not a checkpoint, or one whose signature does not verify with the keys given."""


@attrs.frozen(kw_only=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        data = base64.b64encode(self.key_id + self.signature).decode()
        return f"{DASH} {self.name} {data}\n"


@attrs.frozen(kw_only=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    issued_at: str
    up_to: int
    signatures: tuple[Signature, ...] = ()

    def body(self) -> str:
        return (
            f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"
            f"{TIME_LINE}{self.issued_at}\n{NOTIFICATION_LINE}{self.up_to}\n"
        )

    def text(self) -> str:
        return self.body() + "\n" + "".join(s.line() for s in self.signatures)

    def signed(self, key: SigningKey) -> Checkpoint:
        sig = Signature(name=key.name, key_id=key.id, signature=key.sign(self.body().encode()))
        return attrs.evolve(self, signatures=(*self.signatures, sig))

    def verified_by(self, keys: Sequence[PublicKey]) -> PublicKey | None:
        """The first of ``keys`` that signed this note (None: none of them did)."""
        message = self.body().encode()
        for sig in self.signatures:
            for key in keys:
                if (
                    key.name == sig.name
                    and key.id == sig.key_id
                    and key.verify(message, sig.signature)
                ):
                    return key
        return None

    @property
    def key_names(self) -> list[str]:
        return [f"{s.name} ({s.key_id.hex()})" for s in self.signatures]


def new_checkpoint(origin: str, size: int, root: bytes, up_to: int, now: dt.datetime) -> Checkpoint:
    stamp = now.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return Checkpoint(origin=origin, size=size, root=root, issued_at=stamp, up_to=up_to)


def parse_checkpoint(text: str) -> Checkpoint:
    """A checkpoint as ``audit checkpoint`` writes it; :class:`CheckpointFormatError` naming
    what is wrong otherwise."""
    if "\n\n" not in text:
        raise CheckpointFormatError(
            "not a signed checkpoint: no blank line before the signature lines"
        )
    body, _, sigs = text.partition("\n\n")
    lines = body.split("\n")
    if len(lines) < 3:
        raise CheckpointFormatError("not a checkpoint: origin, size and root lines expected")
    origin, size_text, root_text, *extensions = lines
    if not size_text.isdigit():
        raise CheckpointFormatError(f"checkpoint size {size_text!r} is not a number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        root = b""
    if len(root) != 32:
        raise CheckpointFormatError("the checkpoint's root hash is not base64 of 32 bytes")
    issued_at, up_to = "", -1
    for line in extensions:
        if line.startswith(TIME_LINE):
            issued_at = line[len(TIME_LINE) :]
        elif line.startswith(NOTIFICATION_LINE) and line[len(NOTIFICATION_LINE) :].isdigit():
            up_to = int(line[len(NOTIFICATION_LINE) :])
    if not issued_at or up_to < 0:
        raise CheckpointFormatError("the checkpoint lacks its cart-course time or position line")
    signatures = []
    for line in sigs.splitlines():
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise CheckpointFormatError(f"not a signature line: {line[:60]!r}")
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 68:
            raise CheckpointFormatError(f"signature of {parts[1]!r} is not an Ed25519 signature")
        signatures.append(Signature(name=parts[1], key_id=raw[:4], signature=raw[4:]))
    if not signatures:
        raise CheckpointFormatError("the checkpoint is not signed")
    checkpoint = Checkpoint(
        origin=origin,
        size=int(size_text),
        root=root,
        issued_at=issued_at,
        up_to=up_to,
        signatures=tuple(signatures),
    )
    if checkpoint.body() != body + "\n":
        raise CheckpointFormatError("the checkpoint's text is not in its canonical form")
    return checkpoint
