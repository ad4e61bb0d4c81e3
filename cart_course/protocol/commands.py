"""Commands of the protocol: parse a payload, gather the facts, dry-run the move, say the outcome.

``prepare`` is the whole decision: it returns what to record, or raises :class:`MoveRefusedError`
naming the rules that refused and the moves allowed now. It reads no clock and no store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import dosing
from .eligibility import parse_screening
from .errors import ContextInputError, ProtocolInputError, key_name
from .machine import DryRun, Probe, RuleFailure, schedule_problem
from .parameters import DEFAULT_PARAMETERS
from .record import Course, PatientRecord, Toxicity, evolve
from .response import RESPONSES, classify_response, parse_response_assessment
from .states import INFUSION_TRIGGERS, Trigger
from .toxicity import parse_toxicity_report
from .versions import ProtocolVersion


@attrs.frozen(kw_only=True)
class CommandSpec:
    name: str
    summary: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    reason: str = "optional"  # "required" | "optional" | "when the rules say so"

    @property
    def keys(self) -> tuple[str, ...]:
        return self.required + self.optional


COMMANDS: dict[str, CommandSpec] = {
    c.name: c
    for c in (
        CommandSpec(
            name="screen",
            summary="Screen a new patient: eligible -> screened, otherwise screen_failed.",
            required=("screening",),
        ),
        CommandSpec(
            name="rescreen",
            summary="Screen a screen-failed patient again.",
            required=("screening",),
        ),
        CommandSpec(
            name="record_apheresis",
            summary="T-cell collection (apheresis) done.",
            required=("apheresis_contraindication",),
            optional=("product_id",),
        ),
        CommandSpec(
            name="give_infusion",
            summary="A CAR-T fraction given: day 1 (10 %), 2 (30 %) or 3 (60 %) of the course dose.",
            required=("day", "cells"),
            optional=("weight", "product_lot", "deviation_reason"),
        ),
        CommandSpec(
            name="report_toxicity",
            summary="CRS, ICANS or another toxicity observed (a new episode, or an update of an "
            "open one by its toxicity_id). The state does not change.",
            required=("toxicity",),
            optional=("toxicity_id",),
        ),
        CommandSpec(
            name="resolve_toxicity",
            summary="An open toxicity resolved (lifts the hold it caused).",
            required=("toxicity_id",),
        ),
        CommandSpec(
            name="cancel_remaining_fractions",
            summary="The course's remaining fractions will not be given (e.g. after toxicity).",
            reason="required",
        ),
        CommandSpec(
            name="assess_response",
            summary="Response assessment of the course: CR, CRi, PR or NR (computed; a clinician's "
            "differing response needs a reason).",
            required=("assessment",),
            optional=("clinician_response",),
            reason="when the rules say so",
        ),
        CommandSpec(
            name="continue_treatment",
            summary="Another course decided (PR: up to 3 courses in all; CR/CRi/NR: clinical "
            "decision with a reason).",
            reason="when the rules say so",
        ),
        CommandSpec(
            name="cease",
            summary="Treatment ceased (after CR/CRi a reason is required).",
            reason="when the rules say so",
        ),
        CommandSpec(
            name="discontinue",
            summary="Treatment discontinued for severe toxicity (e.g. CRS grade >= 3).",
            reason="required",
        ),
        CommandSpec(
            name="withdraw", summary="Patient withdrawn from the study.", reason="required"
        ),
        CommandSpec(
            name="record_death",
            summary="Patient died.",
            optional=("cause",),
        ),
    )
}

#: Each command's payload keys, for the common case (only known keys) checked at once.
_KEYSETS: dict[str, frozenset[str]] = {name: frozenset(c.keys) for name, c in COMMANDS.items()}

#: Commands that are not protocol moves but are part of the contract (handled by the service).
SERVICE_COMMANDS = ("correct", "sign")


class MoveRefusedError(Exception):
    """The protocol refuses the move: names the failed rules and the moves allowed now."""

    code = "move_refused"

    def __init__(self, run: DryRun, allowed: list[str]) -> None:
        self.run = run
        self.allowed = allowed
        rules = "; ".join(f.message for f in run.failed)
        super().__init__(f"{run.trigger} refused in state {run.source}: {rules}")

    @property
    def failed(self) -> tuple[RuleFailure, ...]:
        return self.run.failed


@attrs.frozen(kw_only=True)
class Prepared:
    command: str
    trigger: str
    from_state: str
    to_state: str
    payload: dict[str, Any]
    facts: dict[str, Any]
    outcome: dict[str, Any]

    def apply_to(
        self,
        record: PatientRecord,
        *,
        occurred_at: str,
        protocol_version: str,
        reason: str | None = None,
    ) -> None:
        """Evolve ``record`` by this move as its next version (what the aggregate's event does
        when it is applied; for code that works on the pure record alone)."""
        evolve(
            record,
            trigger=self.trigger,
            to_state=self.to_state,
            facts=self.facts,
            outcome=self.outcome,
            occurred_at=occurred_at,
            version=record.version + 1,
            protocol_version=protocol_version,
            reason=reason,
        )


def trigger_for(command: str, payload: Mapping[str, Any]) -> str:
    if command == "give_infusion":
        day = payload.get("day")
        # Exactly the integers 1, 2 and 3: 1.0 == 1 and True == 1 in Python, but a day is a
        # whole number (the contract: never a float or a boolean), and it names the move.
        if isinstance(day, bool) or not isinstance(day, int) or day not in (1, 2, 3):
            shown = repr(day) if len(repr(day)) <= 40 else repr(day)[:40] + "..."
            raise ProtocolInputError(
                "payload.day",
                f"must be 1, 2 or 3, an integer (the infusion day; not a decimal such as 1.0, "
                f"a string or a boolean), got {shown}",
            )
        return f"infuse_d{int(day)}"
    return command


def _check_payload_keys(spec: CommandSpec, payload: Mapping[str, Any]) -> None:
    keyset = _KEYSETS.get(spec.name)
    if (
        keyset is not None
        and type(payload) is dict
        and payload.keys() <= keyset
        and all(key in payload for key in spec.required)
    ):
        return
    unknown = sorted(set(payload) - set(spec.keys), key=str)
    if unknown:
        allowed = ", ".join(spec.keys) or "none"
        raise ProtocolInputError(
            f"payload.{key_name(unknown[0])}",
            f"unknown for {spec.name}; allowed payload keys: {allowed}",
        )
    for key in spec.required:
        if key not in payload:
            raise ProtocolInputError(f"payload.{key}", f"is required for {spec.name}")


def _text(payload: Mapping[str, Any], key: str, *, max_len: int = 2000) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProtocolInputError(f"payload.{key}", "must be a non-empty string")
    if len(value) > max_len:
        raise ProtocolInputError(f"payload.{key}", f"must be at most {max_len} characters")
    return value


# ----------------------------------------------------------------------------------------------
# Context facts: what the rules read from the record
# ----------------------------------------------------------------------------------------------


def _open_brief(record: PatientRecord) -> list[dict[str, Any]]:
    """The open toxicities as the rules read them (id, kind, worst grade). The worst grade, not
    the current one: an episode holds the next fraction until it is resolved, not until a later
    report grades it lower (a fever masked by tocilizumab grades CRS 0 while it is still open);
    a grade 5 episode (a death) never resolves."""
    open_ids = record.open_ids
    if not open_ids:
        return []
    toxicities = record.toxicities
    return [
        {"id": t.id, "kind": t.kind, "grade": t.worst_grade}
        for t in [toxicities[i] for i in open_ids]
    ]


def _course_brief(record: PatientRecord, number: int) -> list[dict[str, Any]]:
    """The toxicities of course ``number`` as the rules read them (id, kind, worst grade)."""
    ids = record.course_ids.get(number)
    if not ids:
        return []
    toxicities = record.toxicities
    return [
        {"id": t.id, "kind": t.kind, "grade": t.worst_grade} for t in [toxicities[i] for i in ids]
    ]


def _ctx_apheresis(record: PatientRecord) -> dict[str, Any]:
    return {"consent_on_file": record.consent_on_file}


def _ctx_d1(record: PatientRecord) -> dict[str, Any]:
    return {
        "day": 1,
        "course_number": len(record.courses) + 1,
        "previous_date": record.apheresis_date,
        "delivered_before": 0.0,
        "fractions_cancelled": False,
        "open_toxicities": _open_brief(record),
    }


def _ctx_later_day(day: int) -> Callable[[PatientRecord], dict[str, Any]]:
    def context(record: PatientRecord) -> dict[str, Any]:
        courses = record.courses
        if not courses:
            return {
                "day": day,
                "course_number": 0,
                "weight_kg": None,
                "previous_date": None,
                "delivered_before": 0.0,
                "fractions_cancelled": False,
                "open_toxicities": _open_brief(record),
            }
        course = courses[-1]
        fractions = course.fractions
        return {
            "day": day,
            "course_number": len(courses),
            "weight_kg": course.weight_kg,
            "previous_date": fractions[-1].given_on if fractions else None,
            "delivered_before": course.delivered,
            "fractions_cancelled": course.cancelled,
            "open_toxicities": _open_brief(record),
        }

    return context


def _ctx_resolve(record: PatientRecord) -> dict[str, Any]:
    return {"open_toxicities": _open_brief(record)}


def _ctx_course_end(record: PatientRecord) -> dict[str, Any]:
    courses = record.courses
    return {
        "course_number": len(courses),
        "fractions_cancelled": courses[-1].cancelled if courses else False,
    }


def _ctx_decision(record: PatientRecord) -> dict[str, Any]:
    courses = record.courses
    return {
        "course_number": len(courses),
        "response": courses[-1].response if courses else None,
    }


def _carried_over(record: PatientRecord, number: int) -> list[Toxicity]:
    """Episodes of earlier courses still open in course ``number``: they belong to it too (a
    toxicity that began in course 1 and turned severe during course 2 justifies discontinuing
    course 2); a resolved one of an earlier course does not."""
    toxicities = record.toxicities
    return [t for t in (toxicities[i] for i in record.open_ids) if t.course_number != number]


def _ctx_discontinue(record: PatientRecord) -> dict[str, Any]:
    number = len(record.courses)
    brief = _course_brief(record, number) + [
        {"id": t.id, "kind": t.kind, "grade": t.worst_grade} for t in _carried_over(record, number)
    ]
    return {"course_number": number, "course_toxicities": brief}


def _ctx_discontinue_worst(record: PatientRecord) -> dict[str, Any]:
    """:func:`_ctx_discontinue` with only the course's worst episode: what its rule decides on
    (a severe toxicity recorded in the course: the worst grade at or above the threshold). For
    ``allowed_now``, which judges every move after every command: the full list grows with the
    history (a course of 500 episodes: 0.2 ms per command). A recorded move reads the full list."""
    number = len(record.courses)
    candidates = _carried_over(record, number) if record.open_ids else []
    worst_of_course = record.worst_of_course(number)
    if worst_of_course is not None:
        candidates.append(worst_of_course)
    worst = max(candidates, key=lambda t: t.worst_grade, default=None)
    brief = (
        [] if worst is None else [{"id": worst.id, "kind": worst.kind, "grade": worst.worst_grade}]
    )
    return {"course_number": number, "course_toxicities": brief}


def _ctx_none(record: PatientRecord) -> dict[str, Any]:
    return {}


#: What the rules of each move read from the record (plain trigger names; any other move: none).
#: Moves that share a builder share their facts (``allowed_now`` builds them once).
_CONTEXTS: dict[str, Callable[[PatientRecord], dict[str, Any]]] = {
    Trigger.RECORD_APHERESIS.value: _ctx_apheresis,
    Trigger.INFUSE_D1.value: _ctx_d1,
    Trigger.INFUSE_D2.value: _ctx_later_day(2),
    Trigger.INFUSE_D3.value: _ctx_later_day(3),
    Trigger.RESOLVE_TOXICITY.value: _ctx_resolve,
    Trigger.CANCEL_REMAINING_FRACTIONS.value: _ctx_course_end,
    Trigger.ASSESS_RESPONSE.value: _ctx_course_end,
    Trigger.CONTINUE_TREATMENT.value: _ctx_decision,
    Trigger.CEASE.value: _ctx_decision,
    Trigger.DISCONTINUE.value: _ctx_discontinue,
}


#: Contexts ``allowed_now`` builds instead of a move's own: the same answer from fewer facts.
_ALLOWED_CONTEXTS: dict[str, Callable[[PatientRecord], dict[str, Any]]] = {
    Trigger.DISCONTINUE: _ctx_discontinue_worst,
}


def context_facts(record: PatientRecord, trigger: str) -> dict[str, Any]:
    """What the rules of ``trigger`` read from the record (a new dict per call)."""
    return _CONTEXTS.get(trigger, _ctx_none)(record)


# ----------------------------------------------------------------------------------------------
# Payload facts: what the command itself says, validated and normalized
# ----------------------------------------------------------------------------------------------

#: A payload parser: (record, payload, clinical date, context facts, seed) -> (normalized payload,
#: payload facts). ``seed`` receives what it parsed on the way (e.g. ``screening_data``, the
#: parsed form of ``facts["screening"]``): ``prepare`` seeds the probe's cache with it, so the
#: rules do not parse the facts' JSON again (tests prove re-parsing gives the same objects).
PayloadParser = Callable[
    [PatientRecord, Mapping[str, Any], dt.date, dict[str, Any], dict[str, Any]],
    tuple[dict[str, Any], dict[str, Any]],
]


def _screening(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    data = _nested("payload.screening", parse_screening, _object(p, "screening"))
    seed["screening_data"] = data
    screening = data.to_json()
    return {"screening": screening}, {"screening": screening, "screening_date": day.isoformat()}


def _nested(prefix: str, parse: Callable[[Any], Any], data: Any) -> Any:
    """Run a domain parser on a nested object; errors name the full path (payload.x.field)."""
    try:
        return parse(data)
    except ProtocolInputError as exc:
        moved = exc.under(prefix)  # every field problem, each path under the prefix
        raise ProtocolInputError(moved.field, moved.message, others=moved.others) from None


def _object(p: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = p.get(key)
    if not isinstance(value, Mapping):
        raise ProtocolInputError(f"payload.{key}", "must be a JSON object")
    return value


def _apheresis(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    contraindication = p.get("apheresis_contraindication")
    if not isinstance(contraindication, bool):
        raise ProtocolInputError("payload.apheresis_contraindication", "must be true or false")
    norm: dict[str, Any] = {"apheresis_contraindication": contraindication}
    product = _text(p, "product_id", max_len=200)
    if product is not None:
        norm["product_id"] = product
    return norm, {"apheresis_contraindication": contraindication, "apheresis_date": day.isoformat()}


def _infusion(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    norm: dict[str, Any] = {"day": p["day"]}
    facts: dict[str, Any] = {"infusion_date": day.isoformat()}
    weight = ctx.get("weight_kg")
    if "weight" in p:
        if p["day"] != 1:
            raise ProtocolInputError("payload.weight", "the course's weight is given with D1 only")
        weight = dosing.parse_weight(p["weight"], "payload.weight")
        norm["weight"] = dict(p["weight"])
        facts["weight_kg"] = weight
    elif p["day"] == 1:
        raise ProtocolInputError(
            "payload.weight",
            'D1 plans the course: give the body weight, e.g. {"value": 70, "unit": "kg"}',
        )
    dose = dosing.parse_cell_dose(p["cells"], weight, "payload.cells")
    norm["cells"] = dose.to_json()
    facts["dose"] = dose.to_json()
    facts["cells"] = dose.cells
    for key in ("product_lot", "deviation_reason"):
        text = _text(p, key)
        if text is not None:
            norm[key] = text
            facts[key] = text
    return norm, facts


def _open_list(record: PatientRecord) -> str:
    """The open episodes in words, for an error message: 'CRS-1 (CRS grade 2), ICANS-1 ...'."""
    open_ = record.open_toxicities()
    return ", ".join(f"{t.id} ({t.kind} grade {t.grade})" for t in open_) or "none"


def _toxicity(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A toxicity report: a new episode (no ``toxicity_id``: the next free id of its kind is
    assigned, never one already on record), or an update of an open episode of the same kind.

    ``ctx`` holding a ``toxicity_id`` means a recorded report is read again (the service's
    correction passes the recorded event's facts): the report stays with its episode."""
    report = _nested("payload.toxicity", parse_toxicity_report, _object(p, "toxicity"))
    seed["toxicity_report"] = report
    norm: dict[str, Any] = {"toxicity": report.to_json()}
    kind = report.kind
    tox_id = _text(p, "toxicity_id", max_len=100)
    recorded = ctx.get("toxicity_id")
    if isinstance(recorded, str):
        _check_corrected_report(record, recorded, tox_id, kind, day)
        if tox_id is not None:
            norm["toxicity_id"] = tox_id
        return norm, {"toxicity": norm["toxicity"], "toxicity_id": recorded}
    if tox_id is not None:
        existing = record.toxicities.get(tox_id)
        new_episode = (
            f"to report a new {kind} episode, leave toxicity_id out (it is assigned: "
            f"{record.next_toxicity_id(kind)})"
        )
        if existing is None:
            raise ContextInputError(
                "payload.toxicity_id",
                f"no toxicity episode {tox_id!r} is on record; toxicity_id names an open episode "
                f"to update (open episodes: {_open_list(record)}); {new_episode}",
            )
        if not existing.open:
            raise ContextInputError(
                "payload.toxicity_id",
                f"toxicity {tox_id!r} was resolved at {existing.resolved_at}; a resolved episode "
                f"is closed and cannot be updated (open episodes: {_open_list(record)}); "
                f"{new_episode}",
            )
        if existing.kind != kind:
            raise ContextInputError(
                "payload.toxicity_id",
                f"toxicity {tox_id!r} is {existing.kind}, not {kind}: an update keeps the "
                f"episode's kind; {new_episode}",
            )
        norm["toxicity_id"] = tox_id
    else:
        tox_id = record.next_toxicity_id(kind)
    return norm, {"toxicity": norm["toxicity"], "toxicity_id": tox_id}


def _check_corrected_report(
    record: PatientRecord, recorded: str, tox_id: str | None, kind: str, day: dt.date
) -> None:
    """A correction of a toxicity report keeps the report in its episode, and the episode's kind;
    a corrected date may not fall after the episode's resolution."""
    if tox_id is not None and tox_id != recorded:
        raise ProtocolInputError(
            "payload.changes.toxicity_id",
            f"this report was recorded for toxicity {recorded}; a correction cannot move it to "
            f"another episode ({tox_id}): report it again under {tox_id}, and correct this one",
        )
    episode = record.toxicities.get(recorded)
    if episode is None:
        return
    if episode.kind != kind:
        raise ProtocolInputError(
            "payload.changes.toxicity",
            f"toxicity {recorded} is a {episode.kind} episode; a correction cannot change its "
            f"kind to {kind} (its id, its other reports and its resolution are {episode.kind}'s): "
            f"report the {kind} as a new episode (report_toxicity without toxicity_id)",
        )
    resolved = episode.resolved_at
    if resolved is not None and day > dt.datetime.fromisoformat(resolved).date():
        raise ProtocolInputError(
            "payload.changes.occurred_at",
            f"toxicity {recorded} resolved at {resolved}; a report of it dated {day} would be "
            "after its resolution",
        )


def _resolve(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    tox_id = _text(p, "toxicity_id", max_len=100)
    return {"toxicity_id": tox_id}, {"toxicity_id": tox_id}


def _assessment(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    parsed = _nested("payload.assessment", parse_response_assessment, _object(p, "assessment"))
    # The result under the default parameters; ``prepare`` reuses it when the version's
    # parameters are these.
    seed["assessment_data"] = parsed
    computed = _nested("payload.assessment", classify_response, parsed)
    seed["default_response"] = computed
    assessment = parsed.to_json()
    norm: dict[str, Any] = {"assessment": assessment}
    facts: dict[str, Any] = {"assessment": assessment, "assessment_date": day.isoformat()}
    clinician = p.get("clinician_response")
    if clinician is not None:
        if clinician not in RESPONSES:
            raise ProtocolInputError(
                "payload.clinician_response", f"{clinician!r} is not one of {', '.join(RESPONSES)}"
            )
        norm["clinician_response"] = clinician
        facts["clinician_response"] = clinician
    else:
        # A category not evaluable (a deciding value missing) without a clinician's response is
        # an input error naming the missing values. With one, the rule
        # ``clinician_response_consistent`` (``check_clinician_response``) asks for its reason
        # and the outcome records ``computed_response: null`` with the reasons saying why.
        _nested("payload.assessment", lambda r: r.raise_if_not_evaluable(), computed)
    return norm, facts


def _death(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    cause = _text(p, "cause", max_len=500)
    return ({"cause": cause} if cause else {}), ({"cause": cause} if cause else {})


def _nothing(
    record: PatientRecord,
    p: Mapping[str, Any],
    day: dt.date,
    ctx: dict[str, Any],
    seed: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {}


PAYLOAD_PARSERS: dict[str, PayloadParser] = {
    "screen": _screening,
    "rescreen": _screening,
    "record_apheresis": _apheresis,
    "give_infusion": _infusion,
    "report_toxicity": _toxicity,
    "resolve_toxicity": _resolve,
    "assess_response": _assessment,
    "record_death": _death,
}


def payload_facts(
    record: PatientRecord,
    command: str,
    payload: Mapping[str, Any],
    occurred_on: dt.date,
    context: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = COMMANDS.get(command)
    if spec is None:
        raise ProtocolInputError(
            "command",
            f"unknown command {command!r}; commands are: {', '.join([*COMMANDS, *SERVICE_COMMANDS])}",
        )
    if not isinstance(payload, Mapping):
        raise ProtocolInputError("payload", "must be a JSON object")
    _check_payload_keys(spec, payload)
    return PAYLOAD_PARSERS.get(command, _nothing)(record, payload, occurred_on, context, {})


# ----------------------------------------------------------------------------------------------
# Outcome: what the move established (derived values, recorded next to the raw facts)
# ----------------------------------------------------------------------------------------------


def outcome_of(
    trigger: str,
    facts: Mapping[str, Any],
    version: ProtocolVersion,
    *,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """What the move established. ``probe``: the one the move was dry-run on with these facts
    (what its rules computed -- eligibility, dose and schedule problems, response -- is reused)."""
    params = version.params
    if probe is None or probe.facts is not facts or probe.params is not params:
        probe = Probe("", facts, params)
    if trigger in (Trigger.SCREEN, Trigger.RESCREEN):
        failed = probe.eligibility_failures()
        return {
            "eligible": not failed,
            "failed_criteria": list(failed),
            "consent_on_file": facts["screening"].get("informed_consent_signed") is True,
        }
    if trigger in INFUSION_TRIGGERS:
        plan = probe.course_plan()
        day = facts["day"]
        out: dict[str, Any] = {
            "course_number": facts["course_number"],
            "day": day,
            "cells": facts["cells"],
            "planned_cells": plan.fraction_cells[day - 1],
            "delivered_course_total": facts.get("delivered_before", 0.0) + facts["cells"],
            "deviations": probe.deviations(trigger),
        }
        if day == 1:
            out.update(
                weight_kg=plan.weight_kg,
                planned_total_cells=plan.total_cells,
                fraction_plan=list(plan.fraction_cells),
                counted_quantity=plan.counted_quantity,
            )
        return out
    if trigger == Trigger.REPORT_TOXICITY:
        grade = probe.toxicity_grade()
        g = grade.to_json()
        return {
            "toxicity_id": facts["toxicity_id"],
            "kind": g["kind"],
            "term": g.get("term"),
            "grade": g["grade"],
            "scale": g["scale"],
            "scale_version": g["scale_version"],
            "reasons": list(g.get("reasons", [])),
            "severe": grade.is_severe(params),
            "opens_hold": grade.opens_hold(params),
        }
    if trigger == Trigger.ASSESS_RESPONSE:
        result = _nested("payload.assessment", lambda _: probe.response(), None)
        computed = result.category
        return {
            "computed_response": computed,
            "response": facts.get("clinician_response") or computed,
            "mrd_status": result.mrd_status,
            "progression": result.progression,
            "reasons": list(result.reasons),
        }
    return {}


# ----------------------------------------------------------------------------------------------
# prepare: the whole decision
# ----------------------------------------------------------------------------------------------


def prepare(
    record: PatientRecord,
    command: str,
    payload: Mapping[str, Any],
    occurred_at: dt.datetime,
    reason: str | None,
    version: ProtocolVersion,
) -> Prepared:
    """Validate, gather facts, dry-run; return what to record or raise ``MoveRefusedError``."""
    if not isinstance(payload, Mapping):
        raise ProtocolInputError("payload", "must be a JSON object")
    if command not in COMMANDS:
        raise ProtocolInputError(
            "command",
            f"unknown command {command!r}; commands are: {', '.join([*COMMANDS, *SERVICE_COMMANDS])}",
        )
    trigger = trigger_for(command, payload)
    context = context_facts(record, trigger)
    if trigger in INFUSION_TRIGGERS and record.toxicities:
        context = _with_holds_open_then(record, context, occurred_at, version)
    _check_payload_keys(COMMANDS[command], payload)
    seed: dict[str, Any] = {}
    parser = PAYLOAD_PARSERS.get(command, _nothing)
    try:
        norm, pfacts = parser(record, payload, occurred_at.date(), context, seed)
    except ContextInputError:
        # Well formed, but unusable with what is on record: a move out of sequence is refused
        # as such first (D3 before D1 is out of sequence, not short of a course weight).
        check_sequence(record, trigger, version)
        raise
    if trigger == Trigger.RESOLVE_TOXICITY:
        check_resolution_time(record, pfacts["toxicity_id"], occurred_at)
    facts = {**context, **pfacts}
    if reason:
        facts["reason"] = reason
    params = version.params
    default_response = seed.pop("default_response", None)
    if default_response is not None and (
        params is DEFAULT_PARAMETERS or params == DEFAULT_PARAMETERS
    ):
        seed["response"] = default_response
    probe = Probe(record.state, facts, params, cache=seed)
    run = version.dry_run_on(probe, trigger)
    if not run.allowed:
        raise MoveRefusedError(run, allowed_now(record, version))
    assert run.dest is not None
    return Prepared(
        command=command,
        trigger=trigger,
        from_state=record.state,
        to_state=run.dest,
        payload=norm,
        facts=facts,
        outcome=outcome_of(trigger, facts, version, probe=probe),
    )


def _with_holds_open_then(
    record: PatientRecord,
    context: dict[str, Any],
    occurred_at: dt.datetime,
    version: ProtocolVersion,
) -> dict[str, Any]:
    """An infusion's context with the holding episodes that were open at its clinical time but
    were resolved (later in clinical time) by a command recorded before it: the hold is judged
    at the time the fraction was given, not in the order the data were entered."""
    params = version.params
    then = []
    for t in record.toxicities.values():
        if t.resolved_at is None:
            continue
        hold = params.hold_grade(t.kind)
        if t.worst_grade < hold or occurred_at.tzinfo is None:
            continue
        resolved = dt.datetime.fromisoformat(t.resolved_at)
        if resolved.tzinfo is None or occurred_at >= resolved:
            continue  # resolved before the fraction (or an older history's naive time)
        grade = _grade_at(record, t, occurred_at)
        if grade is not None and grade >= hold:
            then.append({"id": t.id, "kind": t.kind, "grade": grade, "resolved_at": t.resolved_at})
    if not then:
        return context
    return {**context, "open_toxicities": [*context.get("open_toxicities", ()), *then]}


def _grade_at(record: PatientRecord, t: Toxicity, when: dt.datetime) -> int | None:
    """The worst grade an episode had reached by ``when``: over its reports observed at or before
    that time (None: it had not begun). Reports indexed without their time (an older record):
    the episode's onset for its first, else its worst grade."""
    grades = []
    for version in t.versions:
        entry = record.index.get(version) or {}
        if entry.get("trigger") != Trigger.REPORT_TOXICITY or "grade" not in entry:
            continue
        seen = entry.get("occurred_at")
        if seen is None:  # not kept by the record that indexed it: judge on the whole episode
            onset = dt.datetime.fromisoformat(t.onset)
            return t.worst_grade if onset.tzinfo is not None and onset <= when else None
        observed = dt.datetime.fromisoformat(seen)
        if observed.tzinfo is not None and observed <= when:
            grades.append(int(entry["grade"]))
    return max(grades, default=None)


def check_sequence(record: PatientRecord, trigger: str, version: ProtocolVersion) -> None:
    """Refuse a move its protocol never allows from the record's state, before its payload is
    read: D3 before D1 is out of sequence, whatever its cell count would need."""
    event = version.machine.events.get(trigger)
    if event is not None and record.state not in event.transitions:
        run = version.dry_run(record.state, trigger, context_facts(record, trigger))
        raise MoveRefusedError(run, allowed_now(record, version))


def check_resolution_time(
    record: PatientRecord, tox_id: str | None, occurred_at: dt.datetime
) -> None:
    """A toxicity cannot resolve before its onset: the resolution's clinical time is refused
    (naming both times) when it is earlier than the open episode's onset."""
    episode = record.toxicities.get(tox_id) if tox_id is not None else None
    if episode is None or not episode.open:
        return  # the rule ``toxicity_is_open`` refuses, naming the open episodes
    onset = dt.datetime.fromisoformat(episode.onset)
    if (onset.tzinfo is None) == (occurred_at.tzinfo is None) and occurred_at < onset:
        raise ProtocolInputError(
            "payload.toxicity_id",
            f"toxicity {tox_id} began at {episode.onset} (its onset); it cannot have resolved at "
            f"{occurred_at.isoformat()}, before it began: check occurred_at (when it resolved) "
            "or the toxicity_id",
        )


def allowed_now(record: PatientRecord, version: ProtocolVersion) -> list[str]:
    """The moves allowed now, given what is on record (the caller supplies a compliant payload).

    Each move is judged on its own :func:`context_facts`; consecutive moves whose facts are the
    same (``cancel_remaining_fractions`` and ``assess_response``, ``continue_treatment`` and
    ``cease``) are given one dict, built once."""
    last_builder: Callable[[PatientRecord], dict[str, Any]] | None = None
    last_facts: dict[str, Any] = {}

    def facts_of(trigger: str) -> dict[str, Any]:
        nonlocal last_builder, last_facts
        builder = _ALLOWED_CONTEXTS.get(trigger) or _CONTEXTS.get(trigger, _ctx_none)
        if builder is not last_builder:
            last_builder = builder
            last_facts = builder(record)
        return last_facts

    return version.allowed_moves_by(record.state, facts_of)


def command_of(trigger: str) -> str:
    return "give_infusion" if trigger in INFUSION_TRIGGERS else trigger


# ----------------------------------------------------------------------------------------------
# Corrections of infusions: the course as the record states it now
# ----------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RecordedFraction:
    """A recorded infusion as its latest facts state it: the move's facts, or those of its latest
    correction; ``protocol``: the version it was recorded under."""

    version: int
    trigger: str
    facts: Mapping[str, Any]
    protocol: ProtocolVersion


def _course_of_fraction(record: PatientRecord, version: int) -> tuple[Course, int] | None:
    """The course holding the fraction recorded at ``version``, and the fraction's index in it."""
    for course in record.courses:
        for i, f in enumerate(course.fractions):
            if f.version == version:
                return course, i
    return None


def corrected_fraction_context(record: PatientRecord, corrects: int) -> dict[str, Any]:
    """What a correction of a fraction reads from the record now (not from when the fraction was
    recorded): the date its schedule is counted from (the fraction before it, or apheresis for
    a D1, as last corrected); for D2 and D3 also the course's body weight -- a corrected D1
    weight re-planned the course -- and the cells delivered before it (a D1's weight is its own
    payload's). Empty for a version that is no fraction on record."""
    found = _course_of_fraction(record, corrects)
    if found is None:
        return {}
    course, index = found
    # the date its schedule is counted from, as it stands now (a corrected D1 date, a corrected
    # apheresis date): the fraction before it, or apheresis for a D1
    previous = course.fractions[index - 1].given_on if index else record.apheresis_date
    if course.fractions[index].day == 1:
        return {"previous_date": previous}
    return {
        "weight_kg": course.weight_kg,
        "delivered_before": sum([f.cells for f in course.fractions[:index]]),
        "previous_date": previous,
    }


def replan_course(
    record: PatientRecord,
    corrects: int,
    outcome: Mapping[str, Any],
    fractions: Mapping[int, RecordedFraction],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Re-plan the course of a corrected D1 whose plan changed (a corrected body weight).

    ``outcome``: the corrected D1's outcome (its new plan and cells); ``fractions``: the course's
    recorded fractions by version, as their latest facts state them. Each other recorded fraction
    of the course is judged again as if recorded with the new plan: its planned cells, its cells
    (re-derived from the new weight when entered in cells/kg; cells entered as cells stay), the
    cells delivered before it, and its deviations (its schedule is its own, unchanged). Returns
    what to record in the correction's outcome (``replanned``: one entry per fraction, in course
    order, for ``apply_correction``) and the findings: each re-planned fraction now off its plan.
    Nothing to re-plan (not a D1, or the plan did not change): ``([], [])``."""
    found = _course_of_fraction(record, corrects)
    if found is None or "planned_total_cells" not in outcome:
        return [], []
    course, _index = found
    weight = outcome["weight_kg"]
    if (
        weight == course.weight_kg
        and outcome["planned_total_cells"] == course.planned_total
        and list(outcome["fraction_plan"]) == list(course.fraction_plan)
    ):
        return [], []
    replanned: list[dict[str, Any]] = []
    findings: list[str] = []
    delivered = 0.0
    for f in course.fractions:
        recorded = fractions.get(f.version)
        if f.version == corrects:
            delivered += outcome["cells"]
            continue
        if recorded is None:  # not a recorded move: nothing to judge it by, it stays as it is
            delivered += f.cells
            continue
        facts = dict(recorded.facts)
        facts.update(weight_kg=weight, delivered_before=delivered)
        entered = facts.get("dose")
        if isinstance(entered, Mapping) and entered.get("unit") == "cells/kg":
            try:
                facts["cells"] = dosing.parse_cell_dose(entered, weight, "cells").cells
            except ProtocolInputError as exc:  # cells/kg times the corrected weight
                raise ProtocolInputError(
                    "payload.changes.weight",
                    f"with {weight:g} kg, D{f.day} (version {f.version}, entered in cells/kg) "
                    f"would not be a plausible fraction: {exc.message}",
                ) from None
        probe = Probe("", facts, recorded.protocol.params)
        out = outcome_of(recorded.trigger, facts, recorded.protocol, probe=probe)
        reason = facts.get("deviation_reason")
        replanned.append(
            {
                "version": f.version,
                "day": f.day,
                "cells": out["cells"],
                "planned_cells": out["planned_cells"],
                "deviations": list(out["deviations"]),
                "deviation_reason": reason,
            }
        )
        problems = probe.dose_problems()
        if problems:
            findings.append(
                f"correction of version {corrects} re-plans D{f.day} (version {f.version}): "
                + "; ".join(problems)
                + ("" if reason else "; no deviation reason is recorded for it")
            )
        delivered += out["cells"]
    return replanned, findings


#: Corrected moves whose date the next step's schedule is counted from, and that next step.
SCHEDULE_FOLLOWS = {
    "record_apheresis": "infuse_d1",
    "infuse_d1": "infuse_d2",
    "infuse_d2": "infuse_d3",
}


def reschedule_course(
    record: PatientRecord,
    corrects: int,
    trigger: str,
    new_date: str,
    fractions: Mapping[int, RecordedFraction],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The recorded fractions whose schedule is counted from the date of move ``corrects`` (the
    next fraction of its course; for an apheresis, each D1 given after it and before the next
    apheresis), judged again from its corrected date ``new_date`` by the protocol's schedule
    rule. ``fractions``: the course's recorded fractions by version, as their latest facts state
    them. Returns what to record in the correction's outcome (``rescheduled``: one entry per
    such fraction) and the findings: each fraction now off its schedule."""
    follows = SCHEDULE_FOLLOWS.get(trigger)
    if follows is None:
        return [], []
    if trigger == "record_apheresis":
        next_apheresis = min(
            (
                v
                for v, entry in record.index.items()
                if v > corrects and entry.get("trigger") == "record_apheresis"
            ),
            default=None,
        )
        versions = [
            c.fractions[0].version
            for c in record.courses
            if c.fractions
            and c.fractions[0].day == 1
            and c.fractions[0].version > corrects
            and (next_apheresis is None or c.fractions[0].version < next_apheresis)
        ]
    else:
        versions = [
            c.fractions[i + 1].version
            for c in record.courses
            for i, f in enumerate(c.fractions[:-1])
            if f.version == corrects
        ]
    entries: list[dict[str, Any]] = []
    findings: list[str] = []
    for version in versions:
        fraction = fractions.get(version)
        if fraction is None or fraction.trigger != follows:
            continue
        facts = {**fraction.facts, "previous_date": new_date}
        problem = schedule_problem(facts, fraction.protocol.params)
        reason = facts.get("deviation_reason")
        day = facts.get("day")
        entries.append(
            {
                "version": version,
                "day": day,
                "previous_date": new_date,
                "schedule_problem": problem,
                "deviation_reason": reason,
            }
        )
        if problem:
            findings.append(
                f"correction of version {corrects} moves the date D{day} (version {version}) is "
                f"counted from: {problem}"
                + ("" if reason else "; no deviation reason is recorded for it")
            )
    return entries, findings
