"""The service's signing key: Ed25519, kept in a file outside the database.

Files use the signed-note key formats (golang.org/x/mod/sumdb/note, C2SP signed-note), one line:

- private key (``CART_COURSE_SIGNING_KEY`` names the file; keep it with the service only):
  ``PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x01 || 32-byte seed)>``
- public key (what auditors hold; a file may list several, one a line, for rotation):
  ``<name>+<key id, 8 hex>+<base64(0x01 || 32-byte public key)>``

The key id is the first four bytes of SHA-256(name || "\\n" || 0x01 || public key), as the
signed-note format defines it; every signature line names the key name and starts with the id,
so a verifier holding several public keys (old and new, after a rotation) picks the right one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import attrs
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

#: The signed-note algorithm byte of Ed25519.
ALG_ED25519 = 0x01
DEFAULT_KEY_NAME = "cart-course"
PRIVATE_PREFIX = "PRIVATE+KEY+"


class KeyFormatError(ValueError):
    """A key file that is not a key of this format; says which file and why."""


def key_id(name: str, public: bytes) -> bytes:
    """The signed-note key id: 4 bytes of SHA-256(name || "\\n" || 0x01 || public key)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name) or not name.isprintable():
        raise KeyFormatError(
            f"key name {name!r}: printable, without spaces or '+' (e.g. {DEFAULT_KEY_NAME})"
        )
    return name


@attrs.frozen
class PublicKey:
    name: str
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public)

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def line(self) -> str:
        data = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.id_hex}+{data}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            verifier = eddsa.new(eddsa.import_public_key(self.public), "rfc8032")
            verifier.verify(message, signature)
        except (ValueError, TypeError):
            return False
        return True


@attrs.frozen
class SigningKey:
    name: str
    seed: bytes = attrs.field(repr=False)

    @property
    def public_key(self) -> PublicKey:
        key = eddsa.import_private_key(self.seed)
        return PublicKey(self.name, key.public_key().export_key(format="raw"))

    @property
    def id(self) -> bytes:
        return self.public_key.id

    def sign(self, message: bytes) -> bytes:
        signer = eddsa.new(eddsa.import_private_key(self.seed), "rfc8032")
        signature: bytes = signer.sign(message)
        return signature

    def line(self) -> str:
        data = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"{PRIVATE_PREFIX}{self.name}+{self.id.hex()}+{data}"


def generate(name: str = DEFAULT_KEY_NAME) -> SigningKey:
    key = ECC.generate(curve="Ed25519")
    return SigningKey(_check_name(name), bytes(key.seed))


def _parse(line: str, where: str, *, private: bool) -> tuple[str, bytes]:
    text = line.strip()
    if private:
        if not text.startswith(PRIVATE_PREFIX):
            raise KeyFormatError(f"{where}: not a private key (it starts with {PRIVATE_PREFIX})")
        text = text[len(PRIVATE_PREFIX) :]
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise KeyFormatError(f"{where}: expected <name>+<key id>+<base64 key>")
    name, hex_id, data = parts
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{where}: the key is not base64") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise KeyFormatError(f"{where}: not an Ed25519 key (0x01 and 32 bytes)")
    _check_name(name)
    key = raw[1:]
    public = eddsa.import_private_key(key).public_key().export_key(format="raw") if private else key
    if key_id(name, public).hex() != hex_id.lower():
        raise KeyFormatError(f"{where}: the key id {hex_id} does not match the key")
    return name, key


def read_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"cannot read the signing key {str(path)!r}: {exc}") from None
    name, seed = _parse(text, f"signing key {str(path)!r}", private=True)
    return SigningKey(name, seed)


def parse_public_keys(text: str, where: str) -> list[PublicKey]:
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, public = _parse(line, f"{where} line {number}", private=False)
            keys.append(PublicKey(name, public))
    if not keys:
        raise KeyFormatError(f"{where}: holds no public key")
    return keys


def read_public_keys(paths: Iterable[str | os.PathLike[str]]) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFormatError(f"cannot read the public key {str(path)!r}: {exc}") from None
        keys += parse_public_keys(text, f"public key {str(path)!r}")
    return keys


def write_key_pair(key: SigningKey, out: Path) -> tuple[Path, Path]:
    """Write ``signing.key`` (mode 0600, never overwritten) and ``signing.pub`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    private = out / f"{key.name}.key"
    public = out / f"{key.name}.pub"
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path} exists; a key is never overwritten")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key.line() + "\n")
    public.write_text(key.public_key.line() + "\n", encoding="utf-8")
    return private, public
