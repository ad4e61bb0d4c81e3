"""Where an ingested event's CPU goes: each stage of the ingest path in one process, the cost of
deciding each kind of command, and the bare libraries underneath, all measured in the same run.

The ingest target (20k events/s) is a budget of CPU per event: on N CPUs at most N / 20,000 s
for everything an event costs. This section shows which stage spends it, next to what the bare
eventsourcing library and a bare ``transitions`` trigger cost on the same machine.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from cart_course.bulk import bulk_gc
from cart_course.contract import Command, parse_command
from cart_course.course import PatientCourse
from cart_course.demo import cohort
from cart_course.ingest import AUTO_MAX_WORKERS, BATCH, cpu_count
from cart_course.service import CommandResult, CourseService
from cart_course.storage import open_application, parse_store_url

from .bench_protocol import bare_trigger
from .harness import QUICK, Section

#: The kinds of command shown one by one (the rest are in the total).
KINDS = ("cease", "record_apheresis", "give_infusion", "screen", "assess_response")


class _Timed(CourseService):
    """The service, timing each command's decision and event (``_apply``) by kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent: Counter[str] = Counter()
        self.count: Counter[str] = Counter()

    def _apply(
        self, course: PatientCourse | None, command: Command, **options: Any
    ) -> tuple[CommandResult, PatientCourse | None]:
        started = time.perf_counter_ns()
        try:
            return super()._apply(course, command, **options)
        finally:
            self.spent[command.command] += time.perf_counter_ns() - started
            self.count[command.command] += 1


def _cpu(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The least CPU time (s) of ``repeat`` runs of ``fn`` (collector as the ingest runs it)."""
    best = float("inf")
    for _ in range(repeat):
        with bulk_gc() as settle:
            started = time.process_time()
            fn()
            best = min(best, time.process_time() - started)
            settle()
    return best


def _record_all(url: str, commands: Sequence[Command]) -> _Timed:
    service = _Timed(open_application(parse_store_url(url)))
    try:
        for start in range(0, len(commands), BATCH):
            service.execute_batch(commands[start : start + BATCH])
    finally:
        service.close()
    return service


def _bare_events(url: str, n_aggregates: int, per_aggregate: int) -> None:
    from .bench_commands import Trivial, _bare_app

    app = _bare_app(url)
    batch: list[Any] = []
    for i in range(n_aggregates):
        agg = Trivial(f"a{i}")
        for _ in range(per_aggregate - 1):
            agg.bump("x")
        batch.append(agg)
        if len(batch) * per_aggregate >= BATCH:
            app.save(*batch)
            batch = []
    if batch:
        app.save(*batch)
    app.close()


def _bare_trigger_us(n: int) -> float:
    """A bare ``transitions`` trigger (two states, no conditions), as ``bench_protocol``
    measures the library's floor."""
    trigger = bare_trigger()

    def run() -> None:
        for _ in range(n):
            trigger()

    return _cpu(run) / n * 1e6


def bench_ingest_budget(tmp: Path) -> Section:
    n_patients = 300 if QUICK else 3000
    raw = list(cohort(n_patients, seed=11))
    lines = [json.dumps(c) for c in raw]
    decode = msgspec.json.Decoder().decode
    commands = [parse_command(decode(line), json_data=True) for line in lines]

    def parse() -> None:
        for line in lines:
            parse_command(decode(line), json_data=True)

    parse_s = _cpu(parse)
    timed: list[_Timed] = []
    memory_s = _cpu(lambda: timed.append(_record_all("memory:", commands)))
    n_files = iter(range(1000))
    sqlite_s = _cpu(lambda: _record_all(str(tmp / f"budget-{next(n_files)}.sqlite"), commands))
    service = timed[-1]
    events = sum(service.count.values()) + n_patients  # each patient's registration too
    per = 1e6 / events

    per_aggregate = max(2, round(events / n_patients))
    bare_memory_us = _cpu(lambda: _bare_events("memory:", n_patients, per_aggregate)) * per
    bare_sqlite_us = (
        _cpu(
            lambda: _bare_events(
                str(tmp / f"bare-{next(n_files)}.sqlite"), n_patients, per_aggregate
            )
        )
        * per
    )
    trigger_us = _bare_trigger_us(20_000 if not QUICK else 2_000)

    parse_us = parse_s * 1e6 / len(lines)
    decide_us = memory_s * per
    save_us = (sqlite_s - memory_s) * per
    total_us = parse_us * len(lines) / events + sqlite_s * per
    rows: list[dict[str, Any]] = [
        {
            "stage (one process, CPU)": "decode a line, validate the envelope, digest",
            "us": parse_us,
        },
        {
            "stage (one process, CPU)": "decide and record (guard, event, hash chain; memory "
            "store), per event",
            "us": decide_us,
        },
        {
            "stage (one process, CPU)": "save in the SQLite file (insert, commit), per event",
            "us": save_us,
        },
        {"stage (one process, CPU)": "all of the above, per event", "us": total_us},
    ]
    for kind in KINDS:
        if service.count[kind]:
            rows.append(
                {
                    "stage (one process, CPU)": f"decide and record one `{kind}`",
                    "us": service.spent[kind] / service.count[kind] / 1e3,
                }
            )
    rows += [
        {
            "stage (one process, CPU)": "baseline: bare eventsourcing event, memory store",
            "us": bare_memory_us,
        },
        {
            "stage (one process, CPU)": "baseline: bare eventsourcing event, SQLite file",
            "us": bare_sqlite_us,
        },
        {"stage (one process, CPU)": "baseline: bare `transitions` trigger", "us": trigger_us},
    ]
    for row in rows:
        row["x bare eventsourcing event (SQLite)"] = row["us"] / bare_sqlite_us
    cheapest = min(service.spent[k] / service.count[k] / 1e3 for k in KINDS if service.count[k])
    cpus = min(cpu_count(), AUTO_MAX_WORKERS)
    budget = cpus * 1e6 / 20_000
    notes = [
        f"20k events/s on {cpus} CPUs leaves at most {budget:.0f} us of CPU per event for "
        f"everything (with perfect parallelism); these stages alone add up to {total_us:.0f} us "
        f"({total_us / budget:.2f}x the budget: at most {cpus * 1e6 / total_us:,.0f} events/s "
        f"on {cpus} CPUs). The ingest above spends more per event (see its CPU per event): it "
        "also reads the file, routes lines to workers, reports, and writes a store ten times "
        "larger",
        f"the cheapest command to decide and record costs {cheapest:.0f} us: "
        f"{cheapest / bare_sqlite_us:.1f} bare eventsourcing events (SQLite) or "
        f"{cheapest / trigger_us:.1f} bare transitions triggers; every event also pays the "
        "line's parse and its save",
        "per-kind figures time `CourseService._apply` (the guard through the transitions machine, "
        "the payload's facts and outcome, the event, its hash and canonical bytes); wall clock "
        "of a collector-free process, so the machine's noise shows in them",
    ]
    return Section(
        title="Where an ingested event's CPU goes",
        method=(
            f"{len(lines)} demo-cohort commands for {n_patients} patients ({events} events with "
            "registrations), in one process, best CPU time of 3 runs of each stage with the "
            "collector as the ingest sets it: decoding and parsing every line; deciding and "
            f"recording them in batches of {BATCH} on the memory store (no I/O); the same on a "
            "new SQLite file (the difference is the save). Baselines in the same run: a bare "
            f"eventsourcing application saving a trivial aggregate's events ({per_aggregate} "
            "per aggregate, the same batches) on the memory store and on a SQLite file, and a "
            "bare `transitions` trigger (two states, no conditions)."
        ),
        rows=rows,
        notes=notes,
    )
