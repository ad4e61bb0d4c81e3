"""``cart-course store migrate-stream-ids``: an encrypted store written with uuid5 stream ids
re-keyed in place (``cart_course.streamids``), without changing one recorded byte.

What changes, in one transaction:

- each stream's id column (events and snapshots): ``uuid5(patient)`` -> the keyed id;
- the ledger's index of leaves (``cart_course_leaves.stream_id``), when the store has one;
- the audit-access log: patient ids in logged paths and queries -> their keyed pseudonyms;
- ``cart_course_stream_aliases``: each re-keyed stream's recorded uuid5 id, encrypted with the
  cipher key (AES-GCM, a fresh nonce each: without the key the table tells nothing);
- the marker: keyed, ``migrated_up_to`` = the log's position at the migration, authenticated.

What does not change: every event's and snapshot's stored bytes, so every hash, hash chain,
e-signature, seal, log digest, Merkle leaf and signed checkpoint stays what it was. Those cover
the stream id an event was *recorded* under; the audit, the ledger and the live replay take it
from the event's own (encrypted) canonical bytes or the alias table (rows at or below
``migrated_up_to``). The report names the log digest and the Merkle root of the whole log
before and after (the latter on the store reopened under its new ids): they must be equal
(``cart-course store migrate-stream-ids`` exits 1 and says to restore the backup when they
are not).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import msgspec

from .course import stream_id as uuid5_stream_id
from .errors import CartCourseError, CipherKeyError
from .storage import CANONICAL_MARK, is_canonical_state
from .streamids import (
    LABEL_MARKER,
    LABEL_STREAM,
    SCHEME_KEYED,
    Marker,
    MetaTables,
    derive_key,
    keyed_uuid,
    now_text,
    pseudonymise_request,
)

logger = logging.getLogger(__name__)


class MigrationError(CartCourseError):
    """The store cannot be migrated as it is: says why and what to do."""

    code = "migration_refused"
    title = "Stream ids not migrated"


@attrs.frozen(kw_only=True)
class MigrationReport:
    streams: int
    events: int
    snapshots: int
    leaves: int
    access_log_rows: int
    migrated_up_to: int
    log_digest_before: str
    log_digest_after: str
    merkle_root_before: str
    merkle_root_after: str
    migrated_at: str

    @property
    def unchanged(self) -> bool:
        return (
            self.log_digest_before == self.log_digest_after
            and self.merkle_root_before == self.merkle_root_after
        )

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "unchanged": self.unchanged}


def merkle_root(log: Any) -> str:
    """The RFC 9162 root of the whole log's tree, as the ledger computes it (hex)."""
    from .ledger.log import rows
    from .ledger.merkle import Frontier

    frontier = Frontier()
    for row in rows(log):
        frontier.append(row.leaf)
    return str(frontier.root().hex())


def _log_digest(log: Any) -> str:
    from .audit.integrity import verify

    report = verify(log, replay=False)
    if not report.ok:
        first = report.problems[0]
        raise MigrationError(
            f"the store does not verify ({first.patient_id} v{first.version}: {first.message}); "
            "nothing was migrated. Run 'cart-course audit verify' and resolve it first"
        )
    return str(report.log_digest)


def _registrations(app: Any, log: Any) -> dict[str, str]:
    """Every stream (stored id text) -> its patient id, checking each row is a canonical course
    event recorded under that stream's uuid5 id."""
    from .eventlog import REGISTERED_TOPIC

    cipher, compressor = app.mapper.cipher, app.mapper.compressor
    patients: dict[str, str] = {}
    for page in log.pages(0, page=500):
        for note in page:
            oid = note.originator_id
            sid = oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))
            state = bytes(note.state)
            if cipher:
                state = cipher.decrypt(state)
            if compressor:
                state = compressor.decompress(state)
            data = msgspec.json.decode(state) if CANONICAL_MARK in state else None
            if not (isinstance(data, dict) and is_canonical_state(data)):
                raise MigrationError(
                    f"notification {note.id} (stream {sid} v{note.originator_version}) is not "
                    "stored in the canonical form that names its stream id; this release "
                    "migrates stores whose every event is (written 2026-11 and later). Nothing "
                    "was migrated"
                )
            if data["originator_id"] != str(sid):
                raise MigrationError(
                    f"notification {note.id}: its stored stream id differs from the stream it "
                    "was recorded under; run 'cart-course audit verify'. Nothing was migrated"
                )
            if note.topic == REGISTERED_TOPIC:
                pid = data.get("patient_id")
                if not isinstance(pid, str) or uuid5_stream_id(pid) != sid:
                    raise MigrationError(
                        f"stream {sid} is not the uuid5 stream of the patient it registers; run "
                        "'cart-course audit verify'. Nothing was migrated"
                    )
                patients[str(sid)] = pid
    return patients


def migrate_stream_ids(service: Any, cipher_key: str) -> dict[str, Any]:
    """Re-key the uuid5 stream ids of the encrypted store of ``service`` in place (see the
    module's docstring); returns what was done, before the evidence is re-checked on the store
    reopened (:func:`check_migrated`)."""
    app, log = service.app, service.log
    ids = app.stream_ids
    if MetaTables(app.recorder).kind == "memory":
        raise MigrationError("the in-process store (memory:) keeps nothing to migrate")
    if ids.key_problem is not None:
        raise CipherKeyError(f"cannot migrate: {ids.key_problem}; nothing was migrated")
    if app.mapper.cipher is None:
        raise MigrationError(
            "the store is not encrypted (no CART_COURSE_CIPHER_KEY): its stream ids stay uuid5, "
            "as its events hold the patient ids in clear anyway; nothing to migrate"
        )
    if ids.keyed:
        raise MigrationError(
            "the store's stream ids are keyed already"
            + (
                f" (migrated up to notification {ids.migrated_up_to})"
                if ids.migrated_up_to is not None
                else " (created keyed)"
            )
            + "; nothing to migrate"
        )
    mark = int(log.max_notification_id())
    digest = _log_digest(log)
    root = merkle_root(log)
    patients = _registrations(app, log)
    stream_key = derive_key(cipher_key, LABEL_STREAM)
    renames = {sid: str(keyed_uuid(stream_key, pid)) for sid, pid in patients.items()}
    tables = MetaTables(app.recorder)
    cipher = app.mapper.cipher
    aliases = {new: cipher.encrypt(old.encode()) for old, new in renames.items()}
    migrated_at = now_text()
    marker = Marker(
        scheme=SCHEME_KEYED,
        migrated_up_to=mark,
        migrated_at=migrated_at,
        migrated_streams=len(renames),
    )
    marker_text = marker.text(derive_key(cipher_key, LABEL_MARKER))
    pseudonym = ids.pseudonym
    counts = {"events": 0, "snapshots": 0, "leaves": 0, "access": 0}
    with app.recorder.datastore.transaction(commit=True) as cursor:
        _migrate_sql(app, tables, cursor, renames, counts, pseudonym, mark)
        tables.create(cursor)
        tables.write_aliases(cursor, aliases)
        tables.write(marker_text, replace=True, cursor=cursor)
    if tables.kind == "sqlite":
        _compact_sqlite(app)
    return {
        "streams": len(renames),
        "events": counts["events"],
        "snapshots": counts["snapshots"],
        "leaves": counts["leaves"],
        "access_log_rows": counts["access"],
        "migrated_up_to": mark,
        "log_digest_before": digest,
        "merkle_root_before": root,
        "migrated_at": migrated_at,
    }


def check_migrated(log: Any, done: dict[str, Any]) -> MigrationReport:
    """The evidence, on the store reopened after the migration: the log digest and the Merkle
    root of the whole log, as before."""
    return MigrationReport(
        **done,
        log_digest_after=_log_digest(log),
        merkle_root_after=merkle_root(log),
    )


def _compact_sqlite(app: Any) -> None:
    """Rebuild the SQLite file and empty its write-ahead log, so that the old ids do not stay
    readable in free pages (PostgreSQL: ``VACUUM FULL`` by the administrator, see
    docs/operations.md)."""
    import sqlite3

    path = app.env.get("SQLITE_DBNAME")
    if not path or path == ":memory:":
        return
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:  # the migration is committed: say what is left to do
        logger.warning(
            "stream ids migrated, but the file was not compacted (%s): run VACUUM on it, so "
            "that the old ids do not stay in its free pages",
            exc,
        )


def _changed(cursor: Any, postgres: bool) -> int:
    """Rows the last UPDATE changed."""
    if postgres:
        return max(int(cursor.rowcount), 0)
    cursor.execute("SELECT changes()")
    row = cursor.fetchone()
    return int(row[0])


def _table_exists(tables: MetaTables, cursor: Any, name: str) -> bool:
    if tables.kind == "sqlite":
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    else:
        cursor.execute("SELECT to_regclass(%s) AS name", (name,))
    row = cursor.fetchone()
    value = row["name"] if isinstance(row, dict) else (row[0] if row else None)
    return value is not None


def _migrate_sql(
    app: Any,
    tables: MetaTables,
    cursor: Any,
    renames: dict[str, str],
    counts: dict[str, int],
    pseudonym: Callable[[str], str],
    mark: int,
) -> None:
    postgres = tables.kind == "postgres"
    ph = "%s" if postgres else "?"
    schema = getattr(app.recorder.datastore, "schema", "") if postgres else ""

    def qualified(name: str) -> str:
        return f'"{schema}"."{name}"' if schema else name

    event_table = qualified(app.recorder.events_table_name)
    snapshot_table = qualified(app.snapshots.recorder.events_table_name) if app.snapshots else None
    if postgres:
        # the library locks the events table so on every insert: writers wait for the migration
        cursor.execute(f"LOCK TABLE {event_table} IN EXCLUSIVE MODE")
    if postgres:
        cursor.execute(f"SELECT MAX(notification_id) AS n FROM {event_table}")
    else:
        cursor.execute(f"SELECT MAX(rowid) FROM {event_table}")
    row = cursor.fetchone()
    now = (row["n"] if isinstance(row, dict) else row[0]) or 0
    if int(now) != mark:
        raise MigrationError(
            "events were recorded while the migration read the store; stop every writer "
            "(server, ingest) and run it again. Nothing was migrated"
        )

    def key(value: str) -> Any:
        return uuid.UUID(value) if postgres else uuid.UUID(value).hex

    for old, new in renames.items():
        for table, name in ((event_table, "events"), (snapshot_table, "snapshots")):
            if table is None:
                continue
            cursor.execute(
                f"UPDATE {table} SET originator_id = {ph} WHERE originator_id = {ph}",
                (key(new), key(old)),
            )
            counts[name] += _changed(cursor, postgres)
    if _table_exists(tables, cursor, "cart_course_leaves"):
        for old, new in renames.items():
            cursor.execute(
                f"UPDATE cart_course_leaves SET stream_id = {ph} WHERE stream_id = {ph}",
                (new, old),
            )
            counts["leaves"] += _changed(cursor, postgres)
    if _table_exists(tables, cursor, "cart_course_access_log"):
        cursor.execute("SELECT id, path, query FROM cart_course_access_log ORDER BY id")
        for entry in cursor.fetchall():
            rid, path, query = (
                (entry["id"], entry["path"], entry["query"]) if isinstance(entry, dict) else entry
            )
            new_path, new_query = pseudonymise_request(path, query, pseudonym)
            if (new_path, new_query) != (path, query):
                cursor.execute(
                    f"UPDATE cart_course_access_log SET path = {ph}, query = {ph} WHERE id = {ph}",
                    (new_path, new_query, rid),
                )
                counts["access"] += 1
