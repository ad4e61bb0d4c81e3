"""The application service: load the course, let the protocol decide, record, save.

One method, ``execute``, takes any command of the contract; ``execute_batch`` takes many and
saves them in one transaction. Queries answer for one patient (state, doses, toxicities, moves
allowed now, history). Storage errors become domain errors here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import attrs
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import (
    IntegrityError,
    MapperDeserialisationError,
    OperationalError,
    PersistenceError,
)

from .contract import Command, parse_clinical_time, validated
from .course import EPISODE_COMMANDS, MILESTONES, MOVE_EVENTS, PatientCourse, event_hash, stream_id
from .errors import (
    CartCourseError,
    CipherKeyError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidCommandError,
    MoveRefused,
    PatientNotFoundError,
    StoreError,
    VersionConflictError,
)
from .protocol.commands import (
    COMMANDS,
    MoveRefusedError,
    RecordedFraction,
    allowed_now,
    corrected_fraction_context,
    outcome_of,
    payload_facts,
    prepare,
    replan_course,
    reschedule_course,
)
from .protocol.errors import ProtocolInputError, key_name
from .protocol.record import PatientRecord
from .protocol.versions import CURRENT, ProtocolVersion, get_version
from .storage import CourseApplication

#: Events whose facts may be corrected, and the milestones that may be signed.
CORRECTABLE = (
    "screen",
    "rescreen",
    "record_apheresis",
    "infuse_d1",
    "infuse_d2",
    "infuse_d3",
    "report_toxicity",
    "assess_response",
)
SIGNATURE_MEANINGS = ("review", "approval", "authorship")
SIGNING_ROLES = ("clinician",)
MAX_RETRIES = 20
#: SQLite may refuse a write with "database is locked" under contention even with a busy
#: timeout (a stale WAL read snapshot cannot be upgraded). Nothing was committed: retry.
LOCKED_RETRIES = 50
#: A write that has not got the store's lock for this long fails (503 ``store_error``, nothing
#: written) instead of retrying on: SQLite waits up to its lock timeout (30 s) per attempt.
BUSY_DEADLINE_SECONDS = 60.0


def _busy_for(started: float) -> StoreError | None:
    """The error for a write still refused as busy after :data:`BUSY_DEADLINE_SECONDS`."""
    waited = time.monotonic() - started
    if waited < BUSY_DEADLINE_SECONDS:
        return None
    return StoreError(
        f"the store is busy: another writer has held it for {waited:.0f} s; nothing was "
        "written; try again"
    )


#: What an auditor runs on a store that holds a row this application cannot read.
VERIFY_HINT = "the store may be damaged or tampered with: run 'cart-course audit verify'"


@contextlib.contextmanager
def store_errors(
    what: str, app: CourseApplication | None = None, *, writing: bool = False
) -> Iterator[None]:
    """Turn the library's storage failures into :class:`StoreError` (one clear line); with
    ``writing``, a failure says it could not write (a full disk, a read-only store) and that
    nothing was written.

    A stored event that cannot be read is the key's fault (:class:`CipherKeyError`) unless
    ``app`` says the store's first event reads with this key and settings: then that one row
    is damaged (a :class:`StoreError` naming it), and blaming the key would mislead."""
    try:
        yield
    except MapperDeserialisationError as exc:
        if app is not None and app.settings_mismatch() is None:
            raise StoreError(f"cannot read {what}: {exc}; {VERIFY_HINT}") from None
        raise CipherKeyError(
            f"cannot read {what}: the stored events do not decrypt with this key. "
            "CART_COURSE_CIPHER_KEY (and CART_COURSE_COMPRESS) must be the ones the store was "
            "written with"
        ) from None
    except IntegrityError:
        raise
    except PersistenceError as exc:
        if writing:
            raise StoreError(
                f"cannot write to {what}: {type(exc).__name__}: {exc}; nothing was written"
            ) from None
        raise StoreError(f"cannot read {what}: {type(exc).__name__}: {exc}") from None


class StoreBusy(Exception):
    """The store refused the write for now (SQLite "database is locked"): nothing was written."""


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) and "locked" in str(exc).lower()


@attrs.frozen(kw_only=True)
class CommandResult:
    status: str  # "recorded" | "duplicate"
    patient_id: str
    version: int
    event: str
    command: str
    trigger: str | None
    from_state: str | None
    to_state: str
    deviations: tuple[str, ...] = ()
    outcome: Mapping[str, Any] = attrs.Factory(dict)
    allowed_moves: tuple[str, ...] = ()
    idempotency_key: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "patient_id": self.patient_id,
            "version": self.version,
            "event": self.event,
            "command": self.command,
            "move": self.trigger,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "deviations": list(self.deviations),
            "outcome": dict(self.outcome),
            "allowed_moves": list(self.allowed_moves),
            "idempotency_key": self.idempotency_key,
        }


def _input_error(exc: ProtocolInputError) -> InvalidCommandError:
    field = exc.field if exc.field.startswith(("payload", "command")) else f"payload.{exc.field}"
    return InvalidCommandError(field, exc.message)


def _changes_error(exc: ProtocolInputError, changes: Mapping[str, Any]) -> InvalidCommandError:
    """An error in a corrected payload, named where the client wrote it: a key of ``changes``
    is ``payload.changes.<key>`` (not the corrected move's own ``payload.<key>``)."""
    error = _input_error(exc)
    head, _, rest = error.field.removeprefix("payload.").partition(".")
    if error.field.startswith("payload.") and head in changes:
        if changes[head] is None:
            return InvalidCommandError(
                f"payload.changes.{head}", f"cannot be removed (null): {exc.message}"
            )
        return InvalidCommandError(
            f"payload.changes.{head}" + (f".{rest}" if rest else ""), exc.message
        )
    return error


def _event_version(value: Any, course: PatientCourse, field: str, what: str) -> int:
    """A payload's reference to one of the patient's events (1..its version), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= course.version:
        raise InvalidCommandError(field, f"must be the version of {what} (1..{course.version})")
    return value


def _recorded_fractions(
    events: Sequence[Any], fallback: ProtocolVersion
) -> dict[int, RecordedFraction]:
    """Each recorded infusion by version, as its latest facts state it (the move's, or those of
    its latest correction), with the protocol version it was recorded under (for ``_correct``)."""
    fractions: dict[int, RecordedFraction] = {}
    for e in events:
        if isinstance(e, PatientCourse.Moved) and e.trigger.startswith("infuse_d"):
            try:
                protocol = get_version(e.protocol_version)
            except KeyError:  # UnknownProtocolVersionError: judged under the correction's
                protocol = fallback
            fractions[e.originator_version] = RecordedFraction(
                version=e.originator_version, trigger=e.trigger, facts=e.facts, protocol=protocol
            )
        elif isinstance(e, PatientCourse.FactCorrected) and e.corrects in fractions:
            fractions[e.corrects] = attrs.evolve(fractions[e.corrects], facts=e.facts)
    return fractions


def _out_of_order(events: Sequence[Any], corrects: int, occurred: dt.datetime) -> list[str]:
    """Findings when a corrected clinical time puts move ``corrects`` before the move it
    followed or after the move that followed it (each at its clinical time as last corrected)."""
    times: dict[int, tuple[str, str]] = {}
    for e in events:
        if isinstance(e, PatientCourse.Moved) and e.command not in EPISODE_COMMANDS:
            times[e.originator_version] = (e.occurred_at, e.trigger)
    for e in events:
        if isinstance(e, PatientCourse.FactCorrected) and e.corrects in times:
            when = e.facts.get("_occurred_at")
            if when:
                times[e.corrects] = (when, times[e.corrects][1])
    found = []
    earlier = [v for v in times if v < corrects]
    later = [v for v in times if v > corrects]
    if earlier:
        v = max(earlier)
        when, trigger = times[v]
        if occurred < dt.datetime.fromisoformat(when):
            found.append(
                f"correction of version {corrects}: {occurred.isoformat()} is before the move it "
                f"followed ({trigger}, version {v}, at {when})"
            )
    if later:
        v = min(later)
        when, trigger = times[v]
        if occurred > dt.datetime.fromisoformat(when):
            found.append(
                f"correction of version {corrects}: {occurred.isoformat()} is after the move that "
                f"followed it ({trigger}, version {v}, at {when})"
            )
    return found


def _check_clinical_order(course: PatientCourse, command: Command) -> None:
    """Moves are recorded in the order they happened: a move's clinical time may not be before
    the patient's last move (screening, apheresis, infusions, assessment, decisions). A toxicity
    report or resolution may be (its onset or resolution can precede the last move), but not
    before the patient's first recorded event. Late entry is fine: the record time says when."""
    occurred = command.occurred_at
    if command.command in EPISODE_COMMANDS:
        first = course.record.first_occurred_at
        if first is not None and occurred < dt.datetime.fromisoformat(first):
            raise InvalidCommandError(
                "occurred_at",
                f"{command.occurred_iso} is before this patient's first recorded event "
                f"({first}); a toxicity's clinical time is when it began or resolved",
            )
        return
    last = getattr(course, "moved_at", None)  # None: a course restored from an older snapshot
    if last is not None and occurred < dt.datetime.fromisoformat(last[0]):
        raise InvalidCommandError(
            "occurred_at",
            f"{command.occurred_iso} is before this patient's last move ({last[1]} at {last[0]}, "
            f"version {last[2]}); moves are recorded in the order they happened (if that time "
            f"is wrong, correct version {last[2]})",
        )


def _refused(exc: MoveRefusedError) -> MoveRefused:
    return MoveRefused(
        str(exc),
        state=exc.run.source,
        trigger=exc.run.trigger,
        failed=[f.to_json() for f in exc.failed],
        allowed=exc.allowed,
    )


class CourseService:
    def __init__(
        self, app: CourseApplication, protocol: ProtocolVersion = CURRENT, cache_size: int = 20_000
    ) -> None:
        self.app = app
        self.protocol = protocol
        #: Patients recently used, as saved. A command on a cached patient needs no replay; a
        #: stale entry (another process wrote since) is caught by the store's optimistic
        #: concurrency (IntegrityError -> evict, reload, decide again).
        self._cache: OrderedDict[UUID, PatientCourse] = OrderedDict()
        self._cache_size = cache_size
        #: One writer at a time per service object: the cache is shared by threads.
        self._lock = threading.RLock()
        #: While a batch is decided: the saved events read for its duplicates, by stream and
        #: version, and how many commands of each patient the batch has.
        self._batch_reads: dict[UUID, dict[int, Any]] | None = None
        self._batch_span: Counter[str] = Counter()
        #: The signed ledger (``cart_course.ledger``), when a signing key is configured.
        self.ledger: Any = None

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        self.app.close()

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    def _load(
        self, patient_id: str, *, fresh: bool = True, probably_new: bool = False
    ) -> PatientCourse | None:
        """The patient's aggregate: from the cache (caught up with the store when ``fresh``), or
        replayed from the latest snapshot and the events after it.

        ``probably_new`` (a screening): ask first whether the stream has any event at all (one
        query), rather than looking for a snapshot and then for events (two)."""
        sid = stream_id(patient_id)
        with self._lock:
            cached = self._cache.get(sid)
            if cached is not None and not cached.pending_events:
                if fresh:
                    with store_errors(f"patient {patient_id}"):
                        for event in self.app.events.get(sid, gt=cached.version):
                            event.mutate(cached)  # type: ignore[attr-defined]
                self._cache.move_to_end(sid)
                return cached
            try:
                with store_errors(f"patient {patient_id}", self.app):
                    if probably_new and not self.app.recorder.select_events(sid, limit=1):
                        return None
                    course: Any = self.app.repository.get(sid)
            except AggregateNotFoundError:
                return None
            except (AssertionError, AttributeError, KeyError, TypeError, ValueError) as exc:
                # the events read, but do not replay into a course (a registration missing, a
                # field changed to another type): say which patient, never a bare traceback
                raise self._unreplayable(patient_id, sid, exc) from None
            if not isinstance(course, PatientCourse):
                raise StoreError(
                    f"patient {patient_id}: the stored stream {sid} replays into a "
                    f"{type(course).__name__}, not a patient's course; {VERIFY_HINT}"
                )
            self._remember(course)
            return course

    def _unreplayable(self, patient_id: str, sid: UUID, exc: BaseException) -> StoreError:
        with store_errors(f"patient {patient_id}", self.app):
            first = self.app.recorder.select_events(sid, limit=1)
        if first and first[0].originator_version != 1:
            why = (
                f"its first stored event is version {first[0].originator_version} "
                f"({first[0].topic.rpartition('.')[2]}), not the registration (version 1)"
            )
        else:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return StoreError(
            f"patient {patient_id}: the stored history cannot be replayed: {why}; {VERIFY_HINT}"
        )

    def _remember(self, course: PatientCourse) -> None:
        self._cache[course.id] = course
        self._cache.move_to_end(course.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _evict(self, patient_id: str) -> None:
        with self._lock:
            self._cache.pop(stream_id(patient_id), None)

    def record(self, patient_id: str) -> PatientRecord:
        course = self._load(patient_id)
        if course is None:
            raise PatientNotFoundError(patient_id)
        return course.record

    # ------------------------------------------------------------------------------------------
    # Commands
    # ------------------------------------------------------------------------------------------

    def execute(self, command: Command) -> CommandResult:
        """Record one command, or raise a :class:`CartCourseError` that says why not."""
        command = validated(command)
        with self._lock:
            return self._execute(command)

    def execute_batch(self, commands: Sequence[Command]) -> list[CommandResult | CartCourseError]:
        """Record many commands in one transaction; each gets its own result or error."""
        checked: list[Command] = []
        refused: dict[int, CartCourseError] = {}
        for i, command in enumerate(commands):
            try:
                checked.append(validated(command))
            except CartCourseError as exc:
                refused[i] = exc
        with self._lock:
            results = self._execute_batch(checked) if checked else []
        if not refused:
            return results
        done = iter(results)
        return [refused[i] if i in refused else next(done) for i in range(len(commands))]

    def _execute(self, command: Command) -> CommandResult:
        started = time.monotonic()
        for attempt in range(MAX_RETRIES + LOCKED_RETRIES):
            loaded = self._load(command.patient_id, probably_new=command.command == "screen")
            result, course = self._apply(loaded, command, with_allowed=True)
            if course is None:  # a duplicate: nothing to save
                return result
            try:
                self._save(course)
            except StoreBusy:
                self._evict(command.patient_id)
                busy = _busy_for(started)
                if busy is not None:
                    raise busy from None
                time.sleep(0.005 * (1 + attempt % 10))
                continue
            except IntegrityError:
                self._evict(command.patient_id)
                if command.expected_version is not None:
                    fresh = self._load(command.patient_id)
                    raise VersionConflictError(
                        command.patient_id, command.expected_version, fresh.version if fresh else 0
                    ) from None
                time.sleep(0.001)
                continue
            return result
        raise CartCourseError(
            f"patient {command.patient_id}: too many concurrent writers, try again"
        )

    def _execute_batch(self, commands: Sequence[Command]) -> list[CommandResult | CartCourseError]:
        self._batch_reads = {}
        self._batch_span = Counter(c.patient_id for c in commands)
        try:
            return self._decide_and_save_batch(commands)
        finally:
            self._batch_reads = None
            self._batch_span = Counter()

    def _decide_and_save_batch(
        self, commands: Sequence[Command]
    ) -> list[CommandResult | CartCourseError]:
        started = time.monotonic()
        for attempt in range(MAX_RETRIES + LOCKED_RETRIES):
            assert self._batch_reads is not None
            self._batch_reads.clear()  # a retry decides again from the store as it is now
            new = self._new_patients(commands)
            loaded: dict[str, PatientCourse | None] = {}
            results: list[CommandResult | CartCourseError] = []
            for command in commands:
                if command.patient_id not in loaded:
                    loaded[command.patient_id] = (
                        None
                        if command.patient_id in new
                        else self._load(
                            command.patient_id,
                            fresh=False,
                            probably_new=command.command == "screen",
                        )
                    )
                course = loaded[command.patient_id]
                try:
                    result, changed = self._apply(course, command)
                except CartCourseError as exc:
                    results.append(exc)
                    continue
                if changed is not None:
                    loaded[command.patient_id] = changed
                results.append(result)
            dirty = [c for c in loaded.values() if c is not None and c.pending_events]
            try:
                if dirty:
                    self._save(*dirty)
            except (IntegrityError, StoreBusy) as exc:
                for patient_id in loaded:
                    self._evict(patient_id)
                busy = _busy_for(started) if isinstance(exc, StoreBusy) else None
                if busy is not None:
                    raise busy from None
                time.sleep(0.005 * (1 + attempt % 10))
                continue
            return results
        raise CartCourseError("too many concurrent writers for this batch, try again")

    def _new_patients(self, commands: Sequence[Command]) -> set[str]:
        """Patients screened in this batch who are neither cached nor in the store: asked in one
        query, not one per patient. (Registered by another process meanwhile: the save fails
        as a version clash and the batch is decided again from the store.)"""
        screened = {
            c.patient_id
            for c in commands
            if c.command == "screen" and stream_id(c.patient_id) not in self._cache
        }
        if not screened:
            return screened
        with store_errors("the store"):
            existing = self.app.existing_streams([stream_id(p) for p in screened])
        return {p for p in screened if stream_id(p) not in existing}

    def _apply(
        self, course: PatientCourse | None, command: Command, *, with_allowed: bool = False
    ) -> tuple[CommandResult, PatientCourse | None]:
        """Decide and trigger the event on ``course`` (not saved). Duplicates return course None.

        ``with_allowed``: a recorded move's result names the moves allowed after it."""
        key = command.key
        if course is not None:
            seen = course.idempotency.get(key)
            if seen is not None:
                digest, version = seen
                if digest != command.digest:
                    raise IdempotencyConflictError(key, version)
                return self._result_of(course, version, "duplicate"), None
        version_now = course.version if course is not None else 0
        if command.expected_version is not None and command.expected_version != version_now:
            raise VersionConflictError(command.patient_id, command.expected_version, version_now)
        if course is None:
            if command.command not in ("screen",):
                raise PatientNotFoundError(command.patient_id)
            course = PatientCourse.register(
                command.patient_id, command.actor.id, command.actor.role
            )
        if command.command in ("correct", "sign"):
            done = (self._correct if command.command == "correct" else self._sign)(course, command)
            if with_allowed:
                done = attrs.evolve(
                    done, allowed_moves=tuple(allowed_now(course.record, self.protocol))
                )
            return done, course
        record = course.record
        try:
            prepared = prepare(
                record,
                command.command,
                command.payload,
                command.occurred_at,
                command.reason,
                self.protocol,
            )
        except ProtocolInputError as exc:
            raise _input_error(exc) from None
        except MoveRefusedError as exc:
            raise _refused(exc) from None
        _check_clinical_order(course, command)
        event_class = MOVE_EVENTS[prepared.trigger]
        course.record_event(
            event_class,
            command=prepared.command,
            trigger=prepared.trigger,
            from_state=prepared.from_state,
            to_state=prepared.to_state,
            payload=prepared.payload,
            facts=prepared.facts,
            outcome=prepared.outcome,
            protocol_version=self.protocol.id,
            actor=command.actor.id,
            role=command.actor.role,
            reason=command.reason,
            occurred_at=command.occurred_iso,
            idempotency_key=key,
            digest=command.digest,
        )
        return (
            CommandResult(
                status="recorded",
                patient_id=command.patient_id,
                version=course.version,
                event=event_class.__name__,
                command=prepared.command,
                trigger=prepared.trigger,
                from_state=prepared.from_state,
                to_state=prepared.to_state,
                deviations=tuple(prepared.outcome.get("deviations", ())),
                outcome=prepared.outcome,
                allowed_moves=tuple(allowed_now(course.record, self.protocol))
                if with_allowed
                else (),
                idempotency_key=key,
            ),
            course,
        )

    # -- corrections ---------------------------------------------------------------------------

    def _stored_events(self, patient_id: str, lte: int | None = None) -> list[Any]:
        with store_errors(f"patient {patient_id}"):
            return list(self.app.events.get(stream_id(patient_id), lte=lte))

    def _save(self, *courses: PatientCourse) -> None:
        """Save in one transaction, or raise and forget the aggregates (their events are gone).

        IntegrityError (a version clash) and :class:`StoreBusy` ("database is locked") go to the
        caller, which reloads and decides again: nothing was committed, nothing is lost.
        """
        saved = sum(len(c.pending_events) for c in courses)
        try:
            with store_errors("the store", writing=True):
                try:
                    self.app.save(*courses)
                except OperationalError as exc:
                    if _is_locked(exc):
                        raise StoreBusy(str(exc)) from None
                    raise
        except BaseException:
            for course in courses:
                self._cache.pop(course.id, None)
            raise
        for course in courses:
            self._remember(course)
        if self.ledger is not None:
            self.ledger.after_save(saved)

    def _events_of(self, course: PatientCourse, lte: int | None = None) -> list[Any]:
        """The stream's events including those pending in this (batched) transaction."""
        pending = list(course.pending_events)
        saved_up_to = course.version - len(pending)
        events = self._stored_events(course.patient_id, lte=saved_up_to) if saved_up_to else []
        events.extend(pending)
        return [e for e in events if lte is None or e.originator_version <= lte]

    def _event_at(self, course: PatientCourse, version: int) -> Any:
        """The stream's event at ``version``: pending in this batch, or read from the store.

        Within a batch, the first duplicate of a patient reads the events it and the patient's
        later commands of the batch may have recorded (as many as the batch has commands of that
        patient), so a file ingested again costs one query per patient and batch, not one per
        line; outside a batch, the one row."""
        for pending in course.pending_events:
            if pending.originator_version == version:
                return pending
        reads = self._batch_reads
        saved = reads.get(course.id) if reads is not None else None
        event: Any = saved.get(version) if saved is not None else None
        if event is None:
            span = self._batch_span.get(course.patient_id, 1) if reads is not None else 1
            with store_errors(f"patient {course.patient_id}"):
                found = self.app.events.get(course.id, gt=version - 1, lte=version - 1 + span)
                saved = {e.originator_version: e for e in found}
            if reads is not None:
                reads[course.id] = saved
            event = saved.get(version)
        if event is None:
            raise StoreError(f"patient {course.patient_id}: event {version} is not in the store")
        return event

    def _correct(self, course: PatientCourse, command: Command) -> CommandResult:
        p = command.payload
        extra = sorted(set(p) - {"corrects", "changes"}, key=str)
        if extra:
            raise InvalidCommandError(
                f"payload.{key_name(extra[0])}", "unknown key; allowed: corrects, changes"
            )
        if not command.reason:
            raise InvalidCommandError(
                "reason", "a correction needs a reason (what was wrong and why)"
            )
        corrects = _event_version(
            p.get("corrects"), course, "payload.corrects", "an event of this patient"
        )
        changes = p.get("changes")
        if not isinstance(changes, Mapping) or not changes:
            raise InvalidCommandError(
                "payload.changes", "must be a non-empty object of payload keys -> new values"
            )
        events = self._events_of(course)
        original = next((e for e in events if e.originator_version == corrects), None)
        if not isinstance(original, PatientCourse.Moved) or original.trigger not in CORRECTABLE:
            kinds = ", ".join(CORRECTABLE)
            raise InvalidCommandError(
                "payload.corrects",
                f"version {corrects} is not a correctable move; correctable: {kinds}",
            )
        base_payload = dict(original.payload)
        base_occurred = original.occurred_at
        for e in events:
            if isinstance(e, PatientCourse.FactCorrected) and e.corrects == corrects:
                base_payload = dict(e.payload)
                base_occurred = e.facts.get("_occurred_at", base_occurred)
        allowed_keys = set(COMMANDS[original.command].keys) | {"occurred_at"}
        for key in changes:
            if key not in allowed_keys or key == "day":
                raise InvalidCommandError(
                    f"payload.changes.{key_name(key)}",
                    f"cannot be corrected on {original.command}; correctable keys: "
                    + ", ".join(sorted(allowed_keys - {"day"})),
                )
        new_payload = {**base_payload, **{k: v for k, v in changes.items() if k != "occurred_at"}}
        new_payload = {k: v for k, v in new_payload.items() if v is not None}
        if "occurred_at" in changes:
            occurred = parse_clinical_time(changes["occurred_at"], "payload.changes.occurred_at")
        else:
            occurred = dt.datetime.fromisoformat(base_occurred)
        version = get_version(original.protocol_version)
        record = course.record
        # A fraction's correction reads the course as the record states it now (a corrected D1
        # weight re-planned it), not as it was when the fraction was recorded.
        context = {**original.facts, **corrected_fraction_context(record, corrects)}
        try:
            _old_norm, old_pfacts = payload_facts(
                record,
                original.command,
                base_payload,
                dt.datetime.fromisoformat(base_occurred).date(),
                context,
            )
            norm, pfacts = payload_facts(
                record, original.command, new_payload, occurred.date(), context
            )
        except ProtocolInputError as exc:
            raise _changes_error(exc, changes) from None
        facts = {k: v for k, v in context.items() if k not in old_pfacts}
        facts.update(pfacts)
        facts["_occurred_at"] = occurred.isoformat()
        run = version.dry_run(original.from_state, original.trigger, facts)
        findings = [f"correction of version {corrects}: {f.message}" for f in run.failed]
        if "occurred_at" in changes and original.command not in EPISODE_COMMANDS:
            findings.extend(_out_of_order(events, corrects, occurred))
        if run.allowed and run.dest != original.to_state:
            findings.append(
                f"correction of version {corrects}: with the corrected facts the move would lead to "
                f"{run.dest}, not {original.to_state} as recorded"
            )
        outcome = outcome_of(original.trigger, facts, version)
        date_key = "apheresis_date" if original.trigger == "record_apheresis" else "infusion_date"
        new_date = pfacts.get(date_key)
        if isinstance(new_date, str) and new_date != old_pfacts.get(date_key):
            rescheduled, more = reschedule_course(
                record, corrects, original.trigger, new_date, _recorded_fractions(events, version)
            )
            if rescheduled:
                outcome["rescheduled"] = rescheduled
            findings.extend(more)
        if original.trigger == "infuse_d1":
            try:
                replanned, more = replan_course(
                    record, corrects, outcome, _recorded_fractions(events, version)
                )
            except ProtocolInputError as exc:
                raise _input_error(exc) from None
            if replanned:
                outcome["replanned"] = replanned
            findings.extend(more)
        course.record_event(
            PatientCourse.FactCorrected,
            corrects=corrects,
            trigger=original.trigger,
            changes=dict(changes),
            payload=norm,
            facts=facts,
            outcome=outcome,
            findings=findings,
            protocol_version=version.id,
            actor=command.actor.id,
            role=command.actor.role,
            reason=command.reason,
            occurred_at=command.occurred_iso,
            idempotency_key=command.key,
            digest=command.digest,
        )
        return CommandResult(
            status="recorded",
            patient_id=command.patient_id,
            version=course.version,
            event="FactCorrected",
            command="correct",
            trigger=None,
            from_state=course.record.state,
            to_state=course.record.state,
            deviations=tuple(findings),
            outcome={"corrects": corrects, **outcome},
            idempotency_key=command.key,
        )

    # -- signatures ----------------------------------------------------------------------------

    def _sign(self, course: PatientCourse, command: Command) -> CommandResult:
        p = command.payload
        extra = sorted(set(p) - {"milestone", "signs_version", "meaning", "printed_name"}, key=str)
        if extra:
            raise InvalidCommandError(
                f"payload.{key_name(extra[0])}",
                "unknown key; allowed: milestone, signs_version, meaning, printed_name",
            )
        if command.actor.role not in SIGNING_ROLES:
            raise ForbiddenError(
                f"a {command.actor.role} may not sign; signatures are given by: "
                + ", ".join(SIGNING_ROLES)
                + " (an investigator)"
            )
        milestone = p.get("milestone")
        if milestone not in MILESTONES:
            raise InvalidCommandError(
                "payload.milestone", f"must be one of {', '.join(MILESTONES)}"
            )
        meaning = p.get("meaning")
        if meaning not in SIGNATURE_MEANINGS:
            raise InvalidCommandError(
                "payload.meaning", f"must be one of {', '.join(SIGNATURE_MEANINGS)}"
            )
        name = p.get("printed_name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidCommandError(
                "payload.printed_name", "the signer's printed name is required"
            )
        if len(name) > 200 or any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in name):
            raise InvalidCommandError(
                "payload.printed_name",
                "must be the signer's name as printed: one line of at most 200 characters, "
                "without control characters",
            )
        signs = _event_version(
            p.get("signs_version"), course, "payload.signs_version", "the signed event"
        )
        known = getattr(course, "signable", None)
        entry = known.get(str(signs)) if known is not None else None
        if entry is not None and entry[0] in MILESTONES[milestone]:
            signed_hash = entry[1]
        else:  # not a milestone of this kind, or a course restored from an older snapshot
            events = self._events_of(course, lte=signs)
            signed = events[-1] if events else None
            if (
                not isinstance(signed, PatientCourse.Moved)
                or signed.trigger not in MILESTONES[milestone]
            ):
                raise InvalidCommandError(
                    "payload.signs_version",
                    f"version {signs} is not a {milestone} milestone (one of: {', '.join(MILESTONES[milestone])})",
                )
            signed_hash = event_hash(signed)
        fields: dict[str, Any] = dict(
            milestone=milestone,
            signs_version=signs,
            signed_hash=signed_hash,
            meaning=meaning,
            printed_name=name,
            actor=command.actor.id,
            role=command.actor.role,
            reason=command.reason,
            occurred_at=command.occurred_iso,
            idempotency_key=command.key,
            digest=command.digest,
        )
        if self.ledger is not None:  # the service's signature over it (cart_course.signing)
            fields.update(self.ledger.sign_esignature(course, fields))
        course.record_event(PatientCourse.MilestoneSigned, **fields)
        return CommandResult(
            status="recorded",
            patient_id=command.patient_id,
            version=course.version,
            event="MilestoneSigned",
            command="sign",
            trigger=None,
            from_state=course.record.state,
            to_state=course.record.state,
            outcome={"milestone": milestone, "signs_version": signs, "meaning": meaning},
            idempotency_key=command.key,
        )

    def _result_of(self, course: PatientCourse, version: int, status: str) -> CommandResult:
        """The result of the event at ``version`` again (an idempotent retry): the same fields
        as when it was recorded; ``allowed_moves`` are the moves allowed now."""
        event = self._event_at(course, version)
        events: list[Any] = [event]
        if not isinstance(event, PatientCourse.Moved):  # the state it was recorded in is needed
            events = self._events_of(course, lte=version)  # includes events pending in a batch
        allowed = tuple(allowed_now(course.record, self.protocol))
        common: dict[str, Any] = {
            "status": status,
            "patient_id": course.patient_id,
            "version": version,
            "event": type(event).__name__,
            "idempotency_key": getattr(event, "idempotency_key", ""),
            "allowed_moves": allowed,
        }
        if isinstance(event, PatientCourse.Moved):
            return CommandResult(
                command=event.command,
                trigger=event.trigger,
                from_state=event.from_state,
                to_state=event.to_state,
                deviations=tuple(event.outcome.get("deviations", ())),
                outcome=event.outcome,
                **common,
            )
        # A correction or a signature does not move the state: the state it was recorded in.
        state = next(
            (e.to_state for e in reversed(events) if isinstance(e, PatientCourse.Moved)),
            "candidate",
        )
        if isinstance(event, PatientCourse.FactCorrected):
            return CommandResult(
                command="correct",
                trigger=None,
                from_state=state,
                to_state=state,
                deviations=tuple(event.findings),
                outcome={"corrects": event.corrects, **event.outcome},
                **common,
            )
        assert isinstance(event, PatientCourse.MilestoneSigned)
        return CommandResult(
            command="sign",
            trigger=None,
            from_state=state,
            to_state=state,
            outcome={
                "milestone": event.milestone,
                "signs_version": event.signs_version,
                "meaning": event.meaning,
            },
            **common,
        )

    # ------------------------------------------------------------------------------------------
    # Queries
    # ------------------------------------------------------------------------------------------

    def summary(self, patient_id: str) -> dict[str, Any]:
        record = self.record(patient_id)
        data = record.summary()
        data["allowed_moves"] = allowed_now(record, self.protocol)
        return data

    def allowed_moves(self, patient_id: str) -> list[str]:
        return allowed_now(self.record(patient_id), self.protocol)

    def events(self, patient_id: str) -> list[Any]:
        events = self._stored_events(patient_id)
        if not events:
            raise PatientNotFoundError(patient_id)
        return events

    def patient_ids(self) -> Iterator[str]:
        """Every patient on record, in registration order (scans the log for registrations)."""
        topic = f"{PatientCourse.__module__}:{PatientCourse.Registered.__qualname__}"
        start = 0
        while True:
            with store_errors("the list of patients"):
                page = self.app.recorder.select_notifications(
                    start=start, limit=1000, topics=[topic], inclusive_of_start=False
                )
                if not page:
                    return
                ids = [
                    self.app.mapper.to_domain_event(n).patient_id  # type: ignore[attr-defined]
                    for n in page
                ]
            yield from ids
            start = page[-1].id

    def patients(self) -> list[dict[str, Any]]:
        """Every patient with their state. A patient whose stored history cannot be read (a
        damaged row) is listed with state ``unreadable`` and the ``error``, so that one bad
        stream does not hide the others; a wrong key still fails the whole listing."""
        rows: list[dict[str, Any]] = []
        for pid in self.patient_ids():
            try:
                record = self.record(pid)
            except CipherKeyError:
                raise
            except StoreError as exc:
                rows.append(
                    {
                        "patient_id": pid,
                        "state": "unreadable",
                        "course_number": None,
                        "version": None,
                        "open_toxicities": None,
                        "last_occurred_at": None,
                        "error": exc.message,
                    }
                )
                continue
            rows.append(
                {
                    "patient_id": pid,
                    "state": record.state,
                    "course_number": record.course_number,
                    "version": record.version,
                    "open_toxicities": len(record.open_toxicities()),
                    "last_occurred_at": record.last_occurred_at,
                }
            )
        return rows

    def stream_id(self, patient_id: str) -> UUID:
        return stream_id(patient_id)
