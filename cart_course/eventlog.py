"""The one read interface of the stored log: notifications, streams, events, snapshots.

Every reader of the log (the audit, the views' runner, the event feed, the CLI and HTTP
entry points) reads through an :class:`EventLog`; none of them touches the eventsourcing
application, its recorder or its mapper. Reads fail with the store errors every command gives
(:func:`store_errors`: ``cannot read the store: ...``, a key that does not fit the store as
:class:`CipherKeyError`).

The log is eventsourcing's notification log: :class:`~eventsourcing.persistence.Notification`
rows in commit order, by position (the notification id). Where the store can push new
notifications (PostgreSQL's LISTEN/NOTIFY and the in-memory store: eventsourcing's
``ApplicationRecorder.subscribe``), :meth:`EventLog.subscribe` and :meth:`EventLog.wait_beyond`
use it; SQLite has no ``subscribe`` (the library raises ``NotImplementedError``), so readers
there pull in pages (:meth:`EventLog.pages`) and poll. See ``docs/architecture.md``, "Reading
the log".

Nothing here copies or decodes a row more than its reader asks for: pages are the recorder's
own lists, and decoding is the caller's choice of :meth:`EventLog.to_event` (the mapper),
:meth:`EventLog.decoder` (the views' fast path, same event objects) or the raw state
(:meth:`EventLog.open_state`, for the audit's own decoder).
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import msgspec
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    Notification,
    PersistenceError,
    StoredEvent,
    Subscription,
    Tracking,
)
from eventsourcing.utils import resolve_topic

from .course import PatientCourse
from .errors import CipherKeyError, StoreError
from .storage import (
    CANONICAL_MARK,
    CourseApplication,
    CourseMapper,
    CourseTranscoder,
    from_canonical_state,
    is_canonical_state,
)
from .streamids import StreamIds

#: The topic of a patient's registration (the first event of every stream).
REGISTERED_TOPIC = f"{PatientCourse.__module__}:{PatientCourse.Registered.__qualname__}"
#: Notifications per page of :meth:`EventLog.pages` unless asked otherwise.
PAGE = 100

#: What an auditor runs on a store that holds a row this application cannot read.
VERIFY_HINT = "the store may be damaged or tampered with: run 'cart-course audit verify'"


class _ReadsSettings(Protocol):
    def settings_mismatch(self) -> str | None: ...


class store_errors:
    """Turn the library's storage failures into :class:`StoreError` (one clear line); with
    ``writing``, a failure says it could not write (a full disk, a read-only store) and that
    nothing was written.

    A stored event that cannot be read is the key's fault (:class:`CipherKeyError`) unless
    ``app`` (the application or its :class:`EventLog`) says the store's first event reads with
    this key and settings: then that one row is damaged (a :class:`StoreError` naming it), and
    blaming the key would mislead.

    A class rather than a generator (``contextlib.contextmanager``): every command enters it
    two or three times, and a generator-based context manager costs about 1 us more each."""

    __slots__ = ("app", "what", "writing")

    def __init__(
        self, what: str, app: _ReadsSettings | None = None, *, writing: bool = False
    ) -> None:
        self.what = what
        self.app = app
        self.writing = writing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, IntegrityError):
            return
        what = self.what
        if isinstance(exc, MapperDeserialisationError):
            if self.app is not None and self.app.settings_mismatch() is None:
                raise StoreError(f"cannot read {what}: {exc}; {VERIFY_HINT}") from None
            raise CipherKeyError(
                f"cannot read {what}: the stored events do not decrypt with this key. "
                "CART_COURSE_CIPHER_KEY (and CART_COURSE_COMPRESS) must be the ones the store was "
                "written with"
            ) from None
        if isinstance(exc, PersistenceError):
            if self.writing:
                raise StoreError(
                    f"cannot write to {what}: {type(exc).__name__}: {exc}; nothing was written"
                ) from None
            raise StoreError(f"cannot read {what}: {type(exc).__name__}: {exc}") from None


#: A stored row of a stream as :class:`RowReader` gives it: (version, topic, state).
Row = tuple[int, str, bytes]


class RowReader:
    """The stored rows (version, topic, state) of many streams at once: one SQL query per page of
    streams on SQLite and PostgreSQL; stream by stream through the recorder otherwise.

    ``up_to``: only the rows at or below that notification id (the application's event table;
    snapshot tables have no notification ids)."""

    def __init__(self, recorder: Any, up_to: int | None = None) -> None:
        self.recorder = recorder
        self.up_to = up_to
        self.kind = "recorder"
        table = getattr(recorder, "events_table_name", None)
        sqlite = sys.modules.get("eventsourcing.sqlite")
        postgres = sys.modules.get("eventsourcing.postgres")
        columns = "originator_id, originator_version, topic, state"
        if sqlite is not None and isinstance(recorder, sqlite.SQLiteAggregateRecorder):
            self.kind = "sqlite"
            self._sql = f"SELECT {columns} FROM {table} WHERE originator_id IN ({{marks}}) "
            if up_to is not None:
                self._sql += f"AND rowid <= {int(up_to)} "
        elif postgres is not None and isinstance(recorder, postgres.PostgresAggregateRecorder):
            from psycopg.sql import SQL, Identifier

            self.kind = "postgres"
            bound = "" if up_to is None else f"AND notification_id <= {int(up_to)} "
            self._pg = SQL(
                f"SELECT {columns} FROM {{schema}}.{{table}} WHERE originator_id = ANY(%s) {bound}"
            ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(str(table)))

    def _up_to(self, sid: uuid.UUID, stored: Any) -> list[Any]:
        """The in-memory store's rows of ``sid`` at or below the mark (position in its log)."""
        index = getattr(self.recorder, "_stored_events_index", None)
        if index is None or self.up_to is None:
            return list(stored)
        positions = index.get(str(sid), {})
        # Notification id = position in the in-memory log + 1.
        return [s for s in stored if positions.get(s.originator_version, self.up_to) < self.up_to]

    def fetch(self, sids: list[uuid.UUID]) -> dict[uuid.UUID, list[Row]]:
        """Each stream's rows, in version order."""
        with store_errors("the store"):
            return self._fetch(sids)

    def _fetch(self, sids: list[uuid.UUID]) -> dict[uuid.UUID, list[Row]]:
        found: dict[uuid.UUID, list[Row]] = {}
        if not sids:
            return found
        if self.kind == "recorder":
            for sid in sids:
                stored = self.recorder.select_events(sid)
                if self.up_to is not None:
                    stored = self._up_to(sid, stored)
                found[sid] = [(s.originator_version, s.topic, s.state) for s in stored]
            return found
        order = "ORDER BY originator_id, originator_version"
        with self.recorder.datastore.transaction(commit=False) as cursor:
            if self.kind == "sqlite":
                by_hex = {sid.hex: sid for sid in sids}
                cursor.execute(
                    self._sql.format(marks=",".join("?" * len(by_hex))) + order, list(by_hex)
                )
                current: Any = None
                rows: list[Row] = []
                for oid, version, topic, state in cursor.fetchall():
                    if oid != current:  # the rows come grouped by stream (ORDER BY)
                        current = oid
                        rows = found[by_hex[oid]] = []
                    rows.append((version, topic, state))
            else:
                from psycopg.sql import SQL

                cursor.execute(self._pg + SQL(order), [sids])
                for row in cursor.fetchall():
                    oid = row["originator_id"]
                    key = oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))
                    found.setdefault(key, []).append(
                        (row["originator_version"], row["topic"], bytes(row["state"]))
                    )
        return found


def count_rows(recorder: Any, up_to: int | None = None) -> int | None:
    """How many rows a recorder's table holds (None when the store cannot say cheaply); with
    ``up_to``, the rows at or below that notification id (application event tables only)."""
    table = getattr(recorder, "events_table_name", None)
    datastore = getattr(recorder, "datastore", None)
    if table is None or datastore is None:
        stored = getattr(recorder, "_stored_events", None)
        if stored is None:
            return None
        return len(stored) if up_to is None else min(len(stored), up_to)
    statement = f"SELECT COUNT(*) AS n FROM {table}"
    if up_to is not None:
        sqlite = sys.modules.get("eventsourcing.sqlite")
        if sqlite is not None and isinstance(recorder, sqlite.SQLiteAggregateRecorder):
            # Every row less those after the position, in one statement (one snapshot of the
            # store): SQLite counts a whole table from its smallest index, but the rows at or
            # below a rowid by reading the table itself (every page of every event: 20 times
            # slower on a store of 200k events); the rows after the position are few.
            statement = (
                f"SELECT (SELECT COUNT(*) FROM {table}) - "
                f"(SELECT COUNT(*) FROM {table} WHERE rowid > {int(up_to)}) AS n"
            )
        else:
            statement += f" WHERE notification_id <= {int(up_to)}"
    with store_errors("the store"), datastore.transaction(commit=False) as cursor:
        cursor.execute(statement)
        row = cursor.fetchone()
    if isinstance(row, dict):
        return int(row["n"])
    return int(row[0])


# -- decoding notifications, with a fast path for the store's plain JSON -----------------------

_loads: Callable[[bytes], Any] = msgspec.json.decode
_TYPE_KEY = b'"_type_"'


class EventDecoder:
    """Notifications -> domain events, exactly as the application's mapper decodes them, with a
    fast path for the store's plain JSON.

    The mapper (``to_domain_event``) decodes every JSON object through the transcoder's
    ``object_hook``; the views read every event of the log, so they take a shorter way when it
    gives the very same event: a store without cipher or compressor, the application's mapper
    and transcoder (``storage.CourseMapper`` / ``CourseTranscoder``, or the library's own), an
    event class without upcasting, and a state that is either a course event's canonical bytes
    (``storage.CourseMapper``: plain JSON) or the library's layout whose only transcoded value is
    the record time (``timestamp``). Anything else (an encrypted or compressed store, a payload
    holding another transcoded type, a state the fast parser refuses) goes through the mapper,
    unchanged."""

    def __init__(self, mapper: Any) -> None:
        self._mapper: Callable[[Any], Any] = mapper.to_domain_event
        self.fast = (
            type(mapper) in (Mapper, CourseMapper)
            and mapper.cipher is None
            and mapper.compressor is None
            and type(mapper.transcoder) in (JSONTranscoder, CourseTranscoder)
        )
        #: topic -> event class, or None when the class upcasts (the mapper decodes those).
        self._classes: dict[str, type[Any] | None] = {}

    def __call__(self, note: Any) -> Any:
        if self.fast:
            event = self._fast(note)
            if event is not None:
                return event
        return self._mapper(note)

    def _fast(self, note: Any) -> Any:
        state = note.state
        if type(state) is not bytes:
            return None
        canonical = CANONICAL_MARK in state
        if not canonical and state.count(_TYPE_KEY) != 1:
            return None
        oid = note.originator_id
        if type(oid) is not uuid.UUID:
            return None
        topic = note.topic
        try:
            cls = self._classes[topic]
        except KeyError:
            resolved: type[Any] = resolve_topic(topic)
            cls = self._classes[topic] = (
                resolved if getattr(resolved, "class_version", 1) == 1 else None
            )
        if cls is None:
            return None
        try:
            data = _loads(state)
        except ValueError:  # the mapper reports it properly
            return None
        if type(data) is not dict or "class_version" in data:
            return None
        if canonical and is_canonical_state(data):
            from_canonical_state(data)
        elif state.count(_TYPE_KEY) != 1:
            return None
        else:
            stamp = data.get("timestamp")
            if type(stamp) is not dict or len(stamp) != 2 or stamp.get("_type_") != "datetime_iso":
                return None
            data["timestamp"] = dt.datetime.fromisoformat(stamp["_data_"])
        data["originator_id"] = oid
        data["originator_version"] = note.originator_version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", data)
        return event


def _can_subscribe(recorder: Any) -> bool:
    """Whether the recorder implements eventsourcing's ``subscribe`` (SQLite's does not)."""
    sqlite = sys.modules.get("eventsourcing.sqlite")
    if sqlite is not None and isinstance(recorder, sqlite.SQLiteApplicationRecorder):
        return False
    return callable(getattr(recorder, "subscribe", None))


class EventLog:
    """The stored log of one store, read-only: its position, its notifications in pages, each
    stream's stored events (one or many streams at once), their decoding, snapshots."""

    def __init__(self, app: CourseApplication) -> None:
        self._app = app
        self._recorder: Any = app.recorder
        self._mapper: Any = app.mapper
        #: The application whose log this is (eventsourcing's ``Tracking.application_name``).
        self.name: str = app.name
        #: Whether new notifications can be waited for (eventsourcing's ``subscribe``:
        #: PostgreSQL and memory) rather than polled for (SQLite).
        self.can_subscribe = _can_subscribe(self._recorder)

    # -- the store's settings ------------------------------------------------------------------

    @property
    def cipher(self) -> Any:
        """The store's cipher (None: events are not encrypted)."""
        return self._mapper.cipher

    @property
    def compressor(self) -> Any:
        """The store's compressor (None: events are not compressed)."""
        return self._mapper.compressor

    @property
    def gapless_ids(self) -> bool:
        """Whether notification ids are given without gaps (SQLite: a rolled-back insert takes
        none, so a gap is a deleted row; PostgreSQL's sequence may skip ids)."""
        from eventsourcing.sqlite import SQLiteAggregateRecorder

        return isinstance(self._recorder, SQLiteAggregateRecorder)

    def settings_mismatch(self) -> str | None:
        """Why the store's first event does not read with this key and compression setting
        (None: it does, or the store is empty). One row read."""
        return self._app.settings_mismatch()

    # -- stream ids (``cart_course.streamids``) ------------------------------------------------

    @property
    def stream_ids(self) -> StreamIds:
        """The store's stream-id scheme: keyed on an encrypted store, uuid5 otherwise."""
        return self._app.stream_ids

    def stream_id(self, patient_id: str) -> uuid.UUID:
        """The patient's stream id in this store (cached)."""
        return self._app.stream_ids.stream_id(patient_id)

    # -- positions and notifications -----------------------------------------------------------

    def max_notification_id(self) -> int:
        """The log's current position: the highest notification id (0 when empty)."""
        with store_errors("the store"):
            return int(self._recorder.max_notification_id() or 0)

    def tracking(self, notification_id: int) -> Tracking:
        """A position of this log as eventsourcing's :class:`Tracking`."""
        return Tracking(application_name=self.name, notification_id=notification_id)

    def notifications(
        self,
        after: int,
        limit: int,
        *,
        up_to: int | None = None,
        topics: Sequence[str] = (),
    ) -> Sequence[Notification]:
        """At most ``limit`` notifications after position ``after`` (and at or below ``up_to``),
        in log order: the recorder's own list."""
        with store_errors("the store"):
            return self._recorder.select_notifications(  # type: ignore[no-any-return]
                start=after, limit=limit, stop=up_to, topics=topics, inclusive_of_start=False
            )

    def pages(
        self,
        after: int = 0,
        *,
        page: int = PAGE,
        up_to: int | None = None,
        topics: Sequence[str] = (),
    ) -> Iterator[Sequence[Notification]]:
        """Every notification after ``after`` (at or below ``up_to``), a page at a time."""
        start = after
        while True:
            notes = self.notifications(start, page, up_to=up_to, topics=topics)
            if not notes:
                return
            yield notes
            start = notes[-1].id

    def registrations(
        self, after: int = 0, *, page: int = PAGE, up_to: int | None = None
    ) -> Iterator[Sequence[Notification]]:
        """The ``Registered`` notifications, in log order, a page at a time."""
        return self.pages(after, page=page, up_to=up_to, topics=[REGISTERED_TOPIC])

    def registered_streams(
        self, *, page: int = PAGE, up_to: int | None = None
    ) -> Iterator[list[tuple[int, uuid.UUID]]]:
        """(notification id, stream id) of every registration (a ``Registered`` event at
        version 1), in log order, a page at a time: :meth:`registrations` without the rows'
        states (on SQLite one query per page reads only the two columns)."""
        sqlite = sys.modules.get("eventsourcing.sqlite")
        if sqlite is None or not isinstance(self._recorder, sqlite.SQLiteApplicationRecorder):
            for notes in self.registrations(page=page, up_to=up_to):
                found = [
                    (n.id, as_uuid(n.originator_id)) for n in notes if n.originator_version == 1
                ]
                if found:
                    yield found
            return
        statement = (
            f"SELECT rowid, originator_id FROM {self._recorder.events_table_name} "
            "WHERE rowid>? "
            + ("" if up_to is None else f"AND rowid<={int(up_to)} ")
            + "AND topic=? AND originator_version=1 ORDER BY rowid LIMIT ?"
        )
        after = 0
        while True:
            with (
                store_errors("the store"),
                self._recorder.datastore.transaction(commit=False) as cursor,
            ):
                cursor.execute(statement, (after, REGISTERED_TOPIC, page))
                rows = cursor.fetchall()
            if not rows:
                return
            yield [(nid, uuid.UUID(hex=oid)) for nid, oid in rows]
            after = rows[-1][0]

    def subscribe(self, after: int, topics: Sequence[str] = ()) -> Subscription[Any]:
        """eventsourcing's subscription: every notification after ``after``, then each new one
        as it is recorded (blocks in between). Not on SQLite (``NotImplementedError``): see
        :attr:`can_subscribe`."""
        return self._recorder.subscribe(gt=after, topics=topics)  # type: ignore[no-any-return]

    def wait_beyond(self, position: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification after ``position``; True when one
        is there. Where the store can push (:attr:`can_subscribe`) this returns as soon as one
        is recorded; on SQLite it sleeps ``timeout`` and then looks."""
        if not self.can_subscribe:
            time.sleep(timeout)
            return self.max_notification_id() > position
        with store_errors("the store"), self.subscribe(position) as subscription:
            timer = threading.Timer(timeout, subscription.stop)
            timer.start()
            try:
                next(subscription)
            except StopIteration:
                return False
            finally:
                timer.cancel()
            return True

    # -- streams -------------------------------------------------------------------------------

    def stream(
        self,
        stream_id: uuid.UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """One stream's stored events (version order, or descending)."""
        with store_errors("the store"):
            return self._recorder.select_events(  # type: ignore[no-any-return]
                stream_id, gt=gt, lte=lte, desc=desc, limit=limit
            )

    def rows(self, up_to: int | None = None) -> RowReader:
        """A reader of many streams' rows at once (at or below notification ``up_to``)."""
        return RowReader(self._recorder, up_to)

    def snapshot_rows(self) -> RowReader | None:
        """A reader of many streams' stored snapshots (None: the store keeps none)."""
        snapshots = self._app.snapshots
        return None if snapshots is None else RowReader(snapshots.recorder)

    def count_events(self, up_to: int | None = None) -> int | None:
        """How many rows the event table holds (None when the store cannot say cheaply); with
        ``up_to``, the rows at or below that notification id."""
        return count_rows(self._recorder, up_to)

    def count_snapshots(self) -> int | None:
        """How many snapshots are stored (None: no snapshot store, or it cannot say cheaply)."""
        snapshots = self._app.snapshots
        return None if snapshots is None else count_rows(snapshots.recorder)

    @property
    def keeps_snapshots(self) -> bool:
        return self._app.snapshots is not None

    # -- decoding ------------------------------------------------------------------------------

    def to_event(self, stored: StoredEvent) -> Any:
        """A stored event (or notification) as its domain event: the application's mapper.
        Raises as the mapper does (``MapperDeserialisationError`` for a row that does not
        read): readers decide whether that is a skipped row or an error."""
        return self._mapper.to_domain_event(stored)

    def decoder(self) -> EventDecoder:
        """A decoder giving the same events as :meth:`to_event`, faster on plain JSON stores."""
        return EventDecoder(self._mapper)

    def open_state(self, state: bytes) -> bytes:
        """A stored state decrypted and decompressed as the store's settings say."""
        cipher, compressor = self._mapper.cipher, self._mapper.compressor
        if cipher:
            state = cipher.decrypt(state)
        if compressor:
            state = compressor.decompress(state)
        return state

    def to_snapshot(self, stored: StoredEvent) -> Any:
        """A stored snapshot row as the snapshot object (its ``state`` decoded)."""
        snapshots = self._app.snapshots
        mapper = snapshots.mapper if snapshots is not None else self._mapper
        return mapper.to_domain_event(stored)

    def course(self, stream_id: uuid.UUID, version: int | None = None) -> Any:
        """The stream's aggregate as of ``version`` (latest: None), as the service loads it
        (from a snapshot under today's replay rules, then the events)."""
        return self._app.repository.get(stream_id, version=version)


def as_uuid(value: Any) -> uuid.UUID:
    """A stored originator id as a UUID (the in-memory store keeps them so already)."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
