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
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

import attrs
import msgspec
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import (
    InternalError,
    JSONTranscoder,
    Mapper,
    Recording,
    StoredEvent,
    Transcoding,
)
from eventsourcing.sqlite import SQLiteAggregateRecorder
from eventsourcing.utils import get_topic

from .course import CANONICAL_BYTES, PatientCourse
from .encoding import not_json
from .protocol.record import PatientRecord

DEFAULT_DB = "var/cart-course.sqlite"
ENV_DB = "CART_COURSE_DB"
ENV_CIPHER_KEY = "CART_COURSE_CIPHER_KEY"
ENV_COMPRESS = "CART_COURSE_COMPRESS"
#: Snapshot every N events of a stream: bounds replay for long histories.
SNAPSHOT_INTERVAL = 50
#: Stream ids per query of :meth:`CourseApplication.existing_streams` (SQLite's variable limit).
_IDS_PER_QUERY = 500
#: Attempts at opening a store whose tables other processes are creating at the same moment.
_CREATE_RETRIES = 5
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
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        dbname = parts.path.lstrip("/")
        if not dbname:
            raise StoreConfigError(
                f"PostgreSQL URL {url!r} names no database: use postgresql://user:password@host:port/dbname"
            )
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(dbname),
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": "5",
            "POSTGRES_MAX_OVERFLOW": "10",
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_LOCK_TIMEOUT": "30",
        }
        return StoreSettings(url=url, kind="postgres", env=env)
    if "://" in url and not url.startswith("sqlite://"):
        raise StoreConfigError(
            f"unknown store URL {url!r}; use a SQLite file path, sqlite:///path, memory: or "
            "postgresql://user:password@host:port/dbname"
        )
    path_text = url[len("sqlite://") :] if url.startswith("sqlite://") else url
    if path_text.startswith("/") and url.startswith("sqlite:///"):
        path_text = path_text[1:] if path_text.startswith("//") else path_text
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


def store_url_from_env(environ: Mapping[str, str] | None = None, db: str | None = None) -> str:
    environ = os.environ if environ is None else environ
    return db or environ.get(ENV_DB) or DEFAULT_DB


class PatientRecordAsDict(Transcoding):
    """Snapshots hold the pure record: save it as plain JSON."""

    type = PatientRecord
    name = "patient_record"

    def encode(self, obj: PatientRecord) -> dict[str, Any]:
        return obj.to_json()

    def decode(self, data: dict[str, Any]) -> PatientRecord:
        return PatientRecord.from_json(data)


class CourseTranscoder(JSONTranscoder):
    """The library's JSON transcoder, with a faster path for the events of patient courses.

    A course event's state is JSON data except its record time (the library's ``timestamp``, a
    datetime the library stores as ``{"_type_": "datetime_iso", "_data_": ISO}``). Such a state
    is written by msgspec, in the library's layout, and kept only if msgspec reads it back equal
    to what was written: a value msgspec would change (a nested datetime or Decimal it writes as
    a string, a tuple, a set, NaN it writes as null, an int key) makes the library's own encoder
    write the state instead. So the store holds exactly what the library would decode to the same
    values; only the spelling of a float may differ (``0.00001`` for ``1e-05``). Snapshots and
    anything else: the library's encoder. Decoding: the library's."""

    def __init__(self) -> None:
        super().__init__()
        self._fast_encode = msgspec.json.Encoder(enc_hook=not_json).encode
        self._fast_decode = msgspec.json.Decoder().decode

    def encode(self, obj: Any) -> bytes:
        if type(obj) is dict and "prev_hash" in obj:
            timestamp = obj.get("timestamp")
            if type(timestamp) is dt.datetime:
                state = dict(obj)
                state["timestamp"] = {"_type_": "datetime_iso", "_data_": timestamp.isoformat()}
                try:
                    out = self._fast_encode(state)
                except (TypeError, ValueError, OverflowError):
                    return super().encode(obj)
                if self._fast_decode(out) == state:
                    return out
        return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        """The library's decoding, and that of a course event stored as its canonical bytes
        (see :class:`CourseMapper`): plain JSON, read by msgspec (no ``_type_`` hook: such a
        key in a payload is data), the record time back to a datetime."""
        if CANONICAL_MARK in data:
            state = self._fast_decode(data)
            if type(state) is dict and is_canonical_state(state):
                return from_canonical_state(state)
        return super().decode(data)


#: Every course event stored as its canonical bytes holds its stream id at the top level; the
#: library's layout never does (the mapper takes it out of the state).
CANONICAL_MARK = b'"originator_id":'


def is_canonical_state(state: dict[str, Any]) -> bool:
    return "originator_id" in state and "type" in state and type(state.get("timestamp")) is str


def from_canonical_state(state: dict[str, Any]) -> dict[str, Any]:
    """A stored canonical state as the library's layout: the fields and the record time (the
    row's own stream id and version are what the mapper puts in the event)."""
    del state["originator_id"], state["type"]
    state.pop("originator_version", None)
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


class CourseApplication(Application[Any]):
    """The event store of patient courses (eventsourcing application)."""

    name = "cart_course"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {PatientCourse: SNAPSHOT_INTERVAL}

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
        """Snapshot a course at each multiple of the interval its saved events reached.

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
            if interval is None or version % interval:
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
            return CourseApplication(env=env)
        except InternalError as exc:
            # Processes starting together each create the tables (CREATE TABLE IF NOT EXISTS);
            # PostgreSQL may refuse all but one with "tuple concurrently updated". The tables
            # are there now: try again.
            if "concurrently" not in str(exc) or attempt == _CREATE_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def new_cipher_key() -> str:
    from eventsourcing.cipher import AESCipher

    return AESCipher.create_key(32)
