"""The command registry is the single source of each command: every table the contract, the
protocol, the course, the schemas, the docs and the CLI use is derived from its definitions, and
a registry refuses definitions that disagree with the machine's transition table."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import attrs
import jsonschema
import pytest

from cart_course.cli.protocol import commands_document
from cart_course.contract import ALL_COMMANDS, REASON_ALWAYS_REQUIRED
from cart_course.course import EPISODE_COMMANDS, MOVE_EVENTS, PatientCourse, move_event_class
from cart_course.protocol import building_blocks, catalog
from cart_course.protocol.commands import (
    COMMANDS,
    SERVICE_COMMANDS,
    MoveRefusedError,
    allowed_now,
    prepare,
)
from cart_course.protocol.machine import TRANSITIONS
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.registry import (
    REGISTRY,
    CommandDef,
    Move,
    Registry,
    RegistryError,
)
from cart_course.protocol.schema_parts import obj, text
from cart_course.protocol.versions import CURRENT
from cart_course.schemas import (
    SCHEMAS,
    build_schemas,
    command_schema,
    envelope_schema,
    request_body_schema,
)
from cart_course.service import CORRECTABLE

# -- the tables derived from the definitions ----------------------------------------------------


def test_the_derived_tables_are_the_protocols() -> None:
    assert ALL_COMMANDS == (*COMMANDS, *SERVICE_COMMANDS) == REGISTRY.names
    assert SERVICE_COMMANDS == (
        "correct",
        "sign",
        "open_query",
        "answer_query",
        "close_query",
        "reopen_query",
    )
    assert REGISTRY.reason_required == {
        "cancel_remaining_fractions",
        "discontinue",
        "withdraw",
        "repeat_apheresis",
        "transfer_site",
    }
    assert REGISTRY.reason_required | {"correct"} == REASON_ALWAYS_REQUIRED
    assert CORRECTABLE == (
        "screen",
        "rescreen",
        "record_apheresis",
        "infuse_d1",
        "infuse_d2",
        "infuse_d3",
        "assess_pre_infusion",
        "report_toxicity",
        "assess_response",
        "record_sae_report",  # issue 16: to whom, reference, when sent
    )
    # after the course (issue 16): a visit or a report entered late may precede the last move
    assert {
        "report_toxicity",
        "resolve_toxicity",
        "record_follow_up",
        "record_missed_visit",
        "record_sae_report",
        "transfer_site",  # issue 17: a transfer entered late may precede the last move
    } == EPISODE_COMMANDS
    assert {t: e.__name__ for t, e in MOVE_EVENTS.items()} == {
        t: d.event for t, d in REGISTRY.by_trigger.items()
    }
    assert MOVE_EVENTS["infuse_d2"] is PatientCourse.InfusionGiven
    # every trigger of the machine belongs to exactly one command
    assert set(REGISTRY.by_trigger) == {str(t["trigger"]) for t in TRANSITIONS}
    assert set(SCHEMAS) == set(ALL_COMMANDS)


def test_every_example_of_a_definition_is_valid_against_its_schema() -> None:
    for definition in REGISTRY:
        assert definition.examples, definition.name
        validator = jsonschema.Draft202012Validator(SCHEMAS[definition.name])
        for example in definition.examples:
            assert [e.message for e in validator.iter_errors(example)] == [], definition.name


def test_the_next_due_table_names_the_next_commands() -> None:
    assert REGISTRY.next_due["candidate"] == ("screen",)
    assert REGISTRY.next_due["assessed"] == ("continue_treatment", "cease", "discontinue")
    assert "died" not in REGISTRY.next_due


# -- the consistency check when a registry is built ---------------------------------------------


def _definition(**changes: Any) -> CommandDef:
    base = CommandDef(
        name="record_phone_contact",
        summary="A phone contact recorded.",
        event="PhoneContactRecorded",
        moves=[Move(trigger="record_phone_contact")],
    )
    return attrs.evolve(base, **changes)


_FOLLOW_UP = {"trigger": "record_phone_contact", "source": ["ceased", "discontinued"], "dest": "="}


@pytest.mark.parametrize(
    ("definitions", "transitions", "message"),
    [
        pytest.param(
            REGISTRY.definitions,
            [*TRANSITIONS, _FOLLOW_UP],
            "trigger 'record_phone_contact' of the transition table has no command",
            id="a trigger without a command",
        ),
        pytest.param(
            [*REGISTRY.definitions, _definition()],
            TRANSITIONS,
            "record_phone_contact: trigger 'record_phone_contact' is not in the table",
            id="a command's trigger not in the table",
        ),
        pytest.param(
            [*REGISTRY.definitions, _definition(reason="always")],
            [*TRANSITIONS, _FOLLOW_UP],
            "does not check the rule reason_given",
            id="a reason always required but not checked",
        ),
        pytest.param(
            [*REGISTRY.definitions, _definition(name="screen")],
            [*TRANSITIONS, _FOLLOW_UP],
            "command 'screen' is defined twice",
            id="a name twice",
        ),
        pytest.param(
            [*REGISTRY.definitions, _definition(moves=[Move(trigger="withdraw")])],
            TRANSITIONS,
            "trigger 'withdraw' belongs to withdraw and record_phone_contact",
            id="a trigger of two commands",
        ),
        pytest.param(
            [*REGISTRY.definitions, _definition(correctable=("visit",))],
            [*TRANSITIONS, _FOLLOW_UP],
            "correctable keys ['visit'] are not its keys",
            id="a correctable key it does not take",
        ),
        pytest.param(
            [*REGISTRY.definitions, _definition(next_in=("nowhere",))],
            [*TRANSITIONS, _FOLLOW_UP],
            "next_in names 'nowhere', not a state",
            id="a next action in no state",
        ),
    ],
)
def test_a_registry_refuses_definitions_that_disagree(
    definitions: Any, transitions: Any, message: str
) -> None:
    with pytest.raises(RegistryError) as refused:
        Registry(definitions, transitions)
    assert message in str(refused.value)


# -- a command added in a test-only registry appears in every derived output --------------------

_VISIT_SCHEMA = obj(
    {"visit": {"$ref": "#/$defs/visit"}, "note": text(500, "what the visit found")},
    ("visit",),
)
FOLLOW_UP = _definition(
    summary="A phone contact after the end of treatment.",
    required=("visit",),
    optional=("note",),
    payload_schema=_VISIT_SCHEMA,
    schema_defs={"visit": obj({"day": {"type": "integer", "minimum": 1}}, ("day",))},
    correctable=("visit", "note"),
    examples=(
        {
            "command": "record_phone_contact",
            "patient_id": "P-101",
            "occurred_at": "2026-05-01T10:00:00+02:00",
            "actor": {"id": "dr.lee", "role": "clinician"},
            "reason": None,
            "idempotency_key": "P-101-phone-contact-1",
            "expected_version": None,
            "payload": {"visit": {"day": 90}},
        },
    ),
)


@pytest.fixture(scope="module")
def extended() -> Registry:
    return REGISTRY.with_command(FOLLOW_UP, [_FOLLOW_UP])


def test_a_new_command_appears_in_the_schemas(extended: Registry) -> None:
    schemas = build_schemas(extended)
    assert list(schemas) == [*ALL_COMMANDS, "record_phone_contact"]
    schema = schemas["record_phone_contact"]
    assert schema == command_schema("record_phone_contact", extended)
    assert schema["description"] == FOLLOW_UP.summary
    assert schema["properties"]["payload"] == _VISIT_SCHEMA
    assert "visit" in schema["$defs"] and "screening" in schema["$defs"]
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(FOLLOW_UP.examples[0])) == []
    bad = {**FOLLOW_UP.examples[0], "payload": {"visit": {"day": 0}}}
    assert list(validator.iter_errors(bad)) != []
    assert "record_phone_contact" in envelope_schema(extended)["properties"]["command"]["enum"]
    # the real registry's outputs are untouched
    assert "record_phone_contact" not in SCHEMAS and "record_phone_contact" not in REGISTRY


def test_a_new_command_appears_in_the_openapi_request_body(extended: Registry) -> None:
    body = request_body_schema(build_schemas(extended))
    commands = [member["properties"]["command"]["const"] for member in body["oneOf"]]
    assert commands == [*ALL_COMMANDS, "record_phone_contact"]
    assert body["discriminator"] == {"propertyName": "command"}
    by_ref = request_body_schema(build_schemas(extended), "#/components/schemas/")
    assert by_ref["discriminator"]["mapping"]["record_phone_contact"] == (
        "#/components/schemas/record_phone_contact"
    )
    assert len(request_body_schema()["oneOf"]) == len(ALL_COMMANDS)


def test_a_new_command_appears_in_protocol_commands_json(extended: Registry) -> None:
    document = json.loads(json.dumps(commands_document(extended)))
    (described,) = [c for c in document["commands"] if c["name"] == "record_phone_contact"]
    assert described["summary"] == FOLLOW_UP.summary
    assert described["payload"] == {"required": ["visit"], "optional": ["note"]}
    assert described["payload_schema"] == _VISIT_SCHEMA
    assert described["reason"] == "never" and described["event"] == "PhoneContactRecorded"
    assert described["correctable"] == ["visit", "note", "occurred_at"]
    assert described["moves"] == [
        {
            "trigger": "record_phone_contact",
            "source": ["ceased", "discontinued"],
            "dest": "(unchanged)",
            "rules": [],
        }
    ]
    assert "visit" in document["$defs"]
    assert [c["name"] for c in document["commands"]] == [*ALL_COMMANDS, "record_phone_contact"]


def test_a_new_command_appears_in_the_docs_tables(extended: Registry) -> None:
    tables = catalog.commands_markdown(extended)
    assert "| `record_phone_contact` | A phone contact after the end of treatment. |" in tables
    assert (
        "| `record_phone_contact` | `record_phone_contact` | `ceased`, `discontinued` | (unchanged) | - |"
        in tables
    )
    assert "record_phone_contact" not in catalog.commands_markdown()


def test_a_new_command_is_decided_and_recorded_by_the_registry_it_is_in(
    extended: Registry,
) -> None:
    """Its payload parser, context and outcome come from its definition; its event class is
    made from the definition's event name (the machine must know its trigger: ``TRANSITIONS``)."""
    seen: list[Any] = []

    def parse(
        record: PatientRecord, p: Any, day: Any, ctx: Any, seed: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        seen.append(("parse", dict(p)))
        return {"visit": dict(p["visit"])}, {"visit_day": p["visit"]["day"]}

    definition = attrs.evolve(
        FOLLOW_UP,
        parse=parse,
        outcome=lambda trigger, facts, probe, params: {"day": facts["visit_day"]},
    )
    registry = REGISTRY.with_command(definition, [_FOLLOW_UP])
    record = PatientRecord(patient_id="P-1", state="ceased")
    # The current protocol's machine has no such trigger: the registry's parser ran first, then
    # the machine refused the unknown move; its allowed moves are the real ones.
    with pytest.raises(MoveRefusedError) as refused:
        prepare(
            record,
            "record_phone_contact",
            {"visit": {"day": 90}},
            dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
            None,
            CURRENT,
            registry,
        )
    assert seen == [("parse", {"visit": {"day": 90}})]
    assert refused.value.failed[0].rule == "known_move"
    assert refused.value.allowed == allowed_now(record, CURRENT)
    event = move_event_class("PhoneContactRecorded")
    assert issubclass(event, PatientCourse.Moved)
    assert event.__qualname__ == "PatientCourse.PhoneContactRecorded"
    assert building_blocks.no_context(record) == {}
