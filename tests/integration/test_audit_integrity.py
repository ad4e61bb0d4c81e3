"""Tamper evidence against real SQL on the SQLite file and on PostgreSQL."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cart_course.audit import seal, verify
from cart_course.contract import parse_command
from cart_course.course import stream_id
from cart_course.demo import cohort
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

Sql = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", "postgres"])
def tamperable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[CourseService, Sql, str]]:
    if request.param == "sqlite":
        url = str(tmp_path / "audit.sqlite")
    else:
        url = str(request.getfixturevalue("pg_url"))
    service = CourseService(open_application(parse_store_url(url)))
    commands = [parse_command(c) for c in cohort(20, seed=3)]
    for i in range(0, len(commands), 200):
        service.execute_batch(commands[i : i + 200])
    if request.param == "sqlite":

        def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            with sqlite3.connect(url) as conn:
                rows = conn.execute(statement.replace("%s", "?"), args).fetchall()
            return rows

        id_of: Callable[[str], Any] = lambda pid: stream_id(pid).hex  # noqa: E731
    else:
        import psycopg

        def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            with psycopg.connect(
                url.replace("postgresql://", "postgresql://", 1), autocommit=True
            ) as conn:
                cur = conn.execute(statement, args)
                return cur.fetchall() if cur.description else []

        id_of = stream_id
    table = service.app.recorder.events_table_name  # type: ignore[attr-defined]
    plain = sql

    def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return plain(statement.replace("stored_events", table), args)

    service.id_of = id_of  # type: ignore[attr-defined]
    try:
        yield service, sql, request.param
    finally:
        service.close()


def _text_replace(kind: str, old: str, new: str) -> str:
    if kind == "sqlite":
        return f"state = CAST(replace(CAST(state AS TEXT), '{old}', '{new}') AS BLOB)"
    return f"state = convert_to(replace(convert_from(state, 'UTF8'), '{old}', '{new}'), 'UTF8')"


def _problems(service: CourseService, sealed: str | None = None) -> list[str]:
    report = verify(service.log, io.StringIO(sealed) if sealed else None)
    return [str(p) for p in report.problems]


def test_untouched_log_verifies_and_seal_matches(tamperable: Any) -> None:
    service, _sql, _kind = tamperable
    out = io.StringIO()
    sealed = seal(service.log, out)
    report = verify(service.log, io.StringIO(out.getvalue()))
    assert report.ok, report.problems
    assert report.log_digest == sealed.log_digest
    assert report.events == report.rows > 100


def test_modified_row_is_named(tamperable: Any) -> None:
    service, sql, kind = tamperable
    sid = service.id_of("P-0004")
    sql(
        f"UPDATE stored_events SET {_text_replace(kind, 'demo.site-01.emr', 'someone.else')} "
        "WHERE originator_id = %s AND originator_version = 3",
        (sid,),
    )
    problems = _problems(service)
    assert len(problems) == 1
    assert problems[0].startswith("P-0004 v3: [chain]")


def test_deleted_row_is_named(tamperable: Any) -> None:
    service, sql, _kind = tamperable
    sql(
        "DELETE FROM stored_events WHERE originator_id = %s AND originator_version = 4",
        (service.id_of("P-0005"),),
    )
    assert _problems(service) == [
        "P-0005 v4: [sequence] v4 missing: the stream jumps from v3 to v5 (a row was deleted or "
        "renumbered)"
    ]


def test_reordered_rows_are_named(tamperable: Any) -> None:
    service, sql, _kind = tamperable
    sid = service.id_of("P-0006")
    sql(
        "UPDATE stored_events SET originator_version = -1 WHERE originator_id = %s AND originator_version = 4",
        (sid,),
    )
    sql(
        "UPDATE stored_events SET originator_version = 4 WHERE originator_id = %s AND originator_version = 5",
        (sid,),
    )
    sql(
        "UPDATE stored_events SET originator_version = 5 WHERE originator_id = %s AND originator_version = -1",
        (sid,),
    )
    problems = _problems(service)
    assert len(problems) == 1 and problems[0].startswith("P-0006 v"), problems
    assert "[chain]" in problems[0]


def test_inserted_row_is_named(tamperable: Any) -> None:
    service, sql, _kind = tamperable
    sid = service.id_of("P-0007")
    (last,) = sql(
        "SELECT MAX(originator_version) FROM stored_events WHERE originator_id = %s", (sid,)
    )[0]
    sql(
        "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
        "SELECT originator_id, CAST(%s AS INTEGER), topic, state FROM stored_events "
        "WHERE originator_id = %s AND originator_version = 2",
        (last + 1, sid),
    )
    problems = _problems(service)
    assert len(problems) == 1 and problems[0].startswith(f"P-0007 v{last}: [chain]"), problems


def test_deleted_registration_hides_nothing(tamperable: Any) -> None:
    service, sql, _kind = tamperable
    sql(
        "DELETE FROM stored_events WHERE originator_id = %s AND originator_version = 1",
        (service.id_of("P-0008"),),
    )
    problems = _problems(service)
    assert any("[registration]" in p and "belong to no registered patient" in p for p in problems)


def test_deleting_the_last_event_is_caught_by_the_seal(tamperable: Any) -> None:
    service, sql, kind = tamperable
    out = io.StringIO()
    seal(service.log, out)
    sid = service.id_of("P-0009")
    (last,) = sql(
        "SELECT MAX(originator_version) FROM stored_events WHERE originator_id = %s", (sid,)
    )[0]
    sql(
        "DELETE FROM stored_events WHERE originator_id = %s AND originator_version = %s",
        (sid, last),
    )
    # The chain alone cannot see it: that is why there is a seal. (On SQLite, where ids have no
    # gaps, the hole it left in the log is named, unless it was the log's last row.)
    alone = _problems(service)
    if kind == "sqlite":
        assert all("[gap]" in p and "rows were deleted" in p for p in alone), alone
    else:
        assert alone == []
    problems = _problems(service, out.getvalue())
    assert problems == [
        f"P-0009 v{last}: [seal] sealed at v{last} but the stream now ends at v{last - 1}: "
        f"v{last} was deleted"
    ]


def test_events_recorded_after_the_seal_are_fine(tamperable: Any) -> None:
    service, _sql, _kind = tamperable
    out = io.StringIO()
    seal(service.log, out)
    more = [parse_command(c) for c in cohort(3, seed=9, prefix="N")]
    service.execute_batch(more)
    assert _problems(service, out.getvalue()) == []


def test_the_digest_of_a_verified_position_can_be_recomputed_later(tamperable: Any) -> None:
    """A seal (or a verify report) names the position it covers: after more events are recorded,
    verifying up to that position gives the same digest again; the whole log gives another."""
    service, _sql, _kind = tamperable
    out = io.StringIO()
    sealed = seal(service.log, out)
    assert sealed.sealed is not None and sealed.sealed["up_to_notification"] == sealed.up_to
    service.execute_batch([parse_command(c) for c in cohort(3, seed=9, prefix="N")])
    then = verify(service.log, up_to=sealed.up_to)
    now = verify(service.log, io.StringIO(out.getvalue()))
    assert then.ok and now.ok, (then.problems, now.problems)
    assert (then.up_to, then.events, then.log_digest) == (
        sealed.up_to,
        sealed.events,
        sealed.log_digest,
    )
    assert now.up_to > sealed.up_to and now.events > sealed.events
    assert now.log_digest != sealed.log_digest


def test_plain_verify_names_a_gap_in_sqlite_notification_ids(tmp_path: Path) -> None:
    """SQLite numbers rows without gaps: rows deleted inside the log are named by plain
    ``verify`` (no seal, no checkpoint), even a whole patient's."""
    from cart_course.bootstrap import Settings, build_service

    db = tmp_path / "gaps.sqlite"
    service = build_service(Settings.for_store(str(db)))
    try:
        service.execute_batch([parse_command(c) for c in cohort(3, 1)])
        assert verify(service.log).ok
        victim = service.log.stream(stream_id("P-0002"))
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(
                "DELETE FROM stored_events WHERE originator_id = ?", (stream_id("P-0002").hex,)
            )
        conn.close()
        report = verify(service.log)
        gaps = [p for p in report.problems if p.check == "gap"]
        assert gaps and len(victim) > 0
        assert "missing before" in gaps[0].message and "rows were deleted" in gaps[0].message
    finally:
        service.close()


def test_record_times_never_go_backwards_in_a_stream_when_the_clock_steps_back(
    service: CourseService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked at write: when the server's clock steps back (NTP, a VM restored), a stream's next
    event takes its previous event's record time, never an earlier one."""
    import datetime as dt

    from eventsourcing import domain

    commands = [parse_command(c) for c in cohort(1, 1)]
    service.execute(commands[0])
    last = service.events("P-0001")[-1].timestamp
    past = last - dt.timedelta(hours=3)
    monkeypatch.setattr(domain.CanCreateTimestamp, "create_timestamp", staticmethod(lambda: past))
    for command in commands[1:4]:
        service.execute(command)
    stamps = [e.timestamp for e in service.events("P-0001")]
    assert len(stamps) >= 4
    assert stamps == sorted(stamps) and stamps[-1] == last
    monkeypatch.undo()
    assert verify(service.log).ok
