"""One table decides every criterion: the fast decision (ids only) and the full evaluation (with
sentences) read the same statuses, and lab values clearly off their limit are decided by floats
exactly as the exact decimal comparison decides them."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.demo import eligible_screening
from cart_course.protocol.eligibility import (
    _CRITERIA_TABLE,
    CREATININE_UMOL_L_PER_MG_DL,
    CRITERIA,
    HEMOGLOBIN_G_L_PER_G_DL,
    CriterionStatus,
    LabValue,
    LabWithUln,
    _hemoglobin_status,
    _limits,
    _x_uln_status,
    eligibility_failures,
    evaluate_eligibility,
    parse_screening,
)
from cart_course.protocol.parameters import DEFAULT_PARAMETERS

DAY = dt.date(2025, 3, 10)
MET, NOT_MET = CriterionStatus.MET, CriterionStatus.NOT_MET


def test_the_table_decides_every_criterion_in_catalogue_order() -> None:
    assert [cid for cid, _decide, _describe in _CRITERIA_TABLE] == [c.id for c in CRITERIA]


def _screenings(n: int) -> list[dict[str, Any]]:
    rng = random.Random(9)
    out = []
    for _ in range(n):
        raw = eligible_screening(rng)
        for key in list(raw):
            if rng.random() < 0.1:
                del raw[key]
            elif rng.random() < 0.1 and isinstance(raw[key], bool):
                raw[key] = not raw[key]
        out.append(raw)
    return out


@pytest.mark.parametrize(
    "params",
    [DEFAULT_PARAMETERS, attrs.evolve(DEFAULT_PARAMETERS, kps_above=95, hemoglobin_min_g_l=100.0)],
)
def test_each_result_has_the_status_its_decision_gives(params: Any) -> None:
    lim = _limits(params)
    statuses: set[str] = set()
    for raw in _screenings(150):
        data = parse_screening(raw)
        result = evaluate_eligibility(data, DAY, params)
        decided = [decide(data, DAY, params, lim) for _cid, decide, _ in _CRITERIA_TABLE]
        assert [c.status for c in result.criteria] == decided
        assert eligibility_failures(data, DAY, params) == tuple(c.id for c in result.failed)
        statuses.update(decided)
    assert statuses == set(CriterionStatus)  # every status occurs: the test can fail


def _exact_x_uln(value: Any, unit: str, uln: Any, uln_unit: str, k: Decimal) -> CriterionStatus:
    """The criterion as the trial states it, in exact decimals of the numbers as written."""
    v, u = Decimal(repr(value)), Decimal(repr(uln))
    if unit == uln_unit:
        ok = v <= k * u
    elif unit == "umol/L":
        ok = v <= k * u * CREATININE_UMOL_L_PER_MG_DL
    else:
        ok = v * CREATININE_UMOL_L_PER_MG_DL <= k * u
    return MET if ok else NOT_MET


_NUDGES = [0, 1, -1, 1e-15, -1e-15, 1e-12, -1e-12, 1e-9, -1e-9, 1e-6, -1e-6, 0.5, -0.5]


@settings(max_examples=1500, deadline=None)
@given(
    uln=st.one_of(
        st.integers(1, 500), st.integers(1, 5000).map(lambda n: n / 100), st.sampled_from([1.2, 40])
    ),
    units=st.sampled_from(
        [("mg/dL", "mg/dL"), ("umol/L", "umol/L"), ("umol/L", "mg/dL"), ("mg/dL", "umol/L")]
    ),
    nudge=st.sampled_from(_NUDGES),
    as_int=st.booleans(),
)
def test_creatinine_near_its_limit_is_decided_exactly(
    uln: Any, units: tuple[str, str], nudge: float, as_int: bool
) -> None:
    unit, uln_unit = units
    lim = _limits(DEFAULT_PARAMETERS)
    k = lim.creatinine_k
    limit = k * Decimal(repr(uln))
    if unit != uln_unit:
        limit = (
            limit * CREATININE_UMOL_L_PER_MG_DL if unit == "umol/L" else limit / Decimal("88.42")
        )
    at = float(limit)
    value: Any = round(at) if as_int else at + at * nudge if nudge not in (1, -1) else at + nudge
    value = max(value, 0)
    lab = LabWithUln(value=value, unit=unit, uln=uln, uln_unit=uln_unit)
    assert _x_uln_status(lab, k, lim.creatinine_k_text) == _exact_x_uln(
        value, unit, uln, uln_unit, k
    )


def test_a_value_exactly_at_the_limit_is_within_it() -> None:
    lim = _limits(DEFAULT_PARAMETERS)
    at = LabWithUln(value=3.0, unit="mg/dL", uln=1.2, uln_unit="mg/dL")  # 2.5 x 1.2 = 3.0
    above = LabWithUln(value=3.0000000000000004, unit="mg/dL", uln=1.2, uln_unit="mg/dL")
    assert _x_uln_status(at, lim.creatinine_k, lim.creatinine_k_text) is MET
    assert _x_uln_status(above, lim.creatinine_k, lim.creatinine_k_text) is NOT_MET


@settings(max_examples=1000, deadline=None)
@given(
    minimum=st.sampled_from([80.0, 80, 90.5, 100.0, 79.99]),
    unit=st.sampled_from(["g/L", "g/dL"]),
    nudge=st.sampled_from(_NUDGES),
)
def test_hemoglobin_near_its_limit_is_decided_exactly(
    minimum: float, unit: str, nudge: float
) -> None:
    params = attrs.evolve(DEFAULT_PARAMETERS, hemoglobin_min_g_l=minimum)
    exact_min = Decimal(repr(minimum))
    at = float(exact_min) if unit == "g/L" else float(exact_min / HEMOGLOBIN_G_L_PER_G_DL)
    value = at + at * nudge if nudge not in (1, -1) else at + nudge
    data = parse_screening({"hemoglobin": {"value": value, "unit": unit}})
    given_g_l = Decimal(repr(value)) * (1 if unit == "g/L" else HEMOGLOBIN_G_L_PER_G_DL)
    expected = MET if given_g_l >= exact_min else NOT_MET
    status = _hemoglobin_status(data, DAY, params, _limits(params))
    assert status == expected
    assert isinstance(data.hemoglobin, LabValue)
