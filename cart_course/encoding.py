"""The one owner of canonical bytes: what an event's hash and a command's digest cover.

**Canonical forms.** The hash chain covers each event's *canonical form*: bytes defined by a
reference encoder, numbered. Every event the service creates records the form its hash covers
(the field :data:`FORM_FIELD`, set to :data:`CANONICAL_FORM`); an event without that field was
written before forms were recorded and is form 1 (:data:`LEGACY_FORM`). Whoever recomputes a
hash (the live aggregate replaying its stream, the audit reading stored rows) takes the form from
the event itself (:func:`form_of`) and encodes with that form's encoder (:data:`FORMS`), so a
later form can be introduced beside the old ones: old events keep verifying with the encoder
they were written with, new ones with theirs. An event naming a form this code does not know
cannot be hashed (:class:`UnknownFormError`; the audit reports its chain broken there).

**Form 1** (the only one today) is ``json.dumps(data, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, default=str)`` as UTF-8 (:func:`canonical_reference`, the definition). Two
faster encoders write the same bytes, each for the data it is given:

- :func:`canonical` (live data built by this process) writes with msgspec and catches what
  msgspec prints otherwise; :func:`canonical_exact` also says whether the bytes read back as
  exactly the data (then they are stored as the event's state, ``storage.CourseMapper``).
- :func:`canonical_decoded` (data re-read from stored rows by :func:`decode_json`) is for the
  audit, where floats Python prints with an exponent come back marked.

The details of :func:`canonical`: msgspec writes the same bytes as ``json`` for JSON data, with
two exceptions this module catches:

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
  never encoded by :func:`canonical` (see :func:`canonical_decoded`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

# -- forms --------------------------------------------------------------------------------------

#: The field of an event naming the canonical form its hash covers.
FORM_FIELD: Final = "canonical_form"
#: The form of an event without :data:`FORM_FIELD` (written before forms were recorded).
LEGACY_FORM: Final = 1
#: The form every new event is written in.
CANONICAL_FORM: Final = 1


class UnknownFormError(ValueError):
    """An event names a canonical form this code cannot encode."""

    def __init__(self, form: Any) -> None:
        self.form = form
        super().__init__(f"canonical form {form!r} is not one this version knows ({KNOWN_FORMS})")


def form_of(content: Mapping[str, Any]) -> Any:
    """The canonical form an event's content (its fields) says its hash covers."""
    return content.get(FORM_FIELD, LEGACY_FORM)


_REFERENCE_V1 = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode


def canonical_reference(data: Any) -> bytes:
    """Form 1, the definition: ``json.dumps(data, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, default=str)`` as UTF-8, for any data (NaN included)."""
    return _REFERENCE_V1(data).encode()


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


#: :func:`canonical_reference`'s bytes, written fast, for JSON data built by this process: what
#: a live event's hash and a command's digest cover.
canonical: Callable[[Any], bytes] = _fast_or(_SORTED, canonical_reference)

_read_back = msgspec.json.Decoder().decode


class _NotPlain(Exception):
    """msgspec printed a float otherwise than Python does (see :func:`_plain_float`)."""


def _plain_float(text: str) -> float:
    """msgspec's text of a float, read back: refused (:class:`_NotPlain`) unless Python prints
    that float alike. msgspec prints a float as Python does unless Python uses an exponent
    (magnitude below 1e-4 or from 1e16): msgspec then prints an exponent without ``+``
    (``1e16``, ``1e-7``) or a plain ``0.0000...``."""
    if "e" in text or text.startswith(("0.0000", "-0.0000")):
        raise _NotPlain
    return float(text)


#: Reads msgspec's own JSON text back, refusing any float Python prints otherwise.
_read_back_plain = msgspec.json.Decoder(float_hook=_plain_float).decode


def canonical_exact(data: dict[str, Any]) -> tuple[bytes, bool]:
    """``canonical(data)``, and whether those bytes read back as exactly ``data``.

    True when decoding the bytes gives values equal to ``data`` (JSON data: str keys, str, int,
    float, bool, None, list, dict): the bytes can then be stored as they are and be read back
    into the same event (see ``storage.CourseMapper``). False for anything JSON would not give
    back (a tuple, a datetime, a Decimal, an int key, NaN, which msgspec writes as ``null``);
    the bytes are then ``json``'s own, whatever msgspec wrote, so that the hash is right even
    for such values.

    The read-back also finds the floats msgspec printed otherwise than Python (it sees each
    float's text), so msgspec's bytes need no scan for them (the scan of :func:`canonical` costs
    more than the read-back's look at each float): only when there is one does the slower
    :func:`canonical` rewrite them."""
    try:
        out = _SORTED(data)
        if out[0] == 123 and _read_back_plain(out) == data:  # 123: ``{``, an object
            return out, True
    except (TypeError, ValueError, OverflowError):  # not JSON data (msgspec.DecodeError too)
        pass
    except _NotPlain:
        out = canonical(data)
        try:
            if _read_back(out) == data:
                return out, True
        except msgspec.DecodeError:  # json's NaN / Infinity are not JSON
            pass
    return canonical_reference(data), False


# -- data re-read from stored rows (the audit) --------------------------------------------------
#
# msgspec's sorted encoder writes the bytes of form 1 for JSON data, except for floats that
# Python prints with an exponent (magnitude below 1e-4 or from 1e16: ``2e-05``, ``1e+16``) and
# NaN and infinities: :func:`decode_json` turns exactly those into :class:`ReprFloat`, which
# msgspec hands back to its ``enc_hook`` to be printed Python's way. Every other value is a plain
# JSON value.

_PLAIN_FLOAT_MIN = 1e-4
_PLAIN_FLOAT_MAX = 1e16


class ReprFloat(float):
    """A float that Python prints with an exponent, or NaN/infinity (a float for every other use)."""

    __slots__ = ()


def _json_float(value: float) -> str:
    """How ``json.dumps`` prints a float."""
    if value != value:
        return "NaN"
    if value == float("inf"):
        return "Infinity"
    if value == float("-inf"):
        return "-Infinity"
    return float.__repr__(value)


def _parse_float(text: str) -> float:
    """A float of the text, marked (:class:`ReprFloat`) when its magnitude is below
    :data:`_PLAIN_FLOAT_MIN` or from :data:`_PLAIN_FLOAT_MAX` (zero is plain). Called for every
    float the audit reads: the bounds are written out (no ``abs``, no global look-ups)."""
    value = float(text)
    if 1e-4 <= value < 1e16 or -1e16 < value <= -1e-4 or value == 0:
        return value
    return ReprFloat(value)


def _parse_constant(text: str) -> float:  # NaN, Infinity, -Infinity
    return ReprFloat(text)


#: ``json.loads``, except that floats Python prints with an exponent come back as ReprFloat.
_JSON = json.JSONDecoder(parse_float=_parse_float, parse_constant=_parse_constant)


#: The same, by msgspec (several times faster): every float goes through the same
#: ``parse_float``. msgspec accepts nothing ``json.loads`` refuses and decodes what both accept
#: to equal values (duplicate keys: the last wins in both); what it refuses (NaN, infinities,
#: text that is not UTF-8, lone surrogate escapes) is left to ``json``.
_MSGSPEC_MARKED = msgspec.json.Decoder(float_hook=_parse_float).decode


def decode_json(state: bytes) -> Any:
    """Decode JSON bytes exactly as ``json.loads`` does (values compare equal), ready for
    :func:`canonical_decoded`."""
    try:
        return _MSGSPEC_MARKED(state)
    except ValueError:  # msgspec's DecodeError, or bytes that are not UTF-8
        pass
    return _JSON.decode(state.decode(json.detect_encoding(state), "surrogatepass"))


def _enc_hook(value: Any) -> Any:
    if isinstance(value, float):
        return msgspec.Raw(_json_float(value).encode())
    raise TypeError(f"not JSON data: {type(value).__name__}")


_SORTED_DECODED: Callable[[Any], bytes] = msgspec.json.Encoder(
    order="sorted", enc_hook=_enc_hook
).encode


def canonical_decoded(data: Any) -> bytes:
    """:func:`canonical_reference` (form 1), byte for byte and several times faster, for
    ``data`` built from :func:`decode_json` values (and plain str, int, bool, None, list and
    dict with str keys). Falls back to the reference whenever msgspec cannot encode a value.
    Proven equal by ``tests/integration/test_audit_canonical.py``."""
    try:
        return _SORTED_DECODED(data)
    except (TypeError, ValueError, OverflowError):
        return canonical_reference(data)


# -- the bytes of a form ------------------------------------------------------------------------

#: form -> its reference encoder (the definition of the bytes, for any data).
FORMS: dict[int, Callable[[Any], bytes]] = {1: canonical_reference}
#: form -> its encoder for data re-read by :func:`decode_json` (same bytes as the reference).
DECODED_FORMS: dict[int, Callable[[Any], bytes]] = {1: canonical_decoded}
KNOWN_FORMS = tuple(FORMS)
#: form -> its fast encoder for live events (bytes, and whether they read back exactly).
_LIVE_FORMS: dict[int, Callable[[dict[str, Any]], tuple[bytes, bool]]] = {}


def _encoder(table: Mapping[int, Callable[[Any], bytes]], form: Any) -> Callable[[Any], bytes]:
    encode = table.get(form) if type(form) is int else None
    if encode is None:
        raise UnknownFormError(form)
    return encode


def content_bytes(content: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash covers, its content (type, stream, version, record time and
    every field) in the form it names: the definition (for any data)."""
    return _encoder(FORMS, form_of(content))(content)


def decoded_content_bytes(content: Mapping[str, Any]) -> bytes:
    """:func:`content_bytes` of content re-read by :func:`decode_json` (the audit), fast."""
    return _encoder(DECODED_FORMS, form_of(content))(content)


def live_content_bytes(content: dict[str, Any]) -> tuple[bytes, bool]:
    """:func:`content_bytes` of a live event's content, fast, and whether those bytes read back
    as exactly the content (see :func:`canonical_exact`; then they may be stored as they are).
    A form without a fast encoder is encoded by its reference (and not stored as is)."""
    form = form_of(content)
    fast = _LIVE_FORMS.get(form) if type(form) is int else None
    if fast is not None:
        return fast(content)
    return _encoder(FORMS, form)(content), False


_LIVE_FORMS[1] = canonical_exact

__all__ = [
    "CANONICAL_FORM",
    "FORMS",
    "FORM_FIELD",
    "LEGACY_FORM",
    "ReprFloat",
    "UnknownFormError",
    "canonical",
    "canonical_decoded",
    "canonical_exact",
    "canonical_reference",
    "content_bytes",
    "decode_json",
    "decoded_content_bytes",
    "form_of",
    "live_content_bytes",
    "not_json",
]
