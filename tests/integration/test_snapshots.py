"""Snapshots keep long histories fast; a snapshot-restored course equals the replayed one, on
every store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs
from leaf_types import typed

from cart_course.course import PatientCourse, stream_id
from cart_course.service import CourseService
from cart_course.storage import SNAPSHOT_INTERVAL, open_application, parse_store_url


def _long_history(service: CourseService, pid: str) -> Course:
    """Over 100 events: a course with corrections, a signature and many toxicity episodes."""
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    for _ in range(30):
        p.do("report_toxicity", {"toxicity": crs(1)}, hours=0.05)
        p.do("report_toxicity", {"toxicity": crs(2)}, hours=0.05)  # a second, concurrent episode
        episodes = service.summary(pid)["open_toxicities"]
        for tox in episodes:
            p.do("resolve_toxicity", {"toxicity_id": tox["id"]}, hours=0.05)
    p.infuse(2)
    p.infuse(3)
    d2 = next(
        e.originator_version
        for e in service.events(pid)
        if getattr(e, "trigger", "") == "infuse_d2"
    )
    p.do(
        "correct",
        {"corrects": d2, "changes": {"cells": {"value": 2.0e7, "unit": "cells"}}},
        reason="re-counted",
    )
    assessed = p.assess("PR")
    p.do(
        "sign",
        {
            "milestone": "response_assessment",
            "signs_version": assessed.version,
            "meaning": "review",
            "printed_name": "Dr. K. Lee",
        },
    )
    for _ in range(10):
        p.do("report_toxicity", {"toxicity": crs(1)}, hours=2)
    return p


def _replayed(service: CourseService, pid: str) -> Any:
    """The course from its events alone: no snapshot, no cache."""
    course: Any = None
    for event in service.app.events.get(stream_id(pid)):
        course = event.mutate(course)
    return course


def _state(course: Any) -> dict[str, Any]:
    return {
        "record": course.record.to_json(),
        "idempotency": course.idempotency,
        "chain_head": course.chain_head,
        "version": course.version,
    }


def test_snapshot_restored_state_equals_replayed_state(service: CourseService) -> None:
    _long_history(service, "S-1")
    app = service.app
    sid = stream_id("S-1")
    version = service.record("S-1").version
    assert version > 2 * SNAPSHOT_INTERVAL
    snapshots = list(app.snapshots.get(sid)) if app.snapshots is not None else []
    assert [s.originator_version for s in snapshots] == [
        n * SNAPSHOT_INTERVAL for n in range(1, version // SNAPSHOT_INTERVAL + 1)
    ]

    replayed = _replayed(service, "S-1")
    # With version=..., the repository starts from the latest snapshot at or before it.
    restored = app.repository.get(sid, version=version)
    assert isinstance(restored, PatientCourse)
    assert _state(restored) == _state(replayed)
    # Exactly at a snapshot (nothing replayed on top), and between two snapshots.
    for at in (SNAPSHOT_INTERVAL, 2 * SNAPSHOT_INTERVAL, 2 * SNAPSHOT_INTERVAL - 7):
        from_snapshot = app.repository.get(sid, version=at)
        from_events: Any = None
        for event in app.events.get(sid, lte=at):
            from_events = event.mutate(from_events)
        assert _state(from_snapshot) == _state(from_events), at
    # The summary the user reads is the same either way.
    assert restored.record.summary() == replayed.record.summary()


def test_a_restarted_service_continues_from_a_snapshot(store_url: str) -> None:
    first = CourseService(open_application(parse_store_url(store_url)))
    try:
        p = _long_history(first, "S-2")
        before = first.summary("S-2")
        if store_url == "memory:":  # memory does not outlive its service: drop the cache instead
            second = first
            second._evict("S-2")
        else:
            second = CourseService(open_application(parse_store_url(store_url)))
        assert second.summary("S-2") == before
        p.service = second
        result = p.do("report_toxicity", {"toxicity": crs(2)}, hours=1)
        assert result.version == before["version"] + 1
        assert _state(second.app.repository.get(stream_id("S-2"), version=result.version)) == (
            _state(_replayed(second, "S-2"))
        )
        if second is not first:
            second.close()
    finally:
        first.close()


def test_a_snapshot_writes_the_record_as_to_json_states_it(service: CourseService) -> None:
    """Snapshots write the record through a fast conversion (msgspec); for every record of a
    demo cohort (corrections, signatures, toxicities, several courses) it is ``to_json()``,
    type for type, and it copies: changing it leaves the record as it was."""
    from cart_course.contract import parse_command
    from cart_course.demo import cohort
    from cart_course.storage import record_state

    service.execute_batch([parse_command(c) for c in cohort(60, 12)])
    records = [service.record(p) for p in service.patient_ids()]
    assert any(r.corrections for r in records) and any(r.signatures for r in records)
    assert any(len(r.courses) > 1 for r in records) and any(r.toxicities for r in records)
    for record in records:
        state = record_state(record)
        assert typed(state) == typed(record.to_json())
        before = record.to_json()
        state["courses"].append({"number": 99})
        state["deviations"].append({"deviation": "x"})
        for episode in state["toxicities"].values():
            episode["versions"].append(-1)
        assert record.to_json() == before


def test_a_course_snapshot_written_fast_reads_back_as_the_library_writes_it(
    service: CourseService,
) -> None:
    """A patient course's snapshot is written by msgspec in the library's layout; it decodes to
    exactly what the library's own encoding of the same snapshot decodes to (datetimes, the
    record, the idempotency keys), and a restored course equals the live one."""
    import msgspec
    from eventsourcing.domain import Snapshot
    from eventsourcing.persistence import JSONTranscoder

    from cart_course.contract import parse_command
    from cart_course.demo import cohort
    from cart_course.storage import CourseTranscoder, _snapshot_layout

    service.execute_batch([parse_command(c) for c in cohort(30, 12)])
    transcoder = CourseTranscoder()
    service.app.register_transcodings(transcoder)
    library = JSONTranscoder()
    service.app.register_transcodings(library)
    for pid in service.patient_ids():
        course = service.app.repository.get(stream_id(pid))
        snapshot = Snapshot.take(course)
        state = {
            k: v
            for k, v in vars(snapshot).items()
            if k not in ("originator_id", "originator_version")
        }
        layout = _snapshot_layout(state)
        assert layout is not None
        fast = transcoder.encode(state)
        assert fast == msgspec.json.encode(layout)  # the fast path was taken
        slow = library.encode(state)
        assert transcoder.decode(fast) == library.decode(slow)
        restored = Snapshot(
            originator_id=snapshot.originator_id,
            originator_version=snapshot.originator_version,
            **transcoder.decode(fast),
        ).mutate(None)
        assert restored.record == course.record and restored.idempotency == course.idempotency


def test_a_snapshot_of_a_record_holding_what_msgspec_writes_otherwise_is_the_librarys(
    service: CourseService,
) -> None:
    """An older history may have put into the record values msgspec writes differently from
    the library (NaN and infinities as null, datetimes, UUIDs and Decimals as plain strings):
    such a snapshot is written by the library's encoder, so it decodes to the same values."""
    import datetime as dt
    import decimal
    import uuid

    from eventsourcing.domain import Snapshot
    from eventsourcing.persistence import JSONTranscoder

    from cart_course.storage import CourseTranscoder

    Course(service, "S-ODD").screen()
    course = service.app.repository.get(stream_id("S-ODD"))
    ours, library = CourseTranscoder(), JSONTranscoder()
    service.app.register_transcodings(ours)
    service.app.register_transcodings(library)
    for odd in (
        float("nan"),
        float("inf"),
        dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC),
        uuid.UUID(int=7),
        decimal.Decimal("1.10"),
    ):
        course.record.screening = {"odd": odd, "list": [odd]}
        snapshot = Snapshot.take(course)
        state = {
            k: v
            for k, v in vars(snapshot).items()
            if k not in ("originator_id", "originator_version")
        }
        written = library.decode(ours.encode(state))
        expected = library.decode(library.encode(state))
        assert repr(written) == repr(expected), odd
        assert repr(written["state"]["record"].screening["odd"]) == repr(odd)


def test_the_step_between_snapshots_doubles_as_the_history_doubles() -> None:
    """Every 50 events up to 1000, then every 100 up to 2000, every 200 up to 4000: writing the
    whole record stays a bounded share of each command, and a restart replays at most a tenth of
    a history after its latest snapshot."""
    from cart_course.storage import snapshot_due

    due = [v for v in range(1, 5001) if snapshot_due(v)]
    assert [v for v in due if v < 1000] == list(range(50, 1000, 50))
    assert [v for v in due if 1000 <= v < 2000] == list(range(1000, 2000, 100))
    assert [v for v in due if 2000 <= v < 4000] == list(range(2000, 4000, 200))
    assert [v for v in due if v >= 4000] == list(range(4000, 5001, 400))
    for version in range(1, 5001):  # the events after the latest snapshot: at most a tenth
        latest = max((v for v in due if v <= version), default=0)
        assert version - latest <= max(SNAPSHOT_INTERVAL - 1, version // 10)


def test_a_long_history_takes_snapshots_at_the_longer_step(tmp_path: Path) -> None:
    service = CourseService(open_application(parse_store_url(str(tmp_path / "long.sqlite"))))
    try:
        p = Course(service, "S-LONG")
        p.screen()
        p.apheresis()
        n = 0
        while service.record("S-LONG").version < 1105:
            n += 1
            command = "report_toxicity" if n % 2 else "resolve_toxicity"
            payload = {"toxicity": crs(1)} if n % 2 else {"toxicity_id": f"CRS-{(n + 1) // 2}"}
            p.do(command, payload, hours=0.01)
        stored = service.app.snapshots.recorder.select_events(stream_id("S-LONG"))  # type: ignore[union-attr]
        versions = [s.originator_version for s in stored]
        assert versions == [*range(50, 1000, 50), 1000, 1100]
    finally:
        service.close()
