"""The dry run reads the machine's transition table itself; it must answer exactly as
``transitions`` does when it fires the trigger on the probe (the reference path)."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import Machine

from cart_course.contract import parse_command
from cart_course.demo import assessment, cohort, eligible_screening
from cart_course.protocol.commands import allowed_now, context_facts
from cart_course.protocol.eligibility import parse_screening
from cart_course.protocol.machine import (
    Probe,
    _plain_table,
    dry_run_by_trigger,
    dry_run_probe,
)
from cart_course.protocol.states import State
from cart_course.protocol.versions import CURRENT
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

V = CURRENT
STATES = [s.value for s in State]
TRIGGERS = [*V.machine.events, "infuse_d4"]

_eligible = parse_screening(eligible_screening(random.Random(3))).to_json()
_ineligible = {**_eligible, "kps": 60}
TOX = [
    {"id": "CRS-1", "kind": "CRS", "grade": 1},
    {"id": "CRS-2", "kind": "CRS", "grade": 3},
    {"id": "ICANS-1", "kind": "ICANS", "grade": 2},
    {"id": "other-1", "kind": "other", "grade": 3},
]

#: Each fact the rules read, with values that pass, fail, or are odd (absent keys come for free).
VALUES: dict[str, Any] = {
    "screening": st.sampled_from([_eligible, _ineligible]),
    "screening_date": st.sampled_from(["2026-01-05", "2030-01-01"]),
    "consent_on_file": st.sampled_from([True, False, None]),
    "apheresis_contraindication": st.sampled_from([True, False, None]),
    "day": st.sampled_from([1, 2, 3]),
    "course_number": st.integers(0, 4),
    "weight_kg": st.sampled_from([70.0, 55, None, "70"]),
    "previous_date": st.sampled_from(["2026-01-10", "2026-01-11", None]),
    "infusion_date": st.sampled_from(["2026-01-11", "2026-01-13", "2026-01-09"]),
    "delivered_before": st.sampled_from([0.0, 7e6, 2.8e7, 9e7]),
    "cells": st.sampled_from([7e6, 2.1e7, 4.2e7, 1e9]),
    "fractions_cancelled": st.booleans(),
    "open_toxicities": st.lists(st.sampled_from(TOX), max_size=3),
    "course_toxicities": st.lists(st.sampled_from(TOX), max_size=3),
    "toxicity_id": st.sampled_from(["CRS-1", "CRS-2", "ICANS-1", "nope"]),
    "reason": st.sampled_from(["grade 3 CRS", "", "  ", None]),
    "deviation_reason": st.sampled_from(["pump failure", ""]),
    "assessment": st.sampled_from([assessment("CR"), assessment("PR"), assessment("NR")]),
    "clinician_response": st.sampled_from(["CR", "PR", "NR", None]),
    "response": st.sampled_from(["CR", "CRi", "PR", "NR", None]),
}

facts_strategy = st.fixed_dictionaries({}, optional=VALUES)


def _outcome(run: Any) -> Any:
    try:
        return ("ok", run())
    except Exception as exc:  # both paths must fail alike, too
        return ("error", type(exc).__name__, str(exc))


def _both(state: str, trigger: str, facts: dict[str, Any], hypothetical: bool) -> tuple[Any, Any]:
    direct_probe = Probe(state, facts, V.params, hypothetical=hypothetical)
    library_probe = Probe(state, facts, V.params, hypothetical=hypothetical)
    direct = _outcome(lambda: (dry_run_probe(V.machine, direct_probe, trigger), direct_probe.state))
    library = _outcome(
        lambda: (dry_run_by_trigger(V.machine, library_probe, trigger), library_probe.state)
    )
    return direct, library


def test_the_protocol_machine_is_read_directly() -> None:
    assert _plain_table(V.machine) is not None


@settings(max_examples=3000, deadline=None)
@given(
    state=st.sampled_from(STATES),
    trigger=st.sampled_from(TRIGGERS),
    facts=facts_strategy,
    hypothetical=st.booleans(),
)
def test_direct_dry_run_answers_as_the_library_fires_the_trigger(
    state: str, trigger: str, facts: dict[str, Any], hypothetical: bool
) -> None:
    direct, library = _both(state, trigger, facts, hypothetical)
    assert direct == library


def test_unknown_state_fails_alike() -> None:
    direct, library = _both("nowhere", "screen", {}, False)
    assert direct == library
    assert direct[0] == "error"


def test_allowed_moves_along_a_cohort_match_the_library() -> None:
    """At every step of 20 synthetic courses, the moves allowed now are the library's answer."""
    service = CourseService(open_application(parse_store_url("memory:")))
    checked = 0
    for raw in cohort(20, 5):
        result = service.execute(parse_command(raw))
        record = service.record(raw["patient_id"])
        reference = [
            trigger
            for trigger, event in V.machine.events.items()
            if record.state in event.transitions
            and dry_run_by_trigger(
                V.machine,
                Probe(record.state, context_facts(record, trigger), V.params, hypothetical=True),
                trigger,
            ).allowed
        ]
        assert list(result.allowed_moves) == reference == allowed_now(record, V)
        checked += 1
    assert checked > 100


def test_a_machine_with_callbacks_is_fired_by_the_library() -> None:
    calls: list[str] = []
    machine = Machine(
        model=None,
        states=["a", "b"],
        transitions=[
            {"trigger": "go", "source": "a", "dest": "b", "before": lambda: calls.append("x")}
        ],
        initial=None,
        auto_transitions=False,
    )
    assert _plain_table(machine) is None
    run = dry_run_probe(machine, Probe("a", {}, V.params), "go")
    assert run.allowed and run.dest == "b" and calls == ["x"]
