"""Concurrency: expected_version conflicts, automatic retry of a version clash, and several OS
processes writing the same patients at once on SQLite and PostgreSQL, losing and doubling nothing.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import queue
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import T0, Course, crs, envelope

from cart_course.contract import parse_command
from cart_course.course import PatientCourse
from cart_course.errors import VersionConflictError
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

WORKERS = 4
PATIENTS = ("C-1", "C-2", "C-3")
SHARED = 8  # commands every worker sends (same key, same payload): recorded once
OWN = 8  # commands only this worker sends (own keys): each recorded once
SHARED_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def test_expected_version_mismatch_is_a_version_conflict(service: CourseService) -> None:
    p = Course(service, "V-1")
    p.screen()
    p.apheresis()
    assert service.record("V-1").version == 3
    with pytest.raises(VersionConflictError) as info:
        p.do("report_toxicity", {"toxicity": crs(1)}, expected_version=2)
    body = info.value.to_json()
    assert body["error"] == "version_conflict"
    assert (body["expected_version"], body["actual_version"]) == (2, 3)
    assert len(service.events("V-1")) == 3  # nothing recorded
    # The right expected version records.
    result = p.do("report_toxicity", {"toxicity": crs(1)}, expected_version=3)
    assert result.version == 4


def _shared_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Two services (or processes) share a store only on SQLite and PostgreSQL."""
    if backend == "sqlite":
        return str(tmp_path / "shared.sqlite")
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
def test_a_clash_between_two_services_is_retried_without_expected_version(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = _shared_url(backend, tmp_path, request)
    first = CourseService(open_application(parse_store_url(store_url)))
    second = CourseService(open_application(parse_store_url(store_url)))
    try:
        p = Course(first, "R-1")
        p.screen()
        p.apheresis()
        # The second service caches version 3, then the first moves the patient on to version 4.
        assert second.record("R-1").version == 3
        p.do("report_toxicity", {"toxicity": crs(1)})
        # The second writes from its stale view: the clash is retried on fresh state, not lost.
        late = parse_command(
            envelope(
                "report_toxicity",
                "R-1",
                {"toxicity": crs(2)},
                at=T0 + dt.timedelta(days=10),
                key="late",
            )
        )
        result = second.execute(late)
        assert result.version == 5
        versions = [e.originator_version for e in first.events("R-1")]
        assert versions == [1, 2, 3, 4, 5]
        # With an expected version, the same stale situation is a conflict instead.
        stale = parse_command(
            envelope(
                "report_toxicity",
                "R-1",
                {"toxicity": crs(1)},
                at=T0 + dt.timedelta(days=11),
                key="stale",
                expected_version=4,
            )
        )
        with pytest.raises(VersionConflictError):
            first.execute(stale)
    finally:
        first.close()
        second.close()


def _toxicity_command(patient_id: str, key: str, minute: int) -> Any:
    return parse_command(
        envelope(
            "report_toxicity",
            patient_id,
            {"toxicity": crs(1)},
            at=T0 + dt.timedelta(days=30, minutes=minute),
            key=key,
        )
    )


def _writer(url: str, worker: int, start: Any, results: Any) -> None:
    """One OS process: shared and own commands on every patient, single and batched saves."""
    service = CourseService(open_application(parse_store_url(url)))
    acknowledged: list[tuple[str, str, int]] = []
    try:
        start.wait(30)
        for i in range(max(SHARED, OWN)):
            commands = []
            for pid in PATIENTS:
                if i < SHARED:
                    commands.append(_toxicity_command(pid, f"shared:{pid}:{i}", i))
                if i < OWN:
                    commands.append(_toxicity_command(pid, f"w{worker}:{pid}:{i}", 1000 + i))
            if worker % 2:  # odd workers: one transaction per round
                for command, result in zip(commands, service.execute_batch(commands), strict=True):
                    if isinstance(result, Exception):
                        raise result
                    acknowledged.append((command.key, result.status, result.version))
            else:
                for command in commands:
                    result = service.execute(command)
                    acknowledged.append((command.key, result.status, result.version))
        results.put((worker, acknowledged, None))
    except BaseException as exc:
        results.put((worker, acknowledged, f"{type(exc).__name__}: {exc}"))
    finally:
        service.close()


def _run_writers(url: str) -> list[tuple[str, str, int]]:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, w, start, results)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    start.set()
    collected = []
    try:
        for _ in procs:
            collected.append(results.get(timeout=180))
    except queue.Empty:
        alive = [p.pid for p in procs if p.is_alive()]
        for proc in procs:
            proc.kill()
        pytest.fail(f"writers did not finish in 180 s; still running: {alive}; done: {collected}")
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    errors = [err for _, _, err in collected if err]
    assert errors == []
    return [ack for _, acks, _ in collected for ack in acks]


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
def test_four_processes_writing_the_same_patients_lose_and_double_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _shared_url(backend, tmp_path, request)
    setup = CourseService(open_application(parse_store_url(url)))
    try:
        for pid in PATIENTS:
            p = Course(setup, pid)
            p.screen()
            p.apheresis()
    finally:
        setup.close()

    acknowledged = _run_writers(url)

    # Every worker got an answer for every command it sent.
    assert len(acknowledged) == WORKERS * len(PATIENTS) * (SHARED + OWN)
    statuses = Counter(status for _, status, _ in acknowledged)
    shared_keys = {f"shared:{pid}:{i}" for pid in PATIENTS for i in range(SHARED)}
    own_keys = {f"w{w}:{pid}:{i}" for w in range(WORKERS) for pid in PATIENTS for i in range(OWN)}
    # A shared command is recorded by exactly one worker; the others get "duplicate".
    assert statuses["recorded"] == len(shared_keys) + len(own_keys)
    assert statuses["duplicate"] == (WORKERS - 1) * len(shared_keys)

    reader = CourseService(open_application(parse_store_url(url)))
    try:
        stored_keys: Counter[str] = Counter()
        for pid in PATIENTS:
            events = reader.events(pid)
            versions = [e.originator_version for e in events]
            assert versions == list(range(1, len(versions) + 1))  # contiguous, no gaps
            assert len(events) == 3 + SHARED + WORKERS * OWN
            toxicity = [e for e in events if isinstance(e, PatientCourse.ToxicityReported)]
            stored_keys.update(e.idempotency_key for e in toxicity)
            # The replayed state agrees: every report is a toxicity (episode or update).
            assert reader.record(pid).version == len(events)
        # Exactly once: every acknowledged key is stored once, nothing else is stored.
        assert set(stored_keys) == shared_keys | own_keys
        assert max(stored_keys.values()) == 1
        # Each acknowledgement names the version that holds its key.
        by_key = {}
        for pid in PATIENTS:
            for e in reader.events(pid):
                if isinstance(e, PatientCourse.ToxicityReported):
                    by_key[e.idempotency_key] = e.originator_version
        for key, _, version in acknowledged:
            assert by_key[key] == version
    finally:
        reader.close()


def _screener(url: str, start: Any, results: Any) -> None:
    """One OS process screening the same new patients as the others, in batches."""
    from cart_course.demo import cohort

    service = CourseService(open_application(parse_store_url(url)))
    try:
        screens = [parse_command(c) for c in cohort(40, 12) if c["command"] == "screen"]
        start.wait(30)
        statuses: list[tuple[str, str]] = []
        for i in range(0, len(screens), 10):
            batch = screens[i : i + 10]
            for command, result in zip(batch, service.execute_batch(batch), strict=True):
                if isinstance(result, Exception):
                    raise result
                statuses.append((command.patient_id, result.status))
        results.put((statuses, None))
    except BaseException as exc:
        results.put(([], f"{type(exc).__name__}: {exc}"))
    finally:
        service.close()


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
def test_four_processes_screening_the_same_new_patients_register_each_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Batches that screen patients new to the store, sent by four processes at once: each
    batch asks the store once which patients exist; when two processes both register the same
    patient, one save fails as a clash and its batch is decided again. Every patient is
    registered once, every screening recorded once, every other answer a duplicate."""
    url = _shared_url(backend, tmp_path, request)
    open_application(parse_store_url(url)).close()  # tables exist before the race
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_screener, args=(url, start, results)) for _ in range(WORKERS)]
    for proc in procs:
        proc.start()
    start.set()
    collected = [results.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert [err for _, err in collected if err] == []
    statuses = Counter(status for acks, _ in collected for _, status in acks)
    patients = {pid for acks, _ in collected for pid, _ in acks}
    assert len(patients) >= 30
    assert statuses == {"recorded": len(patients), "duplicate": (WORKERS - 1) * len(patients)}
    reader = CourseService(open_application(parse_store_url(url)))
    try:
        assert sorted(reader.patient_ids()) == sorted(patients)
        for pid in patients:
            events = reader.events(pid)
            assert [type(e).__name__ for e in events] == ["Registered", "Screened"]
    finally:
        reader.close()
