"""Dosing: planned dose from weight and cells/kg, fractions 10/30/60 %, units, tolerance."""

from __future__ import annotations

import pytest

from cart_course.protocol.dosing import (
    not_above_plan,
    parse_cell_dose,
    parse_weight,
    plan_course,
    relative_deviation,
    within_tolerance,
)
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.parameters import DEFAULT_PARAMETERS, ProtocolParameters


def test_plan_is_1e6_per_kg_split_10_30_60() -> None:
    plan = plan_course(70.0)
    assert plan.total_cells == pytest.approx(7.0e7)
    assert plan.fraction_cells == pytest.approx((7.0e6, 2.1e7, 4.2e7))
    assert sum(plan.fraction_cells) == pytest.approx(plan.total_cells)
    assert plan.counted_quantity == "CAR-positive viable T cells"


def test_plan_follows_the_parameters_of_the_version() -> None:
    params = ProtocolParameters(cells_per_kg=2.0e6, fractions=(0.2, 0.3, 0.5))
    plan = plan_course(50.0, params)
    assert plan.total_cells == pytest.approx(1.0e8)
    assert plan.fraction_cells == pytest.approx((2.0e7, 3.0e7, 5.0e7))


def test_default_fractions_sum_to_one() -> None:
    assert sum(DEFAULT_PARAMETERS.fractions) == pytest.approx(1.0)
    assert DEFAULT_PARAMETERS.dose_tolerance == 0.20


@pytest.mark.parametrize(
    ("value", "unit", "kg"),
    [(70, "kg", 70.0), (70000, "g", 70.0), (154.32358352941432, "lb", 70.0), (10, "lb", 4.5359237)],
)
def test_weight_units_convert_to_kg(value: float, unit: str, kg: float) -> None:
    assert parse_weight({"value": value, "unit": unit}) == pytest.approx(kg)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"value": 70, "unit": "stone"}, "weight.unit", "use one of kg, g, lb"),
        ({"value": 57.7, "unit": []}, "weight.unit", "use one of kg, g, lb"),
        ({"value": 57.7, "unit": {"kg": 1}}, "weight.unit", "use one of kg, g, lb"),
        ({"value": "70", "unit": "kg"}, "weight.value", "must be a number"),
        ({"value": 0.1, "unit": "kg"}, "weight.value", "not a plausible body weight"),
        ({"value": 70, "unit": "kg", "height": 170}, "weight.height", "unknown key"),
        (70, "weight", "must be an object"),
    ],
)
def test_bad_weight_names_the_field(data: object, field: str, words: str) -> None:
    with pytest.raises(ProtocolInputError) as info:
        parse_weight(data)
    assert info.value.field == field
    assert words in info.value.message


def test_cells_per_kg_convert_with_the_weight() -> None:
    dose = parse_cell_dose({"value": 1.0e5, "unit": "cells/kg"}, 70.0)
    assert dose.cells == pytest.approx(7.0e6)
    assert dose.to_json() == {"value": 1.0e5, "unit": "cells/kg"}
    assert parse_cell_dose({"value": 7.0e6, "unit": "cells"}, None).cells == 7.0e6


@pytest.mark.parametrize(
    ("data", "weight"),
    [
        ({"value": 1.7e308, "unit": "cells"}, None),
        ({"value": 2e12, "unit": "cells"}, None),
        ({"value": 1e11, "unit": "cells/kg"}, 70.0),  # a cells/kg figure keyed as per kg twice
    ],
)
def test_an_implausible_cell_count_is_refused_not_recorded(
    data: dict[str, object], weight: float | None
) -> None:
    """A count no course could have (above 1e12 cells in one fraction) is a keying or unit
    error: refused with the field named, never recorded as a deviation (nor summed to inf)."""
    with pytest.raises(ProtocolInputError) as info:
        parse_cell_dose(data, weight)
    assert info.value.field == "cells.value"
    assert "not a plausible fraction" in info.value.message
    assert parse_cell_dose({"value": 1e12, "unit": "cells"}, None).cells == 1e12


def test_cells_per_kg_without_weight_is_refused() -> None:
    with pytest.raises(ProtocolInputError) as info:
        parse_cell_dose({"value": 1.0e5, "unit": "cells/kg"}, None)
    assert info.value.field == "cells.unit"
    assert "needs the course's body weight" in info.value.message


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), True])
def test_cell_count_must_be_a_positive_finite_number(value: object) -> None:
    with pytest.raises(ProtocolInputError) as info:
        parse_cell_dose({"value": value, "unit": "cells"}, 70.0)
    assert info.value.field == "cells.value"


@pytest.mark.parametrize(
    ("delivered", "ok"),
    [(0.79, False), (0.8, True), (1.0, True), (1.2, True), (1.2000001, False)],
)
def test_tolerance_boundaries_both_sides(delivered: float, ok: bool) -> None:
    assert within_tolerance(1.0, delivered, 0.20) is ok


def test_exact_tolerance_limit_survives_binary_floating_point() -> None:
    planned = 70.0 * 1e6 * 0.1
    assert within_tolerance(planned, planned * 1.2, 0.2)
    assert within_tolerance(planned, planned * 0.8, 0.2)


def test_course_total_may_fall_short_but_not_exceed_plan_beyond_tolerance() -> None:
    assert not_above_plan(7e7, 1e7, 0.2)
    assert not_above_plan(7e7, 8.4e7, 0.2)
    assert not not_above_plan(7e7, 8.5e7, 0.2)
    assert relative_deviation(7e7, 8.4e7) == pytest.approx(0.2)
