"""API tokens and the audit-access log, kept in the same database as the events.

A token is shown once, when it is made; only its SHA-256 is stored, with the actor and role it
stands for, who made it and when, and when (and by whom) it was revoked. The HTTP service maps a
bearer token to an :class:`~cart_course.contract.Actor`; the recorded actor of a command comes from
here, never from the request body.

The audit-access log records each read of an audit endpoint (who, when, what) in the same store.

Backends follow the event store: ``memory:`` keeps both in this process, a SQLite file gets two
small tables beside the event tables, PostgreSQL gets the same two tables in the same database.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .contract import UNPRINTABLE_CATEGORIES, check_printable
from .errors import CartCourseError, InvalidCommandError, StoreError
from .protocol.queries import system_actor_problem
from .sites import SITES_DDL, SiteStore
from .storage import StoreSettings

#: Every role a token may carry. ``service`` and ``clinician`` write commands; ``monitor`` reads
#: the views; ``auditor`` reads everything including the audit; ``admin`` manages tokens.
#: ``monitor`` and ``data_manager`` open, close and re-open data queries; the site (``clinician``)
#: answers them (issue 17); a data manager reads what a monitor reads.
ROLES = ("service", "clinician", "monitor", "auditor", "admin", "data_manager")
#: The roles a token may be limited to one or more sites in (issue 17): auditors and admins are
#: trial-wide by definition (auditors see everything; admins manage tokens and sites).
SITE_SCOPED_ROLES = ("service", "clinician", "monitor")
TOKEN_PREFIX = "cc_"
#: How long a verified token is trusted without asking the database again. A revocation through
#: this process (``DELETE /v1/tokens/{id}``) takes effect at once; one made elsewhere (the CLI,
#: another server process) within this many seconds.
TOKEN_CACHE_SECONDS = 2.0
#: How long writing an audit-access log entry may wait for the database (another writer holding
#: its write lock) before the read is refused with ``503`` instead of being served unlogged.
ACCESS_LOG_TIMEOUT_SECONDS = 5.0
#: How long other writes (issuing and revoking tokens) may wait for the database's write lock.
WRITE_TIMEOUT_SECONDS = 30.0
#: Seconds a PostgreSQL token store waits for a connection: a request is authenticated first,
#: so a server that is down answers 503 in this time rather than after a long wait.
TOKEN_CONNECT_TIMEOUT = 5

SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS cart_course_tokens (
        id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, actor TEXT NOT NULL,
        role TEXT NOT NULL, name TEXT, created_at TEXT NOT NULL, created_by TEXT,
        revoked_at TEXT, revoked_by TEXT)""",
    """CREATE TABLE IF NOT EXISTS cart_course_access_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
        role TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL,
        status INTEGER NOT NULL)""",
)
POSTGRES_DDL = (
    SQLITE_DDL[0],
    """CREATE TABLE IF NOT EXISTS cart_course_access_log (
        id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
        role TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL,
        status INTEGER NOT NULL)""",
)
#: Issue 17: the sites a token is limited to (none: trial-wide), the trial's sites, and the
#: scope of each access-log entry (a column added to the tables of earlier releases).
SCOPE_DDL = (
    """CREATE TABLE IF NOT EXISTS cart_course_token_sites (
        token_id TEXT NOT NULL, site TEXT NOT NULL, PRIMARY KEY (token_id, site))""",
    *SITES_DDL,
)
#: The access-log entry's scope: "trial" or the token's sites ("S01,S02").
TRIAL_WIDE = "trial"
COLUMNS = "id, token_hash, actor, role, name, created_at, created_by, revoked_at, revoked_by"


class TokenNotFoundError(CartCourseError):
    code = "token_not_found"
    title = "Token not found"

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(f"no token with id {token_id!r}; see 'cart-course tokens list'")


@attrs.frozen(kw_only=True)
class TokenInfo:
    """What is known about a token (never the token itself)."""

    id: str
    actor: str
    role: str
    name: str | None
    created_at: str
    created_by: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None
    #: The sites the token is limited to (issue 17); empty: trial-wide.
    sites: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def scope(self) -> str:
        """ "trial" (every site) or the sites, comma-separated (what the access log records)."""
        return ",".join(self.sites) if self.sites else TRIAL_WIDE

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "sites": list(self.sites), "active": self.active}


@attrs.frozen(kw_only=True)
class AccessEntry:
    id: int
    at: str
    actor: str
    role: str
    method: str
    path: str
    query: str
    status: int
    #: The token's scope (issue 17): "trial", or the sites it is limited to ("S01,S02");
    #: None for entries written before scopes existed.
    scope: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


#: The longest actor id and token name (the same limit as an actor in a command).
MAX_NAME = 200


#: What a token's actor or name may not hold: the contract's unprintable categories (control,
#: invisible format characters such as U+200B and U+202E, line and paragraph separators) and lone
#: surrogates.
_UNPRINTABLE = UNPRINTABLE_CATEGORIES | {"Cs"}


def _check_text(value: object, field: str, example: str) -> None:
    """A printable name: a non-blank string of at most :data:`MAX_NAME` characters, without
    control characters (newlines, NUL, ...), invisible format characters (zero width space,
    bidirectional overrides, ...), line or paragraph separators, or lone surrogates."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidCommandError(field, f"must be a non-empty string, e.g. {example}")
    if len(value) > MAX_NAME:
        raise InvalidCommandError(
            field, f"must be at most {MAX_NAME} characters; it has {len(value)}"
        )
    check_printable(value, field, example, _UNPRINTABLE)


def check_token_sites(sites_store: SiteStore, role: str, sites: Sequence[str]) -> tuple[str, ...]:
    """The sites a token of ``role`` is limited to, checked: known sites, and only for the roles
    that may be limited (:data:`SITE_SCOPED_ROLES`)."""
    if isinstance(sites, str) or not isinstance(sites, Sequence):
        raise InvalidCommandError("sites", 'must be a list of site ids, e.g. ["S01"]')
    if not sites:
        return ()
    if role not in SITE_SCOPED_ROLES:
        raise InvalidCommandError(
            "sites",
            f"{role} tokens are trial-wide (auditors see everything, admins manage the trial); "
            f"only {', '.join(SITE_SCOPED_ROLES)} tokens may be limited to sites",
        )
    return sites_store.check_known(list(sites))


def check_actor_role(actor: str, role: str, name: str | None = None) -> None:
    """Refuse an actor id, role or token name that a command's actor could not carry."""
    _check_text(actor, "actor", "nurse.kim")
    reserved = system_actor_problem(actor)
    if reserved is not None:
        raise InvalidCommandError("actor", reserved)
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidCommandError("role", f"{role!r} is not a role; roles: {', '.join(ROLES)}")
    if name is not None:
        _check_text(name, "name", '"K. Kim" (or null)')


class TokenStore:
    """Tokens and the audit-access log over a small SQL surface (subclasses: SQLite, PostgreSQL)."""

    placeholder = "?"
    cache_seconds = TOKEN_CACHE_SECONDS
    log_timeout = ACCESS_LOG_TIMEOUT_SECONDS
    #: On an encrypted store: (path, query) -> the same with each patient id as its keyed
    #: pseudonym (``streamids.access_log_pseudonymiser``; set by ``bootstrap.build_tokens``).
    pseudonymise: Callable[[str, str], tuple[str, str]] | None = None

    def __init__(self) -> None:
        # token hash -> (trusted until (monotonic), info); only active tokens are cached
        self._verified: dict[str, tuple[float, TokenInfo]] = {}
        self._generation = 0  # bumped by every revocation through this store
        #: The trial's sites, in the same database (``cart_course.sites``).
        self.sites = SiteStore(self)

    def _create_scopes(self) -> None:
        """The tables of issue 17, and the access log's ``scope`` column (added to a table of
        an earlier release: its entries keep NULL, "before scopes")."""
        for ddl in SCOPE_DDL:
            self._execute(ddl)
        if "scope" not in self._access_log_columns():
            try:
                self._execute("ALTER TABLE cart_course_access_log ADD COLUMN scope TEXT")
            except Exception:
                # two processes opening an earlier release's store at once: both saw the
                # column missing and one of them added it first ("duplicate column name")
                if "scope" not in self._access_log_columns():
                    raise

    def _access_log_columns(self) -> set[str]:
        raise NotImplementedError

    def _token_sites(self, token_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        if not token_ids:
            return {}
        marks = ",".join("?" * len(token_ids))
        rows = self._execute(
            self._sql(
                f"SELECT token_id, site FROM cart_course_token_sites WHERE token_id IN ({marks}) "
                "ORDER BY token_id, site"
            ),
            tuple(token_ids),
        )
        out: dict[str, list[str]] = {}
        for token_id, site in rows:
            out.setdefault(token_id, []).append(site)
        return {k: tuple(v) for k, v in out.items()}

    def _with_sites(self, infos: builtins.list[TokenInfo]) -> builtins.list[TokenInfo]:
        found = self._token_sites([i.id for i in infos])
        return [attrs.evolve(i, sites=found[i.id]) if i.id in found else i for i in infos]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _execute_log(self, sql: str, params: Sequence[Any]) -> None:
        """Write an access-log entry, waiting at most :attr:`log_timeout` for the database."""
        self._execute(sql, params)

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder)

    # -- tokens --------------------------------------------------------------------------------

    def add(
        self,
        actor: str,
        role: str,
        *,
        name: str | None = None,
        created_by: str | None = None,
        token: str | None = None,
        sites: Sequence[str] = (),
    ) -> tuple[TokenInfo, str]:
        """Make a token for ``actor`` in ``role``; returns its info and the token (shown once).

        ``sites``: the sites the token is limited to (issue 17); none: trial-wide."""
        check_actor_role(actor, role, name)
        scoped = check_token_sites(self.sites, role, sites)
        token = token or new_token()
        digest = hash_token(token)
        info = TokenInfo(
            id=digest[:12],
            actor=actor,
            role=role,
            name=name,
            created_at=_now(),
            created_by=created_by,
            sites=scoped,
        )
        # the sites first: a token row never exists without its limits (a failure in between
        # leaves rows naming no token, which limit nothing)
        for site in scoped:
            self._execute(
                self._sql("INSERT INTO cart_course_token_sites (token_id, site) VALUES (?,?)"),
                (info.id, site),
            )
        self._execute(
            self._sql(f"INSERT INTO cart_course_tokens ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"),
            (
                info.id,
                digest,
                info.actor,
                info.role,
                info.name,
                info.created_at,
                info.created_by,
                None,
                None,
            ),
        )
        return info, token

    def _row(self, row: tuple[Any, ...]) -> TokenInfo:
        return TokenInfo(
            id=row[0],
            actor=row[2],
            role=row[3],
            name=row[4],
            created_at=row[5],
            created_by=row[6],
            revoked_at=row[7],
            revoked_by=row[8],
        )

    def lookup(self, token: str) -> TokenInfo | None:
        """The token's info (revoked or not), or None when it was never issued."""
        rows = self._execute(
            self._sql(f"SELECT {COLUMNS} FROM cart_course_tokens WHERE token_hash = ?"),
            (hash_token(token),),
        )
        return self._with_sites([self._row(rows[0])])[0] if rows else None

    def authenticate(self, token: str) -> TokenInfo | None:
        """The active token's info, or None (unknown or revoked).

        A verified token is remembered for :data:`TOKEN_CACHE_SECONDS`; unknown and revoked tokens
        are never remembered (a token issued elsewhere works at once).
        """
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._verified.get(digest)
        if hit is not None and now < hit[0]:
            return hit[1]
        generation = self._generation
        rows = self._execute(
            self._sql(f"SELECT {COLUMNS} FROM cart_course_tokens WHERE token_hash = ?"), (digest,)
        )
        info = self._row(rows[0]) if rows else None
        if info is None or not info.active:
            self._verified.pop(digest, None)
            return None
        info = self._with_sites([info])[0]
        if generation == self._generation:  # no revocation raced with this read
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[digest] = (now + self.cache_seconds, info)
        return info

    def forget(self, token_id: str | None = None) -> None:
        """Drop remembered verifications (of one token id, or all)."""
        self._generation += 1
        for digest in list(self._verified):
            if token_id is None or digest.startswith(token_id):
                self._verified.pop(digest, None)

    def list(self, *, include_revoked: bool = True) -> list[TokenInfo]:
        rows = self._execute(f"SELECT {COLUMNS} FROM cart_course_tokens ORDER BY created_at, id")
        infos = self._with_sites([self._row(r) for r in rows])
        return infos if include_revoked else [i for i in infos if i.active]

    def get(self, token_id: str) -> TokenInfo:
        rows = self._execute(
            self._sql(f"SELECT {COLUMNS} FROM cart_course_tokens WHERE id = ?"), (token_id,)
        )
        if not rows:
            raise TokenNotFoundError(token_id)
        return self._with_sites([self._row(rows[0])])[0]

    def revoke(self, token_id: str, *, revoked_by: str | None = None) -> TokenInfo:
        """Revoke a token (idempotent: revoking a revoked token keeps the first revocation)."""
        self.get(token_id)
        self._execute(
            self._sql(
                "UPDATE cart_course_tokens SET revoked_at = ?, revoked_by = ? "
                "WHERE id = ? AND revoked_at IS NULL"
            ),
            (_now(), revoked_by, token_id),
        )
        self.forget(token_id)
        return self.get(token_id)

    # -- audit-access log ----------------------------------------------------------------------

    def log_access(
        self,
        *,
        actor: str,
        role: str,
        method: str,
        path: str,
        query: str,
        status: int,
        scope: str = TRIAL_WIDE,
    ) -> None:
        """Write one entry; raises :class:`StoreError` when it cannot be written in time (the
        caller must then not serve the read)."""
        if self.pseudonymise is not None:
            path, query = self.pseudonymise(path, query)
        try:
            self._execute_log(
                self._sql(
                    "INSERT INTO cart_course_access_log "
                    "(at, actor, role, method, path, query, status, scope) "
                    "VALUES (?,?,?,?,?,?,?,?)"
                ),
                (_now(), actor, role, method, path, query, status, scope),
            )
        except Exception as exc:
            why = exc.message if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
            raise StoreError(f"the audit-access log cannot be written ({why})") from None

    def access_log(self, *, after: int = 0, limit: int = 100) -> builtins.list[AccessEntry]:
        rows = self._execute(
            self._sql(
                "SELECT id, at, actor, role, method, path, query, status, scope "
                "FROM cart_course_access_log WHERE id > ? ORDER BY id LIMIT ?"
            ),
            (after, limit),
        )
        return [
            AccessEntry(
                id=int(r[0]),
                at=r[1],
                actor=r[2],
                role=r[3],
                method=r[4],
                path=r[5],
                query=r[6],
                status=int(r[7]),
                scope=r[8],
            )
            for r in rows
        ]

    def ping(self) -> None:
        self._execute("SELECT 1")


class SQLiteTokenStore(TokenStore):
    """Two connections to a file: one reads (authentication never waits behind a writer: the
    store runs in WAL mode), one writes, each under its own lock; a write waits a bounded time
    for SQLite's write lock (the access log :attr:`log_timeout`, other writes
    :data:`WRITE_TIMEOUT_SECONDS`) and then fails with :class:`StoreError`."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(WRITE_TIMEOUT_SECONDS * 1000)}")
        if path == ":memory:":  # one database per connection: share it (no other writers)
            self._write_lock = self._lock
            self._write_conn = self._conn
        else:
            self._write_lock = threading.Lock()
            self._write_conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for ddl in SQLITE_DDL:
            self._execute(ddl)
        self._create_scopes()

    def _access_log_columns(self) -> set[str]:
        rows = self._execute("SELECT name FROM pragma_table_info('cart_course_access_log')")
        return {str(r[0]) for r in rows}

    def _run(
        self,
        conn: sqlite3.Connection,
        lock: threading.Lock,
        sql: str,
        params: Sequence[Any],
        timeout: float | None,
    ) -> list[tuple[Any, ...]]:
        if not lock.acquire(timeout=-1 if timeout is None else timeout):
            raise StoreError(
                f"the token store is busy: no connection within {timeout:g} s; retry later"
            )
        try:
            if timeout is not None:
                conn.execute(f"PRAGMA busy_timeout = {max(1, int(timeout * 1000))}")
            return list(conn.execute(sql, tuple(params)).fetchall())
        except sqlite3.IntegrityError as exc:
            raise InvalidCommandError("token", f"already issued ({exc})") from None
        except sqlite3.OperationalError as exc:
            waited = "" if timeout is None else f" after waiting {timeout:g} s for another writer"
            raise StoreError(f"the token store cannot answer: {exc}{waited}") from None
        finally:
            lock.release()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if sql.lstrip()[:6].upper() == "SELECT":
            return self._run(self._conn, self._lock, sql, params, None)
        return self._run(self._write_conn, self._write_lock, sql, params, WRITE_TIMEOUT_SECONDS)

    def _execute_log(self, sql: str, params: Sequence[Any]) -> None:
        self._run(self._write_conn, self._write_lock, sql, params, self.log_timeout)

    def close(self) -> None:
        with self._write_lock:
            if self._write_conn is not self._conn:
                self._write_conn.close()
        with self._lock:
            self._conn.close()


class MemoryTokenStore(SQLiteTokenStore):
    """For ``memory:`` stores: an in-memory SQLite database living as long as this process."""

    def __init__(self) -> None:
        super().__init__(":memory:")


#: The PostgreSQL advisory lock held while the token tables are created (any fixed 64-bit
#: number that no other part of the application uses: the first 8 bytes of
#: SHA-256("cart_course token schema")).
SCHEMA_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"cart_course token schema").digest()[:8], "big", signed=True
)


class PostgresTokenStore(TokenStore):
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        import psycopg

        super().__init__()
        self._psycopg = psycopg
        self._url = url
        self._lock = threading.Lock()
        self._conn: Any = None
        # Processes opening the store at once (ingest and HTTP workers) create the tables one
        # after the other: concurrent CREATE ... IF NOT EXISTS clash on PostgreSQL's catalog
        # ("type ... already exists", a unique violation on pg_type).
        self._execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            for ddl in POSTGRES_DDL:
                self._execute(ddl)
            self._create_scopes()
        finally:
            self._execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))

    def _access_log_columns(self) -> set[str]:
        rows = self._execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'cart_course_access_log'"
        )
        return {str(r[0]) for r in rows}

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(
                self._url, autocommit=True, connect_timeout=TOKEN_CONNECT_TIMEOUT
            )
        return self._conn

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        psycopg = self._psycopg
        with self._lock:
            for attempt in range(2):
                try:
                    cur = self._connect().execute(sql, tuple(params))
                    return list(cur.fetchall()) if cur.description else []
                except psycopg.errors.UniqueViolation as exc:
                    # an INSERT of a token that exists; not a schema statement (two processes
                    # creating the tables at once clash on the catalog: the caller retries)
                    if "token" in sql and not sql.lstrip().upper().startswith(("CREATE", "ALTER")):
                        raise InvalidCommandError("token", f"already issued ({exc})") from None
                    raise
                except psycopg.OperationalError as exc:
                    self._conn = None
                    if attempt:
                        # the server is down or unreachable: the request's answer is 503 (the
                        # store does not answer), not an unexpected failure
                        raise StoreError(f"the token store cannot answer: {exc}") from None
            raise AssertionError("unreachable")

    def _execute_log(self, sql: str, params: Sequence[Any]) -> None:
        """The insert waits at most :attr:`log_timeout` for locks and for this store's
        connection (authentication shares it, so it is never held longer than that)."""
        if not self._lock.acquire(timeout=self.log_timeout):
            raise StoreError(
                f"the token store is busy: no connection within {self.log_timeout:g} s"
            )
        try:
            conn = self._connect()
            millis = max(1, int(self.log_timeout * 1000))
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {millis}")
                    conn.execute(f"SET LOCAL statement_timeout = {millis}")
                    conn.execute(sql, tuple(params))
            except self._psycopg.OperationalError:
                if conn.closed:  # the connection broke; a timeout leaves it usable
                    self._conn = None
                raise
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_token_store(settings: StoreSettings) -> TokenStore:
    """The token store living beside the event store of ``settings``."""
    try:
        if settings.kind == "memory":
            return MemoryTokenStore()
        if settings.kind == "sqlite":
            assert settings.path is not None
            settings.path.parent.mkdir(parents=True, exist_ok=True)
            return SQLiteTokenStore(str(settings.path))
        return PostgresTokenStore(settings.url)
    except CartCourseError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open the token store in {settings.display}: {exc}") from None


#: The demo actors, one per role; ``serve --demo`` issues each a fresh random token per run.
DEMO_ACTORS = {
    "admin": "demo.admin",
    "clinician": "dr.demo",
    "monitor": "monitor.demo",
    "auditor": "auditor.demo",
    "service": "ehr.demo",
    "data_manager": "dm.demo",
}
#: The well-known tokens earlier releases issued for ``make run``: never enabled again (anyone
#: reading the source knows them); ``serve --demo`` revokes them where a store still has them.
WELL_KNOWN_DEMO_TOKENS = tuple(f"demo-{role}-token" for role in DEMO_ACTORS)
#: ``created_by`` of the tokens ``serve --demo`` issues (and of the well-known ones, formerly).
DEMO_ISSUERS = ("serve --demo", "make run")


def retire_well_known_tokens(store: TokenStore) -> list[TokenInfo]:
    """Revoke the well-known demo tokens of earlier releases still active; returns them."""
    retired = []
    for token in WELL_KNOWN_DEMO_TOKENS:
        info = store.lookup(token)
        if info is not None and info.active:
            retired.append(store.revoke(info.id, revoked_by="serve"))
    return retired


def only_demo_tokens(store: TokenStore) -> bool:
    """True when every token in the store was issued by a demo run (or there is none)."""
    return all(i.created_by in DEMO_ISSUERS for i in store.list())


def issue_demo_tokens(store: TokenStore) -> dict[str, tuple[str, str]]:
    """Fresh random demo tokens, one per role (returns role -> (actor, token), shown once).

    The tokens of earlier demo runs and the well-known ones of earlier releases are revoked, so
    only this run's tokens work.
    """
    retire_well_known_tokens(store)
    for info in store.list(include_revoked=False):
        if info.created_by in DEMO_ISSUERS:
            store.revoke(info.id, revoked_by="serve --demo")
    out: dict[str, tuple[str, str]] = {}
    for role, actor in DEMO_ACTORS.items():
        _, token = store.add(actor, role, name=f"demo {role}", created_by="serve --demo")
        out[role] = (actor, token)
    return out
