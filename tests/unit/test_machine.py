"""The transition table and its named rules, checked through guarded dry runs."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cart_course.demo import assessment, eligible_screening
from cart_course.protocol.diagram import edges
from cart_course.protocol.eligibility import parse_screening
from cart_course.protocol.machine import RULES, TRANSITIONS
from cart_course.protocol.states import NON_TERMINAL, TERMINAL, State
from cart_course.protocol.versions import CURRENT

V = CURRENT
P = V.params

ON = ["apheresed", "infused_d1", "infused_d2", "infused_d3", "assessed", "continued"]
FOLLOW = ["ceased", "discontinued"]
NONTERM = [s.value for s in NON_TERMINAL]

#: The protocol's moves as the issue states them: (trigger, sources, destination).
EXPECTED: list[tuple[str, list[str], str]] = [
    ("screen", ["candidate"], "screened"),
    ("screen", ["candidate"], "screen_failed"),
    ("rescreen", ["screen_failed"], "screened"),
    ("rescreen", ["screen_failed"], "screen_failed"),
    ("record_apheresis", ["screened"], "apheresed"),
    # the cell product: moves while the course waits for it (issue 15)
    ("start_manufacture", ["apheresed", "continued"], "="),
    ("release_product", ["apheresed", "continued"], "="),
    ("repeat_apheresis", ["apheresed", "continued"], "="),
    ("infuse_d1", ["apheresed", "continued"], "infused_d1"),
    ("infuse_d2", ["infused_d1"], "infused_d2"),
    ("infuse_d3", ["infused_d2"], "infused_d3"),
    ("report_toxicity", ON + FOLLOW, "="),
    ("resolve_toxicity", ON + FOLLOW, "="),
    ("cancel_remaining_fractions", ["infused_d1", "infused_d2"], "="),
    ("assess_response", ["infused_d3", "infused_d1", "infused_d2"], "assessed"),
    ("continue_treatment", ["assessed"], "continued"),
    ("cease", ["assessed", "screened", "apheresed", "continued"], "ceased"),
    ("discontinue", ON, "discontinued"),
    # a death "at any point", and a withdrawal of consent, also during follow-up
    ("withdraw", NONTERM + FOLLOW, "withdrawn"),
    ("record_death", NONTERM + FOLLOW, "died"),
    # after the course (issue 16): follow-up visits during the follow-up, and -- entered late --
    # after death or withdrawal; safety reports whenever a serious adverse event's clock runs
    ("record_follow_up", [*FOLLOW, "withdrawn", "died"], "="),
    ("record_missed_visit", [*FOLLOW, "withdrawn", "died"], "="),
    ("record_sae_report", [*ON, *FOLLOW, "withdrawn", "died"], "="),
    # the pre-infusion gate (issue 20): a bedside assessment before the next fraction
    ("assess_pre_infusion", ["apheresed", "continued", "infused_d1", "infused_d2"], "="),
    # a multi-site trial (issue 17): a transfer to another site while the record is open
    ("transfer_site", NONTERM + FOLLOW, "="),
]


def expected_edges() -> set[tuple[str, str, str]]:
    return {
        (src, src if dest == "=" else dest, trigger)
        for trigger, sources, dest in EXPECTED
        for src in sources
    }


def screening(**changes: Any) -> dict[str, Any]:
    data = eligible_screening(random.Random(3))
    data.update(changes)
    return parse_screening(data).to_json()


def good_facts(trigger: str, source: str, dest: str) -> dict[str, Any]:
    """Facts that satisfy every rule of the transition (trigger, source -> dest)."""
    if trigger in ("screen", "rescreen"):
        scr = screening() if dest == "screened" else screening(kps=80)
        return {"screening": scr, "screening_date": "2026-01-05"}
    if trigger == "record_apheresis":
        return {"consent_on_file": True, "apheresis_contraindication": False}
    if trigger.startswith("infuse_d"):
        day = int(trigger[-1])
        return infusion(day)
    if trigger == "start_manufacture":
        return {"collections": ["G123498654321H"], "lots": [], "course_number": 1}
    if trigger == "release_product":
        return {
            "lot_id": "LOT-1",
            "lot_status": "in_manufacture",
            "decision": "released",
            "tests": [{"name": "sterility", "result": "no growth", "passed": True}],
        }
    if trigger == "repeat_apheresis":
        return {
            "consent_on_file": True,
            "apheresis_contraindication": False,
            "lots": [{"lot_id": "LOT-1", "status": "rejected", "course_number": 1}],
            "reason": "LOT-1 failed release",
        }
    if trigger == "resolve_toxicity":
        return {"toxicity_id": "CRS-1", "open_toxicities": [tox("CRS-1", "CRS", 1)]}
    if trigger == "cancel_remaining_fractions":
        return {"fractions_cancelled": False, "reason": "grade 3 CRS"}
    if trigger == "assess_response":
        return {
            "fractions_cancelled": source != "infused_d3",
            "assessment": assessment("CR"),
        }
    if trigger == "continue_treatment":
        return {"response": "PR", "course_number": 1}
    if trigger == "cease":
        return {"response": "NR", "course_number": 1} if source == "assessed" else reason()
    if trigger == "discontinue":
        return {"course_toxicities": [tox("CRS-1", "CRS", 3)], "reason": "grade 3 CRS"}
    if trigger == "withdraw":
        return reason()
    if trigger in ("record_follow_up", "record_missed_visit"):
        return {"follow_up_from": "2026-01-22T09:30:00+01:00", "visit": "M3"}
    if trigger == "record_sae_report":
        return {"sae_cases": ["CRS-1"]}
    if trigger == "assess_pre_infusion":
        day = {"apheresed": 1, "continued": 1, "infused_d1": 2, "infused_d2": 3}.get(source, 1)
        return {"day": day, "next_day": day}
    if trigger == "transfer_site":
        return {"site": "S02", "from_site": "S01", **reason("the patient moved")}
    return {}


def reason(text: str = "patient's wish") -> dict[str, Any]:
    return {"reason": text}


def tox(tid: str, kind: str, grade: int) -> dict[str, Any]:
    return {"id": tid, "kind": kind, "grade": grade}


def infusion(
    day: int, *, weight: float = 70.0, factor: float = 1.0, **changes: Any
) -> dict[str, Any]:
    planned = weight * 1e6 * P.fractions[day - 1]
    before = sum(weight * 1e6 * f for f in P.fractions[: day - 1])
    facts: dict[str, Any] = {
        "day": day,
        "course_number": 1,
        "weight_kg": weight,
        "previous_date": "2026-01-10",
        "infusion_date": "2026-01-11",
        "delivered_before": before,
        "fractions_cancelled": False,
        "open_toxicities": [],
        "cells": planned * factor,
    }
    facts.update(changes)
    return facts


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------


def test_machine_table_is_exactly_the_protocol_moves() -> None:
    actual = {(src, dest, trigger) for src, dest, trigger, _ in edges(V.machine)}
    assert actual == expected_edges()


@pytest.mark.parametrize(
    ("source", "dest", "trigger"), sorted(expected_edges()), ids=lambda v: str(v)
)
def test_every_transition_is_taken_when_its_rules_hold(
    source: str, dest: str, trigger: str
) -> None:
    run = V.dry_run(source, trigger, good_facts(trigger, source, dest))
    assert run.allowed, run.failed
    assert run.dest == dest
    assert run.failed == ()


@pytest.mark.parametrize("state", [s.value for s in State])
def test_moves_outside_the_table_are_refused_naming_the_sequence(state: str) -> None:
    table = {(src, trigger) for src, _, trigger in expected_edges()}
    for trigger in V.machine.events:
        if (state, trigger) in table:
            continue
        run = V.dry_run(state, trigger, good_facts(trigger, state, "screened"))
        assert not run.allowed
        assert [f.rule for f in run.failed] == ["permitted_sequence"]
        assert f"{trigger} is not allowed in state {state}" in run.failed[0].message


def test_unknown_move_is_named() -> None:
    run = V.dry_run("apheresed", "infuse_d4", {})
    assert not run.allowed
    assert run.failed[0].rule == "known_move"
    assert "'infuse_d4' is not a move of this protocol" in run.failed[0].message


@pytest.mark.parametrize("state", [s.value for s in TERMINAL])
def test_terminal_states_allow_no_treatment_move(state: str) -> None:
    context = {"open_toxicities": [tox("CRS-1", "CRS", 2)]}
    allowed = set(V.allowed_moves(state, context))
    follow_up = {"report_toxicity", "resolve_toxicity", "withdraw", "record_death", "transfer_site"}
    assert allowed <= (follow_up if state in FOLLOW else set())
    for trigger in ("infuse_d1", "infuse_d2", "infuse_d3", "continue_treatment"):
        assert not V.dry_run(state, trigger, good_facts(trigger, "apheresed", "x")).allowed
    if state not in FOLLOW:  # withdrawn, died, screen failed: nothing more to record
        assert not V.dry_run(state, "withdraw", good_facts("withdraw", "apheresed", "x")).allowed


def test_withdrawal_and_death_are_open_from_every_non_terminal_state() -> None:
    for state in NONTERM:
        assert V.dry_run(state, "withdraw", reason()).dest == "withdrawn"
        assert V.dry_run(state, "record_death", {}).dest == "died"


def test_every_rule_is_used_in_the_table_and_says_what_it_requires() -> None:
    used = {c for t in TRANSITIONS for c in [*t.get("conditions", []), *t.get("unless", [])]}
    assert used == set(RULES)
    assert all(r.requires.strip() for r in RULES.values())


# ------------------------------------------------------------------------------------------
# Each rule: passes, and fails with its clinician message
# ------------------------------------------------------------------------------------------

FAILURES: list[tuple[str, str, dict[str, Any], str, str]] = [
    # (state, trigger, facts, failed rule, words in the message)
    (
        "screened",
        "record_apheresis",
        {"consent_on_file": False, "apheresis_contraindication": False},
        "consent_on_file",
        "no signed informed consent is on file",
    ),
    (
        "screened",
        "record_apheresis",
        {"consent_on_file": True, "apheresis_contraindication": True},
        "no_apheresis_contraindication",
        "contraindication to apheresis and cell isolation was reported",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, open_toxicities=[tox("CRS-1", "CRS", 1)]),
        "no_open_hold",
        "a toxicity hold is open: CRS grade 1 (CRS-1)",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, open_toxicities=[tox("ICANS-1", "ICANS", 1)]),
        "no_open_hold",
        "ICANS grade 1 (ICANS-1)",
    ),
    (
        "infused_d2",
        "infuse_d3",
        infusion(3, open_toxicities=[tox("other-1", "other", 3)]),
        "no_open_hold",
        "other grade 3 (other-1)",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, fractions_cancelled=True),
        "remaining_fractions_not_cancelled",
        "the remaining fractions of this course were cancelled",
    ),
    (
        "apheresed",
        "infuse_d1",
        infusion(1, weight_kg=None, cells=7e6),
        "weight_known",
        "no body weight for this course",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, infusion_date="2026-01-13"),
        "on_schedule_or_deviation",
        "D2 on 2026-01-13 is 3 day(s) after D1 on 2026-01-10",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, infusion_date="2026-01-10"),
        "on_schedule_or_deviation",
        "0 day(s) after D1",
    ),
    (
        "apheresed",
        "infuse_d1",
        infusion(1, infusion_date="2026-01-09"),
        "on_schedule_or_deviation",
        "D1 on 2026-01-09 is before apheresis on 2026-01-10",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, factor=1.25),
        "dose_within_tolerance_or_deviation",
        "+25% against the planned 2.1e+07",
    ),
    (
        "infused_d1",
        "infuse_d2",
        infusion(2, factor=0.75),
        "dose_within_tolerance_or_deviation",
        "-25% against the planned",
    ),
    (
        "infused_d2",
        "infuse_d3",
        infusion(3, delivered_before=5.6e7),
        "dose_within_tolerance_or_deviation",
        "the course total would be 9.8e+07 cells, above the planned 7e+07",
    ),
    (
        "infused_d1",
        "resolve_toxicity",
        {"toxicity_id": "CRS-9", "open_toxicities": [tox("CRS-1", "CRS", 1)]},
        "toxicity_is_open",
        "toxicity 'CRS-9' is not open; open ones: CRS-1",
    ),
    (
        "infused_d1",
        "cancel_remaining_fractions",
        {"fractions_cancelled": False},
        "reason_given",
        "a reason is required for this move",
    ),
    (
        "infused_d2",
        "cancel_remaining_fractions",
        {"fractions_cancelled": True, "reason": "x"},
        "remaining_fractions_not_cancelled",
        "were cancelled",
    ),
    (
        "infused_d2",
        "assess_response",
        {"fractions_cancelled": False, "assessment": assessment("CR")},
        "remaining_fractions_cancelled",
        "cancel the remaining fractions with a reason first",
    ),
    (
        "infused_d3",
        "assess_response",
        {"assessment": assessment("PR"), "clinician_response": "CR"},
        "clinician_response_consistent",
        "clinician response CR differs from the computed PR",
    ),
    (
        "assessed",
        "continue_treatment",
        {"response": "PR", "course_number": 3},
        "another_course_permitted",
        "after PR the protocol allows 1 or 2 more courses (3 in all); this patient has had 3",
    ),
    (
        "assessed",
        "continue_treatment",
        {"response": "CR", "course_number": 1},
        "another_course_permitted",
        "after CR another course is a clinical decision: record the reason",
    ),
    (
        "assessed",
        "continue_treatment",
        {"response": "NR", "course_number": 1},
        "another_course_permitted",
        "after NR another course is a clinical decision",
    ),
    (
        "assessed",
        "cease",
        {"response": "CRi", "course_number": 1},
        "cease_permitted",
        "after CRi ceasing treatment is a clinical decision: record the reason",
    ),
    (
        "infused_d3",
        "discontinue",
        {"course_toxicities": [tox("CRS-1", "CRS", 2)], "reason": "fever"},
        "severe_toxicity_recorded",
        "needs a severe toxicity (grade >= 3) in this course; the worst recorded is grade 2",
    ),
    ("infused_d3", "withdraw", {}, "reason_given", "a reason is required"),
    ("continued", "cease", {"reason": "  "}, "reason_given", "a reason is required"),
]


@pytest.mark.parametrize(
    ("state", "trigger", "facts", "rule", "words"),
    FAILURES,
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_rule_refuses_with_its_clinician_message(
    state: str, trigger: str, facts: dict[str, Any], rule: str, words: str
) -> None:
    run = V.dry_run(state, trigger, facts)
    assert not run.allowed
    assert run.dest is None
    assert rule in [f.rule for f in run.failed]
    message = next(f.message for f in run.failed if f.rule == rule)
    assert words in message


def test_ineligible_screening_goes_to_screen_failed_with_reasons() -> None:
    facts = {"screening": screening(kps=80, hiv=True), "screening_date": "2026-01-05"}
    run = V.dry_run("candidate", "screen", facts)
    assert run.allowed and run.dest == "screen_failed"
    run = V.dry_run("screen_failed", "rescreen", {**facts, "screening": screening()})
    assert run.dest == "screened"


def test_refusal_lists_every_failed_rule_not_only_the_first() -> None:
    facts = infusion(
        2,
        factor=2.0,
        infusion_date="2026-01-14",
        open_toxicities=[tox("CRS-1", "CRS", 2)],
    )
    run = V.dry_run("infused_d1", "infuse_d2", facts)
    assert [f.rule for f in run.failed] == [
        "no_open_hold",
        "on_schedule_or_deviation",
        "dose_within_tolerance_or_deviation",
    ]


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_dose_at_the_tolerance_limit_is_within_tolerance(factor: float) -> None:
    run = V.dry_run("infused_d1", "infuse_d2", infusion(2, factor=factor))
    assert run.allowed
    assert run.deviations == ()


def test_deviation_reason_allows_an_off_protocol_fraction_and_flags_it() -> None:
    facts = infusion(2, factor=1.5, infusion_date="2026-01-12", deviation_reason="bed shortage")
    run = V.dry_run("infused_d1", "infuse_d2", facts)
    assert run.allowed and run.dest == "infused_d2"
    assert len(run.deviations) == 2
    assert "2 day(s) after D1" in run.deviations[0]
    assert "+50%" in run.deviations[1]


def test_deviation_reason_does_not_lift_a_toxicity_hold() -> None:
    facts = infusion(2, open_toxicities=[tox("CRS-1", "CRS", 1)], deviation_reason="urgent")
    run = V.dry_run("infused_d1", "infuse_d2", facts)
    assert not run.allowed
    assert [f.rule for f in run.failed] == ["no_open_hold"]


def test_other_toxicity_below_hold_grade_does_not_hold() -> None:
    facts = infusion(2, open_toxicities=[tox("other-1", "other", 2)])
    assert V.dry_run("infused_d1", "infuse_d2", facts).allowed


@pytest.mark.parametrize(
    ("response", "number", "with_reason", "continue_ok", "cease_ok"),
    [
        ("CR", 1, False, False, False),
        ("CR", 1, True, True, True),
        ("CRi", 2, False, False, False),
        ("CRi", 2, True, True, True),
        ("PR", 1, False, True, False),  # the protocol continues: ceasing needs a reason
        ("PR", 1, True, True, True),
        ("PR", 2, False, True, True),
        ("PR", 3, False, False, True),
        ("PR", 3, True, False, True),
        ("NR", 1, False, False, True),
        ("NR", 1, True, True, True),
    ],
)
def test_decision_rules_after_assessment(
    response: str, number: int, with_reason: bool, continue_ok: bool, cease_ok: bool
) -> None:
    facts: dict[str, Any] = {"response": response, "course_number": number}
    if with_reason:
        facts["reason"] = "clinical assessment and the patient's wishes"
    assert V.dry_run("assessed", "continue_treatment", facts).allowed is continue_ok
    assert V.dry_run("assessed", "cease", facts).allowed is cease_ok


def test_discontinue_needs_severe_toxicity_and_a_reason() -> None:
    severe = {"course_toxicities": [tox("CRS-1", "CRS", 3)]}
    run = V.dry_run("infused_d1", "discontinue", severe)
    assert [f.rule for f in run.failed] == ["reason_given"]
    assert V.dry_run("infused_d1", "discontinue", {**severe, **reason("CRS grade 3")}).allowed
    icans4 = {"course_toxicities": [tox("ICANS-1", "ICANS", 4)], **reason("ICANS 4")}
    assert V.dry_run("assessed", "discontinue", icans4).dest == "discontinued"


def test_allowed_moves_depend_on_the_facts() -> None:
    held = {"open_toxicities": [tox("CRS-1", "CRS", 1)], "fractions_cancelled": False}
    free = {"open_toxicities": [], "fractions_cancelled": False}
    assert "infuse_d2" not in V.allowed_moves("infused_d1", held)
    assert "infuse_d2" in V.allowed_moves("infused_d1", free)
    assert V.allowed_moves("candidate", {}) == ["screen"]
    on_pr3 = V.allowed_moves("assessed", {"response": "PR", "course_number": 3})
    assert "continue_treatment" not in on_pr3 and "cease" in on_pr3
    assert "continue_treatment" in V.allowed_moves(
        "assessed", {"response": "PR", "course_number": 2}
    )
    assert "assess_response" not in V.allowed_moves("infused_d2", free)
    assert "assess_response" in V.allowed_moves("infused_d2", {**free, "fractions_cancelled": True})


def test_a_transfer_names_another_site_and_a_reason() -> None:
    """Issue 17: ``transfer_site`` moves the patient to another site, with a reason; the same
    site, or no reason, is refused naming the rule."""
    moved = V.dry_run("apheresed", "transfer_site", good_facts("transfer_site", "apheresed", "="))
    assert moved.allowed and moved.dest == "apheresed"
    same = V.dry_run("apheresed", "transfer_site", {"site": "S01", "from_site": "S01", **reason()})
    assert [f.rule for f in same.failed] == ["site_changes"]
    assert "already at site 'S01'" in same.failed[0].message
    silent = V.dry_run("apheresed", "transfer_site", {"site": "S02", "from_site": "S01"})
    assert [f.rule for f in silent.failed] == ["reason_given"]
    for closed in ("withdrawn", "died"):
        assert not V.dry_run(closed, "transfer_site", good_facts("transfer_site", "x", "=")).allowed
