"""Commands of the protocol: parse a payload, gather the facts, dry-run the move, say the outcome.

``prepare`` is the whole decision: it returns what to record, or raises :class:`MoveRefusedError`
naming the rules that refused and the moves allowed now. It reads no clock and no store. What
each command reads, parses and computes is said by its definition in ``registry.py``; every
function here takes the registry (default: :data:`registry.REGISTRY`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import dosing, pre_infusion
from .building_blocks import check_resolution_time, no_context
from .errors import ContextInputError, ProtocolInputError, key_name
from .machine import DryRun, Probe, RuleFailure, schedule_problem
from .parameters import DEFAULT_PARAMETERS
from .record import Course, PatientRecord, Toxicity, evolve
from .registry import REGISTRY, CommandDef, Registry
from .states import INFUSION_TRIGGERS, Trigger
from .versions import ProtocolVersion

#: The protocol's move commands, by name (their definitions).
COMMANDS: Mapping[str, CommandDef] = REGISTRY.moves
#: Commands that are not protocol moves but are part of the contract (a correction, a signature).
SERVICE_COMMANDS: tuple[str, ...] = tuple(n for n in REGISTRY.names if n not in REGISTRY.moves)

__all__ = [
    "COMMANDS",
    "SERVICE_COMMANDS",
    "MoveRefusedError",
    "Prepared",
    "RecordedFraction",
    "allowed_now",
    "bedside_facts",
    "check_resolution_time",
    "check_sequence",
    "command_of",
    "context_facts",
    "corrected_fraction_context",
    "outcome_of",
    "payload_facts",
    "prepare",
    "replan_course",
    "reschedule_course",
    "trigger_for",
]


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


def _unknown_command(command: str, registry: Registry) -> ProtocolInputError:
    return ProtocolInputError(
        "command", f"unknown command {command!r}; commands are: {', '.join(registry.names)}"
    )


def trigger_for(command: str, payload: Mapping[str, Any], registry: Registry = REGISTRY) -> str:
    """The move ``command`` fires with ``payload`` (``give_infusion``: by its day)."""
    definition = registry.moves.get(command)
    if definition is None:
        return command
    return definition.trigger_for(payload)


def _check_payload_keys(
    spec: CommandDef, payload: Mapping[str, Any], registry: Registry = REGISTRY
) -> None:
    keyset = registry.keysets.get(spec.name)
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


def context_facts(
    record: PatientRecord, trigger: str, registry: Registry = REGISTRY
) -> dict[str, Any]:
    """What the rules of ``trigger`` read from the record (a new dict per call)."""
    return registry.contexts.get(trigger, no_context)(record)


def payload_facts(
    record: PatientRecord,
    command: str,
    payload: Mapping[str, Any],
    occurred_on: dt.date,
    context: dict[str, Any],
    registry: Registry = REGISTRY,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``command``'s payload validated and normalised: (normalised payload, payload facts)."""
    spec = registry.moves.get(command)
    if spec is None:
        raise _unknown_command(command, registry)
    if not isinstance(payload, Mapping):
        raise ProtocolInputError("payload", "must be a JSON object")
    _check_payload_keys(spec, payload, registry)
    return spec.parse(record, payload, occurred_on, context, {})


def outcome_of(
    trigger: str,
    facts: Mapping[str, Any],
    version: ProtocolVersion,
    *,
    probe: Probe | None = None,
    registry: Registry = REGISTRY,
) -> dict[str, Any]:
    """What the move established. ``probe``: the one the move was dry-run on with these facts
    (what its rules computed -- eligibility, dose and schedule problems, response -- is reused)."""
    params = version.params
    if probe is None or probe.facts is not facts or probe.params is not params:
        probe = Probe("", facts, params)
    definition = registry.by_trigger.get(trigger)
    if definition is None:
        return {}
    return definition.outcome(trigger, facts, probe, params)


def prepare(
    record: PatientRecord,
    command: str,
    payload: Mapping[str, Any],
    occurred_at: dt.datetime,
    reason: str | None,
    version: ProtocolVersion,
    registry: Registry = REGISTRY,
    *,
    actor: str | None = None,
) -> Prepared:
    """Validate, gather facts, dry-run; return what to record or raise ``MoveRefusedError``.

    ``actor``: who records the move (an infusion's bedside check: the first of its two
    verifiers)."""
    if not isinstance(payload, Mapping):
        raise ProtocolInputError("payload", "must be a JSON object")
    spec = registry.moves.get(command)
    if spec is None:
        raise _unknown_command(command, registry)
    trigger = spec.trigger_for(payload)
    context = registry.contexts.get(trigger, no_context)(record)
    if trigger in INFUSION_TRIGGERS and record.toxicities:
        context = _with_holds_open_then(record, context, occurred_at, version)
    if record.pre_infusion_temperatures and (
        trigger in INFUSION_TRIGGERS or trigger == Trigger.ASSESS_PRE_INFUSION
    ):
        # the pre-infusion gate (issue 20): temperatures above the limit on record within the
        # window before this move's clinical time
        context = pre_infusion.with_window(record, context, occurred_at, version.params)
    _check_payload_keys(spec, payload, registry)
    seed: dict[str, Any] = {}
    try:
        norm, pfacts = spec.parse(record, payload, occurred_at.date(), context, seed)
    except ContextInputError:
        # Well formed, but unusable with what is on record: a move out of sequence is refused
        # as such first (D3 before D1 is out of sequence, not short of a course weight).
        check_sequence(record, trigger, version, registry)
        raise
    if spec.check_time is not None:
        spec.check_time(record, pfacts, occurred_at)
    if spec.check_reason is not None:
        spec.check_reason(record, pfacts, reason, occurred_at)
    facts = {**context, **pfacts, **bedside_facts(pfacts, occurred_at, actor)}
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
        raise MoveRefusedError(run, allowed_now(record, version, registry))
    assert run.dest is not None
    return Prepared(
        command=command,
        trigger=trigger,
        from_state=record.state,
        to_state=run.dest,
        payload=norm,
        facts=facts,
        outcome=spec.outcome(trigger, facts, probe, params),
    )


def bedside_facts(
    pfacts: Mapping[str, Any], occurred_at: dt.datetime, actor: str | None
) -> dict[str, Any]:
    """What the bedside check of an infusion naming a bag reads besides its payload: who gives
    the bag (the actor recording it: the first verifier) and when (none for other moves)."""
    if "bag_id" not in pfacts:
        return {}
    return {"administered_by": actor, "infused_at": occurred_at.isoformat()}


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


def check_sequence(
    record: PatientRecord, trigger: str, version: ProtocolVersion, registry: Registry = REGISTRY
) -> None:
    """Refuse a move its protocol never allows from the record's state, before its payload is
    read: D3 before D1 is out of sequence, whatever its cell count would need."""
    event = version.machine.events.get(trigger)
    if event is not None and record.state not in event.transitions:
        run = version.dry_run(record.state, trigger, context_facts(record, trigger, registry))
        raise MoveRefusedError(run, allowed_now(record, version, registry))


def allowed_now(
    record: PatientRecord, version: ProtocolVersion, registry: Registry = REGISTRY
) -> list[str]:
    """The moves allowed now, given what is on record (the caller supplies a compliant payload).

    Each move is judged on its own :func:`context_facts` (or the cheaper context its definition
    gives for this question); consecutive moves whose facts are the same
    (``cancel_remaining_fractions`` and ``assess_response``, ``continue_treatment`` and
    ``cease``) are given one dict, built once."""
    contexts = registry.allowed_contexts
    last_builder: Callable[[PatientRecord], dict[str, Any]] | None = None
    last_facts: dict[str, Any] = {}

    def facts_of(trigger: str) -> dict[str, Any]:
        nonlocal last_builder, last_facts
        builder = contexts.get(trigger, no_context)
        if builder is not last_builder:
            last_builder = builder
            last_facts = builder(record)
        return last_facts

    return version.allowed_moves_by(record.state, facts_of)


def command_of(trigger: str, registry: Registry = REGISTRY) -> str:
    """The command that fires ``trigger``."""
    definition = registry.by_trigger.get(trigger)
    return definition.name if definition is not None else trigger


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
