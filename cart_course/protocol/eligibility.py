"""Eligibility screening: the trial's inclusion and exclusion criteria, from raw values with units.

Input is a flat JSON object (see ``docs/eligibility.md``). ``parse_screening`` validates and
normalizes it into :class:`ScreeningData`; ``evaluate_eligibility`` applies the criteria against a
screening date and the protocol parameters and returns an :class:`EligibilityResult`.

Conventions:

- A key that is absent is *missing*: the criterion that needs it has status ``missing`` and the
  patient is not eligible. ``null`` is not a way to say "unknown" (it is rejected), except for
  ``last_systemic_glucocorticoid`` where an explicit ``null`` means "never given".
- Inclusion criteria have status ``met`` / ``not_met`` / ``missing``.
  Exclusion criteria have status ``applies`` (the patient is excluded) / ``does_not_apply`` /
  ``missing``. ``CriterionResult.passed`` is true for ``met`` and ``does_not_apply`` only.
- Comparisons that need arithmetic (``x ULN``, unit conversions) are done in exact decimal
  arithmetic on the numbers as written, so ``3.0 mg/dL`` against ``2.5 x 1.2 mg/dL`` is exactly at
  the limit (eligible), never off by a floating-point rounding.
"""

from __future__ import annotations

import datetime
import enum
import functools
import json
import math
import operator
from collections.abc import Callable, Mapping
from decimal import Context, Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, TypeGuard

import attrs
from msgspec import UNSET

from cart_course.protocol.errors import INVALID, Problems, ProtocolInputError, key_name
from cart_course.protocol.parameters import DEFAULT_PARAMETERS, ProtocolParameters, per_parameters
from cart_course.protocol.payloads import (
    MAX_FAILED_LINES,
    MAX_LIFE_EXPECTANCY_MONTHS,
    FieldsJson,
    ScreeningPayload,
    convert,
)
from cart_course.protocol.plausibility import LAB_RANGES, finite_float, show_number

__all__ = [
    "CREATININE_UMOL_L_PER_MG_DL",
    "CRITERIA",
    "CRITERIA_BY_ID",
    "HEMOGLOBIN_G_L_PER_G_DL",
    "NEVER",
    "SCREENING_KEYS",
    "Criterion",
    "CriterionKind",
    "CriterionResult",
    "CriterionStatus",
    "EligibilityResult",
    "LabValue",
    "LabWithUln",
    "ScreeningData",
    "eligibility_failures",
    "evaluate_eligibility",
    "parse_screening",
]

#: Creatinine: 1 mg/dL = 88.42 umol/L (molar mass 113.12 g/mol). Not in ``ProtocolParameters``
#: (it is a unit conversion, not a protocol choice); kept here until the lead moves it.
CREATININE_UMOL_L_PER_MG_DL: Final = Decimal("88.42")
#: Hemoglobin: 1 g/dL = 10 g/L by definition.
HEMOGLOBIN_G_L_PER_G_DL: Final = Decimal(10)

#: Input plausibility (not criteria): ``MAX_FAILED_LINES`` failed standard lines and a life
#: expectancy of ``MAX_LIFE_EXPECTANCY_MONTHS`` at most (defined with the payload's type).

#: Value of ``ScreeningData.last_systemic_glucocorticoid`` meaning "never given" (JSON ``null``).
NEVER: Final = "never"

# Exact decimal arithmetic with an explicit context, independent of the thread's decimal context.
_CTX: Final = Context(prec=60)


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


class CriterionKind(enum.StrEnum):
    INCLUSION = "inclusion"
    EXCLUSION = "exclusion"


class CriterionStatus(enum.StrEnum):
    #: Inclusion criterion fulfilled.
    MET = "met"
    #: Inclusion criterion not fulfilled: not eligible.
    NOT_MET = "not_met"
    #: Exclusion criterion present: not eligible.
    APPLIES = "applies"
    #: Exclusion criterion absent.
    DOES_NOT_APPLY = "does_not_apply"
    #: The value needed to decide is not recorded: not eligible until it is.
    MISSING = "missing"


@attrs.frozen(kw_only=True)
class Criterion:
    """One inclusion or exclusion criterion of the trial text."""

    id: str
    kind: CriterionKind
    #: The criterion as written in the trial text.
    text: str
    #: The screening JSON keys this criterion reads.
    inputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "text": self.text,
            "inputs": list(self.inputs),
        }


_I = CriterionKind.INCLUSION
_E = CriterionKind.EXCLUSION

#: Every criterion of the trial text, in the order the trial lists them.
CRITERIA: Final[tuple[Criterion, ...]] = (
    Criterion(
        id="diagnosis_rr_b_all",
        kind=_I,
        text="Recurrent or refractory B cell derived acute lymphoblastic leukemia (ALL)",
        inputs=("diagnosis_rr_b_all",),
    ),
    Criterion(
        id="failed_standard_treatment",
        kind=_I,
        text=(
            "Patients who have failed at least one line of a standard treatment without "
            "effective treatment measures at present"
        ),
        inputs=("failed_standard_lines", "effective_standard_option"),
    ),
    Criterion(
        id="cd19_expressed",
        kind=_I,
        text="CD19 expression on the surface of B-ALL cells must be detected",
        inputs=("cd19_expressed",),
    ),
    Criterion(id="kps", kind=_I, text="KPS>80", inputs=("kps",)),
    Criterion(
        id="life_expectancy",
        kind=_I,
        text="Life expectancy >3 months",
        inputs=("life_expectancy_months",),
    ),
    Criterion(
        id="lvef",
        kind=_I,
        text="Patients must have adequate cardiac function (... LVEF≥50%)",
        inputs=("lvef_pct",),
    ),
    Criterion(
        id="ecg",
        kind=_I,
        text="Patients must have adequate cardiac function (no electrocardiogram with obvious "
        "abnormality, ...)",
        inputs=("ecg_obvious_abnormality",),
    ),
    Criterion(
        id="spo2",
        kind=_I,
        text="adequate pulmonary function as indicated by room air oxygen saturation of > 90%",
        inputs=("spo2_room_air_pct",),
    ),
    Criterion(
        id="creatinine",
        kind=_I,
        text="adequate renal function (Cr≤2.5 times of the normal range)",
        inputs=("creatinine",),
    ),
    Criterion(
        id="alt",
        kind=_I,
        text="The alanine aminotransferase (ALT) ... ≤ 3 times of the normal range",
        inputs=("alt",),
    ),
    Criterion(
        id="ast",
        kind=_I,
        text="... the aspartate aminotransferase (AST)≤ 3 times of the normal range",
        inputs=("ast",),
    ),
    Criterion(
        id="bilirubin",
        kind=_I,
        text="the total bilirubin (TBIL)≤2.0mg/dl(34.2umol/L)",
        inputs=("bilirubin",),
    ),
    Criterion(id="hemoglobin", kind=_I, text="Hemoglobin(Hgb)≥80g/L", inputs=("hemoglobin",)),
    Criterion(
        id="apheresis",
        kind=_I,
        text="Without contraindication of apheresis and cell isolation",
        inputs=("apheresis_contraindication",),
    ),
    Criterion(
        id="informed_consent",
        kind=_I,
        text=(
            "Patients and their families volunteer to participate in the research with signed "
            "written informed consent"
        ),
        inputs=("informed_consent_signed", "informed_consent_date"),
    ),
    Criterion(
        id="other_primary_malignancy",
        kind=_E,
        text="Other concurrent severe and/or uncontrolled medical conditions: patients with "
        "another primary malignant disease",
        inputs=("other_primary_malignancy",),
    ),
    Criterion(
        id="severe_uncontrolled_disease",
        kind=_E,
        text="Other concurrent severe and/or uncontrolled medical conditions: ... another "
        "severe and/or life-threatening medical disease",
        inputs=("severe_uncontrolled_disease",),
    ),
    Criterion(
        id="uncontrolled_active_infection",
        kind=_E,
        text="Evidence of uncontrolled current serious active infection",
        inputs=("uncontrolled_active_infection",),
    ),
    Criterion(id="hiv", kind=_E, text="HIV/HBV/HCV infection (HIV)", inputs=("hiv",)),
    Criterion(id="hbv", kind=_E, text="HIV/HBV/HCV infection (HBV)", inputs=("hbv",)),
    Criterion(id="hcv", kind=_E, text="HIV/HBV/HCV infection (HCV)", inputs=("hcv",)),
    Criterion(
        id="pregnancy",
        kind=_E,
        text="Pregnancy and nursing females (pregnancy)",
        inputs=("pregnant",),
    ),
    Criterion(
        id="nursing", kind=_E, text="Pregnancy and nursing females (nursing)", inputs=("nursing",)
    ),
    Criterion(
        id="systemic_glucocorticoid",
        kind=_E,
        text="Systemic glucocorticoid therapy within one week",
        inputs=("last_systemic_glucocorticoid",),
    ),
)

CRITERIA_BY_ID: Final[Mapping[str, Criterion]] = {c.id: c for c in CRITERIA}


# --------------------------------------------------------------------------------------------
# Input data
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LabValue(FieldsJson):
    """A laboratory value with its unit, e.g. bilirubin 1.1 mg/dL."""

    value: float
    unit: str

    def text(self) -> str:
        return f"{_num(self.value)} {self.unit}"


@attrs.frozen(kw_only=True)
class LabWithUln(FieldsJson):
    """A laboratory value with its unit and the site's upper limit of normal (ULN) with its unit."""

    value: float
    unit: str
    uln: float
    uln_unit: str

    def text(self) -> str:
        return f"{_num(self.value)} {self.unit} (ULN {_num(self.uln)} {self.uln_unit})"


@attrs.frozen(kw_only=True)
class ScreeningData:
    """Normalized screening values. ``None`` means "not recorded" (missing).

    ``last_systemic_glucocorticoid`` is a date, :data:`NEVER` ("never given") or ``None``
    (missing).
    """

    # inclusion
    diagnosis_rr_b_all: bool | None = None
    failed_standard_lines: int | None = None
    effective_standard_option: bool | None = None
    cd19_expressed: bool | None = None
    kps: int | None = None
    life_expectancy_months: float | None = None
    lvef_pct: float | None = None
    ecg_obvious_abnormality: bool | None = None
    spo2_room_air_pct: float | None = None
    creatinine: LabWithUln | None = None
    alt: LabWithUln | None = None
    ast: LabWithUln | None = None
    bilirubin: LabValue | None = None
    hemoglobin: LabValue | None = None
    apheresis_contraindication: bool | None = None
    informed_consent_signed: bool | None = None
    informed_consent_date: datetime.date | None = None
    # exclusion
    other_primary_malignancy: bool | None = None
    severe_uncontrolled_disease: bool | None = None
    uncontrolled_active_infection: bool | None = None
    hiv: bool | None = None
    hbv: bool | None = None
    hcv: bool | None = None
    pregnant: bool | None = None
    nursing: bool | None = None
    last_systemic_glucocorticoid: datetime.date | Literal["never"] | None = None

    def to_json(self) -> dict[str, Any]:
        """The normalized input: absent keys stay absent; ``parse_screening`` reads it back."""
        out: dict[str, Any] = {}
        for key, v in zip(SCREENING_KEYS, _screening_values(self), strict=True):
            if v is None:
                continue
            t = type(v)
            if t is bool or t is int or t is float:  # the common case: as it is
                out[key] = v
            elif key == "last_systemic_glucocorticoid":
                out[key] = None if v == NEVER else v.isoformat()
            elif isinstance(v, (LabValue, LabWithUln)):
                out[key] = v.to_json()
            elif isinstance(v, datetime.date):
                out[key] = v.isoformat()
            else:
                out[key] = v
        return out

    def missing_keys(self) -> tuple[str, ...]:
        """Keys not recorded (the optional ``informed_consent_date`` is never listed)."""
        return tuple(
            k for k in SCREENING_KEYS if k != "informed_consent_date" and getattr(self, k) is None
        )


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _show(v: Any) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def _expect_bool(field: str, v: Any, meaning: str) -> bool:
    if v is None:
        raise ProtocolInputError(
            field,
            f"null is not allowed; give true or false ({meaning}), or leave the key out "
            "if it is not known yet",
        )
    if not isinstance(v, bool):
        raise ProtocolInputError(field, f"expected true or false ({meaning}), got {_show(v)}")
    return v


def _expect_number(field: str, v: Any, what: str, lo: float | None, hi: float | None) -> float:
    if v is None:
        raise ProtocolInputError(
            field, f"null is not allowed; give {what}, or leave the key out if it is not known yet"
        )
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProtocolInputError(field, f"expected a number ({what}), got {_show(v)}")
    if finite_float(v) is None:
        problem = "is too large" if type(v) is int else "is not a finite number"
        raise ProtocolInputError(field, f"{show_number(v)} {problem}; give {what}")
    if lo is not None and v < lo:
        raise ProtocolInputError(field, f"{_shown(v)} is below {_num(lo)}; give {what}")
    if hi is not None and v > hi:
        raise ProtocolInputError(field, f"{_shown(v)} is above {_num(hi)}; give {what}")
    return v


def _shown(v: float) -> str:
    """A number in a message: as written, or its size when too long to print."""
    return show_number(v) if type(v) is int and abs(v) >= 10**21 else _num(v)


def _expect_int(field: str, v: Any, what: str, lo: int, hi: int | None) -> int:
    if v is None:
        raise ProtocolInputError(
            field, f"null is not allowed; give {what}, or leave the key out if it is not known yet"
        )
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolInputError(field, f"expected a whole number ({what}), got {_show(v)}")
    if v < lo or (hi is not None and v > hi):
        rng = f"{lo}-{hi}" if hi is not None else f"{lo} or more"
        raise ProtocolInputError(field, f"{_shown(v)} is outside {rng}; give {what}")
    return v


def _expect_date(field: str, v: Any, what: str) -> datetime.date:
    if isinstance(v, datetime.date) and not isinstance(v, datetime.datetime):
        return v
    if not isinstance(v, str):
        raise ProtocolInputError(field, f"expected a date as 'YYYY-MM-DD' ({what}), got {_show(v)}")
    if len(v) != 10 or v[4] != "-" or v[7] != "-":
        raise ProtocolInputError(field, f"{_show(v)} is not a date as 'YYYY-MM-DD' ({what})")
    try:
        return datetime.date.fromisoformat(v)
    except ValueError:
        raise ProtocolInputError(
            field, f"{_show(v)} is not a valid calendar date; use 'YYYY-MM-DD' ({what})"
        ) from None


def _units_text(units: tuple[str, ...]) -> str:
    quoted = [f"'{u}'" for u in units]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _expect_unit(field: str, v: Any, units: tuple[str, ...]) -> str:
    if not isinstance(v, str):
        raise ProtocolInputError(
            field, f"expected a unit as text, got {_show(v)}; use {_units_text(units)}"
        )
    if v not in units:
        raise ProtocolInputError(field, f"unit {_show(v)} is not allowed; use {_units_text(units)}")
    return v


def _expect_object(field: str, v: Any, allowed: tuple[str, ...], what: str) -> Mapping[str, Any]:
    if v is None:
        raise ProtocolInputError(
            field, f"null is not allowed; give {what}, or leave the key out if it is not known yet"
        )
    if not isinstance(v, Mapping):
        raise ProtocolInputError(
            field, f"expected an object with {', '.join(allowed)} ({what}), got {_show(v)}"
        )
    for k in v:
        if k not in allowed:
            raise ProtocolInputError(
                f"{field}.{key_name(k)}",
                f"unknown field {key_name(k)}; allowed fields are {', '.join(allowed)}",
            )
    return v


def _require(field: str, obj: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ProtocolInputError(f"{field}.{key}", f"is required: {what}")
    return obj[key]


_ULN_KEYS: Final = ("value", "unit", "uln", "uln_unit")
_LAB_KEYS: Final = ("value", "unit")
_INFINITIES: Final = (float("inf"), float("-inf"))


def _finite(v: Any) -> TypeGuard[float]:
    """A plain JSON number (not a bool, not NaN or infinite): the common case, checked fast."""
    t = type(v)
    if t is int:  # a whole number a float can hold (10**400 cannot: it is refused as too large)
        return -_EXACT_INT < v < _EXACT_INT or finite_float(v) is not None
    return t is float and v == v and v not in _INFINITIES


def _lab_with_uln(field: str, v: Any, name: str, units: tuple[str, ...], key: str) -> LabWithUln:
    """Checked field by field: raises one error naming every invalid part of the lab value."""
    what = f"{name} with its unit and the site's upper limit of normal"
    obj = _expect_object(field, v, _ULN_KEYS, what)
    unit_text = _units_text(units)
    p = Problems()
    value = p.run(
        lambda: _expect_number(
            f"{field}.value",
            _require(field, obj, "value", f"the {name} value"),
            f"the {name} value, 0 or more",
            0.0,
            None,
        )
    )
    unit = p.run(
        lambda: _expect_unit(
            f"{field}.unit", _require(field, obj, "unit", f"the unit, {unit_text}"), units
        )
    )
    uln = p.run(
        lambda: _positive_uln(
            f"{field}.uln",
            _require(field, obj, "uln", f"the site's upper limit of normal for {name}"),
            name,
        )
    )
    # The ULN is in the value's unit unless ``uln_unit`` says otherwise (a lab report prints the
    # value and its reference range in one unit). The normalized form always carries uln_unit.
    if "uln_unit" in obj or unit is not INVALID:
        uln_unit = p.run(
            lambda: _expect_unit(f"{field}.uln_unit", obj.get("uln_unit", unit), units)
        )
    else:
        uln_unit = INVALID
    lab_range = LAB_RANGES[key]
    if value is not INVALID and unit is not INVALID:
        p.run(lambda: lab_range.check(value, unit, f"{field}.value"))
    if uln is not INVALID and uln_unit is not INVALID:
        p.run(lambda: LAB_RANGES[f"{key}_uln"].check(uln, uln_unit, f"{field}.uln"))
    p.raise_if_any()
    assert value is not INVALID and unit is not INVALID
    assert uln is not INVALID and uln_unit is not INVALID
    return LabWithUln(value=value, unit=unit, uln=uln, uln_unit=uln_unit)


def _positive_uln(field: str, v: Any, name: str) -> float:
    uln = _expect_number(
        field, v, f"the site's upper limit of normal for {name}, above 0", None, None
    )
    if uln <= 0:
        raise ProtocolInputError(
            field, f"{_num(uln)} is not above 0; give the site's upper limit of normal"
        )
    return uln


def _lab_value(field: str, v: Any, name: str, units: tuple[str, ...], key: str) -> LabValue:
    """Checked field by field: raises one error naming every invalid part of the lab value."""
    obj = _expect_object(field, v, _LAB_KEYS, f"{name} with its unit")
    unit_text = _units_text(units)
    p = Problems()
    value = p.run(
        lambda: _expect_number(
            f"{field}.value",
            _require(field, obj, "value", f"the {name} value"),
            f"the {name} value, 0 or more",
            0.0,
            None,
        )
    )
    unit = p.run(
        lambda: _expect_unit(
            f"{field}.unit", _require(field, obj, "unit", f"the unit, {unit_text}"), units
        )
    )
    if value is not INVALID and unit is not INVALID:
        p.run(lambda: LAB_RANGES[key].check(value, unit, f"{field}.value"))
    p.raise_if_any()
    assert value is not INVALID and unit is not INVALID
    return LabValue(value=value, unit=unit)


_CREATININE_UNITS: Final = ("mg/dL", "umol/L")
_TRANSAMINASE_UNITS: Final = ("U/L",)
_BILIRUBIN_UNITS: Final = ("mg/dL", "umol/L")
_HEMOGLOBIN_UNITS: Final = ("g/L", "g/dL")


def _glucocorticoid(field: str, v: Any) -> datetime.date | Literal["never"]:
    if v is None or v == "none":
        return NEVER
    return _expect_date(
        field, v, "date of the last systemic glucocorticoid dose, or null if never given"
    )


def _bool_parser(meaning: str) -> Callable[[str, Any], Any]:
    return lambda field, v: _expect_bool(field, v, meaning)


#: Each key's own check (field by field), in catalogue order: it returns the normalized value
#: or raises ``ProtocolInputError`` naming every invalid part of that key's value.
_PARSERS: Final[Mapping[str, Callable[[str, Any], Any]]] = {
    "diagnosis_rr_b_all": _bool_parser("recurrent or refractory B-ALL"),
    "failed_standard_lines": lambda f, v: _expect_int(
        f,
        v,
        f"the number of failed standard treatment lines, 0-{MAX_FAILED_LINES}",
        0,
        MAX_FAILED_LINES,
    ),
    "effective_standard_option": _bool_parser("an effective standard treatment is available now"),
    "cd19_expressed": _bool_parser("CD19 detected on the surface of the B-ALL cells"),
    "kps": lambda f, v: _expect_int(f, v, "the Karnofsky performance status, 0-100", 0, 100),
    "life_expectancy_months": lambda f, v: _expect_number(
        f,
        v,
        f"the life expectancy in months, 0-{MAX_LIFE_EXPECTANCY_MONTHS}",
        0.0,
        MAX_LIFE_EXPECTANCY_MONTHS,
    ),
    "lvef_pct": lambda f, v: _expect_number(
        f, v, "the left ventricular ejection fraction in %, 0-100", 0.0, 100.0
    ),
    "ecg_obvious_abnormality": _bool_parser("the electrocardiogram shows an obvious abnormality"),
    "spo2_room_air_pct": lambda f, v: _expect_number(
        f, v, "the oxygen saturation on room air in %, 0-100", 0.0, 100.0
    ),
    "creatinine": lambda f, v: _lab_with_uln(f, v, "creatinine", _CREATININE_UNITS, "creatinine"),
    "alt": lambda f, v: _lab_with_uln(f, v, "ALT", _TRANSAMINASE_UNITS, "alt"),
    "ast": lambda f, v: _lab_with_uln(f, v, "AST", _TRANSAMINASE_UNITS, "ast"),
    "bilirubin": lambda f, v: _lab_value(f, v, "total bilirubin", _BILIRUBIN_UNITS, "bilirubin"),
    "hemoglobin": lambda f, v: _lab_value(f, v, "hemoglobin", _HEMOGLOBIN_UNITS, "hemoglobin"),
    "apheresis_contraindication": _bool_parser(
        "a contraindication to apheresis and cell isolation"
    ),
    "informed_consent_signed": _bool_parser(
        "written informed consent signed by the patient and family"
    ),
    "informed_consent_date": lambda f, v: _expect_date(f, v, "date the consent was signed"),
    "other_primary_malignancy": _bool_parser("another primary malignant disease"),
    "severe_uncontrolled_disease": _bool_parser(
        "another severe and/or life-threatening or uncontrolled medical disease"
    ),
    "uncontrolled_active_infection": _bool_parser("uncontrolled current serious active infection"),
    "hiv": _bool_parser("HIV infection"),
    "hbv": _bool_parser("HBV infection"),
    "hcv": _bool_parser("HCV infection"),
    "pregnant": _bool_parser("pregnant; false for male patients"),
    "nursing": _bool_parser("nursing (breastfeeding); false for male patients"),
    "last_systemic_glucocorticoid": _glucocorticoid,
}

#: Every key ``parse_screening`` accepts, in catalogue order.
SCREENING_KEYS: Final[tuple[str, ...]] = tuple(_PARSERS)
_KEYS_TEXT: Final = ", ".join(SCREENING_KEYS)
#: A screening's values in catalogue order, read at once.
_screening_values: Final = operator.attrgetter(*SCREENING_KEYS)
_payload_values: Final = operator.attrgetter(*SCREENING_KEYS)
_ULN_LABS: Final = ("creatinine", "alt", "ast")
_PLAIN_LABS: Final = ("bilirubin", "hemoglobin")
_NEVER_GIVEN: Final = "last_systemic_glucocorticoid"
_LABS: Final = tuple((key,) for key in _ULN_LABS + _PLAIN_LABS)


def parse_screening(data: Mapping[str, Any]) -> ScreeningData:
    """Validate and normalize screening values (JSON object). Absent keys are missing values.

    Raises ``ProtocolInputError`` naming the field (dotted path, e.g. ``creatinine.unit``); when
    several fields are invalid, the error names every one (``ProtocolInputError.problems``, the
    first in the payload's order is the headline).

    One ``msgspec.convert`` into :class:`~cart_course.protocol.payloads.ScreeningPayload`
    decodes a valid screening; only a payload it refuses, or whose values are not plausible, is
    checked again field by field for the wording.
    """
    payload = convert(data, ScreeningPayload, _LABS)
    if payload is not None:
        screening = _screening_of(payload)
        if screening is not None:
            return screening
    return _parse_checked(data)


def _screening_of(payload: ScreeningPayload) -> ScreeningData | None:
    """The screening of a decoded payload, or None when a value is not plausible (or the consent
    date contradicts the consent): the field-by-field checks then say why."""
    unset = UNSET
    values = {
        key: v
        for key, v in zip(SCREENING_KEYS, _payload_values(payload), strict=True)
        if v is not unset
    }
    for key in _ULN_LABS:
        v = values.get(key)
        if v is not None:
            uln_unit = v.unit if v.uln_unit is unset else v.uln_unit
            if not (
                _finite(v.value)
                and _finite(v.uln)
                and LAB_RANGES[key].contains(v.value, v.unit)
                and LAB_RANGES[f"{key}_uln"].contains(v.uln, uln_unit)
            ):
                return None
            values[key] = LabWithUln(value=v.value, unit=v.unit, uln=v.uln, uln_unit=uln_unit)
    for key in _PLAIN_LABS:
        v = values.get(key)
        if v is not None:
            if not (_finite(v.value) and LAB_RANGES[key].contains(v.value, v.unit)):
                return None
            values[key] = LabValue(value=v.value, unit=v.unit)
    if _NEVER_GIVEN in values and values[_NEVER_GIVEN] is None:
        values[_NEVER_GIVEN] = NEVER
    if (
        values.get("informed_consent_date") is not None
        and values.get("informed_consent_signed") is not True
    ):
        return None
    return ScreeningData(**values)


def _parse_checked(data: Any) -> ScreeningData:
    """Field by field, naming every invalid field (in the payload's order) in one error."""
    if not isinstance(data, Mapping):
        raise ProtocolInputError(
            "screening", f"expected a JSON object of screening values, got {_show(data)}"
        )
    values: dict[str, Any] = {}
    p = Problems()
    for key, raw in data.items():
        parser = _PARSERS.get(key) if isinstance(key, str) else None
        if parser is None:
            p.add(
                ProtocolInputError(
                    str(key), f"unknown field {_show(key)}; allowed fields are {_KEYS_TEXT}"
                )
            )
            continue
        value = p.run(lambda: parser(key, raw))  # noqa: B023 (called at once)
        if value is not INVALID:
            values[key] = value
    # A consent date needs informed_consent_signed true (absent is not true; an invalid one is
    # already named).
    signed = values.get(
        "informed_consent_signed", "invalid" if "informed_consent_signed" in data else None
    )
    if (
        values.get("informed_consent_date") is not None
        and signed is not True
        and signed != "invalid"
    ):
        p.add(
            ProtocolInputError(
                "informed_consent_date",
                "a consent date is given but informed_consent_signed is not true; give "
                "informed_consent_signed: true with the date, or remove the date",
            )
        )
    p.raise_if_any()
    return ScreeningData(**values)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CriterionResult:
    """The outcome of one criterion for one patient."""

    criterion: Criterion
    status: CriterionStatus
    #: The recorded inputs as given (JSON), keyed by input key; absent inputs are left out.
    value: Mapping[str, Any] = attrs.field(hash=False)
    #: The recorded value in words with its unit, e.g. "Creatinine 0.9 mg/dL (ULN 1.2 mg/dL)".
    value_text: str
    #: The threshold in words, with the protocol parameters applied, e.g. "KPS > 80".
    threshold: str
    #: One sentence a clinician can read.
    explanation: str

    @property
    def id(self) -> str:
        return self.criterion.id

    @property
    def kind(self) -> CriterionKind:
        return self.criterion.kind

    @property
    def text(self) -> str:
        """The criterion as written in the trial text."""
        return self.criterion.text

    @property
    def passed(self) -> bool:
        """True when an inclusion is met or an exclusion does not apply."""
        return self.status is CriterionStatus.MET or self.status is CriterionStatus.DOES_NOT_APPLY

    def to_json(self) -> dict[str, Any]:
        c = self.criterion
        return {
            "id": c.id,
            "kind": c.kind.value,
            "text": c.text,
            "status": self.status.value,
            "passed": self.passed,
            "value": dict(self.value),
            "value_text": self.value_text,
            "threshold": self.threshold,
            "explanation": self.explanation,
        }


@attrs.frozen(kw_only=True)
class EligibilityResult:
    """All criteria for one patient at one screening date."""

    screening_date: datetime.date
    criteria: tuple[CriterionResult, ...]

    @property
    def eligible(self) -> bool:
        """Every inclusion met and no exclusion applies; any missing value makes this false."""
        for c in self.criteria:
            status = c.status
            if status is not _MET and status is not _NOT_APPLY:
                return False
        return True

    @property
    def failed(self) -> tuple[CriterionResult, ...]:
        """Inclusions not met or missing, exclusions that apply or are missing."""
        return tuple(c for c in self.criteria if not c.passed)

    @property
    def missing(self) -> tuple[CriterionResult, ...]:
        """Criteria that cannot be decided because a value is not recorded."""
        return tuple(c for c in self.criteria if c.status is CriterionStatus.MISSING)

    def reasons(self) -> list[str]:
        """One sentence per failed criterion (empty when eligible)."""
        return [c.explanation for c in self.criteria if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "eligible": self.eligible,
            "screening_date": self.screening_date.isoformat(),
            "failed": [c.id for c in self.failed],
            "missing": [c.id for c in self.missing],
            "reasons": self.reasons(),
            "criteria": [c.to_json() for c in self.criteria],
        }


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _num(x: float | Decimal) -> str:
    """A number as given: floats as written (shortest form), decimals without exponent."""
    t = type(x)
    if t is float:
        return repr(x)
    if t is int:
        return str(x)
    s = format(x, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


@functools.lru_cache(maxsize=256)
def _lim(x: float) -> str:
    """A protocol limit as the trial writes it: 50.0 -> "50", 2.5 -> "2.5"."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return _num(x)


def _dec(x: float) -> Decimal:
    """The number as written (shortest repr of a float), as an exact decimal."""
    return Decimal(repr(x)) if type(x) is float else Decimal(x)


#: How far (relatively) a value's float must be from a limit for the float comparison to decide
#: as the exact decimal one does: far above the rounding of a float (about 1e-16, a few times
#: over with a unit conversion). Nearer the limit, the exact comparison decides.
_MARGIN: Final = 1e-9
#: Whole numbers a float holds exactly.
_EXACT_INT: Final = 2**53


def _float_bounds(limit: Decimal) -> tuple[float, float]:
    """(below, above): a value whose float is below ``below`` is under the exact ``limit``, one
    above ``above`` is over it; (-inf, inf) (never decided by floats) when the limit is too
    small or too large for floats to tell."""
    f = float(limit)
    if not 1e-200 <= abs(f) <= 1e200:
        return -math.inf, math.inf
    margin = abs(f) * _MARGIN
    return f - margin, f + margin


def _as_float(v: Any) -> float | None:
    """A lab value as a float when the float is the value (a float, or a whole number a float
    holds exactly); else None."""
    t = type(v)
    if t is float or (t is int and -_EXACT_INT < v < _EXACT_INT):
        return float(v)
    return None


@attrs.frozen(kw_only=True)
class _Limits:
    """Thresholds of one ``ProtocolParameters`` value, prepared once (exact decimals, words)."""

    creatinine_k: Decimal
    alt_k: Decimal
    ast_k: Decimal
    hemoglobin_min: Decimal
    #: ``_float_bounds(hemoglobin_min)``
    hemoglobin_below: float
    hemoglobin_above: float
    creatinine_k_text: str
    alt_k_text: str
    ast_k_text: str
    hemoglobin_min_text: str
    kps: str
    life_expectancy: str
    lvef: str
    spo2: str
    creatinine: str
    alt: str
    ast: str
    bilirubin: str
    hemoglobin: str

    @classmethod
    def of(cls, p: ProtocolParameters) -> _Limits:
        hgb = _dec(p.hemoglobin_min_g_l)
        below, above = _float_bounds(hgb)
        return cls(
            hemoglobin_below=below,
            hemoglobin_above=above,
            creatinine_k=_dec(p.creatinine_max_x_uln),
            alt_k=_dec(p.alt_max_x_uln),
            ast_k=_dec(p.ast_max_x_uln),
            hemoglobin_min=hgb,
            creatinine_k_text=_lim(p.creatinine_max_x_uln),
            alt_k_text=_lim(p.alt_max_x_uln),
            ast_k_text=_lim(p.ast_max_x_uln),
            hemoglobin_min_text=_lim(p.hemoglobin_min_g_l),
            kps=f"KPS > {p.kps_above}",
            life_expectancy=f"life expectancy > {_lim(p.life_expectancy_months_above)} months",
            lvef=f"LVEF ≥ {_lim(p.lvef_min_pct)} %",
            spo2=f"room-air SpO2 > {_lim(p.spo2_above_pct)} %",
            creatinine=f"creatinine ≤ {_lim(p.creatinine_max_x_uln)} × ULN",
            alt=f"ALT ≤ {_lim(p.alt_max_x_uln)} × ULN",
            ast=f"AST ≤ {_lim(p.ast_max_x_uln)} × ULN",
            bilirubin=(
                f"total bilirubin ≤ {_num(p.bilirubin_max_mg_dl)} mg/dL "
                f"({_num(p.bilirubin_max_umol_l)} umol/L)"
            ),
            hemoglobin=(
                f"hemoglobin ≥ {_lim(p.hemoglobin_min_g_l)} g/L "
                f"({_num(_CTX.divide(hgb, HEMOGLOBIN_G_L_PER_G_DL))} g/dL)"
            ),
        )


_limits = per_parameters(_Limits.of)


_MET = CriterionStatus.MET
_NOT_MET = CriterionStatus.NOT_MET
_APPLIES = CriterionStatus.APPLIES
_NOT_APPLY = CriterionStatus.DOES_NOT_APPLY
_MISSING = CriterionStatus.MISSING
_C = CRITERIA_BY_ID
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _missing(cid: str, key: str, label: str, threshold: str, how: str) -> CriterionResult:
    return CriterionResult(
        criterion=_C[cid],
        status=_MISSING,
        value=_EMPTY,
        value_text="not recorded",
        threshold=threshold,
        explanation=f"{label} is not recorded ({key}: {how}); it is needed for the inclusion "
        f"criterion: {threshold}.",
    )


# A yes/no criterion's result depends only on (criterion, answer): built once, then shared.
# Results are immutable (their ``value`` is a read-only mapping).
_BOOL_MEMO: dict[tuple[str, bool | None], CriterionResult] = {}


def _bool_inclusion(
    cid: str,
    key: str,
    v: bool | None,
    status: CriterionStatus,
    label: str,
    yes: str,
    no: str,
) -> CriterionResult:
    """Inclusion read from one yes/no answer, as decided (:func:`_yes_no`)."""
    hit = _BOOL_MEMO.get((cid, v))
    if hit is not None:
        return hit
    if status is _MISSING:
        res = _missing(cid, key, label, yes, "true or false")
    else:
        res = CriterionResult(
            criterion=_C[cid],
            status=status,
            value=MappingProxyType({key: v}),
            value_text=f"{key}: {'true' if v else 'false'}",
            threshold=yes,
            explanation=f"{yes[0].upper()}{yes[1:]}: met."
            if status is _MET
            else f"{no} (inclusion: {yes}).",
        )
    _BOOL_MEMO[(cid, v)] = res
    return res


def _bool_exclusion(
    cid: str, key: str, v: bool | None, status: CriterionStatus, label: str
) -> CriterionResult:
    """Exclusion read from one yes/no answer, as decided (:func:`_exclusion`)."""
    hit = _BOOL_MEMO.get((cid, v))
    if hit is not None:
        return hit
    threshold = f"excluded if {label}"
    if status is _MISSING:
        res = CriterionResult(
            criterion=_C[cid],
            status=_MISSING,
            value=_EMPTY,
            value_text="not recorded",
            threshold=threshold,
            explanation=f"Whether there is {label} is not recorded ({key}: true or false); it is "
            "needed for the exclusion criteria.",
        )
    elif status is _APPLIES:
        res = CriterionResult(
            criterion=_C[cid],
            status=_APPLIES,
            value=MappingProxyType({key: True}),
            value_text=f"{key}: true",
            threshold=threshold,
            explanation=f"Excluded: {label} is recorded (exclusion criterion).",
        )
    else:
        res = CriterionResult(
            criterion=_C[cid],
            status=_NOT_APPLY,
            value=MappingProxyType({key: False}),
            value_text=f"{key}: false",
            threshold=threshold,
            explanation=f"No {label}.",
        )
    _BOOL_MEMO[(cid, v)] = res
    return res


_FAILED_THRESHOLD: Final = (
    "at least 1 failed line of standard treatment and no effective standard treatment now"
)


def _failed_standard(d: ScreeningData, status: CriterionStatus) -> CriterionResult:
    lines = d.failed_standard_lines
    option = d.effective_standard_option
    threshold = _FAILED_THRESHOLD
    value: dict[str, Any] = {}
    parts: list[str] = []
    problems: list[str] = []
    missing: list[str] = []
    if lines is None:
        missing.append("the number of failed standard lines (failed_standard_lines)")
    else:
        value["failed_standard_lines"] = lines
        parts.append(f"{lines} failed standard line{'' if lines == 1 else 's'}")
        if lines < 1:
            problems.append("no line of standard treatment has failed")
    if option is None:
        missing.append(
            "whether an effective standard treatment remains (effective_standard_option)"
        )
    else:
        value["effective_standard_option"] = option
        parts.append(
            "an effective standard treatment remains"
            if option
            else "no effective standard treatment remains"
        )
        if option:
            problems.append("an effective standard treatment is still available")
    value_text = ", ".join(parts) if parts else "not recorded"
    if status is _NOT_MET:
        extra = f"; also not recorded: {' and '.join(missing)}" if missing else ""
        sentence = "; ".join(problems)
        explanation = f"{sentence[0].upper()}{sentence[1:]} (inclusion: {threshold}){extra}."
    elif status is _MISSING:
        explanation = (
            f"Not recorded: {' and '.join(missing)}; needed for the inclusion criterion: "
            f"{threshold}."
        )
    else:
        explanation = f"{value_text[0].upper()}{value_text[1:]}: met."
    return CriterionResult(
        criterion=_C["failed_standard_treatment"],
        status=status,
        value=value,
        value_text=value_text,
        threshold=threshold,
        explanation=explanation,
    )


def _above(
    cid: str,
    key: str,
    v: float | None,
    status: CriterionStatus,
    limit: float,
    threshold: str,
    label: str,
    unit: str,
    how: str,
) -> CriterionResult:
    """Inclusion ``value > limit`` (:func:`_more_than`), in words."""
    if v is None or status is _MISSING:
        return _missing(cid, key, label, threshold, how)
    shown = f"{label} {_num(v)}{unit}"
    if status is _MET:
        return CriterionResult(
            criterion=_C[cid],
            status=_MET,
            value={key: v},
            value_text=shown,
            threshold=threshold,
            explanation=f"{shown} is above {_lim(limit)}{unit}.",
        )
    return CriterionResult(
        criterion=_C[cid],
        status=_NOT_MET,
        value={key: v},
        value_text=shown,
        threshold=threshold,
        explanation=f"{shown} is not above {_lim(limit)}{unit} (inclusion: {threshold}).",
    )


def _lvef(
    v: float | None, status: CriterionStatus, limit: float, threshold: str
) -> CriterionResult:
    if v is None or status is _MISSING:
        return _missing("lvef", "lvef_pct", "LVEF", threshold, "ejection fraction in %")
    shown = f"LVEF {_num(v)} %"
    if status is _MET:
        return CriterionResult(
            criterion=_C["lvef"],
            status=_MET,
            value={"lvef_pct": v},
            value_text=shown,
            threshold=threshold,
            explanation=f"{shown} is at least {_lim(limit)} %.",
        )
    return CriterionResult(
        criterion=_C["lvef"],
        status=_NOT_MET,
        value={"lvef_pct": v},
        value_text=shown,
        threshold=threshold,
        explanation=f"{shown} is below {_lim(limit)} % (inclusion: {threshold}).",
    )


_MUL = _CTX.multiply
_CREATININE_F: Final = float(CREATININE_UMOL_L_PER_MG_DL)
_MILLI = Decimal("0.001")


@functools.lru_cache(maxsize=1024)
def _uln_limit(
    k: Decimal, k_text: str, uln_value: float, uln_is_float: bool, unit: str, uln_unit: str
) -> tuple[Decimal, bool, str, tuple[float, float]]:
    """:func:`_uln_limit_of`, with the limit's :func:`_float_bounds`."""
    limit, convert, text = _uln_limit_of(k, k_text, uln_value, unit, uln_unit)
    return limit, convert, text, _float_bounds(limit)


def _uln_limit_of(
    k: Decimal, k_text: str, uln_value: float, unit: str, uln_unit: str
) -> tuple[Decimal, bool, str]:
    """``k x ULN`` for one site's reference range: the limit, whether the value is to be
    converted to the ULN's unit (x 88.42) before comparing, and the limit in words. A site's ULN
    is a constant of its laboratory: computed once per (k, ULN, units) by :func:`_uln_limit`,
    whose ``uln_is_float`` keeps 40 and 40.0 apart (equal keys, written differently)."""
    uln = _dec(uln_value)
    if unit == uln_unit:
        limit = _MUL(k, uln)
        return limit, False, f"{k_text} × {_num(uln_value)} {unit} = {_num(limit)} {unit}"
    if unit == "umol/L":  # ULN in mg/dL: bring the ULN to umol/L (exact multiplication)
        uln_conv = _MUL(uln, CREATININE_UMOL_L_PER_MG_DL)
        limit = _MUL(k, uln_conv)
        return (
            limit,
            False,
            f"{k_text} × {_num(uln_value)} {uln_unit} ({_num(uln_conv)} {unit}) "
            f"= {_num(limit)} {unit}",
        )
    # value in mg/dL, ULN in umol/L: compare value x 88.42 with k x ULN (no division)
    limit = _MUL(k, uln)
    approx = _CTX.divide(limit, CREATININE_UMOL_L_PER_MG_DL).quantize(_MILLI)
    return (
        limit,
        True,
        f"{k_text} × {_num(uln_value)} {uln_unit} = {_num(limit)} {uln_unit} "
        f"(about {_num(approx)} {unit})",
    )


def _x_uln(
    cid: str,
    label: str,
    lab: LabWithUln | None,
    status: CriterionStatus,
    k: Decimal,
    k_text: str,
    threshold: str,
) -> CriterionResult:
    """Inclusion ``value <= k x ULN`` (:func:`_x_uln_status`), in words."""
    if lab is None or status is _MISSING:
        return _missing(cid, cid, label, threshold, "{value, unit, uln} with the site's ULN")
    _limit, _convert, limit_text, _bounds = _uln_limit(
        k, k_text, lab.uln, type(lab.uln) is float, lab.unit, lab.uln_unit
    )
    ok = status is _MET
    shown = f"{label} {lab.text()}"
    return CriterionResult(
        criterion=_C[cid],
        status=status,
        value={cid: lab.to_json()},
        value_text=shown,
        threshold=threshold,
        explanation=f"{shown} is at most {limit_text}."
        if ok
        else f"{shown} is above {limit_text} (inclusion: {threshold}).",
    )


def _bilirubin_limit(lab: LabValue, p: ProtocolParameters) -> float:
    """Compared in the unit given, against the threshold as the trial writes it in that unit."""
    return p.bilirubin_max_mg_dl if lab.unit == "mg/dL" else p.bilirubin_max_umol_l


def _bilirubin(
    lab: LabValue | None, status: CriterionStatus, p: ProtocolParameters, threshold: str
) -> CriterionResult:
    if lab is None or status is _MISSING:
        return _missing("bilirubin", "bilirubin", "Total bilirubin", threshold, "{value, unit}")
    limit = _bilirubin_limit(lab, p)
    ok = status is _MET
    shown = f"Total bilirubin {lab.text()}"
    return CriterionResult(
        criterion=_C["bilirubin"],
        status=status,
        value={"bilirubin": lab.to_json()},
        value_text=shown,
        threshold=threshold,
        explanation=f"{shown} is at most {_num(limit)} {lab.unit}."
        if ok
        else f"{shown} is above {_num(limit)} {lab.unit} (inclusion: {threshold}).",
    )


def _g_per_l(lab: LabValue) -> Decimal:
    """Hemoglobin in g/L, exactly (g/dL x 10)."""
    if lab.unit == "g/L":
        return _dec(lab.value)
    return _MUL(_dec(lab.value), HEMOGLOBIN_G_L_PER_G_DL)


def _hemoglobin(lab: LabValue | None, status: CriterionStatus, lim: _Limits) -> CriterionResult:
    threshold = lim.hemoglobin
    if lab is None or status is _MISSING:
        return _missing("hemoglobin", "hemoglobin", "Hemoglobin", threshold, "{value, unit}")
    ok = status is _MET
    if lab.unit == "g/L":
        shown = f"Hemoglobin {lab.text()}"
    else:  # g/dL: x 10 exactly
        shown = f"Hemoglobin {lab.text()} ({_num(_g_per_l(lab))} g/L)"
    minimum = lim.hemoglobin_min_text
    return CriterionResult(
        criterion=_C["hemoglobin"],
        status=status,
        value={"hemoglobin": lab.to_json()},
        value_text=shown,
        threshold=threshold,
        explanation=f"{shown} is at least {minimum} g/L."
        if ok
        else f"{shown} is below {minimum} g/L (inclusion: {threshold}).",
    )


_CONSENT_THRESHOLD: Final = "written informed consent signed by the patient and family"


def _consent(
    d: ScreeningData, screening_date: datetime.date, status: CriterionStatus
) -> CriterionResult:
    threshold = _CONSENT_THRESHOLD
    signed = d.informed_consent_signed
    if status is _MISSING:
        return _missing(
            "informed_consent",
            "informed_consent_signed",
            "Informed consent",
            threshold,
            "true or false",
        )
    when = d.informed_consent_date
    value: dict[str, Any] = {"informed_consent_signed": signed}
    shown = "informed consent signed" if signed else "informed consent not signed"
    if when is not None:
        value["informed_consent_date"] = when.isoformat()
        shown = f"{shown} on {when.isoformat()}"
    if status is _MET:
        explanation = "Written informed consent is signed by the patient and family."
    elif not signed:
        explanation = f"Written informed consent is not signed (inclusion: {threshold})."
    else:  # dated after the screening
        assert when is not None
        explanation = (
            f"Informed consent is dated {when.isoformat()}, after the screening date "
            f"{screening_date.isoformat()}; consent must come first (inclusion: {threshold})."
        )
    return CriterionResult(
        criterion=_C["informed_consent"],
        status=status,
        value=value,
        value_text=shown,
        threshold=threshold,
        explanation=explanation,
    )


def _glucocorticoid_result(
    last: datetime.date | Literal["never"] | None,
    screening_date: datetime.date,
    washout: int,
    status: CriterionStatus,
) -> CriterionResult:
    cutoff = screening_date - datetime.timedelta(days=washout)
    threshold = (
        f"excluded if the last systemic glucocorticoid dose is on or after {cutoff.isoformat()} "
        f"(within {washout} days before screening on {screening_date.isoformat()})"
    )
    key = "last_systemic_glucocorticoid"
    crit = _C["systemic_glucocorticoid"]
    if last is None or status is _MISSING:
        return CriterionResult(
            criterion=crit,
            status=_MISSING,
            value=_EMPTY,
            value_text="not recorded",
            threshold=threshold,
            explanation=f"The date of the last systemic glucocorticoid dose is not recorded ({key}:"
            " a date 'YYYY-MM-DD', or null if never given); it is needed for the exclusion "
            "criteria.",
        )
    if last == NEVER:
        return CriterionResult(
            criterion=crit,
            status=_NOT_APPLY,
            value={key: None},
            value_text="systemic glucocorticoid never given",
            threshold=threshold,
            explanation="No systemic glucocorticoid has been given.",
        )
    assert isinstance(last, datetime.date)
    days = (screening_date - last).days
    iso = last.isoformat()
    shown = f"last systemic glucocorticoid dose {iso} ({days} days before screening)"
    if status is _APPLIES:
        return CriterionResult(
            criterion=crit,
            status=_APPLIES,
            value={key: iso},
            value_text=shown,
            threshold=threshold,
            explanation=f"The last systemic glucocorticoid dose ({iso}) was {days} days before "
            f"screening, within the {washout}-day washout (exclusion: systemic glucocorticoid "
            "therapy within one week).",
        )
    return CriterionResult(
        criterion=crit,
        status=_NOT_APPLY,
        value={key: iso},
        value_text=shown,
        threshold=threshold,
        explanation=f"The last systemic glucocorticoid dose ({iso}) was {days} days before "
        f"screening, outside the {washout}-day washout.",
    )


# --------------------------------------------------------------------------------------------
# The criteria, decided once: each criterion's status from the screening (``_CRITERIA_TABLE``).
# ``eligibility_failures`` reads the statuses only; ``evaluate_eligibility`` puts each status
# in words. A protocol amendment changes a criterion in one place.
# --------------------------------------------------------------------------------------------

_Decide = Callable[[ScreeningData, datetime.date, ProtocolParameters, _Limits], CriterionStatus]
_Describe = Callable[
    [ScreeningData, datetime.date, ProtocolParameters, _Limits, CriterionStatus], CriterionResult
]


def _compared_status(
    field: str, limit: str, *, strict: bool
) -> Callable[[ScreeningData, datetime.date, ProtocolParameters, _Limits], CriterionStatus]:
    """Inclusion ``value > limit`` (``strict``) or ``value >= limit``: compared as written, no
    arithmetic; ``field`` of the screening, ``limit`` of the protocol parameters."""
    value_of = operator.attrgetter(field)
    limit_of = operator.attrgetter(limit)

    def status(
        d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
    ) -> CriterionStatus:
        v = value_of(d)
        if v is None:
            return _MISSING
        ok = v > limit_of(p) if strict else v >= limit_of(p)
        return _MET if ok else _NOT_MET

    return status


_kps_status = _compared_status("kps", "kps_above", strict=True)
_life_expectancy_status = _compared_status(
    "life_expectancy_months", "life_expectancy_months_above", strict=True
)
_spo2_status = _compared_status("spo2_room_air_pct", "spo2_above_pct", strict=True)
_lvef_status = _compared_status("lvef_pct", "lvef_min_pct", strict=False)


def _failed_standard_status(
    d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
) -> CriterionStatus:
    lines = d.failed_standard_lines
    option = d.effective_standard_option
    if (lines is not None and lines < 1) or option:
        return _NOT_MET  # no line has failed, or an effective standard treatment remains
    if lines is None or option is None:
        return _MISSING
    return _MET


def _x_uln_status(lab: LabWithUln | None, k: Decimal, k_text: str) -> CriterionStatus:
    """Inclusion ``value <= k x ULN``, exactly, converting creatinine units where they differ."""
    if lab is None:
        return _MISSING
    limit, convert, _text, (below, above) = _uln_limit(
        k, k_text, lab.uln, type(lab.uln) is float, lab.unit, lab.uln_unit
    )
    f = _as_float(lab.value)
    if f is not None:  # clearly off the limit: the floats decide as the decimals do
        if convert:
            f *= _CREATININE_F
        if f < below:
            return _MET
        if f > above:
            return _NOT_MET
    value = _dec(lab.value)
    ok = (_MUL(value, CREATININE_UMOL_L_PER_MG_DL) if convert else value) <= limit
    return _MET if ok else _NOT_MET


def _x_uln_criterion(
    lab: str, k: str
) -> Callable[[ScreeningData, datetime.date, ProtocolParameters, _Limits], CriterionStatus]:
    """The status of ``lab <= k x ULN`` (``lab`` of the screening, ``k`` of the limits)."""
    lab_of = operator.attrgetter(lab)
    k_of = operator.attrgetter(k)
    k_text_of = operator.attrgetter(f"{k}_text")

    def status(
        d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
    ) -> CriterionStatus:
        return _x_uln_status(lab_of(d), k_of(lim), k_text_of(lim))

    return status


_creatinine_status = _x_uln_criterion("creatinine", "creatinine_k")
_alt_status = _x_uln_criterion("alt", "alt_k")
_ast_status = _x_uln_criterion("ast", "ast_k")


def _bilirubin_status(
    d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
) -> CriterionStatus:
    lab = d.bilirubin
    if lab is None:
        return _MISSING
    return _MET if lab.value <= _bilirubin_limit(lab, p) else _NOT_MET


def _hemoglobin_status(
    d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
) -> CriterionStatus:
    lab = d.hemoglobin
    if lab is None:
        return _MISSING
    f = _as_float(lab.value)
    if f is not None:  # clearly off the limit: the floats decide as the decimals do
        if lab.unit != "g/L":
            f *= 10.0
        if f > lim.hemoglobin_above:
            return _MET
        if f < lim.hemoglobin_below:
            return _NOT_MET
    return _MET if _g_per_l(lab) >= lim.hemoglobin_min else _NOT_MET


def _consent_status(
    d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
) -> CriterionStatus:
    signed = d.informed_consent_signed
    if signed is None:
        return _MISSING
    when = d.informed_consent_date
    if not signed or (when is not None and when > day):
        return _NOT_MET  # not signed, or signed after the screening
    return _MET


def _glucocorticoid_status(
    d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
) -> CriterionStatus:
    """Excluded when the last dose is within the washout before screening; a dose after the
    screening date is an input error."""
    last = d.last_systemic_glucocorticoid
    screening_date = day
    washout = p.glucocorticoid_washout_days
    if last is None:
        return _MISSING
    if last == NEVER:
        return _NOT_APPLY
    assert isinstance(last, datetime.date)
    if last > screening_date:
        raise ProtocolInputError(
            "last_systemic_glucocorticoid",
            f"the last systemic glucocorticoid dose {last.isoformat()} is after the screening "
            f"date {screening_date.isoformat()}; give the last dose on or before the screening "
            "date",
        )
    cutoff = screening_date - datetime.timedelta(days=washout)
    return _APPLIES if last >= cutoff else _NOT_APPLY


def _yes_no_criterion(
    cid: str, key: str, want: bool, label: str, yes: str, no: str
) -> tuple[str, _Decide, _Describe]:
    def decide(
        d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
    ) -> CriterionStatus:
        v = getattr(d, key)
        if v is None:
            return _MISSING
        return _MET if v is want else _NOT_MET

    def describe(
        d: ScreeningData,
        day: datetime.date,
        p: ProtocolParameters,
        lim: _Limits,
        status: CriterionStatus,
    ) -> CriterionResult:
        return _bool_inclusion(cid, key, getattr(d, key), status, label, yes, no)

    return cid, decide, describe


def _exclusion_criterion(cid: str, key: str, label: str) -> tuple[str, _Decide, _Describe]:
    def decide(
        d: ScreeningData, day: datetime.date, p: ProtocolParameters, lim: _Limits
    ) -> CriterionStatus:
        v = getattr(d, key)
        if v is None:
            return _MISSING
        return _APPLIES if v else _NOT_APPLY

    def describe(
        d: ScreeningData,
        day: datetime.date,
        p: ProtocolParameters,
        lim: _Limits,
        status: CriterionStatus,
    ) -> CriterionResult:
        return _bool_exclusion(cid, key, getattr(d, key), status, label)

    return cid, decide, describe


#: Every criterion in catalogue order: (id, its status, the status in words).
_CRITERIA_TABLE: Final[tuple[tuple[str, _Decide, _Describe], ...]] = (
    _yes_no_criterion(
        "diagnosis_rr_b_all",
        "diagnosis_rr_b_all",
        True,
        "The diagnosis of recurrent or refractory B-ALL",
        "recurrent or refractory B-ALL",
        "The diagnosis is not recurrent or refractory B-ALL",
    ),
    (
        "failed_standard_treatment",
        _failed_standard_status,
        lambda d, day, p, lim, s: _failed_standard(d, s),
    ),
    _yes_no_criterion(
        "cd19_expressed",
        "cd19_expressed",
        True,
        "CD19 expression on the B-ALL cells",
        "CD19 expression detected on the surface of the B-ALL cells",
        "CD19 expression is not detected on the B-ALL cells",
    ),
    (
        "kps",
        _kps_status,
        lambda d, day, p, lim, s: _above(
            "kps", "kps", d.kps, s, p.kps_above, lim.kps, "KPS", "", "a whole number 0-100"
        ),
    ),
    (
        "life_expectancy",
        _life_expectancy_status,
        lambda d, day, p, lim, s: _above(
            "life_expectancy",
            "life_expectancy_months",
            d.life_expectancy_months,
            s,
            p.life_expectancy_months_above,
            lim.life_expectancy,
            "Life expectancy",
            " months",
            "a number of months",
        ),
    ),
    (
        "lvef",
        _lvef_status,
        lambda d, day, p, lim, s: _lvef(d.lvef_pct, s, p.lvef_min_pct, lim.lvef),
    ),
    _yes_no_criterion(
        "ecg",
        "ecg_obvious_abnormality",
        False,
        "Whether the electrocardiogram shows an obvious abnormality",
        "no electrocardiogram with obvious abnormality",
        "The electrocardiogram shows an obvious abnormality",
    ),
    (
        "spo2",
        _spo2_status,
        lambda d, day, p, lim, s: _above(
            "spo2",
            "spo2_room_air_pct",
            d.spo2_room_air_pct,
            s,
            p.spo2_above_pct,
            lim.spo2,
            "Room-air SpO2",
            " %",
            "oxygen saturation on room air in %",
        ),
    ),
    (
        "creatinine",
        _creatinine_status,
        lambda d, day, p, lim, s: _x_uln(
            "creatinine",
            "Creatinine",
            d.creatinine,
            s,
            lim.creatinine_k,
            lim.creatinine_k_text,
            lim.creatinine,
        ),
    ),
    (
        "alt",
        _alt_status,
        lambda d, day, p, lim, s: _x_uln(
            "alt", "ALT", d.alt, s, lim.alt_k, lim.alt_k_text, lim.alt
        ),
    ),
    (
        "ast",
        _ast_status,
        lambda d, day, p, lim, s: _x_uln(
            "ast", "AST", d.ast, s, lim.ast_k, lim.ast_k_text, lim.ast
        ),
    ),
    (
        "bilirubin",
        _bilirubin_status,
        lambda d, day, p, lim, s: _bilirubin(d.bilirubin, s, p, lim.bilirubin),
    ),
    (
        "hemoglobin",
        _hemoglobin_status,
        lambda d, day, p, lim, s: _hemoglobin(d.hemoglobin, s, lim),
    ),
    _yes_no_criterion(
        "apheresis",
        "apheresis_contraindication",
        False,
        "Whether there is a contraindication to apheresis and cell isolation",
        "no contraindication to apheresis and cell isolation",
        "There is a contraindication to apheresis and cell isolation",
    ),
    (
        "informed_consent",
        _consent_status,
        lambda d, day, p, lim, s: _consent(d, day, s),
    ),
    _exclusion_criterion(
        "other_primary_malignancy",
        "other_primary_malignancy",
        "another primary malignant disease",
    ),
    _exclusion_criterion(
        "severe_uncontrolled_disease",
        "severe_uncontrolled_disease",
        "another severe and/or life-threatening or uncontrolled medical disease",
    ),
    _exclusion_criterion(
        "uncontrolled_active_infection",
        "uncontrolled_active_infection",
        "uncontrolled current serious active infection",
    ),
    _exclusion_criterion("hiv", "hiv", "HIV infection"),
    _exclusion_criterion("hbv", "hbv", "HBV infection"),
    _exclusion_criterion("hcv", "hcv", "HCV infection"),
    _exclusion_criterion("pregnancy", "pregnant", "pregnancy"),
    _exclusion_criterion("nursing", "nursing", "nursing (breastfeeding)"),
    (
        "systemic_glucocorticoid",
        _glucocorticoid_status,
        lambda d, day, p, lim, s: _glucocorticoid_result(
            d.last_systemic_glucocorticoid, day, p.glucocorticoid_washout_days, s
        ),
    ),
)
#: (id, its status) of every criterion, for ``eligibility_failures``.
_DECISIONS: Final = tuple((cid, decide) for cid, decide, _describe in _CRITERIA_TABLE)


def _check_screening_date(screening_date: Any) -> None:
    if type(screening_date) is not datetime.date:
        raise ProtocolInputError(
            "screening_date", f"expected a calendar date (no time), got {screening_date!r}"
        )


def evaluate_eligibility(
    data: ScreeningData,
    screening_date: datetime.date,
    params: ProtocolParameters = DEFAULT_PARAMETERS,
) -> EligibilityResult:
    """Apply every inclusion and exclusion criterion.

    Eligible only when every inclusion is met and no exclusion applies; a missing value is never
    eligible. Raises ``ProtocolInputError`` when the screening date is not a date, or when the data
    contradict it (a glucocorticoid dose after the screening date).
    """
    _check_screening_date(screening_date)
    lim = _limits(params)
    statuses = [decide(data, screening_date, params, lim) for _cid, decide, _ in _CRITERIA_TABLE]
    criteria = tuple(
        describe(data, screening_date, params, lim, status)
        for (_cid, _, describe), status in zip(_CRITERIA_TABLE, statuses, strict=True)
    )
    return EligibilityResult(screening_date=screening_date, criteria=criteria)


def eligibility_failures(
    data: ScreeningData,
    screening_date: datetime.date,
    params: ProtocolParameters = DEFAULT_PARAMETERS,
) -> tuple[str, ...]:
    """The ids of the criteria that fail (``evaluate_eligibility(...).failed``), in catalogue
    order, without building the results' sentences: empty when eligible.

    What a recorded screening needs (eligible, failed criteria); ``evaluate_eligibility`` gives
    the sentences, from the same decisions (``_CRITERIA_TABLE``). Raises the same errors.
    """
    _check_screening_date(screening_date)
    lim = _limits(params)
    met, does_not_apply = _MET, _NOT_APPLY
    return tuple(
        [
            cid
            for cid, decide in _DECISIONS
            if (status := decide(data, screening_date, params, lim)) is not met
            and status is not does_not_apply
        ]
    )
