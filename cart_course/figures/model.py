"""What the cohort figures show, as data: pure functions from patients' records to figure models.

No I/O, no clock, no plotting library: the records (``protocol.record.PatientRecord``, rebuilt
from the log by the read side) go in, attrs classes come out (bars and markers with their day
since D1, counts per category). ``render.py`` draws them; the report and the HTTP routes show
the same models as tables. Days are counted from the patient's first D1:

- ``day``: the exact time since D1 in days (fractions of a day: CRS within hours of D1 is not
  drawn on D1 itself);
- ``clinical_day``: the calendar day after D1 as a clinician says it (D1 = day 0, the local date
  of each clinical time as entered minus the date of D1): "CRS grade 2 on day 3".
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from ..protocol.record import Course, PatientRecord, Toxicity
from ..protocol.response import RESPONSES
from ..protocol.states import State, Trigger

#: Toxicities drawn by grade (the ASTCT-graded syndromes of CAR-T).
GRADED_KINDS: Final = ("CRS", "ICANS")
#: The swimmer's orders: longest time on study first (the default), by patient id, or by D1.
SORTS: Final = ("time_on_study", "patient_id", "d1")
#: Marker kinds of the swimmer, in the legend's order.
MARKER_KINDS: Final = ("fraction", "CRS", "ICANS", "response", "relapse", "death", "ongoing")
NOT_ASSESSED: Final = "not assessed"


@attrs.frozen(kw_only=True)
class Marker:
    """One thing that happened to a patient, placed on the time axis."""

    kind: str  # one of MARKER_KINDS
    day: float  # days since D1 (exact)
    clinical_day: int  # calendar day since D1 (D1 = day 0)
    label: str  # what a reader is told: "D2 (course 1)", "CRS grade 2", "CR", ...
    grade: int | None = None  # CRS / ICANS
    category: str | None = None  # response: CR, CRi, PR, NR
    course: int | None = None


@attrs.frozen(kw_only=True)
class Bar:
    """One patient of the swimmer plot: from D1 (day 0) to ``end_day``."""

    patient_id: str
    d1: str  # the clinical time of the first D1, as entered
    end_day: float
    end_clinical_day: int
    ongoing: bool  # still followed: an arrow at the end of the bar
    state: str
    markers: tuple[Marker, ...]

    @property
    def time_on_study(self) -> float:
        return self.end_day


@attrs.frozen(kw_only=True)
class Swimmer:
    bars: tuple[Bar, ...]
    sort: str
    #: Patients in the selection without a D1 (screen failures, withdrawn before infusion ...).
    not_infused: int
    #: Patients in the selection with a D1 (all bars, before any paging).
    total: int
    offset: int = 0

    def table(self) -> tuple[list[str], list[list[str]]]:
        head = ["patient", "D1", "days on study", "state", "fractions", "CRS", "ICANS"]
        head += ["responses", "relapse", "death"]
        rows = []
        for b in self.bars:

            def of(kind: str, b: Bar = b) -> list[Marker]:
                return [m for m in b.markers if m.kind == kind]

            def days(ms: list[Marker]) -> str:
                return ", ".join(f"{m.label} (day {m.clinical_day})" for m in ms) or "–"

            rows.append(
                [
                    b.patient_id,
                    b.d1[:10],
                    f"{b.end_clinical_day}" + (" (ongoing)" if b.ongoing else ""),
                    b.state,
                    str(len(of("fraction"))),
                    days(of("CRS")),
                    days(of("ICANS")),
                    days(of("response")),
                    days(of("relapse")),
                    days(of("death")),
                ]
            )
        return head, rows


@attrs.frozen(kw_only=True)
class Series:
    name: str
    counts: tuple[int, ...]  # one per group


@attrs.frozen(kw_only=True)
class Counts:
    """A grouped bar chart: for each group (x), one bar per series."""

    title: str
    x_label: str
    groups: tuple[str, ...]
    series: tuple[Series, ...]
    patients: int  # patients counted
    note: str = ""

    def table(self) -> tuple[list[str], list[list[str]]]:
        head = [self.x_label, *(s.name for s in self.series)]
        rows = [[g, *(str(s.counts[i]) for s in self.series)] for i, g in enumerate(self.groups)]
        return head, rows


@attrs.frozen(kw_only=True)
class VeinToVein:
    """Days from the apheresis of the infused product's collection to its D1, per patient."""

    values: tuple[tuple[str, int], ...]  # (patient id, days), by days then patient
    without_chain: int  # infused patients whose product is not tracked from its collection

    @property
    def median(self) -> float | None:
        return statistics.median(d for _, d in self.values) if self.values else None

    def table(self) -> tuple[list[str], list[list[str]]]:
        return ["patient", "vein-to-vein (days)"], [[p, str(d)] for p, d in self.values]


@attrs.frozen(kw_only=True)
class Step:
    day: float
    clinical_day: int
    grade: int


@attrs.frozen(kw_only=True)
class ToxicityTimeline:
    """One patient: CRS and ICANS grade by day since D1, each report marked, fractions marked."""

    patient_id: str
    d1: str | None  # None: no infusion yet (nothing to draw against)
    #: kind -> the grade as it changed (steps: from each day on, this grade)
    steps: dict[str, tuple[Step, ...]]
    #: every report and resolution, as markers (kind CRS / ICANS, with its grade)
    reports: tuple[Marker, ...]
    fractions: tuple[Marker, ...]
    end_day: float

    def table(self) -> tuple[list[str], list[list[str]]]:
        head = ["day", "day (exact)", "what", "grade"]
        items = sorted([*self.fractions, *self.reports], key=lambda m: (m.day, m.kind))
        rows = [
            [
                str(m.clinical_day),
                f"{m.day:.2f}",
                m.label,
                "" if m.grade is None else str(m.grade),
            ]
            for m in items
        ]
        return head, rows


# ----------------------------------------------------------------------------------------------
# time since D1
# ----------------------------------------------------------------------------------------------


def _instant(text: str) -> dt.datetime:
    """A clinical time (ISO date-time with offset, or a date: midnight UTC)."""
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class _Clock:
    """Days since a patient's first D1."""

    def __init__(self, d1_at: str) -> None:
        self.at = _instant(d1_at)
        self.date = dt.date.fromisoformat(d1_at[:10])

    def day(self, when: str) -> float:
        if len(when) == 10:  # a date only: that day's start in D1's offset
            moment = dt.datetime.combine(dt.date.fromisoformat(when), dt.time(0), self.at.tzinfo)
            midnight = dt.datetime.combine(self.date, dt.time(0), self.at.tzinfo)
            return (moment - midnight).total_seconds() / 86400
        return (_instant(when) - self.at).total_seconds() / 86400

    def clinical_day(self, when: str) -> int:
        return (dt.date.fromisoformat(when[:10]) - self.date).days

    def marker(self, when: str, **kw: Any) -> Marker:
        return Marker(day=round(self.day(when), 4), clinical_day=self.clinical_day(when), **kw)


def first_d1(record: PatientRecord) -> str | None:
    """The clinical time of the patient's first D1 (None: never infused)."""
    for course in record.courses:
        for f in course.fractions:
            if f.day == 1:
                return f.occurred_at
    return None


def _fraction_time(record: PatientRecord, f: Any) -> str:
    """When a fraction was given, as last entered (a correction of its clinical time wins)."""
    for c in reversed(record.corrections):
        if c.get("corrects") == f.version:
            changes = c.get("changes")
            if isinstance(changes, dict) and isinstance(changes.get("occurred_at"), str):
                return str(changes["occurred_at"])
    return str(f.occurred_at)


def _fractions(record: PatientRecord, clock: _Clock) -> list[Marker]:
    many = len(record.courses) > 1
    return [
        clock.marker(
            _fraction_time(record, f),
            kind="fraction",
            label=f"D{f.day}" + (f" (course {c.number})" if many else ""),
            course=c.number,
        )
        for c in record.courses
        for f in c.fractions
    ]


def _reports(record: PatientRecord, t: Toxicity) -> list[tuple[str, int]]:
    """(clinical time, grade) of each report of an episode, in the order recorded; histories
    indexed before each report's grade was kept give the onset at the worst grade."""
    out: list[tuple[str, int]] = []
    for v in t.versions:
        entry = record.index.get(v, {})
        if entry.get("trigger") != Trigger.REPORT_TOXICITY:
            continue
        if "grade" in entry and isinstance(entry.get("occurred_at"), str):
            out.append((entry["occurred_at"], int(entry["grade"])))
    return out or [(t.onset, t.worst_grade)]


def _graded(record: PatientRecord) -> list[Toxicity]:
    return [t for t in record.toxicities.values() if t.kind in GRADED_KINDS]


def _death_time(record: PatientRecord) -> str | None:
    if record.death and isinstance(record.death.get("occurred_at"), str):
        return str(record.death["occurred_at"])
    if record.ended and record.ended.get("state") == State.DIED:
        return str(record.ended["occurred_at"])
    return None


def _responses(course: Course, clock: _Clock, many: bool) -> list[Marker]:
    if course.response is None or course.assessed_on is None:
        return []
    return [
        clock.marker(
            course.assessed_on,
            kind="response",
            label=course.response + (f" (course {course.number})" if many else ""),
            category=course.response,
            course=course.number,
        )
    ]


def swimmer_bar(record: PatientRecord) -> Bar | None:
    """The patient's bar (None: no D1 on record)."""
    d1 = first_d1(record)
    if d1 is None:
        return None
    clock = _Clock(d1)
    markers = _fractions(record, clock)
    for t in _graded(record):
        when, _grade = _reports(record, t)[0]
        markers.append(
            clock.marker(
                when,
                kind=t.kind,
                label=f"{t.kind} grade {t.worst_grade}",
                grade=t.worst_grade,
                course=t.course_number,
            )
        )
    many = len(record.courses) > 1
    for course in record.courses:
        markers += _responses(course, clock, many)
    relapse = record.follow_up.get("relapse") if record.follow_up else None
    if isinstance(relapse, dict) and isinstance(relapse.get("occurred_at"), str):
        cd19 = relapse.get("cd19")
        label = "relapse" + (f" (CD19{'-' if cd19 == 'negative' else '+'})" if cd19 else "")
        markers.append(clock.marker(relapse["occurred_at"], kind="relapse", label=label))
    died = _death_time(record)
    if died is not None:
        markers.append(clock.marker(died, kind="death", label="death"))
    # the bar ends at the last clinical time on record (the death, for a patient who died)
    last = record.last_occurred_at or d1
    end = died or last
    end_day = max([clock.day(end), *(m.day for m in markers)])
    lost = bool(record.follow_up.get("lost")) if record.follow_up else False
    # still followed: on treatment, or in follow-up after it ended (ceased, discontinued) and
    # not lost to follow-up; a death or a withdrawal ends the time on study
    ongoing = record.state not in (State.DIED, State.WITHDRAWN) and not lost
    markers.sort(key=lambda m: (m.day, MARKER_KINDS.index(m.kind)))
    if ongoing:
        markers.append(
            Marker(
                kind="ongoing",
                day=round(end_day, 4),
                clinical_day=clock.clinical_day(end),
                label="on study (last contact)",
            )
        )
    return Bar(
        patient_id=record.patient_id,
        d1=d1,
        end_day=round(end_day, 4),
        end_clinical_day=clock.clinical_day(end),
        ongoing=ongoing,
        state=record.state,
        markers=tuple(markers),
    )


def swimmer(
    records: Iterable[PatientRecord],
    *,
    sort: str = "time_on_study",
    offset: int = 0,
    limit: int | None = None,
) -> Swimmer:
    """One bar per infused patient, in ``sort`` order (``time_on_study``: longest first);
    ``offset``/``limit`` take one page of the sorted bars."""
    if sort not in SORTS:
        raise ValueError(f"sort {sort!r} is not one of {', '.join(SORTS)}")
    bars: list[Bar] = []
    not_infused = 0
    for r in records:
        bar = swimmer_bar(r)
        if bar is None:
            not_infused += 1
        else:
            bars.append(bar)
    if sort == "time_on_study":
        bars.sort(key=lambda b: (-b.end_day, b.patient_id))
    elif sort == "d1":
        bars.sort(key=lambda b: (_instant(b.d1), b.patient_id))
    else:
        bars.sort(key=lambda b: b.patient_id)
    page = bars[offset : None if limit is None else offset + limit]
    return Swimmer(
        bars=tuple(page), sort=sort, not_infused=not_infused, total=len(bars), offset=offset
    )


# ----------------------------------------------------------------------------------------------
# counts
# ----------------------------------------------------------------------------------------------


def best_response(records: Iterable[PatientRecord]) -> Counts:
    """For each course number, how many patients had each response (``not assessed``: the
    course has no assessment on record yet, or its fractions were stopped before one)."""
    cats = (*RESPONSES, NOT_ASSESSED)
    by_course: dict[int, dict[str, int]] = {}
    patients = 0
    for r in records:
        if not r.courses:
            continue
        patients += 1
        for c in r.courses:
            tally = by_course.setdefault(c.number, dict.fromkeys(cats, 0))
            tally[c.response if c.response in RESPONSES else NOT_ASSESSED] += 1
    numbers = sorted(by_course)
    return Counts(
        title="Best response by course",
        x_label="course",
        groups=tuple(f"course {n}" for n in numbers),
        series=tuple(
            Series(name=cat, counts=tuple(by_course[n][cat] for n in numbers)) for cat in cats
        ),
        patients=patients,
        note="patients with at least one course; each course counted once",
    )


def max_grades(records: Iterable[PatientRecord]) -> Counts:
    """Per infused patient, the maximum CRS grade and the maximum ICANS grade (0: none)."""
    grades = range(6)
    tally = {k: [0] * 6 for k in GRADED_KINDS}
    patients = 0
    for r in records:
        if first_d1(r) is None:
            continue
        patients += 1
        for kind in GRADED_KINDS:
            worst = max((t.worst_grade for t in _graded(r) if t.kind == kind), default=0)
            tally[kind][min(max(worst, 0), 5)] += 1
    return Counts(
        title="Maximum CRS and ICANS grade per patient",
        x_label="maximum grade",
        groups=tuple("0 (none)" if g == 0 else str(g) for g in grades),
        series=tuple(Series(name=k, counts=tuple(tally[k])) for k in GRADED_KINDS),
        patients=patients,
        note="infused patients; ASTCT 2019 grades (5: death due to the syndrome)",
    )


def vein_to_vein(records: Iterable[PatientRecord]) -> VeinToVein:
    from ..protocol.product import vein_to_vein_days

    values: list[tuple[str, int]] = []
    without = 0
    for r in records:
        if first_d1(r) is None:
            continue
        days = vein_to_vein_days(r) if r.collections else None
        if days is None:
            without += 1
        else:
            values.append((r.patient_id, days))
    values.sort(key=lambda v: (v[1], v[0]))
    return VeinToVein(values=tuple(values), without_chain=without)


# ----------------------------------------------------------------------------------------------
# one patient: the toxicity timeline
# ----------------------------------------------------------------------------------------------


def toxicity_timeline(record: PatientRecord) -> ToxicityTimeline:
    """CRS and ICANS grade by day since D1: each kind's grade at any time is the highest current
    grade of its open episodes (0 once they are resolved; 5 for an episode closed by a death
    due to it)."""
    d1 = first_d1(record)
    if d1 is None:
        return ToxicityTimeline(
            patient_id=record.patient_id, d1=None, steps={}, reports=(), fractions=(), end_day=0
        )
    clock = _Clock(d1)
    changes: list[tuple[dt.datetime, str, str, int, str]] = []  # when, kind, episode, grade, text
    reports: list[Marker] = []
    for t in _graded(record):
        for when, grade in _reports(record, t):
            changes.append((_instant(when), t.kind, t.id, grade, when))
            reports.append(
                clock.marker(when, kind=t.kind, label=f"{t.kind} grade {grade}", grade=grade)
            )
        if t.resolved_at is not None:
            closed = 5 if t.fatal else 0
            changes.append((_instant(t.resolved_at), t.kind, t.id, closed, t.resolved_at))
            reports.append(
                clock.marker(
                    t.resolved_at,
                    kind=t.kind,
                    label=f"{t.kind} grade 5 (death)" if t.fatal else f"{t.kind} resolved",
                    grade=closed,
                )
            )
    changes.sort(key=lambda c: c[0])
    current: dict[str, dict[str, int]] = {k: {} for k in GRADED_KINDS}
    steps: dict[str, list[Step]] = {
        k: [Step(day=0.0, clinical_day=0, grade=0)] for k in GRADED_KINDS
    }
    for _at, kind, episode, grade, text in changes:
        current[kind][episode] = grade
        level = max(current[kind].values(), default=0)
        series = steps[kind]
        step = Step(
            day=round(clock.day(text), 4), clinical_day=clock.clinical_day(text), grade=level
        )
        if series and series[-1].day == step.day:
            series[-1] = step
        elif series[-1].grade != level:
            series.append(step)
    fractions = _fractions(record, clock)
    last = record.last_occurred_at or d1
    ends = [clock.day(last), *(m.day for m in reports), *(m.day for m in fractions)]
    reports.sort(key=lambda m: (m.day, m.kind))
    return ToxicityTimeline(
        patient_id=record.patient_id,
        d1=d1,
        steps={k: tuple(v) for k, v in steps.items()},
        reports=tuple(reports),
        fractions=tuple(fractions),
        end_day=round(max(ends), 4),
    )


# ----------------------------------------------------------------------------------------------
# the selection (the board's filters that mean something for a figure)
# ----------------------------------------------------------------------------------------------


def select(
    records: Iterable[PatientRecord], *, state: str | None = None, toxicity: bool = False
) -> list[PatientRecord]:
    """The records a figure is drawn from: in ``state``, and/or with an open toxicity."""
    out = []
    for r in records:
        if state is not None and r.state != state:
            continue
        if toxicity and not r.open_ids:
            continue
        out.append(r)
    return out


def describe(selection: Sequence[str]) -> str:
    """The selection in words ("all patients", "state ceased, open toxicity only")."""
    return ", ".join(selection) if selection else "all patients"


def last_clinical_time(records: Iterable[PatientRecord]) -> str | None:
    """The latest clinical time on record in ``records`` (as entered), or None."""
    times = [r.last_occurred_at for r in records if r.last_occurred_at]
    return max(times, key=_instant) if times else None
