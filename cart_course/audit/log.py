"""Reading the stored log for audit: decode rows without the aggregate, hash them, replay them.

The audit never loads the eventsourcing aggregate (no snapshots, no cache): it reads the stored
rows through the log's read interface (:class:`~cart_course.eventlog.EventLog`: on SQLite and
PostgreSQL one SQL query per page of streams; in memory, the recorder), decodes each row's JSON,
and recomputes its hash byte for byte as ``course.event_hash`` does on the domain event
(``encoding.decoded_content_bytes``). The pure
:class:`PatientRecord` is rebuilt by the event classes' own ``evolve_record`` code (what their ``apply``
does to the record), so the audit's replay cannot drift from the application's.

Patients are visited in registration order (the ``Registered`` events of the notification log,
paged): every audit pass holds one page of streams (:data:`PAGE`) in memory at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from eventsourcing.persistence import StoredEvent

from ..course import PatientCourse, event_hash
from ..encoding import (
    DECODED_FORMS,
    FORM_FIELD,
    LEGACY_FORM,
    UnknownFormError,
    decode_json,
    decoded_content_bytes,
)
from ..encoding import ReprFloat as ReprFloat
from ..encoding import canonical_decoded as canonical_decoded
from ..errors import CartCourseError, CipherKeyError, PatientNotFoundError
from ..eventlog import PAGE, REGISTERED_TOPIC, EventLog, Row
from ..protocol.record import DEFAULT_SITE, PatientRecord
from ..storage import (
    CANONICAL_MARK,
    drop_row_copies,
    is_canonical_state,
    stored_format_mismatch,
)

__all__ = ["PAGE", "REGISTERED_TOPIC", "Row"]

# The canonical encoding of re-read rows is ``encoding``'s (``decode_json``, ``canonical_decoded``;
# re-exported here for the callers that import them from the audit).


def hashed_content(
    stream: str, version: int, topic: str, data: dict[str, Any], recorded_at: str
) -> dict[str, Any]:
    """What the hash of the event stored as (stream, version, topic, data, record time) covers:
    its fields and the row's own stream, version, type and record time."""
    content = dict(data)
    content["originator_id"] = stream
    content["originator_version"] = version
    content["timestamp"] = recorded_at
    content["type"] = topic.partition(":")[2]
    return content


def content_hash(
    stream: str, version: int, topic: str, data: dict[str, Any], recorded_at: str
) -> str:
    """``course.event_hash`` of the event stored as (stream, version, topic, data, record time),
    ``data`` as decoded by :func:`decode_json` (or ``encoding.decode_plain``), in the canonical
    form the event names."""
    content = hashed_content(stream, version, topic, data, recorded_at)
    try:
        return hashlib.sha256(decoded_content_bytes(content)).hexdigest()
    except UnknownFormError as exc:  # matches no prev_hash: the chain breaks there
        return f"unknown-form:{exc.form!r}"


#: Key of the data of a stored row that could not be decoded.
UNDECODABLE = "_undecodable"

#: Event kinds: the audit's four families of events.
REGISTERED = "registered"
MOVED = "moved"
CORRECTED = "corrected"
SIGNED = "signed"
#: A step of a data query (issue 17): opened, answered, closed, re-opened.
QUERIED = "queried"

_KIND_BY_TOPIC: dict[str, str] = {}


def kind_of(topic: str) -> str:
    kind = _KIND_BY_TOPIC.get(topic)
    if kind is None:
        qualname = topic.partition(":")[2]
        cls: Any = PatientCourse
        for part in qualname.split(".")[1:]:
            cls = getattr(cls, part, None)
        if isinstance(cls, type) and issubclass(cls, PatientCourse.Registered):
            kind = REGISTERED
        elif isinstance(cls, type) and issubclass(cls, PatientCourse.Moved):
            kind = MOVED
        elif isinstance(cls, type) and issubclass(cls, PatientCourse.FactCorrected):
            kind = CORRECTED
        elif isinstance(cls, type) and issubclass(cls, PatientCourse.MilestoneSigned):
            kind = SIGNED
        elif isinstance(cls, type) and issubclass(cls, PatientCourse.QueryEvent):
            kind = QUERIED
        else:
            kind = "unknown"
        _KIND_BY_TOPIC[topic] = kind
    return kind


#: topic -> (its qualified name, the event's type name, its kind): read once per topic.
_TOPICS: dict[str, tuple[str, str, str]] = {}


def topic_names(topic: str) -> tuple[str, str, str]:
    """A stored topic's qualified name (what the hash covers as ``type``), the event's type
    name and its kind (:func:`kind_of`)."""
    names = _TOPICS.get(topic)
    if names is None:
        qualname = topic.partition(":")[2]
        names = _TOPICS[topic] = (qualname, qualname.rpartition(".")[2], kind_of(topic))
    return names


class LoggedEvent:
    """One stored event as the audit sees it: its fields, record time, and recomputed hash."""

    __slots__ = ("data", "hash", "kind", "recorded_at", "stream", "type", "version")

    def __init__(
        self,
        stream: str,
        version: int,
        topic: str,
        data: dict[str, Any],
        recorded_at: str,
        hash: str | None = None,
    ) -> None:
        self.stream = stream
        self.version = version
        _qualname, self.type, self.kind = _TOPICS.get(topic) or topic_names(topic)
        self.data = data
        self.recorded_at = recorded_at
        self.hash = (
            hash if hash is not None else content_hash(stream, version, topic, data, recorded_at)
        )

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def occurred_at(self) -> str | None:
        value = self.data.get("occurred_at")
        return value if isinstance(value, str) else None

    @property
    def recorded_time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.recorded_at)


_new_event = object.__new__


class Decoder:
    """Turns stored rows into :class:`LoggedEvent` (honours the store's cipher and compressor)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._cipher = log.cipher
        self._compressor = log.compressor
        ids = log.stream_ids
        #: A migrated store (``cart_course.streamids``): stream id -> the uuid5 id its rows
        #: recorded before the migration were hashed under.
        self._aliases = ids.aliases() if ids.migrated_up_to is not None else {}

    def __call__(self, stored: Any) -> LoggedEvent:
        oid = stored.originator_id
        return self.row(
            str(oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))),
            stored.originator_version,
            stored.topic,
            stored.state,
        )

    def rows(self, sid: str, rows: Iterable[Row]) -> list[LoggedEvent]:
        """The stored rows (version, topic, state) of stream ``sid`` (its id as text) as
        :class:`LoggedEvent`, each exactly as :meth:`row` gives it. A plain store's rows stored
        as canonical bytes (every row the service writes) go straight to their decoding."""
        if self._cipher or self._compressor:
            return [self.row(sid, version, topic, state) for version, topic, state in rows]
        logged: list[LoggedEvent] = []
        canonical = self._canonical
        for version, topic, state in rows:
            event = None
            if type(state) is bytes and CANONICAL_MARK in state:
                try:
                    event = canonical(sid, version, topic, state)
                except Exception:
                    event = None  # ``row`` reads it again, and names what is wrong with it
            logged.append(event if event is not None else self.row(sid, version, topic, state))
        return logged

    def row(self, sid: str, version: int, topic: str, state: bytes | str) -> LoggedEvent:
        """One stored row of stream ``sid`` (its id as text) as a :class:`LoggedEvent`."""
        try:
            return self._decode(sid, version, topic, state)
        except Exception as exc:  # a row altered into something that no longer decodes
            return LoggedEvent(
                sid, version, topic, {UNDECODABLE: f"{type(exc).__name__}: {exc}"}, ""
            )

    def _decode(self, sid: str, version: int, topic: str, stored: bytes | str) -> LoggedEvent:
        if isinstance(stored, str):  # a row rewritten by hand as text
            stored = stored.encode()
        elif not isinstance(stored, bytes):  # memoryview (PostgreSQL bytea)
            stored = bytes(stored)
        state = stored
        if self._cipher:
            state = self._cipher.decrypt(state)
        if self._compressor:
            state = self._compressor.decompress(state)
        if CANONICAL_MARK in state:
            logged = self._canonical(sid, version, topic, state)
            if logged is not None:
                return logged
        if state.count(b'"_type_"') != 1:
            return self._slow(sid, version, topic, stored)
        data: dict[str, Any] = decode_json(state)
        stamp = data.pop("timestamp", None)
        if not isinstance(stamp, dict) or stamp.get("_type_") != "datetime_iso":
            return self._slow(sid, version, topic, stored)
        data.pop("class_version", None)
        return LoggedEvent(sid, version, topic, data, stamp["_data_"])

    def _canonical(self, sid: str, version: int, topic: str, state: bytes) -> LoggedEvent | None:
        """A row stored as the canonical bytes its hash covers (``storage.CourseMapper``).

        Its hash is recomputed from the row's stream, version and topic and its decoded fields,
        like any row's; the stored bytes must moreover be exactly those canonical bytes (their
        own copies of stream, version, type and record time included): a row whose bytes were
        altered in any way -- even re-encoded to the same values, or moved to another version
        or topic -- gets ``altered:`` and the hash of the bytes it holds, which matches no
        ``prev_hash``: the chain breaks there."""
        data = decode_json(state)
        if not (isinstance(data, dict) and is_canonical_state(data)):
            return None
        hashed = sid
        if self._aliases and data.get("originator_id") == self._aliases.get(sid):
            hashed = self._aliases[sid]  # recorded before the store's ids were migrated
        # The bytes the hash covers are those of the row exactly when the row is intact: one
        # SHA-256, of the row (the hash when intact, the altered row's otherwise).
        held = hashlib.sha256(state).hexdigest()
        stamp = data["timestamp"]
        copy = data.get("originator_version")
        names = _TOPICS.get(topic) or topic_names(topic)
        # When the row's own copies of its stream, version and type are the row's (values of
        # the very same types), the content the hash covers is the decoded row itself: encoded
        # as it is (in the form it names, ``encoding.decoded_content_bytes``), without a copy.
        if (
            type(copy) is int
            and copy == version
            and data["originator_id"] == hashed
            and data["type"] == names[0]
        ):
            form = data.get(FORM_FIELD, LEGACY_FORM)
            encode = DECODED_FORMS.get(form) if type(form) is int else None
            intact = encode is not None and encode(data) == state
            del data["timestamp"], data["originator_id"], data["type"], data["originator_version"]
            if encode is None:
                held = f"unknown-form:{form!r}"
            elif not intact:
                held = f"altered:{held}"
            event = _new_event(LoggedEvent)
            event.stream = sid
            event.version = version
            _qualname, event.type, event.kind = names
            event.data = data
            event.recorded_at = stamp
            event.hash = held
            return event
        del data["timestamp"]
        fields = drop_row_copies(data)
        try:
            intact = (
                decoded_content_bytes(hashed_content(hashed, version, topic, fields, stamp))
                == state
            )
        except UnknownFormError as exc:
            return LoggedEvent(
                sid, version, topic, fields, stamp, hash=f"unknown-form:{exc.form!r}"
            )
        return LoggedEvent(
            sid, version, topic, fields, stamp, hash=held if intact else f"altered:{held}"
        )

    def _slow(self, sid: str, version: int, topic: str, state: bytes) -> LoggedEvent:
        """Rows holding other encoded types: decode with the library and hash its event
        (``state`` as stored: still encrypted/compressed)."""
        stored = StoredEvent(
            originator_id=uuid.UUID(sid), originator_version=version, topic=topic, state=state
        )
        event: Any = self.log.to_event(stored)
        data = {
            k: v
            for k, v in vars(event).items()
            if k not in ("originator_id", "originator_version", "timestamp")
        }
        logged = LoggedEvent(sid, version, topic, data, event.timestamp.isoformat())
        logged.hash = event_hash(event)
        return logged


def read_stream(log: EventLog, sid: uuid.UUID, decoder: Decoder | None = None) -> list[LoggedEvent]:
    decode = decoder or Decoder(log)
    return [decode(s) for s in log.stream(sid)]


def high_water_mark(log: EventLog) -> int:
    """The log's current position: the highest notification id stored (0 when empty).

    Notification ids are given in commit order (SQLite has one writer at a time; PostgreSQL
    locks the table for each insert), so every row at or below the mark is committed and no row
    can later appear below it: the rows up to the mark are a consistent prefix of the log."""
    return log.max_notification_id()


def _registration_notifications(log: EventLog, up_to: int | None = None) -> Iterator[list[Any]]:
    """The v1 ``Registered`` notifications, in log order, a page at a time (only those at or
    below notification ``up_to``, when given)."""
    for page in log.registrations(page=PAGE, up_to=up_to):
        yield [n for n in page if n.originator_version == 1]


def _registration_pages(
    log: EventLog, up_to: int | None = None
) -> Iterator[list[tuple[int, uuid.UUID]]]:
    """(notification id, stream id) of every registration, in log order, a page at a time."""
    return log.registered_streams(page=PAGE, up_to=up_to)


def registrations(log: EventLog, up_to: int | None = None) -> Iterator[tuple[int, str]]:
    """(notification id, patient id) of every registration, in log order, paged (only those at
    or below notification ``up_to``, when given)."""
    decode = Decoder(log)
    for page in _registration_notifications(log, up_to):
        for n in page:
            yield n.id, str(decode(n).get("patient_id"))


class StreamRead(NamedTuple):
    """One registered stream as read from the store."""

    notification_id: int
    stream: str
    patient_id: str
    events: list[LoggedEvent]
    #: Stored snapshot rows of the stream (when asked for), in version order.
    snapshots: list[Row]


def scan(
    log: EventLog, *, snapshots: bool = False, up_to: int | None = None
) -> Iterator[StreamRead]:
    """Every registered stream in registration order, a page of streams in memory at a time.

    ``up_to``: read the log only up to that notification id (see :func:`high_water_mark`):
    the streams registered at or below it, each with its events at or below it. Snapshots are
    read whole (they carry no notification id)."""
    decode = Decoder(log)
    events = log.rows(up_to)
    snaps = log.snapshot_rows() if snapshots else None
    for page in _registration_pages(log, up_to):
        sids = [sid for _nid, sid in page]
        rows = events.fetch(sids)
        stored_snaps = snaps.fetch(sids) if snaps is not None else {}
        for nid, sid in page:
            text = str(sid)
            logged = decode.rows(text, rows.get(sid, ()))
            pid = registered_patient(logged)
            yield StreamRead(
                nid,
                text,
                pid if isinstance(pid, str) else f"stream {text}",
                logged,
                stored_snaps.get(sid, []),
            )


def registered_patient(events: list[LoggedEvent]) -> Any:
    """The patient id its registration row (v1) names (None when there is none): the stream's
    first row may be a row inserted before it."""
    for e in events:
        if e.version == 1 and e.kind == REGISTERED:
            return e.get("patient_id")
    return events[0].get("patient_id") if events else None


def streams(
    log: EventLog, patient_id: str | None = None
) -> Iterator[tuple[str, list[LoggedEvent]]]:
    """(patient id, events) for one patient or every patient, a page of streams in memory.

    Refuses (:class:`CipherKeyError`) a store its rows do not decrypt for, and
    (:class:`UnreadableEventError`) a stream holding a row that cannot be read, naming it: the
    audit never shows a damaged row as an event with empty fields."""
    require_readable(log)
    if patient_id is not None:
        events = read_stream(log, log.stream_id(patient_id), Decoder(log))
        if not events:
            raise PatientNotFoundError(patient_id)
        yield patient_id, check_readable(patient_id, events)
        return
    for read in scan(log):
        yield read.patient_id, check_readable(read.patient_id, read.events)


def patient_events(log: EventLog, patient_id: str) -> list[LoggedEvent]:
    """The patient's events, every one readable (see :func:`streams`)."""
    return next(streams(log, patient_id))[1]


# ----------------------------------------------------------------------------------------------
# Rows the audit cannot use: a store read with the wrong key, a row altered in the database
# ----------------------------------------------------------------------------------------------

#: How many of the log's first rows :func:`key_problem` tries (and its last one).
KEY_SAMPLE = 3


def _opens(state: Any, cipher: Any, compressor: Any) -> bool:
    """Whether a stored row decrypts, decompresses and decodes to a JSON object."""
    try:
        data = state if isinstance(state, bytes) else bytes(state)
        if cipher:
            data = cipher.decrypt(data)
        if compressor:
            data = compressor.decompress(data)
        return isinstance(decode_json(data), dict)
    except Exception:
        return False


def key_problem(log: EventLog) -> str | None:
    """Why the store cannot be read with this application's key and compression setting (None:
    it can, or the store is empty).

    A wrong or missing key makes *every* row unreadable; an altered row only itself. So the
    key is judged on the log's first rows and its last one: when any of them reads, the key is
    right and a row that does not is evidence of tampering (``verify`` names it). A few rows,
    whatever the size of the log. An encrypted store's marker is checked first (its key check
    tells a wrong key even before any event is stored: ``cart_course.streamids``)."""
    if log.stream_ids.key_problem is not None:
        return log.stream_ids.key_problem
    sample = list(log.notifications(0, KEY_SAMPLE))
    if not sample:
        return None
    mark = high_water_mark(log)
    if mark > sample[-1].id:
        sample += log.notifications(mark - 1, 1)
    cipher, compressor = log.cipher, log.compressor
    if any(_opens(n.state, cipher, compressor) for n in sample):
        return None
    first = sample[0].state
    problem = stored_format_mismatch(
        first if isinstance(first, bytes) else bytes(first),
        cipher=cipher is not None,
        compressed=compressor is not None,
        error=ValueError("not JSON"),
    )
    if problem.startswith("its first event does not decode"):
        return None  # the settings fit the store: those rows are damaged (``verify`` says so)
    return problem


def require_readable(log: EventLog) -> None:
    """Raise :class:`CipherKeyError` (the same line every command gives for it) when the store
    cannot be read with this key (see :func:`key_problem`): before any audit reads, so that a
    wrong key is never reported as tampering, garbage or empty fields."""
    problem = key_problem(log)
    if problem is not None:
        raise CipherKeyError(
            f"cannot read the store: the stored events do not decrypt with this key ({problem}). "
            "CART_COURSE_CIPHER_KEY (and CART_COURSE_COMPRESS) must be the ones the store was "
            "written with"
        )


class UnreadableEventError(CartCourseError):
    """A stored row the audit cannot read or replay (altered in the database): names the patient
    (or stream) and the version."""

    code = "event_unreadable"
    title = "A stored event cannot be read"

    def __init__(self, patient_id: str, version: Any, detail: str) -> None:
        self.patient_id = patient_id
        self.version = version
        self.detail = detail
        where = f"{patient_id} v{version}" if isinstance(version, int) else patient_id
        super().__init__(f"{where}: {detail}; `cart-course audit verify` checks the whole log")

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "patient_id": self.patient_id, "version": self.version}


def is_version(value: Any) -> bool:
    """A stored version number (a row renumbered by hand in SQLite may hold text)."""
    return isinstance(value, int) and not isinstance(value, bool)


#: Per kind of event, the fields the audit reads and the type each must have.
_REQUIRED: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    REGISTERED: (("patient_id", str),),
    MOVED: (
        ("trigger", str),
        ("from_state", str),
        ("to_state", str),
        ("facts", dict),
        ("outcome", dict),
    ),
    CORRECTED: (
        ("corrects", int),
        ("trigger", str),
        ("facts", dict),
        ("outcome", dict),
        ("changes", dict),
    ),
    SIGNED: (("signs_version", int), ("signed_hash", str)),
    QUERIED: (("query_id", str), ("action", str), ("status", str)),
}


def _exact_types(
    fields: tuple[tuple[str, type | tuple[type, ...]], ...],
) -> Callable[[dict[str, Any]], bool]:
    """A check that each of ``fields`` holds a value of exactly its type (as decoded JSON gives
    them). True means :func:`unreadable`'s loop finds nothing wrong with them (an exact ``int``
    is no ``bool``); False says nothing (the loop then decides)."""
    pairs = tuple(fields)
    if not all(isinstance(kind, type) and kind is not bool for _, kind in pairs):
        return lambda data: False

    def check(data: dict[str, Any]) -> bool:
        get = data.get
        for name, kind in pairs:  # noqa: SIM110 (a loop: no generator per event)
            if type(get(name)) is not kind:
                return False
        return True

    return check


#: Per kind of event, :func:`_exact_types` of its required fields.
_EXACT = {kind: _exact_types(fields) for kind, fields in _REQUIRED.items()}


def unreadable(e: LoggedEvent) -> str | None:
    """Why a stored event cannot be used by the audit (None: it can)."""
    exact = _EXACT.get(e.kind)
    if exact is not None and type(e.version) is int and UNDECODABLE not in e.data and exact(e.data):
        return None  # every field the audit reads is of its type (the loop below agrees)
    if not is_version(e.version):
        return (
            f"a stored row has the version {e.version!r}, not a whole number: "
            "it was renumbered in the database"
        )
    if UNDECODABLE in e.data:
        return (
            f"the stored row cannot be decoded ({e.data[UNDECODABLE]}): "
            "it was altered in the database"
        )
    if e.kind == "unknown":
        return (
            f"the stored row's type {e.type!r} is not an event of a patient course: "
            "it was altered in the database"
        )
    for name, kind in _REQUIRED[e.kind]:
        value = e.data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return (
                f"the stored {e.type} has no valid {name} ({value!r}): "
                "it was altered in the database"
            )
    return None


def check_readable(patient_id: str, events: list[LoggedEvent]) -> list[LoggedEvent]:
    """``events``, when every one can be read; else :class:`UnreadableEventError` naming the
    first row that cannot (a row stored before the registration counts: it was inserted)."""
    for e in events:
        why = unreadable(e)
        if why is not None:
            raise UnreadableEventError(patient_id, e.version, why)
        if e.version < 1:
            raise UnreadableEventError(
                patient_id,
                e.version,
                f"a {e.type} row is stored at v{e.version}, before the registration (v1): "
                "it was inserted in the database",
            )
    return events


def count_events(log: EventLog, up_to: int | None = None) -> int | None:
    """How many rows the event table holds (None when the store cannot say cheaply); with
    ``up_to``, the rows at or below that notification id."""
    return log.count_events(up_to)


# ----------------------------------------------------------------------------------------------
# Replay: the event classes' own code for the record (``evolve_record``)
# ----------------------------------------------------------------------------------------------


_EVOLVE: dict[str, Callable[[Any, PatientRecord], None]] = {
    MOVED: PatientCourse.Moved.evolve_record,
    CORRECTED: PatientCourse.FactCorrected.evolve_record,
    SIGNED: PatientCourse.MilestoneSigned.evolve_record,
    QUERIED: PatientCourse.QueryEvent.evolve_record,
}


class _Fields:
    """A stored event's fields as the attributes its class's ``evolve_record`` reads: the
    decoded fields themselves (no copy), and its version and record time in slots of their
    own (slots come first, and writing them leaves the fields as they are)."""

    __slots__ = ("__dict__", "originator_version", "timestamp")
    originator_version: int
    timestamp: dt.datetime


class Replayer:
    """Folds events into a :class:`PatientRecord`, one at a time."""

    def __init__(self, patient_id: str) -> None:
        self.record = PatientRecord(patient_id=patient_id)

    def apply(self, event: LoggedEvent) -> None:
        """Evolve the record by one event; :class:`UnreadableEventError` (naming the patient and
        version) when the event cannot be applied: a row altered in the database, or a history
        recorded without the protocol's checks that the record cannot be rebuilt from."""
        why = unreadable(event)
        if why is not None:
            raise UnreadableEventError(self.record.patient_id, event.version, why)
        try:
            self._apply(event)
        except Exception as exc:
            raise UnreadableEventError(
                self.record.patient_id,
                event.version,
                f"cannot be replayed ({type(exc).__name__}: {exc})",
            ) from exc

    def _apply(self, event: LoggedEvent) -> None:
        if event.kind == REGISTERED:
            self.record.version = event.version
            return
        evolve_record = _EVOLVE.get(event.kind)
        if evolve_record is None:
            return
        ns = _Fields()
        ns.__dict__ = event.data  # read, never written: the two slots hold what is added
        ns.originator_version = event.version
        if event.kind in (SIGNED, QUERIED):
            ns.timestamp = event.recorded_time
        evolve_record(ns, self.record)
        self.record.version = event.version


def replay(patient_id: str, events: Iterable[LoggedEvent]) -> PatientRecord:
    r = Replayer(patient_id)
    for e in events:
        r.apply(e)
    return r.record


# ----------------------------------------------------------------------------------------------
# Sites (issue 17)
# ----------------------------------------------------------------------------------------------


def site_after(event: LoggedEvent, site: str) -> str:
    """The patient's site after ``event``, ``site`` being the one before it: a screening that
    names a site sets it, a transfer changes it, every other event keeps it."""
    if event.kind != MOVED:
        return site
    trigger = event.get("trigger")
    if trigger in ("screen", "transfer_site"):
        named = (event.get("facts") or {}).get("site")
        if isinstance(named, str):
            return named
    return site


def site_of_events(events: Iterable[LoggedEvent]) -> str:
    """The patient's site after ``events`` (the default site when none named one)."""
    site = DEFAULT_SITE
    for e in events:
        site = site_after(e, site)
    return site
