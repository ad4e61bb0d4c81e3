"""One JSON Schema (draft 2020-12) per command of the contract: envelope and payload.

The schemas describe what the service accepts, for documentation, for clients and for the HTTP
OpenAPI document; the service's own parsers stay the authority (they also check what a schema
cannot, such as a toxicity id that exists or a dose against the plan) and name the failing field.
Units and choices are taken from the protocol's constants, so the schemas follow the protocol.

The payload values (screening, toxicity, assessment, weight, cells ...) are derived from their
typed payloads (``protocol/payloads.py``: the msgspec Structs the parsers decode with, their
fields, ``Meta`` constraints and descriptions) by :func:`payload_defs`, which adds the parsers'
rules a Struct's types cannot state but a JSON Schema can (a range that depends on the unit, one
field against another) and names in the description each rule no JSON Schema can state. Each
command's payload object is in its definition (``protocol/registry.py``, referring to these
``$defs``); the envelopes and the shared ``$defs`` are assembled here, for any registry (default:
the real one).

>>> from .contract import ALL_COMMANDS
>>> sorted(SCHEMAS) == sorted(ALL_COMMANDS)
True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from .contract import (
    ENVELOPE_KEYS,
    MAX_CLOCK_SKEW,
    MAX_VERSION,
    TIME_SCHEMA_PATTERN,
    WRITE_ROLES,
)
from .protocol import dosing, pre_infusion, toxicity
from .protocol.eligibility import SCREENING_KEYS
from .protocol.payloads import PAYLOAD_TYPES
from .protocol.plausibility import LAB_RANGES
from .protocol.product import PRODUCT_PAYLOAD_TYPES
from .protocol.registry import REGISTRY, Registry
from .protocol.schema_parts import DATE as _DATE
from .protocol.schema_parts import Schema, free_text
from .protocol.schema_parts import nullable as _nullable
from .protocol.schema_parts import obj as _obj
from .protocol.schema_parts import text as _text

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
BASE_ID: Final = "https://cart-course.example/schemas/commands/"

_ = MAX_CLOCK_SKEW  # documented in the envelope's occurred_at description


def _tidy(node: Any, rename: Mapping[str, str]) -> Any:
    """msgspec's schema, as the documents write it: ``$ref`` by the payloads' names, an
    ``int | float`` of the same bounds as one ``number``, no ``title`` (the names say it)."""
    if isinstance(node, list):
        return [_tidy(item, rename) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _tidy(v, rename) for k, v in node.items() if k != "title"}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        out["$ref"] = f"#/$defs/{rename.get(name, name)}"
    branches = out.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2:
        first, second = branches
        if (
            isinstance(first, dict)
            and isinstance(second, dict)
            and first.get("type") == "integer"
            and second.get("type") == "number"
            and {k: v for k, v in first.items() if k != "type"}
            == {k: v for k, v in second.items() if k != "type"}
        ):
            del out["anyOf"]
            out = {**out, **second}
    return out


def _float_range(low: float, high: float, factor: float) -> tuple[float, float]:
    """The first and the last float ``x`` with ``low <= x * factor <= high`` (as the parser
    computes it), so that the schema's bounds are the parser's to the last bit."""
    lo = low / factor
    while lo * factor < low:
        lo = math.nextafter(lo, math.inf)
    while math.nextafter(lo, -math.inf) * factor >= low:
        lo = math.nextafter(lo, -math.inf)
    hi = high / factor
    while hi * factor > high:
        hi = math.nextafter(hi, -math.inf)
    while math.nextafter(hi, math.inf) * factor <= high:
        hi = math.nextafter(hi, math.inf)
    return lo, hi


def _by_unit(
    bounds: Mapping[str, tuple[float, float]], value: str = "value", unit: str = "unit"
) -> list[Schema]:
    """``value``'s bounds for each ``unit`` (a range that depends on the unit)."""
    return [
        {
            "if": {"properties": {unit: {"const": u}}, "required": [unit]},
            "then": {"properties": {value: {"minimum": lo, "maximum": hi}}},
        }
        for u, (lo, hi) in bounds.items()
    ]


def _lab(key: str) -> dict[str, tuple[float, float]]:
    lab = LAB_RANGES[key]
    return {u: (float(lo), float(hi)) for u, (lo, hi) in ((u, lab.bounds(u)) for u in lab.factors)}


def _lab_rules(key: str, with_uln: bool) -> list[Schema]:
    rules = _by_unit(_lab(key))
    if with_uln:
        uln = _lab(f"{key}_uln")
        rules += [  # the ULN in uln_unit when given, otherwise in the value's unit
            {
                "if": {"properties": {"uln_unit": {"const": u}}, "required": ["uln_unit"]},
                "then": {"properties": {"uln": {"minimum": lo, "maximum": hi}}},
            }
            for u, (lo, hi) in uln.items()
        ]
        rules += [
            {
                "if": {
                    "properties": {"unit": {"const": u}},
                    "required": ["unit"],
                    "not": {"required": ["uln_unit"]},
                },
                "then": {"properties": {"uln": {"minimum": lo, "maximum": hi}}},
            }
            for u, (lo, hi) in uln.items()
        ]
    return rules


def _add_rules(schema: Schema, rules: list[Schema], description: str = "") -> None:
    if rules:
        schema.setdefault("allOf", []).extend(rules)
    if description:
        text = schema.get("description", "")
        schema["description"] = f"{text} {description}".strip()


_NOT_IN_SCHEMA: Final = "Not stated by this schema (the service checks it and names the field):"


def payload_defs() -> dict[str, Schema]:
    """The payloads' schemas, derived from their types (``protocol/payloads.py``:
    ``msgspec.json.schema_components`` of :data:`PAYLOAD_TYPES`, by the names the commands'
    schemas use), with the rules a Struct's types cannot state but a schema can: ranges that
    depend on a unit (the parsers' plausibility limits), one field against another. A rule no
    JSON Schema can state is named in the payload's description."""
    defs = _derived(PAYLOAD_TYPES)

    screening = defs["screening"]
    props = screening["properties"]
    assert tuple(props) == SCREENING_KEYS, "ScreeningPayload and the eligibility parser disagree"
    props["last_systemic_glucocorticoid"] = {
        "anyOf": [_DATE, {"type": "null"}, {"const": "none"}],
        "description": "date of the last systemic glucocorticoid dose; null or 'none' if never",
    }
    for key, name in (
        ("creatinine", "CreatininePayload"),
        ("alt", "TransaminasePayload"),
        ("ast", "TransaminasePayload"),
        ("bilirubin", "BilirubinPayload"),
        ("hemoglobin", "HemoglobinPayload"),
    ):
        # each lab gets its own schema: ALT and AST share a type, not their ranges' names
        lab = copy.deepcopy(defs[name])
        _add_rules(lab, _lab_rules(key, "uln" in lab["properties"]))
        lab["description"] = f"{LAB_RANGES[key].name} with its unit" + (
            " and the site's upper limit of normal (uln, in uln_unit or unit)"
            if "uln" in lab["properties"]
            else ""
        )
        props[key] = lab
    for name in (
        "CreatininePayload",
        "TransaminasePayload",
        "BilirubinPayload",
        "HemoglobinPayload",
    ):
        del defs[name]

    screening["dependentSchemas"] = {
        "informed_consent_date": {
            "properties": {"informed_consent_signed": {"const": True}},
            "required": ["informed_consent_signed"],
        }
    }
    _add_rules(
        screening,
        [],
        f"A consent date needs informed_consent_signed: true. {_NOT_IN_SCHEMA} the last "
        "systemic glucocorticoid dose is on or before the screening date (occurred_at's date).",
    )
    _add_rules(
        defs["OxygenPayload"],
        [
            {
                "if": {"properties": {"device": {"const": "none"}}, "required": ["device"]},
                "then": {
                    "properties": {
                        "flow_l_min": {"type": "null"},
                        "fio2_pct": {"anyOf": [{"type": "null"}, {"const": 21}]},
                    }
                },
            },
            {
                "if": {
                    "properties": {"device": {"const": "low_flow_nasal_cannula"}},
                    "required": ["device"],
                },
                "then": {
                    "required": ["flow_l_min"],
                    "properties": {"flow_l_min": {"type": "number", "exclusiveMinimum": 0}},
                },
            },
        ],
        "Device 'none' is room air (no flow, FiO2 21 % if given); a nasal cannula needs its flow.",
    )
    _add_rules(
        defs["crs_observations"],
        [
            {
                "if": {
                    "properties": {"hypotension": {"const": False}},
                    "required": ["hypotension"],
                },
                "then": {
                    "properties": {"vasopressors": {"maximum": 0}, "vasopressin": {"const": False}}
                },
            }
        ],
        "Vasopressors or vasopressin need hypotension: true.",
    )
    icans = defs["icans_observations"]

    def _tool_rules(score: str, items: str) -> list[Schema]:
        """The tool's score or its items; none (null) only when unarousable."""
        return [
            {"anyOf": [{"required": [score]}, {"required": [items]}]},
            {
                "if": {
                    "not": {
                        "anyOf": [
                            {"properties": {score: {"type": "integer"}}, "required": [score]},
                            {"properties": {items: {"type": "object"}}, "required": [items]},
                        ]
                    }
                },
                "then": {"properties": {"consciousness": {"const": "stupor_or_coma"}}},
            },
        ]

    adult = toxicity.ICE_MIN_AGE_YEARS
    _add_rules(
        icans,
        [
            {  # the ICE from 12 years, the CAPD under 12 (issue 20)
                "if": {"properties": {"age_years": {"minimum": adult}}},
                "then": {
                    "allOf": _tool_rules("ice_score", "ice_items"),
                    "not": {"anyOf": [{"required": ["capd_score"]}, {"required": ["capd_items"]}]},
                    "properties": {
                        "attributable_to_other_cause": {"items": {"not": {"const": "capd"}}}
                    },
                },
                "else": {
                    "allOf": _tool_rules("capd_score", "capd_items"),
                    "not": {"anyOf": [{"required": ["ice_score"]}, {"required": ["ice_items"]}]},
                    "properties": {
                        "attributable_to_other_cause": {"items": {"not": {"const": "ice"}}}
                    },
                },
            },
            {
                "if": {
                    "properties": {"consciousness": {"const": "stupor_or_coma"}},
                    "required": ["consciousness"],
                },
                "then": {"properties": {"awake_with_global_aphasia": {"const": False}}},
            },
        ],
        f"The ICE score (0-10) or its items from age {adult}; under {adult} the CAPD "
        "(capd_score 0-32, or the eight capd_items 0-4); null only when consciousness is "
        f"'stupor_or_coma'; attributable_to_other_cause names 'ice' from 12 years, 'capd' under "
        f"12. {_NOT_IN_SCHEMA} a score given with its items equals their sum.",
    )
    _add_rules(
        defs["cells"],
        [
            {
                "if": {"properties": {"unit": {"const": "cells"}}, "required": ["unit"]},
                "then": {"properties": {"value": {"maximum": dosing.MAX_FRACTION_CELLS}}},
            }
        ],
        f"At most {dosing.MAX_FRACTION_CELLS:.0e} cells in one fraction. {_NOT_IN_SCHEMA} in "
        "cells/kg, the value times the course's weight is at most that.",
    )
    _add_rules(
        defs["TemperaturePayload"],
        _by_unit({u: (float(lo), float(hi)) for u, (lo, hi) in toxicity.TEMPERATURE_RANGE.items()}),
    )
    _add_rules(  # the pre-infusion gate's temperature (issue 20)
        defs["GateTemperaturePayload"],
        _by_unit(
            {u: (float(lo), float(hi)) for u, (lo, hi) in pre_infusion.TEMPERATURE_RANGE.items()}
        ),
    )
    _add_rules(
        defs["weight"],
        _by_unit({u: _float_range(0.5, 400.0, f) for u, f in dosing.WEIGHT_UNITS.items()}),
        "A plausible body weight: 0.5 to 400 kg in any unit.",
    )
    explicit = ("grade", "scale", "scale_version")
    scale_versions = [
        {
            "if": {"properties": {"scale": {"const": scale}}, "required": ["scale"]},
            "then": {"properties": {"scale_version": {"enum": list(versions)}}},
        }
        for scale, versions in toxicity.EXPLICIT_SCALES.items()
    ]
    for name in ("CrsReportPayload", "IcansReportPayload"):
        _add_rules(
            defs[name],
            [
                {
                    "oneOf": [
                        {
                            "required": ["observations"],
                            "not": {"anyOf": [{"required": [k]} for k in explicit]},
                        },
                        {"required": list(explicit), "not": {"required": ["observations"]}},
                    ]
                },
                *scale_versions,
            ],
            "Observations (graded by the service), or an explicit grade with its scale and "
            "scale version.",
        )
    defs["OtherReportPayload"]["required"] = ["kind", "term", *explicit]
    other_props = defs["OtherReportPayload"]["properties"]  # its term is required: not null
    other_props["scale"] = {"enum": ["CTCAE"]}  # ASTCT grades only CRS and ICANS
    other_props["term"] = next(b for b in other_props["term"]["anyOf"] if b.get("type") != "null")
    _add_rules(defs["OtherReportPayload"], scale_versions)

    assessment = defs["assessment"]
    aprops = assessment["properties"]
    for key in ("anc", "platelets"):
        count = copy.deepcopy(defs["CellCountPayload"])
        _add_rules(count, _by_unit(_lab(key)))
        aprops[key] = {"anyOf": [count, {"type": "null"}], "default": None}
    del defs["CellCountPayload"]
    if "cause_of_death" in defs:  # a death from an adverse event names its episode; no other
        _add_rules(
            defs["cause_of_death"],
            [
                {
                    "if": {
                        "properties": {"category": {"const": "adverse_event"}},
                        "required": ["category"],
                    },
                    "then": {"required": ["toxicity_id"]},
                    "else": {"not": {"required": ["toxicity_id"]}},
                }
            ],
        )
    if "DiseaseStatusPayload" in defs:  # a relapse names its CD19 status; a remission none
        _add_rules(
            defs["DiseaseStatusPayload"],
            [
                {
                    "if": {"properties": {"status": {"const": "relapse"}}, "required": ["status"]},
                    "then": {"required": ["cd19"]},
                    "else": {"not": {"required": ["cd19"]}},
                }
            ],
        )
    _add_rules(
        defs["MrdPayload"],
        [
            {
                "if": {"properties": {"unit": {"const": "fraction"}}, "required": ["unit"]},
                "then": {"properties": {"value": {"maximum": 1}}},
            }
        ],
    )
    _add_rules(
        assessment,
        [
            {  # blasts are present exactly when the percentage is above 0
                "if": {
                    "properties": {"circulating_blasts_present": {"const": True}},
                    "required": ["circulating_blasts_present"],
                },
                "then": {
                    "properties": {
                        "circulating_blasts_pct": {
                            "anyOf": [{"type": "null"}, {"exclusiveMinimum": 0}]
                        }
                    }
                },
            },
            {
                "if": {
                    "properties": {"circulating_blasts_present": {"const": False}},
                    "required": ["circulating_blasts_present"],
                },
                "then": {
                    "properties": {
                        "circulating_blasts_pct": {"anyOf": [{"type": "null"}, {"maximum": 0}]}
                    }
                },
            },
            {  # CNS2/CNS3 is extramedullary disease
                "if": {
                    "properties": {"extramedullary_disease": {"const": "none"}},
                    "required": ["extramedullary_disease"],
                },
                "then": {"properties": {"cns_status": {"not": {"enum": ["CNS2", "CNS3"]}}}},
            },
        ],
        "The service computes CR, CRi, PR or NR from these values. "
        f"{_NOT_IN_SCHEMA} the values the classification needs (which depend on the values "
        "given, e.g. the counts for a CR) are recorded, or clinician_response is given with a "
        "reason.",
    )
    return defs


def _derived(types: Mapping[str, Any]) -> dict[str, Schema]:
    """msgspec's schemas of ``types`` (and the Structs they hold), the top ones by their alias."""
    tops, components = msgspec.json.schema_components(
        list(types.values()), ref_template="#/$defs/{name}"
    )
    rename: dict[str, str] = {}
    defs: dict[str, Schema] = {}
    for alias, top in zip(types, tops, strict=True):
        ref = top.get("$ref")
        if isinstance(ref, str):
            rename[ref.removeprefix("#/$defs/")] = alias
        else:
            defs[alias] = top
    for name, schema in components.items():
        defs[rename.get(name, name)] = schema
    return {name: _tidy(schema, rename) for name, schema in defs.items()}


_INSTANT: Final[Schema] = {"type": "string", "format": "date-time"}

#: What the product parsers check beyond their Structs' types (``protocol/product.py``: texts
#: are non-blank and bounded, dates and times ISO, a positive count below 1e12), by field.
_PRODUCT_RULES: Final[dict[str, dict[str, Schema]]] = {
    "start_manufacture": {
        "lot_id": _text(200, "the manufacturing lot's id"),
        "collection_id": _text(
            200, "the collection (DIN or site id) it is made from; default: the latest"
        ),
    },
    "release_product": {
        "lot_id": _text(200),
        "tests": {"minItems": 1, "description": "each release test as the lab reported it"},
        "released_by": _text(200, "the qualified person who released (or rejected) the lot"),
        "manufactured_on": {"type": "string", "format": "date"},
        "expires_at": {**_INSTANT, "description": "the expiry; required for a released lot"},
        "exception_reason": _text(
            2000, "why an out-of-specification lot is released all the same (a deviation)"
        ),
    },
    "ReleaseTest": {"name": _text(200), "result": _text(500)},
    "BagLabel": {
        "bag_id": _text(200),
        "cells": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e12},
    },
    "bedside_check": {
        "bag_id": _text(
            200, "the bag infused: a bag of this patient's released lot for this fraction"
        ),
        "verified_by": _text(
            200, "the second person who verified patient and bag at the bedside (not the actor)"
        ),
        "thawed_at": {
            **_INSTANT,
            "description": "when the bag was thawed (the thaw limit is a protocol parameter)",
        },
    },
}


def product_defs() -> dict[str, Schema]:
    """The product payloads' schemas, derived from their Structs (``protocol/product.py``'s
    :data:`PRODUCT_PAYLOAD_TYPES`), each field narrowed by what its parser checks (a text stays
    a text, a nullable field stays nullable)."""
    defs = _derived(PRODUCT_PAYLOAD_TYPES)
    for name, rules in _PRODUCT_RULES.items():
        props = defs[name]["properties"]
        for key, rule in rules.items():
            derived = props[key]
            branches = derived.get("anyOf")
            if branches is not None:  # optional and nullable: the value's branch narrowed
                (value,) = [b for b in branches if b != {"type": "null"}]
                assert value.get("type", rule.get("type")) == rule.get("type", value["type"])
                props[key] = {**derived, "anyOf": [{**value, **rule}, {"type": "null"}]}
            else:
                assert derived.get("type", rule.get("type")) == rule.get("type", derived["type"])
                props[key] = {**derived, **rule}
    return defs


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
    **payload_defs(),
    **product_defs(),
}


def _visits_of_the_schedule(defs: Schema) -> None:
    """A visit is one of a follow-up schedule's (protocol parameters; the parser's check: a
    visit of any registered protocol version; the rule ``visit_in_schedule`` then checks it is
    one of the patient's version)."""
    from .protocol.follow_up import known_visits

    names = known_visits()
    for name in ("follow_up", "missed_visit"):
        visit = defs.get(name, {}).get("properties", {}).get("visit")
        if isinstance(visit, dict):
            visit.clear()
            visit.update({"enum": names, "description": "a visit of the follow-up schedule"})


_visits_of_the_schedule(DEFS)


def _payload_object(payload: Schema, registry: Registry) -> Schema:
    """A command's payload schema, a payload that is one typed payload (``{"$ref":
    "#/$defs/follow_up"}``) inlined: its properties at the top, as every payload's."""
    ref = payload.get("$ref")
    if isinstance(ref, str) and set(payload) == {"$ref"}:
        target = schema_defs(registry)[ref.removeprefix("#/$defs/")]
        payload = {k: v for k, v in target.items() if k != "title"}
    return copy.deepcopy(payload)


#: Times the contract refuses though their form is right (``contract.parse_time``).
_BEFORE_1900 = r"^(0[0-9]{3}|1[0-8][0-9]{2})-"
_OFFSET_BEYOND_14H = r"([+-](1[5-9]|[2-9][0-9]):[0-9]{2}|[+-]14:(0[1-9]|[1-5][0-9]))$"


def command_schema(command: str, registry: Registry = REGISTRY) -> Schema:
    """The JSON Schema of one command's envelope (with its payload), from its definition."""
    definition = registry.commands.get(command)
    if definition is None:
        raise KeyError(f"{command!r} is not a command; commands are: {', '.join(registry.names)}")
    reason_required = definition.reason == "always"
    reason = free_text(4000, "why; required for this command")
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
            "pattern": TIME_SCHEMA_PATTERN,
            "description": "clinical time: when it happened, RFC 3339 (ISO 8601 extended "
            "format) YYYY-MM-DDThh:mm[:ss[.fraction]] with Z or +hh:mm/-hh:mm, from 1900 on, "
            "with a UTC offset of at most 14 hours; not more than 5 minutes in the future",
        },
        "actor": {"$ref": "#/$defs/actor"},
        "reason": reason if reason_required else _nullable(free_text(4000)),
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
        "payload": _payload_object(definition.payload_schema, registry),
    }
    if properties["payload"].get("required"):
        required.append("payload")
    else:  # a missing or null payload is an empty one
        properties["payload"] = _nullable(properties["payload"])
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
