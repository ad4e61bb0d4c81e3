"""Where issued checkpoints and the leaf hashes they cover are kept: two tables of their own
beside the event tables (SQLite file, PostgreSQL database; this process's memory for ``memory:``).

Nothing here is trusted by verification: the stored leaf hashes are used only after they were
found to hash to a root the auditor holds signed, and a stored checkpoint only when its signature
verifies with a public key the auditor gives.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from ..storage import StoreSettings

_DDL = (
    """CREATE TABLE IF NOT EXISTS cart_course_checkpoints (
        size {big} PRIMARY KEY, up_to {big} NOT NULL, root TEXT NOT NULL,
        issued_at TEXT NOT NULL, frontier TEXT NOT NULL, note TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS cart_course_leaves (
        position {big} PRIMARY KEY, notification_id {big} NOT NULL, stream_id TEXT NOT NULL,
        version TEXT NOT NULL, patient_id TEXT, leaf TEXT NOT NULL)""",
)

#: A leaf as stored: (position, notification id, stream id, version, patient id or None, hex).
LeafRow = tuple[int, int, str, str, str | None, str]


@attrs.frozen(kw_only=True)
class StoredCheckpoint:
    size: int
    up_to: int
    root: str
    issued_at: str
    frontier: list[list[object]]
    note: str


class LedgerStore:
    """The ledger's tables, in one SQL dialect for SQLite and PostgreSQL."""

    def __init__(self, conn: Any, kind: str) -> None:
        self.conn = conn
        self.kind = kind
        #: One connection shared by the threads of a server: one statement or transaction at a
        #: time.
        self.lock = threading.RLock()

    @classmethod
    def open(cls, store: StoreSettings) -> LedgerStore:
        if store.kind == "postgres":
            import psycopg

            conn: Any = psycopg.connect(store.url, autocommit=True, connect_timeout=10)
            db = cls(conn, "postgres")
        else:
            target = ":memory:" if store.kind == "memory" else str(store.path)
            conn = sqlite3.connect(
                target, timeout=30, isolation_level=None, check_same_thread=False
            )
            db = cls(conn, "sqlite")
        db.create()
        return db

    def create(self) -> None:
        big = "BIGINT" if self.kind == "postgres" else "INTEGER"
        for statement in _DDL:
            with contextlib.suppress(Exception):  # created meanwhile by another process
                self.conn.execute(statement.format(big=big))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.kind == "postgres" else statement

    def _rows(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            cursor = self.conn.execute(self._sql(statement), params)
            return [tuple(row) for row in cursor.fetchall()]

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One writer at a time: SQLite ``BEGIN IMMEDIATE``; PostgreSQL a table lock."""
        with self.lock:
            yield from self._writing()

    def _writing(self) -> Iterator[None]:
        if self.kind == "postgres":
            with self.conn.transaction():
                self.conn.execute("LOCK TABLE cart_course_checkpoints IN SHARE ROW EXCLUSIVE MODE")
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def latest(self) -> StoredCheckpoint | None:
        rows = self._rows(
            "SELECT size, up_to, root, issued_at, frontier, note FROM cart_course_checkpoints "
            "ORDER BY size DESC LIMIT 1"
        )
        return self._checkpoint(rows[0]) if rows else None

    def checkpoints(self) -> list[StoredCheckpoint]:
        rows = self._rows(
            "SELECT size, up_to, root, issued_at, frontier, note FROM cart_course_checkpoints "
            "ORDER BY size"
        )
        return [self._checkpoint(row) for row in rows]

    @staticmethod
    def _checkpoint(row: tuple[Any, ...]) -> StoredCheckpoint:
        try:
            frontier = json.loads(row[4])
        except (TypeError, ValueError):
            frontier = []
        return StoredCheckpoint(
            size=int(row[0]),
            up_to=int(row[1]),
            root=str(row[2]),
            issued_at=str(row[3]),
            frontier=frontier if isinstance(frontier, list) else [],
            note=str(row[5]),
        )

    def add(
        self, checkpoint: StoredCheckpoint, leaves: Sequence[LeafRow], *, page: int = 500
    ) -> None:
        """Store a checkpoint and the leaves it adds (inside :meth:`writing`)."""
        insert = self._sql(
            "INSERT INTO cart_course_leaves "
            "(position, notification_id, stream_id, version, patient_id, leaf) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        for start in range(0, len(leaves), page):
            chunk = leaves[start : start + page]
            if self.kind == "postgres":
                with self.conn.cursor() as cursor:
                    cursor.executemany(insert, chunk)
            else:
                self.conn.executemany(insert, chunk)
        self.conn.execute(
            self._sql(
                "INSERT INTO cart_course_checkpoints (size, up_to, root, issued_at, frontier, note) "
                "VALUES (?, ?, ?, ?, ?, ?)"
            ),
            (
                checkpoint.size,
                checkpoint.up_to,
                checkpoint.root,
                checkpoint.issued_at,
                json.dumps(checkpoint.frontier),
                checkpoint.note,
            ),
        )

    def leaves(self, size: int | None = None) -> list[bytes]:
        """The stored leaf hashes in position order (the first ``size``); a position missing or
        a hash that is not hex ends the list there (the caller finds it does not hash to the
        signed root)."""
        bound = "" if size is None else f" WHERE position < {int(size)}"
        out: list[bytes] = []
        for position, leaf in self._rows(
            f"SELECT position, leaf FROM cart_course_leaves{bound} ORDER BY position"
        ):
            if position != len(out):
                break
            try:
                out.append(bytes.fromhex(str(leaf)))
            except ValueError:
                break
        return out

    def leaf_row(self, position: int) -> LeafRow | None:
        rows = self._rows(
            "SELECT position, notification_id, stream_id, version, patient_id, leaf "
            "FROM cart_course_leaves WHERE position = ?",
            (position,),
        )
        if not rows:
            return None
        p, nid, sid, version, pid, leaf = rows[0]
        return int(p), int(nid), str(sid), str(version), pid, str(leaf)

    def position_of(self, stream: str, version: str, size: int) -> int | None:
        rows = self._rows(
            "SELECT position FROM cart_course_leaves WHERE stream_id = ? AND version = ? "
            "AND position < ? ORDER BY position LIMIT 1",
            (stream, version, size),
        )
        return int(rows[0][0]) if rows else None

    def patient_of(self, stream: str) -> str | None:
        rows = self._rows(
            "SELECT patient_id FROM cart_course_leaves WHERE stream_id = ? "
            "AND patient_id IS NOT NULL LIMIT 1",
            (stream,),
        )
        return str(rows[0][0]) if rows else None
