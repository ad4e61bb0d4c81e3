"""The course state machine: the transition table, its named rules, and guarded dry runs.

One ``transitions.Machine`` is built per protocol version, once, with ``model=None``. A move is
checked by dry-running its trigger on a throwaway :class:`Probe` that holds the current state and
the facts the rules read (see ``../shared/reference/design-notes.md``). Conditions are names of
rules (methods of the probe), so the table below *is* the protocol, and the diagram shows them.

Facts are plain JSON values, recorded in each event, so any recorded move can be re-checked later
against the rules of its own protocol version or of another one (conformance replay).
"""

from __future__ import annotations

import datetime as dt
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from transitions import Machine, MachineError
from transitions.core import Condition, EventData, Transition

from . import dosing, product
from .eligibility import eligibility_failures, evaluate_eligibility, parse_screening
from .parameters import ProtocolParameters
from .pre_infusion import NEXT_DAY, WINDOW_FACT, gate_problems
from .response import check_clinician_response, classify_response, parse_response_assessment
from .states import FOLLOW_UP, INFUSED, NON_TERMINAL, ON_TREATMENT, State, Trigger
from .toxicity import ToxicityGrade, grade_toxicity, parse_toxicity_report

# Dry runs are questions, not moves: the library logs every trigger at INFO, which would flood a
# server's log (and cost more than the guard itself). Only its warnings matter here.
logging.getLogger("transitions").setLevel(logging.WARNING)

S = State
T = Trigger

# ----------------------------------------------------------------------------------------------
# Rules: each is a named check on a probe, with a message in words a clinician understands.
# ----------------------------------------------------------------------------------------------


@attrs.frozen
class Rule:
    name: str
    #: What the rule requires, as a sentence (shown in ``protocol show`` and in the docs).
    requires: str
    check: Callable[[Probe], bool]
    #: Why it refused, for these facts.
    explain: Callable[[Probe], str]


RULES: dict[str, Rule] = {}
#: Rules that are also methods of :class:`Probe` (set by :func:`rule`).
_RULE_METHODS: set[str] = set()
#: The function behind each of those methods (what ``getattr(probe, name)`` binds).
_RULE_FUNCTIONS: dict[str, Callable[[Probe], bool]] = {}


def rule(
    requires: str, explain: Callable[[Probe], str]
) -> Callable[[Callable[[Probe], bool]], Rule]:
    def register(check: Callable[[Probe], bool]) -> Rule:
        r = Rule(name=check.__name__, requires=requires, check=check, explain=explain)
        RULES[r.name] = r
        # transitions resolves a condition name with getattr(probe, name): a method of the
        # class is found directly (``Probe.__getattr__`` answers for rules registered on the fly).
        if r.name not in Probe.__dict__ or r.name in _RULE_METHODS:
            setattr(Probe, r.name, check)
            _RULE_METHODS.add(r.name)
            _RULE_FUNCTIONS[r.name] = check
        return r

    return register


class Probe:
    """A throwaway model for one dry run: the state, the facts, the protocol parameters.

    With ``hypothetical=True`` the rules that read the command's own payload (cell count, reason,
    date, clinician response) are taken as satisfiable: that answers "which moves are allowed now".
    """

    __slots__ = ("_cache", "facts", "hypothetical", "params", "state")

    def __init__(
        self,
        state: str,
        facts: Mapping[str, Any],
        params: ProtocolParameters,
        *,
        hypothetical: bool = False,
        cache: dict[str, Any] | None = None,
    ) -> None:
        self.state = state
        self.facts = facts
        self.params = params
        self.hypothetical = hypothetical
        #: What the rules computed from the facts; ``cache`` may seed it with the parsed form of
        #: facts the caller has just parsed (``screening_data``, ``assessment_data``,
        #: ``toxicity_report``: exactly what parsing the facts' JSON again gives).
        self._cache: dict[str, Any] = {} if cache is None else cache

    def __getattr__(self, name: str) -> Callable[[], bool]:
        # transitions resolves condition names with getattr(model, name): answer with the rule.
        rule_ = RULES.get(name)
        if rule_ is None:
            raise AttributeError(name)
        return lambda: rule_.check(self)

    # -- helpers the rules share --------------------------------------------------------------
    def has_reason(self) -> bool:
        if self.hypothetical and "reason" not in self.facts:
            return True
        reason = self.facts.get("reason")
        return isinstance(reason, str) and reason.strip() != ""

    def has_deviation_reason(self) -> bool:
        reason = self.facts.get("deviation_reason")
        return isinstance(reason, str) and reason.strip() != ""

    def payload_unknown(self, key: str) -> bool:
        return self.hypothetical and key not in self.facts

    def eligibility(self) -> Any:
        cache = self._cache
        result = cache.get("eligibility")
        if result is None:
            data = cache.get("screening_data")
            if data is None:
                data = parse_screening(self.facts["screening"])
            day = dt.date.fromisoformat(self.facts["screening_date"])
            result = cache["eligibility"] = evaluate_eligibility(data, day, self.params)
        return result

    def eligibility_failures(self) -> tuple[str, ...]:
        """The failed criteria's ids (``eligibility().failed``) without their sentences."""
        cache = self._cache
        failed: tuple[str, ...] | None = cache.get("eligibility_failures")
        if failed is None:
            result = cache.get("eligibility")
            if result is not None:
                failed = tuple(c.id for c in result.failed)
            else:
                data = cache.get("screening_data")
                if data is None:
                    data = cache["screening_data"] = parse_screening(self.facts["screening"])
                day = dt.date.fromisoformat(self.facts["screening_date"])
                failed = eligibility_failures(data, day, self.params)
            cache["eligibility_failures"] = failed
        return failed

    def schedule_problem(self) -> str | None:
        if "schedule" not in self._cache:
            self._cache["schedule"] = schedule_problem(self.facts, self.params)
        result: str | None = self._cache["schedule"]
        return result

    def dose_problems(self) -> list[str]:
        if "dose" not in self._cache:
            weight = self.facts.get("weight_kg")
            plan = self.course_plan() if weight is not None else None
            problems = dose_problems(self.facts, self.params, plan=plan)
            if "bag" in self.facts:  # the count given at the bedside against the bag's label
                count = product.count_problem(self.facts, self.params.bag_count_tolerance)
                if count:
                    problems.append(count)
            self._cache["dose"] = problems
        result: list[str] = self._cache["dose"]
        return result

    def course_plan(self) -> dosing.CoursePlan:
        """The course's plan from the facts' body weight (``facts["weight_kg"]``)."""
        plan: dosing.CoursePlan | None = self._cache.get("plan")
        if plan is None:
            plan = self._cache["plan"] = dosing.plan_course(self.facts["weight_kg"], self.params)
        return plan

    def gate_problems(self) -> list[str]:
        """Why the pre-infusion gate refuses this fraction (issue 20; empty: it does not)."""
        if "gate" not in self._cache:
            self._cache["gate"] = gate_problems(self.facts, self.params)
        result: list[str] = self._cache["gate"]
        return result

    def deviations(self, trigger: str) -> list[str]:
        """Protocol deviations of an allowed infusion (reuses what the rules computed)."""
        if not trigger.startswith("infuse_d"):
            return []
        schedule = self.schedule_problem()
        return (
            ([schedule] if schedule else [])
            + list(self.dose_problems())
            + list(self.gate_problems())
        )

    def response(self) -> Any:
        cache = self._cache
        result = cache.get("response")
        if result is None:
            assessment = cache.get("assessment_data")
            if assessment is None:
                assessment = parse_response_assessment(self.facts["assessment"])
            result = cache["response"] = classify_response(assessment, self.params)
        return result

    def toxicity_grade(self) -> ToxicityGrade:
        """The grade of the reported toxicity (``facts["toxicity"]``)."""
        cache = self._cache
        grade: ToxicityGrade | None = cache.get("toxicity_grade")
        if grade is None:
            report = cache.get("toxicity_report")
            if report is None:
                report = parse_toxicity_report(self.facts["toxicity"])
            grade = cache["toxicity_grade"] = grade_toxicity(report)
        return grade


def _date(value: Any) -> dt.date | None:
    return dt.date.fromisoformat(value) if isinstance(value, str) else None


# -- screening ----------------------------------------------------------------------------------


def _explain_eligible(p: Probe) -> str:
    return "not eligible: " + "; ".join(p.eligibility().reasons())


@rule("every inclusion criterion is met and no exclusion criterion applies", _explain_eligible)
def eligible(p: Probe) -> bool:
    if p.hypothetical and "screening" not in p.facts:  # payload unknown
        return True
    return not p.eligibility_failures()


# -- apheresis ----------------------------------------------------------------------------------


@rule(
    "signed written informed consent is on file",
    lambda p: "no signed informed consent is on file (record it at screening)",
)
def consent_on_file(p: Probe) -> bool:
    return p.facts.get("consent_on_file") is True


@rule(
    "no contraindication to apheresis and cell isolation",
    lambda p: "a contraindication to apheresis and cell isolation was reported",
)
def no_apheresis_contraindication(p: Probe) -> bool:
    if p.hypothetical and "apheresis_contraindication" not in p.facts:  # payload unknown
        return True
    return p.facts.get("apheresis_contraindication") is False


# -- infusions ----------------------------------------------------------------------------------


def _holding(p: Probe) -> list[Mapping[str, Any]]:
    hold_grade = p.params.hold_grade
    return [t for t in p.facts.get("open_toxicities", ()) if t["grade"] >= hold_grade(t["kind"])]


def _explain_hold(p: Probe) -> str:
    holding = _holding(p)
    held = ", ".join(f"{t['kind']} grade {t['grade']} ({t['id']})" for t in holding)
    then = [t for t in holding if t.get("resolved_at")]
    if then and len(then) == len(holding):  # resolved since: open at the fraction's time
        until = ", ".join(f"{t['id']} resolved at {t['resolved_at']}" for t in then)
        return (
            f"a toxicity hold was open at the time of this fraction: {held} ({until}, after "
            "it); a fraction is given after the hold resolved"
        )
    return f"a toxicity hold is open: {held}; resolve it before the next fraction"


@rule("no toxicity hold is open (CRS, ICANS or other toxicity at the hold grade)", _explain_hold)
def no_open_hold(p: Probe) -> bool:
    held = p.facts.get("open_toxicities", ())
    if type(held) is list and not held:  # the common case: nothing open
        return True
    return not _holding(p)


@rule(
    "the remaining fractions of this course have not been cancelled",
    lambda p: "the remaining fractions of this course were cancelled",
)
def remaining_fractions_not_cancelled(p: Probe) -> bool:
    return not p.facts.get("fractions_cancelled", False)


def schedule_problem(facts: Mapping[str, Any], params: ProtocolParameters) -> str | None:
    """Why an infusion date is off the protocol's schedule, or None when it is on schedule."""
    day = facts["day"]
    given = _date(facts.get("infusion_date"))
    previous = _date(facts.get("previous_date"))
    if given is None or previous is None:
        return None
    gap = (given - previous).days
    if day == 1:
        if gap < 0:
            return f"D1 on {given} is before apheresis on {previous}"
        return None
    if gap != params.fraction_interval_days:
        return (
            f"D{day} on {given} is {gap} day(s) after D{day - 1} on {previous}; "
            f"the protocol gives it on the next calendar day"
        )
    return None


def dose_problems(
    facts: Mapping[str, Any],
    params: ProtocolParameters,
    *,
    plan: dosing.CoursePlan | None = None,
) -> list[str]:
    """Why a fraction's cell count is outside tolerance of its plan (empty when within).
    ``plan``: the course plan of ``facts["weight_kg"]`` under ``params``, when already made."""
    cells = facts.get("cells")
    weight = facts.get("weight_kg")
    if cells is None or weight is None:
        return []
    day = facts["day"]
    if plan is None:
        plan = dosing.plan_course(weight, params)
    planned = plan.fraction_cells[day - 1]
    tol = params.dose_tolerance
    problems = []
    if not dosing.within_tolerance(planned, cells, tol):
        dev = dosing.relative_deviation(planned, cells)
        problems.append(
            f"D{day} delivers {cells:.3g} cells, {dev:+.0%} against the planned {planned:.3g} "
            f"({params.fractions[day - 1]:.0%} of {params.cells_per_kg:.3g}/kg x {weight:g} kg); "
            f"tolerance is ±{tol:.0%}"
        )
    total = facts.get("delivered_before", 0.0) + cells
    if not dosing.not_above_plan(plan.total_cells, total, tol):
        problems.append(
            f"the course total would be {total:.3g} cells, above the planned "
            f"{plan.total_cells:.3g} by more than {tol:.0%}"
        )
    return problems


@rule(
    "the fraction is given on the calendar day after the previous one "
    "(D1 not before apheresis), or a deviation reason is recorded",
    lambda p: f"{p.schedule_problem()}; record a deviation reason to proceed",
)
def on_schedule_or_deviation(p: Probe) -> bool:
    if p.hypothetical and "infusion_date" not in p.facts:  # payload unknown
        return True
    return p.schedule_problem() is None or p.has_deviation_reason()


def dose_mix_up(
    facts: Mapping[str, Any],
    params: ProtocolParameters,
    *,
    plan: dosing.CoursePlan | None = None,
) -> str | None:
    """The likely unit mix-up behind a fraction's count (``dosing.unit_mix_up``), or None."""
    cells = facts.get("cells")
    weight = facts.get("weight_kg")
    if not isinstance(cells, int | float) or not isinstance(weight, int | float) or weight <= 0:
        return None
    dose = facts.get("dose")
    value, unit = (
        (dose["value"], dose["unit"])
        if isinstance(dose, Mapping) and dose.get("unit") in dosing.CELL_UNITS
        else (cells, "cells")
    )
    if plan is None:
        plan = dosing.plan_course(weight, params)
    planned = plan.fraction_cells[facts["day"] - 1]
    return dosing.unit_mix_up(value, unit, weight, planned, params.dose_tolerance)


def _unusual_dose_unconfirmed(p: Probe) -> str | None:
    """The likely unit mix-up of this fraction when the clinician has not confirmed the dose."""
    if p.facts.get("confirm_unusual_dose") is True:
        return None
    weight = p.facts.get("weight_kg")
    plan = p.course_plan() if isinstance(weight, int | float) and weight > 0 else None
    return dose_mix_up(p.facts, p.params, plan=plan)


def _explain_dose(p: Probe) -> str:
    problems = "; ".join(p.dose_problems())
    mix_up = _unusual_dose_unconfirmed(p)
    if mix_up is not None:
        return (
            f"{mix_up}: check the value and its unit and send the fraction again ({problems}); "
            "a deviation reason alone does not record a likely unit mix-up: if this dose was "
            "really given, send confirm_unusual_dose: true with a deviation reason"
        )
    return problems + "; record a deviation reason to proceed"


@rule(
    "the cell count is within tolerance of the planned fraction and the course total not above "
    "plan by more than the tolerance (and, for a bag, of its labelled count), or a deviation "
    "reason is recorded; a count that reads as a unit mix-up (cells vs cells/kg, a power of "
    "ten) also needs confirm_unusual_dose",
    _explain_dose,
)
def dose_within_tolerance_or_deviation(p: Probe) -> bool:
    if p.hypothetical and "cells" not in p.facts:  # payload unknown
        return True
    problems = p.dose_problems()
    if not problems:
        return True
    return p.has_deviation_reason() and _unusual_dose_unconfirmed(p) is None


@rule(
    "the course's body weight is known (given with D1)",
    lambda p: "no body weight for this course: give the weight with D1",
)
def weight_known(p: Probe) -> bool:
    if p.hypothetical and "weight_kg" not in p.facts:  # payload unknown
        return True
    return isinstance(p.facts.get("weight_kg"), (int, float))


# -- the pre-infusion gate (issue 20) -------------------------------------------------------------


@rule(
    "the pre-infusion observations meet the gate (temperature in the window before the fraction "
    "not above the limit, room-air SpO2 not below the limit, no vasopressors, no uncontrolled "
    "active infection) where the protocol version judges them, are given where it requires "
    "them, and no bedside assessment holds the fraction; or a deviation reason is recorded",
    lambda p: (
        "; ".join(p.gate_problems())
        + "; re-assess the patient, or record a deviation reason to give it anyway"
    ),
)
def pre_infusion_criteria_met(p: Probe) -> bool:
    facts = p.facts
    if p.hypothetical and "pre_infusion" not in facts:  # payload unknown
        return True
    if (
        "pre_infusion" not in facts
        and "pre_infusion_hold" not in facts
        and WINDOW_FACT not in facts
    ):
        required = p.params.pre_infusion_required_days
        if not required or facts.get("day") not in required:  # the common case: nothing to judge
            return True
    return not p.gate_problems() or p.has_deviation_reason()


@rule(
    "the assessment is of the course's next fraction, whose remaining fractions are not cancelled",
    lambda p: (
        f"D{p.facts.get('day')} is not the next fraction: the next is D{p.facts.get('next_day')}"
        if p.facts.get("next_day") != p.facts.get("day")
        else "the remaining fractions of this course were cancelled"
    ),
)
def assessment_of_next_fraction(p: Probe) -> bool:
    facts = p.facts
    if facts.get("fractions_cancelled"):
        return False
    if p.hypothetical and "day" not in facts:  # payload unknown
        return facts.get("next_day") in (1, 2, 3)
    return facts.get("day") == facts.get("next_day") == NEXT_DAY.get(p.state)


# -- the cell product: manufacture, release, the bedside check -----------------------------------


def _explain_bedside(p: Probe) -> str:
    return product.bedside_problem(p.facts, p.params.thaw_limit_minutes) or ""


@rule(
    "when the patient's product is tracked: the bag is of this patient's released lot for this "
    "course and this fraction, not infused yet, not expired, infused within the thaw limit, and "
    "verified at the bedside by a second person",
    _explain_bedside,
)
def product_identity_verified(p: Probe) -> bool:
    facts = p.facts
    if "bag_id" not in facts:
        if not facts.get("product_tracked"):
            return True  # a course whose product is not tracked (no collection id on record)
        if p.hypothetical:
            return bool(facts.get("bags_available"))
        return False
    return product.bedside_problem(facts, p.params.thaw_limit_minutes) is None


@rule(
    "a collection with an identifier (ISBT 128 DIN or the site's id) is on record",
    lambda p: (
        "no collection with an identifier is on record: record the apheresis with its din "
        "or collection_id"
    ),
)
def collection_on_record(p: Probe) -> bool:
    return bool(p.facts.get("collections"))


def _lots_of_course(p: Probe, status: str) -> list[str]:
    number = p.facts.get("course_number")
    return [
        lot["lot_id"]
        for lot in p.facts.get("lots", ())
        if lot["status"] == status and lot.get("course_number", number) == number
    ]


@rule(
    "no lot of this course is in manufacture or released",
    lambda p: (
        "lot(s) "
        + ", ".join(_lots_of_course(p, "in_manufacture") + _lots_of_course(p, "released"))
        + " of this course are in manufacture or released: record its release decision first"
    ),
)
def no_lot_in_manufacture(p: Probe) -> bool:
    return not (_lots_of_course(p, "in_manufacture") or _lots_of_course(p, "released"))


def _explain_lot(p: Probe) -> str:
    status = p.facts.get("lot_status")
    return (
        f"lot {p.facts.get('lot_id')} is {status}, not in manufacture: its release decision is "
        "already recorded"
    )


@rule("the lot is in manufacture (no release decision recorded yet)", _explain_lot)
def lot_in_manufacture(p: Probe) -> bool:
    if "lot_status" not in p.facts:
        if p.hypothetical:
            return any(lot["status"] == "in_manufacture" for lot in p.facts.get("lots", ()))
        return False
    return bool(p.facts["lot_status"] == "in_manufacture")


def _failed_tests(p: Probe) -> list[str]:
    return [t["name"] for t in p.facts.get("tests", ()) if not t.get("passed")]


@rule(
    "every release test passed, or the out-of-specification release is a documented exception "
    "(exception_reason)",
    lambda p: (
        "release tests failed: "
        + ", ".join(_failed_tests(p))
        + "; an out-of-specification product is released only as a documented exception: give "
        "exception_reason, or record the decision as rejected"
    ),
)
def release_tests_passed_or_exception(p: Probe) -> bool:
    facts = p.facts
    if "tests" not in facts or facts.get("decision") != "released" or not _failed_tests(p):
        return True
    reason = facts.get("exception_reason")
    return isinstance(reason, str) and reason.strip() != ""


@rule(
    "the patient's last lot failed (rejected at release)",
    lambda p: (
        "a new apheresis follows a failed manufacture; the last lot is "
        + (
            f"{p.facts['lots'][-1]['lot_id']} ({p.facts['lots'][-1]['status']})"
            if p.facts.get("lots")
            else "not on record"
        )
    ),
)
def manufacture_failed(p: Probe) -> bool:
    lots: list[dict[str, Any]] = p.facts.get("lots") or []
    return bool(lots) and lots[-1]["status"] == "rejected"


# -- toxicity -----------------------------------------------------------------------------------


@rule(
    "the toxicity named is open",
    lambda p: (
        f"toxicity {p.facts.get('toxicity_id')!r} is not open; open ones: "
        + (", ".join(t["id"] for t in p.facts.get("open_toxicities", ())) or "none")
    ),
)
def toxicity_is_open(p: Probe) -> bool:
    if p.hypothetical and "toxicity_id" not in p.facts:  # payload unknown
        return bool(p.facts.get("open_toxicities"))
    wanted = p.facts.get("toxicity_id")
    return any(t["id"] == wanted for t in p.facts.get("open_toxicities", ()))


#: Grade 5 is death from the adverse event, in every grading scale used here (CTCAE, ASTCT).
FATAL_GRADE = 5


def _fatal(p: Probe) -> list[Mapping[str, Any]]:
    """The named open episode if it reached grade 5 (death from the toxicity)."""
    wanted = p.facts.get("toxicity_id")
    return [
        t
        for t in p.facts.get("open_toxicities", ())
        if t["id"] == wanted and t["grade"] >= FATAL_GRADE
    ]


@rule(
    "the toxicity named did not reach grade 5 (a death does not resolve)",
    lambda p: (
        f"toxicity {p.facts.get('toxicity_id')!r} reached grade {FATAL_GRADE}: a death from it "
        "does not resolve; record the death (record_death)"
    ),
)
def toxicity_not_fatal(p: Probe) -> bool:
    if p.hypothetical and "toxicity_id" not in p.facts:  # payload unknown
        return True
    return not _fatal(p)


@rule(
    "the patient moves to another site than the one they are at (issue 17)",
    lambda p: (
        f"the patient is already at site {p.facts.get('from_site')!r}: a transfer names "
        "another site"
    ),
)
def site_changes(p: Probe) -> bool:
    if p.hypothetical and "site" not in p.facts:  # payload unknown
        return True
    return bool(p.facts.get("site") != p.facts.get("from_site"))


@rule("a reason is recorded", lambda p: "a reason is required for this move")
def reason_given(p: Probe) -> bool:
    facts = p.facts
    if p.hypothetical and "reason" not in facts:
        return True
    reason = facts.get("reason")
    return isinstance(reason, str) and reason.strip() != ""


@rule(
    "the remaining fractions of this course were cancelled",
    lambda p: (
        "the course's fractions are not complete: give the next fraction, or cancel the "
        "remaining fractions with a reason first"
    ),
)
def remaining_fractions_cancelled(p: Probe) -> bool:
    return bool(p.facts.get("fractions_cancelled", False))


# -- response and decisions ---------------------------------------------------------------------


@rule(
    "a clinician's response that differs from the computed one has a reason",
    lambda p: "; ".join(
        check_clinician_response(
            p.response(), p.facts.get("clinician_response"), p.facts.get("reason")
        )
    ),
)
def clinician_response_consistent(p: Probe) -> bool:
    if p.hypothetical and "assessment" not in p.facts:  # payload unknown
        return True
    return not check_clinician_response(
        p.response(), p.facts.get("clinician_response"), p.facts.get("reason")
    )


def _explain_another_course(p: Probe) -> str:
    response = p.facts.get("response")
    number = p.facts.get("course_number", 0)
    if response == "PR":
        return (
            f"after PR the protocol allows 1 or 2 more courses ({p.params.max_courses_on_pr} in "
            f"all); this patient has had {number}"
        )
    if response in ("CR", "CRi", "NR"):
        return f"after {response} another course is a clinical decision: record the reason"
    return f"no response assessment for course {number}"


@rule(
    "PR: fewer than the maximum number of courses so far; CR/CRi/NR: a clinical decision with a "
    "reason",
    _explain_another_course,
)
def another_course_permitted(p: Probe) -> bool:
    response = p.facts.get("response")
    if response == "PR":
        return int(p.facts.get("course_number", 0)) < p.params.max_courses_on_pr
    if response in ("CR", "CRi", "NR"):
        return p.has_reason()
    return False


def _explain_cease(p: Probe) -> str:
    response = p.facts.get("response")
    if response == "PR":
        return (
            f"after PR in course {p.facts.get('course_number')} the protocol continues with 1 or "
            f"2 more courses (at least {p.params.min_courses_on_pr} in all): ceasing now is a "
            "clinical decision: record the reason"
        )
    return f"after {response} ceasing treatment is a clinical decision: record the reason"


@rule(
    "CR/CRi, or PR before the protocol's further course: a clinical decision with a reason; "
    "NR, or PR after it: always",
    _explain_cease,
)
def cease_permitted(p: Probe) -> bool:
    response = p.facts.get("response")
    if response in ("CR", "CRi"):
        return p.has_reason()
    if response == "PR":
        number = int(p.facts.get("course_number", 0))
        return number >= p.params.min_courses_on_pr or p.has_reason()
    return response == "NR"


def _explain_severe(p: Probe) -> str:
    worst = max((t["grade"] for t in p.facts.get("course_toxicities", ())), default=0)
    return (
        f"discontinuation for toxicity needs a severe toxicity (grade >= {p.params.severe_grade}) "
        f"in this course; the worst recorded is grade {worst}"
    )


@rule(
    "a severe toxicity (grade at or above the severe threshold) was recorded in this course",
    _explain_severe,
)
def severe_toxicity_recorded(p: Probe) -> bool:
    severe = p.params.severe_grade
    return any(t["grade"] >= severe for t in p.facts.get("course_toxicities", ()))


# -- after the course (issue 16) -----------------------------------------------------------------


@rule(
    "a D1 is on record (follow-up visits are counted from the last course's D1)",
    lambda p: "no D1 is on record: follow-up visits are counted from the last course's D1",
)
def follow_up_from_d1(p: Probe) -> bool:
    if p.facts.get("follow_up_from") is None:
        return False
    # "what is allowed now" offers visits during the follow-up, not after death or withdrawal
    # (a visit that happened before them may still be entered: its time is checked)
    return not p.hypothetical or p.state in FOLLOW_UP


def _schedule_names(p: Probe) -> list[str]:
    return [name for name, _day, _window in p.params.follow_up_schedule]


@rule(
    "the visit is one of the protocol version's follow-up schedule (each version defines its own)",
    lambda p: (
        f"visit {p.facts.get('visit')!r} is not in this protocol version's follow-up "
        "schedule; its visits: "
        + ", ".join(
            f"{name} (day {day} +/-{window})" for name, day, window in p.params.follow_up_schedule
        )
    ),
)
def visit_in_schedule(p: Probe) -> bool:
    if "visit" not in p.facts:
        return p.hypothetical  # "what is allowed now": any visit of the schedule
    return p.facts["visit"] in _schedule_names(p)


@rule(
    "a safety case (a serious adverse event, or a death in the treatment-related window) is on "
    "record",
    lambda p: "no safety case is on record: a serious adverse event opens one",
)
def safety_case_on_record(p: Probe) -> bool:
    return bool(p.facts.get("sae_cases"))


# ----------------------------------------------------------------------------------------------
# The transition table: the protocol, declared once.
# ----------------------------------------------------------------------------------------------

_INFUSION_RULES = [
    "no_open_hold",
    "remaining_fractions_not_cancelled",
    "weight_known",
    "on_schedule_or_deviation",
    "dose_within_tolerance_or_deviation",
    "product_identity_verified",
    "pre_infusion_criteria_met",
]
_OBSERVABLE = [*ON_TREATMENT, *FOLLOW_UP]
_AFTER_TREATMENT = [*FOLLOW_UP, S.WITHDRAWN, S.DIED]

TRANSITIONS: list[dict[str, Any]] = [
    # Screening: into `screened` only when eligible, else `screen_failed`.
    {"trigger": T.SCREEN, "source": S.CANDIDATE, "dest": S.SCREENED, "conditions": ["eligible"]},
    {"trigger": T.SCREEN, "source": S.CANDIDATE, "dest": S.SCREEN_FAILED, "unless": ["eligible"]},
    {
        "trigger": T.RESCREEN,
        "source": S.SCREEN_FAILED,
        "dest": S.SCREENED,
        "conditions": ["eligible"],
    },
    {
        "trigger": T.RESCREEN,
        "source": S.SCREEN_FAILED,
        "dest": S.SCREEN_FAILED,
        "unless": ["eligible"],
    },
    # Apheresis.
    {
        "trigger": T.RECORD_APHERESIS,
        "source": S.SCREENED,
        "dest": S.APHERESED,
        "conditions": ["consent_on_file", "no_apheresis_contraindication"],
    },
    # The cell product: manufacture and release while the course waits in `apheresed` (or
    # `continued`, before the next course); a failed manufacture allows a new apheresis.
    {
        "trigger": T.START_MANUFACTURE,
        "source": [S.APHERESED, S.CONTINUED],
        "dest": "=",
        "conditions": ["collection_on_record", "no_lot_in_manufacture"],
    },
    {
        "trigger": T.RELEASE_PRODUCT,
        "source": [S.APHERESED, S.CONTINUED],
        "dest": "=",
        "conditions": ["lot_in_manufacture", "release_tests_passed_or_exception"],
    },
    {
        "trigger": T.REPEAT_APHERESIS,
        "source": [S.APHERESED, S.CONTINUED],
        "dest": "=",
        "conditions": [
            "consent_on_file",
            "no_apheresis_contraindication",
            "manufacture_failed",
            "reason_given",
        ],
    },
    # Infusions: D1 10 %, D2 30 %, D3 60 % on consecutive days.
    {
        "trigger": T.INFUSE_D1,
        "source": [S.APHERESED, S.CONTINUED],
        "dest": S.INFUSED_D1,
        "conditions": _INFUSION_RULES,
    },
    {
        "trigger": T.INFUSE_D2,
        "source": S.INFUSED_D1,
        "dest": S.INFUSED_D2,
        "conditions": _INFUSION_RULES,
    },
    {
        "trigger": T.INFUSE_D3,
        "source": S.INFUSED_D2,
        "dest": S.INFUSED_D3,
        "conditions": _INFUSION_RULES,
    },
    # Toxicity: recorded without changing state; followed up after the end of treatment too.
    {"trigger": T.REPORT_TOXICITY, "source": _OBSERVABLE, "dest": "="},
    {
        "trigger": T.RESOLVE_TOXICITY,
        "source": _OBSERVABLE,
        "dest": "=",
        "conditions": ["toxicity_is_open", "toxicity_not_fatal"],
    },
    {
        "trigger": T.CANCEL_REMAINING_FRACTIONS,
        "source": [S.INFUSED_D1, S.INFUSED_D2],
        "dest": "=",
        "conditions": ["remaining_fractions_not_cancelled", "reason_given"],
    },
    # Response assessment after D3, or after the remaining fractions were cancelled.
    {
        "trigger": T.ASSESS_RESPONSE,
        "source": S.INFUSED_D3,
        "dest": S.ASSESSED,
        "conditions": ["clinician_response_consistent"],
    },
    {
        "trigger": T.ASSESS_RESPONSE,
        "source": [S.INFUSED_D1, S.INFUSED_D2],
        "dest": S.ASSESSED,
        "conditions": ["remaining_fractions_cancelled", "clinician_response_consistent"],
    },
    # Decisions after assessment, by response.
    {
        "trigger": T.CONTINUE_TREATMENT,
        "source": S.ASSESSED,
        "dest": S.CONTINUED,
        "conditions": ["another_course_permitted"],
    },
    {"trigger": T.CEASE, "source": S.ASSESSED, "dest": S.CEASED, "conditions": ["cease_permitted"]},
    {
        "trigger": T.CEASE,
        "source": [S.SCREENED, S.APHERESED, S.CONTINUED],
        "dest": S.CEASED,
        "conditions": ["reason_given"],
    },
    # Discontinuation for severe toxicity (e.g. CRS), from apheresis onwards.
    {
        "trigger": T.DISCONTINUE,
        "source": list(ON_TREATMENT),
        "dest": S.DISCONTINUED,
        "conditions": ["severe_toxicity_recorded", "reason_given"],
    },
    # Withdrawal and death from any non-terminal state, and during the follow-up after the end
    # of treatment (ceased, discontinued), when toxicities are still followed: a death "at any
    # point" is recorded, as is a withdrawal of consent from the follow-up.
    {
        "trigger": T.WITHDRAW,
        "source": [*NON_TERMINAL, *FOLLOW_UP],
        "dest": S.WITHDRAWN,
        "conditions": ["reason_given"],
    },
    {"trigger": T.RECORD_DEATH, "source": [*NON_TERMINAL, *FOLLOW_UP], "dest": S.DIED},
    # After the course (issue 16): follow-up visits (and missed ones) in the follow-up after the
    # end of treatment, and -- a visit that happened before, entered late -- after death or
    # withdrawal (the visit's time is checked against them); safety reports of a serious adverse
    # event whenever its clock runs, death included. None changes the state.
    {
        "trigger": T.RECORD_FOLLOW_UP,
        "source": _AFTER_TREATMENT,
        "dest": "=",
        "conditions": ["follow_up_from_d1", "visit_in_schedule"],
    },
    {
        "trigger": T.RECORD_MISSED_VISIT,
        "source": _AFTER_TREATMENT,
        "dest": "=",
        "conditions": ["follow_up_from_d1", "visit_in_schedule"],
    },
    # A multi-site trial (issue 17): the patient moves to another site (a hospital transfer),
    # with a reason, while their record is open (not after death or withdrawal).
    {
        "trigger": T.TRANSFER_SITE,
        "source": [*NON_TERMINAL, *FOLLOW_UP],
        "dest": "=",
        "conditions": ["site_changes", "reason_given"],
    },
    {
        "trigger": T.RECORD_SAE_REPORT,
        "source": [*_OBSERVABLE, S.WITHDRAWN, S.DIED],
        "dest": "=",
        "conditions": ["safety_case_on_record"],
    },
    # The pre-infusion gate (issue 20): a bedside assessment before the next fraction; a failing
    # one holds the fraction (the state does not change).
    {
        "trigger": T.ASSESS_PRE_INFUSION,
        "source": [S.APHERESED, S.CONTINUED, S.INFUSED_D1, S.INFUSED_D2],
        "dest": "=",
        "conditions": ["assessment_of_next_fraction"],
    },
]

#: Which command (and so which reason policy, payload and event) each trigger belongs to is said
#: by the command registry (``registry.py``), which checks it against this table when it is
#: built; the moves that always need a reason are ``registry.REGISTRY.reason_required``.


def _plain(value: Any) -> Any:
    """transitions treats Enum members as enum states: give it plain strings."""
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value)


class _RuleCondition(Condition):
    """A condition named after a rule, checked on a :class:`Probe` by calling the rule's function
    (the method ``getattr(probe, name)`` would bind) instead of resolving the name per call. Any
    other model, or a machine that sends event data or trigger arguments, takes the library's
    own resolution."""

    def check(self, event_data: EventData) -> bool:
        model = event_data.model
        if type(model) is Probe and not (
            event_data.args or event_data.kwargs or event_data.machine.send_event
        ):
            function = _RULE_FUNCTIONS.get(self.func)  # type: ignore[arg-type]
            if function is not None:
                return bool(function(model) == self.target)
        return bool(super().check(event_data))


class _RuleTransition(Transition):
    condition_cls = _RuleCondition


class _RuleMachine(Machine):
    """The ``transitions`` machine, with conditions named after rules checked directly."""

    transition_cls = _RuleTransition


def build_machine(machine_class: type[Machine] | None = None) -> Machine:
    """The protocol's machine (``machine_class``: another ``Machine`` class, e.g. the library's
    own, to prove the rule conditions answer as the library's name resolution does)."""
    return (machine_class or _RuleMachine)(
        model=None,
        states=[s.value for s in State],
        transitions=[
            {
                **t,
                "trigger": str(t["trigger"]),
                "source": _plain(t["source"]),
                "dest": _plain(t["dest"]),
            }
            for t in TRANSITIONS
        ],
        initial=None,
        auto_transitions=False,
        send_event=False,
    )


# ----------------------------------------------------------------------------------------------
# Dry runs
# ----------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RuleFailure:
    rule: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}


@attrs.frozen(kw_only=True)
class DryRun:
    trigger: str
    source: str
    allowed: bool
    dest: str | None
    failed: tuple[RuleFailure, ...] = ()
    #: Protocol deviations an allowed move carries (documented by a deviation reason).
    deviations: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "source": self.source,
            "allowed": self.allowed,
            "dest": self.dest,
            "failed_rules": [f.to_json() for f in self.failed],
            "deviations": list(self.deviations),
        }


def sources_of(machine: Machine, trigger: str) -> list[str]:
    event = machine.events.get(trigger)
    return list(event.transitions) if event is not None else []


#: A plain machine's transition table, read once: trigger -> source -> [(dest, [(check, target)])].
#: ``dest`` None means "stay" (an internal transition).
_Conditions = tuple[tuple[str, Callable[["Probe"], bool], bool], ...]
_Table = dict[str, dict[str, tuple[tuple[str | None, _Conditions], ...]]]
_TABLES: weakref.WeakKeyDictionary[Machine, tuple[frozenset[str], _Table] | None] = (
    weakref.WeakKeyDictionary()
)


def _plain_table(machine: Machine) -> tuple[frozenset[str], _Table] | None:
    """The machine's own transitions, conditions resolved to the named rules -- or None when the
    machine does more than guard (callbacks, queues, ignored triggers, conditions that are not
    rules): then only the library itself may fire it."""
    try:
        return _TABLES[machine]
    except KeyError:
        pass
    table: tuple[frozenset[str], _Table] | None = _read_table(machine)
    _TABLES[machine] = table
    return table


#: Per state, the moves it has in the machine's order: (trigger, the checks of each of its
#: transitions from the state, in order: ((rule function, expected answer), ...)), or (trigger,
#: None) when the first of them has no rules (the move always fires).
_Checks = tuple[tuple[tuple[Callable[["Probe"], bool], bool], ...], ...]
_StateMoves = dict[str, tuple[tuple[str, _Checks | None], ...]]
_STATE_MOVES: weakref.WeakKeyDictionary[Machine, _StateMoves | None] = weakref.WeakKeyDictionary()
#: The machine asked last and its moves (a weak dictionary costs a weak reference per look-up).
_LAST_STATE_MOVES: tuple[Machine | None, _StateMoves | None] = (None, None)


def _moves_by_state(machine: Machine) -> _StateMoves | None:
    """:func:`_plain_table` indexed by source state (None for a machine the library must fire)."""
    global _LAST_STATE_MOVES
    last = _LAST_STATE_MOVES  # one tuple, read at once (threads may replace it meanwhile)
    if last[0] is machine:  # the usual case: one machine asked again and again
        return last[1]
    try:
        by_state = _STATE_MOVES[machine]
    except KeyError:
        by_state = _state_moves(machine)
        _STATE_MOVES[machine] = by_state
    _LAST_STATE_MOVES = (machine, by_state)
    return by_state


def _state_moves(machine: Machine) -> _StateMoves | None:
    compiled = _plain_table(machine)
    by_state: _StateMoves | None = None
    if compiled is not None:
        lists: dict[str, list[tuple[str, _Checks | None]]] = {}
        for trigger, by_source in compiled[1].items():
            for source, options in by_source.items():
                checks = tuple(
                    tuple((check, target) for _name, check, target in conditions)
                    for _dest, conditions in options
                )
                lists.setdefault(source, []).append((trigger, checks if checks[0] else None))
        by_state = {source: tuple(moves) for source, moves in lists.items()}
    return by_state


def _read_table(machine: Machine) -> tuple[frozenset[str], _Table] | None:
    if (
        machine.has_queue
        or machine.ignore_invalid_triggers
        or machine.prepare_event
        or machine.before_state_change
        or machine.after_state_change
        or machine.finalize_event
        or machine.on_exception
        or machine.on_final
        or machine.send_event
        or machine.model_attribute != "state"
    ):
        return None
    for state in machine.states.values():
        if state.on_enter or state.on_exit or state.ignore_invalid_triggers:
            return None
    table: _Table = {}
    for trigger, event in machine.events.items():
        by_source: dict[str, tuple[tuple[str | None, _Conditions], ...]] = {}
        for source, transitions in event.transitions.items():
            options: list[tuple[str | None, _Conditions]] = []
            for transition in transitions:
                if transition.prepare or transition.before or transition.after:
                    return None
                conditions = []
                for condition in transition.conditions:
                    name = condition.func
                    if not isinstance(name, str) or name not in RULES:
                        return None
                    conditions.append((name, RULES[name].check, bool(condition.target)))
                options.append((transition.dest or None, tuple(conditions)))
            by_source[source] = tuple(options)
        table[trigger] = by_source
    return frozenset(machine.states), table


def dry_run(
    machine: Machine,
    params: ProtocolParameters,
    state: str,
    trigger: str,
    facts: Mapping[str, Any],
    *,
    hypothetical: bool = False,
) -> DryRun:
    """May ``trigger`` happen in ``state`` given ``facts``? The destination, or the failed rules."""
    return dry_run_probe(machine, Probe(state, facts, params, hypothetical=hypothetical), trigger)


def _unknown_move(trigger: str, state: str) -> DryRun:
    return DryRun(
        trigger=trigger,
        source=state,
        allowed=False,
        dest=None,
        failed=(
            RuleFailure(rule="known_move", message=f"{trigger!r} is not a move of this protocol"),
        ),
    )


def _out_of_sequence(machine: Machine, trigger: str, state: str) -> DryRun:
    allowed_from = ", ".join(sources_of(machine, trigger))
    return DryRun(
        trigger=trigger,
        source=state,
        allowed=False,
        dest=None,
        failed=(
            RuleFailure(
                rule="permitted_sequence",
                message=f"{trigger} is not allowed in state {state}; it is allowed from: "
                f"{allowed_from}",
            ),
        ),
    )


def dry_run_probe(machine: Machine, probe: Probe, trigger: str) -> DryRun:
    """:func:`dry_run` on a given probe (whose cache may already hold parsed facts).

    The machine's own transition table is evaluated directly, exactly as ``transitions`` fires a
    trigger (transitions of the source in order, conditions in order, the first transition whose
    conditions all hold wins), without the library's per-trigger machinery. A machine with
    callbacks is fired by the library (:func:`dry_run_by_trigger`).
    """
    compiled = _plain_table(machine)
    if compiled is None or not probe.hypothetical:
        # A move that is about to be recorded (or re-checked by an audit) is fired by the
        # ``transitions`` machine itself: the library is the guard of every recorded move. The
        # direct evaluation below answers the hypothetical questions ("what is allowed now?"),
        # many at a time, and is proven to answer alike (tests/unit/test_machine_direct.py).
        return dry_run_by_trigger(machine, probe, trigger)
    states, table = compiled
    state = probe.state
    by_source = table.get(trigger)
    if by_source is None:
        return _unknown_move(trigger, state)
    if state not in states:
        raise ValueError(f"State '{state}' is not a registered state.")
    options = by_source.get(state)
    if options is None:
        return _out_of_sequence(machine, trigger, state)
    for dest, conditions in options:
        for _name, check, target in conditions:
            if check(probe) != target:
                break
        else:
            if dest is not None:
                probe.state = dest
            deviations = tuple(probe.deviations(trigger)) if not probe.hypothetical else ()
            return DryRun(
                trigger=trigger, source=state, allowed=True, dest=probe.state, deviations=deviations
            )
    failed: dict[str, RuleFailure] = {}
    for _dest, conditions in options:
        for name, check, target in conditions:
            if name not in failed and check(probe) != target:
                failed[name] = RuleFailure(rule=name, message=RULES[name].explain(probe))
    return DryRun(
        trigger=trigger, source=state, allowed=False, dest=None, failed=tuple(failed.values())
    )


def dry_run_by_trigger(machine: Machine, probe: Probe, trigger: str) -> DryRun:
    """The dry run as the library fires it: ``transitions`` runs the trigger on the probe.

    The reference for :func:`dry_run_probe` (a test proves both answer alike), and the path for
    machines that carry callbacks.
    """
    state = probe.state
    event = machine.events.get(trigger)
    if event is None:
        return _unknown_move(trigger, state)
    facts, params, hypothetical = probe.facts, probe.params, probe.hypothetical
    try:
        moved = event.trigger(probe)
    except MachineError:
        return _out_of_sequence(machine, trigger, state)
    if moved:
        deviations = tuple(probe.deviations(trigger)) if not hypothetical else ()
        return DryRun(
            trigger=trigger, source=state, allowed=True, dest=probe.state, deviations=deviations
        )
    failed: dict[str, RuleFailure] = {}
    check = Probe(state, facts, params, hypothetical=hypothetical)
    for transition in event.transitions[state]:
        for condition in transition.conditions:
            name = str(condition.func)
            ok = RULES[name].check(check)
            if ok != condition.target and name not in failed:
                failed[name] = RuleFailure(rule=name, message=RULES[name].explain(check))
    return DryRun(
        trigger=trigger, source=state, allowed=False, dest=None, failed=tuple(failed.values())
    )


def deviations_of(trigger: str, facts: Mapping[str, Any], params: ProtocolParameters) -> list[str]:
    """Protocol deviations carried by an allowed infusion (off schedule or off dose)."""
    if not trigger.startswith("infuse_d"):
        return []
    problems = dose_problems(facts, params)
    if "bag" in facts:
        count = product.count_problem(facts, params.bag_count_tolerance)
        if count:
            problems.append(count)
    schedule = schedule_problem(facts, params)
    if schedule:
        problems.insert(0, schedule)
    problems.extend(gate_problems(facts, params))
    return problems


def allowed_moves(
    machine: Machine, params: ProtocolParameters, state: str, context: Mapping[str, Any]
) -> list[str]:
    """Moves that may happen now, assuming the caller supplies a compliant payload."""
    return allowed_moves_by(machine, params, state, lambda _trigger: context)


def allowed_moves_by(
    machine: Machine,
    params: ProtocolParameters,
    state: str,
    facts_of: Callable[[str], Mapping[str, Any]],
) -> list[str]:
    """:func:`allowed_moves` with the facts of each move (``facts_of(trigger)``, asked only for
    the moves the state has that carry rules). The same answer as a hypothetical
    :func:`dry_run` of every move of the state, without building its report."""
    by_state = _moves_by_state(machine)
    if by_state is None:
        return [
            trigger
            for trigger, event in machine.events.items()
            if state in event.transitions
            and dry_run(
                machine, params, state, trigger, facts_of(trigger), hypothetical=True
            ).allowed
        ]
    moves: list[str] = []
    probe: Probe | None = None
    for trigger, options in by_state.get(state, ()):
        if options is None:  # the first transition has no rules: it always fires
            moves.append(trigger)
            continue
        facts = facts_of(trigger)
        if probe is None:
            probe = Probe(state, facts, params, hypothetical=True)
        elif probe.facts is not facts:
            # a fresh probe for new facts (moves given the very same facts share what the rules
            # computed): only its facts and cache change
            probe.facts = facts
            probe._cache = {}
        for checks in options:
            for check, target in checks:
                if check(probe) != target:
                    break
            else:
                moves.append(trigger)
                break
    return moves


__all__ = [
    "INFUSED",
    "RULES",
    "TRANSITIONS",
    "DryRun",
    "Probe",
    "Rule",
    "RuleFailure",
    "allowed_moves",
    "allowed_moves_by",
    "build_machine",
    "dry_run",
    "dry_run_by_trigger",
    "dry_run_probe",
]
