"""The one read interface of the log (``cart_course.eventlog``) and the one composition root
(``cart_course.bootstrap``): every reader goes through them."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import Notification, Tracking

from cart_course.bootstrap import Settings, System, build_service
from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.errors import StoreError
from cart_course.eventlog import REGISTERED_TOPIC, EventLog
from cart_course.service import CourseService

PACKAGE = Path(__file__).resolve().parents[2] / "cart_course"
#: Modules that may hold the eventsourcing application: the store, the log, the service, and
#: the store's stream-id tables and their migration (``streamids``, ``rekey``: issue 14 item 7).
STORE_MODULES = {"storage.py", "eventlog.py", "service.py", "streamids.py", "rekey.py"}
REACHING_IN = re.compile(
    r"\.recorder\b|\.mapper\b|\bservice\.app\b|\.app\.(recorder|mapper|repository|snapshots|events)\b"
)


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "static" not in p.parts)


def test_no_reader_reaches_into_the_application() -> None:
    found = [
        f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for p in _sources()
        if p.name not in STORE_MODULES or p.parent != PACKAGE
        for n, line in enumerate(p.read_text().splitlines(), start=1)
        if REACHING_IN.search(line)
    ]
    assert found == []


def test_only_the_composition_root_reads_the_environment() -> None:
    found = [
        f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for p in _sources()
        if p.name != "bootstrap.py"
        for n, line in enumerate(p.read_text().splitlines(), start=1)
        if re.search(r"os\.environ|getenv\(|envvar=", line)
    ]
    assert found == []


def _demo(service: CourseService, patients: int) -> None:
    service.execute_batch([parse_command(c) for c in cohort(patients, 1)])


def test_pages_registrations_and_streams(service: CourseService) -> None:
    _demo(service, 5)
    log = service.log
    head = log.max_notification_id()
    notes = [n for page in log.pages(0, page=7) for n in page]
    assert [n.id for n in notes] == sorted(n.id for n in notes)
    assert len(notes) == head and all(isinstance(n, Notification) for n in notes)
    assert [n.id for n in log.notifications(head - 3, 10)] == [n.id for n in notes[-3:]]
    assert [n.id for n in log.pages(0, page=7, up_to=10) for n in n] == list(range(1, 11))
    registered = [n for page in log.registrations(page=2) for n in page]
    assert len(registered) == 5 and {n.topic for n in registered} == {REGISTERED_TOPIC}
    first = registered[0]
    stored = log.stream(first.originator_id)
    assert [s.originator_version for s in stored] == list(range(1, len(stored) + 1))
    assert log.to_event(stored[0]).patient_id == log.decoder()(first).patient_id
    rows = log.rows().fetch([first.originator_id])[first.originator_id]
    assert [r[0] for r in rows] == [s.originator_version for s in stored]
    assert log.count_events() == head
    assert log.count_events(up_to=10) == 10
    assert log.tracking(head) == Tracking(application_name=log.name, notification_id=head)


def test_subscribing_where_the_store_supports_it(tmp_path: Path) -> None:
    """SQLite has no ``subscribe``: the log polls there, and waits for a push elsewhere."""
    sqlite = build_service(Settings.for_store(str(tmp_path / "s.sqlite")))
    memory = build_service(Settings.for_store("memory:"))
    try:
        assert not sqlite.log.can_subscribe
        assert memory.log.can_subscribe
        for service in (sqlite, memory):
            _demo(service, 1)
            head = service.log.max_notification_id()
            assert service.log.wait_beyond(head - 1, 5.0)  # already there: at once
            started = time.monotonic()
            assert not service.log.wait_beyond(head, 0.2)  # nothing new: after the timeout
            assert 0.15 < time.monotonic() - started < 5
        # Pushed: the waiter wakes when another thread records, long before its timeout.
        head = memory.log.max_notification_id()
        writer = threading.Timer(0.2, lambda: _demo(memory, 2))
        started = time.monotonic()
        writer.start()
        assert memory.log.wait_beyond(head, 30.0)
        assert time.monotonic() - started < 10
        writer.join()
    finally:
        sqlite.close()
        memory.close()


def test_read_errors_are_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "gone.sqlite"
    service = build_service(Settings.for_store(str(path)))
    _demo(service, 1)
    log: EventLog = service.log
    recorder: Any = service.app.recorder  # the test breaks the store: readers never do this
    with recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(f"DROP TABLE {recorder.events_table_name}")
    with pytest.raises(StoreError, match="cannot read the store"):
        log.max_notification_id()
    with pytest.raises(StoreError, match="cannot read the store"):
        list(log.pages())
    service.close()


def test_the_system_builds_everything_from_settings(tmp_path: Path) -> None:
    system = System(Settings.from_env(None, {"CART_COURSE_DB": str(tmp_path / "x.sqlite")}))
    try:
        assert system.settings.store.path == tmp_path / "x.sqlite"
        _demo(system.service, 2)
        assert system.log is system.service.log
        views = system.views()
        try:
            assert views.catch_up() == system.log.max_notification_id()
        finally:
            views.close()
        info, _token = system.tokens.add("a.tester", "auditor")
        assert [i.id for i in system.tokens.list()] == [info.id]
    finally:
        system.close()
