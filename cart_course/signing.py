"""E-signatures nobody can forge with database access (21 CFR 11.50/11.70).

Each ``MilestoneSigned`` event recorded while the service has a signing key carries
``service_signature``: ``<key name> <key id, hex> <base64 Ed25519 signature>`` over the
signature's manifestation, bound to its record (:func:`message`): the stream and version of the
signature event, the signer's id and role (from the token, never from the body), the printed
name, the meaning and milestone, the signed event's version and hash, the hash of the whole
history before the signature (``prev_hash``), the record time and the clinical time. A row
copied to another record, edited, or made up in the database does not verify without the key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from .course import canonical
from .keys import PublicKey, SigningKey

MESSAGE_FORMAT = "cart-course-esignature/1"
FIELD = "service_signature"


def message(stream: str, version: int, recorded_at: str, fields: Mapping[str, Any]) -> bytes:
    return canonical(
        {
            "format": MESSAGE_FORMAT,
            "stream": stream,
            "version": version,
            "recorded_at": recorded_at,
            "signer": fields.get("actor"),
            "role": fields.get("role"),
            "printed_name": fields.get("printed_name"),
            "meaning": fields.get("meaning"),
            "milestone": fields.get("milestone"),
            "signs_version": fields.get("signs_version"),
            "signed_hash": fields.get("signed_hash"),
            "history_hash": fields.get("prev_hash"),
            "occurred_at": fields.get("occurred_at"),
        }
    )


def sign(
    key: SigningKey, stream: str, version: int, recorded_at: str, fields: Mapping[str, Any]
) -> str:
    signature = key.sign(message(stream, version, recorded_at, fields))
    return f"{key.name} {key.id.hex()} {base64.b64encode(signature).decode()}"


def check(
    keys: Sequence[PublicKey],
    stream: str,
    version: int,
    recorded_at: str,
    fields: Mapping[str, Any],
) -> str | None:
    """Why the event's service signature does not verify (None: it does)."""
    value = fields.get(FIELD)
    if not isinstance(value, str):
        return "it carries no service signature"
    parts = value.split(" ")
    if len(parts) != 3:
        return "its service signature is not of the form <key name> <key id> <signature>"
    name, key_id, data = parts
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "its service signature is not base64"
    matching = [k for k in keys if k.name == name and k.id_hex == key_id]
    if not matching:
        return (
            f"its service signature names the key {name} {key_id}, which is not among those given"
        )
    signed = message(stream, version, recorded_at, fields)
    if any(k.verify(signed, raw) for k in matching):
        return None
    return (
        "its service signature does not verify over this record: the signature row was made up, "
        "copied from another record or altered in the database"
    )
