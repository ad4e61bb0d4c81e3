"""One JSON Schema (draft 2020-12) per command of the contract: envelope and payload.

The schemas describe what the service accepts, for documentation, for clients and for the HTTP
OpenAPI document; the service's own parsers stay the authority (they also check what a schema
cannot, such as a toxicity id that exists or a dose against the plan) and name the failing field.
Units and choices are taken from the protocol's constants, so the schemas follow the protocol.

Each command's payload schema is written in its definition (``protocol/registry.py``); the
envelopes and the shared ``$defs`` are assembled here, for any registry (default: the real one).

>>> from .contract import ALL_COMMANDS
>>> sorted(SCHEMAS) == sorted(ALL_COMMANDS)
True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Final

from .contract import (
    ENVELOPE_KEYS,
    MAX_CLOCK_SKEW,
    MAX_VERSION,
    TIME_PATTERN,
    WRITE_ROLES,
)
from .protocol import dosing, response, toxicity
from .protocol.eligibility import SCREENING_KEYS
from .protocol.registry import REGISTRY, Registry
from .protocol.schema_parts import BOOL as _BOOL
from .protocol.schema_parts import DATE as _DATE
from .protocol.schema_parts import PCT as _PCT
from .protocol.schema_parts import Schema
from .protocol.schema_parts import nullable as _nullable
from .protocol.schema_parts import obj as _obj
from .protocol.schema_parts import quantity as _quantity
from .protocol.schema_parts import text as _text

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
BASE_ID: Final = "https://cart-course.example/schemas/commands/"

_ = MAX_CLOCK_SKEW  # documented in the envelope's occurred_at description

_CREATININE_UNITS: Final = ("mg/dL", "umol/L")
_TRANSAMINASE_UNITS: Final = ("U/L",)
_BILIRUBIN_UNITS: Final = ("mg/dL", "umol/L")
_HEMOGLOBIN_UNITS: Final = ("g/L", "g/dL")


def _lab_with_uln(units: tuple[str, ...], name: str) -> Schema:
    return _obj(
        {
            "value": {"type": "number", "minimum": 0},
            "unit": {"enum": list(units)},
            "uln": {"type": "number", "exclusiveMinimum": 0},
            "uln_unit": {"enum": list(units)},
        },
        ("value", "unit", "uln"),
        f"{name} with its unit and the site's upper limit of normal (uln, in uln_unit or unit)",
    )


def _screening() -> Schema:
    props: dict[str, Schema] = {
        "diagnosis_rr_b_all": _BOOL,
        "failed_standard_lines": {"type": "integer", "minimum": 0},
        "effective_standard_option": _BOOL,
        "cd19_expressed": _BOOL,
        "kps": {"type": "integer", "minimum": 0, "maximum": 100},
        "life_expectancy_months": {"type": "number", "minimum": 0},
        "lvef_pct": _PCT,
        "ecg_obvious_abnormality": _BOOL,
        "spo2_room_air_pct": _PCT,
        "creatinine": _lab_with_uln(_CREATININE_UNITS, "creatinine"),
        "alt": _lab_with_uln(_TRANSAMINASE_UNITS, "ALT"),
        "ast": _lab_with_uln(_TRANSAMINASE_UNITS, "AST"),
        "bilirubin": _quantity(_BILIRUBIN_UNITS, "total bilirubin with its unit"),
        "hemoglobin": _quantity(_HEMOGLOBIN_UNITS, "hemoglobin with its unit"),
        "apheresis_contraindication": _BOOL,
        "informed_consent_signed": _BOOL,
        "informed_consent_date": _DATE,
        "other_primary_malignancy": _BOOL,
        "severe_uncontrolled_disease": _BOOL,
        "uncontrolled_active_infection": _BOOL,
        "hiv": _BOOL,
        "hbv": _BOOL,
        "hcv": _BOOL,
        "pregnant": _BOOL,
        "nursing": _BOOL,
        "last_systemic_glucocorticoid": {
            "anyOf": [_DATE, {"type": "null"}, {"const": "none"}],
            "description": "date of the last systemic glucocorticoid dose; null or 'none' if never",
        },
    }
    assert tuple(props) == SCREENING_KEYS, "schema and eligibility parser disagree"
    return _obj(
        props,
        description="Screening values with units; a key left out is a value not known yet.",
    )


def _crs_observations() -> Schema:
    return _obj(
        {
            "temperature": _obj(
                {"value": {"type": "number"}, "unit": {"enum": list(toxicity.TEMPERATURE_RANGE)}},
                ("value", "unit"),
                "highest body temperature",
            ),
            "fever_attributable_to_other_cause": _BOOL,
            "antipyretics_given": _BOOL,
            "anticytokine_given": _BOOL,
            "hypotension": _BOOL,
            "vasopressors": {
                "type": "integer",
                "minimum": 0,
                "maximum": toxicity.MAX_VASOPRESSORS,
                "description": "number of vasopressors (vasopressin not counted)",
            },
            "vasopressin": _BOOL,
            "oxygen": _obj(
                {
                    "device": {"enum": list(toxicity.OXYGEN_DEVICES)},
                    "flow_l_min": {"type": "number", "minimum": 0},
                    "fio2_pct": {"type": "number", "minimum": 21, "maximum": 100},
                },
                ("device",),
                "oxygen support",
            ),
            "death_due_to_crs": _BOOL,
        },
        ("temperature", "hypotension", "oxygen"),
        "CRS observations, graded by ASTCT 2019",
    )


def _icans_observations() -> Schema:
    return _obj(
        {
            "age_years": {"type": "number", "minimum": 0, "maximum": toxicity.MAX_AGE_YEARS},
            "ice_score": _nullable({"type": "integer", "minimum": 0, "maximum": 10}),
            "ice_items": _obj(
                {
                    k: {"type": "integer", "minimum": 0, "maximum": top}
                    for k, top in toxicity.ICE_ITEMS.items()
                },
                tuple(toxicity.ICE_ITEMS),
            ),
            "consciousness": {"enum": list(toxicity.CONSCIOUSNESS_GRADES)},
            "seizure": {"enum": list(toxicity.SEIZURE_GRADES)},
            "motor": {"enum": list(toxicity.MOTOR_GRADES)},
            "raised_icp": {"enum": list(toxicity.RAISED_ICP_GRADES)},
            "awake_with_global_aphasia": _BOOL,
            "attributable_to_other_cause": {
                "type": "array",
                "items": {"enum": list(toxicity.ICANS_DOMAINS)},
            },
        },
        ("age_years", "consciousness"),
        "ICANS observations, graded by ASTCT 2019 (ICE score or items)",
    )


def _toxicity_report() -> Schema:
    explicit: dict[str, Schema] = {
        "grade": {"type": "integer", "minimum": 1, "maximum": 5},
        "scale": {"enum": list(toxicity.EXPLICIT_SCALES)},
        "scale_version": {
            "enum": sorted({v for vs in toxicity.EXPLICIT_SCALES.values() for v in vs})
        },
    }
    schema = _obj(
        {
            "kind": {"enum": list(toxicity.KINDS)},
            "term": _nullable(_text(200, "the toxicity's name (CTCAE term); needed for 'other'")),
            "observations": {"type": "object"},
            **explicit,
        },
        ("kind",),
        "A toxicity: CRS or ICANS observations (graded by the service), or an explicit grade "
        "with its scale and scale version.",
    )
    schema["oneOf"] = [
        {"required": ["observations"], "not": {"anyOf": [{"required": [k]} for k in explicit]}},
        {"required": list(explicit), "not": {"required": ["observations"]}},
    ]
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": "CRS"}}, "required": ["observations"]},
            "then": {"properties": {"observations": {"$ref": "#/$defs/crs_observations"}}},
        },
        {
            "if": {"properties": {"kind": {"const": "ICANS"}}, "required": ["observations"]},
            "then": {"properties": {"observations": {"$ref": "#/$defs/icans_observations"}}},
        },
        {
            "if": {"properties": {"kind": {"const": "other"}}},
            "then": {
                "required": ["term", "grade"],
                "properties": {"term": _text(200)},
            },
        },
    ]
    return schema


def _assessment() -> Schema:
    count = _quantity(response.COUNT_UNITS, "a blood count with its unit")
    return _obj(
        {
            "marrow_blasts_pct": _PCT,
            "baseline_marrow_blasts_pct": _nullable(_PCT),
            "circulating_blasts_present": _nullable(_BOOL),
            "circulating_blasts_pct": _nullable(_PCT),
            "anc": _nullable(count),
            "platelets": _nullable(count),
            "extramedullary_disease": _nullable({"enum": list(response.EMD_STATUSES)}),
            "cns_status": _nullable({"enum": list(response.CNS_STATUSES)}),
            "baseline_extramedullary_disease": _nullable({"enum": list(response.EMD_STATUSES)}),
            "mrd": _nullable(
                _obj(
                    {
                        "value": {"type": "number", "minimum": 0},
                        "unit": {"enum": list(response.MRD_UNITS)},
                        "method": {"enum": list(response.MRD_METHODS)},
                        "sensitivity": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                    ("value", "unit", "method", "sensitivity"),
                    "measurable residual disease (MRD)",
                )
            ),
            "criteria": _nullable({"enum": list(response.CRITERIA_SETS)}),
        },
        ("marrow_blasts_pct",),
        "Response assessment values; the service computes CR, CRi, PR or NR from them.",
    )


DEFS: Final[Schema] = {
    "actor": _obj(
        {
            "id": _text(200, "who records the command (user or system id)"),
            "role": {"enum": list(WRITE_ROLES)},
            "name": _nullable(_text(200, "the person's name, for signatures and reports")),
        },
        ("id", "role"),
        "Who records the command. A token's identity replaces it over HTTP.",
    ),
    "cells": {
        **_quantity(dosing.CELL_UNITS, "", minimum=0),
        "description": "cells given: absolute ('cells') or per kg of the course's weight",
        "properties": {
            "value": {"type": "number", "exclusiveMinimum": 0},
            "unit": {"enum": list(dosing.CELL_UNITS)},
        },
    },
    "weight": {
        **_quantity(tuple(dosing.WEIGHT_UNITS), ""),
        "description": "body weight on D1 (plans the course dose)",
    },
    "screening": _screening(),
    "toxicity": _toxicity_report(),
    "crs_observations": _crs_observations(),
    "icans_observations": _icans_observations(),
    "assessment": _assessment(),
}


def command_schema(command: str, registry: Registry = REGISTRY) -> Schema:
    """The JSON Schema of one command's envelope (with its payload), from its definition."""
    definition = registry.commands.get(command)
    if definition is None:
        raise KeyError(f"{command!r} is not a command; commands are: {', '.join(registry.names)}")
    reason_required = definition.reason == "always"
    reason = _text(4000, "why; required for this command")
    required = ["command", "patient_id", "occurred_at", "actor"]
    if reason_required:
        required.append("reason")
    properties: dict[str, Schema] = {
        "command": {"const": command},
        "patient_id": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._:-]{1,64}$",
            "description": "the trial's patient identifier",
        },
        "occurred_at": {
            "type": "string",
            "format": "date-time",
            "pattern": TIME_PATTERN,
            "description": "clinical time: when it happened, RFC 3339 (ISO 8601 extended "
            "format) YYYY-MM-DDThh:mm[:ss[.fraction]] with Z or +hh:mm/-hh:mm; not more than "
            "5 minutes in the future",
        },
        "actor": {"$ref": "#/$defs/actor"},
        "reason": reason if reason_required else _nullable(_text(4000)),
        "idempotency_key": _nullable(
            _text(200, "the same key and command again returns the first result")
        ),
        "expected_version": _nullable(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_VERSION,
                "description": "the patient's version the caller decided on (0: not on record); "
                "an integer (the service refuses 4.0, which JSON Schema counts as an integer)",
            }
        ),
        "payload": copy.deepcopy(definition.payload_schema),
    }
    assert set(properties) == set(ENVELOPE_KEYS)
    return {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}{command}.json",
        "title": command,
        "description": definition.summary,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        "$defs": schema_defs(registry),
    }


def schema_defs(registry: Registry = REGISTRY) -> Schema:
    """The shared definitions (``#/$defs/...``): :data:`DEFS` and those the commands bring."""
    defs = copy.deepcopy(DEFS)
    for definition in registry:
        defs.update(copy.deepcopy(dict(definition.schema_defs)))
    return defs


def build_schemas(registry: Registry = REGISTRY) -> dict[str, Schema]:
    """One envelope schema per command of ``registry``, by name."""
    return {name: command_schema(name, registry) for name in registry.names}


SCHEMAS: Final[dict[str, Schema]] = build_schemas()


def envelope_schema(registry: Registry = REGISTRY) -> Schema:
    """Any command: dispatches on ``command`` to the command's own schema."""
    return {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}command.json",
        "title": "command",
        "type": "object",
        "required": ["command"],
        "properties": {"command": {"enum": list(registry.names)}},
        "allOf": [
            {
                "if": {"properties": {"command": {"const": name}}},
                "then": {"$ref": f"{BASE_ID}{name}.json"},
            }
            for name in registry.names
        ],
    }


def request_body_schema(
    schemas: Mapping[str, Schema] | None = None, ref_prefix: str | None = None
) -> Schema:
    """The request body of ``POST /v1/commands`` for OpenAPI 3.1: a ``oneOf`` of the commands'
    envelopes, discriminated by ``command``. ``schemas``: the envelopes by name (default
    :data:`SCHEMAS`; ``build_schemas(registry)`` for another registry). With ``ref_prefix``
    (e.g. ``"#/components/schemas/"``) each member is a ``$ref`` to ``<prefix><name>`` (the
    caller registers the envelopes there); otherwise the envelopes are inlined."""
    schemas = SCHEMAS if schemas is None else schemas
    names = list(schemas)
    if ref_prefix is None:
        members = [copy.deepcopy(schemas[name]) for name in names]
        return {"oneOf": members, "discriminator": {"propertyName": "command"}}
    return {
        "oneOf": [{"$ref": f"{ref_prefix}{name}"} for name in names],
        "discriminator": {
            "propertyName": "command",
            "mapping": {name: f"{ref_prefix}{name}" for name in names},
        },
    }
