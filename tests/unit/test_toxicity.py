"""Toxicity grading: ASTCT 2019 CRS and ICANS, CTCAE v5 CRS, explicit grades (clinical.md s2-4)."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.parameters import DEFAULT_PARAMETERS, ProtocolParameters
from cart_course.protocol.toxicity import (
    CONSCIOUSNESS_GRADES,
    MOTOR_GRADES,
    OXYGEN_DEVICES,
    RAISED_ICP_GRADES,
    SEIZURE_GRADES,
    Temperature,
    ToxicityGrade,
    ToxicityNotGradableError,
    grade_crs_astct,
    grade_crs_ctcae,
    grade_icans_astct,
    grade_toxicity,
    parse_crs_observations,
    parse_icans_observations,
    parse_toxicity_report,
)

# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def crs(
    temp: float = 38.5,
    unit: str = "C",
    *,
    hypotension: bool = False,
    vasopressors: int = 0,
    vasopressin: bool = False,
    device: str = "none",
    flow: float | None = None,
    fio2: float | None = None,
    **flags: bool,
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "temperature": {"value": temp, "unit": unit},
        "hypotension": hypotension,
        "vasopressors": vasopressors,
        "vasopressin": vasopressin,
        "oxygen": {"device": device, "flow_l_min": flow, "fio2_pct": fio2},
    }
    obs.update(flags)
    return obs


def astct(**kw: Any) -> ToxicityGrade:
    return grade_crs_astct(parse_crs_observations(crs(**kw)))


def ctcae(**kw: Any) -> ToxicityGrade:
    return grade_crs_ctcae(parse_crs_observations(crs(**kw)))


def icans(ice: int | None = 10, consciousness: str = "none", **kw: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {"age_years": 45, "ice_score": ice, "consciousness": consciousness}
    obs.update(kw)
    return obs


def icans_grade(ice: int | None = 10, consciousness: str = "none", **kw: Any) -> ToxicityGrade:
    return grade_icans_astct(parse_icans_observations(icans(ice, consciousness, **kw)))


def error_of(call: Any, *args: Any, **kw: Any) -> ProtocolInputError:
    with pytest.raises(ProtocolInputError) as info:
        call(*args, **kw)
    return info.value


# ------------------------------------------------------------------------------------------
# CRS, ASTCT 2019: the table row by row (clinical.md s2)
# ------------------------------------------------------------------------------------------


def test_crs_no_fever_is_grade_0() -> None:
    g = astct(temp=37.5)
    assert g.grade == 0
    assert "no fever" in g.reasons[0]
    assert g.scale == "ASTCT" and g.scale_version == "2019" and g.derived


def test_crs_row1_fever_alone_is_grade_1() -> None:
    g = astct(temp=38.5)
    assert g.grade == 1
    assert "fever 38.5 C" in g.reasons[0]


def test_crs_row2_hypotension_without_vasopressors_is_grade_2() -> None:
    g = astct(hypotension=True)
    assert g.grade == 2
    assert "hypotension not needing vasopressors" in g.reasons[0]


@pytest.mark.parametrize(
    ("device", "flow"),
    [("low_flow_nasal_cannula", 2), ("low_flow_nasal_cannula", 6), ("blow_by", None)],
)
def test_crs_row2_low_flow_oxygen_is_grade_2(device: str, flow: float | None) -> None:
    g = astct(device=device, flow=flow)
    assert g.grade == 2
    assert "hypoxia" in g.reasons[0]


def test_crs_low_flow_cannula_exactly_6_is_grade_2_and_6_5_is_grade_3() -> None:
    at_6 = astct(device="low_flow_nasal_cannula", flow=6.0)
    above = astct(device="low_flow_nasal_cannula", flow=6.5)
    assert at_6.grade == 2
    assert above.grade == 3
    assert "above 6 L/min counts as high flow" in above.reasons[0]


def test_crs_row3_one_vasopressor_is_grade_3() -> None:
    assert astct(hypotension=True, vasopressors=1).grade == 3


def test_crs_row3_vasopressin_plus_one_vasopressor_is_grade_3() -> None:
    g = astct(hypotension=True, vasopressors=1, vasopressin=True)
    assert g.grade == 3
    assert "with vasopressin" in g.reasons[0]


def test_crs_vasopressin_alone_is_one_vasopressor_grade_3() -> None:
    assert astct(hypotension=True, vasopressin=True).grade == 3


@pytest.mark.parametrize(
    ("device", "flow"),
    [
        ("high_flow_nasal_cannula", 40),
        ("high_flow_nasal_cannula", None),
        ("facemask", None),
        ("non_rebreather", 15),
        ("venturi", None),
    ],
)
def test_crs_row3_high_flow_oxygen_is_grade_3(device: str, flow: float | None) -> None:
    assert astct(device=device, flow=flow).grade == 3


def test_crs_row4_two_vasopressors_is_grade_4() -> None:
    g = astct(hypotension=True, vasopressors=2)
    assert g.grade == 4
    assert "2 vasopressors" in g.reasons[0]


def test_crs_row4_two_vasopressors_plus_vasopressin_is_grade_4() -> None:
    assert astct(hypotension=True, vasopressors=2, vasopressin=True).grade == 4


@pytest.mark.parametrize("device", ["cpap", "bipap", "mechanical_ventilation"])
def test_crs_row4_positive_pressure_is_grade_4(device: str) -> None:
    assert astct(device=device).grade == 4


def test_crs_row5_death_due_to_crs_is_grade_5() -> None:
    g = astct(temp=37.0, death_due_to_crs=True)
    assert g.grade == 5
    assert "death due to CRS" in g.reasons[0]


@pytest.mark.parametrize(
    ("hypo", "oxygen", "expected", "set_by"),
    [
        ({"hypotension": True}, ("facemask", None), 3, "hypoxia"),
        ({"hypotension": True, "vasopressors": 1}, ("low_flow_nasal_cannula", 3), 3, "hypotension"),
        ({"hypotension": True, "vasopressors": 2}, ("facemask", None), 4, "hypotension"),
        ({"hypotension": True}, ("bipap", None), 4, "hypoxia"),
        ({"hypotension": True}, ("blow_by", None), 2, "hypotension and hypoxia"),
        ({"hypotension": True, "vasopressin": True}, ("venturi", None), 3, "hypotension and"),
    ],
)
def test_crs_grade_is_the_worse_of_hypotension_and_hypoxia(
    hypo: dict[str, Any], oxygen: tuple[str, float | None], expected: int, set_by: str
) -> None:
    g = astct(device=oxygen[0], flow=oxygen[1], **hypo)
    assert g.grade == expected
    assert f"set by {set_by}" in g.reasons[0]


def test_crs_masked_fever_after_tocilizumab_with_one_vasopressor_is_grade_3() -> None:
    g = astct(temp=37.0, hypotension=True, vasopressors=1, anticytokine_given=True)
    assert g.grade == 3
    assert any("fever not required after anti-cytokine therapy" in r for r in g.reasons)


def test_crs_masked_fever_after_antipyretics_follows_hypoxia() -> None:
    g = astct(temp=36.9, device="low_flow_nasal_cannula", flow=3, antipyretics_given=True)
    assert g.grade == 2


def test_crs_masked_fever_without_hypotension_or_hypoxia_is_grade_0() -> None:
    g = astct(temp=37.0, anticytokine_given=True)
    assert g.grade == 0
    assert "fever is not required" in g.reasons[0]


def test_crs_without_fever_or_masking_hypotension_is_not_crs() -> None:
    g = astct(temp=37.0, hypotension=True, vasopressors=1)
    assert g.grade == 0
    assert any("without fever these are not graded as CRS" in r for r in g.reasons)


def test_crs_fever_attributable_to_other_cause_does_not_count() -> None:
    g = astct(temp=39.5, fever_attributable_to_other_cause=True)
    assert g.grade == 0
    assert "attributable to another cause" in g.reasons[0]
    # the same fever with hypotension, but not attributable: grade 2
    assert astct(temp=39.5, hypotension=True).grade == 2
    assert astct(temp=39.5, hypotension=True, fever_attributable_to_other_cause=True).grade == 0


def test_crs_attributable_fever_with_anticytokine_therapy_follows_hypotension() -> None:
    g = astct(
        temp=39.5, hypotension=True, fever_attributable_to_other_cause=True, anticytokine_given=True
    )
    assert g.grade == 2
    assert any("fever not required after anti-cytokine therapy" in r for r in g.reasons)


@pytest.mark.parametrize(
    ("value", "unit", "fever"),
    [
        (38.0, "C", True),
        (37.9, "C", False),
        (100.4, "F", True),
        (100.3, "F", False),
        (104.0, "F", True),
    ],
)
def test_crs_fever_boundary_in_celsius_and_fahrenheit(value: float, unit: str, fever: bool) -> None:
    g = astct(temp=value, unit=unit)
    assert g.grade == (1 if fever else 0)


def test_crs_fahrenheit_reason_shows_celsius() -> None:
    g = astct(temp=100.4, unit="F")
    assert "100.4 F (38.0 C)" in g.reasons[0]


@given(tenths=st.integers(min_value=350, max_value=420))
def test_crs_grade_is_the_same_in_celsius_and_fahrenheit(tenths: int) -> None:
    celsius = Decimal(tenths) / 10
    fahrenheit = celsius * 9 / 5 + 32
    in_c = astct(temp=float(celsius), unit="C")
    in_f = astct(temp=float(fahrenheit), unit="F")
    assert in_c.grade == in_f.grade == (1 if celsius >= 38 else 0)


# ------------------------------------------------------------------------------------------
# CRS, CTCAE v5
# ------------------------------------------------------------------------------------------


def test_ctcae_fever_is_grade_1() -> None:
    g = ctcae(temp=38.0)
    assert (g.grade, g.scale, g.scale_version) == (1, "CTCAE", "5.0")


def test_ctcae_no_fever_no_findings_is_grade_0() -> None:
    assert ctcae(temp=37.0).grade == 0


def test_ctcae_hypotension_responding_to_fluids_is_grade_2() -> None:
    assert ctcae(hypotension=True).grade == 2


def test_ctcae_does_not_require_fever() -> None:
    # CTCAE v5 has no fever requirement for grades 2-4, unlike ASTCT 2019
    assert ctcae(temp=37.0, hypotension=True).grade == 2
    assert astct(temp=37.0, hypotension=True).grade == 0


def test_ctcae_one_pressor_is_grade_3() -> None:
    assert ctcae(hypotension=True, vasopressors=1).grade == 3
    assert ctcae(hypotension=True, vasopressin=True).grade == 3


def test_ctcae_vasopressin_counts_as_a_pressor() -> None:
    g = ctcae(hypotension=True, vasopressors=1, vasopressin=True)
    assert g.grade == 4
    assert "vasopressin counts as a pressor" in g.reasons[0]


def test_ctcae_several_pressors_is_grade_4() -> None:
    assert ctcae(hypotension=True, vasopressors=2).grade == 4


@pytest.mark.parametrize(("fio2", "expected"), [(21, 2), (39.9, 2), (40, 3), (100, 3)])
def test_ctcae_hypoxia_by_fio2_40_percent(fio2: float, expected: int) -> None:
    assert ctcae(device="facemask", fio2=fio2).grade == expected


def test_ctcae_fio2_decides_even_for_low_flow_cannula() -> None:
    assert ctcae(device="low_flow_nasal_cannula", flow=8, fio2=35).grade == 2
    assert astct(device="low_flow_nasal_cannula", flow=8, fio2=35).grade == 3


@pytest.mark.parametrize("device", ["cpap", "bipap", "mechanical_ventilation"])
def test_ctcae_positive_pressure_is_grade_4(device: str) -> None:
    assert ctcae(device=device).grade == 4


def test_ctcae_death_is_grade_5() -> None:
    assert ctcae(death_due_to_crs=True).grade == 5


def test_ctcae_missing_fio2_cannot_be_graded() -> None:
    err = error_of(ctcae, device="facemask")
    assert isinstance(err, ToxicityNotGradableError)
    assert err.field == "observations.oxygen.fio2_pct"
    assert "40 %" in err.message and "record fio2_pct" in err.message


def test_ctcae_missing_fio2_is_fine_when_it_cannot_change_the_grade() -> None:
    g = ctcae(device="facemask", hypotension=True, vasopressors=2)
    assert g.grade == 4
    assert ctcae(device="facemask", hypotension=True, vasopressors=1).grade == 3


def test_grade_toxicity_regrades_crs_observations_under_ctcae() -> None:
    report = parse_toxicity_report(
        {"kind": "CRS", "observations": crs(hypotension=True, vasopressors=1, vasopressin=True)}
    )
    assert grade_toxicity(report).grade == 3
    assert grade_toxicity(report, scale="ASTCT").grade == 3
    regraded = grade_toxicity(report, scale="CTCAE")
    assert (regraded.grade, regraded.scale, regraded.scale_version) == (4, "CTCAE", "5.0")


# ------------------------------------------------------------------------------------------
# ICANS, ASTCT 2019 (clinical.md s3)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ice", "expected"),
    [(10, 0), (9, 1), (7, 1), (6, 2), (3, 2), (2, 3), (1, 3), (0, 4)],
)
def test_icans_ice_boundaries(ice: int, expected: int) -> None:
    g = icans_grade(ice)
    assert g.grade == expected
    assert f"ICE {ice}/10" in g.reasons[0]


def test_icans_ice_0_awake_with_global_aphasia_is_grade_3_not_4() -> None:
    assert icans_grade(0, awake_with_global_aphasia=True).grade == 3
    assert icans_grade(0, awake_with_global_aphasia=False).grade == 4


def test_icans_global_aphasia_cannot_be_in_stupor() -> None:
    err = error_of(
        parse_icans_observations, icans(0, "stupor_or_coma", awake_with_global_aphasia=True)
    )
    assert err.field == "observations.awake_with_global_aphasia"


@pytest.mark.parametrize(("level", "expected"), list(CONSCIOUSNESS_GRADES.items()))
def test_icans_consciousness_rows(level: str, expected: int) -> None:
    assert icans_grade(10, level).grade == expected


@pytest.mark.parametrize(
    ("seizure", "expected"),
    [
        ("none", 0),
        ("rapid_resolving_or_nonconvulsive_eeg_resolved", 3),
        ("life_threatening_or_repetitive", 4),
    ],
)
def test_icans_seizure_rows(seizure: str, expected: int) -> None:
    assert icans_grade(10, seizure=seizure).grade == expected


def test_icans_motor_row() -> None:
    assert icans_grade(10, motor="deep_focal_weakness").grade == 4


@pytest.mark.parametrize(
    ("icp", "expected"), [("none", 0), ("focal_local_edema", 3), ("diffuse_edema_or_signs", 4)]
)
def test_icans_raised_icp_rows(icp: str, expected: int) -> None:
    assert icans_grade(10, raised_icp=icp).grade == expected


def test_icans_worst_domain_sets_the_grade() -> None:
    g = icans_grade(8, "wakes_to_voice", raised_icp="focal_local_edema")
    assert g.grade == 3
    assert "focal/local edema" in g.reasons[0]
    assert any("ICE 8/10" in r and "grade 1" in r for r in g.reasons)


def test_icans_domain_attributable_to_other_cause_is_not_counted() -> None:
    g = icans_grade(
        9, "stupor_or_coma", attributable_to_other_cause=["consciousness"]
    )  # e.g. sedation
    assert g.grade == 1
    assert any("not counted" in r and "stupor or coma" in r for r in g.reasons)


def test_icans_ice_items_sum_to_the_score() -> None:
    items = {"orientation": 2, "naming": 3, "command": 1, "writing": 0, "attention": 0}
    obs = parse_icans_observations(icans(None, ice_items=items) | {"ice_score": 6})
    assert obs.ice_score == 6
    only_items = dict(icans(), ice_items=items)
    del only_items["ice_score"]
    assert parse_icans_observations(only_items).ice_score == 6
    assert grade_icans_astct(parse_icans_observations(only_items)).grade == 2


def test_icans_ice_items_disagreeing_with_score_are_rejected() -> None:
    items = {"orientation": 4, "naming": 3, "command": 1, "writing": 1, "attention": 1}
    err = error_of(parse_icans_observations, icans(9, ice_items=items))
    assert err.field == "observations.ice_score"
    assert "sum of the ICE items (10)" in err.message


@pytest.mark.parametrize(("item", "value"), [("orientation", 5), ("naming", 4), ("command", 2)])
def test_icans_ice_item_above_its_maximum_is_rejected(item: str, value: int) -> None:
    items = {"orientation": 4, "naming": 3, "command": 1, "writing": 1, "attention": 1}
    items[item] = value
    err = error_of(parse_icans_observations, dict(icans(), ice_items=items, ice_score=None))
    assert err.field == f"observations.ice_items.{item}"


def test_icans_ice_score_out_of_range_is_rejected() -> None:
    assert error_of(parse_icans_observations, icans(11)).field == "observations.ice_score"
    assert error_of(parse_icans_observations, icans(-1)).field == "observations.ice_score"


def test_icans_ice_may_be_null_only_when_unarousable() -> None:
    g = icans_grade(None, "stupor_or_coma")
    assert g.grade == 4
    err = error_of(parse_icans_observations, icans(None, "wakes_to_voice"))
    assert "only when the patient is unarousable" in err.message


def test_icans_children_under_12_need_capd() -> None:
    err = error_of(parse_icans_observations, dict(icans(8), age_years=11.9))
    assert err.field == "observations.ice_score"
    assert "with the CAPD" in err.message and "give capd_score (0-32)" in err.message
    ok = parse_icans_observations(dict(icans(8), age_years=12))
    assert grade_icans_astct(ok).grade == 1


def test_icans_cannot_be_regraded_under_ctcae() -> None:
    report = parse_toxicity_report({"kind": "ICANS", "observations": icans(5)})
    assert grade_toxicity(report).grade == 2
    err = error_of(grade_toxicity, report, "CTCAE")
    assert isinstance(err, ToxicityNotGradableError)
    assert "no ICANS term" in err.message


# ------------------------------------------------------------------------------------------
# explicit grades
# ------------------------------------------------------------------------------------------


def explicit(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "other",
        "term": "febrile neutropenia",
        "scale": "CTCAE",
        "scale_version": "5.0",
        "grade": 3,
    }
    data.update(kw)
    return data


def test_explicit_grade_is_returned_as_entered() -> None:
    g = grade_toxicity(parse_toxicity_report(explicit()))
    assert (g.kind, g.term, g.grade, g.scale, g.scale_version) == (
        "other",
        "febrile neutropenia",
        3,
        "CTCAE",
        "5.0",
    )
    assert g.derived is False
    assert grade_toxicity(parse_toxicity_report(explicit()), scale="CTCAE").grade == 3


def test_explicit_grade_cannot_be_regraded_under_another_scale() -> None:
    report = parse_toxicity_report(explicit(kind="CRS", term=None))
    err = error_of(grade_toxicity, report, "ASTCT")
    assert isinstance(err, ToxicityNotGradableError)
    assert err.field == "scale"
    assert "record the raw observations" in err.message


def test_explicit_astct_grade_for_crs_and_icans() -> None:
    for kind in ("CRS", "ICANS"):
        g = grade_toxicity(
            parse_toxicity_report(
                {"kind": kind, "scale": "ASTCT", "scale_version": "2019", "grade": 5}
            )
        )
        assert (g.kind, g.grade, g.scale) == (kind, 5, "ASTCT")


@pytest.mark.parametrize("grade", [0, 6, 3.0, True, "3", None])
def test_explicit_grade_must_be_an_integer_1_to_5(grade: Any) -> None:
    err = error_of(parse_toxicity_report, explicit(grade=grade))
    assert err.field == "grade"
    assert "1 to 5" in err.message


def test_explicit_grade_needs_a_known_scale_and_version() -> None:
    assert error_of(parse_toxicity_report, explicit(scale="Lee 2014")).field == "scale"
    err = error_of(parse_toxicity_report, explicit(scale_version=5.0))
    assert err.field == "scale_version" and "'5.0'" in err.message
    err = error_of(parse_toxicity_report, explicit(scale="ASTCT", scale_version="2019"))
    assert err.field == "scale" and "CTCAE" in err.message
    missing = explicit()
    del missing["scale_version"]
    assert error_of(parse_toxicity_report, missing).field == "scale_version"


def test_other_toxicity_needs_a_term() -> None:
    assert error_of(parse_toxicity_report, explicit(term=None)).field == "term"
    assert error_of(parse_toxicity_report, explicit(term="  ")).field == "term"


def test_observations_and_explicit_grade_are_exclusive() -> None:
    both = {"kind": "CRS", "observations": crs(), "grade": 2}
    assert error_of(parse_toxicity_report, both).field == "observations"
    assert error_of(parse_toxicity_report, {"kind": "CRS"}).field == "observations"
    other_obs = {"kind": "other", "term": "rash", "observations": crs()}
    assert error_of(parse_toxicity_report, other_obs).field == "observations"


def test_unknown_kind_is_rejected() -> None:
    err = error_of(parse_toxicity_report, explicit(kind="crs"))
    assert err.field == "kind" and "CRS, ICANS, other" in err.message


# ------------------------------------------------------------------------------------------
# severity and holds (clinical.md s4)
# ------------------------------------------------------------------------------------------


def test_is_severe_uses_the_severe_grade_parameter() -> None:
    assert astct(hypotension=True, vasopressors=1).is_severe()
    assert not astct(hypotension=True).is_severe()
    assert astct(hypotension=True).is_severe(ProtocolParameters(severe_grade=2))


def test_opens_hold_per_kind() -> None:
    params = DEFAULT_PARAMETERS
    assert astct(temp=38.2).opens_hold(params)  # CRS grade 1 (fever) holds (hold_crs_grade 1)
    assert not astct(temp=37.0).opens_hold(params)
    assert icans_grade(9).opens_hold(params)
    assert not icans_grade(10).opens_hold(params)
    other2 = grade_toxicity(parse_toxicity_report(explicit(grade=2)))
    other3 = grade_toxicity(parse_toxicity_report(explicit(grade=3)))
    assert not other2.opens_hold(params)
    assert other3.opens_hold(params)
    assert not astct(temp=38.2).opens_hold(ProtocolParameters(hold_crs_grade=2))


# ------------------------------------------------------------------------------------------
# input errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"temperature": {"value": 38.5}}, "observations.temperature.unit", "is required"),
        ({"temperature": {"value": 38.5, "unit": "K"}}, "observations.temperature.unit", "'C'"),
        ({"temperature": {"value": 38.5, "unit": ["C"]}}, "observations.temperature.unit", "'C'"),
        ({"temperature": {"value": 101.0, "unit": "C"}}, "observations.temperature.value", "unit"),
        ({"temperature": {"value": 38.0, "unit": "F"}}, "observations.temperature.value", "unit"),
        (
            {"temperature": {"value": float("nan"), "unit": "C"}},
            "observations.temperature.value",
            "finite",
        ),
        ({"temperature": {"value": True, "unit": "C"}}, "observations.temperature.value", "number"),
        ({"hypotension": "yes"}, "observations.hypotension", "true or false"),
        ({"vasopressors": -1}, "observations.vasopressors", "out of range"),
        ({"vasopressors": 1.0, "hypotension": True}, "observations.vasopressors", "whole number"),
        ({"vasopressors": 1}, "observations.hypotension", "hypotension is false"),
        ({"vasopressin": True}, "observations.hypotension", "vasopressin"),
        ({"oxygen": {"device": "tent"}}, "observations.oxygen.device", "low_flow_nasal_cannula"),
        (
            {"oxygen": {"device": "low_flow_nasal_cannula"}},
            "observations.oxygen.flow_l_min",
            "6 L/min",
        ),
        (
            {"oxygen": {"device": "none", "flow_l_min": 2}},
            "observations.oxygen.flow_l_min",
            "device",
        ),
        (
            {"oxygen": {"device": "facemask", "flow_l_min": -2}},
            "observations.oxygen.flow_l_min",
            "range",
        ),
        (
            {"oxygen": {"device": "facemask", "fio2_pct": 120}},
            "observations.oxygen.fio2_pct",
            "range",
        ),
        (
            {"oxygen": {"device": "none", "fio2_pct": 40}},
            "observations.oxygen.fio2_pct",
            "room air",
        ),
        (
            {"oxygen": {"device": "facemask", "flow": 2}},
            "observations.oxygen.flow",
            "allowed fields",
        ),
        ({"tocilizumab": True}, "observations.tocilizumab", "anticytokine_given"),
    ],
)
def test_crs_bad_input_names_the_field(change: dict[str, Any], field: str, words: str) -> None:
    obs = crs()
    obs.update(change)
    err = error_of(parse_toxicity_report, {"kind": "CRS", "observations": obs})
    assert err.field == field
    assert words in err.message


def test_crs_missing_required_observation() -> None:
    obs = crs()
    del obs["oxygen"]
    err = error_of(parse_toxicity_report, {"kind": "CRS", "observations": obs})
    assert err.field == "observations.oxygen"


def test_icans_bad_choice_lists_allowed_values() -> None:
    err = error_of(parse_icans_observations, icans(10, "drowsy"))
    assert err.field == "observations.consciousness"
    assert "wakes_to_voice" in err.message
    err = error_of(parse_icans_observations, icans(10, attributable_to_other_cause=["mood"]))
    assert err.field == "observations.attributable_to_other_cause.0"


def test_unknown_top_level_key_is_rejected() -> None:
    err = error_of(parse_toxicity_report, explicit(onset="2024-01-01"))
    assert err.field == "onset"
    assert "allowed fields" in err.message


def test_unknown_grading_scale_is_rejected() -> None:
    report = parse_toxicity_report({"kind": "CRS", "observations": crs()})
    assert error_of(grade_toxicity, report, "Penn").field == "scale"


# ------------------------------------------------------------------------------------------
# round trip and JSON output
# ------------------------------------------------------------------------------------------

temperatures = st.one_of(
    st.builds(
        lambda v: {"value": v, "unit": "C"},
        st.floats(min_value=25, max_value=45, allow_nan=False),
    ),
    st.builds(
        lambda v: {"value": v, "unit": "F"},
        st.floats(min_value=77, max_value=113, allow_nan=False),
    ),
)
HYPOTENSION_LEVELS: list[dict[str, Any]] = [
    {"hypotension": False},
    {"hypotension": True},
    {"hypotension": True, "vasopressin": True},
    {"hypotension": True, "vasopressors": 1},
    {"hypotension": True, "vasopressors": 1, "vasopressin": True},
    {"hypotension": True, "vasopressors": 2},
    {"hypotension": True, "vasopressors": 3, "vasopressin": True},
]
# Oxygen support in ASTCT order of severity.
OXYGEN_LEVELS: list[dict[str, Any]] = [
    {"device": "none"},
    {"device": "blow_by"},
    {"device": "low_flow_nasal_cannula", "flow_l_min": 1},
    {"device": "low_flow_nasal_cannula", "flow_l_min": 6},
    {"device": "low_flow_nasal_cannula", "flow_l_min": 6.5},
    {"device": "facemask"},
    {"device": "high_flow_nasal_cannula", "flow_l_min": 40},
    {"device": "cpap"},
    {"device": "mechanical_ventilation"},
]
flags = st.fixed_dictionaries(
    {},
    optional={
        "fever_attributable_to_other_cause": st.booleans(),
        "antipyretics_given": st.booleans(),
        "anticytokine_given": st.booleans(),
        "death_due_to_crs": st.booleans(),
    },
)


@st.composite
def crs_observations(draw: st.DrawFn) -> dict[str, Any]:
    obs: dict[str, Any] = {"temperature": draw(temperatures)}
    obs.update(draw(st.sampled_from(HYPOTENSION_LEVELS)))
    oxygen = dict(draw(st.sampled_from(OXYGEN_LEVELS)))
    if oxygen["device"] != "none" and draw(st.booleans()):
        oxygen["fio2_pct"] = draw(st.floats(min_value=21, max_value=100))
    obs["oxygen"] = oxygen
    obs.update(draw(flags))
    return obs


@st.composite
def icans_domains(
    draw: st.DrawFn, ages: st.SearchStrategy[float], encephalopathy: str
) -> dict[str, Any]:
    """ICANS observations but the tool's score: the age, the other domains, and the domains
    attributable to another cause (``encephalopathy``: ``ice``, or ``capd`` under 12)."""
    return {
        "age_years": draw(ages),
        "consciousness": draw(st.sampled_from(list(CONSCIOUSNESS_GRADES))),
        "seizure": draw(st.sampled_from(list(SEIZURE_GRADES))),
        "motor": draw(st.sampled_from(list(MOTOR_GRADES))),
        "raised_icp": draw(st.sampled_from(list(RAISED_ICP_GRADES))),
        "attributable_to_other_cause": draw(
            st.lists(st.sampled_from([encephalopathy, "consciousness", "seizure"]), unique=True)
        ),
    }


@st.composite
def icans_observations(draw: st.DrawFn) -> dict[str, Any]:
    obs = draw(icans_domains(st.integers(min_value=12, max_value=90), "ice"))
    consciousness = obs["consciousness"]
    if draw(st.booleans()):
        obs["ice_items"] = {
            "orientation": draw(st.integers(0, 4)),
            "naming": draw(st.integers(0, 3)),
            "command": draw(st.integers(0, 1)),
            "writing": draw(st.integers(0, 1)),
            "attention": draw(st.integers(0, 1)),
        }
    else:
        obs["ice_score"] = draw(st.integers(0, 10))
    if consciousness != "stupor_or_coma":
        obs["awake_with_global_aphasia"] = draw(st.booleans())
    return obs


@settings(max_examples=200)
@given(obs=crs_observations(), term=st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_crs_report_round_trips(obs: dict[str, Any], term: str | None) -> None:
    if term is not None and not term.strip():
        term = None
    report = parse_toxicity_report({"kind": "CRS", "term": term, "observations": obs})
    again = parse_toxicity_report(json.loads(json.dumps(report.to_json())))
    assert again == report
    grade = grade_toxicity(report)
    assert json.loads(json.dumps(grade.to_json())) == grade.to_json()
    assert grade_toxicity(again) == grade


@settings(max_examples=200)
@given(obs=icans_observations())
def test_icans_report_round_trips(obs: dict[str, Any]) -> None:
    report = parse_toxicity_report({"kind": "ICANS", "observations": obs})
    again = parse_toxicity_report(json.loads(json.dumps(report.to_json())))
    assert again == report
    assert grade_toxicity(again) == grade_toxicity(report)


@pytest.mark.parametrize(
    "data",
    [
        explicit(),
        explicit(kind="CRS", term=None, scale="ASTCT", scale_version="2019", grade=4),
        explicit(kind="ICANS", term="ICANS", scale_version="4.03", grade=1),
    ],
)
def test_explicit_report_round_trips(data: dict[str, Any]) -> None:
    report = parse_toxicity_report(data)
    assert parse_toxicity_report(json.loads(json.dumps(report.to_json()))) == report


# ------------------------------------------------------------------------------------------
# monotonicity: a more severe finding in any one domain never lowers the grade
# ------------------------------------------------------------------------------------------


@settings(max_examples=150)
@given(obs=crs_observations(), a=st.integers(0, 6), b=st.integers(0, 6))
def test_crs_grade_is_monotone_in_hypotension(obs: dict[str, Any], a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    for key in ("vasopressors", "vasopressin", "hypotension"):
        obs.pop(key, None)
    low = parse_crs_observations(obs | HYPOTENSION_LEVELS[lo])
    high = parse_crs_observations(obs | HYPOTENSION_LEVELS[hi])
    assert grade_crs_astct(low).grade <= grade_crs_astct(high).grade
    obs_fio2 = obs["oxygen"].get("fio2_pct")
    if obs["oxygen"]["device"] == "none" or obs_fio2 is not None:
        assert grade_crs_ctcae(low).grade <= grade_crs_ctcae(high).grade


@settings(max_examples=150)
@given(obs=crs_observations(), a=st.integers(0, 8), b=st.integers(0, 8))
def test_crs_grade_is_monotone_in_oxygen_support(obs: dict[str, Any], a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    low = parse_crs_observations(obs | {"oxygen": OXYGEN_LEVELS[lo]})
    high = parse_crs_observations(obs | {"oxygen": OXYGEN_LEVELS[hi]})
    assert grade_crs_astct(low).grade <= grade_crs_astct(high).grade


def exact_celsius(t: Temperature) -> Fraction:
    value = Fraction(t.value)
    return value if t.unit == "C" else (value - 32) * Fraction(5, 9)


@settings(max_examples=150)
@given(obs=crs_observations(), t1=temperatures, t2=temperatures)
def test_crs_grade_is_monotone_in_temperature(
    obs: dict[str, Any], t1: dict[str, Any], t2: dict[str, Any]
) -> None:
    first = parse_crs_observations(obs | {"temperature": t1})
    second = parse_crs_observations(obs | {"temperature": t2})
    if exact_celsius(first.temperature) > exact_celsius(second.temperature):
        first, second = second, first
    assert grade_crs_astct(first).grade <= grade_crs_astct(second).grade


@settings(max_examples=100)
@given(obs=crs_observations())
def test_crs_death_and_masking_never_lower_the_grade(obs: dict[str, Any]) -> None:
    base = grade_crs_astct(parse_crs_observations(obs)).grade
    dead = grade_crs_astct(parse_crs_observations(obs | {"death_due_to_crs": True}))
    assert dead.grade == 5 >= base
    masked = parse_crs_observations(obs | {"anticytokine_given": True})
    assert grade_crs_astct(masked).grade >= base


ICANS_ORDERS: dict[str, list[Any]] = {
    "ice_score": list(range(10, -1, -1)),
    "consciousness": list(CONSCIOUSNESS_GRADES),
    "seizure": list(SEIZURE_GRADES),
    "motor": list(MOTOR_GRADES),
    "raised_icp": list(RAISED_ICP_GRADES),
}


@settings(max_examples=200)
@given(
    obs=icans_observations(),
    domain=st.sampled_from(list(ICANS_ORDERS)),
    a=st.integers(0, 10),
    b=st.integers(0, 10),
)
def test_icans_grade_is_monotone_in_each_domain(
    obs: dict[str, Any], domain: str, a: int, b: int
) -> None:
    order = ICANS_ORDERS[domain]
    lo, hi = sorted((a % len(order), b % len(order)))
    obs.pop("ice_items", None)
    obs.setdefault("ice_score", 10)
    if domain == "consciousness":
        obs.pop("awake_with_global_aphasia", None)
    low = parse_icans_observations(obs | {domain: order[lo]})
    high = parse_icans_observations(obs | {domain: order[hi]})
    assert grade_icans_astct(low).grade <= grade_icans_astct(high).grade


def test_every_oxygen_device_has_a_grade() -> None:
    # guards against a device added to the list without an ASTCT grade
    for device, expected in OXYGEN_DEVICES.items():
        flow = 2 if device == "low_flow_nasal_cannula" else None
        fever = astct(device=device, flow=flow)
        assert fever.grade == max(1, expected)
