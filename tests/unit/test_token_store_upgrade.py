"""Opening an earlier release's token store adds the access log's ``scope`` column once, even
when several processes (the ingest workers, the HTTP workers) open it at the same moment."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cart_course.tokens import SQLITE_DDL, SQLiteTokenStore


def _earlier_release_store(path: Path) -> None:
    """The token tables as the release before issue 17 made them: no ``scope`` column."""
    conn = sqlite3.connect(path)
    for ddl in SQLITE_DDL:
        conn.execute(ddl)
    conn.execute(
        "INSERT INTO cart_course_access_log (at, actor, role, method, path, query, status) "
        "VALUES ('2026-11-25T10:00:00+00:00', 'auditor.ng', 'auditor', 'GET', '/v1/audit', '', 200)"
    )
    conn.commit()
    conn.close()


def _columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute("PRAGMA table_info(cart_course_access_log)")]
    finally:
        conn.close()


def test_a_store_that_lost_the_race_to_add_the_scope_column_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens.sqlite"
    _earlier_release_store(path)
    SQLiteTokenStore(str(path)).close()  # the other process: it added the column
    assert _columns(path).count("scope") == 1

    # this process looked before the other one added it, and then tries to add it too
    real = SQLiteTokenStore._access_log_columns
    calls: list[int] = []

    def stale_first(self: SQLiteTokenStore) -> set[str]:
        calls.append(1)
        return set() if len(calls) == 1 else real(self)

    monkeypatch.setattr(SQLiteTokenStore, "_access_log_columns", stale_first)
    store = SQLiteTokenStore(str(path))
    info, _token = store.add("nurse.kim", "clinician")
    assert info.actor == "nurse.kim"
    store.close()
    assert _columns(path).count("scope") == 1
    assert len(calls) == 2  # looked, lost the race, looked again


def _at_once(opener: Callable[[], Any], count: int = 8) -> tuple[list[Any], list[BaseException]]:
    """``count`` threads call ``opener`` at the same moment: what they opened, what they raised."""
    start = threading.Barrier(count)
    opened: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            opened.append(opener())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for thing in opened:
        thing.close()
    return opened, errors


def _open_at_once(
    path: Path | str, count: int, kind: type = SQLiteTokenStore
) -> list[BaseException]:
    return _at_once(lambda: kind(str(path)), count)[1]


def test_eight_stores_opening_an_earlier_release_at_once_all_open(tmp_path: Path) -> None:
    for attempt in range(5):
        path = tmp_path / f"tokens-{attempt}.sqlite"
        _earlier_release_store(path)
        assert _open_at_once(path, 8) == []
        assert _columns(path).count("scope") == 1
        conn = sqlite3.connect(path)
        # the earlier release's entry is kept, with no scope ("before scopes")
        assert conn.execute("SELECT actor, scope FROM cart_course_access_log").fetchall() == [
            ("auditor.ng", None)
        ]
        conn.close()


def test_eight_stores_creating_a_new_store_at_once_all_open(tmp_path: Path) -> None:
    for attempt in range(5):
        path = tmp_path / f"new-{attempt}.sqlite"
        assert _open_at_once(path, 8) == []
        assert _columns(path).count("scope") == 1


def test_eight_stores_creating_the_tables_at_once_on_postgresql(pg_server: object) -> None:
    """PostgreSQL's catalog refuses two concurrent CREATE TABLE IF NOT EXISTS of one table
    ('type ... already exists'): the stores take turns (CI saw an ingest worker fail so)."""
    import uuid

    from cart_course.tokens import PostgresTokenStore

    for _attempt in range(10):
        name = f"t_{uuid.uuid4().hex[:20]}"
        url = pg_server.create_database(name)  # type: ignore[attr-defined]
        try:
            assert _open_at_once(url, 8, PostgresTokenStore) == []
            store = PostgresTokenStore(url)
            store.add("nurse.kim", "clinician")
            assert [t.actor for t in store.list()] == ["nurse.kim"]
            store.close()
        finally:
            pg_server.drop_database(name)  # type: ignore[attr-defined]


def test_eight_processes_opening_a_new_event_store_at_once_on_postgresql(
    pg_server: object,
) -> None:
    """The event store's own tables (eventsourcing's, the stream-id marker) created by eight
    openers at once: every one opens (an ingest's or a server's workers starting together)."""
    import uuid

    from cart_course.storage import open_application, parse_store_url

    for _attempt in range(5):
        name = f"t_{uuid.uuid4().hex[:20]}"
        url = pg_server.create_database(name)  # type: ignore[attr-defined]
        try:
            apps, errors = _at_once(lambda url=url: open_application(parse_store_url(url)))
            assert errors == []
            assert len(apps) == 8
        finally:
            pg_server.drop_database(name)  # type: ignore[attr-defined]
