"""Typed payloads at the edge: the shape of every protocol payload as ``msgspec.Struct`` types.

Each parser (``parse_screening``, ``parse_toxicity_report``, ``parse_response_assessment``,
``parse_weight``, ``parse_cell_dose``) decodes its input with one ``msgspec.convert`` into the
Struct below (types, ranges as ``msgspec.Meta``, allowed words as ``Literal``, unknown keys
refused), then checks what a type cannot say (a lab value's plausible range in its unit, one
field against another). Only when that fails does it run the field-by-field checks, which name
**every** invalid field with the clinical wording (``ProtocolInputError.problems``).

The Structs are the payloads' types for documentation and schemas:
``msgspec.json.schema(ScreeningPayload)``. They are at least as strict as the field-by-field
checks (a payload they refuse is judged again field by field), never less.

``to_json`` of the parsed values stays byte for byte what it was (events are hash-chained):
value objects whose JSON is their fields in order take it from :class:`FieldsJson`, which
writes the method from the class's fields once.

Pure code: stdlib, attrs and msgspec only.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, TypeAlias

import attrs
import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "PAYLOAD_TYPES",
    "AdverseEventPayload",
    "BilirubinPayload",
    "CapdItemsPayload",
    "CauseOfDeathPayload",
    "CellCountPayload",
    "CellDosePayload",
    "CreatininePayload",
    "CrsObservationsPayload",
    "CrsReportPayload",
    "FieldsJson",
    "FollowUpPayload",
    "HemoglobinPayload",
    "IcansObservationsPayload",
    "IcansReportPayload",
    "IceItemsPayload",
    "MissedVisitPayload",
    "MrdPayload",
    "OtherReportPayload",
    "OxygenPayload",
    "PreInfusionPayload",
    "ResponseAssessmentPayload",
    "SaeReportPayload",
    "ScreeningPayload",
    "TemperaturePayload",
    "ToxicityReportPayload",
    "TransaminasePayload",
    "WeightPayload",
    "convert",
]

#: Input plausibility (not criteria): more failed standard lines, or a longer life expectancy,
#: than these is a keying error (docs/protocol.md, "Input plausibility limits").
MAX_FAILED_LINES: Final = 50
MAX_LIFE_EXPECTANCY_MONTHS: Final = 1200

# A JSON number, int or float (never a bool), kept as given: an int stays an int.
NonNegative: TypeAlias = Annotated[int, Meta(ge=0)] | Annotated[float, Meta(ge=0)]
Positive: TypeAlias = Annotated[int, Meta(gt=0)] | Annotated[float, Meta(gt=0)]
Percent: TypeAlias = Annotated[int, Meta(ge=0, le=100)] | Annotated[float, Meta(ge=0, le=100)]


#: A calendar date, YYYY-MM-DD (the schema states the pattern the parsers read).
DATE_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}$"
Date: TypeAlias = Annotated[
    datetime.date,
    Meta(description="a calendar date, YYYY-MM-DD", extra_json_schema={"pattern": DATE_PATTERN}),
]


class _Payload(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Common configuration: unknown keys are refused; fields are given by name."""


def convert(data: Any, type_: Any, nested: tuple[tuple[str, ...], ...] = ()) -> Any:
    """``msgspec.convert`` (strict: no bool for a number, no text for a number), or ``None``
    when ``data`` does not fit ``type_`` (the caller then checks field by field).

    Only plain JSON objects (``dict``) are decoded here: msgspec does not refuse unknown keys of
    another mapping type (a ``MappingProxyType``), so ``data`` and the object at each ``nested``
    path (``("observations", "oxygen")``) must be a ``dict``; other mappings are left to the
    field-by-field checks."""
    if type(data) is not dict:
        return None
    for path in nested:
        value: Any = data
        for key in path:
            value = value.get(key)
            if type(value) is not dict:
                break
        if value is not None and type(value) is not dict and isinstance(value, Mapping):
            return None
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError:
        return None


# --------------------------------------------------------------------------------------------
# Screening (eligibility.py)
# --------------------------------------------------------------------------------------------

CreatinineUnit: TypeAlias = Literal["mg/dL", "umol/L"]
TransaminaseUnit: TypeAlias = Literal["U/L"]
BilirubinUnit: TypeAlias = Literal["mg/dL", "umol/L"]
HemoglobinUnit: TypeAlias = Literal["g/L", "g/dL"]


class CreatininePayload(_Payload, frozen=True):
    """Creatinine with its unit and the site's upper limit of normal (ULN); the ULN is in the
    value's unit unless ``uln_unit`` says otherwise."""

    value: NonNegative
    unit: CreatinineUnit
    uln: Positive
    uln_unit: CreatinineUnit | UnsetType = UNSET


class TransaminasePayload(_Payload, frozen=True):
    """ALT or AST with its unit and the site's ULN."""

    value: NonNegative
    unit: TransaminaseUnit
    uln: Positive
    uln_unit: TransaminaseUnit | UnsetType = UNSET


class BilirubinPayload(_Payload, frozen=True):
    value: NonNegative
    unit: BilirubinUnit


class HemoglobinPayload(_Payload, frozen=True):
    value: NonNegative
    unit: HemoglobinUnit


_Flag: TypeAlias = bool | UnsetType


class ScreeningPayload(_Payload, frozen=True):
    """Screening values (``docs/eligibility.md``): an absent key is a missing value; ``null`` is
    refused except for ``last_systemic_glucocorticoid`` (never given)."""

    diagnosis_rr_b_all: _Flag = UNSET
    failed_standard_lines: Annotated[int, Meta(ge=0, le=MAX_FAILED_LINES)] | UnsetType = UNSET
    effective_standard_option: _Flag = UNSET
    cd19_expressed: _Flag = UNSET
    kps: Annotated[int, Meta(ge=0, le=100)] | UnsetType = UNSET
    life_expectancy_months: (
        Annotated[int, Meta(ge=0, le=MAX_LIFE_EXPECTANCY_MONTHS)]
        | Annotated[float, Meta(ge=0, le=MAX_LIFE_EXPECTANCY_MONTHS)]
        | UnsetType
    ) = UNSET
    lvef_pct: Percent | UnsetType = UNSET
    ecg_obvious_abnormality: _Flag = UNSET
    spo2_room_air_pct: Percent | UnsetType = UNSET
    creatinine: CreatininePayload | UnsetType = UNSET
    alt: TransaminasePayload | UnsetType = UNSET
    ast: TransaminasePayload | UnsetType = UNSET
    bilirubin: BilirubinPayload | UnsetType = UNSET
    hemoglobin: HemoglobinPayload | UnsetType = UNSET
    apheresis_contraindication: _Flag = UNSET
    informed_consent_signed: _Flag = UNSET
    informed_consent_date: Date | UnsetType = UNSET
    other_primary_malignancy: _Flag = UNSET
    severe_uncontrolled_disease: _Flag = UNSET
    uncontrolled_active_infection: _Flag = UNSET
    hiv: _Flag = UNSET
    hbv: _Flag = UNSET
    hcv: _Flag = UNSET
    pregnant: _Flag = UNSET
    nursing: _Flag = UNSET
    #: A date, or null when never given (the text "none" is accepted too: msgspec cannot hold a
    #: date and a literal text in one union, so ``schemas.py`` adds it to the schema).
    last_systemic_glucocorticoid: Date | UnsetType | None = UNSET


# --------------------------------------------------------------------------------------------
# Toxicity (toxicity.py)
# --------------------------------------------------------------------------------------------

OxygenDevice: TypeAlias = Literal[
    "none",
    "low_flow_nasal_cannula",
    "blow_by",
    "high_flow_nasal_cannula",
    "facemask",
    "non_rebreather",
    "venturi",
    "cpap",
    "bipap",
    "mechanical_ventilation",
]
IcansDomain: TypeAlias = Literal["ice", "consciousness", "seizure", "motor", "raised_icp", "capd"]


class TemperaturePayload(_Payload, frozen=True):
    """Highest body temperature: 25 to 45 C or 77 to 113 F."""

    value: Annotated[int, Meta(ge=25, le=113)] | Annotated[float, Meta(ge=25.0, le=113.0)]
    unit: Literal["C", "F"]


class OxygenPayload(_Payload, frozen=True):
    device: OxygenDevice
    flow_l_min: Annotated[int, Meta(ge=0, le=100)] | Annotated[float, Meta(ge=0, le=100)] | None = (
        None
    )
    fio2_pct: Annotated[int, Meta(ge=21, le=100)] | Annotated[float, Meta(ge=21, le=100)] | None = (
        None
    )


class CrsObservationsPayload(_Payload, frozen=True, kw_only=True):
    temperature: TemperaturePayload
    fever_attributable_to_other_cause: bool = False
    antipyretics_given: bool = False
    anticytokine_given: bool = False
    hypotension: bool
    vasopressors: Annotated[int, Meta(ge=0, le=10)] = 0
    vasopressin: bool = False
    oxygen: OxygenPayload
    death_due_to_crs: bool = False


class IceItemsPayload(_Payload, frozen=True):
    orientation: Annotated[int, Meta(ge=0, le=4)]
    naming: Annotated[int, Meta(ge=0, le=3)]
    command: Annotated[int, Meta(ge=0, le=1)]
    writing: Annotated[int, Meta(ge=0, le=1)]
    attention: Annotated[int, Meta(ge=0, le=1)]


class CapdItemsPayload(_Payload, frozen=True):
    """The eight CAPD items (Cornell Assessment of Pediatric Delirium), each 0-4 as scored on
    the form (items 1-4 are scored in reverse: "never" is 4); issue 20."""

    eye_contact: Annotated[int, Meta(ge=0, le=4)]
    purposeful_actions: Annotated[int, Meta(ge=0, le=4)]
    aware_of_surroundings: Annotated[int, Meta(ge=0, le=4)]
    communicates_needs_and_wants: Annotated[int, Meta(ge=0, le=4)]
    restless: Annotated[int, Meta(ge=0, le=4)]
    inconsolable: Annotated[int, Meta(ge=0, le=4)]
    underactive: Annotated[int, Meta(ge=0, le=4)]
    long_time_to_respond: Annotated[int, Meta(ge=0, le=4)]


class IcansObservationsPayload(_Payload, frozen=True, kw_only=True):
    age_years: Annotated[int, Meta(ge=0, le=130)] | Annotated[float, Meta(ge=0, le=130)]
    #: 0-10; null only when the patient is unarousable (the ICE cannot be performed).
    ice_score: Annotated[int, Meta(ge=0, le=10)] | UnsetType | None = UNSET
    ice_items: IceItemsPayload | UnsetType | None = UNSET
    #: Children under 12 (issue 20): the CAPD total 0-32 instead of the ICE score; null only
    #: when the CAPD cannot be performed (the child is unarousable).
    capd_score: Annotated[int, Meta(ge=0, le=32)] | UnsetType | None = UNSET
    capd_items: CapdItemsPayload | UnsetType | None = UNSET
    consciousness: Literal[
        "none", "wakes_spontaneously", "wakes_to_voice", "wakes_to_touch", "stupor_or_coma"
    ]
    seizure: Literal[
        "none", "rapid_resolving_or_nonconvulsive_eeg_resolved", "life_threatening_or_repetitive"
    ] = "none"
    motor: Literal["none", "deep_focal_weakness"] = "none"
    raised_icp: Literal["none", "focal_local_edema", "diffuse_edema_or_signs"] = "none"
    awake_with_global_aphasia: bool = False
    attributable_to_other_cause: list[IcansDomain] = []


Term: TypeAlias = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=r"\S",
        description="the toxicity's name (CTCAE term); needed for 'other'",
    ),
]
Grade: TypeAlias = Annotated[int, Meta(ge=1, le=5)]


class _Report(_Payload, frozen=True, tag_field="kind"):
    """A reported toxicity: raw observations, or an explicit grade with its scale."""

    term: Term | None = None
    grade: Grade | UnsetType = UNSET
    scale: Literal["ASTCT", "CTCAE"] | UnsetType = UNSET
    scale_version: str | UnsetType = UNSET


class CrsReportPayload(_Report, frozen=True, tag="CRS"):
    observations: CrsObservationsPayload | UnsetType = UNSET


class IcansReportPayload(_Report, frozen=True, tag="ICANS"):
    observations: IcansObservationsPayload | UnsetType = UNSET
    #: With an explicit grade (issue 20): the patient's age; under 12 with no CAPD, the
    #: command's reason says why the CAPD was not applicable.
    age_years: (
        Annotated[int, Meta(ge=0, le=130)] | Annotated[float, Meta(ge=0, le=130)] | UnsetType
    ) = UNSET


class OtherReportPayload(_Report, frozen=True, tag="other"):
    """Any other toxicity: a term and an explicit CTCAE grade."""


#: A toxicity report, discriminated by ``kind``.
ToxicityReportPayload: TypeAlias = CrsReportPayload | IcansReportPayload | OtherReportPayload


# --------------------------------------------------------------------------------------------
# Response (response.py)
# --------------------------------------------------------------------------------------------


class CellCountPayload(_Payload, frozen=True):
    value: NonNegative
    unit: Literal["10^9/L", "/uL"]


class MrdPayload(_Payload, frozen=True):
    value: Percent
    unit: Literal["fraction", "%"]
    method: Literal["flow", "NGS", "PCR"]
    sensitivity: Annotated[int, Meta(gt=0, le=1)] | Annotated[float, Meta(gt=0, le=1)]


class ResponseAssessmentPayload(_Payload, frozen=True):
    marrow_blasts_pct: Percent
    baseline_marrow_blasts_pct: Percent | None = None
    circulating_blasts_present: bool | None = None
    circulating_blasts_pct: Percent | None = None
    anc: CellCountPayload | None = None
    platelets: CellCountPayload | None = None
    extramedullary_disease: Literal["none", "present"] | None = None
    cns_status: Literal["CNS1", "CNS2", "CNS3"] | None = None
    baseline_extramedullary_disease: Literal["none", "present"] | None = None
    mrd: MrdPayload | None = None
    criteria: Literal["harmonised B-ALL (NCCN/CIBMTR)"] | None = None


# --------------------------------------------------------------------------------------------
# After the course (follow_up.py): adverse events, SAE reports, follow-up visits, death
# --------------------------------------------------------------------------------------------

#: Attribution to the CAR-T product.
Attribution: TypeAlias = Literal["unrelated", "unlikely", "possible", "probable", "definite"]
#: Seriousness criteria of ICH E2A (hospitalisation: initial or prolonged).
SeriousnessCriterion: TypeAlias = Literal[
    "death",
    "life_threatening",
    "hospitalisation",
    "persistent_disability",
    "congenital_anomaly",
    "important_medical_event",
]
AeOutcome: TypeAlias = Literal[
    "recovered", "recovering", "not_recovered", "recovered_with_sequelae", "fatal", "unknown"
]
Text200: TypeAlias = Annotated[str, Meta(min_length=1, max_length=200)]
Text2000: TypeAlias = Annotated[str, Meta(min_length=1, max_length=2000)]
#: An instant as the contract writes its times (RFC 3339, YYYY-MM-DDThh:mm[:ss[.fraction]] with
#: Z or +hh:mm), within its plausible window: a year from 1900, an offset of at most 14:00.
INSTANT_PATTERN: Final = (
    r"^(19|[2-9][0-9])[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)$"
)
#: (The parser checks the pattern, with a clinical message: ``follow_up._instant``.)
Instant: TypeAlias = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="an instant with its UTC offset, e.g. 2026-03-01T14:30:00+01:00",
        extra_json_schema={"format": "date-time", "pattern": INSTANT_PATTERN},
    ),
]


class AdverseEventPayload(_Payload, frozen=True):
    """What makes a toxicity report an adverse event report: attribution, seriousness (ICH
    E2A), expectedness, outcome and when the site became aware (an ISO time with its offset)."""

    attribution: Attribution | UnsetType = UNSET
    seriousness: list[SeriousnessCriterion] = []
    expected: bool | UnsetType = UNSET
    outcome: AeOutcome | UnsetType = UNSET
    aware_at: Instant | UnsetType = UNSET


class SaeReportPayload(_Payload, frozen=True):
    """A safety report sent (the command's clinical time is when it was sent)."""

    case_id: Text200
    report: Literal["initial", "follow_up", "expedited"]
    sent_to: Text200
    reference: Text200 | UnsetType = UNSET


class FollowUpMrdPayload(_Payload, frozen=True):
    method: Literal["flow", "NGS", "PCR"]
    value: Percent
    unit: Literal["fraction", "%"]


class DiseaseStatusPayload(_Payload, frozen=True):
    """Disease status at a follow-up visit: remission or relapse (a relapse names its CD19
    status), MRD with its method and value, marrow blasts."""

    status: Literal["remission", "relapse"]
    cd19: Literal["positive", "negative"] | UnsetType = UNSET
    mrd: FollowUpMrdPayload | UnsetType = UNSET
    marrow_blasts_pct: Percent | UnsetType = UNSET


class IgGPayload(_Payload, frozen=True):
    value: NonNegative
    unit: Literal["g/L", "mg/dL"]


class NewMalignancyPayload(_Payload, frozen=True):
    """A new malignancy; T-cell malignancies are named separately (FDA 2024 boxed warning)."""

    kind: Literal["t_cell", "other"]
    description: Text2000 | UnsetType = UNSET


class FollowUpPayload(_Payload, frozen=True):
    visit: Text200
    disease_status: DiseaseStatusPayload
    vital_status: Literal["alive"] = "alive"
    b_cell_aplasia: bool | UnsetType = UNSET
    igg: IgGPayload | UnsetType = UNSET
    ig_replacement: bool | UnsetType = UNSET
    new_malignancy: NewMalignancyPayload | None = None
    note: Text2000 | UnsetType = UNSET


class MissedVisitPayload(_Payload, frozen=True):
    visit: Text200
    missed_reason: Text2000


class CauseOfDeathPayload(_Payload, frozen=True):
    """A death's structured cause: its category, the episode (``toxicity_id``) when an adverse
    event or toxicity caused it, and its relatedness to the product."""

    category: Literal["disease_progression", "adverse_event", "infection", "other"]
    toxicity_id: Text200 | UnsetType = UNSET
    related: Attribution | UnsetType = UNSET


# --------------------------------------------------------------------------------------------
# Dosing (dosing.py)
# --------------------------------------------------------------------------------------------


class WeightPayload(_Payload, frozen=True):
    value: Annotated[int, Meta(gt=0)] | Annotated[float, Meta(gt=0)]
    unit: Literal["kg", "g", "lb"]


class CellDosePayload(_Payload, frozen=True):
    value: Positive
    unit: Literal["cells", "cells/kg"]


# --------------------------------------------------------------------------------------------
# The pre-infusion gate (pre_infusion.py, issue 20)
# --------------------------------------------------------------------------------------------


class GateTemperaturePayload(_Payload, frozen=True):
    """The highest body temperature before a fraction: 30 to 45 C or 86 to 113 F."""

    value: Annotated[int, Meta(ge=30, le=113)] | Annotated[float, Meta(ge=30.0, le=113.0)]
    unit: Literal["C", "F"]


#: A room-air SpO2 the gate reads, in %: 50 to 100 (below 50 % is an input error, most often a
#: fraction typed as a percent: ``pre_infusion.SPO2_PLAUSIBLE_MIN_PCT``).
GateSpo2: TypeAlias = (
    Annotated[int, Meta(ge=50, le=100)] | Annotated[float, Meta(ge=50.0, le=100.0)]
)


class PreInfusionPayload(_Payload, frozen=True):
    """What the pre-infusion gate reads: the highest temperature in the last 48 h (the
    protocol's window) with its unit (plausible 30-45 C / 86-113 F), room-air SpO2 in %
    (plausible 50-100: send 95, not 0.95), vasopressors in use, an uncontrolled active
    infection."""

    highest_temperature: GateTemperaturePayload
    spo2_room_air_pct: GateSpo2
    vasopressors: bool
    uncontrolled_active_infection: bool


#: Every payload type by the name the schemas use (``schemas.py``'s definitions).
PAYLOAD_TYPES: Final[dict[str, Any]] = {
    "screening": ScreeningPayload,
    "toxicity": ToxicityReportPayload,
    "crs_observations": CrsObservationsPayload,
    "icans_observations": IcansObservationsPayload,
    "assessment": ResponseAssessmentPayload,
    "weight": WeightPayload,
    "cells": CellDosePayload,
    "adverse_event": AdverseEventPayload,
    "sae_report": SaeReportPayload,
    "follow_up": FollowUpPayload,
    "missed_visit": MissedVisitPayload,
    "cause_of_death": CauseOfDeathPayload,
    "pre_infusion": PreInfusionPayload,
}


# --------------------------------------------------------------------------------------------
# to_json of value objects
# --------------------------------------------------------------------------------------------


_PLAIN_TYPES: Final = frozenset(("float", "int", "str", "bool", "None"))


def _field_code(name: str, annotation: Any) -> str:
    """The expression for one field in the compiled ``to_json``: a plain value as it is, a
    tuple as a list, a value object by its own ``to_json`` (``None`` kept)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = {part.strip() for part in text.split("|")}
    if parts and parts <= _PLAIN_TYPES:
        return f"self.{name}"
    if text.startswith("tuple["):
        return f"list(self.{name})"
    if parts - {"None"} and all(p[:1].isupper() for p in parts - {"None"}):
        if "None" in parts:
            return f"(None if self.{name} is None else self.{name}.to_json())"
        return f"self.{name}.to_json()"
    return f"_any_json(self.{name})"


def _any_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_any_json(v) for v in value]
    to_json = getattr(value, "to_json", None)
    return value if to_json is None else to_json()


def _compile_to_json(cls: type) -> Callable[[Any], dict[str, Any]]:
    """``def to_json(self): return {"value": self.value, "unit": self.unit}`` for an attrs
    class, written once from its fields (as attrs writes ``__init__``)."""
    items = ", ".join(f"{a.name!r}: {_field_code(a.name, a.type)}" for a in attrs.fields(cls))
    namespace: dict[str, Any] = {"_any_json": _any_json}
    exec(f"def to_json(self):\n    return {{{items}}}\n", namespace)
    to_json: Callable[[Any], dict[str, Any]] = namespace["to_json"]
    to_json.__qualname__ = f"{cls.__qualname__}.to_json"
    to_json.__doc__ = "The JSON of the value: its fields in order (written from the fields)."
    return to_json


class FieldsJson:
    """Mixin for attrs value objects whose JSON is their fields in order: a tuple as a list, a
    nested value object by its own ``to_json`` -- the form every event of the previous release
    stores. The method is written from the class's fields on first use, as fast as the
    hand-written dict literal it replaces (tests/unit/test_payloads.py compares the bytes)."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        cls = type(self)
        to_json = _COMPILED.get(cls)
        if to_json is None:  # first use: write it, and put it on the class
            to_json = _COMPILED[cls] = _compile_to_json(cls)
            type.__setattr__(cls, "to_json", to_json)
        return to_json(self)


#: The compiled ``to_json`` of each class (a method bound before the first use still finds it).
_COMPILED: dict[type, Callable[[Any], dict[str, Any]]] = {}
