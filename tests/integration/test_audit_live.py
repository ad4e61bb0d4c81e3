"""Verifying a live store: a separate process records commands while ``verify`` runs.

Auditors verify while sites record. ``verify`` checks the log up to the position it read when it
started (its high-water mark): writes after it are not problems, and tampering inside the verified
part is still named. Real SQLite file and real PostgreSQL; the writer is another OS process with
its own connection, recording one command per transaction (and long courses that take snapshots).
"""

from __future__ import annotations

import io
import itertools
import sqlite3
import subprocess
import sys
import threading
import time
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

HERE = Path(__file__).resolve().parent

WRITER = """
import sys
import threading
from pathlib import Path

sys.path.insert(0, sys.argv[3])
from integration_helpers import Course, crs

from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

url, stop = sys.argv[1], Path(sys.argv[2])
service = CourseService(open_application(parse_store_url(url)))
long_course, n_long = None, 0
try:
    for i, command in enumerate(cohort(2000, seed=11, prefix="W")):
        if stop.exists():
            break
        service.execute(parse_command(command))
        # A long course alongside: crosses v50 and v100, so snapshots are taken during verify.
        if long_course is None or service.record(long_course.pid).version >= 105:
            n_long += 1
            long_course = Course(service, f"L-{n_long}")
            long_course.screen()
            long_course.apheresis()
            long_course.infuse(1, days=14)
        long_course.do("report_toxicity", {"toxicity": crs(1)}, hours=0.05)
        for tox in service.summary(long_course.pid)["open_toxicities"]:
            long_course.do("resolve_toxicity", {"toxicity_id": tox["id"]}, hours=0.05)
        print(i, flush=True)
finally:
    service.close()
"""

Sql = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", "postgres"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Sql, str]]:
    """(store URL, sql on the events table, kind): 15 demo patients recorded, then a writer
    process started that keeps recording until the test ends."""
    if request.param == "sqlite":
        url = str(tmp_path / "live.sqlite")
    else:
        url = str(request.getfixturevalue("pg_url"))
    service = CourseService(open_application(parse_store_url(url)))
    try:
        service.execute_batch([parse_command(c) for c in cohort(15, seed=3)])
        table = service.app.recorder.events_table_name  # type: ignore[attr-defined]
    finally:
        service.close()
    if request.param == "sqlite":

        def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            with sqlite3.connect(url, timeout=30) as conn:
                return conn.execute(
                    statement.replace("%s", "?").replace("EVENTS", table), args
                ).fetchall()

    else:
        import psycopg

        def sql(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            with psycopg.connect(url, autocommit=True) as conn:
                cur = conn.execute(statement.replace("EVENTS", table), args)
                return cur.fetchall() if cur.description else []

    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(stop), str(HERE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        writer.stdout.readline()  # the writer is recording
        yield url, sql, request.param
    finally:
        stop.touch()
        try:
            _out, err = writer.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            writer.kill()
            _out, err = writer.communicate()
        assert writer.returncode == 0, err


def _sid(kind: str, pid: str) -> Any:
    return stream_id(pid).hex if kind == "sqlite" else stream_id(pid)


def _verify_while_writing(
    url: str, sql: Sql, rounds: int, snapshots: int = 0, sealed: str | None = None
) -> list[Any]:
    """Verifies (against the seal ``sealed``, when given) until ``rounds`` of them overlapped
    writes (the log grew while they ran) and at least ``snapshots`` snapshots had been taken
    before one started. Returns every report (overlapping or not)."""
    service = CourseService(open_application(parse_store_url(url)))
    assert service.app.snapshots is not None
    snapshot_table = service.app.snapshots.recorder.events_table_name  # type: ignore[attr-defined]
    reports, overlapped = [], 0
    deadline = time.monotonic() + 120
    try:
        while True:
            taken = sql(f"SELECT COUNT(*) FROM {snapshot_table}", ())[0][0]
            if overlapped >= rounds and taken >= snapshots:
                break
            assert time.monotonic() < deadline, (taken, overlapped, len(reports))
            before = sql("SELECT COUNT(*) FROM EVENTS", ())[0][0]
            report = verify(service.log, io.StringIO(sealed) if sealed else None)
            after = sql("SELECT COUNT(*) FROM EVENTS", ())[0][0]
            overlapped += after != before
            reports.append(report)
    finally:
        service.close()
    return reports


def test_verify_while_a_site_records_reports_no_false_problem(live: Any) -> None:
    url, sql, _kind = live
    reports = _verify_while_writing(url, sql, rounds=8, snapshots=3)
    for report in reports:
        assert report.problems == [], [str(p) for p in report.problems]
        # Exactly the rows at or below the mark were checked, and the mark moved on each time.
        assert report.events == report.rows > 0
    marks = [r.up_to for r in reports]
    assert marks == sorted(marks) and marks[0] < marks[-1], marks
    assert sum(r.snapshots for r in reports) > 0  # long courses' snapshots were checked too


def test_tampering_is_still_named_while_a_site_records(live: Any) -> None:
    url, sql, kind = live
    service = CourseService(open_application(parse_store_url(url)))
    try:
        out = io.StringIO()
        sealing = seal(service.log, out)  # sealed while the site records
    finally:
        service.close()
    assert sealing.ok and sealing.sealed is not None
    assert sealing.sealed["up_to_notification"] == sealing.up_to > 0
    (last,) = sql(
        "SELECT MAX(originator_version) FROM EVENTS WHERE originator_id = %s",
        (_sid(kind, "P-0009"),),
    )[0]
    sql(
        "DELETE FROM EVENTS WHERE originator_id = %s AND originator_version = %s",
        (_sid(kind, "P-0009"), last),
    )
    sql(
        "UPDATE EVENTS SET "
        + (
            "state = CAST(replace(CAST(state AS TEXT), 'demo.site-01.emr', 'someone.else') AS BLOB)"
            if kind == "sqlite"
            else "state = convert_to(replace(convert_from(state, 'UTF8'), 'demo.site-01.emr', "
            "'someone.else'), 'UTF8')"
        )
        + " WHERE originator_id = %s AND originator_version = 3",
        (_sid(kind, "P-0004"),),
    )
    sql(
        "DELETE FROM EVENTS WHERE originator_id = %s AND originator_version = 1",
        (_sid(kind, "P-0008"),),
    )
    for report in _verify_while_writing(url, sql, rounds=3, sealed=out.getvalue()):
        problems = [str(p) for p in report.problems]
        assert len(problems) == 4, problems
        assert problems[0].startswith("P-0004 v3: [chain]")
        assert problems[1] == (
            "P-0008 v1: [seal] sealed with 11 event(s) but its registration is gone from the log "
            "(the stream's rows were deleted)"
        )
        assert problems[2] == (
            f"P-0009 v{last}: [seal] sealed at v{last} but the stream now ends at "
            f"v{last - 1}: v{last} was deleted"
        )
        assert problems[3].startswith(f"stream {stream_id('P-0008')} v2: [registration]")
        assert "belong to no registered patient" in problems[3]


def test_a_verify_reports_the_position_it_verified(live: Any) -> None:
    url, sql, _kind = live
    service = CourseService(open_application(parse_store_url(url)))
    try:
        report = verify(service.log)
    finally:
        service.close()
    time.sleep(0.2)
    (now,) = sql("SELECT COUNT(*) FROM EVENTS", ())[0]
    assert report.up_to > 0 and report.rows == report.events < now
    assert report.to_json()["verified_up_to_notification"] == report.up_to


def test_verify_the_in_memory_store_while_a_thread_records(memory_service: CourseService) -> None:
    """The in-memory store (one process): a thread records while verify runs on the same app."""
    memory_service.execute_batch([parse_command(c) for c in cohort(10, seed=3)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def record() -> None:
        try:
            for command in itertools.islice(cohort(400, seed=11, prefix="W"), 300):
                if stop.is_set():
                    return
                memory_service.execute(parse_command(command))
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    writer = threading.Thread(target=record)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads finely (one process, one GIL)
    writer.start()
    reports, overlapped = [], 0
    try:
        while writer.is_alive():
            before = memory_service.app.recorder.max_notification_id()
            reports.append(verify(memory_service.log))
            overlapped += memory_service.app.recorder.max_notification_id() != before
    finally:
        stop.set()
        writer.join(60)
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert overlapped >= 3, (overlapped, len(reports))
    for report in reports:
        assert report.problems == [], [str(p) for p in report.problems]
        assert report.events == report.rows == report.up_to
    assert reports[0].up_to < reports[-1].up_to
