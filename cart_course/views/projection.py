"""How one stored event changes the monitors' picture of a patient (pure; no I/O).

The views keep each patient's :class:`PatientRecord` and evolve it with the same pure functions
the aggregate uses (``protocol.record.evolve`` / ``apply_correction``), without the aggregate's
hash chain (the views do not need it). The board row, the toxicity rows and the deviation rows
are then derived from the record, so the views can never disagree with ``cart-course show``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..course import PatientCourse
from ..protocol.record import PatientRecord
from ..protocol.states import INFUSED, State
from ..protocol.versions import UnknownProtocolVersionError, get_version

#: Days after the response assessment by which the decision (continue, cease, discontinue) is due.
#: Assumption of the monitors (the trial text gives no window); documented in docs/monitoring.md.
DECISION_WITHIN_DAYS = 7

#: Board columns, in order (the table's columns and the JSON keys of ``status --json``).
BOARD_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "stream_id",
    "state",
    "course_number",
    "version",
    "protocol_version",
    "first_occurred_at",
    "last_occurred_at",
    "last_recorded_at",
    "next_action",
    "due_on",
    "hold",
    "planned_cells",
    "delivered_cells",
    "fractions_given",
    "last_infusion_on",
    "response",
    "open_toxicities",
    "max_open_grade",
    "severe_open",
    "deviations",
    "position",
)
TOXICITY_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "toxicity_id",
    "kind",
    "term",
    "grade",
    "worst_grade",
    "scale",
    "course_number",
    "onset",
    "resolved_at",
    "is_open",
    "severe",
    "opens_hold",
)
DEVIATION_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "seq",
    "version",
    "trigger",
    "course",
    "deviation",
    "reason",
    "occurred_at",
)


def apply_event(record: PatientRecord | None, event: Any) -> PatientRecord:
    """Evolve ``record`` (None before registration) by one stored event; returns the record."""
    if isinstance(event, PatientCourse.Registered):
        # The version is the stream's (1), so the record can be reloaded at the board's version.
        return PatientRecord(patient_id=event.patient_id, version=event.originator_version)
    if record is None:  # an event of a stream the view never saw registered: cannot happen
        raise ValueError(f"event {type(event).__name__} of unknown stream {event.originator_id}")
    if isinstance(
        event, PatientCourse.Moved | PatientCourse.FactCorrected | PatientCourse.MilestoneSigned
    ):
        event.evolve_record(record)  # as the aggregate's own apply does
    record.version = event.originator_version
    return record


def _add_days(day: str | None, days: int) -> str | None:
    if not day:
        return None
    return (dt.date.fromisoformat(day[:10]) + dt.timedelta(days=days)).isoformat()


def next_action(record: PatientRecord) -> tuple[str | None, str | None, bool]:
    """(next due action, its due date as ISO date or None, fractions on hold)."""
    try:
        params = get_version(record.protocol_version or "").params
    except UnknownProtocolVersionError:
        from ..protocol.parameters import DEFAULT_PARAMETERS as params
    state = record.state
    course = record.course
    hold = any(t.opens_hold for t in record.open_toxicities())
    if state == State.CANDIDATE:
        return "screen", None, False
    if state == State.SCREEN_FAILED:
        return "rescreen", None, False
    if state == State.SCREENED:
        return "record_apheresis", None, False
    if state == State.APHERESED:
        return "infuse_d1", None, False
    if state == State.CONTINUED:
        return f"infuse_d1 (course {record.course_number + 1})", None, False
    if state in INFUSED and course is not None:
        assessment_due = _add_days(course.started_on, params.response_assessment_day)
        if state == State.INFUSED_D3 or course.cancelled:
            return "assess_response", assessment_due, False
        if hold:
            return "resolve_toxicity (fractions held)", None, True
        day = len(course.fractions) + 1
        last = course.fractions[-1].given_on if course.fractions else course.started_on
        return f"infuse_d{day}", _add_days(last, params.fraction_interval_days), False
    if state == State.ASSESSED and course is not None:
        return (
            "decide: continue_treatment, cease or discontinue",
            _add_days(course.assessed_on, DECISION_WITHIN_DAYS),
            False,
        )
    if state in (State.CEASED, State.DISCONTINUED):
        return "follow_up", None, False
    return None, None, False


def last_response(record: PatientRecord) -> str | None:
    return next((c.response for c in reversed(record.courses) if c.response), None)


def board_row(
    record: PatientRecord, stream_id: str, recorded_at: str, position: int
) -> tuple[Any, ...]:
    course = record.course
    action, due_on, hold = next_action(record)
    open_tox = record.open_toxicities()
    last_infusion = None
    for c in record.courses:
        for f in c.fractions:
            if last_infusion is None or f.given_on > last_infusion:
                last_infusion = f.given_on
    return (
        record.patient_id,
        stream_id,
        record.state,
        record.course_number,
        record.version,
        record.protocol_version,
        record.first_occurred_at,
        record.last_occurred_at,
        recorded_at,
        action,
        due_on,
        int(hold),
        course.planned_total if course else None,
        course.delivered if course else None,
        len(course.fractions) if course else 0,
        last_infusion,
        last_response(record),
        len(open_tox),
        max((t.grade for t in open_tox), default=None),
        int(any(t.severe for t in open_tox)),
        len(record.deviations),
        position,
    )


def toxicity_rows(record: PatientRecord) -> list[tuple[Any, ...]]:
    return [
        (
            record.patient_id,
            t.id,
            t.kind,
            t.term,
            t.grade,
            t.worst_grade,
            f"{t.scale} {t.scale_version}",
            t.course_number,
            t.onset,
            t.resolved_at,
            int(t.open),
            int(t.severe),
            int(t.opens_hold and t.open),
        )
        for t in record.toxicities.values()
    ]


def deviation_rows(record: PatientRecord) -> list[tuple[Any, ...]]:
    return [
        (
            record.patient_id,
            seq,
            d.get("version"),
            d.get("trigger"),
            d.get("course"),
            d.get("deviation"),
            d.get("reason"),
            d.get("occurred_at"),
        )
        for seq, d in enumerate(record.deviations)
    ]


def cohort_keys(row: tuple[Any, ...] | None) -> list[tuple[str, str]]:
    """The cohort cells a board row counts in: by state, by response, by course number."""
    if row is None:
        return []
    state, course_number, response = row[2], row[3], row[16]
    return [
        ("state", str(state)),
        ("response", str(response) if response else "not assessed"),
        ("course", str(course_number)),
    ]


def cohort_keys_of(record: PatientRecord) -> list[tuple[str, str]]:
    """The same cells as :func:`cohort_keys`, straight from a record."""
    response = last_response(record)
    return [
        ("state", str(record.state)),
        ("response", response or "not assessed"),
        ("course", str(record.course_number)),
    ]
