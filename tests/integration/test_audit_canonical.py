"""The audit's fast canonical encoding writes exactly the bytes of ``course.canonical``.

The hash of every event is defined by ``course.canonical`` (shared with the live aggregate). The
audit recomputes it from stored rows with a faster encoder; if the two ever differed by one byte,
``audit verify`` would report an untouched record as tampered (or worse, the reverse).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cart_course import encoding
from cart_course.audit.log import Decoder, canonical_decoded, decode_json
from cart_course.contract import parse_command
from cart_course.course import canonical, event_hash, stream_id
from cart_course.demo import cohort
from cart_course.service import CourseService

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e-4, -1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0, 2e-05, 5e-324])
    | st.text()
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=25,
)


def _stored(value: Any) -> bytes:
    """As the event store writes JSON (the library's transcoder: json.dumps, compact)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _reference(stored: bytes) -> bytes | str:
    try:
        return canonical(json.loads(stored))
    except UnicodeEncodeError as exc:  # lone surrogates: the reference cannot hash them either
        return type(exc).__name__


def _json_only(stored: bytes) -> bytes | str:
    """decode_json's reading by ``json`` alone (what it does when msgspec refuses the bytes)."""
    try:
        text = stored.decode(json.detect_encoding(stored), "surrogatepass")
        return canonical_decoded(encoding._JSON.decode(text))
    except UnicodeEncodeError as exc:
        return type(exc).__name__


def _fast(stored: bytes) -> bytes | str:
    try:
        return canonical_decoded(decode_json(stored))
    except UnicodeEncodeError as exc:
        return type(exc).__name__


@settings(max_examples=1500, deadline=None)
@given(json_values)
@example({"mrd": {"value": 2e-05, "unit": "fraction"}, "cells": 7.0e16, "n": 2**65})
@example({"z": 1, "é": 2, "\U0001f600": 3, "\uffff": 4, "a\x00": "\x7f\u2028\ud800"})
@example([math.nan, math.inf, -math.inf, -0.0, 0.0])
def test_fast_canonical_is_byte_identical_to_course_canonical(value: Any) -> None:
    stored = _stored(value)
    assert _fast(stored) == _reference(stored)
    assert _json_only(stored) == _reference(stored)


@given(st.text(alphabet="0123456789eE+-.", min_size=1, max_size=24))
@settings(max_examples=800, deadline=None)
def test_hand_written_numbers_encode_as_python_does(token: str) -> None:
    """A row rewritten by hand may spell a number any valid JSON way (1E16, 1e-5, 0.00001)."""
    stored = f'{{"x":[{token}]}}'.encode()
    try:
        expected = canonical(json.loads(stored))
    except ValueError:
        return  # not JSON
    assert canonical_decoded(decode_json(stored)) == expected
    assert _json_only(stored) == expected


def test_every_real_event_hashes_as_the_application_does(memory_service: CourseService) -> None:
    """The stored rows of a demo cohort: the audit's hash equals course.event_hash of the domain
    event the application loads, event by event."""
    service = memory_service
    commands = [parse_command(c) for c in cohort(60, seed=17)]
    for i in range(0, len(commands), 300):
        service.execute_batch(commands[i : i + 300])
    decode = Decoder(service.log)
    checked = 0
    for pid in service.patient_ids():
        sid = stream_id(pid)
        stored = service.app.recorder.select_events(sid)
        domain = list(service.app.events.get(sid))
        assert len(stored) == len(domain)
        for row, event in zip(stored, domain, strict=True):
            assert decode(row).hash == event_hash(event)
            checked += 1
    assert checked > 500


_SID = "2f1c3a52-6b0e-5c47-9a3e-0c2d7e1b9a41"
_TOPIC = "cart_course.course:PatientCourse.InfusionGiven"
_ROW_KEYS = {"originator_id", "originator_version", "type", "timestamp"}


@settings(max_examples=600, deadline=None)
@given(
    fields=st.dictionaries(
        st.text(max_size=6).filter(lambda k: k not in _ROW_KEYS), json_values, max_size=5
    ),
    copy_id=st.sampled_from([_SID, _SID.upper(), "2f1c3a52", 7]),
    copy_version=st.sampled_from([3, 3.0, True, "3", 4, -3, None]),
    copy_type=st.sampled_from(["PatientCourse.InfusionGiven", "PatientCourse.Screened", 3]),
    form=st.sampled_from([None, 1, 2, 1.0, "1"]),
    spaced=st.booleans(),
)
def test_a_canonical_rows_hash_is_that_of_the_content_it_names(
    fields: dict[str, Any],
    copy_id: Any,
    copy_version: Any,
    copy_type: Any,
    form: Any,
    spaced: bool,
) -> None:
    """A row stored as canonical bytes (v3 of stream _SID): whatever its own copies of the
    stream, version and type hold, and whether or not its bytes are canonical, the audit's hash
    is the row's SHA-256 exactly when the row is the canonical bytes of the content the row
    names (its fields, the row's stream, version, type and record time), ``altered:`` before
    it otherwise, ``unknown-form:`` for a form this version cannot encode."""
    row: dict[str, Any] = {**fields, "originator_id": copy_id, "type": copy_type}
    row["timestamp"] = "2026-01-02T03:04:05.000006+00:00"
    if copy_version is not None:
        row["originator_version"] = copy_version
    if form is not None:
        row[encoding.FORM_FIELD] = form
    try:
        state = (
            json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8")
            if spaced
            else canonical(row)
        )
    except UnicodeEncodeError:
        return  # lone surrogates: no row holds them
    decoder = object.__new__(Decoder)
    decoder._aliases = {}
    logged = decoder._canonical(_SID, 3, _TOPIC, state)
    assert logged is not None
    named = {k: v for k, v in json.loads(state).items() if k not in _ROW_KEYS}
    content = {
        **named,
        "originator_id": _SID,
        "originator_version": 3,
        "type": "PatientCourse.InfusionGiven",
        "timestamp": row["timestamp"],
    }
    held = hashlib.sha256(state).hexdigest()
    if (
        encoding.form_of(content) not in encoding.FORMS
        or type(encoding.form_of(content)) is not int
    ):
        assert logged.hash == f"unknown-form:{encoding.form_of(content)!r}"
    elif canonical(content) == state:
        assert logged.hash == held
    else:
        assert logged.hash == f"altered:{held}"
    assert canonical(logged.data) == canonical(named)  # (NaN is no NaN's equal)
    assert logged.recorded_at == row["timestamp"]
