"""Patient stream ids and pseudonyms: keyed on an encrypted store, public uuid5 on a plain one.

A patient's events are stored under a stream id derived from the patient id. On a **plain**
store it is ``uuid5(PATIENT_NAMESPACE, patient id)`` (:func:`cart_course.course.stream_id`): the
store holds the patient ids in clear anyway (every event's JSON), so there is nothing to hide and
no secret to key with. On an **encrypted** store (``CART_COURSE_CIPHER_KEY``) a public function of
the patient id would let anyone with a copy of the database and the source code confirm whether
patient X is in it (compute ``uuid5(X)``, look for it), or enumerate ids (every ``P-0000`` ..
``P-9999`` in a tenth of a second). So an encrypted store keys them:

- stream id: ``HMAC-SHA256(K_stream, patient id)``, its first 16 bytes as a UUID (version 8,
  RFC 9562 "custom");
- audit-access log: a patient id in a logged path or query is written as
  ``pid-<first 10 bytes of HMAC-SHA256(K_access, patient id), hex>``;
- the store's marker (below) is authenticated by ``HMAC-SHA256(K_marker, marker)``.

Each key is derived from the cipher key with HKDF-SHA256 (RFC 5869), with its own label, so none
of them is the cipher key and none tells anything about another. Without the cipher key, a reader
of the database sees ids that confirm nothing; with it, an operator computes them again
(``cart-course store pseudonym P-0001``) and looks a patient up.

**The marker** (table ``cart_course_store_meta``, row ``stream_ids``): which scheme the store's
stream ids follow, written when an encrypted store is first opened empty, with its tag. A store
without one that already holds events was written before this scheme: it keeps uuid5 ids
(read and written as before) until ``cart-course store migrate-stream-ids`` migrates it. When
the tag does not verify with the configured key, the key is not the store's (``/ready`` is not
ready, every command refuses with ``cipher_key_mismatch``), or the marker was edited.

**Migrated stores** keep every stored event byte for byte: the events' hashes, the hash chains,
the e-signatures and the ledger's leaves cover the stream id an event was *recorded* under, so
the migration changes only the row's stream-id column (and the ledger's index of it), and keeps,
per migrated stream, its recorded (uuid5) id encrypted with the cipher key
(``cart_course_stream_aliases``). Readers that recompute a hash (the live replay, the audit, the
ledger) use the recorded id: the canonical bytes of each event carry it (encrypted), and the
ledger reads the alias table for the rows at or below the marker's ``migrated_up_to``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import attrs
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from .course import stream_id as uuid5_stream_id

#: The schemes a store's stream ids follow.
SCHEME_UUID5 = "uuid5"
SCHEME_KEYED = "hmac-sha256/1"
#: HKDF labels: one key per use, all from the cipher key.
LABEL_STREAM = b"cart-course/stream-id/v1"
LABEL_ACCESS = b"cart-course/access-log-pseudonym/v1"
LABEL_MARKER = b"cart-course/store-marker/v1"
_SALT = b"cart-course"
META_TABLE = "cart_course_store_meta"
ALIAS_TABLE = "cart_course_stream_aliases"
MARKER_NAME = "stream_ids"
#: A pseudonym in the access log: ``pid-`` and 20 hex digits.
PSEUDONYM_PREFIX = "pid-"
PSEUDONYM = re.compile(r"pid-[0-9a-f]{20}")


def derive_key(cipher_key: str, label: bytes) -> bytes:
    """A 32-byte key for one use (``label``), derived from the base64 cipher key (HKDF-SHA256)."""
    master = base64.b64decode(cipher_key.encode(), validate=True)
    key: bytes = HKDF(master, 32, _SALT, SHA256, context=label)
    return key


def keyed_uuid(key: bytes, patient_id: str) -> uuid.UUID:
    """The first 16 bytes of HMAC-SHA256(key, patient id) as a version-8 (custom) UUID."""
    digest = hmac.new(key, patient_id.encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest[:16], "big")
    n = (n & ~(0xF000 << 64)) | (8 << 76)  # version 8
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 / 9562 variant
    return uuid.UUID(int=n)


def keyed_pseudonym(key: bytes, patient_id: str) -> str:
    digest = hmac.new(key, patient_id.encode(), hashlib.sha256).digest()
    return PSEUDONYM_PREFIX + digest[:10].hex()


@attrs.frozen(kw_only=True)
class Marker:
    """What ``cart_course_store_meta`` says of the store's stream ids, and its tag."""

    scheme: str
    #: A migrated store: the highest notification id recorded under uuid5 ids, when and how many
    #: streams were migrated (None: created keyed, never migrated).
    migrated_up_to: int | None = None
    migrated_at: str | None = None
    migrated_streams: int | None = None

    def body(self) -> bytes:
        data = attrs.asdict(self)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def tag(self, key: bytes) -> str:
        return hmac.new(key, self.body(), hashlib.sha256).hexdigest()

    def text(self, key: bytes) -> str:
        return json.dumps({**attrs.asdict(self), "tag": self.tag(key)}, sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> tuple[Marker, str]:
        data = json.loads(text)
        tag = str(data.pop("tag", ""))
        return cls(**data), tag


class StreamIds:
    """The store's stream-id scheme: the stream id of a patient (cached), the pseudonym the
    access log writes for them, and what the store's marker says (or why it does not fit the
    key)."""

    def __init__(
        self,
        scheme: str = SCHEME_UUID5,
        *,
        cipher_key: str | None = None,
        marker: Marker | None = None,
        key_problem: str | None = None,
        aliases: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.scheme = scheme
        self.marker = marker
        #: Why the configured key does not fit the store's marker (None: it does, or no marker).
        self.key_problem = key_problem
        self._aliases_loader = aliases
        self._aliases: Mapping[str, str] | None = None
        self._access_key: bytes | None = None
        if cipher_key:
            self._access_key = derive_key(cipher_key, LABEL_ACCESS)
        #: The stream id of a patient (cached: one HMAC per patient and process). With a
        #: :attr:`key_problem` it finds nobody: readers refuse first (``CourseService``, the
        #: audit's key check), and a write is refused before anything is stored.
        self.stream_id: Callable[[str], uuid.UUID]
        if scheme == SCHEME_KEYED and cipher_key:
            stream_key = derive_key(cipher_key, LABEL_STREAM)
            self.stream_id = functools.lru_cache(maxsize=65_536)(
                functools.partial(keyed_uuid, stream_key)
            )
        else:
            self.stream_id = uuid5_stream_id

    @property
    def keyed(self) -> bool:
        return self.scheme == SCHEME_KEYED

    @property
    def migrated_up_to(self) -> int | None:
        """Rows at or below this notification id were recorded under uuid5 ids (migrated)."""
        return None if self.marker is None else self.marker.migrated_up_to

    def pseudonym(self, patient_id: str) -> str:
        """What the audit-access log writes for a patient id: itself on a plain store, a keyed
        pseudonym on an encrypted one."""
        if self._access_key is None:
            return patient_id
        return keyed_pseudonym(self._access_key, patient_id)

    @property
    def pseudonymises(self) -> bool:
        return self._access_key is not None

    def recorded_id(self, stream: str, notification_id: int | None) -> str:
        """The stream id the hash of a row covers: the row's own, except for a row a migration
        re-keyed (at or below ``migrated_up_to``): the uuid5 id it was recorded under."""
        up_to = self.migrated_up_to
        if up_to is None or (notification_id is not None and notification_id > up_to):
            return stream
        return self.aliases().get(stream, stream)

    def aliases(self) -> Mapping[str, str]:
        """Migrated stream id -> the uuid5 id its rows were recorded under (decrypted once)."""
        if self._aliases is None:
            self._aliases = {} if self._aliases_loader is None else self._aliases_loader()
        return self._aliases

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme}
        if self.marker is not None and self.marker.migrated_up_to is not None:
            out["migrated_up_to"] = self.marker.migrated_up_to
            out["migrated_at"] = self.marker.migrated_at
            out["migrated_streams"] = self.marker.migrated_streams
        return out


# -- the marker and alias tables, in the event store's own database ---------------------------


class MetaTables:
    """``cart_course_store_meta`` and ``cart_course_stream_aliases`` beside the events, through
    the event store's own connection (SQLite, PostgreSQL); in this process for ``memory:``."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        sqlite = sys.modules.get("eventsourcing.sqlite")
        postgres = sys.modules.get("eventsourcing.postgres")
        self.kind = "memory"
        if sqlite is not None and isinstance(recorder, sqlite.SQLiteAggregateRecorder):
            self.kind = "sqlite"
        elif postgres is not None and isinstance(recorder, postgres.PostgresAggregateRecorder):
            self.kind = "postgres"
        if self.kind == "memory":
            memory = getattr(recorder, "_cart_course_meta", None)
            if memory is None:
                memory = {"meta": {}, "aliases": {}}
                recorder._cart_course_meta = memory
            self._memory: dict[str, dict[str, Any]] = memory

    def _table(self, name: str) -> str:
        if self.kind == "postgres":
            schema = getattr(self.recorder.datastore, "schema", "") or ""
            return f'"{schema}".{name}' if schema else name
        return name

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgres" else sql

    def _run(self, cursor: Any, sql: str, params: tuple[Any, ...] = ()) -> None:
        cursor.execute(self._sql(sql), params)

    @staticmethod
    def _value(row: Any, index: int, name: str) -> Any:
        return row[name] if isinstance(row, dict) else row[index]

    def create(self, cursor: Any) -> None:
        blob = "BYTEA" if self.kind == "postgres" else "BLOB"
        self._run(
            cursor,
            f"CREATE TABLE IF NOT EXISTS {self._table(META_TABLE)} "
            "(name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        self._run(
            cursor,
            f"CREATE TABLE IF NOT EXISTS {self._table(ALIAS_TABLE)} "
            f"(stream_id TEXT PRIMARY KEY, alias {blob} NOT NULL)",
        )

    def _exists(self, cursor: Any) -> bool:
        if self.kind == "sqlite":
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (META_TABLE,)
            )
        else:
            cursor.execute("SELECT to_regclass(%s) AS name", (self._table(META_TABLE),))
        row = cursor.fetchone()
        return row is not None and self._value(row, 0, "name") is not None

    def read(self, name: str = MARKER_NAME) -> str | None:
        if self.kind == "memory":
            value = self._memory["meta"].get(name)
            return None if value is None else str(value)
        with self.recorder.datastore.transaction(commit=False) as cursor:
            if not self._exists(cursor):
                return None
            self._run(
                cursor, f"SELECT value FROM {self._table(META_TABLE)} WHERE name = ?", (name,)
            )
            row = cursor.fetchone()
        return None if row is None else str(self._value(row, 0, "value"))

    def write(
        self,
        value: str,
        *,
        name: str = MARKER_NAME,
        replace: bool = False,
        cursor: Any = None,
    ) -> None:
        """Write the marker (``replace``: over one there; otherwise only if there is none)."""
        if self.kind == "memory":
            if replace or name not in self._memory["meta"]:
                self._memory["meta"][name] = value
            return
        if cursor is None:
            with self.recorder.datastore.transaction(commit=True) as own:
                self.write(value, name=name, replace=replace, cursor=own)
            return
        self.create(cursor)
        table = self._table(META_TABLE)
        if replace:
            self._run(cursor, f"DELETE FROM {table} WHERE name = ?", (name,))
        self._run(
            cursor,
            f"INSERT INTO {table} (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (name, value),
        )

    def read_aliases(self) -> dict[str, bytes]:
        if self.kind == "memory":
            return dict(self._memory["aliases"])
        with self.recorder.datastore.transaction(commit=False) as cursor:
            if not self._exists(cursor):
                return {}
            self._run(cursor, f"SELECT stream_id, alias FROM {self._table(ALIAS_TABLE)}")
            rows = cursor.fetchall()
        return {
            str(self._value(r, 0, "stream_id")): bytes(self._value(r, 1, "alias")) for r in rows
        }

    def write_aliases(self, cursor: Any, aliases: Mapping[str, bytes]) -> None:
        if self.kind == "memory":
            self._memory["aliases"].update(aliases)
            return
        table = self._table(ALIAS_TABLE)
        for stream, alias in aliases.items():
            self._run(
                cursor,
                f"INSERT INTO {table} (stream_id, alias) VALUES (?, ?) "
                "ON CONFLICT (stream_id) DO NOTHING",
                (stream, alias),
            )


def open_stream_ids(app: Any, cipher_key: str | None) -> StreamIds:
    """The store's scheme, from its marker; an encrypted store opened empty gets the keyed
    scheme (its marker is written now, before any event)."""
    tables = MetaTables(app.recorder)
    try:
        text = tables.read()
    except Exception:  # a store that cannot be read says so at its first read or write
        text = None
    if text is None:
        if not cipher_key:
            return StreamIds(SCHEME_UUID5)
        if app.recorder.max_notification_id():  # written before keyed ids: uuid5
            return StreamIds(SCHEME_UUID5, cipher_key=cipher_key, key_problem=_marker_missing(app))
        marker_key = derive_key(cipher_key, LABEL_MARKER)
        try:
            tables.write(Marker(scheme=SCHEME_KEYED).text(marker_key))
            text = tables.read()
        except Exception:  # a read-only store: keyed in this process, nothing to write yet
            text = Marker(scheme=SCHEME_KEYED).text(marker_key)
        if text is None:  # pragma: no cover - written just now
            text = Marker(scheme=SCHEME_KEYED).text(marker_key)
    return _from_marker(tables, text, cipher_key, app)


def _marker_missing(app: Any) -> str | None:
    """A store without a marker must have been written with uuid5 ids: its first stream is the
    uuid5 of the patient it registers. If not, its marker was deleted (a keyed store then looks
    like a uuid5 one, whose lookups find nobody and whose writes would register patients
    twice): refuse it. One row read; a row that does not decrypt is the key check's to report."""
    first = app.recorder.select_notifications(start=None, limit=1)
    oid = first[0].originator_id
    if (oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))).version == 8:
        # a keyed stream id (uuid5 ids are version 5): whatever the first row is (a move
        # names no patient, e.g. when the first registration was deleted too)
        return _MARKER_MISSING
    try:
        event = app.mapper.to_domain_event(first[0])
    except Exception:
        return None
    patient_id = getattr(event, "patient_id", None)
    if isinstance(patient_id, str) and uuid5_stream_id(patient_id) != event.originator_id:
        return _MARKER_MISSING
    return None


_MARKER_MISSING = (
    "the store's stream-id marker is missing (deleted in the database?): its stream ids are "
    "keyed; restore the marker from a backup"
)


def _from_marker(tables: MetaTables, text: str, cipher_key: str | None, app: Any) -> StreamIds:
    try:
        marker, tag = Marker.parse(text)
    except (ValueError, TypeError):
        return StreamIds(
            SCHEME_KEYED,
            key_problem="the store's stream-id marker is not readable (edited in the database?)",
        )
    if not cipher_key:
        return StreamIds(
            marker.scheme,
            marker=marker,
            key_problem="the store is encrypted but CART_COURSE_CIPHER_KEY is not set "
            "(its stream ids are keyed)",
        )
    if not hmac.compare_digest(marker.tag(derive_key(cipher_key, LABEL_MARKER)), tag):
        return StreamIds(
            marker.scheme,
            marker=marker,
            key_problem="CART_COURSE_CIPHER_KEY is not the store's key (the store's key check "
            "does not match it), or the store's stream-id marker was edited",
        )
    cipher = app.mapper.cipher

    def aliases() -> dict[str, str]:
        out = {}
        for stream, blob in tables.read_aliases().items():
            out[stream] = cipher.decrypt(blob).decode()
        return out

    return StreamIds(marker.scheme, cipher_key=cipher_key, marker=marker, aliases=aliases)


#: The path segments after which an access-logged path names a patient (``/v1/patients/ID``)
#: or a cell product (``/v1/audit/product/ID``: its lot id may embed the patient's).
_ID_SEGMENTS = {"patients": "patient", "product": "product"}
#: Query parameters that name a patient.
_ID_QUERY = ("patient_id", "patient")


def pseudonymise_request(path: str, query: str, pseudonym: Callable[[str], str]) -> tuple[str, str]:
    """``path`` and ``query`` of an access-logged request with each patient (or product) id
    replaced by ``pseudonym(id)``; the rest byte for byte."""
    parts = path.split("/")
    for i in range(len(parts) - 1):
        if parts[i] in _ID_SEGMENTS and i >= 1 and parts[i - 1] in ("v1", "audit") and parts[i + 1]:
            named = pseudonym(unquote(parts[i + 1]))
            if _ID_SEGMENTS[parts[i]] == "product" and named.startswith(PSEUDONYM_PREFIX):
                named = "prd-" + named[len(PSEUDONYM_PREFIX) :]
            parts[i + 1] = quote(named, safe="")
    new_path = "/".join(parts)
    if not query:
        return new_path, query
    # keys and values decoded as the server decodes them (``patient%5Fid`` is ``patient_id``
    # to the handler): a raw-text test would log such a request's patient id in clear
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k in _ID_QUERY for k, _ in pairs):
        return new_path, query
    pairs = [(k, pseudonym(v) if k in _ID_QUERY and v else v) for k, v in pairs]
    return new_path, urlencode(pairs)


def access_log_pseudonymiser(cipher_key: str) -> Callable[[str, str], tuple[str, str]]:
    """What the audit-access log applies to each request's path and query on an encrypted
    store: patient (and product) ids -> keyed pseudonyms."""
    pseudonym = StreamIds(cipher_key=cipher_key).pseudonym
    return functools.partial(pseudonymise_request, pseudonym=pseudonym)


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
