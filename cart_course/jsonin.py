"""Reading JSON that comes in (an HTTP body, a CLI document, a JSON Lines ingest line): one helper.

``json.loads`` semantics, except that an object holding the same key twice is refused: which of
two values a reader takes is not something a clinical record may leave to the parser (json and
msgspec keep the last, others the first), so ``{"kps": 90, "kps": 40}`` is an error, naming the
key, at every entry.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec


class DuplicateKeyError(ValueError):
    """An object holds ``key`` more than once."""

    def __init__(self, key: str) -> None:
        self.key = key
        shown = repr(key) if len(key) <= 40 else repr(key[:40]) + "..."
        self.reason = f"an object holds the key {shown} more than once"
        super().__init__(self.reason)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


_STRICT = json.JSONDecoder(object_pairs_hook=_unique)


def loads(text: str) -> Any:
    """``json.loads(text)``, refusing a duplicate key (:class:`DuplicateKeyError`)."""
    if text.startswith("\ufeff"):  # as json.loads says it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _STRICT.decode(text)


_NOTHING: Any = object()


def duplicate_key(text: str | bytes, decoded: Any = _NOTHING) -> DuplicateKeyError | None:
    """The first duplicate key of the JSON document ``text`` (None when it has none or is not
    JSON: other errors are the caller's decoder's to report). For entries that decode with a
    faster decoder first (msgspec keeps the last of two equal keys silently).

    With ``decoded`` (what that decoder made of ``text``), most documents are cleared without a
    second parse: when ``text`` holds no ``\\u`` escape, every colon in it is a key's or a
    string's, so it holds as many colons as ``decoded`` written out again exactly when no object
    lost a key to a duplicate (a lost key and its strings only add colons to ``text``). Anything
    else is parsed again with the strict decoder."""
    if decoded is not _NOTHING:
        if isinstance(text, bytes):
            if b"\\u" not in text and text.count(b":") == _colons(decoded):
                return None
        elif "\\u" not in text and text.count(":") == _colons(decoded):
            return None
    try:
        _STRICT.decode(text.decode("utf-8", "surrogateescape") if isinstance(text, bytes) else text)
    except DuplicateKeyError as exc:
        return exc
    except (ValueError, RecursionError):
        return None
    return None


def _colons(decoded: Any) -> int:
    try:
        return msgspec.json.encode(decoded).count(b":")
    except (TypeError, ValueError, OverflowError, RecursionError):
        return -1  # cannot be written again: the strict parse decides
