"""Toxicity grading: CRS and ICANS from raw observations, and explicitly entered grades.

Sources (``/work/shared/reference/clinical.md``):
- s2: ASTCT 2019 consensus CRS grading (Lee et al., BBMT 2019;25:625-638); CTCAE v5 grades CRS
  differently (oxygen by FiO2 < 40 % vs >= 40 %). Store the raw observations, the scale and its
  version, never only a grade number, so that history can be re-graded.
- s3: ASTCT 2019 ICANS grading for adults and children >= 12 y (ICE score 0-10 and four other
  domains; the grade is the worst domain not attributable to another cause); children under 12
  are scored with the CAPD (Cornell Assessment of Pediatric Delirium) instead of the ICE
  (issue 20: CAPD 1-8 grade 1 or 2 by the other domains, >= 9 grade 3, unable to perform
  grade 4).
- s4: "severe" means grade >= 3; split dosing holds later fractions for early CRS.
  The thresholds that turn a grade into a decision are protocol parameters
  (``severe_grade``, ``hold_crs_grade``, ``hold_icans_grade``, ``hold_other_grade``).

The scale definitions themselves (fever >= 38.0 C, low-flow cannula <= 6 L/min, FiO2 40 %,
ICE bands) are not protocol parameters: they belong to the named scale and its version, which is
recorded with every grade.

Pure code: stdlib and attrs only. User documentation: ``docs/toxicity.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
from msgspec import UNSET, UnsetType

from .errors import INVALID, Invalid, Problems, ProtocolInputError, key_name, key_names
from .parameters import DEFAULT_PARAMETERS, ProtocolParameters
from .payloads import (
    CapdItemsPayload,
    CrsObservationsPayload,
    CrsReportPayload,
    FieldsJson,
    IcansObservationsPayload,
    IcansReportPayload,
    IceItemsPayload,
    OtherReportPayload,
    ToxicityReportPayload,
    convert,
)
from .plausibility import finite_float, show_number

if TYPE_CHECKING:
    from .record import PatientRecord

# --------------------------------------------------------------------------------------------
# Scale constants (they belong to the scales, see module docstring)
# --------------------------------------------------------------------------------------------

KINDS: Final = ("CRS", "ICANS", "other")
ASTCT: Final = "ASTCT"
ASTCT_VERSION: Final = "2019"
CTCAE: Final = "CTCAE"
CTCAE_VERSION: Final = "5.0"
#: Scales (and versions) that can grade raw observations.
GRADING_SCALES: Final = (ASTCT, CTCAE)
#: Scales and versions accepted for an explicitly entered grade. ASTCT covers CRS and ICANS only.
EXPLICIT_SCALES: Final[dict[str, tuple[str, ...]]] = {
    ASTCT: (ASTCT_VERSION,),
    CTCAE: ("4.03", CTCAE_VERSION),
}

#: Fever: temperature >= 38.0 C (ASTCT 2019; CTCAE v5 "Fever" grade 1 starts at 38.0 C).
FEVER_MIN_C: Final = 38.0
#: The same threshold in Fahrenheit, converted exactly (38 x 9/5 + 32 = 100.4): the comparison
#: is made in the unit the value was entered in, so 100.4 F is fever exactly like 38.0 C.
FEVER_MIN_F: Final = float(Fraction(38) * 9 / 5 + 32)
#: Plausible body temperature (outside this, the unit is almost certainly wrong).
TEMPERATURE_RANGE: Final[dict[str, tuple[float, float]]] = {"C": (25.0, 45.0), "F": (77.0, 113.0)}
#: ASTCT: low-flow nasal cannula is oxygen at <= 6 L/min; above that it is high flow.
LOW_FLOW_MAX_L_MIN: Final = 6.0
#: Plausible oxygen flow (L/min).
MAX_FLOW_L_MIN: Final = 100.0
#: CTCAE v5 CRS: hypoxia needing < 40 % O2 is grade 2, >= 40 % is grade 3.
CTCAE_FIO2_GRADE3_PCT: Final = 40.0
#: Room air FiO2 (%).
ROOM_AIR_FIO2_PCT: Final = 21.0
#: More vasopressors than this is not a plausible count (input error).
MAX_VASOPRESSORS: Final = 10
#: ASTCT ICE score is validated for adults and children >= 12 y; younger children need the CAPD.
ICE_MIN_AGE_YEARS: Final = 12
MAX_AGE_YEARS: Final = 130

#: CAPD (Cornell Assessment of Pediatric Delirium; Traube et al., Crit Care Med 2014;42:656-663):
#: the eight items as published, each scored 0-4 on the form (items 1-4 -- eye contact,
#: purposeful actions, awareness, communicating needs and wants -- in reverse: "never" is 4),
#: total 0-32. ASTCT 2019 grades ICANS in children under 12 with it.
CAPD_ITEMS: Final[dict[str, str]] = {
    "eye_contact": "Does the child make eye contact with the caregiver?",
    "purposeful_actions": "Are the child's actions purposeful?",
    "aware_of_surroundings": "Is the child aware of his/her surroundings?",
    "communicates_needs_and_wants": "Does the child communicate needs and wants?",
    "restless": "Is the child restless?",
    "inconsolable": "Is the child inconsolable?",
    "underactive": "Is the child underactive -- very little movement while awake?",
    "long_time_to_respond": "Does it take the child a long time to respond to interactions?",
}
CAPD_ITEM_MAX: Final = 4
CAPD_MAX: Final = 32
#: ASTCT 2019 (children under 12): CAPD 1-8 is grade 1 or 2 (decided by the other domains),
#: CAPD >= 9 is grade 3, unable to perform the CAPD is grade 4.
CAPD_GRADE3_MIN: Final = 9
#: The encephalopathy domain of a child under 12 (``attributable_to_other_cause`` names it).
CAPD_DOMAIN: Final = "capd"

#: Oxygen devices and their ASTCT 2019 CRS hypoxia grade. A low-flow nasal cannula above
#: ``LOW_FLOW_MAX_L_MIN`` is graded as high flow (grade 3).
OXYGEN_DEVICES: Final[dict[str, int]] = {
    "none": 0,
    "low_flow_nasal_cannula": 2,
    "blow_by": 2,
    "high_flow_nasal_cannula": 3,
    "facemask": 3,
    "non_rebreather": 3,
    "venturi": 3,
    "cpap": 4,
    "bipap": 4,
    "mechanical_ventilation": 4,
}
#: Positive pressure ventilation (CTCAE v5 grade 4, ASTCT grade 4).
POSITIVE_PRESSURE_DEVICES: Final = frozenset({"cpap", "bipap", "mechanical_ventilation"})
_DEVICE_WORDS: Final[dict[str, str]] = {
    "none": "no supplemental oxygen",
    "low_flow_nasal_cannula": "low-flow nasal cannula",
    "blow_by": "blow-by oxygen",
    "high_flow_nasal_cannula": "high-flow nasal cannula",
    "facemask": "facemask",
    "non_rebreather": "non-rebreather mask",
    "venturi": "Venturi mask",
    "cpap": "CPAP",
    "bipap": "BiPAP",
    "mechanical_ventilation": "intubation and mechanical ventilation",
}

#: ICE items and their maximum points (total 10).
ICE_ITEMS: Final[dict[str, int]] = {
    "orientation": 4,
    "naming": 3,
    "command": 1,
    "writing": 1,
    "attention": 1,
}
#: ICANS domains, in the order they are reported.
ICANS_DOMAINS: Final = ("ice", "consciousness", "seizure", "motor", "raised_icp")
CONSCIOUSNESS_GRADES: Final[dict[str, int]] = {
    "none": 0,
    "wakes_spontaneously": 1,
    "wakes_to_voice": 2,
    "wakes_to_touch": 3,
    "stupor_or_coma": 4,
}
SEIZURE_GRADES: Final[dict[str, int]] = {
    "none": 0,
    "rapid_resolving_or_nonconvulsive_eeg_resolved": 3,
    "life_threatening_or_repetitive": 4,
}
MOTOR_GRADES: Final[dict[str, int]] = {"none": 0, "deep_focal_weakness": 4}
RAISED_ICP_GRADES: Final[dict[str, int]] = {
    "none": 0,
    "focal_local_edema": 3,
    "diffuse_edema_or_signs": 4,
}
_CONSCIOUSNESS_WORDS: Final[dict[str, str]] = {
    "none": "normal level of consciousness",
    "wakes_spontaneously": "depressed consciousness, wakes spontaneously",
    "wakes_to_voice": "depressed consciousness, wakes to voice",
    "wakes_to_touch": "depressed consciousness, wakes only to touch",
    "stupor_or_coma": "stupor or coma (unarousable or needs vigorous stimuli)",
}
_SEIZURE_WORDS: Final[dict[str, str]] = {
    "none": "no seizure",
    "rapid_resolving_or_nonconvulsive_eeg_resolved": (
        "clinical seizure resolving rapidly, or non-convulsive EEG seizure resolving with "
        "intervention"
    ),
    "life_threatening_or_repetitive": (
        "life-threatening seizure (> 5 min) or repetitive seizures without return to baseline"
    ),
}
_MOTOR_WORDS: Final[dict[str, str]] = {
    "none": "no motor weakness",
    "deep_focal_weakness": "deep focal motor weakness",
}
_RAISED_ICP_WORDS: Final[dict[str, str]] = {
    "none": "no raised intracranial pressure or cerebral edema",
    "focal_local_edema": "focal/local edema on imaging",
    "diffuse_edema_or_signs": (
        "diffuse cerebral edema, or decerebrate/decorticate posturing, CN VI palsy, papilledema "
        "or Cushing's triad"
    ),
}
_DOMAIN_WORDS: Final[dict[str, str]] = {
    "ice": "the ICE score",
    "capd": "the CAPD score",
    "consciousness": "the level of consciousness",
    "seizure": "seizure",
    "motor": "motor findings",
    "raised_icp": "raised intracranial pressure / cerebral edema",
}
_CANONICAL_TERMS: Final[dict[str, str]] = {
    "CRS": "cytokine release syndrome",
    "ICANS": "immune effector cell-associated neurotoxicity syndrome",
}
_MAX_TERM_LENGTH: Final = 200


class ToxicityNotGradableError(ProtocolInputError):
    """The observations (or the explicit grade) cannot be graded under the scale asked for.

    The message says what is missing and what the user can do (record the missing observation,
    grade under another scale, or enter the grade explicitly).
    """


# --------------------------------------------------------------------------------------------
# Small validators
# --------------------------------------------------------------------------------------------


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(data: Any, path: str, example: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProtocolInputError(
            path or "(report)", f"must be a JSON object like {example}, got {data!r}"
        )
    return data


def _check_keys(
    data: Mapping[str, Any], path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> None:
    p = Problems()
    _key_problems(p, data, path, allowed, required)
    p.raise_if_any()


def _key_problems(
    p: Problems,
    data: Mapping[str, Any],
    path: str,
    allowed: tuple[str, ...],
    required: tuple[str, ...] = (),
) -> None:
    """Add the unknown keys (one problem naming them all) and each missing required key."""
    unknown = [k for k in data if k not in allowed]
    if unknown:
        p.add(
            ProtocolInputError(
                _at(path, key_name(unknown[0])),
                f"unknown field(s) {key_names(unknown)}; allowed fields are: {', '.join(allowed)}",
            )
        )
    for key in required:
        if key not in data:
            p.add(ProtocolInputError(_at(path, key), "is required but missing"))


def _number(value: Any, field: str, lo: float, hi: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolInputError(field, f"{what} must be a number, got {value!r}")
    if finite_float(value) is None:  # NaN, infinities, integers too large for a float
        raise ProtocolInputError(
            field, f"{what} must be a finite number from {lo:g} to {hi:g}, got {show_number(value)}"
        )
    if not lo <= value <= hi:
        raise ProtocolInputError(
            field, f"{what} {show_number(value)} is out of range; allowed {lo:g} to {hi:g}"
        )
    return value


def _integer(value: Any, field: str, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolInputError(
            field, f"{what} must be a whole number from {lo} to {hi}, got {value!r}"
        )
    if not lo <= value <= hi:
        raise ProtocolInputError(
            field, f"{what} {show_number(value)} is out of range; allowed {lo} to {hi}"
        )
    return value


def _boolean(data: Mapping[str, Any], key: str, path: str, default: bool | None = None) -> bool:
    if key not in data and default is not None:
        return default
    value = data.get(key)
    if not isinstance(value, bool):
        raise ProtocolInputError(_at(path, key), f"must be true or false, got {value!r}")
    return value


def _choice(value: Any, field: str, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ProtocolInputError(
            field, f"{value!r} is not allowed; use one of: {', '.join(choices)}"
        )
    return value


def _g(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------------------------
# CRS observations
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Temperature(FieldsJson):
    """Highest body temperature of the assessment, as entered (``C`` or ``F``)."""

    value: float
    unit: str

    @property
    def celsius(self) -> float:
        return self.value if self.unit == "C" else (self.value - 32) * 5 / 9

    @property
    def is_fever(self) -> bool:
        """>= 38.0 C, compared in the entered unit against the exactly converted threshold."""
        return self.value >= (FEVER_MIN_C if self.unit == "C" else FEVER_MIN_F)

    def describe(self) -> str:
        if self.unit == "C":
            return f"{_g(self.value)} C"
        return f"{_g(self.value)} F ({self.celsius:.1f} C)"


def parse_temperature(data: Any, field: str = "temperature") -> Temperature:
    """``{"value": 38.4, "unit": "C"}`` or ``{"value": 101.1, "unit": "F"}``."""
    data = _object(data, field, '{"value": 38.4, "unit": "C"}')
    p = Problems()
    _key_problems(p, data, field, ("value", "unit"), ("value", "unit"))
    unit = data.get("unit")
    if "unit" in data and (not isinstance(unit, str) or unit not in TEMPERATURE_RANGE):
        p.add(
            ProtocolInputError(_at(field, "unit"), f"unit {unit!r} is not allowed; use 'C' or 'F'")
        )
        unit = None
    value = data.get("value")
    if "value" in data:
        if finite_float(value) is None:  # not a number, NaN, infinite, or too large for a float
            p.add(
                ProtocolInputError(
                    _at(field, "value"),
                    f"temperature must be a finite number (25 to 45 C or 77 to 113 F), got "
                    f"{show_number(value)}",
                )
            )
        elif unit is not None:
            lo, hi = TEMPERATURE_RANGE[unit]
            if not lo <= value <= hi:
                p.add(
                    ProtocolInputError(
                        _at(field, "value"),
                        f"{_g(value)} {unit} is not a plausible body temperature (allowed 25 to "
                        "45 C or 77 to 113 F); check the value and its unit",
                    )
                )
    p.raise_if_any()
    return Temperature(value=value, unit=unit)


@attrs.frozen(kw_only=True)
class OxygenSupport(FieldsJson):
    """Oxygen support at the time of the assessment."""

    device: str
    flow_l_min: float | None = None
    fio2_pct: float | None = None

    @property
    def words(self) -> str:
        text = _DEVICE_WORDS[self.device]
        if self.flow_l_min is not None:
            text += f" at {_g(self.flow_l_min)} L/min"
        return text


def parse_oxygen(data: Any, field: str = "oxygen") -> OxygenSupport:
    """``{"device": "low_flow_nasal_cannula", "flow_l_min": 4, "fio2_pct": null}``."""
    data = _object(data, field, '{"device": "low_flow_nasal_cannula", "flow_l_min": 4}')
    p = Problems()
    _key_problems(p, data, field, ("device", "flow_l_min", "fio2_pct"), ("device",))
    device: str | Invalid = INVALID
    if "device" in data:
        device = p.run(lambda: _choice(data["device"], _at(field, "device"), OXYGEN_DEVICES))
    flow_raw = data.get("flow_l_min")
    fio2_raw = data.get("fio2_pct")
    flow: float | Invalid | None = None
    fio2: float | Invalid | None = None
    if flow_raw is not None:
        flow = p.run(
            lambda: _number(
                flow_raw, _at(field, "flow_l_min"), 0.0, MAX_FLOW_L_MIN, "oxygen flow (L/min)"
            )
        )
    if fio2_raw is not None:
        fio2 = p.run(
            lambda: _number(fio2_raw, _at(field, "fio2_pct"), ROOM_AIR_FIO2_PCT, 100.0, "FiO2 (%)")
        )
    if device == "none":
        if flow is not None and flow is not INVALID:
            p.add(
                ProtocolInputError(
                    _at(field, "flow_l_min"),
                    "an oxygen flow was given with device 'none'; name the device that delivers it",
                )
            )
        if fio2 is not None and fio2 is not INVALID and fio2 != ROOM_AIR_FIO2_PCT:
            p.add(
                ProtocolInputError(
                    _at(field, "fio2_pct"),
                    f"FiO2 {_g(fio2)} % with device 'none' is not room air (21 %); name the device",
                )
            )
    elif device == "low_flow_nasal_cannula" and (flow is None or flow == 0):
        p.add(
            ProtocolInputError(
                _at(field, "flow_l_min"),
                "a nasal cannula needs its flow in L/min (above 0): <= 6 L/min is low flow "
                "(ASTCT grade 2), above 6 L/min counts as high flow (grade 3)",
            )
        )
    p.raise_if_any()
    assert device is not INVALID and flow is not INVALID and fio2 is not INVALID
    return OxygenSupport(device=device, flow_l_min=flow, fio2_pct=fio2)


_CRS_KEYS: Final = (
    "temperature",
    "fever_attributable_to_other_cause",
    "antipyretics_given",
    "anticytokine_given",
    "hypotension",
    "vasopressors",
    "vasopressin",
    "oxygen",
    "death_due_to_crs",
)


@attrs.frozen(kw_only=True)
class CrsObservations(FieldsJson):
    """Raw observations for grading CRS (ASTCT 2019, and CTCAE v5 where possible)."""

    temperature: Temperature
    fever_attributable_to_other_cause: bool = False
    antipyretics_given: bool = False
    #: Tocilizumab, steroids or other anti-cytokine therapy.
    anticytokine_given: bool = False
    hypotension: bool
    #: Number of vasopressors other than vasopressin.
    vasopressors: int = 0
    vasopressin: bool = False
    oxygen: OxygenSupport
    death_due_to_crs: bool = False


def parse_crs_observations(data: Any, field: str = "observations") -> CrsObservations:
    """CRS observations (see ``docs/toxicity.md`` for the format); raises one error naming every
    invalid field."""
    data = _object(data, field, '{"temperature": {...}, "hypotension": false, "oxygen": {...}}')
    p = Problems()
    _key_problems(p, data, field, _CRS_KEYS, ("temperature", "hypotension", "oxygen"))
    temperature: Temperature | Invalid = INVALID
    if "temperature" in data:
        temperature = p.run(
            lambda: parse_temperature(data["temperature"], _at(field, "temperature"))
        )
    hypotension: bool | Invalid = INVALID
    if "hypotension" in data:
        hypotension = p.run(lambda: _boolean(data, "hypotension", field))
    vasopressors: int | Invalid = 0
    if "vasopressors" in data:
        vasopressors = p.run(
            lambda: _integer(
                data["vasopressors"],
                _at(field, "vasopressors"),
                0,
                MAX_VASOPRESSORS,
                "number of vasopressors (vasopressin not counted)",
            )
        )
    vasopressin = p.run(lambda: _boolean(data, "vasopressin", field, False))
    if (
        hypotension is False
        and vasopressors is not INVALID
        and vasopressin is not INVALID
        and (vasopressors or vasopressin)
    ):
        given = f"{vasopressors} vasopressor(s)" + (" and vasopressin" if vasopressin else "")
        if not vasopressors:
            given = "vasopressin"
        p.add(
            ProtocolInputError(
                _at(field, "hypotension"),
                f"hypotension is false but {given} recorded; set hypotension to true "
                "(hypotension requiring vasopressors) or correct the vasopressors",
            )
        )
    flags = {
        key: p.run(lambda: _boolean(data, key, field, False))  # noqa: B023 (called at once)
        for key in ("fever_attributable_to_other_cause", "antipyretics_given", "anticytokine_given")
    }
    oxygen: OxygenSupport | Invalid = INVALID
    if "oxygen" in data:
        oxygen = p.run(lambda: parse_oxygen(data["oxygen"], _at(field, "oxygen")))
    death = p.run(lambda: _boolean(data, "death_due_to_crs", field, False))
    p.raise_if_any()
    return CrsObservations(
        temperature=temperature,  # type: ignore[arg-type]  # each checked above
        hypotension=hypotension,  # type: ignore[arg-type]
        vasopressors=vasopressors,  # type: ignore[arg-type]
        vasopressin=vasopressin,  # type: ignore[arg-type]
        oxygen=oxygen,  # type: ignore[arg-type]
        death_due_to_crs=death,  # type: ignore[arg-type]
        **flags,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# ICANS observations
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class IceItems(FieldsJson):
    """The five ICE items: orientation 0-4, naming 0-3, command 0-1, writing 0-1, attention 0-1."""

    orientation: int
    naming: int
    command: int
    writing: int
    attention: int

    @property
    def total(self) -> int:
        return self.orientation + self.naming + self.command + self.writing + self.attention


def parse_ice_items(data: Any, field: str = "ice_items") -> IceItems:
    return _parse_items(
        data,
        field,
        '{"orientation": 4, "naming": 3, "command": 1, "writing": 1, "attention": 1}',
        ICE_ITEMS,
        "ICE",
        IceItems,
    )


@attrs.frozen(kw_only=True)
class CapdItems(FieldsJson):
    """The eight CAPD items, each 0-4 as scored on the form (``CAPD_ITEMS``)."""

    eye_contact: int
    purposeful_actions: int
    aware_of_surroundings: int
    communicates_needs_and_wants: int
    restless: int
    inconsolable: int
    underactive: int
    long_time_to_respond: int

    @property
    def total(self) -> int:
        return (
            self.eye_contact
            + self.purposeful_actions
            + self.aware_of_surroundings
            + self.communicates_needs_and_wants
            + self.restless
            + self.inconsolable
            + self.underactive
            + self.long_time_to_respond
        )


def parse_capd_items(data: Any, field: str = "capd_items") -> CapdItems:
    return _parse_items(
        data,
        field,
        '{"eye_contact": 1, "purposeful_actions": 1, "aware_of_surroundings": 0, ...} (8 items)',
        dict.fromkeys(CAPD_ITEMS, CAPD_ITEM_MAX),
        "CAPD item",
        CapdItems,
    )


_Items = TypeVar("_Items", IceItems, CapdItems)


def _parse_items(
    data: Any,
    field: str,
    example: str,
    tops: Mapping[str, int],
    what: str,
    cls: type[_Items],
) -> _Items:
    """A tool's items, each an integer from 0 to its top (``tops``), all of them required;
    raises one error naming every invalid item."""
    data = _object(data, field, example)
    keys = tuple(tops)
    p = Problems()
    _key_problems(p, data, field, keys, keys)
    points = {
        key: p.run(
            lambda: _integer(data[key], _at(field, key), 0, top, f"{what} {key} points")  # noqa: B023
        )
        for key, top in tops.items()
        if key in data
    }
    p.raise_if_any()
    return cls(**points)  # type: ignore[arg-type]  # each checked above


_ICANS_KEYS: Final = (
    "age_years",
    "ice_score",
    "ice_items",
    "capd_score",
    "capd_items",
    "consciousness",
    "seizure",
    "motor",
    "raised_icp",
    "awake_with_global_aphasia",
    "attributable_to_other_cause",
)
#: Domains ``attributable_to_other_cause`` may name (the encephalopathy domain is ``ice`` from
#: 12 years, ``capd`` under 12), in the order they are written.
_ATTRIBUTABLE: Final = (*ICANS_DOMAINS, CAPD_DOMAIN)


def uses_capd(age_years: float) -> bool:
    """ASTCT 2019: children under 12 are scored with the CAPD, from 12 years with the ICE."""
    return age_years < ICE_MIN_AGE_YEARS


@attrs.frozen(kw_only=True)
class IcansObservations:
    """Raw observations for ASTCT 2019 ICANS grading: the ICE score from 12 years, the CAPD
    under 12 (issue 20), and the four other domains."""

    age_years: float
    #: ICE score 0-10; ``None`` only when the patient is unarousable (ICE cannot be performed),
    #: or for a child under 12 (scored with the CAPD).
    ice_score: int | None
    ice_items: IceItems | None = None
    #: CAPD total 0-32 (children under 12); ``None`` for a child only when the CAPD cannot be
    #: performed (the child is unarousable).
    capd_score: int | None = None
    capd_items: CapdItems | None = None
    consciousness: str
    seizure: str = "none"
    motor: str = "none"
    raised_icp: str = "none"
    awake_with_global_aphasia: bool = False
    #: Domains (of ``ICANS_DOMAINS``, or ``capd``) whose finding is attributable to another cause.
    attributable_to_other_cause: tuple[str, ...] = ()

    @property
    def child(self) -> bool:
        """Scored with the CAPD (under 12 years)."""
        return uses_capd(self.age_years)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"age_years": self.age_years}
        if self.child:
            data["capd_score"] = self.capd_score
            if self.capd_items is not None:
                data["capd_items"] = self.capd_items.to_json()
        else:
            data["ice_score"] = self.ice_score
            if self.ice_items is not None:
                data["ice_items"] = self.ice_items.to_json()
        data.update(
            consciousness=self.consciousness,
            seizure=self.seizure,
            motor=self.motor,
            raised_icp=self.raised_icp,
            awake_with_global_aphasia=self.awake_with_global_aphasia,
            attributable_to_other_cause=list(self.attributable_to_other_cause),
        )
        return data


@attrs.frozen(kw_only=True)
class _Tool:
    """The encephalopathy tool of an age: its keys, range and words."""

    name: str
    score: str
    items: str
    top: int
    parse_items: Any
    unable: str


_ICE_TOOL: Final = _Tool(
    name="ICE",
    score="ice_score",
    items="ice_items",
    top=10,
    parse_items=parse_ice_items,
    unable="the patient is unarousable and the ICE cannot be performed",
)
_CAPD_TOOL: Final = _Tool(
    name="CAPD",
    score="capd_score",
    items="capd_items",
    top=CAPD_MAX,
    parse_items=parse_capd_items,
    unable="the child is unarousable and the CAPD cannot be performed",
)


def _wrong_tool(age: float, field: str) -> ProtocolInputError:
    if uses_capd(age):
        return ProtocolInputError(
            field,
            f"the patient is {_g(age)} years old: ASTCT grades ICANS in children under "
            f"{ICE_MIN_AGE_YEARS} with the CAPD (Cornell Assessment of Pediatric Delirium), "
            "not the ICE score; give capd_score (0-32) or capd_items (the eight CAPD items, "
            "each 0-4) instead",
        )
    return ProtocolInputError(
        field,
        f"the patient is {_g(age)} years old: ASTCT grades ICANS from {ICE_MIN_AGE_YEARS} "
        "years with the ICE score, not the CAPD (for children under "
        f"{ICE_MIN_AGE_YEARS}); give ice_score (0-10) or ice_items instead",
    )


def _missing_tool(tool: _Tool, field: str) -> ProtocolInputError:
    if tool is _CAPD_TOOL:
        return ProtocolInputError(
            _at(field, tool.score),
            "is required for a child under 12: give capd_score (0-32) or capd_items (null only "
            f"when {tool.unable}); if the CAPD is not applicable at the child's developmental "
            "age (for example a non-verbal infant), enter the ICANS grade explicitly "
            '({"kind": "ICANS", "scale": "ASTCT", "scale_version": "2019", "grade": 2}) with '
            "the reason",
        )
    return ProtocolInputError(
        _at(field, tool.score),
        "is required: give ice_score (0-10) or ice_items (null only when the patient is "
        "unarousable and the ICE cannot be performed); under 12 years: capd_score or capd_items",
    )


def _tool_score(
    p: Problems, data: Mapping[str, Any], field: str, tool: _Tool, consciousness: Any
) -> tuple[int | Invalid | None, Any]:
    """The tool's score and items (checked against each other, and a null score only when
    unarousable)."""
    items: Any = None
    if data.get(tool.items) is not None:
        items = p.run(lambda: tool.parse_items(data[tool.items], _at(field, tool.items)))
    raw_score = data.get(tool.score)
    score: int | Invalid | None
    if raw_score is None:
        score = None if items is None else INVALID if items is INVALID else items.total
    else:
        score = p.run(
            lambda: _integer(raw_score, _at(field, tool.score), 0, tool.top, f"{tool.name} score")
        )
        if (
            items is not None
            and items is not INVALID
            and score is not INVALID
            and items.total != score
        ):
            p.add(
                ProtocolInputError(
                    _at(field, tool.score),
                    f"{tool.name} score {score} does not equal the sum of the "
                    f"{tool.name} items ({items.total}); correct one of them or give only "
                    "the items",
                )
            )
    if score is None and consciousness is not INVALID and consciousness != "stupor_or_coma":
        p.add(
            ProtocolInputError(
                _at(field, tool.score),
                f"the {tool.name} score may be null only when {tool.unable} (consciousness "
                f"'stupor_or_coma'), but consciousness is {consciousness!r}; give the "
                f"{tool.name} score 0-{tool.top}",
            )
        )
    return score, items


def parse_icans_observations(data: Any, field: str = "observations") -> IcansObservations:
    """ICANS observations (see ``docs/toxicity.md`` for the format); raises one error naming
    every invalid field."""
    data = _object(data, field, '{"age_years": 45, "ice_score": 8, "consciousness": "none"}')
    p = Problems()
    _key_problems(p, data, field, _ICANS_KEYS, ("consciousness",))
    age: float | Invalid = INVALID
    if "age_years" not in data:
        p.add(
            ProtocolInputError(
                _at(field, "age_years"),
                f"is required: the patient's age decides the tool (ICE score from "
                f"{ICE_MIN_AGE_YEARS} years, CAPD under {ICE_MIN_AGE_YEARS})",
            )
        )
    else:
        age = p.run(
            lambda: _number(
                data["age_years"], _at(field, "age_years"), 0, MAX_AGE_YEARS, "age (years)"
            )
        )
    consciousness: str | Invalid = INVALID
    if "consciousness" in data:
        consciousness = p.run(
            lambda: _choice(
                data["consciousness"], _at(field, "consciousness"), CONSCIOUSNESS_GRADES
            )
        )
    has_ice = "ice_score" in data or "ice_items" in data
    has_capd = "capd_score" in data or "capd_items" in data
    ice: int | Invalid | None = INVALID
    ice_items: Any = None
    capd: int | Invalid | None = None
    capd_items: Any = None
    if age is INVALID:  # the tool cannot be chosen: check what was given
        if has_ice:
            ice, ice_items = _tool_score(p, data, field, _ICE_TOOL, consciousness)
        elif has_capd:
            capd, capd_items = _tool_score(p, data, field, _CAPD_TOOL, consciousness)
        else:
            p.add(_missing_tool(_ICE_TOOL, field))
    else:
        child = uses_capd(age)
        tool, wrong = (_CAPD_TOOL, _ICE_TOOL) if child else (_ICE_TOOL, _CAPD_TOOL)
        wrong_keys = [key for key in (wrong.items, wrong.score) if key in data]
        if child:
            ice = None
        if wrong_keys:
            p.add(_wrong_tool(age, _at(field, wrong_keys[0])))
        elif not (has_capd if child else has_ice):
            p.add(_missing_tool(tool, field))
        elif child:
            capd, capd_items = _tool_score(p, data, field, tool, consciousness)
        else:
            ice, ice_items = _tool_score(p, data, field, tool, consciousness)
    aphasia = p.run(lambda: _boolean(data, "awake_with_global_aphasia", field, False))
    if aphasia is True and consciousness == "stupor_or_coma":
        p.add(
            ProtocolInputError(
                _at(field, "awake_with_global_aphasia"),
                "the patient cannot be awake with global aphasia and in stupor or coma; "
                "correct one",
            )
        )
    raw_attr = data.get("attributable_to_other_cause", [])
    attr_field = _at(field, "attributable_to_other_cause")
    if not isinstance(raw_attr, list | tuple):
        p.add(
            ProtocolInputError(
                attr_field, f"must be a list of domains from: {', '.join(ICANS_DOMAINS)}"
            )
        )
        raw_attr = []
    own = "ice"
    other = CAPD_DOMAIN
    if age is not INVALID and uses_capd(age):
        own, other = CAPD_DOMAIN, "ice"
    allowed = tuple(own if d == "ice" else d for d in ICANS_DOMAINS)
    for i, name in enumerate(raw_attr):
        if name == other and age is not INVALID:
            p.add(
                ProtocolInputError(
                    f"{attr_field}.{i}",
                    f"{name!r} is not a domain of a patient aged {_g(age)} years (the "
                    f"encephalopathy domain is {own!r}); use one of: {', '.join(allowed)}",
                )
            )
        else:
            p.run(lambda: _choice(name, f"{attr_field}.{i}", _ATTRIBUTABLE))  # noqa: B023
    attributable = tuple(d for d in _ATTRIBUTABLE if d in raw_attr)
    choices = {
        key: p.run(
            lambda: _choice(data.get(key, "none"), _at(field, key), grades)  # noqa: B023
        )
        for key, grades in (
            ("seizure", SEIZURE_GRADES),
            ("motor", MOTOR_GRADES),
            ("raised_icp", RAISED_ICP_GRADES),
        )
    }
    p.raise_if_any()
    return IcansObservations(
        age_years=age,  # type: ignore[arg-type]  # each checked above
        ice_score=ice,  # type: ignore[arg-type]
        ice_items=ice_items,
        capd_score=capd,  # type: ignore[arg-type]
        capd_items=capd_items,
        consciousness=consciousness,  # type: ignore[arg-type]
        awake_with_global_aphasia=aphasia,  # type: ignore[arg-type]
        attributable_to_other_cause=attributable,
        **choices,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# Reports and grades
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ToxicityReport:
    """A reported toxicity: raw observations (CRS, ICANS) or an explicit grade under a scale."""

    kind: str
    term: str | None = None
    observations: CrsObservations | IcansObservations | None = None
    grade: int | None = None
    scale: str | None = None
    scale_version: str | None = None
    #: An explicit ICANS grade's patient age (issue 20), when given.
    age_years: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "term": self.term}
        if self.observations is not None:
            data["observations"] = self.observations.to_json()
        else:
            data.update(grade=self.grade, scale=self.scale, scale_version=self.scale_version)
            if self.age_years is not None:
                data["age_years"] = self.age_years
        return data


@attrs.frozen(kw_only=True)
class ToxicityGrade(FieldsJson):
    """A grade (0 = no toxicity under the scale) with the scale, its version and the reasons."""

    kind: str
    term: str | None
    grade: int
    scale: str
    scale_version: str
    #: True when computed from raw observations, False when entered explicitly.
    derived: bool
    reasons: tuple[str, ...]

    def is_severe(self, params: ProtocolParameters = DEFAULT_PARAMETERS) -> bool:
        """Grade >= ``params.severe_grade`` (clinical.md s4: severe conventionally means >= 3)."""
        return self.grade > 0 and self.grade >= params.severe_grade

    def opens_hold(self, params: ProtocolParameters = DEFAULT_PARAMETERS) -> bool:
        """Whether this toxicity holds the remaining fractions (the hold grade of its kind)."""
        return self.grade > 0 and self.grade >= params.hold_grade(self.kind)


_REPORT_KEYS: Final = (
    "kind",
    "term",
    "observations",
    "grade",
    "scale",
    "scale_version",
    "age_years",
)
_EXPLICIT_KEYS: Final = ("grade", "scale", "scale_version")


#: The payload type of each kind (the members of ``ToxicityReportPayload``).
_REPORT_TYPES: Final[dict[str, type[ToxicityReportPayload]]] = {
    "CRS": CrsReportPayload,
    "ICANS": IcansReportPayload,
    "other": OtherReportPayload,
}
#: The objects nested in a report (each must be a plain dict for the fast path).
_NESTED: Final = (
    ("observations",),
    ("observations", "temperature"),
    ("observations", "oxygen"),
    ("observations", "ice_items"),
    ("observations", "capd_items"),
)


def parse_toxicity_report(data: Mapping[str, Any]) -> ToxicityReport:
    """Parse and normalise a toxicity report; ``parse_toxicity_report(r.to_json()) == r``.

    One ``msgspec.convert`` into :data:`~cart_course.protocol.payloads.ToxicityReportPayload`
    (discriminated by ``kind``) decodes a valid report; one it refuses, or whose values the
    types cannot judge (a temperature in its unit, the ICE items against the score), is checked
    again field by field, and the error names every invalid field.
    """
    # The Struct of the report's kind: msgspec converts into a Struct class at once, whereas a
    # union (ToxicityReportPayload) is re-analysed on every call (4 us).
    kind = data.get("kind") if type(data) is dict else None
    report_type = _REPORT_TYPES.get(kind) if type(kind) is str else None
    payload = None if report_type is None else convert(data, report_type, _NESTED)
    if payload is not None:
        report = _report_of(payload)
        if report is not None:
            return report
    return _parse_report_checked(data)


def _term_of(raw_term: Any) -> str | None:
    if raw_term is None:
        return None
    if not isinstance(raw_term, str) or not raw_term.strip():
        raise ProtocolInputError(
            "term", f"must be a non-empty text naming the toxicity, got {raw_term!r}"
        )
    term = raw_term.strip()
    if len(term) > _MAX_TERM_LENGTH:
        raise ProtocolInputError("term", f"is longer than {_MAX_TERM_LENGTH} characters")
    return term


def _report_of(p: ToxicityReportPayload) -> ToxicityReport | None:
    """The report of a decoded payload, or None when the field-by-field checks must say what is
    wrong (what the types cannot judge)."""
    term = p.term
    if term is not None:
        term = term.strip()
        if not term or len(term) > _MAX_TERM_LENGTH:
            return None
    kind: str = type(p).__struct_config__.tag  # type: ignore[assignment]  # the tag: kind
    if kind == "other" and term is None:
        return None
    explicit = p.grade is not UNSET or p.scale is not UNSET or p.scale_version is not UNSET
    observations = UNSET if isinstance(p, OtherReportPayload) else p.observations
    age = p.age_years if isinstance(p, IcansReportPayload) else UNSET
    if observations is not UNSET:
        if explicit or age is not UNSET:
            return None
        obs: CrsObservations | IcansObservations | None
        if isinstance(observations, CrsObservationsPayload):
            obs = _crs_of(observations)
        else:
            assert isinstance(observations, IcansObservationsPayload)
            obs = _icans_of(observations)
        if obs is None:
            return None
        return ToxicityReport(kind=kind, term=term, observations=obs)
    if p.grade is UNSET or p.scale is UNSET or p.scale_version is UNSET:
        return None
    if p.scale_version not in EXPLICIT_SCALES[p.scale]:
        return None
    if p.scale == ASTCT and kind == "other":
        return None
    return ToxicityReport(
        kind=kind,
        term=term,
        grade=p.grade,
        scale=p.scale,
        scale_version=p.scale_version,
        age_years=None if age is UNSET else age,
    )


def _crs_of(o: CrsObservationsPayload) -> CrsObservations | None:
    t, ox = o.temperature, o.oxygen
    lo, hi = TEMPERATURE_RANGE[t.unit]
    if not lo <= t.value <= hi:
        return None
    flow, fio2 = ox.flow_l_min, ox.fio2_pct
    if ox.device == "none":
        if flow is not None or (fio2 is not None and fio2 != ROOM_AIR_FIO2_PCT):
            return None
    elif ox.device == "low_flow_nasal_cannula" and (flow is None or flow == 0):
        return None
    if (o.vasopressors or o.vasopressin) and not o.hypotension:
        return None
    return CrsObservations(
        temperature=Temperature(value=t.value, unit=t.unit),
        fever_attributable_to_other_cause=o.fever_attributable_to_other_cause,
        antipyretics_given=o.antipyretics_given,
        anticytokine_given=o.anticytokine_given,
        hypotension=o.hypotension,
        vasopressors=o.vasopressors,
        vasopressin=o.vasopressin,
        oxygen=OxygenSupport(device=ox.device, flow_l_min=flow, fio2_pct=fio2),
        death_due_to_crs=o.death_due_to_crs,
    )


def _items_of(
    items: IceItemsPayload | CapdItemsPayload | UnsetType | None, cls: type[_Items]
) -> _Items | None:
    """Decoded items as the domain's (the fields of both are the same), or None."""
    if items is None or isinstance(items, UnsetType):
        return None
    return cls(**{name: getattr(items, name) for name in attrs.fields_dict(cls)})


def _icans_of(o: IcansObservationsPayload) -> IcansObservations | None:
    """The observations with the tool of the age (the ICE from 12 years, the CAPD under 12), or
    None for the field-by-field checks."""
    child = uses_capd(o.age_years)
    given: tuple[int | UnsetType | None, object] = (o.ice_score, o.ice_items)
    other: tuple[int | UnsetType | None, object] = (o.capd_score, o.capd_items)
    if child:
        given, other = other, given
    if all(v is UNSET for v in given) or any(v is not UNSET for v in other):
        return None
    attributed = o.attributable_to_other_cause
    if ("ice" if child else CAPD_DOMAIN) in attributed:
        return None
    ice_items = _items_of(o.ice_items, IceItems)
    capd_items = _items_of(o.capd_items, CapdItems)
    items = capd_items if child else ice_items
    raw_score = given[0]
    score: int | None
    if raw_score is None or isinstance(raw_score, UnsetType):
        score = None if items is None else items.total
    else:
        score = raw_score
        if items is not None and items.total != score:
            return None
    if score is None and o.consciousness != "stupor_or_coma":
        return None
    if o.awake_with_global_aphasia and o.consciousness == "stupor_or_coma":
        return None
    return IcansObservations(
        age_years=o.age_years,
        ice_score=None if child else score,
        ice_items=ice_items,
        capd_score=score if child else None,
        capd_items=capd_items,
        consciousness=o.consciousness,
        seizure=o.seizure,
        motor=o.motor,
        raised_icp=o.raised_icp,
        awake_with_global_aphasia=o.awake_with_global_aphasia,
        attributable_to_other_cause=tuple(d for d in _ATTRIBUTABLE if d in attributed),
    )


def _parse_report_checked(data: Any) -> ToxicityReport:
    """Field by field, naming every invalid field in one error."""
    data = _object(data, "", '{"kind": "CRS", "observations": {...}}')
    p = Problems()
    _key_problems(p, data, "", _REPORT_KEYS, ("kind",))
    kind: str | Invalid = INVALID
    if "kind" in data:
        kind = p.run(lambda: _choice(data["kind"], "kind", KINDS))
    term = p.run(lambda: _term_of(data.get("term")))
    if kind == "other" and term is None:
        p.add(
            ProtocolInputError(
                "term", "is required for kind 'other' (e.g. 'febrile neutropenia', CTCAE term)"
            )
        )
    has_obs = "observations" in data
    explicit = [k for k in _EXPLICIT_KEYS if k in data]
    observations: CrsObservations | IcansObservations | Invalid | None = None
    grade: int | Invalid | None = None
    scale: str | Invalid | None = None
    version: str | Invalid | None = None
    if has_obs and explicit:
        p.add(
            ProtocolInputError(
                "observations",
                f"give either observations or an explicit grade (grade, scale, scale_version), "
                f"not both (also got {', '.join(explicit)})",
            )
        )
    elif has_obs:
        if kind == "CRS":
            observations = p.run(lambda: parse_crs_observations(data["observations"]))
        elif kind == "ICANS":
            observations = p.run(lambda: parse_icans_observations(data["observations"]))
        elif kind == "other":
            p.add(
                ProtocolInputError(
                    "observations",
                    "only CRS and ICANS can be graded from observations; for kind 'other' enter "
                    "grade, scale and scale_version",
                )
            )
    elif not explicit:
        p.add(
            ProtocolInputError(
                "observations",
                "is missing: give observations (CRS or ICANS) or an explicit grade with scale "
                "and scale_version",
            )
        )
    else:
        for key in _EXPLICIT_KEYS:
            if key not in data:
                p.add(
                    ProtocolInputError(
                        key, "is required for an explicit grade (grade, scale and scale_version)"
                    )
                )
        if "scale" in data:
            scale = p.run(lambda: _choice(data["scale"], "scale", tuple(EXPLICIT_SCALES)))
        if "scale_version" in data and isinstance(scale, str):
            version = p.run(lambda: _scale_version(data["scale_version"], scale))
        if scale == ASTCT and kind == "other":
            p.add(
                ProtocolInputError(
                    "scale", "ASTCT grades only CRS and ICANS; grade other toxicities under CTCAE"
                )
            )
        if "grade" in data:
            grade = p.run(lambda: _explicit_grade(data["grade"]))
    age: float | Invalid | None = None
    if "age_years" in data:
        if kind != "ICANS" or has_obs:
            p.add(
                ProtocolInputError(
                    "age_years",
                    "is given only with an explicit ICANS grade (with observations the age is "
                    "observations.age_years; CRS and other toxicities carry no age)",
                )
            )
        else:
            age = p.run(
                lambda: _number(data["age_years"], "age_years", 0, MAX_AGE_YEARS, "age (years)")
            )
    p.raise_if_any()
    assert isinstance(kind, str) and not isinstance(term, Invalid)
    assert not isinstance(observations, Invalid) and not isinstance(grade, Invalid)
    assert not isinstance(scale, Invalid) and not isinstance(version, Invalid)
    assert not isinstance(age, Invalid)
    return ToxicityReport(
        kind=kind,
        term=term,
        observations=observations,
        grade=grade,
        scale=scale,
        scale_version=version,
        age_years=age,
    )


def _age_on_record(record: PatientRecord, occurred_at: dt.datetime) -> tuple[float, str] | None:
    """The patient's age at ``occurred_at`` from the ICANS reports on record (the age each
    states, plus the time since that episode's onset): (age, where it comes from), or None."""
    known: tuple[dt.datetime, float, str] | None = None
    for tox in record.toxicities.values():
        report = tox.report
        if tox.kind != "ICANS" or not isinstance(report, Mapping):
            continue
        obs = report.get("observations")
        stated = obs.get("age_years") if isinstance(obs, Mapping) else report.get("age_years")
        if isinstance(stated, bool) or not isinstance(stated, int | float):
            continue
        onset = dt.datetime.fromisoformat(tox.onset)
        if onset.tzinfo is None:
            onset = onset.replace(tzinfo=dt.UTC)
        if known is None or onset > known[0]:
            known = (onset, float(stated), tox.id)
    if known is None:
        return None
    onset, stated_age, tox_id = known
    then = occurred_at if occurred_at.tzinfo is not None else occurred_at.replace(tzinfo=dt.UTC)
    elapsed = max((then - onset).total_seconds(), 0.0) / (365.25 * 86400)
    return stated_age + elapsed, f"from {tox_id} on record ({_g(stated_age)} years at its onset)"


def explicit_icans_reason(
    record: PatientRecord,
    facts: Mapping[str, Any],
    reason: str | None,
    occurred_at: dt.datetime,
) -> None:
    """Issue 20: an explicit ICANS grade of a child under 12 (the report's ``age_years``, else
    the age on the patient's ICANS reports on record) has no CAPD: the command's reason must
    say why the CAPD was not applicable (for example a non-verbal infant). An age not known
    (no age given, none on record) asks nothing."""
    report = facts.get("toxicity")
    if not isinstance(report, Mapping) or report.get("kind") != "ICANS":
        return
    if "observations" in report or report.get("grade") is None:
        return
    if reason is not None and reason.strip():
        return
    stated = report.get("age_years")
    if isinstance(stated, int | float) and not isinstance(stated, bool):
        age, source = float(stated), "payload.toxicity.age_years"
    else:
        found = _age_on_record(record, occurred_at)
        if found is None:
            return
        age, source = found
    if not uses_capd(age):
        return
    raise ProtocolInputError(
        "reason",
        f"is required: an explicit ICANS grade for a child under {ICE_MIN_AGE_YEARS} (age "
        f"{age:.1f} years, {source}) replaces the CAPD; say why the CAPD was not applicable (for "
        "example 'non-verbal infant: the CAPD does not apply at this developmental age'), or "
        "grade from observations with capd_score or capd_items",
    )


def _scale_version(version: Any, scale: str) -> str:
    versions = EXPLICIT_SCALES[scale]
    if not isinstance(version, str) or version not in versions:
        raise ProtocolInputError(
            "scale_version",
            f"{scale} version {version!r} is not allowed; use one of: "
            f"{', '.join(repr(v) for v in versions)} (a text, not a number)",
        )
    return version


def _explicit_grade(grade: Any) -> int:
    if isinstance(grade, bool) or not isinstance(grade, int) or not 1 <= grade <= 5:
        raise ProtocolInputError(
            "grade",
            f"grade {show_number(grade)} is not allowed; an entered grade is a whole number 1 "
            "to 5 (no toxicity is not reported)",
        )
    return grade


# --------------------------------------------------------------------------------------------
# CRS grading
# --------------------------------------------------------------------------------------------


def _astct_hypotension(obs: CrsObservations) -> tuple[int, str]:
    if not obs.hypotension:
        return 0, "no hypotension"
    n = obs.vasopressors
    if n >= 2:
        extra = " plus vasopressin" if obs.vasopressin else ""
        return 4, f"hypotension needing {n} vasopressors (vasopressin not counted){extra}"
    if n == 1:
        extra = " with vasopressin" if obs.vasopressin else ""
        return 3, f"hypotension needing one vasopressor{extra}"
    if obs.vasopressin:
        return 3, "hypotension needing one vasopressor (vasopressin)"
    return 2, "hypotension not needing vasopressors"


def _astct_hypoxia(oxygen: OxygenSupport) -> tuple[int, str]:
    device = oxygen.device
    if device == "none":
        return 0, "no supplemental oxygen (no hypoxia)"
    if device == "low_flow_nasal_cannula":
        flow = oxygen.flow_l_min or 0.0
        if flow > LOW_FLOW_MAX_L_MIN:
            return 3, (
                f"oxygen by nasal cannula at {_g(flow)} L/min (above 6 L/min counts as high flow)"
            )
        return 2, f"oxygen by low-flow nasal cannula at {_g(flow)} L/min (<= 6 L/min)"
    return OXYGEN_DEVICES[device], f"oxygen by {oxygen.words}"


def _therapy(obs: CrsObservations) -> str:
    if obs.anticytokine_given and obs.antipyretics_given:
        return "antipyretics and anti-cytokine therapy"
    return "anti-cytokine therapy" if obs.anticytokine_given else "antipyretics"


def _set_by(hyp: tuple[int, str], hypoxia: tuple[int, str], grade: int) -> tuple[str, list[str]]:
    """Name the domain(s) that set ``grade`` and list the other findings."""
    if hyp[0] == grade and hypoxia[0] == grade:
        return f"hypotension and hypoxia ({hyp[1]}; {hypoxia[1]})", []
    if hyp[0] == grade:
        return f"hypotension ({hyp[1]})", [f"also: {hypoxia[1]} (grade {hypoxia[0]})"]
    return f"hypoxia ({hypoxia[1]})", [f"also: {hyp[1]} (grade {hyp[0]})"]


def _crs_grade(
    grade: int, scale: str, version: str, reasons: list[str], term: str | None
) -> ToxicityGrade:
    return ToxicityGrade(
        kind="CRS",
        term=term or _CANONICAL_TERMS["CRS"],
        grade=grade,
        scale=scale,
        scale_version=version,
        derived=True,
        reasons=tuple(reasons),
    )


def grade_crs_astct(obs: CrsObservations, *, term: str | None = None) -> ToxicityGrade:
    """ASTCT 2019 CRS grade (clinical.md s2): the more severe of hypotension and hypoxia.

    Fever (>= 38.0 C, not attributable to another cause) is required for any grade unless
    antipyretics or anti-cytokine therapy were given; then the grade follows hypotension and
    hypoxia alone. Death due to CRS is grade 5.
    """
    name = "ASTCT 2019 CRS"
    if obs.death_due_to_crs:
        return _crs_grade(5, ASTCT, ASTCT_VERSION, [f"{name} grade 5: death due to CRS"], term)
    temp = obs.temperature
    hyp = _astct_hypotension(obs)
    hypoxia = _astct_hypoxia(obs.oxygen)
    organ = hyp[0] if hyp[0] >= hypoxia[0] else hypoxia[0]
    febrile = temp.is_fever
    fever = febrile and not obs.fever_attributable_to_other_cause
    masked = obs.antipyretics_given or obs.anticytokine_given
    if fever:
        fever_words = f"fever {temp.describe()} (>= 38.0 C)"
    elif febrile:
        fever_words = f"temperature {temp.describe()} attributable to another cause (not CRS fever)"
    else:
        fever_words = f"no fever: {temp.describe()} < 38.0 C"

    if not fever and not masked:
        reasons = [
            f"{name} grade 0 (no CRS): {fever_words}, and no antipyretics or "
            "anti-cytokine therapy given"
        ]
        if organ:
            reasons.append(f"{hyp[1]}; {hypoxia[1]}: without fever these are not graded as CRS")
        return _crs_grade(0, ASTCT, ASTCT_VERSION, reasons, term)
    if organ == 0:
        if fever:
            reasons = [f"{name} grade 1: set by {fever_words}, without hypotension or hypoxia"]
            return _crs_grade(1, ASTCT, ASTCT_VERSION, reasons, term)
        reasons = [
            f"{name} grade 0: fever is not required after {_therapy(obs)}, and there is no "
            f"hypotension and no hypoxia ({fever_words})"
        ]
        return _crs_grade(0, ASTCT, ASTCT_VERSION, reasons, term)
    what, others = _set_by(hyp, hypoxia, organ)
    reasons = [f"{name} grade {organ}: set by {what}", *others]
    if fever:
        reasons.append(fever_words)
    else:
        reasons.append(
            f"fever not required after {_therapy(obs)} ({fever_words}): the grade follows "
            "hypotension and hypoxia"
        )
    return _crs_grade(organ, ASTCT, ASTCT_VERSION, reasons, term)


def _ctcae_hypotension(obs: CrsObservations) -> tuple[int, str]:
    if not obs.hypotension:
        return 0, "no hypotension"
    pressors = obs.vasopressors + (1 if obs.vasopressin else 0)
    if pressors >= 2:
        note = " (vasopressin counts as a pressor in CTCAE)" if obs.vasopressin else ""
        return 4, f"hypotension needing {pressors} pressors{note}: life-threatening"
    if pressors == 1:
        return 3, "hypotension managed with one pressor"
    return 2, "hypotension responding to fluids (no pressor)"


def grade_crs_ctcae(obs: CrsObservations, *, term: str | None = None) -> ToxicityGrade:
    """CTCAE v5 CRS grade from the same observations (clinical.md s2).

    1 fever; 2 hypotension responding to fluids or hypoxia responding to < 40 % O2; 3 hypotension
    managed with one pressor or hypoxia needing >= 40 % O2; 4 several pressors or positive
    pressure ventilation; 5 death. Fever is not required for grades 2-4 (CTCAE does not require
    it). Raises ``ToxicityNotGradableError`` when FiO2 is missing and would change the grade.
    """
    name = "CTCAE v5 CRS"
    if obs.death_due_to_crs:
        return _crs_grade(5, CTCAE, CTCAE_VERSION, [f"{name} grade 5: death due to CRS"], term)
    temp = obs.temperature
    fever = temp.is_fever and not obs.fever_attributable_to_other_cause
    fever_g = 1 if fever else 0
    if fever:
        fever_words = f"fever {temp.describe()} (>= 38.0 C)"
    elif temp.is_fever:
        fever_words = f"temperature {temp.describe()} attributable to another cause (not CRS fever)"
    else:
        fever_words = f"no fever: {temp.describe()} < 38.0 C"
    hyp = _ctcae_hypotension(obs)
    oxygen = obs.oxygen
    device = oxygen.device
    fio2 = oxygen.fio2_pct
    undetermined = False
    if device == "none":
        hypoxia = (0, "no supplemental oxygen (no hypoxia)")
    elif device in POSITIVE_PRESSURE_DEVICES:
        hypoxia = (4, f"positive pressure ventilation ({oxygen.words}): life-threatening")
    elif fio2 is None:
        undetermined = True
        hypoxia = (2, f"oxygen by {oxygen.words}, FiO2 not recorded (grade 2 or 3)")
    elif fio2 >= CTCAE_FIO2_GRADE3_PCT:
        hypoxia = (3, f"hypoxia needing FiO2 {_g(fio2)} % (>= 40 %) by {oxygen.words}")
    else:
        hypoxia = (2, f"hypoxia responding to FiO2 {_g(fio2)} % (< 40 %) by {oxygen.words}")
    known = max(fever_g, hyp[0], 0 if undetermined else hypoxia[0])
    if undetermined and known < 3:
        raise ToxicityNotGradableError(
            "observations.oxygen.fio2_pct",
            f"cannot be graded under CTCAE v5: it grades hypoxia by FiO2 (< 40 % is grade 2, "
            f">= 40 % is grade 3) and no FiO2 was recorded for oxygen by {oxygen.words}; record "
            "fio2_pct, or use the ASTCT 2019 grade",
        )
    if undetermined:
        hypoxia = (hypoxia[0], hypoxia[1] + ", which cannot raise the grade above " + str(known))
    grade = max(known, hypoxia[0])
    if grade == 0:
        return _crs_grade(
            0,
            CTCAE,
            CTCAE_VERSION,
            [f"{name} grade 0: {fever_words}, no hypotension, no hypoxia"],
            term,
        )
    if hyp[0] < grade and hypoxia[0] < grade:
        reasons = [f"{name} grade 1: set by {fever_words}, without hypotension or hypoxia"]
        return _crs_grade(1, CTCAE, CTCAE_VERSION, reasons, term)
    what, others = _set_by(hyp, hypoxia, grade)
    reasons = [f"{name} grade {grade}: set by {what}", *others, fever_words]
    return _crs_grade(grade, CTCAE, CTCAE_VERSION, reasons, term)


# --------------------------------------------------------------------------------------------
# ICANS grading
# --------------------------------------------------------------------------------------------


def _capd_domain(obs: IcansObservations) -> tuple[int, str]:
    """ASTCT 2019, children under 12: CAPD 1-8 is grade 1 or 2 (the other domains decide:
    consciousness 'wakes to voice' makes it 2), >= 9 grade 3, unable to perform grade 4."""
    score = obs.capd_score
    if score is None:
        return 4, "CAPD could not be performed (child unarousable): grade 4"
    if score >= CAPD_GRADE3_MIN:
        return 3, f"CAPD {score}/32 (>= {CAPD_GRADE3_MIN})"
    if score >= 1:
        return 1, (
            f"CAPD {score}/32 (1-{CAPD_GRADE3_MIN - 1}: grade 1, or 2 when the other domains "
            "say so)"
        )
    return 0, "CAPD 0/32"


def _ice_domain(obs: IcansObservations) -> tuple[int, str]:
    if obs.child:
        return _capd_domain(obs)
    score = obs.ice_score
    if score is None:
        return 4, "ICE could not be performed (patient unarousable): counts as ICE 0, grade 4"
    if score == 10:
        return 0, "ICE 10/10"
    if score >= 7:
        return 1, f"ICE {score}/10 (7-9)"
    if score >= 3:
        return 2, f"ICE {score}/10 (3-6)"
    if score >= 1:
        return 3, f"ICE {score}/10 (0-2)"
    if obs.awake_with_global_aphasia:
        return 3, "ICE 0/10 in an awake patient with global aphasia (grade 3, not 4)"
    return 4, "ICE 0/10, not explained by global aphasia in an awake patient"


def grade_icans_astct(obs: IcansObservations, *, term: str | None = None) -> ToxicityGrade:
    """ASTCT 2019 ICANS grade (clinical.md s3): the worst domain not attributable to another cause.

    ICE 10 -> 0, 7-9 -> 1, 3-6 -> 2, 0-2 -> 3; ICE 0 -> 4 unless the patient is awake with
    global aphasia (then 3). Children under 12 are scored with the CAPD instead of the ICE
    (:func:`_capd_domain`); the other domains are graded as for adults.
    """
    name = "ASTCT 2019 ICANS"
    encephalopathy = "ice"
    if obs.child:
        name = f"ASTCT 2019 ICANS (child under {ICE_MIN_AGE_YEARS}: CAPD)"
        encephalopathy = CAPD_DOMAIN
    domains = (
        (encephalopathy, *_ice_domain(obs)),
        (
            "consciousness",
            CONSCIOUSNESS_GRADES[obs.consciousness],
            _CONSCIOUSNESS_WORDS[obs.consciousness],
        ),
        ("seizure", SEIZURE_GRADES[obs.seizure], _SEIZURE_WORDS[obs.seizure]),
        ("motor", MOTOR_GRADES[obs.motor], _MOTOR_WORDS[obs.motor]),
        ("raised_icp", RAISED_ICP_GRADES[obs.raised_icp], _RAISED_ICP_WORDS[obs.raised_icp]),
    )
    excluded = obs.attributable_to_other_cause
    grade = 0
    for domain, g, _ in domains:
        if g > grade and domain not in excluded:
            grade = g
    reasons: list[str] = []
    setters = [words for domain, g, words in domains if g == grade and domain not in excluded]
    if grade == 0:
        reasons.append(f"{name} grade 0 (no ICANS): " + "; ".join(setters))
    else:
        reasons.append(f"{name} grade {grade}: set by " + "; ".join(setters))
        for domain, g, words in domains:
            if 0 < g < grade and domain not in excluded:
                reasons.append(f"also: {words} (grade {g})")
    for domain, g, words in domains:
        if domain in excluded and g > 0:
            reasons.append(
                f"not counted: {words} ({_DOMAIN_WORDS[domain]}, grade {g}) is attributable "
                "to another cause"
            )
    return ToxicityGrade(
        kind="ICANS",
        term=term or _CANONICAL_TERMS["ICANS"],
        grade=grade,
        scale=ASTCT,
        scale_version=ASTCT_VERSION,
        derived=True,
        reasons=tuple(reasons),
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def grade_toxicity(report: ToxicityReport, scale: str | None = None) -> ToxicityGrade:
    """Grade a report: observations under ASTCT 2019 (default) or CTCAE v5 (CRS only);
    an explicit grade is returned as entered and cannot be re-graded under another scale."""
    obs = report.observations
    if obs is None:
        assert report.grade is not None and report.scale is not None
        assert report.scale_version is not None
        if scale is not None and scale != report.scale:
            raise ToxicityNotGradableError(
                "scale",
                f"grade {report.grade} was entered under {report.scale} {report.scale_version} "
                f"without observations, so it cannot be re-graded under {scale!r}; record the "
                "raw observations (CRS or ICANS) to grade under another scale",
            )
        return ToxicityGrade(
            kind=report.kind,
            term=report.term,
            grade=report.grade,
            scale=report.scale,
            scale_version=report.scale_version,
            derived=False,
            reasons=(f"grade {report.grade} entered under {report.scale} {report.scale_version}",),
        )
    if scale is not None and scale not in GRADING_SCALES:
        raise ProtocolInputError(
            "scale",
            f"scale {scale!r} is not allowed; use 'ASTCT' (2019) or 'CTCAE' (5.0, CRS only)",
        )
    if isinstance(obs, CrsObservations):
        if scale == CTCAE:
            return grade_crs_ctcae(obs, term=report.term)
        return grade_crs_astct(obs, term=report.term)
    if scale == CTCAE:
        raise ToxicityNotGradableError(
            "scale",
            "ICANS observations cannot be graded under CTCAE v5: it has no ICANS term (it grades "
            "encephalopathy, seizure and other findings separately); use ASTCT 2019, or enter "
            "each CTCAE term as an explicit grade",
        )
    return grade_icans_astct(obs, term=report.term)
