"""What each command reads, says and establishes: the building blocks of the command registry.

Pure functions the definitions of ``registry.py`` name: a move's *context* (what its rules read
from the record), a command's *payload parser* (its payload validated and normalised into facts)
and a move's *outcome* (what it established). No I/O, no clock, no store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from . import dosing
from .eligibility import parse_screening
from .errors import ContextInputError, ProtocolInputError
from .machine import Probe
from .parameters import ProtocolParameters
from .record import PatientRecord, Toxicity
from .response import RESPONSES, classify_response, parse_response_assessment
from .text import free_text_problem
from .toxicity import parse_toxicity_report

#: What the rules of a move read from the record (a new dict per call).
ContextBuilder = Callable[[PatientRecord], dict[str, Any]]


def _text(payload: Mapping[str, Any], key: str, *, max_len: int = 2000) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProtocolInputError(f"payload.{key}", "must be a non-empty string")
    if len(value) > max_len:
        raise ProtocolInputError(f"payload.{key}", f"must be at most {max_len} characters")
    problem = free_text_problem(value)
    if problem is not None:
        raise ProtocolInputError(f"payload.{key}", problem)
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


def ctx_apheresis(record: PatientRecord) -> dict[str, Any]:
    return {"consent_on_file": record.consent_on_file}


def ctx_d1(record: PatientRecord) -> dict[str, Any]:
    return {
        "day": 1,
        "course_number": len(record.courses) + 1,
        "previous_date": record.apheresis_date,
        "delivered_before": 0.0,
        "fractions_cancelled": False,
        "open_toxicities": _open_brief(record),
    }


def ctx_later_day(day: int) -> Callable[[PatientRecord], dict[str, Any]]:
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


def ctx_resolve(record: PatientRecord) -> dict[str, Any]:
    return {"open_toxicities": _open_brief(record)}


def ctx_course_end(record: PatientRecord) -> dict[str, Any]:
    courses = record.courses
    return {
        "course_number": len(courses),
        "fractions_cancelled": courses[-1].cancelled if courses else False,
    }


def ctx_decision(record: PatientRecord) -> dict[str, Any]:
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


def ctx_discontinue(record: PatientRecord) -> dict[str, Any]:
    number = len(record.courses)
    brief = _course_brief(record, number) + [
        {"id": t.id, "kind": t.kind, "grade": t.worst_grade} for t in _carried_over(record, number)
    ]
    return {"course_number": number, "course_toxicities": brief}


def ctx_discontinue_worst(record: PatientRecord) -> dict[str, Any]:
    """:func:`ctx_discontinue` with only the course's worst episode: what its rule decides on
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


def no_context(record: PatientRecord) -> dict[str, Any]:
    return {}


#: What the rules of each move read from the record (plain trigger names; any other move: none).

# ----------------------------------------------------------------------------------------------
# Payload facts: what the command itself says, validated and normalized
# ----------------------------------------------------------------------------------------------

#: A command's payload as sent (decoded JSON).
Payload = Mapping[str, Any]
#: The context facts a parser reads, or the seed it fills.
Facts = dict[str, Any]
#: What a parser returns: the normalized payload and the payload facts.
Parsed = tuple[dict[str, Any], dict[str, Any]]
#: A payload parser: (record, payload, clinical date, context facts, seed) -> (normalized payload,
#: payload facts). ``seed`` receives what it parsed on the way (e.g. ``screening_data``, the
#: parsed form of ``facts["screening"]``): ``prepare`` seeds the probe's cache with it, so the
#: rules do not parse the facts' JSON again (tests prove re-parsing gives the same objects).
PayloadParser = Callable[[PatientRecord, Payload, dt.date, Facts, Facts], Parsed]


def parse_screening_payload(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    data = nested("payload.screening", parse_screening, _object(p, "screening"))
    seed["screening_data"] = data
    screening = data.to_json()
    return {"screening": screening}, {"screening": screening, "screening_date": day.isoformat()}


def nested(prefix: str, parse: Callable[[Any], Any], data: Any) -> Any:
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


def parse_apheresis(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    contraindication = p.get("apheresis_contraindication")
    if not isinstance(contraindication, bool):
        raise ProtocolInputError("payload.apheresis_contraindication", "must be true or false")
    norm: dict[str, Any] = {"apheresis_contraindication": contraindication}
    product = _text(p, "product_id", max_len=200)
    if product is not None:
        norm["product_id"] = product
    return norm, {"apheresis_contraindication": contraindication, "apheresis_date": day.isoformat()}


def parse_infusion(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
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
    confirm = p.get("confirm_unusual_dose")
    if confirm is not None:
        if not isinstance(confirm, bool):
            raise ProtocolInputError(
                "payload.confirm_unusual_dose", f"must be true or false, got {confirm!r}"
            )
        norm["confirm_unusual_dose"] = facts["confirm_unusual_dose"] = confirm
    return norm, facts


def _open_list(record: PatientRecord) -> str:
    """The open episodes in words, for an error message: 'CRS-1 (CRS grade 2), ICANS-1 ...'."""
    open_ = record.open_toxicities()
    return ", ".join(f"{t.id} ({t.kind} grade {t.grade})" for t in open_) or "none"


def parse_toxicity(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    """A toxicity report: a new episode (no ``toxicity_id``: the next free id of its kind is
    assigned, never one already on record), or an update of an open episode of the same kind.

    ``ctx`` holding a ``toxicity_id`` means a recorded report is read again (the service's
    correction passes the recorded event's facts): the report stays with its episode."""
    report = nested("payload.toxicity", parse_toxicity_report, _object(p, "toxicity"))
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


def parse_resolution(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    tox_id = _text(p, "toxicity_id", max_len=100)
    return {"toxicity_id": tox_id}, {"toxicity_id": tox_id}


def parse_assessment(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    parsed = nested("payload.assessment", parse_response_assessment, _object(p, "assessment"))
    # The result under the default parameters; ``prepare`` reuses it when the version's
    # parameters are these.
    seed["assessment_data"] = parsed
    computed = nested("payload.assessment", classify_response, parsed)
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
        nested("payload.assessment", lambda r: r.raise_if_not_evaluable(), computed)
    return norm, facts


def parse_death(record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts) -> Parsed:
    cause = _text(p, "cause", max_len=500)
    return ({"cause": cause} if cause else {}), ({"cause": cause} if cause else {})


def parse_nothing(
    record: PatientRecord, p: Payload, day: dt.date, ctx: Facts, seed: Facts
) -> Parsed:
    return {}, {}


# ----------------------------------------------------------------------------------------------
# Triggers: which move of its command a payload names
# ----------------------------------------------------------------------------------------------


def infusion_trigger(payload: Mapping[str, Any]) -> str:
    """``give_infusion``'s move: ``infuse_d1``, ``infuse_d2`` or ``infuse_d3`` by its day."""
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


# ----------------------------------------------------------------------------------------------
# Checks of a move's clinical time against the record
# ----------------------------------------------------------------------------------------------

#: A check of a command's clinical time against the record: (record, payload facts, clinical
#: time); raises :class:`ProtocolInputError`.
TimeCheck = Callable[[PatientRecord, Mapping[str, Any], dt.datetime], None]
#: Checks a command's reason against the record and its payload facts (record, payload facts,
#: reason, clinical time); raises an input error naming ``reason``.
ReasonCheck = Callable[[PatientRecord, Mapping[str, Any], str | None, dt.datetime], None]


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
        raise ContextInputError(
            "payload.toxicity_id",
            f"toxicity {tox_id} began at {episode.onset} (its onset); it cannot have resolved at "
            f"{occurred_at.isoformat()}, before it began: check occurred_at (when it resolved) "
            "or the toxicity_id",
        )


def resolution_time(
    record: PatientRecord, facts: Mapping[str, Any], occurred_at: dt.datetime
) -> None:
    """``resolve_toxicity``'s time check (:func:`check_resolution_time` on its payload facts)."""
    check_resolution_time(record, facts["toxicity_id"], occurred_at)


# ----------------------------------------------------------------------------------------------
# Outcomes: what a move established (derived values, recorded next to the raw facts)
# ----------------------------------------------------------------------------------------------

#: What a move established: (trigger, facts, the probe its rules ran on, parameters) -> outcome.
OutcomeBuilder = Callable[[str, Mapping[str, Any], Probe, ProtocolParameters], dict[str, Any]]


def screening_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    failed = probe.eligibility_failures()
    return {
        "eligible": not failed,
        "failed_criteria": list(failed),
        "consent_on_file": facts["screening"].get("informed_consent_signed") is True,
    }


def infusion_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
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


def toxicity_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
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


def response_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    result = nested("payload.assessment", lambda _: probe.response(), None)
    computed = result.category
    return {
        "computed_response": computed,
        "response": facts.get("clinician_response") or computed,
        "mrd_status": result.mrd_status,
        "progression": result.progression,
        "reasons": list(result.reasons),
    }


def no_outcome(
    trigger: str, facts: Mapping[str, Any], probe: Probe, params: ProtocolParameters
) -> dict[str, Any]:
    return {}
