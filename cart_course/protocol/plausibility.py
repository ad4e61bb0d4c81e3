"""Input plausibility: numbers a float can hold, and the physiological range of each lab value.

These are not protocol rules. A value outside them is a keying or unit error (hemoglobin 75 g/L
entered as 75 g/dL, an ANC of 500 /uL entered as 500 x 10^9/L) and is refused with the field,
the value, its unit and the allowed range named -- never recorded, never turned into a decision.
The ranges are wide enough never to refuse a value a living patient has; they are assumed
parameters of the input format (``docs/protocol.md``, "Input plausibility limits").

Pure code: stdlib and attrs only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

import attrs

from .errors import ProtocolInputError

__all__ = [
    "LAB_RANGES",
    "LabRange",
    "finite_float",
    "show_number",
]


def finite_float(value: Any) -> float | None:
    """The float of a JSON number (int or float, not bool), or None when it has none: NaN, an
    infinity, or an integer too large for a float (``float(10**400)`` raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def show_number(value: Any) -> str:
    """A number for an error message: as written, or its size when it is too long to print
    (a 400-digit integer is not repeated back; Python cannot even print one of 5000 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**21:
        exact = Decimal(value)  # int -> Decimal is not limited by sys.int_max_str_digits
        return f"{exact:.3e} (a whole number of {exact.adjusted() + 1} digits)"
    return repr(value)


def _unit(unit: str) -> str:
    """A unit as the messages write it: '10^9/L' -> 'x 10^9/L'."""
    return f"x {unit}" if unit.startswith("10^") else unit


def _text(d: Decimal) -> str:
    """A decimal bound as a person writes it: 250, 0.05, 4421."""
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


@attrs.frozen(kw_only=True, slots=False)
class LabRange:
    """The plausible range of one laboratory value, in its canonical unit, and the exact factor
    of every accepted unit (value in that unit = value in the canonical unit x factor)."""

    name: str
    canonical: str
    low: Decimal
    high: Decimal
    factors: Mapping[str, Decimal]

    def bounds(self, unit: str) -> tuple[Decimal, Decimal]:
        k = self.factors[unit]
        return self.low * k, self.high * k

    def contains(self, value: float, unit: str) -> bool:
        inside = self._inside.get(unit)
        if inside is not None and inside[0] < value < inside[1]:
            return True  # clearly inside: the exact comparison below would say the same
        low, high = self.bounds(unit)
        exact = Decimal(repr(value)) if type(value) is float else Decimal(value)
        return low <= exact <= high

    @functools.cached_property
    def _inside(self) -> dict[str, tuple[float, float]]:
        """Per unit, floats just inside the exact bounds: a number strictly between them is
        within the range as written (its shortest repr too), without decimal arithmetic."""
        inside = {}
        for unit in self.factors:
            low, high = self.bounds(unit)
            inside[unit] = (
                math.nextafter(float(low), math.inf),
                math.nextafter(float(high), -math.inf),
            )
        return inside

    def allowed(self, unit: str) -> str:
        """The allowed range in ``unit``, then in the other units: '10 to 250 g/L = 1 to 25 g/dL'."""
        low, high = self.bounds(unit)
        text = f"{_text(low)} to {_text(high)} {_unit(unit)}"
        others = []
        for other in self.factors:
            if other != unit:
                lo, hi = self.bounds(other)
                others.append(f"{_text(lo)} to {_text(hi)} {_unit(other)}")
        return " = ".join([text, *others])

    def check(self, value: float, unit: str, field: str, what: str | None = None) -> None:
        """Refuse ``value`` (already a finite number in an accepted ``unit``) outside the range,
        naming the likely unit mix-up when the same number is plausible in another unit."""
        if self.contains(value, unit):
            return
        what = what or self.name
        shown = show_number(value)
        hint = [u for u in self.factors if u != unit and self.contains(value, u)]
        if hint:
            advice = (
                f"{shown} {_unit(hint[0])} would be plausible: was it measured in {hint[0]}, "
                f"not {unit}? Check the value and its unit"
            )
        else:
            advice = "check the value and its unit"
        raise ProtocolInputError(
            field,
            f"{what} {shown} {_unit(unit)} is not a plausible value (allowed "
            f"{self.allowed(unit)}); "
            f"{advice}",
        )


def _range(name: str, canonical: str, low: str, high: str, factors: Mapping[str, str]) -> LabRange:
    return LabRange(
        name=name,
        canonical=canonical,
        low=Decimal(low),
        high=Decimal(high),
        factors=MappingProxyType({u: Decimal(k) for u, k in factors.items()}),
    )


#: 1 mg/dL creatinine = 88.42 umol/L (as ``eligibility.CREATININE_UMOL_L_PER_MG_DL``).
_CREATININE: Final = {"mg/dL": "1", "umol/L": "88.42"}
#: 1 mg/dL bilirubin = 17.1 umol/L (the trial's own pair: 2.0 mg/dL = 34.2 umol/L).
_BILIRUBIN: Final = {"mg/dL": "1", "umol/L": "17.1"}

#: Physiological plausibility of every laboratory value and count the protocol reads
#: (assumed parameters of the input format, cited in docs/protocol.md). Bounds are inclusive.
LAB_RANGES: Final[Mapping[str, LabRange]] = MappingProxyType(
    {
        # Screening (eligibility.py).
        "creatinine": _range("creatinine", "mg/dL", "0.05", "50", _CREATININE),
        "creatinine_uln": _range(
            "the site's upper limit of normal for creatinine", "mg/dL", "0.1", "5", _CREATININE
        ),
        "alt": _range("ALT", "U/L", "0", "20000", {"U/L": "1"}),
        "ast": _range("AST", "U/L", "0", "20000", {"U/L": "1"}),
        "alt_uln": _range(
            "the site's upper limit of normal for ALT", "U/L", "5", "250", {"U/L": "1"}
        ),
        "ast_uln": _range(
            "the site's upper limit of normal for AST", "U/L", "5", "250", {"U/L": "1"}
        ),
        "bilirubin": _range("total bilirubin", "mg/dL", "0", "100", _BILIRUBIN),
        "hemoglobin": _range("hemoglobin", "g/dL", "1", "25", {"g/dL": "1", "g/L": "10"}),
        # Response assessment (response.py).
        "anc": _range("ANC", "10^9/L", "0", "100", {"10^9/L": "1", "/uL": "1000"}),
        "platelets": _range("platelets", "10^9/L", "0", "5000", {"10^9/L": "1", "/uL": "1000"}),
    }
)
