"""Monitoring views: catch-up rate into the board vs a raw decode of the same notifications, and
board query latency at 100k patients on SQLite."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url
from cart_course.views import Views, queries
from cart_course.views.runner import _Touched

from .harness import QUICK, Section, percentiles

PATIENTS = 150 if QUICK else 2000
BOARD_ROWS = 5_000 if QUICK else 100_000
QUERY_RUNS = 100 if QUICK else 1000
WARM_UP = 20 if QUICK else 100
#: The board's rows are spread over three sites (issue 17: the board filtered by site).
SITES = ("S01", "S02", "S03")


def _populate(service: CourseService, n: int) -> None:
    """A demo cohort whose last patients are still mid-course today (commands after now dropped)."""
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(hours=7 * n + 24 * 60)
    commands = [c for c in cohort(n, 11, start=start) if c["occurred_at"] <= now.isoformat()]
    for i in range(0, len(commands), 500):
        service.execute_batch([parse_command(c) for c in commands[i : i + 500]])


def _raw_decode(service: CourseService) -> int:
    recorder, to_event = service.app.recorder, service.app.mapper.to_domain_event
    position, n = 0, 0
    while True:
        notes = recorder.select_notifications(start=position, limit=1000, inclusive_of_start=False)
        if not notes:
            return n
        for note in notes:
            to_event(note)
        n += len(notes)
        position = notes[-1].id


def _fill_board(views: Views, rows: int) -> None:
    """100k board rows through the view's own write path (``Views._write``): the records of the
    caught-up cohort are copied under new patient ids (and new stream ids), 5,000 per transaction.
    The tracking position ends at the log's head, so a later catch-up processes new events."""
    templates = list(views._cache.values())
    head = views.log_position()
    views.reset()
    stamp = dt.datetime.now(dt.UTC)
    for first in range(0, rows, 5000):
        touched: dict[Any, _Touched] = {}
        for i in range(first, min(rows, first + 5000)):
            record = attrs.evolve(
                templates[i % len(templates)],
                patient_id=f"B-{i:06d}",
                site=SITES[i % len(SITES)],  # spread over the trial's sites (issue 17)
            )
            t = _Touched(f"00000000-0000-4000-8000-{i:012d}", None)
            t.record, t.recorded_at, t.position = record, stamp, i + 1
            t.tox_dirty = bool(record.toxicities)
            touched[i] = t
        with views.db.transaction():
            views._write(touched, head, stamp)


def _latency(fn: Any) -> tuple[float, float]:
    """p50 and p99 in ms of ``QUERY_RUNS`` calls, after ``WARM_UP`` unmeasured ones."""
    for _ in range(WARM_UP):
        fn()
    samples = []
    for _ in range(QUERY_RUNS):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    p50, p99 = percentiles(samples, 50, 99)
    return p50, p99


def _writer(url: str, stop: Any, written: Any) -> None:
    """A separate process recording new patients' events into the same SQLite file."""
    service = CourseService(open_application(parse_store_url(url)))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    commands = list(cohort(400, 23, start=start, prefix="L"))
    try:
        for i in range(0, len(commands), 5):
            if stop.is_set():
                break
            service.execute_batch([parse_command(c) for c in commands[i : i + 5]])
            written.value = i + 5
            time.sleep(0.002)
    finally:
        service.close()


def _best_interleaved(fns: list[Any], rounds: int) -> list[float]:
    """The fastest of ``rounds`` runs of each function, in seconds, the functions taking turns
    (so a busy moment of the machine falls on all of them, not on one)."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def _catch_up_section(service: CourseService, views: Views) -> Section:
    events = int(service.app.recorder.max_notification_id() or 0)

    def catch_up() -> None:
        views.reset()
        views.catch_up()

    # The views' own decoder, as the store configures it: the fast path must be on here (a
    # plain SQLite file), or this benchmark would measure something users do not run.
    assert views._decode.fast, "the views' fast decoding path is off for a plain SQLite store"

    def catch_up_with_mapper() -> None:
        views._decode.fast = False  # the same decoder as the baseline: what the rest costs
        try:
            catch_up()
        finally:
            views._decode.fast = True

    raw, caught, mapper_caught = _best_interleaved(
        [lambda: _raw_decode(service), catch_up, catch_up_with_mapper], 3 if QUICK else 7
    )
    catch_up()  # leave the views caught up with the fast decoder (the templates of the board)
    return Section(
        title="Views: catch-up into the board (SQLite)",
        method=(
            f"A demo cohort of {PATIENTS} patients ({events} events) in a SQLite file. "
            "Baseline: select every notification and decode it with the application's "
            "mapper (`to_domain_event`), nothing else. Measured: rebuild the views from "
            "position 0 (decode, evolve each patient's record, upsert board, toxicity, "
            "deviation and cohort rows and the tracking position, one transaction per "
            "5,000 notifications). The views decode plain-JSON events with a fast path "
            "(msgspec, which ships with Litestar; same event objects as the mapper); the "
            "third row makes them decode through the mapper, as the baseline does, to show "
            "what evolving and writing cost on their own. Best of 7, the three taking turns. Target: ratio >= 0.5."
        ),
        rows=[
            {"path": "raw decode (baseline)", "events/s": events / raw, "ratio": 1.0},
            {
                "path": "catch-up into the views",
                "events/s": events / caught,
                "ratio": raw / caught,
            },
            {
                "path": "catch-up, decoding through the mapper",
                "events/s": events / mapper_caught,
                "ratio": raw / mapper_caught,
            },
        ],
    )


def run() -> list[Section]:
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "bench.sqlite")
        store = parse_store_url(url)
        service = CourseService(open_application(store))
        views = Views(service.log, store)
        try:
            _populate(service, PATIENTS)
            catch_section = _catch_up_section(service, views)
            _fill_board(views, BOARD_ROWS)
            now = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
            db = views.db
            by_state = db.fetchall(
                "SELECT state, COUNT(*) FROM view_board GROUP BY state ORDER BY 2 DESC"
            )
            raw_conn = sqlite3.connect(url)
            pk = f"B-{BOARD_ROWS // 2:06d}"
            base50, base99 = _latency(
                lambda: raw_conn.execute(
                    "SELECT * FROM view_board WHERE patient_id = ?", (pk,)
                ).fetchall()
            )
            rows: list[dict[str, Any]] = [
                {
                    "query": "raw sqlite3 primary-key lookup (baseline)",
                    "matching": 1,
                    "p50 ms": base50,
                    "p99 ms": base99,
                    "p99 / baseline p99": 1.0,
                }
            ]

            def measure(name: str, filters: dict[str, Any], *, pull: bool = False) -> None:
                def query() -> None:
                    if pull:
                        views.catch_up()
                    queries.board(db, **filters, now=now, limit=100)
                    queries.count(db, **filters, now=now)

                matching = queries.count(db, **filters, now=now)
                p50, p99 = _latency(query)
                rows.append(
                    {
                        "query": name,
                        "matching": matching,
                        "p50 ms": p50,
                        "p99 ms": p99,
                        "p99 / baseline p99": p99 / base99,
                    }
                )

            cases: list[tuple[str, dict[str, Any]]] = [
                (f"state={s} (largest)", {"state": s}) for s, _ in by_state[:1]
            ]
            cases += [(f"state={s}", {"state": s}) for s, _ in by_state[-2:]]
            cases.append(("overdue", {"overdue": True}))
            cases.append(("open toxicity", {"toxicity": True}))
            # after the course (issue 16): the next action a follow-up visit / an SAE report
            cases.append(
                ("follow-up due, overdue", {"overdue": True, "action": "record_follow_up"})
            )
            cases.append(("SAE report, overdue", {"overdue": True, "action": "record_sae_report"}))
            cases.append(("follow-up due (next action a visit)", {"action": "record_follow_up"}))
            cases.append(("SAE report due", {"action": "record_sae_report"}))
            cases.append(("AE grade >= 3 (open or recent)", {"min_ae_grade": 3}))
            # a multi-site trial (issue 17): one site's board, and its overdue rows
            cases.append(("site=S01", {"sites": {"S01"}}))
            cases.append(("site=S01, overdue", {"sites": {"S01"}, "overdue": True}))
            cases.append(
                (f"site=S01, state={by_state[0][0]}", {"sites": {"S01"}, "state": by_state[0][0]})
            )
            for name, filters in cases:
                measure(f"status {name}: first 100 rows + count", filters)
            largest = by_state[0][0]
            measure(
                f"status state={largest}, with its catch-up (idle log)",
                {"state": largest},
                pull=True,
            )
            measure("status overdue, with its catch-up (idle log)", {"overdue": True}, pull=True)
            # Under load: another process records events while the monitors query (and catch up).
            spawn = multiprocessing.get_context("spawn")
            stop, written = spawn.Event(), spawn.Value("i", 0)
            writer = spawn.Process(target=_writer, args=(url, stop, written), daemon=True)
            writer.start()
            head = views.log_position()
            deadline = time.monotonic() + 60
            while views.log_position() == head and time.monotonic() < deadline:
                time.sleep(0.05)  # the writer is up once its first events land
            started, first = time.monotonic(), views.log_position()
            try:
                measure(
                    f"status state={largest}, with its catch-up, writer running",
                    {"state": largest},
                    pull=True,
                )
                measure(
                    "status overdue, with its catch-up, writer running",
                    {"overdue": True},
                    pull=True,
                )
                measure(
                    "status overdue follow-up due, with its catch-up, writer running",
                    {"overdue": True, "action": "record_follow_up"},
                    pull=True,
                )
                measure(
                    "status overdue SAE report, with its catch-up, writer running",
                    {"overdue": True, "action": "record_sae_report"},
                    pull=True,
                )
            finally:
                stop.set()
                writer.join(timeout=30)
            rate = (views.log_position() - first) / max(time.monotonic() - started, 1e-9)
            raw_conn.close()
            query_section = Section(
                title=f"Views: board query latency at {BOARD_ROWS:,} patients (SQLite)",
                method=(
                    f"{BOARD_ROWS:,} board rows written through the views' own write path "
                    f"(`Views._write`) from copies of the {PATIENTS} caught-up records under new "
                    "patient ids; 'overdue' judged 10 days from now. Each query is what "
                    "`cart-course status` runs: the first 100 matching rows (by patient id; "
                    "overdue: most overdue first) plus the matching count; 'with its catch-up' "
                    "adds the pull-based catch-up a query runs first (`--no-catch-up` skips it). "
                    f"'Writer running': a separate process records new patients' events into the "
                    f"same file meanwhile (about {rate:,.0f} events/s here), which each query's "
                    f"catch-up then applies. {WARM_UP} warm-up runs, then {QUERY_RUNS} measured "
                    "runs each. Target: p99 < 10 ms."
                ),
                rows=rows,
            )
            return [catch_section, query_section]
        finally:
            views.close()
            service.close()
