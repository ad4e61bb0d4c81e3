"""Course events are stored as the very bytes their hash covers (``storage.CourseMapper``).

What a user relies on: the store reads back the same events as before (values and types), rows
written in the library's own layout (older stores) still read and audit, the audit notices any
re-encoding of a row, and data that is not plain JSON never takes the canonical path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Mapper

from cart_course.audit.integrity import verify
from cart_course.bootstrap import Settings, build_service
from cart_course.contract import parse_command
from cart_course.course import CANONICAL_BYTES, PatientCourse, canonical, event_hash, stream_id
from cart_course.demo import cohort
from cart_course.encoding import canonical_exact
from cart_course.service import CourseService
from cart_course.storage import CourseMapper, open_application, parse_store_url

COHORT = 12


def _sqlite_service(path: Path, **kwargs: Any) -> CourseService:
    return build_service(Settings(store=parse_store_url(str(path)), **kwargs))


def _record_cohort(service: CourseService, n: int = COHORT, seed: int = 5) -> list[str]:
    commands = [parse_command(c) for c in cohort(n, seed=seed)]
    for command in commands:
        service.execute(command)
    return sorted({c.patient_id for c in commands})


def _rows(path: Path) -> list[tuple[str, int, str, bytes]]:
    with sqlite3.connect(path) as con:
        return [
            (oid, version, topic, bytes(state))
            for oid, version, topic, state in con.execute(
                "SELECT originator_id, originator_version, topic, state FROM stored_events "
                "ORDER BY originator_id, originator_version"
            )
        ]


def test_each_row_holds_the_bytes_its_successor_chains_to(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    service = _sqlite_service(db)
    try:
        patients = _record_cohort(service)
        by_stream: dict[str, list[bytes]] = {}
        for oid, _version, _topic, state in _rows(db):
            by_stream.setdefault(oid, []).append(state)
        assert len(by_stream) == len(patients)
        for patient_id in patients:
            states = by_stream[stream_id(patient_id).hex]
            events = list(service.app.events.get(stream_id(patient_id)))
            assert len(states) == len(events)
            for state, event, after in zip(states, events, [*events[1:], None], strict=True):
                # the stored state is the canonical form of the event: what its hash covers
                assert state == canonical(json.loads(state))
                assert hashlib.sha256(state).hexdigest() == event_hash(event)
                if after is not None:
                    assert after.prev_hash == hashlib.sha256(state).hexdigest()
    finally:
        service.close()


def test_events_read_back_with_the_same_values_and_types(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    service = _sqlite_service(db)
    try:
        patient = _record_cohort(service, n=3)[0]
        live = service._load(patient, fresh=False)
        assert live is not None
        stored = list(service.app.events.get(stream_id(patient)))
        for event in stored:
            assert CANONICAL_BYTES not in vars(event)
            assert type(event.timestamp) is dt.datetime
            assert event.timestamp.tzinfo is not None
            assert type(event.originator_version) is int
        again = _sqlite_service(db)
        try:
            reloaded = again._load(patient, fresh=True)
            assert reloaded is not None
            assert reloaded.record.to_json() == live.record.to_json()
            assert reloaded.chain_head == live.chain_head
        finally:
            again.close()
    finally:
        service.close()


def test_a_payload_key_named_like_the_librarys_type_tag_stays_data(tmp_path: Path) -> None:
    """The library's decoder turns ``{"_type_": ..., "_data_": ...}`` objects into values; in a
    canonical row they are read as the plain JSON they are."""
    db = tmp_path / "c.sqlite"
    service = _sqlite_service(db)
    try:
        course = PatientCourse.register("P-TAG", "dr.a", "investigator")
        tagged = {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00+00:00"}
        course.record_event(
            PatientCourse.Withdrawn,
            command="withdraw",
            trigger="withdraw",
            from_state="screening",
            to_state="withdrawn",
            payload={"note": tagged},
            facts={},
            outcome={},
            protocol_version="v",
            actor="dr.a",
            role="investigator",
            reason="r",
            occurred_at="2026-01-01T00:00:00+00:00",
            idempotency_key="k",
            digest="d",
        )
        service.app.save(course)
        events = list(service.app.events.get(course.id))
        assert events[-1].payload == {"note": tagged}
    finally:
        service.close()


def test_data_that_is_not_plain_json_is_stored_by_the_library() -> None:
    assert canonical_exact({"a": [1, 2.5, "x", None, True]}) == (
        canonical({"a": [1, 2.5, "x", None, True]}),
        True,
    )
    for odd in (
        {"a": (1, 2)},  # a tuple reads back as a list
        {"a": dt.date(2026, 1, 2)},
        {"a": math.nan},  # msgspec would write null
        {"a": math.inf},
        {"a": {1: "int key"}},
    ):
        data, exact = canonical_exact(odd)
        assert not exact
        assert data == canonical(odd)  # the hash still covers json's own bytes


def test_rows_in_the_librarys_layout_still_read_and_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before events were stored canonically: half the cohort in the library's
    layout, the rest canonical; both read back, replay alike and pass the audit."""
    db = tmp_path / "mixed.sqlite"
    commands = [parse_command(c) for c in cohort(COHORT, seed=9)]
    half = len(commands) // 2

    def library_layout(self: CourseMapper, event: Any) -> Any:
        plain = object.__new__(type(event))
        plain.__dict__.update({k: v for k, v in vars(event).items() if k != CANONICAL_BYTES})
        return Mapper.to_stored_event(self, plain)

    with monkeypatch.context() as patch:
        patch.setattr(CourseMapper, "to_stored_event", library_layout)
        old = _sqlite_service(db)
        try:
            for command in commands[:half]:
                old.execute(command)
        finally:
            old.close()
    new = _sqlite_service(db)
    try:
        for command in commands[half:]:
            new.execute(command)
    finally:
        new.close()
    states = [state for *_, state in _rows(db)]
    assert any(b'"_type_"' in s for s in states)  # library layout rows
    assert any(b'"originator_id":' in s for s in states)  # canonical rows

    reference = CourseService(open_application(parse_store_url("memory:")))
    try:
        for command in commands:
            reference.execute(command)
        reader = _sqlite_service(db)
        try:
            for patient in {c.patient_id for c in commands}:
                got = reader._load(patient, fresh=True)
                want = reference._load(patient, fresh=True)
                assert got is not None and want is not None
                assert _timeless(got.record.to_json()) == _timeless(want.record.to_json())
            report = verify(reader.log)
            assert report.ok, report.problems
        finally:
            reader.close()
    finally:
        reference.close()


def _timeless(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what depends on record time (two runs record at different times)."""
    signatures = [
        {k: v for k, v in s.items() if k not in ("signed_at", "signed_hash")}
        for s in record["signatures"]
    ]
    return {**record, "signatures": signatures}


def test_a_row_re_encoded_to_the_same_values_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    service = _sqlite_service(db)
    try:
        _record_cohort(service, n=2)
    finally:
        service.close()
    with sqlite3.connect(db) as con:
        rowid, state = con.execute(
            "SELECT rowid, state FROM stored_events WHERE originator_version = 3 LIMIT 1"
        ).fetchone()
        values = json.loads(bytes(state))
        reordered = json.dumps(dict(reversed(list(values.items())))).encode()
        assert json.loads(reordered) == values
        con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (reordered, rowid))
    reader = _sqlite_service(db)
    try:
        report = verify(reader.log)
        assert not report.ok
        assert any(p.version == 3 for p in report.problems), report.problems
    finally:
        reader.close()
