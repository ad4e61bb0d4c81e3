"""Stored snapshots are checked against the log: real SQL tampering on SQLite and PostgreSQL.

The application restores a long stream from its latest snapshot, not from the log, so an altered
snapshot changes what the service shows while every event row still verifies. ``audit verify``
replays each stream and compares every stored snapshot with the replayed state at its version.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

from cart_course.audit import verify
from cart_course.course import stream_id
from cart_course.service import CourseService
from cart_course.storage import SNAPSHOT_INTERVAL, open_application, parse_store_url

Sql = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
PID = "S-7"


def _long_course(service: CourseService, pid: str) -> None:
    """56 events: the stream gets a snapshot at v50."""
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    while service.record(pid).version < SNAPSHOT_INTERVAL + 6:
        p.do("report_toxicity", {"toxicity": crs(1)}, hours=0.05)
        for tox in service.summary(pid)["open_toxicities"]:
            p.do("resolve_toxicity", {"toxicity_id": tox["id"]}, hours=0.05)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Sql, str]]:
    """(store URL, sql(statement, args) on the snapshot table, kind) with one long stream."""
    if request.param == "sqlite":
        url = str(tmp_path / "snapshots.sqlite")
    else:
        url = str(request.getfixturevalue("pg_url"))
    service = CourseService(open_application(parse_store_url(url)))
    try:
        _long_course(service, PID)
        _long_course(service, "S-8")
        assert service.app.snapshots is not None
        table = service.app.snapshots.recorder.events_table_name  # type: ignore[attr-defined]
    finally:
        service.close()
    if request.param == "sqlite":

        def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            with sqlite3.connect(url) as conn:
                return conn.execute(
                    statement.replace("%s", "?").replace("SNAPSHOTS", table), args
                ).fetchall()

    else:
        import psycopg

        def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            with psycopg.connect(url, autocommit=True) as conn:
                cur = conn.execute(statement.replace("SNAPSHOTS", table), args)
                return cur.fetchall() if cur.description else []

    yield url, sql, request.param


def _sid(kind: str, pid: str) -> Any:
    return stream_id(pid).hex if kind == "sqlite" else stream_id(pid)


def _replace(kind: str, old: str, new: str) -> str:
    if kind == "sqlite":
        return f"state = CAST(replace(CAST(state AS TEXT), '{old}', '{new}') AS BLOB)"
    return f"state = convert_to(replace(convert_from(state, 'UTF8'), '{old}', '{new}'), 'UTF8')"


def _verify(url: str) -> tuple[list[str], int]:
    service = CourseService(open_application(parse_store_url(url)))
    try:
        report = verify(service.log)
        return [str(p) for p in report.problems], report.snapshots
    finally:
        service.close()


def _weight(url: str, pid: str) -> float:
    service = CourseService(open_application(parse_store_url(url)))
    try:
        weight = service.record(pid).courses[0].weight_kg
        assert weight is not None
        return float(weight)
    finally:
        service.close()


def test_intact_snapshots_verify(store: Any) -> None:
    url, sql, _kind = store
    problems, checked = _verify(url)
    assert problems == []
    assert checked == 2 == sql("SELECT COUNT(*) FROM SNAPSHOTS", ())[0][0]


def test_altered_snapshot_is_named_by_stream_and_version(store: Any) -> None:
    url, sql, kind = store
    change = _replace(kind, '"weight_kg":70.0', '"weight_kg":95.0')
    sql(f"UPDATE SNAPSHOTS SET {change} WHERE originator_id = %s", (_sid(kind, PID),))
    # What the tampering does: the service now restores the altered weight from the snapshot,
    # while every event row is untouched (the chain alone would say the log is intact).
    assert _weight(url, PID) == 95.0
    problems, _ = _verify(url)
    assert problems == [
        f"{PID} v{SNAPSHOT_INTERVAL}: [snapshot] the stored snapshot at v{SNAPSHOT_INTERVAL} "
        f"differs from the log replayed to v{SNAPSHOT_INTERVAL} in: record (courses) (the "
        "snapshot was altered: the service would show the altered state)"
    ]


def test_altered_chain_head_and_keys_in_a_snapshot_are_named(store: Any) -> None:
    url, sql, kind = store
    change = _replace(kind, '"chain_head":"', '"chain_head":"0')
    sql(f"UPDATE SNAPSHOTS SET {change} WHERE originator_id = %s", (_sid(kind, "S-8"),))
    sql(
        f"UPDATE SNAPSHOTS SET {_replace(kind, 'S-8:3:', 'S-8:X:')} WHERE originator_id = %s",
        (_sid(kind, "S-8"),),
    )
    problems, _ = _verify(url)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"S-8 v{SNAPSHOT_INTERVAL}: [snapshot]")
    assert "chain head; idempotency keys" in problems[0]


def test_garbled_snapshot_is_named(store: Any) -> None:
    url, sql, kind = store
    garbage = "CAST('{not json' AS BLOB)" if kind == "sqlite" else "convert_to('{not json', 'UTF8')"
    sql(f"UPDATE SNAPSHOTS SET state = {garbage} WHERE originator_id = %s", (_sid(kind, PID),))
    problems, _ = _verify(url)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{PID} v{SNAPSHOT_INTERVAL}: [snapshot] the stored snapshot")
    assert "cannot be decoded" in problems[0]


def test_forged_snapshot_beyond_the_log_is_named(store: Any) -> None:
    url, sql, kind = store
    sql(
        "INSERT INTO SNAPSHOTS (originator_id, originator_version, topic, state) "
        "SELECT originator_id, CAST(%s AS INTEGER), topic, state FROM SNAPSHOTS "
        "WHERE originator_id = %s",
        (2 * SNAPSHOT_INTERVAL, _sid(kind, PID)),
    )
    problems, _ = _verify(url)
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        f"{PID} v{2 * SNAPSHOT_INTERVAL}: [snapshot] a snapshot is stored"
    )


def test_deleted_snapshot_is_harmless(store: Any) -> None:
    """The service then replays the log: nothing shown changes, nothing to report."""
    url, sql, kind = store
    sql("DELETE FROM SNAPSHOTS WHERE originator_id = %s", (_sid(kind, PID),))
    assert _verify(url) == ([], 1)
    assert _weight(url, PID) == 70.0


def test_snapshots_verify_in_memory(memory_service: CourseService) -> None:
    _long_course(memory_service, PID)
    report = verify(memory_service.log)
    assert report.ok, report.problems
    assert report.snapshots == 1


def test_snapshot_of_an_unregistered_stream_is_counted(store: Any) -> None:
    url, sql, kind = store
    sql(
        "INSERT INTO SNAPSHOTS (originator_id, originator_version, topic, state) "
        "SELECT %s, originator_version, topic, state FROM SNAPSHOTS WHERE originator_id = %s",
        (_sid(kind, "NOBODY"), _sid(kind, PID)),
    )
    problems, checked = _verify(url)
    assert checked == 2
    assert problems == [
        "(snapshots): [snapshot] the store holds 3 snapshots but the registered streams account "
        "for 2: snapshots of unregistered streams were inserted (or their registrations deleted)"
    ]


def _position(url: str, pid: str, version: int) -> int:
    """The notification id of ``pid``'s event at ``version``."""
    service = CourseService(open_application(parse_store_url(url)))
    try:
        page = service.app.recorder.select_notifications(start=1, limit=1000)
        return next(
            n.id
            for n in page
            if n.originator_id in (stream_id(pid), str(stream_id(pid)))
            and n.originator_version == version
        )
    finally:
        service.close()


def _verify_up_to(url: str, up_to: int) -> tuple[list[str], Any]:
    service = CourseService(open_application(parse_store_url(url)))
    try:
        report = verify(service.log, up_to=up_to)
        return [str(p) for p in report.problems], report
    finally:
        service.close()


def test_snapshot_taken_after_the_verified_position_is_left_for_later(store: Any) -> None:
    """Verifying the log up to S-7's v45: its v50 snapshot (taken later) is not checked, not
    counted as an unregistered stream's, and not reported; a forged one beyond the whole stream
    still is."""
    url, sql, kind = store
    mark = _position(url, PID, 45)
    problems, report = _verify_up_to(url, mark)
    assert problems == []
    assert (report.up_to, report.streams, report.events, report.rows) == (mark, 1, 45, 45)
    assert (report.snapshots, report.later_snapshots) == (0, 1)
    sql(
        "INSERT INTO SNAPSHOTS (originator_id, originator_version, topic, state) "
        "SELECT originator_id, CAST(%s AS INTEGER), topic, state FROM SNAPSHOTS "
        "WHERE originator_id = %s",
        (2 * SNAPSHOT_INTERVAL, _sid(kind, PID)),
    )
    problems, _ = _verify_up_to(url, mark)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{PID} v{2 * SNAPSHOT_INTERVAL}: [snapshot] a snapshot is")
