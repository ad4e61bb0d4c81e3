"""How one stored event changes the monitors' picture of a patient (pure; no I/O).

The views keep each patient's :class:`PatientRecord` and evolve it with the same pure functions
the aggregate uses (``protocol.record.evolve`` / ``apply_correction``), without the aggregate's
hash chain (the views do not need it). The board row, the toxicity rows and the deviation rows
are then derived from the record, so the views can never disagree with ``cart-course show``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from ..course import PatientCourse
from ..protocol import product
from ..protocol.follow_up import next_visit, pending_sae_clock
from ..protocol.parameters import DEFAULT_PARAMETERS, ProtocolParameters
from ..protocol.record import PatientRecord, opened_clinical
from ..protocol.registry import REGISTRY
from ..protocol.states import FOLLOW_UP, INFUSED, State
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
    "overdue_from",
    # the cell product (issue 15): its status, when its collection was made, vein-to-vein
    "product_status",
    "product_collected_on",
    "vein_to_vein_days",
    "manufacturing_failures",
    # after the course (issue 16): the kind of the next action (indexed with ``overdue_from``:
    # ``status --overdue --follow-up-due`` / ``--sae`` read an index range), the next follow-up
    # visit and its window (whether or not an SAE report is due first), the SAE report due
    # first, and the worst grade of the patient's adverse events
    "next_kind",
    "next_visit",
    "visit_window_start",
    "visit_window_end",
    "sae_case_id",
    "sae_report",
    "sae_due_at",
    "max_ae_grade",
    "open_ae_grade",
    # a multi-site trial (issue 17): the patient's site now (indexed: the board by site)
    "site",
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
    # when the episode ended (``resolved_at``) as a UTC instant, naive ISO with microseconds
    # (one width: compared as text); the watchlist by grade keeps episodes ended recently
    "resolved_utc",
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


#: The data queries' view (issue 17): one row per query of a patient.
QUERY_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "query_id",
    "status",
    "on_version",
    "field",
    "rule",
    "text",
    "opened_by",
    "opened_at",
    "updated_at",
    "answer",
    "opened_occurred_at",
    "opened_utc",
)


def query_rows(record: PatientRecord) -> list[tuple[Any, ...]]:
    """``opened_at`` is the record time; ``opened_occurred_at`` the clinical time (as entered,
    with its offset), and ``opened_utc`` that instant in UTC (one fixed width, so that it
    compares as text): a query's age counts from it."""
    return [
        (
            record.patient_id,
            q["id"],
            q["status"],
            q.get("on_version"),
            q.get("field"),
            q.get("rule"),
            q.get("text"),
            q.get("opened_by"),
            q["opened_at"],
            q.get("updated_at"),
            q.get("answer"),
            opened_clinical(q),
            _utc(opened_clinical(q)),
        )
        for q in record.queries.values()
    ]


class UnregisteredStreamError(ValueError):
    """An event of a stream whose registration (version 1) the views never read: the row was
    deleted or damaged. The runner skips the stream and reports it (never the whole board)."""


def apply_event(record: PatientRecord | None, event: Any) -> PatientRecord:
    """Evolve ``record`` (None before registration) by one stored event; returns the record."""
    if isinstance(event, PatientCourse.Registered):
        # The version is the stream's (1), so the record can be reloaded at the board's version.
        return PatientRecord(patient_id=event.patient_id, version=event.originator_version)
    if record is None:  # the stream's registration is missing from the log, or unreadable
        raise UnregisteredStreamError(
            f"{type(event).__name__} (v{event.originator_version}) of a stream whose "
            "registration (v1) is not in the log or does not read"
        )
    if isinstance(
        event,
        PatientCourse.Moved
        | PatientCourse.FactCorrected
        | PatientCourse.MilestoneSigned
        | PatientCourse.QueryEvent,
    ):
        event.evolve_record(record)  # as the aggregate's own apply does
    record.version = event.originator_version
    return record


def _add_days(day: str | None, days: int) -> str | None:
    if not day:
        return None
    try:
        return (dt.date.fromisoformat(day[:10]) + dt.timedelta(days=days)).isoformat()
    except OverflowError:  # past the year 9999: no due date a calendar can hold
        return None


def overdue_from(due_on: str | None, counted_from: str | None) -> str | None:
    """The instant (UTC, naive ISO with microseconds: one fixed width, so that it compares as
    text) at which a row due on ``due_on`` becomes overdue: the end of the due day in the UTC
    offset of ``counted_from``, the clinical time whose local date the due date was counted from
    (the protocol's schedule rule compares the local dates of the clinical times as entered).
    No offset known: UTC."""
    if due_on is None:
        return None
    offset = dt.timedelta(0)
    if counted_from:
        with contextlib.suppress(ValueError):
            offset = dt.datetime.fromisoformat(counted_from).utcoffset() or dt.timedelta(0)
    try:
        end = dt.datetime.combine(
            dt.date.fromisoformat(due_on) + dt.timedelta(days=1),
            dt.time(0),
            tzinfo=dt.timezone(offset),
        ).astimezone(dt.UTC)
    except OverflowError:
        return None
    return end.replace(tzinfo=None).isoformat(timespec="microseconds")


def _clinical_time(record: PatientRecord, fraction: Any) -> str:
    """When a fraction was given, as last entered: a correction of its clinical time (which
    re-dated ``given_on``) wins over the time first recorded."""
    for c in reversed(record.corrections):
        if c.get("corrects") == fraction.version:
            changes = c.get("changes")
            if isinstance(changes, dict) and isinstance(changes.get("occurred_at"), str):
                return str(changes["occurred_at"])
    return str(fraction.occurred_at)


#: The next protocol action in each state, from the command registry (each command's
#: ``next_in``): the first move of the state's one next command (candidate: screen, ...,
#: apheresed: infuse_d1); infused states, a new course and the decision after an assessment are
#: worked out from the record below.
_FIRST_MOVE: dict[str, str] = {
    state: REGISTRY[names[0]].triggers[0]
    for state, names in REGISTRY.next_due.items()
    if len(names) == 1 and state not in (*INFUSED, State.CONTINUED, *FOLLOW_UP)
}
#: After a response assessment: the commands that decide (continue_treatment, cease, discontinue).
_DECISION = "decide: " + " or ".join(
    [", ".join(REGISTRY.next_due[State.ASSESSED][:-1]), REGISTRY.next_due[State.ASSESSED][-1]]
)


#: States in which the course's next fraction may be held by the pre-infusion gate (issue 20).
_GATED = (State.APHERESED, State.CONTINUED, State.INFUSED_D1, State.INFUSED_D2)


def gate_hold(record: PatientRecord) -> int | None:
    """The fraction (day) a failing pre-infusion assessment holds, when it is the course's next
    one (issue 20); None: no fraction is held by the gate."""
    hold = record.pre_infusion_hold
    if hold is None or record.state not in _GATED:
        return None
    if record.course is not None and record.course.cancelled:
        return None
    day = hold.get("day")
    return day if isinstance(day, int) else None


def next_action(record: PatientRecord) -> tuple[str | None, str | None, bool]:
    """(next due action, its due date as ISO date or None, fractions on hold)."""
    action, due_on, hold, _ = next_due(record)
    return action, due_on, hold


def _params(record: PatientRecord) -> ProtocolParameters:
    """The parameters of the patient's protocol version (unknown: the defaults)."""
    try:
        return get_version(record.protocol_version or "").params
    except UnknownProtocolVersionError:
        return DEFAULT_PARAMETERS


def next_due(record: PatientRecord) -> tuple[str | None, str | None, bool, str | None]:
    """(next due action, its due date as ISO date or None, fractions on hold, the clinical time
    the due date is counted from: its UTC offset is the one "overdue" is judged in)."""
    params = _params(record)
    state = record.state
    course = record.course
    hold = any(t.opens_hold for t in record.open_toxicities())
    held_day = gate_hold(record) if record.pre_infusion_hold is not None else None
    if held_day is not None and not hold:
        # a fraction held by the pre-infusion gate: nothing is due (not overdue) until the
        # patient is re-assessed
        return f"re-assess before D{held_day}", None, True, None
    if state in _FIRST_MOVE:  # candidate, screen_failed, screened, apheresed
        return _FIRST_MOVE[state], None, False, None
    if state == State.CONTINUED:
        return f"infuse_d1 (course {record.course_number + 1})", None, False, None
    if state in INFUSED and course is not None:
        fractions = course.fractions
        if state == State.INFUSED_D3 or course.cancelled:
            d1 = next((f for f in fractions if f.day == 1), None)
            return (
                "assess_response",
                _add_days(course.started_on, params.response_assessment_day),
                False,
                _clinical_time(record, d1) if d1 is not None else record.last_occurred_at,
            )
        if hold:
            return "resolve_toxicity (fractions held)", None, True, None
        day = len(fractions) + 1
        last: str | None
        counted_from: str | None
        if fractions:
            last, counted_from = fractions[-1].given_on, _clinical_time(record, fractions[-1])
        else:
            last, counted_from = course.started_on, record.last_occurred_at
        return (
            f"infuse_d{day}",
            _add_days(last, params.fraction_interval_days),
            False,
            counted_from,
        )
    if state == State.ASSESSED and course is not None:
        # The record keeps the assessment's local date, not its time: the latest clinical time
        # (the assessment's, or a later event's at the same site) gives the offset.
        return (
            _DECISION,
            _add_days(course.assessed_on, DECISION_WITHIN_DAYS),
            False,
            record.last_occurred_at,
        )
    if state in FOLLOW_UP:
        # the next follow-up visit of the schedule, due by the end of its window (issue 16)
        visit = next_visit(record, params)
        if visit is None:
            ended = "lost to follow-up" if record.follow_up.get("lost") else None
            return ended, None, False, None
        name, start, end, counted_from = visit
        return f"record_follow_up ({name}, window {start} to {end})", end, False, counted_from
    return None, None, False, None


def next_due_at(record: PatientRecord) -> tuple[str | None, str | None, bool, str | None]:
    """(next due action, due date, fractions on hold, overdue from: a UTC instant as
    :func:`overdue_from` gives it). A pending SAE report whose clock ends first is the next
    action (its due date is the local date of its due instant; it is overdue just after that
    instant, not at the end of the day)."""
    action, due_on, hold, counted_from = next_due(record)
    overdue = overdue_from(due_on, counted_from)
    sae = pending_sae_clock(record)
    if sae is not None:
        case_id, report, due_at = sae
        instant = dt.datetime.fromisoformat(due_at)
        # a report sent at its due instant is on time: overdue from the next microsecond
        sae_overdue = instant.astimezone(dt.UTC).replace(tzinfo=None) + dt.timedelta(microseconds=1)
        sae_from = sae_overdue.isoformat(timespec="microseconds")
        if overdue is None or sae_from < overdue:
            return (
                f"record_sae_report ({case_id} {report}, due {due_at})",
                instant.date().isoformat(),
                hold,
                sae_from,
            )
    return action, due_on, hold, overdue


#: The kinds of next action (the board's ``next_kind``, indexed with ``overdue_from``): a move
#: of the protocol (screen ... decide, resolve a toxicity that holds fractions), a follow-up
#: visit, an SAE report. No kind: nothing is due (the course ended, lost to follow-up).
NEXT_KINDS: tuple[str, ...] = ("protocol", "follow_up", "sae_report")


def next_kind(action: str | None) -> str | None:
    """The kind of a next action as :func:`next_due_at` words it."""
    if action is None or action == "lost to follow-up":
        return None
    if action.startswith("record_sae_report ("):
        return "sae_report"
    if action.startswith("record_follow_up ("):
        return "follow_up"
    return "protocol"


def after_course_columns(record: PatientRecord) -> tuple[Any, ...]:
    """The board's columns of issue 16 besides ``next_kind``: the next follow-up visit and its
    window (start, end: ISO dates in D1's local calendar), the SAE report due first (case id,
    report, due instant as recorded, with its offset), and the worst grade of any adverse event
    (toxicity episode) of the patient, open or not, and of its open ones (the watchlist by
    grade reads it)."""
    visit: tuple[Any, ...] = (None, None, None)
    if record.state in FOLLOW_UP:
        found = next_visit(record, _params(record))
        if found is not None:
            visit = found[:3]
    sae = pending_sae_clock(record) if record.sae_cases else None
    worst = max((t.worst_grade for t in record.toxicities.values()), default=None)
    open_worst = max((t.worst_grade for t in record.open_toxicities()), default=None)
    return (*visit, *(sae or (None, None, None)), worst, open_worst)


def last_response(record: PatientRecord) -> str | None:
    return next((c.response for c in reversed(record.courses) if c.response), None)


def board_row(
    record: PatientRecord, stream_id: str, recorded_at: str, position: int
) -> tuple[Any, ...]:
    course = record.course
    action, due_on, hold, overdue = next_due_at(record)
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
        overdue,
        *product_columns(record),
        next_kind(action),
        *after_course_columns(record),
        record.site,
    )


def product_columns(record: PatientRecord) -> tuple[Any, ...]:
    """The board's product columns: status, the latest collection's date, vein-to-vein days,
    manufacturing failures (None, None, None, 0 for a patient whose product is not tracked)."""
    if not record.collections:
        return (None, None, None, 0)
    return (
        product.product_status(record),
        record.collections[-1].get("collected_on"),
        product.vein_to_vein_days(record),
        product.manufacturing_failures(record),
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
            _utc(t.resolved_at),
        )
        for t in record.toxicities.values()
    ]


def _utc(when: str | None) -> str | None:
    """A clinical time as a UTC instant, naive ISO with microseconds (one width; naive: UTC)."""
    if not when:
        return None
    try:
        at = dt.datetime.fromisoformat(when)
    except ValueError:
        return None
    if at.tzinfo is not None:
        at = at.astimezone(dt.UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


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
    keys = [
        ("state", str(state)),
        ("response", str(response) if response else "not assessed"),
        ("course", str(course_number)),
    ]
    status = row[_PRODUCT_STATUS]
    if status is not None:
        keys.append(("product", str(status)))
    keys.extend(_due_keys(row[_NEXT_KIND], row[_DUE_ON]))
    keys.append(("site", str(row[_SITE])))  # issue 17: a site's patients counted, not scanned
    return keys


#: Kept counts of the board (``view_cohort`` cells that ``views cohort`` does not show): the
#: patients per next-action kind (``next``), and per kind and due date (``due:<kind>``, keyed
#: by ``due_on``), so that counting the overdue rows reads a few hundred cells and the rows of
#: the last days only, not every overdue row (``queries.count``).
KEPT_COUNTS = "next"
DUE_COUNTS = "due:"


def _due_keys(kind: Any, due_on: Any) -> list[tuple[str, str]]:
    if kind is None:
        return []
    keys = [(KEPT_COUNTS, str(kind))]
    if due_on is not None:
        keys.append((DUE_COUNTS + str(kind), str(due_on)))
    return keys


def cohort_keys_of(record: PatientRecord) -> list[tuple[str, str]]:
    """The same cells as :func:`cohort_keys`, straight from a record."""
    response = last_response(record)
    keys = [
        ("state", str(record.state)),
        ("response", response or "not assessed"),
        ("course", str(record.course_number)),
    ]
    status = product.product_status(record)
    if status is not None:
        keys.append(("product", status))
    action, due_on, _hold, _overdue = next_due_at(record)
    keys.extend(_due_keys(next_kind(action), due_on))
    keys.append(("site", record.site))
    return keys


_PRODUCT_STATUS = BOARD_COLUMNS.index("product_status")
_NEXT_KIND = BOARD_COLUMNS.index("next_kind")
_DUE_ON = BOARD_COLUMNS.index("due_on")
_SITE = BOARD_COLUMNS.index("site")
