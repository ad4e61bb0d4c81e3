"""Conformance replay: re-run each recorded move through the guards of a protocol version.

For every move of a history, the record is rebuilt up to that point (the record never guards), and
the move is dry-run from the state the record was actually in, with the facts the history implies
(the event's own facts, overridden by what the record itself says at that point: open
toxicities, course number, previous dates ...). Reported:

- ``sequence``: the event says it moved from X, but the record was in Y;
- ``facts``: a fact the event recorded differs from what the history says at that point;
- ``refused``: the guards refuse the move (each failed rule, by name);
- ``destination``: allowed, but to another state than the one recorded;
- ``correction``: a correction's facts would be refused, or would lead elsewhere;
- ``protocol``: the event names a protocol version that is not registered;
- ``window``: a follow-up visit outside its window (issue 16);
- ``late_report``: an SAE, SUSAR or follow-up safety report sent after its clock, with the delay.

Notes, not findings (nothing is wrong with the history): ``no product recorded`` for each
infusion that names no bag of a released lot (histories written before the product's chain of
identity, issue 15, or a course whose product is not tracked).

Toxicity reports can be re-graded under another scale (``regrade``): each recorded grade next to
the grade under that scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ..protocol.commands import context_facts
from ..protocol.errors import ProtocolInputError
from ..protocol.queries import UNRESOLVED, query_view
from ..protocol.record import PatientRecord
from ..protocol.states import Trigger
from ..protocol.toxicity import grade_toxicity, parse_toxicity_report
from ..protocol.versions import (
    ProtocolVersion,
    UnknownProtocolVersionError,
    get_version,
)
from .log import CORRECTED, MOVED, LoggedEvent, Replayer


@attrs.frozen(kw_only=True)
class Finding:
    patient_id: str
    version: int
    event: str
    move: str
    check: str
    protocol_version: str
    message: str
    rules: tuple[str, ...] = ()
    occurred_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "version": self.version,
            "event": self.event,
            "move": self.move,
            "check": self.check,
            "protocol_version": self.protocol_version,
            "rules": list(self.rules),
            "message": self.message,
            "occurred_at": self.occurred_at,
        }

    def __str__(self) -> str:
        rules = f" [{', '.join(self.rules)}]" if self.rules else ""
        return (
            f"{self.patient_id} v{self.version} {self.move} (protocol {self.protocol_version}): "
            f"{self.check}{rules}: {self.message}"
        )


@attrs.frozen(kw_only=True)
class Regrade:
    patient_id: str
    version: int
    toxicity_id: str
    kind: str
    recorded_grade: int
    recorded_scale: str
    scale: str
    grade: int | None
    note: str

    @property
    def changed(self) -> bool:
        return self.grade is not None and self.grade != self.recorded_grade

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "changed": self.changed}

    def __str__(self) -> str:
        under = f"grade {self.grade}" if self.grade is not None else "not gradable"
        flag = "  <- differs" if self.changed else ""
        return (
            f"{self.patient_id} v{self.version} {self.toxicity_id}: recorded grade "
            f"{self.recorded_grade} ({self.recorded_scale}); under {self.scale}: {under}"
            f"{flag}" + (f" ({self.note})" if self.note else "")
        )


@attrs.define(kw_only=True)
class Conformance:
    patients: int = 0
    moves: int = 0
    findings: list[Finding] = attrs.Factory(list)
    regrades: list[Regrade] = attrs.Factory(list)
    #: Infusions without a product recorded (not findings: see the module's docstring).
    notes: list[Finding] = attrs.Factory(list)
    #: Data queries not closed at the end of each history checked (issue 17): not findings
    #: about the protocol, but what the report must show open at its time.
    open_queries: list[dict[str, Any]] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "patients": self.patients,
            "moves_checked": self.moves,
            "findings": [f.to_json() for f in self.findings],
            "regrades": [r.to_json() for r in self.regrades],
            "notes": [n.to_json() for n in self.notes],
            "open_queries": list(self.open_queries),
        }


def _version(event: LoggedEvent, override: ProtocolVersion | None) -> ProtocolVersion | str:
    if override is not None:
        return override
    try:
        return get_version(str(event.get("protocol_version")))
    except UnknownProtocolVersionError as exc:
        return str(exc)


def check_history(
    patient_id: str,
    events: Iterable[LoggedEvent],
    *,
    protocol: ProtocolVersion | None = None,
    regrade: str | None = None,
    result: Conformance | None = None,
) -> Conformance:
    result = result if result is not None else Conformance()
    result.patients += 1
    replayer = Replayer(patient_id)
    moves: dict[int, LoggedEvent] = {}
    # safety reports are judged on the patient's whole record (a later correction of the report
    # or of the event's awareness moves its clock), each listed where it was recorded
    reports: list[tuple[int, LoggedEvent]] = []
    for e in events:
        if e.kind == MOVED:
            result.moves += 1
            _check_move(patient_id, e, replayer, protocol, result)
            moves[e.version] = e
        elif e.kind == CORRECTED:
            _check_correction(patient_id, e, moves.get(int(e.get("corrects"))), protocol, result)
        if regrade is not None and e.get("trigger") == Trigger.REPORT_TOXICITY:
            _regrade(patient_id, e, regrade, result)
        replayer.apply(e)
        if e.kind == MOVED:
            if e.get("trigger") == Trigger.RECORD_SAE_REPORT:
                reports.append((len(result.findings), e))
            else:
                _check_after_course(patient_id, e, replayer.record, protocol, result)
    for at, e in reversed(reports):
        found = Conformance()
        _check_after_course(patient_id, e, replayer.record, protocol, found)
        result.findings[at:at] = found.findings
    result.open_queries.extend(
        query_view(q, patient_id)
        for q in replayer.record.queries.values()
        if q["status"] in UNRESOLVED
    )
    return result


def _check_after_course(
    patient_id: str,
    e: LoggedEvent,
    record: PatientRecord,
    override: ProtocolVersion | None,
    result: Conformance,
) -> None:
    """After the course (issue 16): a follow-up visit outside its window (``window``), a safety
    report sent after its clock (``late_report``, with the delay). Both were recorded, never
    refused; the audit lists them."""
    trigger = e.get("trigger")
    if trigger not in (Trigger.RECORD_FOLLOW_UP, Trigger.RECORD_SAE_REPORT):
        return
    version = _version(e, override)
    label = version.id if isinstance(version, ProtocolVersion) else str(e.get("protocol_version"))
    outcome = e.get("outcome") or {}
    if trigger == Trigger.RECORD_FOLLOW_UP and outcome.get("in_window") is False:
        result.findings.append(
            _finding(
                patient_id,
                e,
                "window",
                label,
                f"visit {outcome.get('visit')} on {str(e.occurred_at)[:10]} is "
                f"{outcome.get('days_outside_window')} day(s) outside its window "
                f"{outcome.get('window_start')} to {outcome.get('window_end')}",
            )
        )
    if trigger == Trigger.RECORD_SAE_REPORT:
        case = record.sae_cases.get(str((e.get("facts") or {}).get("case_id")))
        for clock in case["clocks"] if case else ():
            if clock.get("report_version") == e.version and clock.get("late"):
                result.findings.append(
                    _finding(
                        patient_id,
                        e,
                        "late_report",
                        label,
                        f"{clock['report']} report of case {case['id'] if case else ''} sent at "
                        f"{clock['sent_at']}, due {clock['due_at']}: "
                        f"{clock['delay_hours']} h late",
                    )
                )


def _finding(
    patient_id: str,
    e: LoggedEvent,
    check: str,
    version: str,
    message: str,
    rules: Iterable[str] = (),
) -> Finding:
    return Finding(
        patient_id=patient_id,
        version=e.version,
        event=e.type,
        move=str(e.get("trigger")),
        check=check,
        protocol_version=version,
        message=message,
        rules=tuple(rules),
        occurred_at=e.occurred_at,
    )


def _toxicity_ids(value: Any) -> set[str] | None:
    if not isinstance(value, list):
        return None
    ids = {t.get("id") for t in value if isinstance(t, dict)}
    return None if None in ids or len(ids) != len(value) else {str(i) for i in ids}


def _same_fact(key: str, recorded: Any, derived: Any, record: PatientRecord) -> bool:
    """Whether a recorded fact says what the history at that point says. The toxicity lists are
    compared by the episodes they name: how an episode is summed up in them has changed between
    releases (the open episodes' worst grade rather than their current one; a course's list with
    the episodes still open from an earlier course), and the rules re-run on today's summary;
    a list naming another episode is a finding."""
    if recorded == derived:
        return True
    if key not in ("open_toxicities", "course_toxicities"):
        return False
    had, has = _toxicity_ids(recorded), _toxicity_ids(derived)
    if had is None or has is None:
        return False
    if key == "open_toxicities":
        return had == has
    carried = {i for i in has - had if (t := record.toxicities.get(i)) is not None and t.open}
    return had == has - carried


def _check_move(
    patient_id: str,
    e: LoggedEvent,
    replayer: Replayer,
    override: ProtocolVersion | None,
    result: Conformance,
) -> None:
    version = _version(e, override)
    record = replayer.record
    trigger = str(e.get("trigger"))
    label = version.id if isinstance(version, ProtocolVersion) else str(e.get("protocol_version"))
    if isinstance(version, str):
        result.findings.append(_finding(patient_id, e, "protocol", label, version))
        return
    state = record.state
    if e.get("from_state") != state:
        result.findings.append(
            _finding(
                patient_id,
                e,
                "sequence",
                label,
                f"recorded as a move from {e.get('from_state')}, but the record was in {state}",
            )
        )
    recorded: dict[str, Any] = dict(e.get("facts") or {})
    if trigger.startswith("infuse_d") and "bag_id" not in recorded:
        result.notes.append(
            _finding(
                patient_id,
                e,
                "no product recorded",
                label,
                "the infusion names no bag of a released lot (no product recorded)",
            )
        )
    try:
        context = context_facts(record, trigger)
    except Exception:  # a history so broken the context cannot be derived: use what was recorded
        context = {}
    for key, value in context.items():
        if key in recorded and not _same_fact(key, recorded[key], value, record):
            result.findings.append(
                _finding(
                    patient_id,
                    e,
                    "facts",
                    label,
                    f"the event recorded {key}={_short(recorded[key])}, but the history at "
                    f"that point says {_short(value)}",
                )
            )
    facts = {**recorded, **context}
    try:
        run = version.dry_run(state, trigger, facts)
    except (KeyError, TypeError, ValueError, ProtocolInputError) as exc:
        result.findings.append(
            _finding(patient_id, e, "refused", label, f"the guards cannot evaluate it: {exc}")
        )
        return
    if not run.allowed:
        result.findings.append(
            _finding(
                patient_id,
                e,
                "refused",
                label,
                "; ".join(f.message for f in run.failed),
                rules=[f.rule for f in run.failed],
            )
        )
    elif run.dest != e.get("to_state"):
        result.findings.append(
            _finding(
                patient_id,
                e,
                "destination",
                label,
                f"the protocol leads to {run.dest}, but {e.get('to_state')} was recorded",
            )
        )


def _check_correction(
    patient_id: str,
    e: LoggedEvent,
    original: LoggedEvent | None,
    override: ProtocolVersion | None,
    result: Conformance,
) -> None:
    version = _version(e, override)
    label = version.id if isinstance(version, ProtocolVersion) else str(e.get("protocol_version"))
    if original is None:
        result.findings.append(
            _finding(
                patient_id,
                e,
                "correction",
                label,
                f"corrects v{e.get('corrects')}, which is not a recorded move",
            )
        )
        return
    if isinstance(version, str):
        result.findings.append(_finding(patient_id, e, "protocol", label, version))
        return
    try:
        run = version.dry_run(
            str(original.get("from_state")), str(e.get("trigger")), e.get("facts") or {}
        )
    except (KeyError, TypeError, ValueError, ProtocolInputError) as exc:
        result.findings.append(
            _finding(patient_id, e, "correction", label, f"cannot be evaluated: {exc}")
        )
        return
    corrects = e.get("corrects")
    outcome = e.get("outcome") or {}
    # what the correction did to the other fractions of the course: a corrected D1 weight
    # re-planned them, a corrected date moved the day the next one is counted from. Each one now
    # off its plan or schedule without a deviation reason is a finding, as its dry run would say
    rejudged: list[tuple[dict[str, Any], str]] = [
        (
            entry,
            f"re-plans D{entry.get('day')} (v{entry.get('version')}), now off its plan: "
            + "; ".join(str(d) for d in entry.get("deviations") or ()),
        )
        for entry in outcome.get("replanned") or []
        if isinstance(entry, dict) and entry.get("deviations")
    ] + [
        (
            entry,
            f"moves the date D{entry.get('day')} (v{entry.get('version')}) is counted from: "
            f"{entry['schedule_problem']}",
        )
        for entry in outcome.get("rescheduled") or []
        if isinstance(entry, dict) and entry.get("schedule_problem")
    ]
    for entry, what in rejudged:
        if not entry.get("deviation_reason"):
            result.findings.append(
                _finding(
                    patient_id,
                    e,
                    "correction",
                    label,
                    f"v{corrects}'s correction {what}; no deviation reason is recorded for it",
                )
            )
    if not run.allowed:
        result.findings.append(
            _finding(
                patient_id,
                e,
                "correction",
                label,
                f"with the corrected facts, v{corrects} would be refused: "
                + "; ".join(f.message for f in run.failed),
                rules=[f.rule for f in run.failed],
            )
        )
    elif run.dest != original.get("to_state"):
        result.findings.append(
            _finding(
                patient_id,
                e,
                "correction",
                label,
                f"with the corrected facts, v{corrects} would lead to {run.dest}, not "
                f"{original.get('to_state')} as recorded",
            )
        )


def _regrade(patient_id: str, e: LoggedEvent, scale: str, result: Conformance) -> None:
    facts = e.get("facts") or {}
    outcome = e.get("outcome") or {}
    grade: int | None = None
    note = ""
    try:
        graded = grade_toxicity(parse_toxicity_report(facts["toxicity"]), scale=scale)
        grade = graded.grade
    except ProtocolInputError as exc:
        note = exc.message
    except (KeyError, TypeError, ValueError) as exc:
        note = f"cannot be re-graded: {exc}"
    result.regrades.append(
        Regrade(
            patient_id=patient_id,
            version=e.version,
            toxicity_id=str(facts.get("toxicity_id") or outcome.get("toxicity_id")),
            kind=str(outcome.get("kind")),
            recorded_grade=int(outcome.get("grade", 0)),
            recorded_scale=f"{outcome.get('scale')} {outcome.get('scale_version')}",
            scale=scale,
            grade=grade,
            note=note,
        )
    )


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
