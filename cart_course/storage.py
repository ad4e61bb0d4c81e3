"""Stores: where events live, chosen by one setting, and the types they need to be saved.

``--db URL`` or ``CART_COURSE_DB``:
- ``memory:``: in-process only (tests).
- a path or ``sqlite:///path``: a SQLite file (the embedded default ``var/cart-course.sqlite``).
- ``postgresql://user:password@host:port/dbname``: PostgreSQL (the scale-out store).

``CART_COURSE_CIPHER_KEY`` (base64 AES key) encrypts events at rest;
``CART_COURSE_COMPRESS=1`` compresses them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import re
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

import attrs
import msgspec
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    InternalError,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    ProgrammingError,
    Recording,
    StoredEvent,
    Transcoding,
)
from eventsourcing.sqlite import SQLiteAggregateRecorder
from eventsourcing.utils import get_topic

from .course import CANONICAL_BYTES, RECORDED_ID, REPLAY_RULES, PatientCourse
from .encoding import not_json
from .errors import CipherKeyError, StoreError
from .protocol.record import DERIVED_FIELDS, PatientRecord
from .streamids import SCHEME_UUID5, MetaTables, StreamIds, open_stream_ids

DEFAULT_DB = "var/cart-course.sqlite"
ENV_DB = "CART_COURSE_DB"
ENV_CIPHER_KEY = "CART_COURSE_CIPHER_KEY"
ENV_COMPRESS = "CART_COURSE_COMPRESS"
#: Snapshot every N events of a stream: bounds replay for long histories.
SNAPSHOT_INTERVAL = 50
#: The step between snapshots doubles each time a history reaches this many steps (every 50
#: events up to 1000, every 100 up to 2000, every 200 up to 4000, ...): a snapshot writes the
#: whole record, so its cost grows with the history; a step that grows with it keeps the share
#: of each command spent on snapshots bounded (at 1000 events, 0.1 ms of a 0.5 ms command with
#: a step of 50), while a restart replays at most a tenth of a history after its snapshot.
SNAPSHOT_STEPS_PER_DOUBLING = 20


def snapshot_due(version: int, interval: int = SNAPSHOT_INTERVAL) -> bool:
    """Whether a stream that reached ``version`` takes a snapshot there: at each multiple of
    its step (``interval``, doubled for each doubling of the history past
    :data:`SNAPSHOT_STEPS_PER_DOUBLING` steps)."""
    step = interval
    while version >= SNAPSHOT_STEPS_PER_DOUBLING * step:
        step *= 2
    return version % step == 0


#: Stream ids per query of :meth:`CourseApplication.existing_streams` (SQLite's variable limit).
_IDS_PER_QUERY = 500
#: Attempts at opening a store whose tables other processes are creating at the same moment.
_CREATE_RETRIES = 5
#: What PostgreSQL says when two processes create the same tables at once.
_CATALOG_CLASH = re.compile(
    r"concurrently|already exists|duplicate key value violates unique constraint \"pg_"
)
logger = logging.getLogger(__name__)


class StoreConfigError(ValueError):
    """The store setting is wrong: says what was given and what is allowed."""


@attrs.frozen(kw_only=True)
class StoreSettings:
    url: str
    kind: str  # memory | sqlite | postgres
    env: Mapping[str, str]
    path: Path | None = None

    @property
    def display(self) -> str:
        if self.kind == "postgres":
            parts = urlsplit(self.url)
            host = parts.hostname or ""
            return f"postgresql://{parts.username or ''}@{host}:{parts.port or 5432}{parts.path}"
        return self.url


_POSTGRES_FORM = "postgresql://user:password@host:port/dbname"
#: ``--db`` values that look like the in-process store but would name a SQLite file.
_MEMORY_TYPOS = ("memory", ":memory")


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part as ``***`` (works on URLs too
    malformed to parse: every error that shows a store URL shows it redacted)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    at = netloc.rfind("@")
    if at == -1:
        return url
    user, colon, _password = netloc[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***@{netloc[at + 1 :]}{tail}"


def parse_store_url(url: str) -> StoreSettings:
    """Turn a ``--db`` value into eventsourcing settings."""
    if not url or not url.strip():
        raise StoreConfigError(
            "the store URL is empty; give a SQLite path, memory: or postgresql://..."
        )
    if url in ("memory:", "memory://", ":memory:"):
        return StoreSettings(
            url="memory:", kind="memory", env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
        )
    if url.strip().lower() in _MEMORY_TYPOS:
        raise StoreConfigError(
            f"store {url!r} would be a SQLite file named {url.strip()!r}; for the in-process "
            "store write memory: (with the colon); for a SQLite file of that name write "
            f"./{url.strip()}"
        )
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres_settings(url)
    if "://" in url and not url.startswith("sqlite://"):
        raise StoreConfigError(
            f"unknown store URL {redact_url(url)!r}; use a SQLite file path, sqlite:///path, "
            f"memory: or {_POSTGRES_FORM}"
        )
    path_text = url[len("sqlite://") :] if url.startswith("sqlite://") else url
    if path_text.startswith("/") and url.startswith("sqlite:///"):
        path_text = path_text[1:] if path_text.startswith("//") else path_text
    if not path_text.strip():
        raise StoreConfigError(
            f"store URL {url!r} names no file; use sqlite:///path/to/file.sqlite or a file path"
        )
    path = Path(path_text)
    return StoreSettings(
        url=str(path),
        kind="sqlite",
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "30",
        },
        path=path,
    )


def _postgres_settings(url: str) -> StoreSettings:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise StoreConfigError(
            f"PostgreSQL URL {shown!r} is not valid ({exc}); use {_POSTGRES_FORM} "
            "(port 1-65535, an IPv6 host in brackets: [::1])"
        ) from None
    if port == 0:
        raise StoreConfigError(
            f"PostgreSQL URL {shown!r} has port 0; use {_POSTGRES_FORM} (port 1-65535)"
        )
    dbname = parts.path.lstrip("/")
    if not dbname:
        raise StoreConfigError(f"PostgreSQL URL {shown!r} names no database: use {_POSTGRES_FORM}")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(dbname),
        "POSTGRES_HOST": host or "127.0.0.1",
        "POSTGRES_PORT": str(port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "10",
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "30",
    }
    return StoreSettings(url=url, kind="postgres", env=env)


#: Seconds a first connection to a PostgreSQL server may take (:func:`check_reachable`).
PROBE_TIMEOUT = 5


def check_reachable(settings: StoreSettings) -> None:
    """For PostgreSQL: one direct connection first, so that an unreachable server is one clear
    error after at most :data:`PROBE_TIMEOUT` seconds, with its cause (connection refused,
    unknown host, authentication failed), rather than the pool's "couldn't get a connection
    after 10.00 sec". Raises :class:`StoreConfigError` (the password never shown)."""
    if settings.kind != "postgres":
        return
    import psycopg  # only with a PostgreSQL store

    env = settings.env
    try:
        conn = psycopg.connect(
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            dbname=env["POSTGRES_DBNAME"],
            connect_timeout=PROBE_TIMEOUT,
        )
    except Exception as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        password = env["POSTGRES_PASSWORD"]
        if password:
            cause = cause.replace(password, "***")
        raise StoreConfigError(f"cannot connect to the store {settings.display}: {cause}") from None
    conn.close()


def store_url_from_env(environ: Mapping[str, str], db: str | None = None) -> str:
    """``--db`` if given, else ``CART_COURSE_DB`` if set in ``environ`` (the environment, as
    ``bootstrap`` reads it), else the default file. A value given but empty is refused (it is a
    mistake, not a wish for the default)."""
    if db is not None:
        if not db.strip():
            raise StoreConfigError(
                "--db is empty; give a SQLite file path, memory: or postgresql://... "
                f"(or leave it out for {DEFAULT_DB})"
            )
        return db
    value = environ.get(ENV_DB)
    if value is not None:
        if not value.strip():
            raise StoreConfigError(
                f"{ENV_DB} is set but empty; give a SQLite file path, memory: or "
                f"postgresql://... (or unset it for {DEFAULT_DB})"
            )
        return value
    return DEFAULT_DB


#: Types :func:`record_state` leaves as they are (the library's transcodings write them), as
#: ``attrs.asdict`` does.
_PASSED_THROUGH = (
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    UUID,
    decimal.Decimal,
    bytes,
    bytearray,
    memoryview,
)
#: The record's fields derived from others (never stored; ``PatientRecord.from_json`` rebuilds).
_DERIVED_FIELDS = tuple(sorted(DERIVED_FIELDS))


def record_state(record: PatientRecord) -> dict[str, Any]:
    """``record.to_json()``, several times faster (msgspec converts the attrs classes and copies
    every list and dict, as ``attrs.asdict`` does): a snapshot of a long history writes the
    whole record, so its cost grows with the history (a record of 500 toxicity episodes: 24 ms
    by ``attrs.asdict``). Equal to ``to_json()`` (tests/integration/test_snapshots.py)."""
    data: dict[str, Any] = msgspec.to_builtins(record, builtin_types=_PASSED_THROUGH)
    for name in _DERIVED_FIELDS:
        del data[name]
    data["index"] = {str(k): v for k, v in data["index"].items()}
    return data


class PatientRecordAsDict(Transcoding):
    """Snapshots hold the pure record: save it as plain JSON."""

    type = PatientRecord
    name = "patient_record"

    def encode(self, obj: PatientRecord) -> dict[str, Any]:
        return record_state(obj)

    def decode(self, data: dict[str, Any]) -> PatientRecord:
        return PatientRecord.from_json(data)


_COURSE_TOPIC = get_topic(PatientCourse)


def _iso(value: dt.datetime) -> dict[str, str]:
    """A datetime as the library's ``DatetimeAsISO`` transcoding writes it."""
    return {"_type_": "datetime_iso", "_data_": value.isoformat()}


def _snapshot_layout(obj: dict[str, Any]) -> dict[str, Any] | None:
    """A patient course's snapshot state as the library's encoder lays it out (datetimes and
    the record as its transcodings write them), or None if it holds anything else."""
    timestamp, state = obj.get("timestamp"), obj.get("state")
    if type(timestamp) is not dt.datetime or type(state) is not dict:
        return None
    inner: dict[str, Any] = {}
    for key, value in state.items():
        if type(value) is dt.datetime:
            inner[key] = _iso(value)
        elif type(value) is PatientRecord:
            inner[key] = {"_type_": PatientRecordAsDict.name, "_data_": record_state(value)}
        else:
            inner[key] = value
    layout = dict(obj)
    layout["timestamp"] = _iso(timestamp)
    layout["state"] = inner
    return layout


class CourseTranscoder(JSONTranscoder):
    """The library's JSON transcoder, with a faster path for the events of patient courses.

    A course event's state is JSON data except its record time (the library's ``timestamp``, a
    datetime the library stores as ``{"_type_": "datetime_iso", "_data_": ISO}``). Such a state
    is written by msgspec, in the library's layout, and kept only if msgspec reads it back equal
    to what was written: a value msgspec would change (a nested datetime or Decimal it writes as
    a string, a tuple, a set, NaN it writes as null, an int key) makes the library's own encoder
    write the state instead. So the store holds exactly what the library would decode to the same
    values; only the spelling of a float may differ (``0.00001`` for ``1e-05``).

    A patient course's snapshot writes the whole record, so its cost grows with the history
    (a 1000-event course: 7.5 ms by the library's encoder, 2.5 ms so). It is
    written by msgspec in the library's layout (``record_state`` is ``to_json`` type for type,
    tests/integration/test_snapshots.py), on the same condition: read back equal. A record that
    holds what msgspec writes otherwise (NaN or an infinity, a datetime, UUID or Decimal, which
    an older history may hold) is written by the library's encoder. Anything else: the
    library's encoder. Decoding: the library's."""

    def __init__(self) -> None:
        super().__init__()
        self._fast_encode = msgspec.json.Encoder(enc_hook=not_json).encode
        self._fast_decode = msgspec.json.Decoder().decode
        #: On a store whose stream ids were migrated (``cart_course.streamids``): a decoded
        #: course event keeps the stream id its bytes were recorded under (``RECORDED_ID``).
        self.keep_recorded_ids = False

    def encode(self, obj: Any) -> bytes:
        layout: dict[str, Any] | None = None
        if type(obj) is dict and "prev_hash" in obj:
            timestamp = obj.get("timestamp")
            if type(timestamp) is dt.datetime:
                layout = dict(obj)
                layout["timestamp"] = _iso(timestamp)
        elif type(obj) is dict and obj.get("topic") == _COURSE_TOPIC:
            layout = _snapshot_layout(obj)
        if layout is not None:
            try:
                out = self._fast_encode(layout)
            except (TypeError, ValueError, OverflowError):
                return super().encode(obj)
            if self._fast_decode(out) == layout:
                return out
        return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        """The library's decoding, and that of a course event stored as its canonical bytes
        (see :class:`CourseMapper`): plain JSON, read by msgspec (no ``_type_`` hook: such a
        key in a payload is data), the record time back to a datetime."""
        if CANONICAL_MARK in data:
            state = self._fast_decode(data)
            if type(state) is dict and is_canonical_state(state):
                if self.keep_recorded_ids:
                    recorded = state["originator_id"]
                    from_canonical_state(state)[RECORDED_ID] = recorded
                    return state
                return from_canonical_state(state)
        return super().decode(data)


#: Every course event stored as its canonical bytes holds its stream id at the top level; the
#: library's layout never does (the mapper takes it out of the state).
CANONICAL_MARK = b'"originator_id":'


def is_canonical_state(state: dict[str, Any]) -> bool:
    return "originator_id" in state and "type" in state and type(state.get("timestamp")) is str


def drop_row_copies(state: dict[str, Any]) -> dict[str, Any]:
    """A canonical state without its copies of the row's stream id, version and type (readers
    take those from the row itself)."""
    del state["originator_id"], state["type"]
    state.pop("originator_version", None)
    return state


def from_canonical_state(state: dict[str, Any]) -> dict[str, Any]:
    """A stored canonical state as the library's layout: the fields and the record time (the
    row's own stream id and version are what the mapper puts in the event)."""
    drop_row_copies(state)
    state["timestamp"] = dt.datetime.fromisoformat(state["timestamp"])
    return state


class CourseMapper(Mapper[UUID]):
    """The library's mapper, except that a course event which kept the bytes its hash covers
    (``course.chain_hash``: JSON data that reads back as exactly the event) is stored as those
    bytes: encoded once for both, and the stored state is the hashed content itself (its type,
    stream, version and record time included; the audit checks that they agree with the row).
    Compression and encryption apply as to any state. Everything else: the library's mapping."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        data = domain_event.__dict__.get(CANONICAL_BYTES)
        if data is None:
            return super().to_stored_event(domain_event)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=data,
        )


def snapshot_rules(state: dict[str, Any]) -> int:
    """The replay rules a course snapshot's state was taken under (1: before they were kept)."""
    rules = state.get("replay_rules", 1)
    return rules if type(rules) is int else 1


class CurrentSnapshots(EventStore[Any]):
    """The snapshot store, giving only snapshots taken under today's replay rules
    (:data:`course.REPLAY_RULES`): for a course whose latest snapshot is older, the repository
    finds none and replays the events (a snapshot under today's rules is taken when one is due).
    Every load goes through here (the service, the views' runner)."""

    def get(
        self,
        originator_id: Any,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        for snapshot in super().get(originator_id, gt=gt, lte=lte, desc=desc, limit=limit):
            state = getattr(snapshot, "state", None)
            if not isinstance(state, dict) or snapshot_rules(state) == REPLAY_RULES:
                yield snapshot


class CourseApplication(Application[Any]):
    """The event store of patient courses (eventsourcing application)."""

    name = "cart_course"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {PatientCourse: SNAPSHOT_INTERVAL}
    #: The store's stream-id scheme (``cart_course.streamids``; set by :func:`open_application`).
    stream_ids: StreamIds = StreamIds()
    #: Whether :meth:`check_readable` passed (it runs before this application's first write).
    _readable_checked = False

    def construct_snapshot_store(self) -> EventStore[Any]:
        """The library's snapshot store, giving only snapshots under today's replay rules."""
        recorder = self.factory.aggregate_recorder(purpose="snapshots")
        return CurrentSnapshots(mapper=self.mapper, recorder=recorder)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[Any]]:
        """The library's ``save``, minus its protocol checks for our own aggregates.

        ``Application.save`` asks of every object whether it is a domain event or an aggregate
        with ``isinstance`` against runtime-checkable ``typing.Protocol`` classes, which on
        Python 3.11 costs ~10 us per object (it inspects every attribute of the protocol). The
        service only ever saves patient courses: their pending events are collected here, and
        the rest is the library's own sequence (record, snapshots, notify). Anything else goes
        to the library's ``save`` unchanged."""
        if kwargs or not all(type(obj) is PatientCourse for obj in objs):
            return super().save(*objs, **kwargs)
        processing_event: ProcessingEvent[Any] = ProcessingEvent()
        for course in objs:
            processing_event.events.extend(course.collect_events())
            processing_event.aggregates[course.id] = course
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # the library's deprecated hook, as it calls it
        return recordings

    def _record(self, processing_event: ProcessingEvent[Any]) -> list[Recording[Any]]:
        """The library's ``_record``, after :meth:`check_readable` (once per application)."""
        if not self._readable_checked:
            self.check_readable()
        if self.stream_ids.scheme == SCHEME_UUID5 and self.mapper.cipher is not None:
            self._check_not_migrated()
        return super()._record(processing_event)

    def _check_not_migrated(self) -> None:
        """An encrypted store this process opened with uuid5 stream ids (written before keyed
        ids) may have been migrated since (``cart-course store migrate-stream-ids``): its
        marker says so. Writing on under uuid5 ids would record events in streams nobody reads
        any more (acknowledged, then not shown). One small read per write, on such stores only
        (a window of the migration's own length remains: stop the writers first)."""
        try:
            text = MetaTables(self.recorder).read()
        except Exception:  # no marker table: not migrated
            text = None
        if text is not None:
            raise StoreError(
                "refusing to write: the store's stream ids were migrated (cart-course store "
                "migrate-stream-ids) after this process opened it; nothing was written. Restart "
                "this process (the server, ingest) to write under the store's keyed ids"
            )

    def check_readable(self) -> None:
        """Refuse to write unless the store's first stored event reads with this application's
        key and compression setting: one row read, before the first write of this application.

        Without it a writer with no key (or another key) would add events that nobody can
        read alongside the others: a new patient is registered without reading any stored
        event. Raises :class:`CipherKeyError` naming the mismatch; an empty store passes."""
        problem = self.settings_mismatch()
        if problem is not None:
            raise CipherKeyError(
                f"refusing to write: the stored events do not decrypt with this key ({problem}); "
                "nothing was written. CART_COURSE_CIPHER_KEY (and CART_COURSE_COMPRESS) must be "
                "the ones the store was written with"
            )
        self._readable_checked = True

    def settings_mismatch(self) -> str | None:
        """Why the store's first stored event does not read with this application's key and
        compression setting (None: it does, or the store is empty). One row read."""
        if self.stream_ids.key_problem is not None:  # the store's marker: its key check
            return self.stream_ids.key_problem
        first = self.recorder.select_notifications(start=None, limit=1)
        if not first:
            return None
        try:
            self.mapper.to_domain_event(first[0])
        except MapperDeserialisationError as exc:
            return stored_format_mismatch(
                bytes(first[0].state),
                cipher=self.mapper.cipher is not None,
                compressed=self.mapper.compressor is not None,
                error=exc,
            )
        return None

    def existing_streams(self, ids: Sequence[UUID]) -> set[UUID]:
        """Which of these streams hold any event: one query for many (the library's
        ``select_events`` asks one stream per transaction, ~70 us each on SQLite, a round trip
        each on PostgreSQL). Used before a batch registers many new patients."""
        found: set[UUID] = set()
        if not ids:
            return found
        recorder: Any = self.recorder
        if isinstance(recorder, SQLiteAggregateRecorder):
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                with recorder.datastore.transaction(commit=False) as cursor:
                    cursor.execute(
                        f"SELECT DISTINCT originator_id FROM {recorder.events_table_name} "
                        f"WHERE originator_id IN ({marks})",
                        [i.hex for i in chunk],
                    )
                    for row in cursor.fetchall():
                        sid = recorder.convert_originator_id(row[0])
                        found.add(sid if isinstance(sid, UUID) else UUID(sid))
        elif type(recorder).__module__ == "eventsourcing.postgres":
            from psycopg.sql import SQL, Identifier  # only with a PostgreSQL store

            statement = SQL(
                "SELECT DISTINCT originator_id FROM {schema}.{table} WHERE originator_id = ANY(%s)"
            ).format(
                schema=Identifier(recorder.datastore.schema),
                table=Identifier(recorder.events_table_name),
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, [list(ids)])
                found.update(row["originator_id"] for row in cursor.fetchall())
        else:  # the in-memory store: asking is free
            found.update(i for i in ids if recorder.select_events(i, limit=1))
        return found

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=CourseMapper
        )

    def construct_transcoder(self) -> CourseTranscoder:
        transcoder = CourseTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(PatientRecordAsDict())

    def _take_snapshots(self, processing_event: Any) -> None:
        """Snapshot a course at each version its saved events reached where one is due
        (:func:`snapshot_due`: every 50 events, a longer step as the history grows).

        When the aggregate just saved is at that version (one command per transaction, the
        usual case), the snapshot is taken from it -- its state is the state at its version,
        every event applied and committed -- rather than re-read from the store as the library
        does; a batch that went past the multiple re-reads the course up to it, as the library
        does. Snapshots are taken after the events were committed, and are only an optimisation:
        a failing snapshot (e.g. SQLite busy under contention) must not make a committed save
        look failed (a retry would then see its own events as a conflict)."""
        if self.snapshots is None:
            return
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            version = event.originator_version
            if interval is None or not snapshot_due(version, interval):
                continue
            try:
                if aggregate.version == version:
                    snapshot_class: Any = getattr(
                        type(aggregate), "Snapshot", type(self).snapshot_class
                    )
                    self.snapshots.put([snapshot_class.take(aggregate)])
                else:
                    self.take_snapshot(event.originator_id, version=version)
            except Exception:
                logger.warning("snapshot not taken (the events are saved)", exc_info=True)


def stored_format_mismatch(
    state: bytes, *, cipher: bool, compressed: bool, error: Exception
) -> str:
    """Why a stored event's state does not read with these settings, as far as its bytes tell:
    plain JSON, zlib-compressed JSON, or neither (encrypted, or damaged)."""
    if state[:1] == b"{":
        stored = "plain"
    else:
        try:
            stored = "compressed" if zlib.decompress(state)[:1] == b"{" else "encrypted"
        except zlib.error:
            stored = "encrypted"
    if stored != "encrypted" and cipher:
        return f"the store is not encrypted but {ENV_CIPHER_KEY} is set"
    if stored == "encrypted" and not cipher:
        return f"the store is encrypted but {ENV_CIPHER_KEY} is not set"
    if stored == "plain" and compressed:
        return f"the store is not compressed but {ENV_COMPRESS} is set"
    if stored == "compressed" and not compressed:
        return f"the store is compressed but {ENV_COMPRESS} is not set"
    if stored == "encrypted":
        return f"{ENV_CIPHER_KEY} is not the store's key, or {ENV_COMPRESS} differs from when it was written"
    return f"its first event does not decode: {error}"


def application_env(
    settings: StoreSettings,
    *,
    cipher_key: str | None = None,
    compress: bool = False,
    cache_size: int = 10_000,
) -> dict[str, str]:
    env = dict(settings.env)
    if cipher_key:
        env["CIPHER_TOPIC"] = "eventsourcing.cipher:AESCipher"
        env["CIPHER_KEY"] = cipher_key
    if compress:
        env["COMPRESSOR_TOPIC"] = "eventsourcing.compressor:ZlibCompressor"
    # The service keeps its own cache of patients (see CourseService._load); the library's
    # repository cache stays off so that a failed save can never leave a stale aggregate in it.
    env.pop("AGGREGATE_CACHE_MAXSIZE", None)
    del cache_size
    return env


def open_application(
    settings: StoreSettings,
    *,
    cipher_key: str | None = None,
    compress: bool = False,
    cache_size: int = 10_000,
) -> CourseApplication:
    if settings.kind == "sqlite" and settings.path is not None:
        settings.path.parent.mkdir(parents=True, exist_ok=True)
    env = application_env(settings, cipher_key=cipher_key, compress=compress, cache_size=cache_size)
    for attempt in range(_CREATE_RETRIES):
        try:
            app = CourseApplication(env=env)
            app.stream_ids = open_stream_ids(app, cipher_key)
            if app.stream_ids.migrated_up_to is not None:
                app.mapper.transcoder.keep_recorded_ids = True  # type: ignore[attr-defined]
            return app
        except (InternalError, IntegrityError, ProgrammingError) as exc:
            # Processes starting together each create the tables (CREATE TABLE IF NOT EXISTS);
            # PostgreSQL may refuse all but one ("tuple concurrently updated", "type ... already
            # exists", a duplicate key in pg_type). The tables are there now: try again.
            if not _CATALOG_CLASH.search(str(exc)) or attempt == _CREATE_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def new_cipher_key() -> str:
    from eventsourcing.cipher import AESCipher

    return AESCipher.create_key(32)
