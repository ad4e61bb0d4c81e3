"""A patient's record as pure data, and how each recorded move evolves it.

``evolve`` only assigns: it never checks a rule (replay must load any history, even one that
today's protocol would refuse). Rules run before a move is recorded (``commands.prepare``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .product import evolve_product, product_summary
from .states import INFUSION_TRIGGERS, TERMINAL, State, Trigger

#: The site of a patient recorded without one (before sites existed, or in a trial that defines
#: no sites); see ``protocol/sites.py``.
DEFAULT_SITE = "S00"


@attrs.define(kw_only=True)
class Fraction:
    day: int
    cells: float
    dose: dict[str, Any]  # as entered: {"value", "unit"}
    given_on: str  # ISO date (clinical)
    occurred_at: str
    version: int
    planned_cells: float
    deviations: list[str] = attrs.Factory(list)


@attrs.define(kw_only=True)
class Course:
    number: int
    weight_kg: float | None = None
    planned_total: float | None = None
    fraction_plan: list[float] = attrs.Factory(list)
    fractions: list[Fraction] = attrs.Factory(list)
    cancelled: bool = False
    cancel_reason: str | None = None
    started_on: str | None = None
    response: str | None = None
    computed_response: str | None = None
    mrd_status: str | None = None
    assessed_on: str | None = None
    decision: str | None = None

    @property
    def delivered(self) -> float:
        return sum([f.cells for f in self.fractions])


@attrs.define(kw_only=True)
class Toxicity:
    id: str
    kind: str
    term: str | None
    grade: int
    scale: str
    scale_version: str
    course_number: int
    onset: str
    report: dict[str, Any]
    worst_grade: int
    resolved_at: str | None = None
    severe: bool = False
    opens_hold: bool = False
    versions: list[int] = attrs.Factory(list)
    #: The adverse-event facts of the episode (attribution, seriousness, expectedness, outcome,
    #: awareness), merged over its reports; None: reported as a toxicity only.
    ae: dict[str, Any] | None = None
    #: Closed by a death attributed to it (grade 5).
    fatal: bool = False

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@attrs.define(kw_only=True)
class PatientRecord:
    patient_id: str
    state: str = State.CANDIDATE.value
    protocol_version: str | None = None
    version: int = 0
    screenings: int = 0
    eligible: bool | None = None
    screening: dict[str, Any] | None = None
    consent_on_file: bool = False
    apheresis_date: str | None = None
    courses: list[Course] = attrs.Factory(list)
    toxicities: dict[str, Toxicity] = attrs.Factory(dict)
    deviations: list[dict[str, Any]] = attrs.Factory(list)
    corrections: list[dict[str, Any]] = attrs.Factory(list)
    signatures: list[dict[str, Any]] = attrs.Factory(list)
    #: The cell product (``product.py``): collections with an identifier, lots by id, bags by id.
    collections: list[dict[str, Any]] = attrs.Factory(list)
    lots: dict[str, dict[str, Any]] = attrs.Factory(dict)
    bags: dict[str, dict[str, Any]] = attrs.Factory(dict)
    first_occurred_at: str | None = None
    last_occurred_at: str | None = None
    ended: dict[str, Any] | None = None
    #: After the course (issue 16): follow-up visits ({"visits", "missed", "consecutive_missed",
    #: "lost", "relapse"}), safety cases with their reporting clocks (by case id), and the
    #: structured cause of a death (None: no death, or one recorded with free text only).
    follow_up: dict[str, Any] = attrs.Factory(dict)
    sae_cases: dict[str, dict[str, Any]] = attrs.Factory(dict)
    death: dict[str, Any] | None = None
    #: The pre-infusion gate (issue 20): the hold a bedside assessment recorded for the next
    #: fraction ({"day", "course_number", "version", "occurred_at", "failed"}); None: no hold.
    #: Lifted by an assessment that meets the gate, or by the fraction given. A hold for a
    #: temperature keeps it and its clinical time ("temperature": {"value", "unit",
    #: "occurred_at"}).
    pre_infusion_hold: dict[str, Any] | None = None
    #: The temperatures above the gate's limit observed by an assessment or sent with a
    #: fraction ({"value", "unit", "occurred_at", "version"}, in the order recorded): the gate
    #: judging a later move counts every one within the window before its clinical time, so a
    #: lower maximum given later does not erase them.
    pre_infusion_temperatures: list[dict[str, Any]] = attrs.Factory(list)
    #: Data queries (issue 17), by id (``Q-<version>``): status, what they are about, each step
    #: (``protocol/queries.py``). Never read by the protocol's rules.
    queries: dict[str, dict[str, Any]] = attrs.Factory(dict)
    #: For each correctable event version: its trigger and where its effect lives.
    index: dict[int, dict[str, Any]] = attrs.Factory(dict)
    #: The patient's site (issue 17): set by ``screen``'s ``site``, changed by ``transfer_site``;
    #: :data:`DEFAULT_SITE` for a patient screened without one (a store of the previous release).
    site: str = DEFAULT_SITE
    #: Each transfer: {"version", "from_site", "to_site", "occurred_at", "reason"}.
    site_transfers: list[dict[str, Any]] = attrs.Factory(list)
    # Derived indexes of ``toxicities`` (never stored: rebuilt by ``from_json``), so that a
    # command costs the same with 10 or 1000 events of history.
    open_ids: list[str] = attrs.field(factory=list, eq=False, repr=False)
    kind_counts: dict[str, int] = attrs.field(factory=dict, eq=False, repr=False)
    course_ids: dict[int, list[str]] = attrs.field(factory=dict, eq=False, repr=False)
    #: Per course number, the id of its episode of the highest worst grade (the first of them).
    course_worst: dict[int, str] = attrs.field(factory=dict, eq=False, repr=False)

    # -- derived views -----------------------------------------------------------------------
    @property
    def course(self) -> Course | None:
        return self.courses[-1] if self.courses else None

    @property
    def course_number(self) -> int:
        return len(self.courses)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def open_toxicities(self) -> list[Toxicity]:
        return [self.toxicities[i] for i in self.open_ids]

    def course_toxicities(self, number: int) -> list[Toxicity]:
        return [self.toxicities[i] for i in self.course_ids.get(number, ())]

    def count_of_kind(self, kind: str) -> int:
        return self.kind_counts.get(kind, 0)

    def next_toxicity_id(self, kind: str) -> str:
        """The id a new episode of ``kind`` gets: the next free number of its kind (``CRS-3``
        after CRS-1 and CRS-2), never the id of an episode on record (open or resolved)."""
        n = self.count_of_kind(kind) + 1
        while f"{kind}-{n}" in self.toxicities:
            n += 1
        return f"{kind}-{n}"

    def _reindex(self) -> None:
        self.open_ids = [t.id for t in self.toxicities.values() if t.open]
        self.kind_counts = {}
        self.course_ids = {}
        self.course_worst = {}
        for t in self.toxicities.values():
            self.kind_counts[t.kind] = self.kind_counts.get(t.kind, 0) + 1
            self.course_ids.setdefault(t.course_number, []).append(t.id)
            self._note_worst(t)

    def _note_worst(self, t: Toxicity) -> None:
        """Keep ``course_worst`` for an episode whose worst grade was set or raised."""
        worst = self.course_worst.get(t.course_number)
        if worst is None or t.worst_grade > self.toxicities[worst].worst_grade:
            self.course_worst[t.course_number] = t.id

    def worst_of_course(self, number: int) -> Toxicity | None:
        """The course's episode of the highest worst grade (the first of them), or None."""
        worst = self.course_worst.get(number)
        return self.toxicities[worst] if worst is not None else None

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=True, filter=lambda a, _v: a.name not in DERIVED_FIELDS)
        data["index"] = {str(k): v for k, v in self.index.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatientRecord:
        data = dict(data)
        data["courses"] = [
            Course(**{**c, "fractions": [Fraction(**f) for f in c["fractions"]]})
            for c in data["courses"]
        ]
        data["toxicities"] = {k: Toxicity(**t) for k, t in data["toxicities"].items()}
        data["index"] = {int(k): v for k, v in data["index"].items()}
        for name in DERIVED_FIELDS:
            data.pop(name, None)
        record = cls(**data)
        record._reindex()
        return record

    def summary(self) -> dict[str, Any]:
        """The current state as a clinician reads it (also used by ``show`` and the views)."""
        course = self.course
        return {
            "patient_id": self.patient_id,
            "site": self.site,
            "state": self.state,
            "version": self.version,
            "protocol_version": self.protocol_version,
            "course_number": self.course_number,
            "eligible": self.eligible,
            "apheresis_date": self.apheresis_date,
            "courses": [course_summary(c) for c in self.courses],
            "current_course": course_summary(course) if course else None,
            "open_toxicities": [toxicity_summary(t) for t in self.open_toxicities()],
            "toxicities": [toxicity_summary(t) for t in self.toxicities.values()],
            "deviations": list(self.deviations),
            "corrections": list(self.corrections),
            "signatures": list(self.signatures),
            "product": product_summary(self),
            "first_occurred_at": self.first_occurred_at,
            "last_occurred_at": self.last_occurred_at,
            "ended": self.ended,
            **({"follow_up": self.follow_up} if self.follow_up else {}),
            **({"sae_cases": list(self.sae_cases.values())} if self.sae_cases else {}),
            **({"death": self.death} if self.death else {}),
            **({"pre_infusion_hold": self.pre_infusion_hold} if self.pre_infusion_hold else {}),
            **({"site_transfers": list(self.site_transfers)} if self.site_transfers else {}),
            **({"queries": self.queries_summary()} if self.queries else {}),
        }

    def queries_summary(self) -> dict[str, Any]:
        """The patient's data queries in brief: how many are unresolved (not closed), the
        oldest unresolved one's opening time (clinical: :func:`opened_clinical`), and the count
        by status."""
        by_status: dict[str, int] = {}
        oldest: tuple[dt.datetime, str] | None = None
        pending = 0
        for q in self.queries.values():
            by_status[q["status"]] = by_status.get(q["status"], 0) + 1
            if q["status"] != "closed":
                pending += 1
                at = opened_instant(q)
                if at is not None and (oldest is None or at < oldest[0]):
                    oldest = (at, str(opened_clinical(q)))
        return {
            "open_queries": pending,
            "oldest_open_query_at": oldest[1] if oldest else None,
            "by_status": by_status,
        }


DERIVED_FIELDS = frozenset({"open_ids", "kind_counts", "course_ids", "course_worst"})


def course_summary(c: Course) -> dict[str, Any]:
    return {
        "number": c.number,
        "weight_kg": c.weight_kg,
        "planned_total_cells": c.planned_total,
        "delivered_cells": c.delivered,
        "fractions": [
            {
                "day": f.day,
                "planned_cells": f.planned_cells,
                "delivered_cells": f.cells,
                "dose_as_entered": f.dose,
                "given_on": f.given_on,
                "deviations": list(f.deviations),
            }
            for f in c.fractions
        ],
        "fraction_plan": list(c.fraction_plan),
        "cancelled": c.cancelled,
        "cancel_reason": c.cancel_reason,
        "started_on": c.started_on,
        "response": c.response,
        "computed_response": c.computed_response,
        "mrd_status": c.mrd_status,
        "assessed_on": c.assessed_on,
        "decision": c.decision,
    }


def toxicity_summary(t: Toxicity) -> dict[str, Any]:
    return {
        "id": t.id,
        "kind": t.kind,
        "term": t.term,
        "grade": t.grade,
        "worst_grade": t.worst_grade,
        "scale": t.scale,
        "scale_version": t.scale_version,
        "course_number": t.course_number,
        "onset": t.onset,
        "resolved_at": t.resolved_at,
        "open": t.open,
        "severe": t.severe,
        "opens_hold": t.opens_hold,
        # adverse-event facts (issue 16): only for episodes that have them, so that the
        # summary of a record of the previous release reads as it did
        **({"adverse_event": dict(t.ae)} if t.ae else {}),
        **({"fatal": True} if t.fatal else {}),
    }


# ----------------------------------------------------------------------------------------------
# evolve: assign only
# ----------------------------------------------------------------------------------------------


#: Moves that never change the state: the machine's internal transitions (``"dest": "="``). Their
#: event's ``to_state`` is the state the record was in when it was recorded; an episode command
#: may be recorded after a later move with an earlier clinical time, so a replay that leaves out
#: events (the audit's clinical as-of view) must not take its state from it.
STAYING_TRIGGERS: frozenset[Trigger] = frozenset(
    {
        Trigger.REPORT_TOXICITY,
        Trigger.RESOLVE_TOXICITY,
        Trigger.CANCEL_REMAINING_FRACTIONS,
        Trigger.RECORD_FOLLOW_UP,
        Trigger.RECORD_MISSED_VISIT,
        Trigger.RECORD_SAE_REPORT,
        Trigger.START_MANUFACTURE,
        Trigger.RELEASE_PRODUCT,
        Trigger.REPEAT_APHERESIS,
        Trigger.ASSESS_PRE_INFUSION,
        Trigger.TRANSFER_SITE,
    }
)


#: A clinical time's instant (``datetime.fromisoformat``), kept for the texts seen last: each
#: move compares its time with the record's first and last, which are earlier moves' own texts.
_instant = functools.lru_cache(maxsize=64)(dt.datetime.fromisoformat)

#: The day of each infusion's trigger, by its name (no ``Trigger`` made per event).
_INFUSION_DAY: dict[str, int] = {str(t): day for t, day in INFUSION_TRIGGERS.items()}


def evolve(
    record: PatientRecord,
    *,
    trigger: str,
    to_state: str,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
    protocol_version: str,
    reason: str | None = None,
) -> None:
    record.version = version
    if trigger not in STAYING_TRIGGERS:  # a replay of every event: to_state is the state anyway
        record.state = to_state
    record.protocol_version = protocol_version
    # Clinical times may carry different UTC offsets: compare instants, keep the text as entered.
    when = _instant(occurred_at)
    if record.first_occurred_at is None or when < _instant(record.first_occurred_at):
        record.first_occurred_at = occurred_at
    if record.last_occurred_at is None or when > _instant(record.last_occurred_at):
        record.last_occurred_at = occurred_at
    _apply_effect(record, trigger, facts, outcome, occurred_at, version, reason)
    if trigger in _PRODUCT_EFFECTS and (record.collections or "collection" in facts):
        evolve_product(record, trigger, facts, outcome, occurred_at, version)
    if trigger in INFUSION_TRIGGERS or trigger in ("screen", "rescreen", "record_apheresis"):
        record.index[version] = {"trigger": trigger}
    # how the course ended: set by the move that ended it, not restated by a toxicity reported or
    # resolved afterwards (a move that stays in its state)
    if to_state in TERMINAL and record.state == to_state and trigger not in STAYING_TRIGGERS:
        record.ended = {"state": to_state, "reason": reason, "occurred_at": occurred_at}


def _apply_effect(
    record: PatientRecord,
    trigger: str,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
    reason: str | None,
) -> None:
    if trigger == Trigger.TRANSFER_SITE:
        record.site_transfers.append(
            {
                "version": version,
                "from_site": record.site,
                "to_site": facts["site"],
                "occurred_at": occurred_at,
                "reason": reason,
            }
        )
        record.site = facts["site"]
        return
    if trigger == Trigger.SCREEN and isinstance(facts.get("site"), str):
        record.site = facts["site"]
    if trigger in (Trigger.SCREEN, Trigger.RESCREEN):
        record.screenings += 1
        record.screening = facts["screening"]
        record.eligible = bool(outcome.get("eligible"))
        record.consent_on_file = bool(outcome.get("consent_on_file"))
    elif trigger == Trigger.RECORD_APHERESIS:
        record.apheresis_date = facts.get("apheresis_date")
    elif trigger in INFUSION_TRIGGERS:
        day = _INFUSION_DAY[trigger]
        if day == 1:
            record.courses.append(
                Course(
                    number=outcome["course_number"],
                    weight_kg=outcome["weight_kg"],
                    planned_total=outcome["planned_total_cells"],
                    fraction_plan=list(outcome["fraction_plan"]),
                    started_on=facts["infusion_date"],
                )
            )
        course = record.courses[-1]
        fraction = Fraction(
            day=day,
            cells=outcome["cells"],
            dose=facts["dose"],
            given_on=facts["infusion_date"],
            occurred_at=occurred_at,
            version=version,
            planned_cells=outcome["planned_cells"],
            deviations=list(outcome.get("deviations", [])),
        )
        course.fractions.append(fraction)
        record.pre_infusion_hold = None  # the fraction was given: no hold is left for it
        gate = outcome.get("pre_infusion_gate")
        if isinstance(gate, dict) and "temperature" in gate.get("failed_criteria", ()):
            _keep_temperature(record, facts, occurred_at, version)  # given anyway (a reason)
        for text in fraction.deviations:
            record.deviations.append(
                {
                    "version": version,
                    "trigger": trigger,
                    "course": course.number,
                    "deviation": text,
                    "reason": facts.get("deviation_reason"),
                    "occurred_at": occurred_at,
                }
            )
    elif trigger == Trigger.REPORT_TOXICITY:
        _report_toxicity(record, facts, outcome, occurred_at, version)
    elif trigger == Trigger.RESOLVE_TOXICITY:
        tox = record.toxicities.get(facts["toxicity_id"])
        if tox is not None:
            if tox.open and tox.id in record.open_ids:
                record.open_ids.remove(tox.id)
            tox.resolved_at = occurred_at
            tox.opens_hold = False
            tox.versions.append(version)
    elif trigger == Trigger.CANCEL_REMAINING_FRACTIONS:
        if record.courses:
            record.courses[-1].cancelled = True
            record.courses[-1].cancel_reason = reason
    elif trigger == Trigger.ASSESS_RESPONSE:
        if record.courses:
            course = record.courses[-1]
            course.response = outcome["response"]
            course.computed_response = outcome["computed_response"]
            course.mrd_status = outcome.get("mrd_status")
            course.assessed_on = occurred_at[:10]
            record.index[version] = {"trigger": trigger, "course": course.number}
    elif trigger == Trigger.CONTINUE_TREATMENT:
        if record.courses:
            record.courses[-1].decision = "continued"
    elif trigger in (Trigger.CEASE, Trigger.DISCONTINUE) and record.courses:
        record.courses[-1].decision = "ceased" if trigger == Trigger.CEASE else "discontinued"
    elif trigger in _AFTER_COURSE:
        _AFTER_COURSE[trigger](record, facts, outcome, occurred_at, version)
    elif trigger == Trigger.ASSESS_PRE_INFUSION:
        # the gate's verdict on the next fraction (issue 20): held, or fit (the hold lifted)
        failed_criteria = outcome.get("failed_criteria", ())
        fever = (
            _keep_temperature(record, facts, occurred_at, version)
            if "temperature" in failed_criteria
            else None
        )
        record.pre_infusion_hold = _hold_of(outcome, version, occurred_at, fever, facts)


def _hold_of(
    outcome: dict[str, Any],
    version: int,
    occurred_at: str,
    fever: dict[str, Any] | None = None,
    facts: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The hold a bedside assessment's outcome puts on the next fraction (None: fit). A hold
    for a temperature keeps it and its clinical time: the assessment's own (``fever``), or
    the latest one on record within the window (``temperature_on_record``)."""
    if not outcome.get("held"):
        return None
    if fever is None and "temperature_on_record" in outcome.get("failed_criteria", ()):
        window = (facts or {}).get("pre_infusion_window") or {}
        on_record = [t for t in window.get("temperatures") or () if isinstance(t, dict)]
        if on_record:
            fever = max(on_record, key=lambda t: str(t.get("occurred_at") or ""))
    return {
        "day": outcome.get("day"),
        "course_number": outcome.get("course_number"),
        "version": version,
        "occurred_at": occurred_at,
        "failed": list(outcome.get("failed", ())),
        **(
            {"temperature": {k: fever.get(k) for k in ("value", "unit", "occurred_at")}}
            if fever is not None
            else {}
        ),
    }


def _recorrect_temperature(
    record: PatientRecord,
    corrects: int,
    facts: dict[str, Any],
    failed_criteria: Any,
    occurred_at: Any,
) -> dict[str, Any] | None:
    """A corrected assessment or fraction: the temperature kept for the gate from the corrected
    event (issue 20) is the corrected one, kept when it is above the limit, dropped when not;
    with the corrected event's own clinical time."""
    kept = [t for t in record.pre_infusion_temperatures if t.get("version") == corrects]
    record.pre_infusion_temperatures = [
        t for t in record.pre_infusion_temperatures if t.get("version") != corrects
    ]
    if "temperature" not in failed_criteria:
        return None
    at = kept[0].get("occurred_at") if kept else occurred_at
    return _keep_temperature(record, facts, str(at), corrects)


def _keep_temperature(
    record: PatientRecord, facts: dict[str, Any], occurred_at: str, version: int
) -> dict[str, Any] | None:
    """Keep a temperature above the gate's limit (the observations' highest temperature) with
    the clinical time of the move that observed it (issue 20)."""
    observations = facts.get("pre_infusion")
    t = observations.get("highest_temperature") if isinstance(observations, dict) else None
    if not isinstance(t, dict):
        return None
    kept = {
        "value": t.get("value"),
        "unit": t.get("unit"),
        "occurred_at": occurred_at,
        "version": version,
    }
    record.pre_infusion_temperatures.append(kept)
    return kept


def _report_toxicity(
    record: PatientRecord,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
) -> None:
    tox_id = outcome["toxicity_id"]
    existing = record.toxicities.get(tox_id)
    if existing is not None and existing.open:
        # An update of an open episode: its current grade, scale and report are the latest.
        existing.term = outcome.get("term")
        existing.grade = outcome["grade"]
        existing.worst_grade = max(existing.worst_grade, outcome["grade"])
        existing.scale = outcome["scale"]
        existing.scale_version = outcome["scale_version"]
        existing.severe = existing.severe or outcome["severe"]
        existing.opens_hold = outcome["opens_hold"]
        existing.report = facts["toxicity"]
        existing.versions.append(version)
        record._note_worst(existing)
    else:
        if existing is None:
            record.kind_counts[outcome["kind"]] = record.kind_counts.get(outcome["kind"], 0) + 1
            record.course_ids.setdefault(record.course_number, []).append(tox_id)
        if tox_id not in record.open_ids:
            record.open_ids.append(tox_id)
        record.toxicities[tox_id] = Toxicity(
            id=tox_id,
            kind=outcome["kind"],
            term=outcome.get("term"),
            grade=outcome["grade"],
            worst_grade=outcome["grade"],
            scale=outcome["scale"],
            scale_version=outcome["scale_version"],
            course_number=record.course_number,
            onset=occurred_at,
            report=facts["toxicity"],
            severe=outcome["severe"],
            opens_hold=outcome["opens_hold"],
            versions=[version],
        )
        if existing is None:
            record._note_worst(record.toxicities[tox_id])
        else:  # a resolved episode's id reported again (histories from before ids were checked)
            record._reindex()
    if "adverse_event_now" in facts:
        record.toxicities[tox_id].ae = dict(facts["adverse_event_now"])
    if "sae" in outcome:
        _open_sae(record, outcome["sae"], occurred_at, version)
    # Each report's grade is kept, so that correcting one report re-derives the episode's worst
    # grade and severity from all of its reports.
    record.index[version] = {
        "trigger": Trigger.REPORT_TOXICITY.value,
        "toxicity_id": tox_id,
        "grade": outcome["grade"],
        "severe": bool(outcome["severe"]),
        # when this grade was observed: a hold is judged on the grade at a fraction's time
        "occurred_at": occurred_at,
    }


# -- after the course (issue 16) -----------------------------------------------------------------


def _open_sae(record: PatientRecord, sae: dict[str, Any], occurred_at: str, version: int) -> None:
    """Open (or extend) a safety case and start the clocks the outcome names: each due at its
    duration after the awareness of the new information (or the clinical time without one)."""
    start = sae.get("aware_at") or occurred_at
    case = record.sae_cases.setdefault(
        sae["case_id"],
        {
            "id": sae["case_id"],
            "opened_version": version,
            "aware_at": start,
            "seriousness": [],
            "susar": False,
            "clocks": [],
        },
    )
    case["seriousness"] = sorted(set(case["seriousness"]) | set(sae.get("seriousness", ())))
    case["susar"] = bool(case["susar"] or sae.get("susar"))
    for clock in sae.get("clocks", ()):
        case["clocks"].append(new_sae_clock(clock["report"], start, clock["within_hours"], version))


def new_sae_clock(report: str, start: str, within_hours: int, version: int) -> dict[str, Any]:
    """A reporting clock started at ``start`` (ISO), due ``within_hours`` later, not yet sent."""
    due = dt.datetime.fromisoformat(start) + dt.timedelta(hours=int(within_hours))
    return {
        "report": report,
        "started_at": start,
        "due_at": due.isoformat(),
        "version": version,
        "sent_at": None,
        "sent_to": None,
        "reference": None,
        "late": None,
        "delay_hours": None,
        "report_version": None,
    }


def _sae_report_sent(
    record: PatientRecord,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
) -> None:
    case = record.sae_cases.get(facts["case_id"])
    if case is None:
        return
    pending = [
        c
        for c in case["clocks"]
        if c["report"] == facts["report"] and not c["sent_at"] and not c.get("cancelled")
    ]
    pending.sort(key=lambda c: dt.datetime.fromisoformat(c["due_at"]))
    if pending:
        clock = pending[0]
    else:  # a follow-up report without a clock (new information sent of the site's own accord)
        clock = {"report": facts["report"], "started_at": None, "due_at": None, "version": None}
        case["clocks"].append(clock)
    clock.update(
        sent_at=occurred_at,
        sent_to=facts.get("sent_to"),
        reference=facts.get("reference"),
        report_version=version,
        late=False,
        delay_hours=None,
    )
    judge_sent(clock)


def judge_sent(clock: dict[str, Any]) -> None:
    """A sent report's lateness against its clock (recorded, never refused)."""
    if not clock.get("sent_at"):
        return
    clock["late"], clock["delay_hours"] = False, None
    if clock.get("due_at") is not None:
        delay = dt.datetime.fromisoformat(clock["sent_at"]) - dt.datetime.fromisoformat(
            clock["due_at"]
        )
        if delay > dt.timedelta(0):
            clock["late"] = True
            clock["delay_hours"] = round(delay.total_seconds() / 3600, 2)


def _follow_up_visit(
    record: PatientRecord,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
) -> None:
    fu = record.follow_up
    fu.setdefault("visits", {})[facts["visit"]] = {
        "visit": facts["visit"],
        "occurred_at": occurred_at,
        "version": version,
        "target_on": outcome.get("target_on"),
        "window_start": outcome.get("window_start"),
        "window_end": outcome.get("window_end"),
        "in_window": outcome.get("in_window"),
        "days_outside_window": outcome.get("days_outside_window"),
        "disease_status": facts.get("disease_status"),
        "b_cell_aplasia": facts.get("b_cell_aplasia"),
        "new_malignancy": facts.get("new_malignancy"),
    }
    fu["consecutive_missed"] = 0
    fu["lost"] = False
    if "relapse" in outcome and not fu.get("relapse"):
        fu["relapse"] = {**outcome["relapse"], "occurred_at": occurred_at, "visit": facts["visit"]}


def _missed_visit(
    record: PatientRecord,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
) -> None:
    fu = record.follow_up
    fu.setdefault("missed", {})[facts["visit"]] = {
        "visit": facts["visit"],
        "reason": facts.get("missed_reason"),
        "occurred_at": occurred_at,
        "version": version,
    }
    fu["consecutive_missed"] = int(outcome.get("consecutive_missed", 0))
    fu["lost"] = bool(outcome.get("lost_to_follow_up"))


def _death(
    record: PatientRecord,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    occurred_at: str,
    version: int,
) -> None:
    """A death with a structured cause (a death recorded with free text only changes nothing
    here: stores of the previous release replay as they did)."""
    if not outcome:
        return
    record.death = {
        "occurred_at": occurred_at,
        "version": version,
        "cause": facts.get("cause"),
        "cause_of_death": facts.get("cause_of_death"),
        "aware_at": facts.get("aware_at"),
        "days_after_d1": outcome.get("days_after_d1"),
        "within_trm_window": outcome.get("within_trm_window"),
    }
    tox = record.toxicities.get(outcome.get("toxicity_id") or "")
    if tox is not None:
        tox.ae = dict(facts.get("adverse_event_now") or tox.ae or {})
        tox.ae["outcome"] = "fatal"
        tox.versions.append(version)
        if outcome.get("closes_episode") and tox.open:
            tox.grade = 5
            tox.worst_grade = 5
            tox.fatal = True
            tox.resolved_at = occurred_at
            tox.opens_hold = False
            if tox.id in record.open_ids:
                record.open_ids.remove(tox.id)
            record._note_worst(tox)
    if "sae" in outcome:
        _open_sae(record, outcome["sae"], occurred_at, version)


_AFTER_COURSE: dict[
    str, Callable[[PatientRecord, dict[str, Any], dict[str, Any], str, int], None]
] = {
    Trigger.RECORD_FOLLOW_UP: _follow_up_visit,
    Trigger.RECORD_MISSED_VISIT: _missed_visit,
    Trigger.RECORD_SAE_REPORT: _sae_report_sent,
    Trigger.RECORD_DEATH: _death,
}


def apply_correction(
    record: PatientRecord,
    *,
    corrects: int,
    trigger: str,
    facts: dict[str, Any],
    outcome: dict[str, Any],
    changes: dict[str, Any],
    reason: str,
    occurred_at: str,
    version: int,
) -> None:
    """A correction re-states the facts of an earlier event; the state does not move."""
    record.version = version
    record.corrections.append(
        {
            "version": version,
            "corrects": corrects,
            "trigger": trigger,
            "changes": changes,
            "reason": reason,
            "occurred_at": occurred_at,
        }
    )
    if trigger in (Trigger.SCREEN, Trigger.RESCREEN):
        record.screening = facts["screening"]
        record.eligible = bool(outcome.get("eligible"))
        record.consent_on_file = bool(outcome.get("consent_on_file"))
    elif trigger == Trigger.RECORD_APHERESIS:
        record.apheresis_date = facts.get("apheresis_date")
    elif trigger in INFUSION_TRIGGERS:
        for course in record.courses:
            for f in course.fractions:
                if f.version == corrects:
                    gate = outcome.get("pre_infusion_gate")
                    _recorrect_temperature(
                        record,
                        corrects,
                        facts,
                        gate.get("failed_criteria", ()) if isinstance(gate, dict) else (),
                        f.occurred_at,
                    )
                    f.cells = outcome["cells"]
                    f.dose = facts["dose"]
                    f.given_on = facts["infusion_date"]
                    f.planned_cells = outcome["planned_cells"]
                    f.deviations = list(outcome.get("deviations", []))
                    if f.day == 1:
                        course.weight_kg = outcome["weight_kg"]
                        course.planned_total = outcome["planned_total_cells"]
                        course.fraction_plan = list(outcome["fraction_plan"])
                        course.started_on = facts["infusion_date"]
                    _restate_deviations(record, course, f, trigger, facts.get("deviation_reason"))
        # A corrected D1 whose plan changed re-planned the course: each other recorded fraction
        # as judged again against the new plan (``commands.replan_course``).
        for entry in outcome.get("replanned", ()):
            _replan_fraction(record, entry)
    elif trigger == Trigger.REPORT_TOXICITY:
        _correct_toxicity_report(record, corrects, facts, outcome)
        _correct_adverse_event(record, corrects, outcome)
    elif trigger == Trigger.RECORD_SAE_REPORT:
        _correct_sae_report(record, corrects, facts)
    elif trigger == Trigger.ASSESS_PRE_INFUSION:
        # the temperature kept for the gate follows the corrected observations (issue 20)
        fever = _recorrect_temperature(
            record, corrects, facts, outcome.get("failed_criteria", ()), outcome.get("occurred_at")
        )
        if outcome.get("operative"):
            # a corrected bedside assessment the next fraction still waits on: the hold
            # follows the corrected observations (held, or lifted)
            record.pre_infusion_hold = _hold_of(
                outcome, corrects, str(outcome.get("occurred_at")), fever, facts
            )
    elif trigger == Trigger.ASSESS_RESPONSE:
        number = record.index.get(corrects, {}).get("course")
        for course in record.courses:
            if course.number == number:
                course.response = outcome["response"]
                course.computed_response = outcome["computed_response"]
                course.mrd_status = outcome.get("mrd_status")


def _restate_deviations(
    record: PatientRecord, course: Course, f: Fraction, trigger: str, reason: str | None
) -> None:
    """The record's deviations of fraction ``f`` are its deviations now (moved to the end)."""
    record.deviations = [d for d in record.deviations if d["version"] != f.version] + [
        {
            "version": f.version,
            "trigger": trigger,
            "course": course.number,
            "deviation": text,
            "reason": reason,
            "occurred_at": f.occurred_at,
        }
        for text in f.deviations
    ]


def _replan_fraction(record: PatientRecord, entry: dict[str, Any]) -> None:
    for course in record.courses:
        for f in course.fractions:
            if f.version == entry["version"]:
                f.cells = entry["cells"]
                f.planned_cells = entry["planned_cells"]
                f.deviations = list(entry["deviations"])
                _restate_deviations(
                    record, course, f, f"infuse_d{f.day}", entry.get("deviation_reason")
                )
                return


def _correct_toxicity_report(
    record: PatientRecord, corrects: int, facts: dict[str, Any], outcome: dict[str, Any]
) -> None:
    """The episode shows every corrected fact of its report: kind and term, and -- when the
    report is the episode's latest -- grade, scale and report; its onset when the report opened
    the episode; worst grade and severity re-derived from all its reports."""
    entry = record.index.get(corrects)
    tox = record.toxicities.get(entry.get("toxicity_id", "")) if entry else None
    if entry is None or tox is None:
        return
    entry["grade"] = outcome["grade"]
    entry["severe"] = bool(outcome["severe"])
    if isinstance(facts.get("_occurred_at"), str) and "occurred_at" in entry:
        entry["occurred_at"] = facts["_occurred_at"]
    reports = [
        v for v in tox.versions if record.index.get(v, {}).get("trigger") == Trigger.REPORT_TOXICITY
    ]
    if not reports or corrects == max(reports):
        tox.term = outcome.get("term")
        tox.grade = outcome["grade"]
        tox.scale = outcome["scale"]
        tox.scale_version = outcome["scale_version"]
        tox.opens_hold = outcome["opens_hold"] and tox.open
        tox.report = facts["toxicity"]
    if reports and corrects == min(reports) and isinstance(facts.get("_occurred_at"), str):
        tox.onset = facts["_occurred_at"]
    if tox.kind != outcome["kind"]:
        # Only a history recorded before such corrections were refused (commands: a correction
        # keeps the episode's kind): the record still shows what the correction says.
        tox.kind = outcome["kind"]
    graded = [record.index[v] for v in reports]
    if graded and all("grade" in e and "severe" in e for e in graded):
        tox.worst_grade = max(int(e["grade"]) for e in graded)
        tox.severe = any(bool(e["severe"]) for e in graded)
    else:  # reports indexed before their grades were kept
        tox.worst_grade = (
            outcome["grade"] if len(reports) <= 1 else max(tox.worst_grade, outcome["grade"])
        )
        tox.severe = outcome["severe"] if len(reports) <= 1 else tox.severe or outcome["severe"]
    record._reindex()  # its kind or worst grade may have changed (a course's worst may fall)


def _correct_adverse_event(record: PatientRecord, corrects: int, outcome: dict[str, Any]) -> None:
    """A corrected report's adverse-event facts (issue 16): the episode's AE facts and its
    safety case as the correction decided them (``follow_up.corrected_sae_case``)."""
    if "adverse_event_now" not in outcome:
        return  # a correction of a report without adverse-event facts, or from before
    entry = record.index.get(corrects) or {}
    tox = record.toxicities.get(entry.get("toxicity_id", ""))
    if tox is None:
        return
    tox.ae = dict(outcome["adverse_event_now"]) or None
    case = outcome.get("sae_case")
    if case is not None:
        record.sae_cases[tox.id] = {
            **case,
            "seriousness": list(case.get("seriousness", ())),
            "clocks": [dict(c) for c in case.get("clocks", ())],
        }


def _correct_sae_report(record: PatientRecord, corrects: int, facts: dict[str, Any]) -> None:
    """A corrected safety report: to whom and with which reference it was sent, and when (its
    lateness judged again against its clock)."""
    case = record.sae_cases.get(str(facts.get("case_id")))
    if case is None:
        return
    for clock in case.get("clocks", ()):
        if clock.get("report_version") == corrects:
            clock["sent_to"] = facts.get("sent_to")
            clock["reference"] = facts.get("reference")
            if isinstance(facts.get("_occurred_at"), str):
                clock["sent_at"] = facts["_occurred_at"]
            judge_sent(clock)
            return


#: Moves that change the record's product (only once a collection is on record).
_PRODUCT_EFFECTS = frozenset(
    {"record_apheresis", "repeat_apheresis", "start_manufacture", "release_product"}
    | {t.value for t in INFUSION_TRIGGERS}
)


def opened_clinical(query: Mapping[str, Any]) -> str | None:
    """When a query was opened in clinical time (its age counts from it); a query kept by an
    older record without it: its record time."""
    when = query.get("opened_occurred_at") or query.get("opened_at")
    return None if when is None else str(when)


def opened_instant(query: Mapping[str, Any]) -> dt.datetime | None:
    """:func:`opened_clinical` as an instant (a time without an offset: UTC), to compare the
    clinical times of queries entered in different offsets."""
    when = opened_clinical(query)
    if when is None:
        return None
    try:
        at = dt.datetime.fromisoformat(when)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
