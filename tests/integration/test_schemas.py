"""The JSON Schemas of the contract: every command the demo cohort produces is valid against its
schema, invalid commands are rejected, and the schemas agree with the service on them."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from referencing import Registry, Resource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import T0, Course, envelope, icans, screening

from cart_course.contract import ALL_COMMANDS, parse_command
from cart_course.demo import cohort, query_steps
from cart_course.errors import InvalidCommandError
from cart_course.schemas import SCHEMAS, command_schema, envelope_schema
from cart_course.service import CourseService

VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in SCHEMAS.items()}


def errors_of(command: dict[str, Any]) -> list[str]:
    validator = VALIDATORS[command["command"]]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(command)
    ]


def test_every_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert set(SCHEMAS) == set(ALL_COMMANDS)
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["properties"]["command"] == {"const": name}
    with pytest.raises(KeyError):
        command_schema("fly_to_the_moon")


def test_every_command_of_a_demo_cohort_is_valid_against_its_schema() -> None:
    commands = list(cohort(200, seed=11, sites=True))  # with sites: transfers too (issue 17)
    commands += query_steps(commands)  # the data queries ``cart-course demo`` adds
    assert {c["command"] for c in commands} == set(ALL_COMMANDS)
    for command in commands:
        assert errors_of(command) == [], command


def test_the_dispatching_envelope_schema_validates_any_command() -> None:
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
    )
    validator = jsonschema.Draft202012Validator(envelope_schema(), registry=registry)
    validator.check_schema(envelope_schema())
    for command in list(cohort(40, seed=2))[:200]:
        assert list(validator.iter_errors(command)) == []
    bad = {**next(iter(cohort(1, seed=2))), "payload": {"screening": {"kps": "high"}}}
    assert list(validator.iter_errors(bad))
    assert list(validator.iter_errors({"command": "fly"}))


def _base(command: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    data = envelope(command, "P-1", payload, at=T0, key="k-1", reason=extra.pop("reason", None))
    data.update(extra)
    return data


CELLS = {"value": 7e6, "unit": "cells"}
WEIGHT = {"value": 70, "unit": "kg"}
CRS = {
    "kind": "CRS",
    "observations": {
        "temperature": {"value": 38.5, "unit": "C"},
        "hypotension": False,
        "oxygen": {"device": "none"},
    },
}

VALID: list[dict[str, Any]] = [
    _base("screen", {"screening": screening()}),
    _base("give_infusion", {"day": 1, "cells": CELLS, "weight": WEIGHT}),
    _base("give_infusion", {"day": 2, "cells": {"value": 3e5, "unit": "cells/kg"}}),
    _base("report_toxicity", {"toxicity": CRS}),
    _base("report_toxicity", {"toxicity": icans(2), "toxicity_id": "ICANS-1"}),
    _base(
        "report_toxicity",
        {
            "toxicity": {
                "kind": "other",
                "term": "febrile neutropenia",
                "grade": 3,
                "scale": "CTCAE",
                "scale_version": "5.0",
            }
        },
    ),
    _base("withdraw", {}, reason="consent withdrawn"),
    _base("cease", {}, expected_version=9),
    _base("correct", {"corrects": 4, "changes": {"cells": CELLS}}, reason="bag label"),
]

INVALID: list[tuple[str, dict[str, Any]]] = [
    ("unknown envelope key", {**VALID[0], "colour": "red"}),
    ("missing actor", {k: v for k, v in VALID[0].items() if k != "actor"}),
    ("reader role", {**VALID[0], "actor": {"id": "x", "role": "auditor"}}),
    ("patient id with a space", {**VALID[0], "patient_id": "P 1"}),
    ("clinical time without offset", {**VALID[0], "occurred_at": "2026-01-05T08:00:00"}),
    ("negative expected version", {**VALID[7], "expected_version": -1}),
    ("boolean expected version", {**VALID[7], "expected_version": True}),
    ("screening value as text", _base("screen", {"screening": {"kps": "90"}})),
    ("unknown screening field", _base("screen", {"screening": {"kps_score": 90}})),
    (
        "unknown lab unit",
        _base("screen", {"screening": {"creatinine": {"value": 1, "unit": "mmol/L", "uln": 1.2}}}),
    ),
    (
        "weight in stone",
        _base("give_infusion", {"day": 1, "cells": CELLS, "weight": {"value": 11, "unit": "st"}}),
    ),
    ("D1 without weight", _base("give_infusion", {"day": 1, "cells": CELLS})),
    ("D2 with weight", _base("give_infusion", {"day": 2, "cells": CELLS, "weight": WEIGHT})),
    ("day 4", _base("give_infusion", {"day": 4, "cells": CELLS})),
    ("zero cells", _base("give_infusion", {"day": 2, "cells": {"value": 0, "unit": "cells"}})),
    ("cells in litres", _base("give_infusion", {"day": 2, "cells": {"value": 1, "unit": "L"}})),
    (
        "grade and observations",
        _base(
            "report_toxicity",
            {"toxicity": {**CRS, "grade": 2, "scale": "ASTCT", "scale_version": "2019"}},
        ),
    ),
    (
        "unknown oxygen device",
        _base(
            "report_toxicity",
            {
                "toxicity": {
                    **CRS,
                    "observations": {**CRS["observations"], "oxygen": {"device": "tent"}},
                }
            },
        ),
    ),
    (
        "other without a term",
        _base(
            "report_toxicity",
            {"toxicity": {"kind": "other", "grade": 2, "scale": "CTCAE", "scale_version": "5.0"}},
        ),
    ),
    ("withdraw without reason", _base("withdraw", {})),
    ("payload on cease", _base("cease", {"why": "CR"})),
    (
        "assessment without blasts",
        _base("assess_response", {"assessment": {"anc": {"value": 1, "unit": "10^9/L"}}}),
    ),
    (
        "MRD method unknown",
        _base(
            "assess_response",
            {
                "assessment": {
                    "marrow_blasts_pct": 1,
                    "mrd": {"value": 0, "unit": "%", "method": "PET", "sensitivity": 1e-4},
                }
            },
        ),
    ),
    # as tight as the parsers where a schema can say it (issue 13, issue 21)
    (
        "weight of 401 kg",
        _base("give_infusion", {"day": 1, "cells": CELLS, "weight": {"value": 401, "unit": "kg"}}),
    ),
    (
        "weight of 0.4 kg in g",
        _base("give_infusion", {"day": 1, "cells": CELLS, "weight": {"value": 400, "unit": "g"}}),
    ),
    (
        "ALT upper limit of 2 U/L",
        _base("screen", {"screening": {"alt": {"value": 20, "unit": "U/L", "uln": 2}}}),
    ),
    (
        "creatinine of 60 mg/dL",
        _base("screen", {"screening": {"creatinine": {"value": 60, "unit": "mg/dL", "uln": 1}}}),
    ),
    (
        "consent date without consent",
        _base("screen", {"screening": {"informed_consent_date": "2026-01-01"}}),
    ),
    ("a date as 2026-1-1", _base("screen", {"screening": {"informed_consent_date": "2026-1-1"}})),
    ("51 failed lines", _base("screen", {"screening": {"failed_standard_lines": 51}})),
    (
        "grade without scale_version",
        _base("report_toxicity", {"toxicity": {"kind": "CRS", "grade": 2, "scale": "ASTCT"}}),
    ),
    (
        "temperature of 50 C",
        _base(
            "report_toxicity",
            {
                "toxicity": {
                    **CRS,
                    "observations": {
                        **CRS["observations"],
                        "temperature": {"value": 50, "unit": "C"},
                    },
                }
            },
        ),
    ),
    (
        "vasopressors without hypotension",
        _base(
            "report_toxicity",
            {"toxicity": {**CRS, "observations": {**CRS["observations"], "vasopressors": 1}}},
        ),
    ),
    (
        "MRD fraction above 1",
        _base(
            "assess_response",
            {
                "assessment": {
                    "marrow_blasts_pct": 1,
                    "mrd": {"value": 5, "unit": "fraction", "method": "flow", "sensitivity": 1e-4},
                }
            },
        ),
    ),
    ("screen without a payload", {k: v for k, v in VALID[0].items() if k != "payload"}),
    ("correction of the day", _base("correct", {"corrects": 4, "changes": {"day": 3}}, reason="x")),
    ("correction without reason", _base("correct", {"corrects": 4, "changes": {"cells": CELLS}})),
    (
        "sign with unknown meaning",
        _base(
            "sign",
            {"milestone": "infusion", "signs_version": 5, "meaning": "like", "printed_name": "A"},
        ),
    ),
]


@pytest.mark.parametrize("command", VALID, ids=lambda c: c["command"])
def test_valid_examples_pass(command: dict[str, Any]) -> None:
    assert errors_of(command) == []


@pytest.mark.parametrize(("why", "command"), INVALID, ids=[w for w, _ in INVALID])
def test_invalid_examples_are_rejected(why: str, command: dict[str, Any]) -> None:
    assert errors_of(command), why


def test_the_service_rejects_what_the_schema_rejects(memory_service: CourseService) -> None:
    """The schema is not stricter than the service: each invalid example is invalid input to
    the service too (not merely refused by the protocol), and nothing is recorded."""
    p = Course(memory_service, "P-1")
    p.screen()
    p.apheresis()
    for why, command in INVALID:
        # A reason the command always needs is part of the contract (the schema requires it):
        # missing, it is malformed input naming ``reason``, not the protocol's refusal.
        with pytest.raises(InvalidCommandError) as caught:
            memory_service.execute(parse_command(copy.deepcopy(command)))
        if "without reason" in why:
            assert caught.value.field == "reason", why
        assert memory_service.record("P-1").version == 3, why


def test_schemas_are_plain_json() -> None:
    for schema in SCHEMAS.values():
        assert json.loads(json.dumps(schema)) == schema


def test_payload_schemas_are_derived_from_the_typed_payloads() -> None:
    """One source: each payload schema is msgspec's schema of its Struct (its fields, types and
    Meta constraints), with the rules a type cannot state added, never a field of its own."""
    import msgspec

    from cart_course.protocol.payloads import PAYLOAD_TYPES
    from cart_course.schemas import DEFS

    for name, type_ in PAYLOAD_TYPES.items():
        derived = msgspec.json.schema(type_)
        if "$ref" in derived:
            derived = derived["$defs"][derived["$ref"].rsplit("/", 1)[1]]
            assert set(DEFS[name]["properties"]) == set(derived["properties"]), name
            assert DEFS[name].get("required", []) == derived.get("required", []), name
            assert DEFS[name]["additionalProperties"] is False, name
    # a Meta constraint of a Struct is the schema's: 0-50 failed lines, 25-113 degrees
    screening = DEFS["screening"]["properties"]
    assert screening["failed_standard_lines"]["maximum"] == 50
    assert DEFS["TemperaturePayload"]["properties"]["value"]["minimum"] == 25


def test_new_commands_payload_schemas_are_the_derived_ones() -> None:
    """Issue 15's and 16's payloads come from their Structs as the others do: a payload that is
    one Struct is its derived definition, a field holding one refers to it, the bedside keys of
    give_infusion are the derived BedsideCheck's."""
    from cart_course.protocol.product import PRODUCT_PAYLOAD_TYPES
    from cart_course.schemas import DEFS, schema_defs

    def plain(name: str) -> dict[str, object]:
        return {k: v for k, v in DEFS[name].items() if k != "title"}

    for command, alias in (
        ("record_follow_up", "follow_up"),
        ("record_missed_visit", "missed_visit"),
        ("record_sae_report", "sae_report"),
        ("start_manufacture", "start_manufacture"),
        ("release_product", "release_product"),
    ):
        assert SCHEMAS[command]["properties"]["payload"] == plain(alias), command
    toxicity = SCHEMAS["report_toxicity"]["properties"]["payload"]["properties"]
    assert toxicity["adverse_event"]["$ref"] == "#/$defs/adverse_event"
    death = SCHEMAS["record_death"]["properties"]["payload"]
    assert "#/$defs/cause_of_death" in json.dumps(death)
    infusion = SCHEMAS["give_infusion"]["properties"]["payload"]["properties"]
    for key, schema in DEFS["bedside_check"]["properties"].items():
        assert infusion[key] == schema, key
    for alias, struct in PRODUCT_PAYLOAD_TYPES.items():
        derived = msgspec.json.schema(struct)
        derived = derived["$defs"][derived["$ref"].rsplit("/", 1)[1]]
        assert set(DEFS[alias]["properties"]) == set(derived["properties"]), alias
        assert DEFS[alias].get("required", []) == derived.get("required", []), alias
    # one definition per payload: no second derivation under the Structs' class names
    assert not {"AdverseEventPayload", "FollowUpPayload", "StartManufacture"} & set(schema_defs())
