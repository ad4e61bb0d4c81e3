"""The application service: load the course, let the protocol decide, record, save.

One method, ``execute``, takes any command of the contract; ``execute_batch`` takes many and
saves them in one transaction. Queries answer for one patient (state, doses, toxicities, moves
allowed now, history). Storage errors become domain errors here.
"""

from __future__ import annotations

import datetime as dt
import re
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
    OperationalError,
)

from .contract import Command, parse_clinical_time, validated
from .course import (
    EPISODE_COMMANDS,
    MOVE_EVENTS,
    QUERY_EVENTS,
    PatientCourse,
    event_hash,
    stream_id,
)
from .errors import (
    CartCourseError,
    CipherKeyError,
    ForbiddenError,
    IdempotencyConflictError,
    IdempotencyKeyOfAnotherActorError,
    InvalidCommandError,
    MoveRefused,
    PatientNotFoundError,
    RecordConflictError,
    SameCommandOfAnotherActorError,
    StoreError,
    VersionConflictError,
)
from .eventlog import VERIFY_HINT, EventLog, store_errors
from .protocol import queries as query_protocol
from .protocol.commands import MoveRefusedError, allowed_now, prepare
from .protocol.corrections import (
    History,
    RecordedCorrection,
    RecordedMove,
    decide_correction,
)
from .protocol.errors import ProtocolInputError, RecordConflictInputError
from .protocol.follow_up import due_after_course
from .protocol.query_rules import READ_TRIGGERS, RULES, Entry, QueryRule, findings, reconcile
from .protocol.record import PatientRecord
from .protocol.registry import REGISTRY
from .protocol.signatures import (
    MILESTONES,
    SIGNATURE_MEANINGS,
    SIGNING_ROLES,
    SignerNotPermittedError,
    decide_signature,
)
from .protocol.sites import SITE_ID_PATTERN
from .protocol.versions import CURRENT, ProtocolVersion, UnknownProtocolVersionError, get_version
from .sites import UnknownSiteError
from .storage import CourseApplication

#: Moves whose facts may be corrected (from the command registry), and the milestones that may be
#: be signed, what a signature means and who signs (``protocol/signatures.py``).
CORRECTABLE = REGISTRY.correctable
__all__ = [
    "CORRECTABLE",
    "MILESTONES",
    "SIGNATURE_MEANINGS",
    "SIGNING_ROLES",
    "CommandResult",
    "CourseService",
    "store_errors",
    "stream_id",
]
MAX_RETRIES = 20
_SITE_ID = re.compile(SITE_ID_PATTERN, re.ASCII)
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
    """The contract's rejection of a payload: every invalid field, the first as the headline."""

    def at(field: str) -> str:
        return (
            field
            if field.startswith(("payload", "command", "reason", "occurred_at"))
            else f"payload.{field}"
        )

    error = (
        RecordConflictError if isinstance(exc, RecordConflictInputError) else InvalidCommandError
    )
    return error(at(exc.field), exc.message, others=[(at(p.field), p.message) for p in exc.others])


#: The fields of a recorded move and of a correction the correction decision reads (besides the
#: version), as the events name them.
_MOVE_FIELDS = tuple(f.name for f in attrs.fields(RecordedMove) if f.name != "version")
_CORRECTION_FIELDS = tuple(f.name for f in attrs.fields(RecordedCorrection) if f.name != "version")


def _history(events: Sequence[Any]) -> History:
    """The patient's recorded moves and corrections as plain data (for the protocol's pure
    correction decision)."""
    history: list[RecordedMove | RecordedCorrection] = []
    for e in events:
        if isinstance(e, PatientCourse.Moved):
            fields = {name: getattr(e, name) for name in _MOVE_FIELDS}
            history.append(RecordedMove(version=e.originator_version, **fields))
        elif isinstance(e, PatientCourse.FactCorrected):
            fields = {name: getattr(e, name) for name in _CORRECTION_FIELDS}
            history.append(RecordedCorrection(version=e.originator_version, **fields))
    return history


def rule_entries(events: Sequence[Any]) -> list[Entry]:
    """The patient's recorded moves as the query rules read them: each move's payload, facts
    and outcome as last corrected."""
    entries: dict[int, Entry] = {}
    for e in events:
        if isinstance(e, PatientCourse.Moved):
            entries[e.originator_version] = Entry(
                version=e.originator_version,
                trigger=e.trigger,
                payload=e.payload,
                facts=e.facts,
                outcome=e.outcome,
            )
        elif isinstance(e, PatientCourse.FactCorrected) and e.corrects in entries:
            entries[e.corrects] = Entry(
                version=e.corrects,
                trigger=e.trigger,
                payload=e.payload,
                facts=e.facts,
                outcome=e.outcome,
            )
    return list(entries.values())


def _check_clinical_order(course: PatientCourse, command: Command) -> None:
    """Moves are recorded in the order they happened: a move's clinical time may not be before
    the patient's last move (screening, apheresis, infusions, assessment, decisions). A toxicity
    report or resolution may be (its onset or resolution can precede the last move), but not
    before the patient's first recorded event. Late entry is fine: the record time says when."""
    occurred = command.occurred_at
    if command.command in EPISODE_COMMANDS:
        first = course.record.first_occurred_at
        if first is not None and occurred < dt.datetime.fromisoformat(first):
            raise RecordConflictError(
                "occurred_at",
                f"{command.occurred_iso} is before this patient's first recorded event "
                f"({first}); a toxicity's clinical time is when it began or resolved",
            )
        return
    last = getattr(course, "moved_at", None)  # None: a course restored from an older snapshot
    if last is not None and occurred < dt.datetime.fromisoformat(last[0]):
        raise RecordConflictError(
            "occurred_at",
            f"{command.occurred_iso} is before this patient's last move ({last[1]} at {last[0]}, "
            f"version {last[2]}); moves are recorded in the order they happened (if that time "
            f"is wrong, correct version {last[2]})",
        )


class PatientIdTakenError(CartCourseError):
    """A site-limited token screening a patient id that another site's patient has."""

    code = "patient_id_taken"
    title = "Patient id taken"

    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id
        super().__init__(
            f"patient id {patient_id!r} is already on record in this trial; patient ids are "
            "unique across the trial's sites: choose another id (e.g. prefixed with your site)"
        )


def _in_scope(
    course: PatientCourse | None, command: Command, sites: frozenset[str] | None
) -> tuple[PatientCourse | None, bool]:
    """``course`` when the caller may see it; None (as if not on record) when it is another
    site's patient, with True: then the command is decided as for a new patient and, if it
    would be recorded (only a screening can be), refused with :class:`PatientIdTakenError`,
    which says nothing of the patient but that the id is used. A command refused for a new
    patient (a role that may not screen, a bad payload, another site...) is refused the same
    way for another site's patient: the id's existence is told only when it cannot be hidden."""
    if sites is None or course is None or course.record.site in sites:
        return course, False
    return None, True


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
        self,
        app: CourseApplication,
        protocol: ProtocolVersion = CURRENT,
        cache_size: int = 20_000,
        query_rules: Sequence[QueryRule] = RULES,
    ) -> None:
        self.app = app
        #: The query rules run after each command that records or corrects a move they read
        #: (``protocol/query_rules.py``; all of them by default; none: only ``run_query_rules``
        #: runs them).
        self.query_rules: tuple[QueryRule, ...] = tuple(query_rules)
        #: The store's log, read-only: what every reader other than this service uses.
        self.log = EventLog(app)
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
        #: The trial's sites (``cart_course.sites``: a ``SiteStore`` or ``LazySites``), which
        #: ``screen`` and ``transfer_site`` are checked against; None (a service built without
        #: them, e.g. in tests of the protocol): any well-formed site is taken.
        self.sites: Any = None

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        close_sites = getattr(self.sites, "close", None)
        if close_sites is not None:
            close_sites()
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
        if self.app.stream_ids.key_problem is not None:
            # the key is not the store's (``cart_course.streamids``): under it the patient's
            # stream id finds nobody. A screening goes on to the write, which is refused.
            if probably_new:
                return None
            raise self._key_error(patient_id)
        sid = self.stream_id(patient_id)
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
            self._cache.pop(self.stream_id(patient_id), None)

    def record(self, patient_id: str) -> PatientRecord:
        course = self._load(patient_id)
        if course is None:
            raise PatientNotFoundError(patient_id)
        return course.record

    # ------------------------------------------------------------------------------------------
    # Commands
    # ------------------------------------------------------------------------------------------

    def execute(self, command: Command, *, sites: frozenset[str] | None = None) -> CommandResult:
        """Record one command, or raise a :class:`CartCourseError` that says why not.

        ``sites``: the sites the caller's token is limited to (issue 17; None: trial-wide). A
        patient of another site is answered exactly as a patient not on record."""
        command = validated(command)
        with self._lock:
            return self._execute(command, sites)

    def execute_batch(
        self, commands: Sequence[Command], *, sites: frozenset[str] | None = None
    ) -> list[CommandResult | CartCourseError]:
        """Record many commands in one transaction; each gets its own result or error
        (``sites``: as for :meth:`execute`, another site's patient is not on record)."""
        checked: list[Command] = []
        refused: dict[int, CartCourseError] = {}
        for i, command in enumerate(commands):
            try:
                checked.append(validated(command))
            except CartCourseError as exc:
                refused[i] = exc
        with self._lock:
            results = self._execute_batch(checked, sites) if checked else []
        if not refused:
            return results
        done = iter(results)
        return [refused[i] if i in refused else next(done) for i in range(len(commands))]

    def _execute(self, command: Command, sites: frozenset[str] | None = None) -> CommandResult:
        started = time.monotonic()
        for attempt in range(MAX_RETRIES + LOCKED_RETRIES):
            loaded = self._load(command.patient_id, probably_new=command.command == "screen")
            loaded, hidden = _in_scope(loaded, command, sites)
            result, course = self._apply(loaded, command, with_allowed=True, sites=sites)
            if hidden:  # decided as for a new patient, never saved: the id is another's
                raise PatientIdTakenError(command.patient_id)
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

    def _execute_batch(
        self, commands: Sequence[Command], sites: frozenset[str] | None = None
    ) -> list[CommandResult | CartCourseError]:
        self._batch_reads = {}
        self._batch_span = Counter(c.patient_id for c in commands)
        try:
            return self._decide_and_save_batch(commands, sites)
        finally:
            self._batch_reads = None
            self._batch_span = Counter()

    def _decide_and_save_batch(
        self, commands: Sequence[Command], sites: frozenset[str] | None = None
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
                try:
                    course, hidden = _in_scope(loaded[command.patient_id], command, sites)
                    result, changed = self._apply(course, command, sites=sites)
                    if hidden:  # decided as for a new patient, never saved: the id is another's
                        raise PatientIdTakenError(command.patient_id)
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
            if c.command == "screen" and self.stream_id(c.patient_id) not in self._cache
        }
        if not screened:
            return screened
        with store_errors("the store"):
            existing = self.app.existing_streams([self.stream_id(p) for p in screened])
        return {p for p in screened if self.stream_id(p) not in existing}

    def _apply(
        self,
        course: PatientCourse | None,
        command: Command,
        *,
        with_allowed: bool = False,
        sites: frozenset[str] | None = None,
    ) -> tuple[CommandResult, PatientCourse | None]:
        """Decide and trigger the event on ``course`` (not saved). Duplicates return course None.

        ``with_allowed``: a recorded move's result names the moves allowed after it."""
        key = command.key
        definition = REGISTRY.commands[command.command]
        if command.actor.role not in definition.roles:
            raise ForbiddenError(
                f"a {command.actor.role} may not record {command.command}; it is recorded by: "
                + ", ".join(definition.roles)
            )
        if course is not None:
            seen = course.idempotency.get(key)
            if seen is not None:
                digest, version = seen
                if digest != command.digest:
                    raise IdempotencyConflictError(key, version)
                if getattr(self._event_at(course, version), "actor", None) != command.actor.id:
                    if command.idempotency_key is None:  # no key: a conflict with the record
                        raise SameCommandOfAnotherActorError(key, version)
                    raise IdempotencyKeyOfAnotherActorError(key, version)
                return self._result_of(course, version, "duplicate"), None
        version_now = course.version if course is not None else 0
        if command.expected_version is not None and command.expected_version != version_now:
            raise VersionConflictError(command.patient_id, command.expected_version, version_now)
        if course is None:
            if command.command not in ("screen",):
                raise PatientNotFoundError(command.patient_id)
            course = PatientCourse.register(
                command.patient_id,
                command.actor.id,
                command.actor.role,
                id=self.stream_id(command.patient_id),
            )
        kind = definition.kind
        if kind != "move":
            decide = {"correction": self._correct, "signature": self._sign}.get(kind, self._query)
            try:
                done = decide(course, command)
            except ProtocolInputError as exc:
                raise _input_error(exc) from None
            if with_allowed:
                done = attrs.evolve(
                    done, allowed_moves=tuple(allowed_now(course.record, self.protocol))
                )
            return done, course
        record = course.record
        if command.command == "transfer_site" or (
            command.command == "screen" and record.version <= 1
        ):
            self._check_site(command, sites)
        try:
            prepared = prepare(
                record,
                command.command,
                command.payload,
                command.occurred_at,
                command.reason,
                self.protocol,
                actor=command.actor.id,
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
        version = course.version
        outcome = self._rules_after(
            course,
            command.occurred_iso,
            prepared.outcome,
            version=version,
            trigger=prepared.trigger,
            payload=prepared.payload,
            facts=prepared.facts,
        )
        return (
            CommandResult(
                status="recorded",
                patient_id=command.patient_id,
                version=version,
                event=event_class.__name__,
                command=prepared.command,
                trigger=prepared.trigger,
                from_state=prepared.from_state,
                to_state=prepared.to_state,
                deviations=tuple(prepared.outcome.get("deviations", ())),
                outcome=outcome,
                allowed_moves=tuple(allowed_now(course.record, self.protocol))
                if with_allowed
                else (),
                idempotency_key=key,
            ),
            course,
        )

    def _check_site(self, command: Command, sites: frozenset[str] | None) -> None:
        """The site a screening or transfer names: a known active site of the trial (when the
        service has the trial's sites), and one of the caller's sites (a site-limited token)."""
        payload = command.payload if isinstance(command.payload, Mapping) else {}
        site = payload.get("site")
        if self.sites is not None:
            if command.command == "transfer_site" and site is None:
                return  # the payload's parser names the missing site
            if not (site is None or _SITE_ID.fullmatch(str(site))) or not isinstance(
                site, str | None
            ):
                return  # the payload's parser says what is wrong with it
        if sites is not None:
            # a site-limited token: its own sites first, and errors that name only those (the
            # trial's other sites are none of its business)
            mine = ", ".join(sorted(sites))
            if site is None and self.sites is not None:
                raise UnknownSiteError(
                    "payload.site", f"is required: give one of this token's sites: {mine}"
                )
            if site not in sites:
                what = "screen patients" if command.command == "screen" else "transfer patients"
                raise ForbiddenError(
                    f"this token is limited to site(s) {mine}: it may {what} only there "
                    f"(payload.site {site!r}); a trial-wide user records it"
                )
            if self.sites is not None:
                try:
                    self.sites.check_active(site)
                except UnknownSiteError:
                    raise UnknownSiteError(
                        "payload.site",
                        f"site {site!r} is deactivated and takes no new patients; this token's "
                        f"sites: {mine}",
                    ) from None
            return
        if self.sites is not None:
            self.sites.check_active(site)

    # -- corrections ---------------------------------------------------------------------------

    def _key_error(self, patient_id: str) -> CipherKeyError:
        return CipherKeyError(
            f"cannot read patient {patient_id}: the stored events do not decrypt with this key. "
            "CART_COURSE_CIPHER_KEY (and CART_COURSE_COMPRESS) must be the ones the store was "
            f"written with ({self.app.stream_ids.key_problem})"
        )

    def _stored_events(self, patient_id: str, lte: int | None = None) -> list[Any]:
        if self.app.stream_ids.key_problem is not None:
            raise self._key_error(patient_id)
        with store_errors(f"patient {patient_id}"):
            return list(self.app.events.get(self.stream_id(patient_id), lte=lte))

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
        """Load the history, let the protocol decide the correction, record it."""
        correction = decide_correction(
            course.record,
            _history(self._events_of(course)),
            command.payload,
            command.reason,
            course.version,
            parse_clinical_time,
        )
        course.record_event(
            PatientCourse.FactCorrected,
            corrects=correction.corrects,
            trigger=correction.trigger,
            changes=correction.changes,
            payload=correction.payload,
            facts=correction.facts,
            outcome=correction.outcome,
            findings=correction.findings,
            protocol_version=correction.protocol_version,
            actor=command.actor.id,
            role=command.actor.role,
            reason=command.reason,
            occurred_at=command.occurred_iso,
            idempotency_key=command.key,
            digest=command.digest,
        )
        version = course.version
        outcome = self._rules_after(
            course,
            command.occurred_iso,
            correction.result_outcome(),
            version=correction.corrects,
            trigger=correction.trigger,
            payload=correction.payload,
            facts=correction.facts,
            move_outcome=correction.outcome,
        )
        return CommandResult(
            status="recorded",
            patient_id=command.patient_id,
            version=version,
            event="FactCorrected",
            command="correct",
            trigger=None,
            from_state=course.record.state,
            to_state=course.record.state,
            deviations=tuple(correction.findings),
            outcome=outcome,
            idempotency_key=command.key,
        )

    # -- data queries (issue 17) -----------------------------------------------------------------

    def _addressable(
        self, course: PatientCourse, version: int
    ) -> tuple[str, dict[str, Any]] | None:
        """What version ``version`` of the course recorded, as a query may point into it: its
        event type and its fields (a move's ``payload``, a correction's ``changes``, ...)."""
        if not 1 <= version <= course.version:
            return None
        event = self._event_at(course, version)
        name = type(event).__name__
        common = {"occurred_at": getattr(event, "occurred_at", None)}
        reason = getattr(event, "reason", None)
        if isinstance(event, PatientCourse.Moved):
            fields: dict[str, Any] = {"payload": event.payload, **common}
        elif isinstance(event, PatientCourse.FactCorrected):
            fields = {"corrects": event.corrects, "changes": event.changes, **common}
        elif isinstance(event, PatientCourse.MilestoneSigned):
            fields = {"milestone": event.milestone, "meaning": event.meaning, **common}
        elif isinstance(event, PatientCourse.QueryEvent):
            fields = {"text": event.text, **common}
        else:
            fields = {"patient_id": getattr(event, "patient_id", None)}
        if reason:
            fields["reason"] = reason
        return name, fields

    def _query(self, course: PatientCourse, command: Command) -> CommandResult:
        """Let the protocol decide a step of a data query, record it (the state stays)."""
        record = course.record
        payload = command.payload

        def lookup(version: int) -> tuple[str, Mapping[str, Any]] | None:
            return self._addressable(course, version)

        if command.command == "open_query":
            change = query_protocol.decide_open(record, payload, course.version, lookup)
        elif command.command == "answer_query":
            change = query_protocol.decide_answer(record, payload, course.version, lookup)
        elif command.command == "close_query":
            change = query_protocol.decide_close(record, payload, command.reason)
        else:
            change = query_protocol.decide_reopen(record, payload)
        event_class = QUERY_EVENTS[change.action]
        course.record_event(
            event_class,
            **change.fields(),
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
            event=event_class.__name__,
            command=command.command,
            trigger=None,
            from_state=record.state,
            to_state=record.state,
            outcome=change.outcome(),
            idempotency_key=command.key,
        )

    def _rules_after(
        self,
        course: PatientCourse,
        occurred_at: str,
        outcome: dict[str, Any],
        *,
        version: int,
        trigger: str,
        payload: Any,
        facts: Any,
        move_outcome: Any = None,
    ) -> dict[str, Any]:
        """``outcome`` with the queries the rules opened or closed on the move just recorded or
        corrected (its ``version``, as it stands now; ``move_outcome``: the move's own outcome
        when ``outcome`` is a correction's), recorded on ``course``."""
        if not self.query_rules or trigger not in READ_TRIGGERS:
            return outcome
        entry = Entry(
            version=version,
            trigger=trigger,
            payload=payload,
            facts=facts,
            outcome=outcome if move_outcome is None else move_outcome,
        )
        changed = self._apply_rules(course, [entry], occurred_at)
        return {**outcome, "queries": changed} if changed else outcome

    def _apply_rules(
        self,
        course: PatientCourse,
        entries: Sequence[Entry],
        occurred_at: str,
        rules: Sequence[QueryRule] | None = None,
    ) -> list[dict[str, Any]]:
        """Run the query rules on ``entries`` (recorded moves as they stand now) and record the
        system queries they open and close on ``course`` (not saved). Returns what changed."""
        plan = reconcile(
            findings(entries, self.query_rules if rules is None else rules),
            course.record.queries,
            [e.version for e in entries],
        )
        changed: list[dict[str, Any]] = []
        common: dict[str, Any] = {
            "actor": query_protocol.RULES_ACTOR,
            "role": query_protocol.RULES_ROLE,
            "occurred_at": occurred_at,
            "idempotency_key": None,
            "digest": None,
            "correction": None,
        }
        for f in plan.open:
            qid = query_protocol.query_id_of(course.version + 1)
            course.record_event(
                PatientCourse.QueryOpened,
                command="open_query",
                action="open",
                query_id=qid,
                status="open",
                text=f.text,
                on_version=f.version,
                field=f.field,
                rule=f.rule,
                reason=None,
                **common,
            )
            changed.append(
                {
                    "query_id": qid,
                    "status": "open",
                    "rule": f.rule,
                    "on_version": f.version,
                    "field": f.field,
                    "version": course.version,
                }
            )
        for qid in plan.close:
            query = course.record.queries[qid]
            course.record_event(
                PatientCourse.QueryClosed,
                command="close_query",
                action="close",
                query_id=qid,
                status="closed",
                text=None,
                on_version=query.get("on_version"),
                field=query.get("field"),
                rule=query.get("rule"),
                reason=f"the data no longer match the rule {query.get('rule')} (checked again "
                f"after version {course.version - len(changed)})",
                **common,
            )
            changed.append(
                {
                    "query_id": qid,
                    "status": "closed",
                    "rule": query.get("rule"),
                    "on_version": query.get("on_version"),
                    "field": query.get("field"),
                    "version": course.version,
                }
            )
        return changed

    def run_query_rules(
        self, patient_id: str, rules: Sequence[QueryRule] | None = None
    ) -> list[dict[str, Any]]:
        """Run the query rules over the patient's whole record (every recorded move as it
        stands after its corrections) and record the system queries they open and close.
        Running them again on the same data records nothing. Returns what changed."""
        chosen = tuple(rules) if rules is not None else (self.query_rules or RULES)
        with self._lock:
            for _attempt in range(MAX_RETRIES):
                course = self._load(patient_id)
                if course is None:
                    raise PatientNotFoundError(patient_id)
                entries = rule_entries(self._events_of(course))
                now = dt.datetime.now(dt.UTC).isoformat()
                changed = self._apply_rules(course, entries, now, chosen)
                if not course.pending_events:
                    return changed
                try:
                    self._save(course)
                except (IntegrityError, StoreBusy):
                    self._evict(patient_id)
                    time.sleep(0.005)
                    continue
                return changed
        raise CartCourseError(f"patient {patient_id}: too many concurrent writers, try again")

    def queries(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's data queries, oldest first, each with its steps."""
        record = self.record(patient_id)
        return [query_protocol.query_view(q, patient_id) for q in record.queries.values()]

    # -- signatures ----------------------------------------------------------------------------

    def _signed(self, course: PatientCourse, version: int) -> tuple[str, str] | None:
        """What version ``version`` of the course recorded: (its move, its event's hash), or None
        when it is no move. The course remembers the moves a signature may sign; any other (or a
        course restored from an older snapshot) is read from the store."""
        known = getattr(course, "signable", None)
        entry = known.get(str(version)) if known is not None else None
        if entry is not None:
            return entry[0], entry[1]
        events = self._events_of(course, lte=version)
        signed = events[-1] if events else None
        if not isinstance(signed, PatientCourse.Moved):
            return None
        return signed.trigger, event_hash(signed)

    def _sign(self, course: PatientCourse, command: Command) -> CommandResult:
        """Let the protocol decide the signature, record it."""
        try:
            signature = decide_signature(
                command.payload,
                command.actor.role,
                course.version,
                lambda version: self._signed(course, version),
                command.actor.name,
                actor=command.actor.id,
            )
        except SignerNotPermittedError as exc:
            raise ForbiddenError(str(exc)) from None
        fields: dict[str, Any] = dict(
            milestone=signature.milestone,
            signs_version=signature.signs_version,
            signed_hash=signature.signed_hash,
            meaning=signature.meaning,
            printed_name=signature.printed_name,
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
            outcome=signature.outcome(),
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
        if isinstance(event, PatientCourse.QueryEvent):
            return CommandResult(
                command=event.command,
                trigger=None,
                from_state=state,
                to_state=state,
                outcome=query_protocol.QueryChange(
                    command=event.command,
                    action=event.action,  # type: ignore[arg-type]
                    query_id=event.query_id,
                    status=event.status,  # type: ignore[arg-type]
                    on_version=event.on_version,
                    field=event.field,
                    correction=event.correction,
                    rule=event.rule,
                ).outcome(),
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

    def site_of(self, patient_id: str) -> str:
        """The patient's site now (``PatientNotFoundError`` when not on record): the read side's
        way to group a patient by site (issue 17)."""
        return self.record(patient_id).site

    def summary(self, patient_id: str) -> dict[str, Any]:
        record = self.record(patient_id)
        data = record.summary()
        data["allowed_moves"] = allowed_now(record, self.protocol)
        # after the course (issue 16): the next follow-up visit and the SAE report due first
        try:
            params = get_version(record.protocol_version or "").params
        except UnknownProtocolVersionError:
            params = self.protocol.params
        data.update(due_after_course(record, params))
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
                        "site": None,
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
                    "site": record.site,
                    "state": record.state,
                    "course_number": record.course_number,
                    "version": record.version,
                    "open_toxicities": len(record.open_toxicities()),
                    "last_occurred_at": record.last_occurred_at,
                }
            )
        return rows

    def stream_id(self, patient_id: str) -> UUID:
        """The patient's stream id under the store's scheme (``cart_course.streamids``: keyed on
        an encrypted store, uuid5 otherwise; cached)."""
        return self.app.stream_ids.stream_id(patient_id)
