"""A missing baseline: the category is decided when it does not need it; the progression flag is
then not evaluable (``progression: None``), never a refusal. A category that does need it (PR:
a fall from baseline) stays not evaluable, and a clinician's response with a reason records it.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cart_course.demo import eligible_screening
from cart_course.protocol.commands import MoveRefusedError, Prepared, outcome_of, prepare
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.machine import Probe
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.response import (
    RESPONSES,
    ResponseNotEvaluableError,
    ResponseResult,
    check_clinician_response,
    classify_response,
    parse_response_assessment,
)
from cart_course.protocol.versions import CURRENT

#: CR in every respect, but no baseline (neither marrow blasts nor extramedullary status).
CR_NO_BASELINE: dict[str, Any] = {
    "marrow_blasts_pct": 1,
    "circulating_blasts_present": False,
    "anc": {"value": 1.5, "unit": "10^9/L"},
    "platelets": {"value": 150, "unit": "10^9/L"},
    "extramedullary_disease": "none",
}
PROGRESSION_MISSING = "progression not evaluable: baseline marrow blasts % "


def classify(**changes: Any) -> ResponseResult:
    data = {**CR_NO_BASELINE, **changes}
    return classify_response(
        parse_response_assessment({k: v for k, v in data.items() if v is not None})
    )


# ---------------------------------------------------------------- pure classification


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "CR"),
        ({"anc": {"value": 0.8, "unit": "10^9/L"}}, "CRi"),
        ({"platelets": {"value": 60, "unit": "10^9/L"}}, "CRi"),
        ({"marrow_blasts_pct": 30}, "NR"),  # above the PR range: NR whatever the baseline
        ({"marrow_blasts_pct": 80, "circulating_blasts_present": True}, "NR"),
    ],
)
def test_a_category_that_does_not_need_the_baseline_is_decided_without_it(
    changes: dict[str, Any], expected: str
) -> None:
    r = classify(**changes)
    assert r.category == expected
    assert r.missing == ()
    assert r.progression is None
    assert r.progression_missing == ("baseline_marrow_blasts_pct",)
    assert r.reasons[0].startswith(f"{expected} under harmonised B-ALL")
    assert any(s.startswith(PROGRESSION_MISSING) for s in r.reasons)
    r.raise_if_not_evaluable()  # decided: nothing raised
    data = json.loads(json.dumps(r.to_json()))
    assert (data["category"], data["progression"], data["missing"]) == (expected, None, [])
    assert data["progression_missing"] == ["baseline_marrow_blasts_pct"]
    # with the baseline recorded the category is the same and the flag is decided
    with_baseline = classify(**changes, baseline_marrow_blasts_pct=90)
    assert with_baseline.category == expected
    assert with_baseline.progression is False
    assert with_baseline.progression_missing == ()


def test_progression_stays_decided_when_it_is_known_without_the_baseline() -> None:
    # new extramedullary disease is progression whatever the marrow baseline
    r = classify(
        marrow_blasts_pct=40,
        extramedullary_disease="present",
        baseline_extramedullary_disease="none",
    )
    assert (r.category, r.progression, r.progression_missing) == ("NR", True, ())
    # a rise of 25 % from a recorded baseline is progression too
    r = classify(marrow_blasts_pct=50, baseline_marrow_blasts_pct=40)
    assert (r.category, r.progression) == ("NR", True)


def test_missing_extramedullary_values_leave_only_the_flag_not_evaluable_for_an_nr() -> None:
    r = classify(marrow_blasts_pct=80, baseline_marrow_blasts_pct=85, extramedullary_disease=None)
    assert (r.category, r.progression) == ("NR", None)
    assert r.progression_missing == ("extramedullary_disease",)
    r = classify(
        marrow_blasts_pct=80,
        baseline_marrow_blasts_pct=85,
        extramedullary_disease="present",
    )
    assert (r.category, r.progression) == ("NR", None)
    assert r.progression_missing == ("baseline_extramedullary_disease",)


def test_a_pr_needs_the_baseline_and_stays_not_evaluable_without_it() -> None:
    r = classify(marrow_blasts_pct=12)
    assert r.category is None
    assert r.missing == ("baseline_marrow_blasts_pct",)
    assert r.not_evaluable == (
        "baseline marrow blasts % ('baseline_marrow_blasts_pct') not recorded; needed to decide "
        "between PR and NR"
    )
    assert r.reasons[0] == f"not evaluable under harmonised B-ALL (NCCN/CIBMTR): {r.not_evaluable}"
    assert r.to_json()["category"] is None
    with pytest.raises(ResponseNotEvaluableError) as exc:
        r.raise_if_not_evaluable()
    assert exc.value.field == "baseline_marrow_blasts_pct"
    assert "or a clinician's response (clinician_response) with a reason" in exc.value.message
    # below 5 % but with circulating blasts: CR/CRi not met; PR needs the fall from baseline
    assert classify(circulating_blasts_present=True).missing == ("baseline_marrow_blasts_pct",)


@pytest.mark.parametrize(
    "changes",
    [
        {"anc": None},
        {"platelets": None},
        {"anc": None, "platelets": None},
        {"circulating_blasts_present": None},
        {"extramedullary_disease": None},
    ],
)
def test_a_cr_is_never_computed_from_missing_counts_or_sites_without_a_baseline(
    changes: dict[str, Any],
) -> None:
    r = classify(**changes)
    assert r.category is None
    assert set(r.missing) == set(changes)
    assert "baseline_marrow_blasts_pct" not in r.missing  # the first question is CR/CRi


# ---------------------------------------------------------------- clinician's response


def test_a_clinician_response_with_a_reason_stands_in_for_a_category_not_evaluable() -> None:
    r = classify(marrow_blasts_pct=12)
    [alone] = check_clinician_response(r, None, None)
    assert alone.startswith("the computed response is not evaluable (baseline marrow blasts %")
    assert "or a clinician's response (clinician_response) with a reason" in alone
    [no_reason] = check_clinician_response(r, "PR", "  ")
    assert no_reason.startswith("clinician response PR is recorded without a computed one")
    assert "give a reason" in no_reason
    for clinician in RESPONSES:
        assert check_clinician_response(r, clinician, "outside baseline marrow: 40 %") == []
    [unknown] = check_clinician_response(r, "VGPR", "because")
    assert "is not allowed" in unknown


def test_a_decided_category_without_baseline_needs_no_clinician() -> None:
    r = classify()
    assert check_clinician_response(r, None, None) == []
    assert check_clinician_response(r, "CR", None) == []
    assert check_clinician_response(r, "CRi", None)  # differing still needs a reason


# ---------------------------------------------------------------- properties

_OPTIONAL = (
    "baseline_marrow_blasts_pct",
    "circulating_blasts_present",
    "anc",
    "platelets",
    "extramedullary_disease",
    "baseline_extramedullary_disease",
)


@given(
    blasts=st.decimals(min_value=0, max_value=100, places=1).map(float),
    baseline=st.decimals(min_value=0, max_value=100, places=1).map(float),
    anc=st.sampled_from([0.5, 0.999, 1.0, 2.0]),
    plt=st.sampled_from([50, 99, 100, 200]),
    circulating=st.booleans(),
    emd=st.sampled_from(["none", "present"]),
    baseline_emd=st.sampled_from(["none", "present"]),
    dropped=st.sets(st.sampled_from(_OPTIONAL)),
)
def test_a_missing_value_never_changes_a_decided_result_it_only_leaves_it_open(
    blasts: float,
    baseline: float,
    anc: float,
    plt: int,
    circulating: bool,
    emd: str,
    baseline_emd: str,
    dropped: set[str],
) -> None:
    full: dict[str, Any] = {
        "marrow_blasts_pct": blasts,
        "baseline_marrow_blasts_pct": baseline,
        "circulating_blasts_present": circulating,
        "anc": {"value": anc, "unit": "10^9/L"},
        "platelets": {"value": plt, "unit": "10^9/L"},
        "extramedullary_disease": emd,
        "baseline_extramedullary_disease": baseline_emd,
    }
    complete = classify_response(parse_response_assessment(full))
    assert complete.category in RESPONSES and complete.progression is not None
    partial = classify_response(
        parse_response_assessment({k: v for k, v in full.items() if k not in dropped})
    )
    # the category and the flag are the complete ones, or not evaluable naming dropped values
    assert partial.category in (complete.category, None)
    assert partial.progression in (complete.progression, None)
    assert set(partial.missing) <= dropped
    assert set(partial.progression_missing) <= dropped
    assert (partial.category is None) == bool(partial.missing)
    assert (partial.progression is None) == bool(partial.progression_missing)
    if partial.category in ("CR", "CRi"):  # never from a missing count, blast or site value
        assert not {"circulating_blasts_present", "extramedullary_disease"} & dropped
        if partial.category == "CR":
            assert not {"anc", "platelets"} & dropped
    baselines = {"baseline_marrow_blasts_pct", "baseline_extramedullary_disease"}
    if dropped <= baselines and (complete.category in ("CR", "CRi") or blasts > 25):
        # CR, CRi, and an NR above the PR range, do not need a baseline: decided without it
        assert partial.category == complete.category


# ---------------------------------------------------------------- commands: prepare and outcome


class Patient:
    """A patient moved through ``prepare`` + ``apply_to`` (what the service does)."""

    def __init__(self) -> None:
        self.record = PatientRecord(patient_id="P-B1")
        self.day = dt.date(2026, 1, 5)
        self.do("screen", {"screening": eligible_screening(random.Random(5))})
        self.do("record_apheresis", {"apheresis_contraindication": False}, days=2)
        self.do(
            "give_infusion",
            {
                "day": 1,
                "weight": {"value": 70, "unit": "kg"},
                "cells": {"value": 7e6, "unit": "cells"},
            },
            days=5,
        )
        self.do("give_infusion", {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}})
        self.do("give_infusion", {"day": 3, "cells": {"value": 4.2e7, "unit": "cells"}})

    def prepared(
        self, command: str, payload: dict[str, Any], reason: str | None = None, days: int = 1
    ) -> Prepared:
        when = dt.datetime.combine(self.day + dt.timedelta(days=days), dt.time(9), tzinfo=dt.UTC)
        return prepare(self.record, command, payload, when, reason, CURRENT)

    def do(
        self, command: str, payload: dict[str, Any], reason: str | None = None, days: int = 1
    ) -> Prepared:
        p = self.prepared(command, payload, reason, days)
        self.day += dt.timedelta(days=days)
        when = dt.datetime.combine(self.day, dt.time(9), tzinfo=dt.UTC)
        p.apply_to(
            self.record, occurred_at=when.isoformat(), protocol_version=CURRENT.id, reason=reason
        )
        return p


def test_cr_without_baseline_is_recorded_with_progression_not_evaluable() -> None:
    p = Patient()
    prepared = p.do("assess_response", {"assessment": CR_NO_BASELINE}, days=26)
    assert prepared.to_state == "assessed"
    out = prepared.outcome
    assert (out["computed_response"], out["response"], out["progression"]) == ("CR", "CR", None)
    assert any(s.startswith(PROGRESSION_MISSING) for s in out["reasons"])
    assert json.loads(json.dumps(out)) == out
    course = p.record.course
    assert course is not None and (course.response, course.computed_response) == ("CR", "CR")
    assert p.do("cease", {}, reason="CR; patient declines more").to_state == "ceased"


def test_the_same_payload_with_an_agreeing_clinician_response_is_recorded() -> None:
    p = Patient()
    payload = {"assessment": CR_NO_BASELINE, "clinician_response": "CR"}
    prepared = p.do("assess_response", payload, reason="outside baseline unavailable", days=26)
    assert (prepared.outcome["computed_response"], prepared.outcome["response"]) == ("CR", "CR")
    assert prepared.outcome["progression"] is None


def test_pr_without_baseline_needs_a_clinician_response_with_a_reason() -> None:
    p = Patient()
    pr = {**CR_NO_BASELINE, "marrow_blasts_pct": 12}
    with pytest.raises(ProtocolInputError) as info:  # nothing to record: names the missing value
        p.prepared("assess_response", {"assessment": pr}, days=26)
    assert info.value.field == "payload.assessment.baseline_marrow_blasts_pct"
    assert "or a clinician's response (clinician_response) with a reason" in info.value.message
    payload = {"assessment": pr, "clinician_response": "PR"}
    with pytest.raises(MoveRefusedError) as refused:
        p.prepared("assess_response", payload, days=26)
    assert [f.rule for f in refused.value.failed] == ["clinician_response_consistent"]
    assert "the computed response is not evaluable" in str(refused.value)
    reason = "baseline marrow 40 % at the referring hospital; report pending"
    prepared = p.do("assess_response", payload, reason=reason, days=26)
    out = prepared.outcome
    assert (out["computed_response"], out["response"], out["progression"]) == (None, "PR", None)
    assert out["reasons"][0].startswith("not evaluable under harmonised B-ALL (NCCN/CIBMTR): ")
    assert "baseline_marrow_blasts_pct" in out["reasons"][0]
    assert prepared.facts["reason"] == reason
    course = p.record.course
    assert course is not None and (course.response, course.computed_response) == ("PR", None)
    # the course goes on: the PR decision rules read the clinician's category
    assert p.do("continue_treatment", {}, reason="PR: a second course").to_state == "continued"


def test_the_recorded_facts_give_the_recorded_outcome_again() -> None:
    """What an audit re-run (conformance, corrections) computes from the stored facts."""
    p = Patient()
    pr = {**CR_NO_BASELINE, "marrow_blasts_pct": 12}
    prepared = p.do(
        "assess_response", {"assessment": pr, "clinician_response": "NR"}, reason="r", days=26
    )
    facts = json.loads(json.dumps(prepared.facts))
    run = CURRENT.dry_run("infused_d3", "assess_response", facts)
    assert run.allowed and run.dest == "assessed"
    assert outcome_of("assess_response", facts, CURRENT) == prepared.outcome
    fresh = Probe("infused_d3", facts, CURRENT.params).response()
    assert fresh.category is None and fresh.missing == ("baseline_marrow_blasts_pct",)
