"""Reading the stored log for audit: decode rows without the aggregate, hash them, replay them.

The audit never loads the eventsourcing aggregate (no snapshots, no cache): it reads the stored
rows of one patient's stream at a time (``recorder.select_events``), decodes each row's JSON, and
recomputes its hash exactly as ``course.event_hash`` does on the domain event. The pure
:class:`PatientRecord` is rebuilt by the event classes' own ``apply`` code, run against a shim,
so the audit's replay cannot drift from the application's.

Patients are visited in registration order (the ``Registered`` events of the notification log,
paged), so every audit pass holds one stream in memory at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..course import PatientCourse, canonical, event_hash, stream_id
from ..errors import PatientNotFoundError
from ..protocol.record import PatientRecord
from ..storage import CourseApplication

REGISTERED_TOPIC = f"{PatientCourse.__module__}:{PatientCourse.Registered.__qualname__}"
PAGE = 100
#: Key of the data of a stored row that could not be decoded.
UNDECODABLE = "_undecodable"

#: Event kinds: the audit's four families of events.
REGISTERED = "registered"
MOVED = "moved"
CORRECTED = "corrected"
SIGNED = "signed"

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
        else:
            kind = "unknown"
        _KIND_BY_TOPIC[topic] = kind
    return kind


class LoggedEvent:
    """One stored event as the audit sees it: its fields, record time, and recomputed hash."""

    __slots__ = ("data", "hash", "kind", "recorded_at", "stream", "type", "version")

    def __init__(
        self, stream: str, version: int, topic: str, data: dict[str, Any], recorded_at: str
    ) -> None:
        self.stream = stream
        self.version = version
        self.type = topic.partition(":")[2].rpartition(".")[2]
        self.kind = kind_of(topic)
        self.data = data
        self.recorded_at = recorded_at
        content = dict(data)
        content["originator_id"] = stream
        content["originator_version"] = version
        content["timestamp"] = recorded_at
        content["type"] = topic.partition(":")[2]
        self.hash = hashlib.sha256(canonical(content)).hexdigest()

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def occurred_at(self) -> str | None:
        value = self.data.get("occurred_at")
        return value if isinstance(value, str) else None

    @property
    def recorded_time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.recorded_at)


class Decoder:
    """Turns stored rows into :class:`LoggedEvent` (honours the store's cipher and compressor)."""

    def __init__(self, app: CourseApplication) -> None:
        self.app = app
        mapper = app.mapper
        self._cipher = mapper.cipher
        self._compressor = mapper.compressor

    def __call__(self, stored: Any) -> LoggedEvent:
        try:
            return self._decode(stored)
        except Exception as exc:  # a row altered into something that no longer decodes
            oid = stored.originator_id
            return LoggedEvent(
                str(oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))),
                stored.originator_version,
                stored.topic,
                {UNDECODABLE: f"{type(exc).__name__}: {exc}"},
                "",
            )

    def _decode(self, stored: Any) -> LoggedEvent:
        state: bytes = stored.state
        if isinstance(state, str):  # a row rewritten by hand as text
            state = state.encode()
        if self._cipher:
            state = self._cipher.decrypt(state)
        if self._compressor:
            state = self._compressor.decompress(state)
        oid = stored.originator_id
        sid = str(oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid)))
        if state.count(b'"_type_"') != 1:
            return self._slow(stored, sid)
        data: dict[str, Any] = json.loads(state)
        stamp = data.pop("timestamp", None)
        if not isinstance(stamp, dict) or stamp.get("_type_") != "datetime_iso":
            return self._slow(stored, sid)
        data.pop("class_version", None)
        return LoggedEvent(sid, stored.originator_version, stored.topic, data, stamp["_data_"])

    def _slow(self, stored: Any, sid: str) -> LoggedEvent:
        """Rows holding other encoded types: decode with the library and hash its event."""
        event: Any = self.app.mapper.to_domain_event(stored)
        data = {
            k: v
            for k, v in vars(event).items()
            if k not in ("originator_id", "originator_version", "timestamp")
        }
        logged = LoggedEvent(
            sid, stored.originator_version, stored.topic, data, event.timestamp.isoformat()
        )
        logged.hash = event_hash(event)
        return logged


def read_stream(
    app: CourseApplication, sid: uuid.UUID, decoder: Decoder | None = None
) -> list[LoggedEvent]:
    decode = decoder or Decoder(app)
    return [decode(s) for s in app.recorder.select_events(sid)]


def registrations(app: CourseApplication) -> Iterator[tuple[int, str]]:
    """(notification id, patient id) of every registration, in log order, paged."""
    decode = Decoder(app)
    start = 0
    while True:
        page = app.recorder.select_notifications(
            start=start, limit=PAGE, topics=[REGISTERED_TOPIC], inclusive_of_start=False
        )
        if not page:
            return
        for n in page:
            yield n.id, str(decode(n).get("patient_id"))
        start = page[-1].id


def streams(
    app: CourseApplication, patient_id: str | None = None
) -> Iterator[tuple[str, list[LoggedEvent]]]:
    """(patient id, events) for one patient or every patient, one stream in memory at a time."""
    decode = Decoder(app)
    if patient_id is not None:
        events = read_stream(app, stream_id(patient_id), decode)
        if not events:
            raise PatientNotFoundError(patient_id)
        yield patient_id, events
        return
    for _nid, pid in registrations(app):
        yield pid, read_stream(app, stream_id(pid), decode)


def patient_events(app: CourseApplication, patient_id: str) -> list[LoggedEvent]:
    return next(streams(app, patient_id))[1]


def count_events(app: CourseApplication) -> int | None:
    """How many rows the event table holds (None when the store cannot say cheaply)."""
    recorder: Any = app.recorder
    table = getattr(recorder, "events_table_name", None)
    datastore = getattr(recorder, "datastore", None)
    if table is None or datastore is None:
        stored = getattr(recorder, "_stored_events", None)
        return len(stored) if stored is not None else None
    with datastore.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT COUNT(*) AS n FROM {table}")
        row = cursor.fetchone()
    if isinstance(row, dict):
        return int(row["n"])
    return int(row[0])


# ----------------------------------------------------------------------------------------------
# Replay: the event classes' own apply code, run against a shim aggregate
# ----------------------------------------------------------------------------------------------


class _Shim:
    __slots__ = ("chain_head", "record")

    def __init__(self, record: PatientRecord) -> None:
        self.record = record
        self.chain_head = ""

    def remember(self, event: Any) -> None:
        self.record.version = event.originator_version


_APPLY: dict[str, Callable[[Any, Any], None]] = {
    MOVED: PatientCourse.Moved.apply,
    CORRECTED: PatientCourse.FactCorrected.apply,
    SIGNED: PatientCourse.MilestoneSigned.apply,
}


class Replayer:
    """Folds events into a :class:`PatientRecord`, one at a time."""

    def __init__(self, patient_id: str) -> None:
        self.record = PatientRecord(patient_id=patient_id)
        self._shim = _Shim(self.record)

    def apply(self, event: LoggedEvent) -> None:
        if event.kind == REGISTERED:
            self.record.version = event.version
            return
        apply = _APPLY.get(event.kind)
        if apply is None:
            return
        ns = types.SimpleNamespace(**event.data)
        ns.originator_version = event.version
        if event.kind == SIGNED:
            ns.timestamp = event.recorded_time
        apply(ns, self._shim)


def replay(patient_id: str, events: Iterable[LoggedEvent]) -> PatientRecord:
    r = Replayer(patient_id)
    for e in events:
        r.apply(e)
    return r.record
