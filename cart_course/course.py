"""The event-sourced patient course: one stream per patient, holding all of their courses.

Events only assign (``apply`` evolves the pure :class:`PatientRecord`); every rule ran before the
event was created (``protocol.commands.prepare``). Each event carries the move, every fact the
guard read, the protocol version, who/when/why, the idempotency key, and the hash of the previous
event of the stream (a tamper-evident chain; see ``audit``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from typing import Any

from eventsourcing.domain import Aggregate

from .encoding import (
    CANONICAL_FORM,
    LEGACY_FORM,
    canonical_reference,
    content_bytes,
    live_content_bytes,
)
from .protocol.queries import evolve_query
from .protocol.record import PatientRecord, apply_correction, evolve
from .protocol.registry import REGISTRY, Registry
from .protocol.signatures import SIGNABLE_TRIGGERS

#: Namespace of patient stream ids: uuid5(NAMESPACE, patient_id). A patient has exactly one stream.
PATIENT_NAMESPACE = uuid.UUID("6f1c3a52-6b0e-5c47-9a3e-0c2d7e1b9a40")


@functools.lru_cache(maxsize=65_536)
def stream_id(patient_id: str) -> uuid.UUID:
    return uuid.uuid5(PATIENT_NAMESPACE, patient_id)


#: Commands about a toxicity episode: their clinical time is the episode's onset or resolution,
#: which may come before the patient's last move (a fever that began before D3, reported after).
EPISODE_COMMANDS = REGISTRY.episode_commands
#: The version of what replaying an event does to a course (``evolve_record``, ``remember`` and
#: the record's ``evolve``): raised whenever a change to them replays an existing history into a
#: different state. A snapshot holds the rules it was taken under; one taken under other rules is
#: not used (the course is replayed from its events, and a new snapshot is taken when one is
#: due) and is not compared with the log by the audit. 2: a move that stays in its state (a
#: toxicity reported or resolved after the course ended) no longer restates how it ended. 3: each
#: toxicity report's clinical time is kept in the record's index (a hold is judged on the grade
#: at a fraction's time). 4: the pre-infusion gate keeps every temperature above its limit
#: with its clinical time (``PatientRecord.pre_infusion_temperatures``; a hold keeps the
#: temperature it failed on), so a history with a fever assessed replays into a record a
#: snapshot of rules 3 lacks. 5: a data query keeps its clinical opening time
#: (``opened_occurred_at``: its age counts from it), which a snapshot of rules 4 lacks.
REPLAY_RULES = 5


def genesis_hash(patient_id: str) -> str:
    return hashlib.sha256(f"cart_course:{patient_id}".encode()).hexdigest()


#: Form 1 of the canonical bytes, the definition (``encoding.canonical_reference``; kept here
#: under its old name). Which form an event's hash covers is the event's own field
#: ``canonical_form`` (see ``encoding``).
canonical = canonical_reference


#: The attribute in which a live event keeps the bytes its hash covers (not a field of the event:
#: never hashed, never stored as a field; see :func:`chain_hash`).
CANONICAL_BYTES = "_canonical"
#: The attribute in which an event read from a store whose stream ids were migrated
#: (``cart_course.streamids``) keeps the stream id it was recorded under, as its stored bytes
#: say (not a field: never hashed or stored as one). Its hash covers that id, not the row's.
RECORDED_ID = "_recorded_id"


@functools.lru_cache(maxsize=4096)
def _id_text(originator_id: uuid.UUID) -> str:
    """A stream id as text (``UUID.__str__`` formats it anew each time: ~1 us per event); the
    streams being written to now are the ones asked for."""
    return str(originator_id)


def event_content(event: Any) -> dict[str, Any]:
    """What an event's hash covers: its type, stream (the one it was recorded under), version,
    record time and every field."""
    content = dict(vars(event))
    content.pop(CANONICAL_BYTES, None)
    recorded = content.pop(RECORDED_ID, None)
    content["originator_id"] = _id_text(content["originator_id"]) if recorded is None else recorded
    content["timestamp"] = event.timestamp.isoformat()
    content["type"] = type(event).__qualname__
    return content


def event_hash(event: Any) -> str:
    """The hash of an event: SHA-256 of its content in the canonical form it names."""
    return hashlib.sha256(content_bytes(event_content(event))).hexdigest()


def chain_hash(event: Any) -> str:
    """:func:`event_hash` of an event being applied, encoded fast
    (``encoding.live_content_bytes``).

    When those bytes read back as exactly the event's content (JSON data, as every event the
    service creates is), the event keeps them (attribute :data:`CANONICAL_BYTES`): the store writes them
    as the event's state (``storage.CourseMapper``), so the stored bytes are the very bytes the
    hash covers, encoded once. Otherwise the hash covers ``json``'s bytes and the event is
    stored by the library's encoder."""
    data, exact = live_content_bytes(event_content(event))
    if exact:
        event.__dict__[CANONICAL_BYTES] = data
    return hashlib.sha256(data).hexdigest()


class PatientCourse(Aggregate):
    """A patient's courses as an event-sourced aggregate."""

    @staticmethod
    def create_id(patient_id: str) -> uuid.UUID:
        return stream_id(patient_id)

    class Registered(Aggregate.Created):
        patient_id: str
        actor: str
        role: str
        prev_hash: str
        #: The canonical form this event's hash covers (``encoding``); absent from the events
        #: written before forms were recorded, which are form 1 (the class default).
        canonical_form: int = LEGACY_FORM

        def apply(self, aggregate: PatientCourse) -> None:
            aggregate.chain_head = chain_hash(self)

    class Moved(Aggregate.Event):
        """A move of the protocol (also the base of the named move events)."""

        command: str
        trigger: str
        from_state: str
        to_state: str
        payload: dict[str, Any]
        facts: dict[str, Any]
        outcome: dict[str, Any]
        protocol_version: str
        actor: str
        role: str
        reason: str | None
        occurred_at: str
        idempotency_key: str
        digest: str
        prev_hash: str
        #: See ``Registered.canonical_form``.
        canonical_form: int = LEGACY_FORM

        def apply(self, aggregate: PatientCourse) -> None:
            self.evolve_record(aggregate.record)
            aggregate.remember(self)

        def evolve_record(self, record: PatientRecord) -> None:
            """What this move does to the pure record (the aggregate's ``apply`` and the
            views' projection both evolve a record so)."""
            evolve(
                record,
                trigger=self.trigger,
                to_state=self.to_state,
                facts=self.facts,
                outcome=self.outcome,
                occurred_at=self.occurred_at,
                version=self.originator_version,
                protocol_version=self.protocol_version,
                reason=self.reason,
            )

    # Named moves: past-tense facts, so the log reads as the course happened.
    class Screened(Moved): ...

    class Rescreened(Moved): ...

    class ApheresisRecorded(Moved): ...

    class InfusionGiven(Moved): ...

    class ToxicityReported(Moved): ...

    class ToxicityResolved(Moved): ...

    class FractionsCancelled(Moved): ...

    class ResponseAssessed(Moved): ...

    class CourseContinued(Moved): ...

    class TreatmentCeased(Moved): ...

    class TreatmentDiscontinued(Moved): ...

    class Withdrawn(Moved): ...

    class DeathRecorded(Moved): ...

    class PreInfusionAssessed(Moved): ...  # the pre-infusion gate (issue 20)

    class SiteTransferred(Moved): ...

    class FactCorrected(Aggregate.Event):
        """A recorded fact re-stated: names the event it corrects; nothing is overwritten."""

        corrects: int
        trigger: str
        changes: dict[str, Any]
        payload: dict[str, Any]
        facts: dict[str, Any]
        outcome: dict[str, Any]
        findings: list[str]
        protocol_version: str
        actor: str
        role: str
        reason: str
        occurred_at: str
        idempotency_key: str
        digest: str
        prev_hash: str
        #: See ``Registered.canonical_form``.
        canonical_form: int = LEGACY_FORM

        def apply(self, aggregate: PatientCourse) -> None:
            self.evolve_record(aggregate.record)
            aggregate.remember(self)

        def evolve_record(self, record: PatientRecord) -> None:
            """What this correction does to the pure record (see ``Moved.evolve_record``)."""
            apply_correction(
                record,
                corrects=self.corrects,
                trigger=self.trigger,
                facts=self.facts,
                outcome=self.outcome,
                changes=self.changes,
                reason=self.reason,
                occurred_at=self.occurred_at,
                version=self.originator_version,
            )
            for text in self.findings:
                record.deviations.append(
                    {
                        "version": self.originator_version,
                        "trigger": "correct",
                        "course": None,
                        "deviation": text,
                        "reason": self.reason,
                        "occurred_at": self.occurred_at,
                    }
                )

    class MilestoneSigned(Aggregate.Event):
        """An investigator's electronic signature of a milestone (21 CFR 11.50/11.70)."""

        milestone: str
        signs_version: int
        signed_hash: str
        meaning: str
        printed_name: str
        actor: str
        role: str
        reason: str | None
        occurred_at: str
        idempotency_key: str
        digest: str
        prev_hash: str
        #: The service's Ed25519 signature of this e-signature (``cart_course.signing``); None
        #: when the service has no signing key (and absent from events recorded before it).
        service_signature: str | None = None
        #: See ``Registered.canonical_form``.
        canonical_form: int = LEGACY_FORM

        def apply(self, aggregate: PatientCourse) -> None:
            self.evolve_record(aggregate.record)
            aggregate.remember(self)

        def evolve_record(self, record: PatientRecord) -> None:
            """What this signature does to the pure record (see ``Moved.evolve_record``)."""
            record.version = self.originator_version
            record.signatures.append(
                {
                    "version": self.originator_version,
                    "milestone": self.milestone,
                    "signs_version": self.signs_version,
                    "signed_hash": self.signed_hash,
                    "meaning": self.meaning,
                    "printed_name": self.printed_name,
                    "signer": self.actor,
                    "signed_at": self.timestamp.isoformat(),
                    "occurred_at": self.occurred_at,
                }
            )

    class QueryEvent(Aggregate.Event):
        """A step of a data query (issue 17): opened, answered, closed or re-opened. The
        protocol state does not change; the record's ``queries`` do."""

        command: str
        action: str
        query_id: str
        status: str
        text: str | None
        on_version: int | None
        field: str | None
        correction: int | None
        #: The query rule that opened or closed it (None: a person's query).
        rule: str | None
        actor: str
        role: str
        reason: str | None
        occurred_at: str
        #: None for the steps the query rules record (no command of a caller).
        idempotency_key: str | None
        digest: str | None
        prev_hash: str
        canonical_form: int = LEGACY_FORM

        def apply(self, aggregate: PatientCourse) -> None:
            self.evolve_record(aggregate.record)
            aggregate.remember(self)

        def evolve_record(self, record: PatientRecord) -> None:
            """What this step does to the pure record (see ``Moved.evolve_record``)."""
            evolve_query(
                record,
                action=self.action,
                query_id=self.query_id,
                status=self.status,
                text=self.text,
                on_version=self.on_version,
                field=self.field,
                correction=self.correction,
                rule=self.rule,
                actor=self.actor,
                role=self.role,
                reason=self.reason,
                occurred_at=self.occurred_at,
                recorded_at=self.timestamp.isoformat(),
                version=self.originator_version,
            )

    class QueryOpened(QueryEvent): ...

    class QueryAnswered(QueryEvent): ...

    class QueryClosed(QueryEvent): ...

    class QueryReopened(QueryEvent): ...

    def __init__(self, patient_id: str, actor: str, role: str, prev_hash: str) -> None:
        self.record = PatientRecord(patient_id=patient_id)
        #: The replay rules this course's state follows (:data:`REPLAY_RULES`), kept in snapshots.
        self.replay_rules = REPLAY_RULES
        #: idempotency key -> [payload digest, version of the event it recorded]
        self.idempotency: dict[str, list[Any]] = {}
        self.chain_head = ""
        #: str(version) -> [trigger, hash] of each move a signature may sign (a signature names
        #: the hash of the event it signs; this spares reading the event back from the store).
        self.signable: dict[str, list[str]] = {}

    @property
    def patient_id(self) -> str:
        return self.record.patient_id

    def remember(self, event: Any) -> None:
        key = getattr(event, "idempotency_key", None)
        if key is not None:
            self.idempotency[key] = [event.digest, event.originator_version]
        self.record.version = event.originator_version
        self.chain_head = chain_hash(event)
        if isinstance(event, PatientCourse.Moved) and event.command not in EPISODE_COMMANDS:
            #: The clinical time, move and version of the patient's last move: the next one
            #: cannot have happened before it (``CourseService`` checks).
            self.moved_at = [event.occurred_at, event.trigger, event.originator_version]
        if isinstance(event, PatientCourse.Moved) and event.trigger in SIGNABLE_TRIGGERS:
            signable = getattr(self, "signable", None)
            if signable is not None:  # None: restored from a snapshot taken before it existed
                signable[str(event.originator_version)] = [event.trigger, self.chain_head]

    # -- command side (called by the service after the protocol said yes) ----------------------

    @classmethod
    def register(
        cls, patient_id: str, actor: str, role: str, *, id: uuid.UUID | None = None
    ) -> PatientCourse:
        """A new patient's course; ``id``: its stream id (the store's scheme,
        ``cart_course.streamids``; default the uuid5 of the patient id)."""
        course = cls._create(
            cls.Registered,
            id=id,
            patient_id=patient_id,
            actor=actor,
            role=role,
            prev_hash=genesis_hash(patient_id),
            canonical_form=CANONICAL_FORM,
        )
        return course

    def record_event(self, event_class: type[Aggregate.Event], **fields: Any) -> None:
        if fields.get("timestamp") is None:
            fields["timestamp"] = self.next_timestamp(event_class)
        self.trigger_event(
            event_class, prev_hash=self.chain_head, canonical_form=CANONICAL_FORM, **fields
        )

    def next_timestamp(self, event_class: type[Aggregate.Event]) -> dt.datetime:
        """The record time of the stream's next event: now, and never before the previous
        event's (when the server's clock steps back, the previous event's time), so that record
        times never go backwards in a stream (``audit verify`` checks it)."""
        now: dt.datetime = event_class.create_timestamp()
        last: dt.datetime | None = getattr(self, "modified_on", None)
        return last if last is not None and now < last else now


def move_event_class(name: str) -> type[PatientCourse.Moved]:
    """The move event class ``PatientCourse.<name>`` that a command's definition names: the class
    above, or (a command added to the registry without one) a new subclass of
    :class:`PatientCourse.Moved`, made once and kept on ``PatientCourse`` so that its stored
    topic (``cart_course.course:PatientCourse.<name>``) resolves."""
    found = getattr(PatientCourse, name, None)
    if found is None:
        found = type(
            name,
            (PatientCourse.Moved,),
            {"__qualname__": f"PatientCourse.{name}", "__module__": __name__},
        )
        setattr(PatientCourse, name, found)
    if not (isinstance(found, type) and issubclass(found, PatientCourse.Moved)):
        raise TypeError(f"PatientCourse.{name} is not a move event")
    return found


def move_events(registry: Registry = REGISTRY) -> dict[str, type[PatientCourse.Moved]]:
    """Each move (trigger) of ``registry`` and the event class it records."""
    return {trigger: move_event_class(name) for trigger, name in registry.events.items()}


#: The event class each move records (from the command registry).
MOVE_EVENTS: dict[str, type[PatientCourse.Moved]] = move_events()


#: The event class of each step of a data query (``protocol/queries.py``).
QUERY_EVENTS: dict[str, type[PatientCourse.QueryEvent]] = {
    "open": PatientCourse.QueryOpened,
    "answer": PatientCourse.QueryAnswered,
    "close": PatientCourse.QueryClosed,
    "reopen": PatientCourse.QueryReopened,
}
