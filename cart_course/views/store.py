"""Where the views live: tables next to the events, in the same database.

SQLite file -> the same file (own connection, ``BEGIN IMMEDIATE`` transactions); PostgreSQL -> the
same database (psycopg, ``SELECT ... FOR UPDATE`` on the tracking row); memory store -> an
in-memory SQLite database of this process. One dialect of SQL serves both (``?`` placeholders are
rewritten to ``%s`` for psycopg; ``ON CONFLICT ... DO UPDATE`` works on both).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from ..storage import StoreSettings

TRACKING = "monitoring"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS view_tracking (
  name TEXT PRIMARY KEY,
  position {big} NOT NULL,
  last_recorded_at TEXT,
  updated_at TEXT
);
CREATE TABLE IF NOT EXISTS view_board (
  patient_id TEXT PRIMARY KEY,
  stream_id TEXT NOT NULL,
  state TEXT NOT NULL,
  course_number INTEGER NOT NULL,
  version INTEGER NOT NULL,
  protocol_version TEXT,
  first_occurred_at TEXT,
  last_occurred_at TEXT,
  last_recorded_at TEXT,
  next_action TEXT,
  due_on TEXT,
  hold INTEGER NOT NULL,
  planned_cells {real},
  delivered_cells {real},
  fractions_given INTEGER NOT NULL,
  last_infusion_on TEXT,
  response TEXT,
  open_toxicities INTEGER NOT NULL,
  max_open_grade INTEGER,
  severe_open INTEGER NOT NULL,
  deviations INTEGER NOT NULL,
  position {big} NOT NULL,
  overdue_from TEXT,
  product_status TEXT,
  product_collected_on TEXT,
  vein_to_vein_days INTEGER,
  manufacturing_failures INTEGER NOT NULL DEFAULT 0,
  next_kind TEXT,
  next_visit TEXT,
  visit_window_start TEXT,
  visit_window_end TEXT,
  sae_case_id TEXT,
  sae_report TEXT,
  sae_due_at TEXT,
  max_ae_grade INTEGER,
  open_ae_grade INTEGER,
  site TEXT NOT NULL DEFAULT 'S00'
);
CREATE UNIQUE INDEX IF NOT EXISTS view_board_stream ON view_board (stream_id);
CREATE INDEX IF NOT EXISTS view_board_state ON view_board (state, patient_id);
CREATE INDEX IF NOT EXISTS view_board_due ON view_board (due_on, patient_id);
CREATE INDEX IF NOT EXISTS view_board_overdue ON view_board (overdue_from, patient_id);
CREATE INDEX IF NOT EXISTS view_board_position ON view_board (position);
CREATE INDEX IF NOT EXISTS view_board_tox ON view_board (patient_id) WHERE open_toxicities > 0;
CREATE INDEX IF NOT EXISTS view_board_kind_overdue ON view_board (next_kind, overdue_from, patient_id);
CREATE INDEX IF NOT EXISTS view_board_kind ON view_board (next_kind, patient_id);
CREATE INDEX IF NOT EXISTS view_board_kind_due ON view_board (next_kind, due_on, overdue_from);
CREATE INDEX IF NOT EXISTS view_board_open_ae ON view_board (open_ae_grade, patient_id);
CREATE INDEX IF NOT EXISTS view_board_site ON view_board (site, patient_id);
CREATE INDEX IF NOT EXISTS view_board_site_overdue ON view_board (site, overdue_from, patient_id);
CREATE INDEX IF NOT EXISTS view_board_site_state ON view_board (site, state, patient_id);
CREATE INDEX IF NOT EXISTS view_board_site_tox ON view_board (site, patient_id)
  WHERE open_toxicities > 0;
CREATE TABLE IF NOT EXISTS view_toxicity (
  patient_id TEXT NOT NULL,
  toxicity_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  term TEXT,
  grade INTEGER NOT NULL,
  worst_grade INTEGER NOT NULL,
  scale TEXT NOT NULL,
  course_number INTEGER NOT NULL,
  onset TEXT NOT NULL,
  resolved_at TEXT,
  is_open INTEGER NOT NULL,
  severe INTEGER NOT NULL,
  opens_hold INTEGER NOT NULL,
  resolved_utc TEXT,
  PRIMARY KEY (patient_id, toxicity_id)
);
CREATE INDEX IF NOT EXISTS view_toxicity_open ON view_toxicity (patient_id) WHERE is_open = 1;
CREATE INDEX IF NOT EXISTS view_toxicity_ended ON view_toxicity (resolved_utc, worst_grade, patient_id);
CREATE TABLE IF NOT EXISTS view_deviation (
  patient_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  version INTEGER,
  trigger TEXT,
  course INTEGER,
  deviation TEXT,
  reason TEXT,
  occurred_at TEXT,
  PRIMARY KEY (patient_id, seq)
);
CREATE TABLE IF NOT EXISTS view_skipped (
  position {big} PRIMARY KEY,
  stream_id TEXT NOT NULL,
  patient_id TEXT,
  version INTEGER,
  topic TEXT,
  reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS view_skipped_stream ON view_skipped (stream_id);
CREATE TABLE IF NOT EXISTS view_differs (
  patient_id TEXT PRIMARY KEY,
  found_at TEXT NOT NULL,
  detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS view_query (
  patient_id TEXT NOT NULL,
  query_id TEXT NOT NULL,
  status TEXT NOT NULL,
  on_version INTEGER,
  field TEXT,
  rule TEXT,
  text TEXT,
  opened_by TEXT,
  opened_at TEXT NOT NULL,
  updated_at TEXT,
  answer TEXT,
  opened_occurred_at TEXT,
  opened_utc TEXT,
  PRIMARY KEY (patient_id, query_id)
);
CREATE INDEX IF NOT EXISTS view_query_open ON view_query (patient_id, opened_utc)
  WHERE status <> 'closed';
CREATE INDEX IF NOT EXISTS view_query_open_age ON view_query (opened_utc, patient_id, query_id)
  WHERE status <> 'closed';
CREATE INDEX IF NOT EXISTS view_query_status ON view_query (status, opened_utc, patient_id, query_id);
CREATE TABLE IF NOT EXISTS view_cohort (
  dimension TEXT NOT NULL,
  key TEXT NOT NULL,
  patients INTEGER NOT NULL,
  PRIMARY KEY (dimension, key)
);
"""

#: The tables a rebuild clears and recomputes (and that ``rows()`` compares), in order.
VIEW_TABLES: dict[str, str] = {
    "view_board": "patient_id",
    "view_toxicity": "patient_id, toxicity_id",
    "view_deviation": "patient_id, seq",
    "view_query": "patient_id, query_id",
    "view_cohort": "dimension, key",
    "view_skipped": "position",
}

#: A column each view table must have; a table from an older release without it is dropped
#: and the views are rebuilt from the log (they hold nothing the events do not).
_REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    # issue 16's follow-up columns: an older board is rebuilt (its next actions lack the kind)
    "view_board": ("overdue_from", "manufacturing_failures", "next_kind", "open_ae_grade", "site"),
    "view_toxicity": ("resolved_utc",),
    # a query's age counts from its clinical opening time (issue 17): an older table lacks it
    "view_query": ("opened_utc",),
}


class ViewDB:
    """A connection to the views' tables with one SQL dialect for SQLite and PostgreSQL."""

    def __init__(self, conn: Any, kind: str) -> None:
        self.conn = conn
        self.kind = kind  # "sqlite" | "postgres"

    @classmethod
    def open(cls, store: StoreSettings) -> ViewDB:
        if store.kind == "postgres":
            import psycopg

            conn: Any = psycopg.connect(store.url, autocommit=True, connect_timeout=10)
            db = cls(conn, "postgres")
        else:
            target = ":memory:" if store.kind == "memory" else str(store.path)
            if store.path is not None:
                store.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                target, timeout=30, isolation_level=None, check_same_thread=False
            )
            if store.kind != "memory":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            db = cls(conn, "sqlite")
        db.create_schema()
        return db

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.kind == "postgres" else statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.sql(statement), params)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.kind == "postgres":
            with self.conn.cursor() as cur:
                cur.executemany(self.sql(statement), rows)
        else:
            self.conn.executemany(statement, rows)

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.execute(statement, params).fetchall()]

    def fetchone(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(statement, params).fetchone()
        return None if row is None else tuple(row)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction: SQLite takes the write lock at BEGIN; PostgreSQL at the first
        ``lock_tracking``. Rolled back on any exception (or when the process dies)."""
        if self.kind == "postgres":
            with self.conn.transaction():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def create_schema(self) -> None:
        big, real = (
            ("BIGINT", "DOUBLE PRECISION") if self.kind == "postgres" else ("INTEGER", "REAL")
        )
        statements = [s.strip() for s in _SCHEMA.format(big=big, real=real).split(";") if s.strip()]
        with self.transaction():
            if self.kind == "postgres":
                # Two processes creating the schema at once would race on the catalog.
                self.execute("SELECT pg_advisory_xact_lock(4242017)")
            outdated = self._outdated_tables()
            for table in outdated:
                self.execute(f"DROP TABLE {table}")
            for statement in statements:
                self.execute(statement)
            self.execute(
                "INSERT INTO view_tracking (name, position) VALUES (?, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (TRACKING,),
            )
            if outdated:  # the views of an older release: recompute every view from the log
                for table in VIEW_TABLES:
                    self.execute(f"DELETE FROM {table}")
                self.execute(
                    "UPDATE view_tracking SET position = 0, last_recorded_at = NULL, "
                    "updated_at = NULL WHERE name = ?",
                    (TRACKING,),
                )

    def _columns(self, table: str) -> set[str]:
        if self.kind == "postgres":
            rows = self.fetchall(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
        else:
            rows = self.fetchall("SELECT name FROM pragma_table_info(?)", (table,))
        return {str(r[0]) for r in rows}

    def _outdated_tables(self) -> list[str]:
        """View tables of an older release (a required column missing)."""
        outdated = []
        for table, required in _REQUIRED_COLUMNS.items():
            columns = self._columns(table)
            if columns and not set(required) <= columns:
                outdated.append(table)
        return outdated

    def tracking(self, *, lock: bool = False) -> tuple[int, str | None, str | None]:
        """(position, record time of the last processed event, when it was processed)."""
        suffix = " FOR UPDATE" if lock and self.kind == "postgres" else ""
        row = self.fetchone(
            "SELECT position, last_recorded_at, updated_at FROM view_tracking WHERE name = ?"
            + suffix,
            (TRACKING,),
        )
        if row is None:
            return 0, None, None
        return int(row[0]), row[1], row[2]

    def mark_differing(self, found: Sequence[tuple[str, str]]) -> None:
        """Remember the patients whose rows a check found to differ from the log (replacing what
        an earlier check found; none: the views agree). The board refuses to serve while any
        is marked; a rebuild clears the marks (``view_differs``)."""
        now = dt.datetime.now(dt.UTC).isoformat()
        with self.transaction():
            self.execute("DELETE FROM view_differs")
            if found:
                self.executemany(
                    "INSERT INTO view_differs (patient_id, found_at, detail) VALUES (?, ?, ?)",
                    [(pid, now, detail) for pid, detail in found],
                )

    def differing(self) -> list[tuple[str, str, str]]:
        """(patient id, when found, what differs) of the patients a check found differing."""
        return [
            (str(r[0]), str(r[1]), str(r[2]))
            for r in self.fetchall(
                "SELECT patient_id, found_at, detail FROM view_differs ORDER BY patient_id"
            )
        ]

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every view, ordered by key (to compare a follower with a rebuild)."""
        return {
            table: self.fetchall(f"SELECT * FROM {table} ORDER BY {key}")
            for table, key in VIEW_TABLES.items()
        }
