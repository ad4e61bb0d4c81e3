"""CAR-T dosing: planned dose from body weight, the three fractions, delivered vs planned.

Trial text: "The number of CART cells for each course will be about 1x10^6/kg", given "for 3 days
as follow: D1,10% fraction;D2,30%;D3 60%". The counted quantity (what a "cell" is) and the
tolerance around "about" are protocol parameters (``ProtocolParameters.counted_quantity``,
``ProtocolParameters.dose_tolerance``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .errors import INVALID, ContextInputError, Problems, ProtocolInputError, key_name
from .parameters import DEFAULT_PARAMETERS, ProtocolParameters
from .payloads import CellDosePayload, FieldsJson, WeightPayload, convert
from .plausibility import finite_float, show_number

#: Units accepted for body weight, with their exact factor to kilograms.
WEIGHT_UNITS: dict[str, float] = {"kg": 1.0, "g": 0.001, "lb": 0.45359237}
#: Units accepted for a cell count. ``cells/kg`` is converted with the course's body weight.
CELL_UNITS = ("cells", "cells/kg")
#: Input plausibility: the most cells one fraction can be recorded with (as entered in ``cells``,
#: or ``cells/kg`` times the weight). A course plans ~1e6/kg (at most 4e8 cells at 400 kg); a
#: number above this is a unit or keying error, not a dose, and is refused rather than recorded
#: as a deviation. It also keeps every sum of a course's doses a finite number.
MAX_FRACTION_CELLS = 1e12
#: Tiny relative slack so that a dose entered as exactly the tolerance limit is accepted
#: despite binary floating point (e.g. 0.1 * 1.2).
_FLOAT_SLACK = 1e-9


def _number(data: Mapping[str, Any], key: str, field: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolInputError(f"{field}.{key}", f"must be a number, got {value!r}")
    number = finite_float(value)  # None for NaN, infinities and integers too large for a float
    if number is None:
        raise ProtocolInputError(
            f"{field}.{key}", f"must be a finite number, got {show_number(value)}"
        )
    return number


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], field: str) -> None:
    extra = sorted(set(data) - set(allowed), key=str)
    if extra:
        raise ProtocolInputError(
            f"{field}.{key_name(extra[0])}", f"unknown key; allowed keys are: {', '.join(allowed)}"
        )


def parse_weight(data: Any, field: str = "weight") -> float:
    """Body weight in kg from ``{"value": 70, "unit": "kg"}`` (``kg``, ``g`` or ``lb``).

    One ``msgspec.convert`` into :class:`~cart_course.protocol.payloads.WeightPayload` on the
    fast path; otherwise checked field by field, naming every invalid field."""
    payload = convert(data, WeightPayload)
    if payload is not None:
        value = finite_float(payload.value)
        if value is not None:
            kg = value * WEIGHT_UNITS[payload.unit]
            if 0.5 <= kg <= 400.0:
                return kg
    if not isinstance(data, Mapping):
        raise ProtocolInputError(field, 'must be an object like {"value": 70, "unit": "kg"}')
    p = Problems()
    p.run(lambda: _check_keys(data, ("value", "unit"), field))
    unit = data.get("unit")
    if not isinstance(unit, str) or unit not in WEIGHT_UNITS:
        p.add(
            ProtocolInputError(
                f"{field}.unit",
                f"unit {unit!r} is not allowed; use one of {', '.join(WEIGHT_UNITS)}",
            )
        )
        unit = None
    number = p.run(lambda: _number(data, "value", field))
    kg = 0.0
    if unit is not None and number is not INVALID:
        kg = number * WEIGHT_UNITS[unit]
        if not 0.5 <= kg <= 400.0:
            p.add(
                ProtocolInputError(
                    f"{field}.value",
                    f"{kg:g} kg is not a plausible body weight (0.5 to 400 kg)",
                )
            )
    p.raise_if_any()
    return kg


@attrs.frozen(kw_only=True)
class CellDose:
    """A counted cell dose as entered, and its absolute number of cells."""

    value: float
    unit: str
    cells: float

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit}


def parse_cell_dose(data: Any, weight_kg: float | None, field: str = "cells") -> CellDose:
    """A cell count ``{"value": 7e6, "unit": "cells"}`` or ``{"value": 1e5, "unit": "cells/kg"}``.

    One ``msgspec.convert`` into :class:`~cart_course.protocol.payloads.CellDosePayload` on the
    fast path; otherwise checked field by field, naming every invalid field. ``cells/kg``
    without the course's weight is a ``ContextInputError`` (judged once the dose is well
    formed)."""
    payload = convert(data, CellDosePayload)
    if payload is not None:
        value = finite_float(payload.value)
        if value is not None:
            if payload.unit == "cells":
                cells: float | None = value
            else:
                cells = None if weight_kg is None else value * weight_kg
            if cells is not None and cells <= MAX_FRACTION_CELLS:
                return CellDose(value=value, unit=payload.unit, cells=cells)
    if not isinstance(data, Mapping):
        raise ProtocolInputError(field, 'must be an object like {"value": 7e6, "unit": "cells"}')
    p = Problems()
    p.run(lambda: _check_keys(data, ("value", "unit"), field))
    unit = data.get("unit")
    if unit not in CELL_UNITS:
        p.add(
            ProtocolInputError(
                f"{field}.unit", f"unit {unit!r} is not allowed; use 'cells' or 'cells/kg'"
            )
        )
    number = p.run(lambda: _number(data, "value", field))
    if number is not INVALID and number <= 0:
        p.add(ProtocolInputError(f"{field}.value", f"must be above 0, got {number:g}"))
    p.raise_if_any()
    assert number is not INVALID
    value = number
    if unit == "cells/kg":
        if weight_kg is None:
            raise ContextInputError(
                f"{field}.unit", "cells/kg needs the course's body weight; give D1 a weight"
            )
        cells = value * weight_kg
    else:
        cells = value
    if cells > MAX_FRACTION_CELLS:
        raise ProtocolInputError(
            f"{field}.value",
            f"{cells:.3g} cells is not a plausible fraction (at most {MAX_FRACTION_CELLS:.0e} "
            "cells; the plan is about 1e6 cells/kg): check the value and its unit",
        )
    return CellDose(value=value, unit=str(unit), cells=cells)


@attrs.frozen(kw_only=True)
class CoursePlan(FieldsJson):
    weight_kg: float
    cells_per_kg: float
    total_cells: float
    fraction_cells: tuple[float, float, float]
    counted_quantity: str


def plan_course(weight_kg: float, params: ProtocolParameters = DEFAULT_PARAMETERS) -> CoursePlan:
    total = weight_kg * params.cells_per_kg
    f1, f2, f3 = params.fractions
    return CoursePlan(
        weight_kg=weight_kg,
        cells_per_kg=params.cells_per_kg,
        total_cells=total,
        fraction_cells=(total * f1, total * f2, total * f3),
        counted_quantity=params.counted_quantity,
    )


def relative_deviation(planned: float, delivered: float) -> float:
    """(delivered - planned) / planned: +0.25 means 25 % above plan."""
    return (delivered - planned) / planned


def within_tolerance(planned: float, delivered: float, tolerance: float) -> bool:
    return abs(relative_deviation(planned, delivered)) <= tolerance + _FLOAT_SLACK


def not_above_plan(planned: float, delivered: float, tolerance: float) -> bool:
    return relative_deviation(planned, delivered) <= tolerance + _FLOAT_SLACK


# -- a likely unit mix-up (issue 18) --------------------------------------------------------------

#: The keying slips by a power of ten a fraction's count is compared against: 10x, 100x and
#: 1000x, too many or too few.
MIX_UP_POWERS = (1, 2, 3)


def _sci(number: float) -> str:
    """3.85e+07 as ``3.85e7``; numbers below 1e4 as they are (``70``)."""
    text = f"{number:.3g}"
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _share(cells: float, planned: float) -> str:
    return f"{round(100 * cells / planned)} % of plan"


def unit_mix_up(
    value: float, unit: str, weight_kg: float, planned: float, tolerance: float
) -> str | None:
    """The likely mistake behind a fraction's count that is off its plan, or None.

    ``value`` ``unit`` is the count as entered (``cells`` or ``cells/kg``), ``weight_kg`` the
    course's weight, ``planned`` the fraction's planned cells. A count within ``tolerance`` of the
    plan is no mistake. Otherwise, in this order, the first reading of the entry that *is* within
    tolerance names the mistake: the other unit (cells/kg entered as cells: the count times the
    weight; cells entered as cells/kg: the count itself), then a power of ten (``MIX_UP_POWERS``)
    too many or too few. A dose off its plan that no such reading explains is None: a deviation
    like any other."""
    cells = value * weight_kg if unit == "cells/kg" else value
    if planned <= 0 or within_tolerance(planned, cells, tolerance):
        return None
    if unit == "cells":
        intended = value * weight_kg
        if within_tolerance(planned, intended, tolerance):
            return (
                f"looks like cells/kg entered as cells: {_sci(value)} x {weight_kg:g} kg = "
                f"{_sci(intended)} cells would be {_share(intended, planned)} "
                f"({_sci(value)} cells is {_share(cells, planned)})"
            )
    elif within_tolerance(planned, value, tolerance):
        return (
            f"looks like cells entered as cells/kg: {_sci(value)} cells/kg x {weight_kg:g} kg = "
            f"{_sci(cells)} cells is {_share(cells, planned)}; {_sci(value)} cells would be "
            f"{_share(value, planned)}"
        )
    for power in MIX_UP_POWERS:
        factor = 10.0**power
        for intended, how in ((cells / factor, "fewer"), (cells * factor, "more")):
            if within_tolerance(planned, intended, tolerance):
                return (
                    f"looks like a power-of-ten slip: {_sci(value)} {unit} ({_sci(cells)} cells) "
                    f"is {_share(cells, planned)}; {_sci(intended)} cells ({factor:.0f}x {how}) "
                    f"would be {_share(intended, planned)}"
                )
    return None
