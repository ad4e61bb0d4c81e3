"""Monitoring views: catch-up rate into the board vs a raw decode of the same notifications, and
board query latency at 100k patients on SQLite."""

from __future__ import annotations

import datetime as dt
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

from .harness import QUICK, Section, best_of, percentiles

PATIENTS = 150 if QUICK else 2000
BOARD_ROWS = 5_000 if QUICK else 100_000
QUERY_RUNS = 50 if QUICK else 300


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
    caught-up cohort are copied under new patient ids (and new stream ids), 5,000 per transaction."""
    templates = list(views._cache.values())
    views.reset()
    stamp: Any = attrs.make_class("E", ["timestamp"])(dt.datetime.now(dt.UTC))
    for first in range(0, rows, 5000):
        touched: dict[Any, _Touched] = {}
        for i in range(first, min(rows, first + 5000)):
            record = attrs.evolve(templates[i % len(templates)], patient_id=f"B-{i:06d}")
            t = _Touched(f"00000000-0000-4000-8000-{i:012d}", None)
            t.record, t.last, t.position = record, stamp, i + 1
            t.tox_dirty = bool(record.toxicities)
            touched[i] = t
        with views.db.transaction():
            views._write(touched, first + len(touched), stamp.timestamp)


def _latency(fn: Any) -> tuple[float, float]:
    samples = []
    for _ in range(QUERY_RUNS):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    p50, p99 = percentiles(samples, 50, 99)
    return p50, p99


def run() -> list[Section]:
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "bench.sqlite")
        store = parse_store_url(url)
        service = CourseService(open_application(store))
        views = Views(service.app, store)
        try:
            _populate(service, PATIENTS)
            events = int(service.app.recorder.max_notification_id() or 0)
            raw = best_of(lambda: _raw_decode(service), 3)

            def catch_up() -> None:
                views.reset()
                views.catch_up()

            caught = best_of(catch_up, 3)
            catch_section = Section(
                title="Views: catch-up into the board (SQLite)",
                method=(
                    f"A demo cohort of {PATIENTS} patients ({events} events) in a SQLite file. "
                    "Baseline: select every notification and decode it with the application's "
                    "mapper (`to_domain_event`), nothing else. Measured: rebuild the views from "
                    "position 0 (decode, evolve each patient's record, upsert board, toxicity, "
                    "deviation and cohort rows and the tracking position, one transaction per "
                    "5,000 notifications). Best of 3. Target: ratio >= 0.5."
                ),
                rows=[
                    {"path": "raw decode (baseline)", "events/s": events / raw, "ratio": 1.0},
                    {
                        "path": "catch-up into the views",
                        "events/s": events / caught,
                        "ratio": raw / caught,
                    },
                ],
            )
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
            cases: list[tuple[str, dict[str, Any]]] = [
                (f"state={s} (largest)", {"state": s}) for s, _ in by_state[:1]
            ]
            cases += [(f"state={s}", {"state": s}) for s, _ in by_state[-2:]]
            cases.append(("overdue", {"overdue": True}))
            cases.append(("open toxicity", {"toxicity": True}))
            for name, filters in cases:
                matching = queries.count(db, **filters, now=now)
                p50, p99 = _latency(
                    lambda f=filters: (  # type: ignore[misc]
                        queries.board(db, **f, now=now, limit=100),
                        queries.count(db, **f, now=now),
                    )
                )
                rows.append(
                    {
                        "query": f"status {name}: first 100 rows + count",
                        "matching": matching,
                        "p50 ms": p50,
                        "p99 ms": p99,
                        "p99 / baseline p99": p99 / base99,
                    }
                )
            raw_conn.close()
            query_section = Section(
                title=f"Views: board query latency at {BOARD_ROWS:,} patients (SQLite)",
                method=(
                    f"{BOARD_ROWS:,} board rows written through the views' own write path "
                    f"(`Views._write`) from copies of the {PATIENTS} caught-up records under new "
                    f"patient ids; 'overdue' judged 10 days from now. Each query is what "
                    f"`cart-course status` runs: the first 100 matching rows (by patient id; overdue: most overdue first) plus "
                    f"the matching count. {QUERY_RUNS} runs each. Target: p99 < 10 ms."
                ),
                rows=rows,
            )
            return [catch_section, query_section]
        finally:
            views.close()
            service.close()
