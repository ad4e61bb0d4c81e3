"""Eligibility screening: every criterion of the trial text, each boundary on both sides."""

from __future__ import annotations

import datetime
import json
import math
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_strategies import lab

from cart_course.protocol.eligibility import (
    CRITERIA,
    CRITERIA_BY_ID,
    SCREENING_KEYS,
    CriterionKind,
    CriterionStatus,
    EligibilityResult,
    ScreeningData,
    evaluate_eligibility,
    parse_screening,
)
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.parameters import DEFAULT_PARAMETERS
from cart_course.protocol.plausibility import LAB_RANGES

SCREENING_DATE = datetime.date(2025, 3, 10)

GOOD: dict[str, Any] = {
    "diagnosis_rr_b_all": True,
    "failed_standard_lines": 2,
    "effective_standard_option": False,
    "cd19_expressed": True,
    "kps": 90,
    "life_expectancy_months": 6,
    "lvef_pct": 55,
    "ecg_obvious_abnormality": False,
    "spo2_room_air_pct": 96,
    "creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 1.2},
    "alt": {"value": 30, "unit": "U/L", "uln": 40},
    "ast": {"value": 25, "unit": "U/L", "uln": 40},
    "bilirubin": {"value": 1.1, "unit": "mg/dL"},
    "hemoglobin": {"value": 95, "unit": "g/L"},
    "apheresis_contraindication": False,
    "informed_consent_signed": True,
    "informed_consent_date": "2025-03-01",
    "other_primary_malignancy": False,
    "severe_uncontrolled_disease": False,
    "uncontrolled_active_infection": False,
    "hiv": False,
    "hbv": False,
    "hcv": False,
    "pregnant": False,
    "nursing": False,
    "last_systemic_glucocorticoid": None,
}


def screen(**changes: Any) -> EligibilityResult:
    """Evaluate GOOD with some keys changed (a value of ... removes the key)."""
    data = {k: v for k, v in GOOD.items() if k not in changes}
    data.update({k: v for k, v in changes.items() if v is not ...})
    return evaluate_eligibility(parse_screening(data), SCREENING_DATE)


def status_of(result: EligibilityResult, cid: str) -> CriterionStatus:
    (found,) = [c for c in result.criteria if c.id == cid]
    return found.status


def explanation_of(result: EligibilityResult, cid: str) -> str:
    (found,) = [c for c in result.criteria if c.id == cid]
    return found.explanation


MET = CriterionStatus.MET
NOT_MET = CriterionStatus.NOT_MET
APPLIES = CriterionStatus.APPLIES
DOES_NOT_APPLY = CriterionStatus.DOES_NOT_APPLY
MISSING = CriterionStatus.MISSING


# ------------------------------------------------------------------------------------------------
# The whole picture
# ------------------------------------------------------------------------------------------------


def test_complete_good_screening_is_eligible() -> None:
    result = screen()
    assert result.eligible
    assert result.failed == ()
    assert result.reasons() == []
    assert [c.id for c in result.criteria] == [c.id for c in CRITERIA]
    for c in result.criteria:
        expected = MET if c.kind is CriterionKind.INCLUSION else DOES_NOT_APPLY
        assert c.status is expected, c.explanation


def test_example_without_consent_date_is_eligible() -> None:
    assert screen(informed_consent_date=...).eligible


def test_empty_screening_is_not_eligible_and_lists_every_criterion_as_missing() -> None:
    result = evaluate_eligibility(parse_screening({}), SCREENING_DATE)
    assert not result.eligible
    assert [c.id for c in result.missing] == [c.id for c in CRITERIA]
    assert len(result.reasons()) == len(CRITERIA)
    assert "not recorded" in result.reasons()[0]


@pytest.mark.parametrize("key", [k for k in SCREENING_KEYS if k != "informed_consent_date"])
def test_each_absent_key_makes_its_criterion_missing_and_blocks_eligibility(key: str) -> None:
    changes: dict[str, Any] = {key: ...}
    if key == "informed_consent_signed":
        changes["informed_consent_date"] = ...  # a date without signed consent is rejected
    result = screen(**changes)
    assert not result.eligible
    (failed,) = result.failed
    assert failed.status is MISSING
    assert key in failed.criterion.inputs
    assert key in failed.explanation  # tells the user which field to fill in
    assert [c.id for c in result.missing] == [failed.id]
    assert result.to_json()["missing"] == [failed.id]


def test_result_to_json_is_plain_json_and_lists_failures() -> None:
    result = screen(kps=80, hiv=True)
    data = result.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["eligible"] is False
    assert data["failed"] == ["kps", "hiv"]
    assert data["reasons"] == result.reasons()
    assert data["screening_date"] == "2025-03-10"
    kps = next(c for c in data["criteria"] if c["id"] == "kps")
    assert kps == {
        "id": "kps",
        "kind": "inclusion",
        "text": "KPS>80",
        "status": "not_met",
        "passed": False,
        "value": {"kps": 80},
        "value_text": "KPS 80",
        "threshold": "KPS > 80",
        "explanation": "KPS 80 is not above 80 (inclusion: KPS > 80).",
    }


def test_reasons_give_one_clinician_sentence_per_failed_criterion() -> None:
    result = screen(kps=70, hemoglobin={"value": 7.5, "unit": "g/dL"}, pregnant=True)
    assert result.reasons() == [
        "KPS 70 is not above 80 (inclusion: KPS > 80).",
        "Hemoglobin 7.5 g/dL (75 g/L) is below 80 g/L (inclusion: hemoglobin ≥ 80 g/L (8 g/dL)).",
        "Excluded: pregnancy is recorded (exclusion criterion).",
    ]


# ------------------------------------------------------------------------------------------------
# Catalogue
# ------------------------------------------------------------------------------------------------


def test_catalogue_ids_are_unique_snake_case_and_cover_every_input_key() -> None:
    ids = [c.id for c in CRITERIA]
    assert len(ids) == len(set(ids)) == len(CRITERIA_BY_ID)
    for cid in ids:
        assert cid == cid.lower() and " " not in cid and "-" not in cid
    used = {k for c in CRITERIA for k in c.inputs}
    assert used == set(SCREENING_KEYS)
    kinds = [c.kind for c in CRITERIA]
    assert kinds.count(CriterionKind.INCLUSION) == 15
    assert kinds.count(CriterionKind.EXCLUSION) == 9
    assert json.loads(json.dumps([c.to_json() for c in CRITERIA]))[3] == {
        "id": "kps",
        "kind": "inclusion",
        "text": "KPS>80",
        "inputs": ["kps"],
    }


# ------------------------------------------------------------------------------------------------
# Inclusion boundaries
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kps", "expected"), [(80, NOT_MET), (81, MET), (90, MET), (0, NOT_MET), (100, MET)]
)
def test_kps_must_be_above_80(kps: int, expected: CriterionStatus) -> None:
    result = screen(kps=kps)
    assert status_of(result, "kps") is expected
    assert result.eligible is (expected is MET)


@pytest.mark.parametrize(("months", "expected"), [(3, NOT_MET), (3.0, NOT_MET), (3.1, MET)])
def test_life_expectancy_must_be_above_3_months(months: float, expected: CriterionStatus) -> None:
    assert status_of(screen(life_expectancy_months=months), "life_expectancy") is expected


@pytest.mark.parametrize(("lvef", "expected"), [(50, MET), (50.0, MET), (49.9, NOT_MET)])
def test_lvef_at_least_50_pct(lvef: float, expected: CriterionStatus) -> None:
    assert status_of(screen(lvef_pct=lvef), "lvef") is expected


def test_obvious_ecg_abnormality_fails_cardiac_inclusion() -> None:
    result = screen(ecg_obvious_abnormality=True)
    assert status_of(result, "ecg") is NOT_MET
    assert not result.eligible


@pytest.mark.parametrize(("spo2", "expected"), [(90, NOT_MET), (90.0, NOT_MET), (90.1, MET)])
def test_room_air_spo2_above_90_pct(spo2: float, expected: CriterionStatus) -> None:
    assert status_of(screen(spo2_room_air_pct=spo2), "spo2") is expected


@pytest.mark.parametrize(
    ("creatinine", "expected"),
    [
        ({"value": 3.0, "unit": "mg/dL", "uln": 1.2}, MET),  # exactly 2.5 x ULN
        ({"value": 3.01, "unit": "mg/dL", "uln": 1.2}, NOT_MET),
        # 2.5 x 0.57 in binary floating point is below 1.425: exact arithmetic is needed
        ({"value": 1.425, "unit": "mg/dL", "uln": 0.57}, MET),
        ({"value": 1.426, "unit": "mg/dL", "uln": 0.57}, NOT_MET),
        ({"value": 265.26, "unit": "umol/L", "uln": 106.104}, MET),
        ({"value": 265.27, "unit": "umol/L", "uln": 106.104}, NOT_MET),
        # value in umol/L, ULN in mg/dL: 2.5 x 1.2 mg/dL x 88.42 = 265.26 umol/L
        ({"value": 265.26, "unit": "umol/L", "uln": 1.2, "uln_unit": "mg/dL"}, MET),
        ({"value": 265.27, "unit": "umol/L", "uln": 1.2, "uln_unit": "mg/dL"}, NOT_MET),
        ({"value": 125.9985, "unit": "umol/L", "uln": 0.57, "uln_unit": "mg/dL"}, MET),
        ({"value": 125.9986, "unit": "umol/L", "uln": 0.57, "uln_unit": "mg/dL"}, NOT_MET),
        # value in mg/dL, ULN in umol/L: 106.104 umol/L is 1.2 mg/dL
        ({"value": 3.0, "unit": "mg/dL", "uln": 106.104, "uln_unit": "umol/L"}, MET),
        ({"value": 3.01, "unit": "mg/dL", "uln": 106.104, "uln_unit": "umol/L"}, NOT_MET),
    ],
)
def test_creatinine_at_most_2_5_times_uln(
    creatinine: dict[str, Any], expected: CriterionStatus
) -> None:
    assert status_of(screen(creatinine=creatinine), "creatinine") is expected


def test_creatinine_explanation_shows_the_limit_in_the_value_unit() -> None:
    result = screen(creatinine={"value": 270, "unit": "umol/L", "uln": 1.2, "uln_unit": "mg/dL"})
    assert explanation_of(result, "creatinine") == (
        "Creatinine 270 umol/L (ULN 1.2 mg/dL) is above 2.5 × 1.2 mg/dL (106.104 umol/L) "
        "= 265.26 umol/L (inclusion: creatinine ≤ 2.5 × ULN)."
    )


@pytest.mark.parametrize("enzyme", ["alt", "ast"])
@pytest.mark.parametrize(
    ("value", "uln", "expected"),
    [
        (120, 40, MET),
        (120.1, 40, NOT_MET),
        (91.2, 30.4, MET),  # 3 x 30.4 in binary floating point is below 91.2
        (91.21, 30.4, NOT_MET),
    ],
)
def test_transaminases_at_most_3_times_uln(
    enzyme: str, value: float, uln: float, expected: CriterionStatus
) -> None:
    result = screen(**{enzyme: {"value": value, "unit": "U/L", "uln": uln}})
    assert status_of(result, enzyme) is expected
    assert result.eligible is (expected is MET)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (2.0, "mg/dL", MET),
        (2, "mg/dL", MET),
        (2.01, "mg/dL", NOT_MET),
        (34.2, "umol/L", MET),
        (34.3, "umol/L", NOT_MET),
        # compared in the unit given: 34.2 umol/L is the limit, not 2.0 x 17.1 = 34.2 rounded
        (34.21, "umol/L", NOT_MET),
    ],
)
def test_total_bilirubin_limit_in_each_unit(
    value: float, unit: str, expected: CriterionStatus
) -> None:
    result = screen(bilirubin={"value": value, "unit": unit})
    assert status_of(result, "bilirubin") is expected


def test_bilirubin_thresholds_come_from_parameters() -> None:
    params = attrs.evolve(DEFAULT_PARAMETERS, bilirubin_max_mg_dl=3.0, bilirubin_max_umol_l=51.3)
    data = parse_screening({**GOOD, "bilirubin": {"value": 2.5, "unit": "mg/dL"}})
    assert evaluate_eligibility(data, SCREENING_DATE, params).eligible
    assert not evaluate_eligibility(data, SCREENING_DATE).eligible


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (80, "g/L", MET),
        (80.0, "g/L", MET),
        (79.9, "g/L", NOT_MET),
        (8.0, "g/dL", MET),
        (8, "g/dL", MET),
        (7.99, "g/dL", NOT_MET),
        (7.11, "g/dL", NOT_MET),
    ],
)
def test_hemoglobin_at_least_80_g_per_l_in_both_units(
    value: float, unit: str, expected: CriterionStatus
) -> None:
    assert status_of(screen(hemoglobin={"value": value, "unit": unit}), "hemoglobin") is expected


@pytest.mark.parametrize(
    ("key", "value", "cid"),
    [
        ("diagnosis_rr_b_all", False, "diagnosis_rr_b_all"),
        ("cd19_expressed", False, "cd19_expressed"),
        ("ecg_obvious_abnormality", True, "ecg"),
        ("apheresis_contraindication", True, "apheresis"),
        ("informed_consent_signed", False, "informed_consent"),
        ("failed_standard_lines", 0, "failed_standard_treatment"),
        ("effective_standard_option", True, "failed_standard_treatment"),
    ],
)
def test_each_inclusion_answered_the_wrong_way_is_not_met(key: str, value: Any, cid: str) -> None:
    changes: dict[str, Any] = {key: value}
    if key == "informed_consent_signed":
        changes["informed_consent_date"] = ...
    result = screen(**changes)
    assert status_of(result, cid) is NOT_MET
    assert [c.id for c in result.failed] == [cid]
    assert not result.eligible


def test_one_failed_line_is_enough() -> None:
    assert status_of(screen(failed_standard_lines=1), "failed_standard_treatment") is MET


def test_failed_lines_zero_is_not_met_even_if_the_other_part_is_missing() -> None:
    result = screen(failed_standard_lines=0, effective_standard_option=...)
    assert status_of(result, "failed_standard_treatment") is NOT_MET
    assert "effective_standard_option" in explanation_of(result, "failed_standard_treatment")


def test_failed_line_with_unknown_remaining_option_is_missing() -> None:
    result = screen(effective_standard_option=...)
    assert status_of(result, "failed_standard_treatment") is MISSING


def test_consent_dated_after_screening_is_not_met() -> None:
    result = screen(informed_consent_date="2025-03-11")
    assert status_of(result, "informed_consent") is NOT_MET
    assert "after the screening date" in explanation_of(result, "informed_consent")
    assert status_of(screen(informed_consent_date="2025-03-10"), "informed_consent") is MET


def test_consent_date_without_signed_consent_is_rejected() -> None:
    with pytest.raises(ProtocolInputError) as err:
        parse_screening({**GOOD, "informed_consent_signed": False})
    assert err.value.field == "informed_consent_date"
    with pytest.raises(ProtocolInputError):
        parse_screening({"informed_consent_date": "2025-03-01"})


# ------------------------------------------------------------------------------------------------
# Exclusions
# ------------------------------------------------------------------------------------------------

EXCLUSION_KEYS = [
    ("other_primary_malignancy", "other_primary_malignancy"),
    ("severe_uncontrolled_disease", "severe_uncontrolled_disease"),
    ("uncontrolled_active_infection", "uncontrolled_active_infection"),
    ("hiv", "hiv"),
    ("hbv", "hbv"),
    ("hcv", "hcv"),
    ("pregnant", "pregnancy"),
    ("nursing", "nursing"),
]


@pytest.mark.parametrize(("key", "cid"), EXCLUSION_KEYS)
def test_each_exclusion_that_applies_makes_the_patient_ineligible(key: str, cid: str) -> None:
    result = screen(**{key: True})
    assert status_of(result, cid) is APPLIES
    assert [c.id for c in result.failed] == [cid]
    assert not result.eligible
    assert result.failed[0].kind is CriterionKind.EXCLUSION


@pytest.mark.parametrize(
    ("days_before", "expected"),
    [(0, APPLIES), (1, APPLIES), (6, APPLIES), (7, APPLIES), (8, DOES_NOT_APPLY)],
)
def test_glucocorticoid_within_one_week_including_day_7_excludes(
    days_before: int, expected: CriterionStatus
) -> None:
    last = SCREENING_DATE - datetime.timedelta(days=days_before)
    result = screen(last_systemic_glucocorticoid=last.isoformat())
    assert status_of(result, "systemic_glucocorticoid") is expected
    assert result.eligible is (expected is DOES_NOT_APPLY)


def test_glucocorticoid_washout_comes_from_parameters() -> None:
    data = parse_screening({**GOOD, "last_systemic_glucocorticoid": "2025-03-01"})  # 9 days
    assert evaluate_eligibility(data, SCREENING_DATE).eligible
    params = attrs.evolve(DEFAULT_PARAMETERS, glucocorticoid_washout_days=14)
    assert not evaluate_eligibility(data, SCREENING_DATE, params).eligible


@pytest.mark.parametrize("never", [None, "none"])
def test_glucocorticoid_never_given_does_not_exclude(never: Any) -> None:
    result = screen(last_systemic_glucocorticoid=never)
    assert status_of(result, "systemic_glucocorticoid") is DOES_NOT_APPLY
    assert parse_screening({"last_systemic_glucocorticoid": never}).to_json() == {
        "last_systemic_glucocorticoid": None
    }


def test_glucocorticoid_absent_key_is_missing_not_never() -> None:
    result = screen(last_systemic_glucocorticoid=...)
    assert status_of(result, "systemic_glucocorticoid") is MISSING
    assert not result.eligible


def test_glucocorticoid_dose_after_screening_date_is_an_input_error() -> None:
    data = parse_screening({**GOOD, "last_systemic_glucocorticoid": "2025-03-11"})
    with pytest.raises(ProtocolInputError) as err:
        evaluate_eligibility(data, SCREENING_DATE)
    assert err.value.field == "last_systemic_glucocorticoid"


def test_screening_date_must_be_a_date_without_time() -> None:
    data = parse_screening(GOOD)
    with pytest.raises(ProtocolInputError) as err:
        evaluate_eligibility(data, datetime.datetime(2025, 3, 10, 9, 0))
    assert err.value.field == "screening_date"


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


def test_thresholds_follow_the_parameters() -> None:
    params = attrs.evolve(
        DEFAULT_PARAMETERS, kps_above=70, hemoglobin_min_g_l=70.0, creatinine_max_x_uln=3.0
    )
    data = parse_screening(
        {
            **GOOD,
            "kps": 80,
            "hemoglobin": {"value": 75, "unit": "g/L"},
            "creatinine": {"value": 3.6, "unit": "mg/dL", "uln": 1.2},
        }
    )
    result = evaluate_eligibility(data, SCREENING_DATE, params)
    assert result.eligible
    assert next(c for c in result.criteria if c.id == "kps").threshold == "KPS > 70"
    assert len(evaluate_eligibility(data, SCREENING_DATE).failed) == 3


# ------------------------------------------------------------------------------------------------
# Parsing: bad input names the field and what is allowed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"kps_score": 90}, "kps_score", "allowed fields are diagnosis_rr_b_all"),
        ({"kps": True}, "kps", "whole number"),
        ({"kps": 90.0}, "kps", "whole number"),
        ({"kps": 101}, "kps", "0-100"),
        ({"kps": -10}, "kps", "0-100"),
        ({"kps": "90"}, "kps", "whole number"),
        ({"kps": None}, "kps", "leave the key out"),
        ({"failed_standard_lines": -1}, "failed_standard_lines", "0-50"),
        ({"lvef_pct": float("nan")}, "lvef_pct", "not a finite number"),
        ({"lvef_pct": float("inf")}, "lvef_pct", "not a finite number"),
        ({"lvef_pct": 101}, "lvef_pct", "0-100"),
        ({"spo2_room_air_pct": False}, "spo2_room_air_pct", "expected a number"),
        ({"life_expectancy_months": -1}, "life_expectancy_months", "below 0"),
        ({"hiv": "no"}, "hiv", "expected true or false"),
        ({"hiv": 0}, "hiv", "expected true or false"),
        ({"pregnant": None}, "pregnant", "null is not allowed"),
        ({"creatinine": 0.9}, "creatinine", "expected an object with value, unit, uln"),
        ({"creatinine": {"value": 0.9, "uln": 1.2}}, "creatinine.unit", "'mg/dL' or 'umol/L'"),
        (
            {"creatinine": {"value": 0.9, "unit": "mmol/L", "uln": 1.2}},
            "creatinine.unit",
            "unit \"mmol/L\" is not allowed; use 'mg/dL' or 'umol/L'",
        ),
        ({"creatinine": {"value": 0.9, "unit": "mg/dL"}}, "creatinine.uln", "upper limit"),
        ({"creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 0}}, "creatinine.uln", "above 0"),
        (
            {"creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 1.2, "uln_unit": "g/L"}},
            "creatinine.uln_unit",
            "'mg/dL' or 'umol/L'",
        ),
        (
            {"creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 1.2, "ref": 1}},
            "creatinine.ref",
            "allowed fields are value, unit, uln, uln_unit",
        ),
        ({"alt": {"value": 30, "unit": "IU/L", "uln": 40}}, "alt.unit", "use 'U/L'"),
        ({"ast": {"value": -1, "unit": "U/L", "uln": 40}}, "ast.value", "below 0"),
        ({"bilirubin": {"value": 1.1, "unit": "mg/dl"}}, "bilirubin.unit", "'mg/dL' or 'umol/L'"),
        ({"bilirubin": {"value": 1.1}}, "bilirubin.unit", "required"),
        ({"bilirubin": {"unit": "mg/dL"}}, "bilirubin.value", "required"),
        ({"bilirubin": {"value": True, "unit": "mg/dL"}}, "bilirubin.value", "expected a number"),
        ({"hemoglobin": {"value": 9, "unit": "mmol/L"}}, "hemoglobin.unit", "'g/L' or 'g/dL'"),
        ({"hemoglobin": {"value": 9, "unit": "g/L", "uln": 1}}, "hemoglobin.uln", "value, unit"),
        ({"last_systemic_glucocorticoid": "2025/03/01"}, "last_systemic_glucocorticoid", "YYYY"),
        ({"last_systemic_glucocorticoid": "20250301"}, "last_systemic_glucocorticoid", "YYYY"),
        (
            {"last_systemic_glucocorticoid": "2025-02-30"},
            "last_systemic_glucocorticoid",
            "not a valid calendar date",
        ),
        ({"last_systemic_glucocorticoid": "never"}, "last_systemic_glucocorticoid", "YYYY"),
        ({"last_systemic_glucocorticoid": 20250301}, "last_systemic_glucocorticoid", "YYYY"),
        ({"informed_consent_date": None}, "informed_consent_date", "YYYY-MM-DD"),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(
    changes: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ProtocolInputError) as err:
        parse_screening({**GOOD, **changes})
    assert err.value.field == field
    assert fragment in err.value.message


def test_screening_must_be_an_object() -> None:
    with pytest.raises(ProtocolInputError) as err:
        parse_screening([("kps", 90)])  # type: ignore[arg-type]
    assert err.value.field == "screening"


def test_uln_unit_defaults_to_the_value_unit_and_is_stored_explicitly() -> None:
    data = parse_screening({"creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 1.2}})
    assert data.to_json() == {
        "creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 1.2, "uln_unit": "mg/dL"}
    }


# ------------------------------------------------------------------------------------------------
# Round trip and properties
# ------------------------------------------------------------------------------------------------


def test_round_trip_of_the_full_example() -> None:
    data = parse_screening(GOOD)
    stored = json.loads(json.dumps(data.to_json()))
    assert parse_screening(stored) == data
    assert stored["last_systemic_glucocorticoid"] is None
    assert stored["informed_consent_date"] == "2025-03-01"


def test_absent_keys_stay_absent_in_the_stored_form() -> None:
    data = parse_screening({"kps": 90})
    assert data.to_json() == {"kps": 90}
    assert parse_screening(data.to_json()) == data
    assert data == ScreeningData(kps=90)


def _tenths(lo: int, hi: int) -> st.SearchStrategy[float]:
    return st.integers(lo, hi).map(lambda n: float(Decimal(n) / 10))


def _within(key: str, unit: str) -> st.SearchStrategy[float]:
    """Tenths within the plausible range of ``key`` in ``unit`` (outside it: refused)."""
    low, high = LAB_RANGES[key].bounds(unit)
    return _tenths(math.ceil(low * 10), math.floor(high * 10))


def _lab(key: str, units: tuple[str, ...], uln: bool) -> st.SearchStrategy[dict[str, Any]]:
    return lab(_within, key, units, uln)


def _lab_uln(key: str, units: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return _lab(key, units, True)


VALUE_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "failed_standard_lines": st.integers(0, 10),
    "kps": st.integers(0, 100),
    "life_expectancy_months": st.one_of(st.integers(0, 60), _tenths(0, 600)),
    "lvef_pct": _tenths(0, 1000),
    "spo2_room_air_pct": _tenths(0, 1000),
    "creatinine": _lab_uln("creatinine", ("mg/dL", "umol/L")),
    "alt": _lab_uln("alt", ("U/L",)),
    "ast": _lab_uln("ast", ("U/L",)),
    "bilirubin": _lab("bilirubin", ("mg/dL", "umol/L"), False),
    "hemoglobin": _lab("hemoglobin", ("g/L", "g/dL"), False),
    "last_systemic_glucocorticoid": st.one_of(
        st.none(),
        st.just("none"),
        st.dates(datetime.date(2024, 1, 1), SCREENING_DATE).map(datetime.date.isoformat),
    ),
}


@st.composite
def screenings(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in SCREENING_KEYS:
        if key == "informed_consent_date" or not draw(st.booleans() | st.just(True)):
            continue
        data[key] = draw(VALUE_STRATEGIES.get(key, st.booleans()))
    if data.get("informed_consent_signed") is True and draw(st.booleans()):
        date = draw(st.dates(datetime.date(2024, 1, 1), datetime.date(2025, 12, 31)))
        data["informed_consent_date"] = date.isoformat()
    return data


@settings(max_examples=300)
@given(screenings())
def test_any_valid_screening_round_trips_and_evaluates_consistently(raw: dict[str, Any]) -> None:
    data = parse_screening(raw)
    stored = json.loads(json.dumps(data.to_json()))
    assert parse_screening(stored) == data
    result = evaluate_eligibility(data, SCREENING_DATE)
    assert evaluate_eligibility(parse_screening(stored), SCREENING_DATE) == result
    assert result.eligible == (result.failed == ())
    assert result.eligible == all(
        c.status is (MET if c.kind is CriterionKind.INCLUSION else DOES_NOT_APPLY)
        for c in result.criteria
    )
    assert len(result.reasons()) == len(result.failed)
    for c in result.criteria:
        allowed = (
            {MET, NOT_MET, MISSING}
            if c.kind is CriterionKind.INCLUSION
            else {APPLIES, DOES_NOT_APPLY, MISSING}
        )
        assert c.status in allowed
    missing_inputs = set(data.missing_keys())
    assert (not missing_inputs) or not result.eligible
    assert json.loads(json.dumps(result.to_json())) == result.to_json()


@given(st.integers(100, 2500))  # 10-250 g/L: the plausible range
def test_hemoglobin_same_decision_in_g_per_l_and_g_per_dl(n: int) -> None:
    g_l = float(Decimal(n) / 10)
    g_dl = float(Decimal(n) / 100)
    a = screen(hemoglobin={"value": g_l, "unit": "g/L"})
    b = screen(hemoglobin={"value": g_dl, "unit": "g/dL"})
    assert status_of(a, "hemoglobin") is status_of(b, "hemoglobin")
    assert (status_of(a, "hemoglobin") is MET) == (n >= 800)


@given(st.integers(5, 2000), st.integers(10, 500))  # plausible: value >= 0.05, ULN 0.1-5 mg/dL
def test_creatinine_same_decision_in_every_unit_combination(value: int, uln: int) -> None:
    factor = Decimal("88.42")
    v_mg, u_mg = Decimal(value) / 100, Decimal(uln) / 100
    v_um, u_um = v_mg * factor, u_mg * factor
    statuses = set()
    for v, vu in ((v_mg, "mg/dL"), (v_um, "umol/L")):
        for u, uu in ((u_mg, "mg/dL"), (u_um, "umol/L")):
            lab = {"value": float(v), "unit": vu, "uln": float(u), "uln_unit": uu}
            statuses.add(status_of(screen(creatinine=lab), "creatinine"))
    expected = MET if v_mg <= Decimal("2.5") * u_mg else NOT_MET
    assert statuses == {expected}


@given(st.integers(0, 99), st.integers(0, 100))
def test_higher_kps_never_loses_eligibility(low: int, extra: int) -> None:
    high = min(100, low + extra)
    if status_of(screen(kps=low), "kps") is MET:
        assert status_of(screen(kps=high), "kps") is MET


@given(_tenths(0, 1000), _tenths(0, 1000), st.sampled_from(["mg/dL", "umol/L"]))
def test_lower_bilirubin_never_loses_eligibility(a: float, b: float, unit: str) -> None:
    low, high = sorted((a, b))
    if status_of(screen(bilirubin={"value": high, "unit": unit}), "bilirubin") is MET:
        assert status_of(screen(bilirubin={"value": low, "unit": unit}), "bilirubin") is MET
