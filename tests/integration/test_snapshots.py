"""Snapshots keep long histories fast; a snapshot-restored course equals the replayed one, on
every store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

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
            "printed_name": "K. Lee, MD",
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
