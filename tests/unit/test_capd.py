"""ICANS in children under 12: the CAPD instead of the ICE score (ASTCT 2019; issue 20)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_toxicity import icans_domains

from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.toxicity import (
    CAPD_ITEMS,
    grade_icans_astct,
    grade_toxicity,
    parse_icans_observations,
    parse_toxicity_report,
)


def child(capd: int | None = 6, consciousness: str = "none", **kw: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {"age_years": 7, "capd_score": capd, "consciousness": consciousness}
    obs.update(kw)
    return obs


def grade(obs: dict[str, Any]) -> int:
    return grade_icans_astct(parse_icans_observations(obs)).grade


def error_of(obs: Any) -> ProtocolInputError:
    with pytest.raises(ProtocolInputError) as info:
        parse_toxicity_report({"kind": "ICANS", "observations": obs})
    return info.value


def items(total: int) -> dict[str, int]:
    """Eight items summing to ``total`` (0-32), each 0-4."""
    points = {}
    left = total
    for name in CAPD_ITEMS:
        points[name] = min(4, left)
        left -= points[name]
    return points


# -- the age boundary: 11.9 years is CAPD, 12 years is ICE ------------------------------------


def test_at_11_9_years_the_capd_grades_and_the_ice_is_refused_naming_the_capd() -> None:
    assert grade(child(9, age_years=11.9)) == 3
    err = error_of({"age_years": 11.9, "ice_score": 8, "consciousness": "none"})
    assert err.field == "observations.ice_score"
    assert "children under 12 with the CAPD" in err.message
    assert "give capd_score (0-32) or capd_items" in err.message


def test_at_12_years_the_ice_grades_and_the_capd_is_refused_naming_the_ice() -> None:
    assert grade({"age_years": 12, "ice_score": 8, "consciousness": "none"}) == 1
    err = error_of(child(8, age_years=12))
    assert err.field == "observations.capd_score"
    assert "from 12 years with the ICE score" in err.message
    err = error_of({"age_years": 12, "capd_items": items(8), "consciousness": "none"})
    assert err.field == "observations.capd_items"


# -- the CAPD bands -----------------------------------------------------------------------------


@pytest.mark.parametrize(("capd", "expected"), [(0, 0), (1, 1), (8, 1), (9, 3), (20, 3), (32, 3)])
def test_capd_bands_0_none_1_to_8_grade_1_from_9_grade_3(capd: int, expected: int) -> None:
    assert grade(child(capd)) == expected


def test_capd_8_is_grade_2_when_the_child_wakes_only_to_voice_and_9_is_grade_3() -> None:
    g = grade_icans_astct(parse_icans_observations(child(8, "wakes_to_voice")))
    assert g.grade == 2
    assert "CAPD 8/32" in " ".join(g.reasons)
    g = grade_icans_astct(parse_icans_observations(child(9, "wakes_to_voice")))
    assert g.grade == 3
    assert g.reasons[0].startswith(
        "ASTCT 2019 ICANS (child under 12: CAPD) grade 3: set by CAPD 9/32"
    )


def test_unable_to_perform_the_capd_is_grade_4_only_when_unarousable() -> None:
    assert grade(child(None, "stupor_or_coma")) == 4
    err = error_of(child(None, "wakes_to_voice"))
    assert err.field == "observations.capd_score"
    assert "only when the child is unarousable" in err.message


def test_the_other_domains_are_graded_as_for_adults() -> None:
    assert grade(child(0, seizure="life_threatening_or_repetitive")) == 4
    assert grade(child(3, raised_icp="focal_local_edema")) == 3
    assert grade(child(3, motor="deep_focal_weakness")) == 4
    assert grade(child(3, "wakes_to_touch")) == 3


def test_capd_items_give_the_total_and_a_total_disagreeing_is_refused() -> None:
    obs = {"age_years": 5, "capd_items": items(9), "consciousness": "none"}
    report = parse_toxicity_report({"kind": "ICANS", "observations": obs})
    assert report.to_json()["observations"]["capd_score"] == 9
    assert grade_toxicity(report).grade == 3
    err = error_of({**obs, "capd_score": 8})
    assert err.field == "observations.capd_score"
    assert "does not equal the sum of the CAPD items (9)" in err.message


def test_capd_domain_attributable_to_another_cause_is_not_counted() -> None:
    g = grade_icans_astct(parse_icans_observations(child(12, attributable_to_other_cause=["capd"])))
    assert g.grade == 0
    assert "not counted: CAPD 12/32" in " ".join(g.reasons)
    err = error_of(child(12, attributable_to_other_cause=["ice"]))
    assert err.field == "observations.attributable_to_other_cause.0"


# -- bad input: a clear error naming the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("obs", "field", "words"),
    [
        (
            {"age_years": 6, "capd_items": {**items(4), "restless": 5}, "consciousness": "none"},
            "observations.capd_items.restless",
            "allowed 0 to 4",
        ),
        (
            {"age_years": 6, "capd_items": {**items(4), "restless": -1}, "consciousness": "none"},
            "observations.capd_items.restless",
            "allowed 0 to 4",
        ),
        (child(33), "observations.capd_score", "allowed 0 to 32"),
        ({"capd_score": 5, "consciousness": "none"}, "observations.age_years", "decides the tool"),
        ({"age_years": 6, "consciousness": "none"}, "observations.capd_score", "non-verbal infant"),
    ],
)
def test_bad_capd_input_names_the_field(obs: dict[str, Any], field: str, words: str) -> None:
    err = error_of(obs)
    fields = [err.field, *(o.field for o in err.others)]
    assert field in fields
    assert words in str(err)


def test_a_child_report_round_trips_and_regrades() -> None:
    report = parse_toxicity_report({"kind": "ICANS", "observations": child(10, "wakes_to_voice")})
    again = parse_toxicity_report(json.loads(json.dumps(report.to_json())))
    assert again == report
    assert "ice_score" not in report.to_json()["observations"]
    assert grade_toxicity(again) == grade_toxicity(report)


def test_an_explicit_icans_grade_is_taken_for_a_child_the_capd_does_not_fit() -> None:
    # a non-verbal infant: the CAPD is not applicable; an explicit grade (with a reason in the
    # envelope) is what the message of a missing CAPD points to
    report = parse_toxicity_report(
        {"kind": "ICANS", "scale": "ASTCT", "scale_version": "2019", "grade": 2}
    )
    assert grade_toxicity(report).grade == 2


# -- properties ---------------------------------------------------------------------------------


@st.composite
def child_observations(draw: st.DrawFn) -> dict[str, Any]:
    obs = draw(icans_domains(st.floats(min_value=0, max_value=11.99), "capd"))
    obs["capd_score"] = draw(st.integers(0, 32))
    return obs


@settings(max_examples=300, deadline=None)
@given(obs=child_observations(), a=st.integers(0, 32), b=st.integers(0, 32))
def test_a_higher_capd_never_lowers_the_grade(obs: dict[str, Any], a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert grade({**obs, "capd_score": lo}) <= grade({**obs, "capd_score": hi})
    if obs["consciousness"] == "stupor_or_coma":  # unable to perform is the worst of all
        assert grade({**obs, "capd_score": hi}) <= grade({**obs, "capd_score": None})


@settings(max_examples=200, deadline=None)
@given(obs=child_observations())
def test_child_reports_round_trip_through_json(obs: dict[str, Any]) -> None:
    report = parse_toxicity_report({"kind": "ICANS", "observations": obs})
    again = parse_toxicity_report(json.loads(json.dumps(report.to_json())))
    assert again == report
    assert grade_toxicity(again) == grade_toxicity(report)
