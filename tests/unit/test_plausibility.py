"""Input plausibility: lab values and counts in the wrong unit, and numbers too large for a float,
are refused with the field, the value, its unit and what is allowed -- never recorded, never
turned into eligibility or a response."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.contract import parse_command
from cart_course.demo import assessment, crs, eligible_screening
from cart_course.errors import CartCourseError
from cart_course.protocol import dosing
from cart_course.protocol.commands import prepare
from cart_course.protocol.eligibility import evaluate_eligibility, parse_screening
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.response import classify_response, parse_response_assessment
from cart_course.protocol.toxicity import parse_temperature, parse_toxicity_report
from cart_course.protocol.versions import CURRENT
from cart_course.service import CommandResult, CourseService
from cart_course.storage import open_application, parse_store_url

DAY = dt.date(2026, 1, 5)
AT = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)
HUGE = 10**400  # a JSON integer: too large for a float


def _error(parse: Any, *args: Any) -> ProtocolInputError:
    with pytest.raises(ProtocolInputError) as info:
        parse(*args)
    return info.value


# ------------------------------------------------------------------------------------------
# Unit mix-ups
# ------------------------------------------------------------------------------------------


def test_hemoglobin_in_g_per_l_entered_as_g_per_dl_is_refused_not_made_eligible() -> None:
    screening = eligible_screening(random.Random(5))
    screening["hemoglobin"] = {"value": 75, "unit": "g/dL"}  # 75 g/L: below the 80 g/L limit
    err = _error(parse_screening, screening)
    assert err.field == "hemoglobin.value"
    assert "hemoglobin 75 g/dL is not a plausible value" in err.message
    assert "allowed 1 to 25 g/dL = 10 to 250 g/L" in err.message
    assert "75 g/L would be plausible: was it measured in g/L, not g/dL?" in err.message
    with pytest.raises(ProtocolInputError) as info:  # the screen command: nothing is decided
        prepare(
            PatientRecord(patient_id="P-1"), "screen", {"screening": screening}, AT, None, CURRENT
        )
    assert info.value.field == "payload.screening.hemoglobin.value"
    screening["hemoglobin"] = {"value": 75, "unit": "g/L"}
    assert not evaluate_eligibility(parse_screening(screening), DAY).eligible


@pytest.mark.parametrize(
    ("key", "count", "field", "fragment"),
    [
        ("anc", {"value": 500, "unit": "10^9/L"}, "anc.value", "ANC 500 x 10^9/L"),
        ("platelets", {"value": 50000, "unit": "10^9/L"}, "platelets.value", "platelets 50000"),
    ],
)
def test_counts_in_per_microlitre_entered_as_10_9_per_l_are_refused_not_classified(
    key: str, count: dict[str, Any], field: str, fragment: str
) -> None:
    data = assessment("CRi")  # ANC 0.6 x 10^9/L: CRi
    data[key] = count
    err = _error(parse_response_assessment, data)
    assert err.field == field
    assert fragment in err.message
    assert "/uL would be plausible: was it measured in /uL, not 10^9/L?" in err.message
    data[key] = {"value": count["value"], "unit": "/uL"}
    assert classify_response(parse_response_assessment(data)).category == "CRi"


@pytest.mark.parametrize(
    ("key", "lab", "field", "fragment"),
    [
        # creatinine in umol/L entered as mg/dL, and its ULN in mg/dL entered as umol/L
        ("creatinine", {"value": 80, "unit": "mg/dL", "uln": 1.2}, "creatinine.value", "umol/L"),
        (
            "creatinine",
            {"value": 0.9, "unit": "mg/dL", "uln": 1.2, "uln_unit": "umol/L"},
            "creatinine.uln",
            "1.2 mg/dL would be plausible",
        ),
        (
            "creatinine",
            {"value": 0.9, "unit": "mg/dL", "uln": 106, "uln_unit": "mg/dL"},
            "creatinine.uln",
            "106 umol/L would be plausible",
        ),
        ("alt", {"value": 30, "unit": "U/L", "uln": 0.6}, "alt.uln", "allowed 5 to 250 U/L"),
        ("ast", {"value": 30000, "unit": "U/L", "uln": 40}, "ast.value", "allowed 0 to 20000"),
        ("bilirubin", {"value": 800, "unit": "mg/dL"}, "bilirubin.value", "800 umol/L would be"),
        ("hemoglobin", {"value": 9.5, "unit": "g/L"}, "hemoglobin.value", "9.5 g/dL would be"),
    ],
)
def test_screening_labs_outside_their_plausible_range_name_field_value_unit_and_range(
    key: str, lab: dict[str, Any], field: str, fragment: str
) -> None:
    err = _error(parse_screening, {key: lab})
    assert err.field == field
    assert "is not a plausible value (allowed" in err.message
    assert fragment in err.message


@pytest.mark.parametrize(
    ("key", "lab"),
    [
        ("creatinine", {"value": 0.1, "unit": "mg/dL", "uln": 0.4}),  # an infant
        ("creatinine", {"value": 2210, "unit": "umol/L", "uln": 110}),  # kidney failure
        ("alt", {"value": 12000, "unit": "U/L", "uln": 40}),  # ischaemic hepatitis
        ("ast", {"value": 0, "unit": "U/L", "uln": 35}),
        ("bilirubin", {"value": 45, "unit": "mg/dL"}),
        ("bilirubin", {"value": 2, "unit": "umol/L"}),
        ("hemoglobin", {"value": 2.1, "unit": "g/dL"}),
        ("hemoglobin", {"value": 230, "unit": "g/L"}),
    ],
)
def test_extreme_but_real_lab_values_are_accepted(key: str, lab: dict[str, Any]) -> None:
    assert parse_screening({key: lab}).to_json()[key]["value"] == lab["value"]


@settings(max_examples=200, deadline=None)
@given(
    anc=st.integers(0, 100_000),
    platelets=st.integers(0, 5_000_000),
    unit=st.sampled_from(["/uL", "10^9/L"]),
)
def test_plausible_counts_are_accepted_and_the_limits_are_inclusive(
    anc: int, platelets: int, unit: str
) -> None:
    scale = 1 if unit == "/uL" else 1000
    data = assessment("CR")
    data["anc"] = {"value": anc / scale, "unit": unit}
    data["platelets"] = {"value": platelets / scale, "unit": unit}
    parsed = parse_response_assessment(data)
    assert parsed.anc is not None and parsed.platelets is not None
    data["anc"] = {"value": 100_001 / scale, "unit": unit}
    assert _error(parse_response_assessment, data).field == "anc.value"


# ------------------------------------------------------------------------------------------
# Integers too large for a float: an input error, never an OverflowError
# ------------------------------------------------------------------------------------------


def _screen(key: str, value: Any) -> Any:
    return parse_screening({key: value})


def _assess(key: str, value: Any) -> Any:
    return parse_response_assessment({"marrow_blasts_pct": 3, key: value})


def _crs(obs: dict[str, Any]) -> Any:
    return parse_toxicity_report(
        {
            "kind": "CRS",
            "observations": {
                "temperature": {"value": 38.5, "unit": "C"},
                "hypotension": False,
                "oxygen": {"device": "none"},
                **obs,
            },
        }
    )


def _icans(obs: dict[str, Any]) -> Any:
    base = {"age_years": 30, "ice_score": 8, "consciousness": "none"}
    return parse_toxicity_report({"kind": "ICANS", "observations": {**base, **obs}})


HUGE_INPUTS: list[tuple[str, Any]] = [
    ("weight", lambda: dosing.parse_weight({"value": HUGE, "unit": "kg"})),
    ("cells", lambda: dosing.parse_cell_dose({"value": HUGE, "unit": "cells"}, 70.0)),
    ("cells/kg", lambda: dosing.parse_cell_dose({"value": HUGE, "unit": "cells/kg"}, 70.0)),
    ("temperature", lambda: parse_temperature({"value": HUGE, "unit": "C"})),
    ("oxygen flow", lambda: _crs({"oxygen": {"device": "venturi", "flow_l_min": HUGE}})),
    ("FiO2", lambda: _crs({"oxygen": {"device": "venturi", "flow_l_min": 8, "fio2_pct": HUGE}})),
    ("vasopressors", lambda: _crs({"hypotension": True, "vasopressors": HUGE})),
    ("age", lambda: _icans({"age_years": HUGE})),
    ("ICE score", lambda: _icans({"ice_score": HUGE})),
    (
        "grade",
        lambda: parse_toxicity_report(
            {"kind": "CRS", "grade": HUGE, "scale": "CTCAE", "scale_version": "5.0"}
        ),
    ),
    *[
        (key, lambda key=key: _screen(key, HUGE))
        for key in (
            "failed_standard_lines",
            "kps",
            "life_expectancy_months",
            "lvef_pct",
            "spo2_room_air_pct",
        )
    ],
    ("creatinine", lambda: _screen("creatinine", {"value": HUGE, "unit": "mg/dL", "uln": 1})),
    ("creatinine ULN", lambda: _screen("creatinine", {"value": 1, "unit": "mg/dL", "uln": HUGE})),
    ("ALT", lambda: _screen("alt", {"value": HUGE, "unit": "U/L", "uln": 40})),
    ("AST ULN", lambda: _screen("ast", {"value": 30, "unit": "U/L", "uln": HUGE})),
    ("bilirubin", lambda: _screen("bilirubin", {"value": HUGE, "unit": "umol/L"})),
    ("hemoglobin", lambda: _screen("hemoglobin", {"value": HUGE, "unit": "g/L"})),
    ("marrow blasts", lambda: parse_response_assessment({"marrow_blasts_pct": HUGE})),
    ("baseline blasts", lambda: _assess("baseline_marrow_blasts_pct", HUGE)),
    ("ANC", lambda: _assess("anc", {"value": HUGE, "unit": "/uL"})),
    ("platelets", lambda: _assess("platelets", {"value": HUGE, "unit": "10^9/L"})),
    (
        "MRD",
        lambda: _assess("mrd", {"value": HUGE, "unit": "%", "method": "flow", "sensitivity": 1e-4}),
    ),
]


@pytest.mark.parametrize(("what", "parse"), HUGE_INPUTS, ids=[w for w, _ in HUGE_INPUTS])
def test_an_integer_too_large_for_a_float_is_an_input_error(what: str, parse: Any) -> None:
    err = _error(parse)
    assert err.field, what
    assert len(err.message) < 400, err.message  # the 401 digits are not repeated back
    assert "401 digits" in err.message, err.message


def test_a_huge_number_in_a_batch_is_refused_alone_and_the_batch_is_recorded() -> None:
    service = CourseService(open_application(parse_store_url("memory:")))
    try:

        def command(n: int, name: str, payload: dict[str, Any]) -> Any:
            return parse_command(
                {
                    "command": name,
                    "patient_id": "B-1",
                    "occurred_at": (AT + dt.timedelta(days=n)).isoformat(),
                    "actor": {"id": "emr", "role": "service"},
                    "idempotency_key": f"B-1-{n}",
                    "reason": "consent withdrawn" if name == "withdraw" else None,
                    "payload": payload,
                }
            )

        screen = {"screening": eligible_screening(random.Random(5))}
        huge = {"toxicity": crs(1)}
        huge["toxicity"]["observations"]["temperature"] = {"value": HUGE, "unit": "C"}
        results = service.execute_batch(
            [
                command(0, "screen", screen),
                command(2, "record_apheresis", {"apheresis_contraindication": False}),
                command(3, "report_toxicity", huge),
                command(4, "withdraw", {}),
            ]
        )
        assert isinstance(results[2], CartCourseError)
        assert "temperature" in str(results[2]) and "401 digits" in str(results[2])
        assert [type(r) for r in results] == [
            CommandResult,
            CommandResult,
            type(results[2]),
            CommandResult,
        ]
        assert service.record("B-1").version == 4  # the lines around it were recorded
    finally:
        service.close()
