"""``prepare`` reuses what it parsed and computed once; its answers are those of a from-scratch run.

``prepare`` hands the objects its payload parsers built (screening, response assessment, toxicity
report) to the probe the move is dry-run on, and decides a screening without building its
sentences. These tests prove the reuse changes nothing a user sees: the parsed objects are what
re-parsing the recorded facts gives, the fast eligibility decision is the full evaluation's, and
every command of a demo cohort (and many broken variants of it) gets the same record, the same
refusal or the same input error as the unoptimized composition of the protocol's public parts.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_strategies import lab

from cart_course.demo import cohort, crs, eligible_screening, icans
from cart_course.protocol import pre_infusion
from cart_course.protocol.commands import (
    MoveRefusedError,
    Prepared,
    allowed_now,
    bedside_facts,
    check_resolution_time,
    check_sequence,
    context_facts,
    outcome_of,
    payload_facts,
    prepare,
    trigger_for,
)
from cart_course.protocol.eligibility import (
    SCREENING_KEYS,
    eligibility_failures,
    evaluate_eligibility,
    parse_screening,
)
from cart_course.protocol.errors import ContextInputError, ProtocolInputError
from cart_course.protocol.machine import Probe, dry_run_by_trigger
from cart_course.protocol.parameters import DEFAULT_PARAMETERS
from cart_course.protocol.plausibility import LAB_RANGES
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.registry import REGISTRY
from cart_course.protocol.response import classify_response, parse_response_assessment
from cart_course.protocol.toxicity import grade_toxicity, parse_toxicity_report
from cart_course.protocol.versions import CURRENT, ProtocolVersion, make_version

SCREENING_DATE = dt.date(2025, 3, 10)

# ------------------------------------------------------------------------------------------------
# Screening: the fast decision is the full evaluation's
# ------------------------------------------------------------------------------------------------


def _tenths(lo: int, hi: int) -> st.SearchStrategy[float]:
    return st.integers(lo, hi).map(lambda n: n / 10)


def _within(key: str, unit: str) -> st.SearchStrategy[float]:
    """Whole numbers and tenths within the plausible range of ``key`` in ``unit``."""
    low, high = LAB_RANGES[key].bounds(unit)
    return st.one_of(
        st.integers(math.ceil(low), min(math.floor(high), 500)),
        _tenths(math.ceil(low * 10), min(math.floor(high * 10), 5000)),
    )


def _lab(key: str, units: tuple[str, ...], uln: bool) -> st.SearchStrategy[dict[str, Any]]:
    return lab(_within, key, units, uln)


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "failed_standard_lines": st.integers(0, 4),
    "kps": st.integers(60, 100),
    "life_expectancy_months": st.one_of(st.integers(0, 8), _tenths(0, 80)),
    "lvef_pct": st.one_of(st.integers(40, 60), _tenths(400, 600)),
    "spo2_room_air_pct": st.one_of(st.integers(85, 95), _tenths(850, 950)),
    "creatinine": _lab("creatinine", ("mg/dL", "umol/L"), uln=True),
    "alt": _lab("alt", ("U/L",), uln=True),
    "ast": _lab("ast", ("U/L",), uln=True),
    "bilirubin": _lab("bilirubin", ("mg/dL", "umol/L"), uln=False),
    "hemoglobin": _lab("hemoglobin", ("g/L", "g/dL"), uln=False),
    "informed_consent_date": st.dates(dt.date(2025, 3, 1), dt.date(2025, 3, 20)).map(
        dt.date.isoformat
    ),
    "last_systemic_glucocorticoid": st.one_of(
        st.none(),
        st.just("none"),
        st.dates(dt.date(2025, 2, 20), dt.date(2025, 3, 15)).map(dt.date.isoformat),
    ),
}


@st.composite
def screenings(draw: st.DrawFn) -> dict[str, Any]:
    """Valid screening objects: each key present or absent, values near every threshold."""
    data: dict[str, Any] = {}
    for key in SCREENING_KEYS:
        if draw(st.integers(0, 5)) == 0:  # absent: the criterion is missing
            continue
        data[key] = draw(VALUES.get(key, st.booleans()))
    if "informed_consent_date" in data:
        data["informed_consent_signed"] = True
    return data


PARAMS = st.sampled_from(
    [
        DEFAULT_PARAMETERS,
        attrs.evolve(DEFAULT_PARAMETERS, glucocorticoid_washout_days=14, kps_above=70),
        attrs.evolve(DEFAULT_PARAMETERS, creatinine_max_x_uln=1.5, hemoglobin_min_g_l=90.0),
    ]
)


def _decide(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except ProtocolInputError as exc:
        return ("error", exc.field, exc.message)


@settings(max_examples=600, deadline=None)
@given(raw=screenings(), day=st.dates(dt.date(2025, 3, 1), dt.date(2025, 3, 20)), params=PARAMS)
def test_fast_eligibility_decides_as_the_full_evaluation(
    raw: dict[str, Any], day: dt.date, params: Any
) -> None:
    data = parse_screening(raw)
    full = _decide(lambda: tuple(c.id for c in evaluate_eligibility(data, day, params).failed))
    assert _decide(eligibility_failures, data, day, params) == full


def test_fast_eligibility_names_the_failed_criteria_of_an_ineligible_screening() -> None:
    raw = {**eligible_screening(random.Random(3)), "kps": 80, "hiv": True}
    raw.pop("nursing")
    assert eligibility_failures(parse_screening(raw), SCREENING_DATE) == ("kps", "hiv", "nursing")


@settings(max_examples=300, deadline=None)
@given(raw=screenings())
def test_screening_reparsed_from_its_facts_is_the_object_prepare_reuses(
    raw: dict[str, Any],
) -> None:
    data = parse_screening(raw)
    stored = json.loads(json.dumps(data.to_json()))
    again = parse_screening(stored)
    assert again == data
    # Same values of the same types (1 and 1.0 are equal, but are written differently).
    assert [type(getattr(again, k)) for k in SCREENING_KEYS] == [
        type(getattr(data, k)) for k in SCREENING_KEYS
    ]
    assert json.dumps(again.to_json()) == json.dumps(data.to_json())


# ------------------------------------------------------------------------------------------------
# Response assessment and toxicity report: re-parsing the facts gives the reused objects
# ------------------------------------------------------------------------------------------------


@st.composite
def _count(draw: st.DrawFn, key: str) -> dict[str, Any] | None:
    """No count, or one near the CR limits within its plausible range (LAB_RANGES)."""
    if draw(st.integers(0, 8)) == 0:
        return None
    unit = draw(st.sampled_from(["10^9/L", "/uL"]))
    high = min(int(LAB_RANGES[key].bounds(unit)[1]), 3000)
    value = draw(st.one_of(st.integers(0, high), _tenths(0, 30)))
    return {"value": value, "unit": unit}


@st.composite
def assessments(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {
        "marrow_blasts_pct": draw(st.one_of(st.integers(0, 60), _tenths(0, 600)))
    }
    if draw(st.booleans()):
        data["baseline_marrow_blasts_pct"] = draw(st.one_of(st.integers(0, 90), _tenths(0, 900)))
    circ = draw(st.sampled_from(["present", "pct", "none"]))
    if circ == "present":
        data["circulating_blasts_present"] = draw(st.booleans())
    elif circ == "pct":
        data["circulating_blasts_pct"] = draw(_tenths(0, 100))
    data["anc"] = draw(_count("anc"))
    data["platelets"] = draw(_count("platelets"))
    data["extramedullary_disease"] = draw(st.sampled_from([None, "none", "present"]))
    if draw(st.booleans()):
        data["baseline_extramedullary_disease"] = draw(st.sampled_from(["none", "present"]))
    if draw(st.booleans()):
        data["mrd"] = {
            "value": draw(st.sampled_from([0, 0.0, 1e-5, 2e-4, 0.01])),
            "unit": "fraction",
            "method": draw(st.sampled_from(["flow", "NGS", "PCR"])),
            "sensitivity": draw(st.sampled_from([1e-4, 1e-5, 1e-6])),
        }
    return data


@settings(max_examples=400, deadline=None)
@given(raw=assessments(), params=PARAMS)
def test_assessment_reparsed_from_its_facts_is_the_object_prepare_reuses(
    raw: dict[str, Any], params: Any
) -> None:
    parsed = parse_response_assessment(raw)
    stored = json.loads(json.dumps(parsed.to_json()))
    again = parse_response_assessment(stored)
    assert again == parsed
    assert json.dumps(again.to_json()) == json.dumps(parsed.to_json())
    assert _decide(classify_response, again, params) == _decide(classify_response, parsed, params)


@pytest.mark.parametrize(
    "report",
    [
        crs(2),
        crs(3),
        icans(1),
        icans(3),
        {"kind": "other", "term": "febrile neutropenia", "grade": 3, "scale": "CTCAE"}
        | {"scale_version": "5.0"},
    ],
)
def test_toxicity_report_reparsed_from_its_facts_is_the_object_prepare_reuses(
    report: dict[str, Any],
) -> None:
    parsed = parse_toxicity_report(report)
    again = parse_toxicity_report(json.loads(json.dumps(parsed.to_json())))
    assert again == parsed
    assert grade_toxicity(again) == grade_toxicity(parsed)


# ------------------------------------------------------------------------------------------------
# prepare == the protocol's public parts composed from scratch, over a cohort and broken variants
# ------------------------------------------------------------------------------------------------


def _from_scratch(
    record: PatientRecord,
    command: str,
    payload: Any,
    occurred_at: dt.datetime,
    reason: str | None,
    version: ProtocolVersion,
) -> Prepared:
    """The decision with nothing reused: every rule parses the facts it reads itself."""
    trigger = trigger_for(command, payload)
    context = context_facts(record, trigger)
    if record.pre_infusion_temperatures and (
        trigger.startswith("infuse_d") or trigger == "assess_pre_infusion"
    ):  # the fevers on record within the gate's window (issue 20)
        context = pre_infusion.with_window(record, context, occurred_at, version.params)
    try:
        norm, pfacts = payload_facts(record, command, payload, occurred_at.date(), context)
    except ContextInputError:  # well formed but unusable now: out of sequence is judged first
        check_sequence(record, trigger, version)
        raise
    if trigger == "resolve_toxicity":
        check_resolution_time(record, pfacts["toxicity_id"], occurred_at)
    else:  # the other clinical-time checks of the definitions (issue 16: awareness, visits)
        check_time = REGISTRY.by_trigger[trigger].check_time
        if check_time is not None:
            check_time(record, pfacts, occurred_at)
    facts = {**context, **pfacts, **bedside_facts(pfacts, occurred_at, None)}
    if reason:
        facts["reason"] = reason
    run = dry_run_by_trigger(version.machine, Probe(record.state, facts, version.params), trigger)
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
        outcome=outcome_of(trigger, facts, version),
    )


def _answer(fn: Any, *args: Any) -> Any:
    try:
        return ("recorded", fn(*args))
    except MoveRefusedError as exc:
        return ("refused", str(exc), exc.run, exc.allowed)
    except ProtocolInputError as exc:
        return ("input error", type(exc).__name__, exc.field, exc.message)


_ODD = [None, "x", "", -1, 0, 2, 4, 1.5, 1e9, True, "2020-01-01", "CR", "cells/kg", {}, [1]]


def _broken(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The payload with one value replaced or one key dropped, anywhere in it."""
    out = copy.deepcopy(payload)
    places: list[tuple[Any, Any]] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                places.append((obj, k))
                walk(v)

    walk(out)
    if not places:
        return {"reason": "x"}
    parent, key = rng.choice(places)
    if rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = copy.deepcopy(rng.choice(_ODD))
    return out


AMENDED = make_version(
    "test-amended",
    "amended thresholds (not registered)",
    "2026-01-01",
    attrs.evolve(
        DEFAULT_PARAMETERS, cr_marrow_blasts_below_pct=10.0, kps_above=70, dose_tolerance=0.1
    ),
)


@pytest.mark.parametrize("version", [CURRENT, AMENDED], ids=["current", "amended"])
def test_prepare_answers_as_the_from_scratch_decision(version: ProtocolVersion) -> None:
    rng = random.Random(11)
    records: dict[str, PatientRecord] = {}
    checked = {"recorded": 0, "refused": 0, "input error": 0}
    for env in cohort(40, 5):
        record = records.setdefault(env["patient_id"], PatientRecord(patient_id=env["patient_id"]))
        when = dt.datetime.fromisoformat(env["occurred_at"])
        variants = [
            (env["payload"], when, env["reason"]),
            (_broken(env["payload"], rng), when, env["reason"]),
            (_broken(env["payload"], rng), when, env["reason"]),
            (env["payload"], when + dt.timedelta(days=rng.choice([-3, 2, 40])), env["reason"]),
            (env["payload"], when, None if env["reason"] else "a clinical decision"),
        ]
        for payload, at, reason in variants:
            args = (record, env["command"], payload, at, reason, version)
            answer = _answer(prepare, *args)
            assert answer == _answer(_from_scratch, *args), (env, payload)
            checked[answer[0]] += 1
        answer = _answer(
            prepare, record, env["command"], env["payload"], when, env["reason"], version
        )
        if answer[0] == "recorded":
            answer[1].apply_to(
                record,
                occurred_at=env["occurred_at"],
                protocol_version=version.id,
                reason=env["reason"],
            )
    assert min(checked.values()) > 20, checked  # every kind of answer was compared


def test_rule_conditions_answer_as_the_library_resolving_rule_names() -> None:
    """The protocol's machine checks a rule by calling it; the library's own ``Machine`` resolves
    the rule's name on the probe: both machines give the same dry runs, moves and refusals."""
    from transitions import Machine

    from cart_course.protocol.machine import build_machine

    ours, library = build_machine(), build_machine(Machine)
    assert type(library) is Machine
    params = CURRENT.params
    compared = 0
    records: dict[str, PatientRecord] = {}
    for env in cohort(30, 8):
        if env["command"] in ("correct", "sign"):  # service commands, not moves
            continue
        record = records.setdefault(env["patient_id"], PatientRecord(patient_id=env["patient_id"]))
        when = dt.datetime.fromisoformat(env["occurred_at"])
        for trigger in {trigger_for(env["command"], env["payload"]), "withdraw", "cease"}:
            facts = context_facts(record, trigger)
            try:
                _norm, pfacts = payload_facts(
                    record, env["command"], env["payload"], when.date(), facts
                )
            except ProtocolInputError:
                pfacts = {}
            for reason in (None, "clinical decision"):
                all_facts = {**facts, **pfacts, **({"reason": reason} if reason else {})}
                a = dry_run_by_trigger(ours, Probe(record.state, all_facts, params), trigger)
                b = dry_run_by_trigger(library, Probe(record.state, all_facts, params), trigger)
                assert a == b
                compared += 1
        p = prepare(record, env["command"], env["payload"], when, env["reason"], CURRENT)
        p.apply_to(
            record,
            occurred_at=env["occurred_at"],
            protocol_version=CURRENT.id,
            reason=env["reason"],
        )
    assert compared > 500
