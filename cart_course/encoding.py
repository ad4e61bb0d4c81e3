"""The canonical JSON of a live event, byte for byte as the standard library writes it, faster.

An event's hash covers its canonical form, defined by ``json``
(``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)``, see
``course.canonical``). msgspec writes the same bytes for JSON data several times faster, with two
exceptions this module catches:

- floats that Python prints with an exponent (magnitude below 1e-4 or from 1e16: ``1e-05``,
  ``1e+16``): msgspec prints them differently (``0.00001``, ``1e16``). Its output is scanned for
  such a number (an exponent at a number's end, or ``0.0000``); each one found outside a string
  is rewritten as Python prints that float (:func:`python_floats`; the same characters inside a
  string are left alone). Every in-range float is printed alike by both (shortest round-trip
  repr), which ``tests/unit/test_encoding.py`` checks on millions of floats.
- values that are not JSON data: msgspec refuses types it does not know (we then fall back to
  ``json``), but it also writes some types ``json`` would not (datetime, UUID, Decimal, set):
  the write path must hand over JSON data only, which holds because every field of an event is
  a str, int, bool, None, float, list or dict built from parsed JSON and the protocol's own
  values (checked on a whole demo cohort by the same tests). NaN and infinities, which msgspec
  writes as ``null``, never reach a live event: every number of a command is refused unless it
  is finite (``tests/unit/test_encoding.py`` tries each one), and the protocol caps quantities so
  that sums cannot overflow. Data from outside (stored rows re-read by the audit) is therefore
  never encoded here: ``course.canonical`` is the definition, ``json`` itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

#: A JSON number that ``json`` and msgspec may print differently: msgspec prints an exponent as
#: ``e16`` / ``e-9`` right before the number's end (``,``, ``}`` or ``]``), and small numbers as
#: ``0.0000...``. Both may also match inside a string (:func:`python_floats` then leaves them as
#: they are). The pattern starts with a literal on purpose: ``re`` scans for it fast, where a
#: pattern starting with a character class tries every ``,`` and ``:`` (5-40x slower).
_EXPONENT = re.compile(rb"e-?[0-9]+[,}\]]")
_SMALL = b"0.0000"
_NUMBER_START = frozenset(b"-0123456789")


def not_json(value: Any) -> Any:
    """msgspec's ``enc_hook`` that refuses every value msgspec does not know: not JSON data."""
    raise TypeError(f"not JSON data: {type(value).__name__}")


_SORTED = msgspec.json.Encoder(order="sorted", enc_hook=not_json).encode
_JSON_SORTED = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode


#: The bytes a JSON number is written with (msgspec's floats: digits, ``.``, ``-``, ``e``).
_NUMBER_BYTES = frozenset(b"-+.0123456789eE")
#: What precedes a value in JSON text, and what follows it.
_BEFORE_VALUE = frozenset(b":,[")
_AFTER_VALUE = frozenset(b",}]")


def _unescaped_quotes(segment: bytes) -> int:
    """The quotes of a piece of msgspec's JSON text that open or close a string. Inside a
    string msgspec writes a quote as ``\\"`` and a backslash as ``\\\\``: dropping the
    escaped backslashes, then the escaped quotes, leaves the others. The piece must not cut an
    escape in two (it ends right before a number, after ``:``, ``,`` or ``[``: no escape ends
    with those)."""
    if b"\\" in segment:
        segment = segment.replace(b"\\\\", b"").replace(b'\\"', b"")
    return segment.count(b'"')


#: More candidates than this: ``json`` writes the whole value faster than they are rewritten
#: (each costs ~1.5 us in Python; ``json`` ~0.25 us per float).
MAX_REWRITES = 32


def python_floats(out: bytes, first_exponent: int = 0) -> bytes | None:
    """msgspec's JSON text of a container with every float Python prints with an exponent
    written as Python writes it (``0.00001`` -> ``1e-05``, ``1e16`` -> ``1e+16``).

    Each candidate (an exponent at a number's end, or ``0.0000``) is widened to the run of number
    bytes around it; it is a number only if a value may start before it (``:``, ``,``, ``[``), a
    value may end after it (``,``, ``}``, ``]``) and it is outside every string (an even number
    of unescaped quotes before it, counted in one pass over the text). msgspec prints the
    shortest text that reads back as the float, so ``float(text)`` is that float, and
    ``float.__repr__`` is how ``json`` prints it. Linear in the length of the text, whatever the
    number of candidates (each run of number bytes is walked once).

    ``first_exponent``: where to start looking for exponents (-1: there is none). None when
    there are more than :data:`MAX_REWRITES` candidates (the caller has ``json`` write it)."""
    hits = (
        [] if first_exponent < 0 else [m.start() for m in _EXPONENT.finditer(out, first_exponent)]
    )
    at = out.find(_SMALL)
    while at != -1:
        hits.append(at)
        at = out.find(_SMALL, at + 1)
    if len(hits) > MAX_REWRITES:
        return None
    hits.sort()
    end_of = len(out)
    tokens: list[tuple[int, int]] = []
    walked = 0  # the end of the last run of number bytes walked
    for hit in hits:
        if hit < walked:
            continue
        start = hit
        while start > 0 and out[start - 1] in _NUMBER_BYTES:
            start -= 1
        end = hit
        while end < end_of and out[end] in _NUMBER_BYTES:
            end += 1
        walked = end
        if start and end < end_of and out[start - 1] in _BEFORE_VALUE and out[end] in _AFTER_VALUE:
            tokens.append((start, end))
    pieces = []
    last = 0  # the end of the text copied so far
    scanned = 0  # the end of the text whose quotes were counted
    inside = False
    for start, end in tokens:
        if _unescaped_quotes(out[scanned:start]) % 2:
            inside = not inside
        scanned = start
        if not inside:
            pieces.append(out[last:start])
            pieces.append(float.__repr__(float(out[start:end])).encode())
            last = end
    if not pieces:
        return out
    pieces.append(out[last:])
    return b"".join(pieces)


def _fast_or(fast: Callable[[Any], bytes], slow: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    search = _EXPONENT.search

    def encode(data: Any) -> bytes:
        try:
            out = fast(data)
        except (TypeError, ValueError, OverflowError):
            return slow(data)
        if out[0] in _NUMBER_START:  # a bare number: json's way (NaN, exponent at the end)
            return slow(data)
        exponent = search(out)
        if exponent is not None:
            fixed = python_floats(out, exponent.start())
        elif _SMALL in out:
            fixed = python_floats(out, -1)
        else:
            return out
        return fixed if fixed is not None else slow(data)

    return encode


def _json_canonical(data: Any) -> bytes:
    return _JSON_SORTED(data).encode()


#: ``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)``
#: as UTF-8 bytes: what an event's hash and a command's digest cover.
canonical: Callable[[Any], bytes] = _fast_or(_SORTED, _json_canonical)

_read_back = msgspec.json.Decoder().decode


def canonical_exact(data: dict[str, Any]) -> tuple[bytes, bool]:
    """``canonical(data)``, and whether those bytes read back as exactly ``data``.

    True when decoding the bytes gives values equal to ``data`` (JSON data: str keys, str, int,
    float, bool, None, list, dict): the bytes can then be stored as they are and be read back
    into the same event (see ``storage.CourseMapper``). False for anything JSON would not give
    back (a tuple, a datetime, a Decimal, an int key, NaN, which msgspec writes as ``null``);
    the bytes are then ``json``'s own, whatever msgspec wrote, so that the hash is right even
    for such values."""
    out = canonical(data)
    try:
        if _read_back(out) == data:
            return out, True
    except msgspec.DecodeError:  # json's NaN / Infinity are not JSON
        pass
    return _json_canonical(data), False


__all__ = ["canonical", "canonical_exact", "not_json"]
