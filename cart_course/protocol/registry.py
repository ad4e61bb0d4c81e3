"""The command registry: one definition per command of the contract.

A :class:`CommandDef` says everything about one command: its name and summary, its payload (keys,
parser, JSON Schema, examples), the machine's trigger(s) it fires and what each trigger's rules
read from the record (its context), whether a reason is required (``always``, ``never`` or
``when the rules say so``), the event it records, what may be corrected afterwards and the
outcome it computes. Everything else is derived from the definitions by :class:`Registry`, once,
when it is built: the payload parsers and contexts ``commands.prepare`` uses, the moves that
always need a reason, the correctable moves, the event class of each move (``course.py``), the
contract's command list and reason messages (``contract.py``), the JSON Schemas
(``schemas.py``), the docs tables (``catalog.py``) and ``cart-course protocol commands``.

The machine's transition table (``machine.TRANSITIONS``) stays the data the ``transitions``
library is built from; which trigger belongs to which command is said here, and a registry
checks when it is built that the two agree (every trigger of the table belongs to exactly one
command, every command's trigger is in the table, a command that always needs a reason has the
rule ``reason_given`` on every transition of its triggers).

Adding a command: one :class:`CommandDef` (below), its transitions and rules in ``machine.py``,
and its test (see ``docs/architecture.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs

from . import building_blocks as blocks
from . import (
    follow_up,
    payloads,
    pre_infusion,
    product,
    product_commands,
    queries,
    response,
    toxicity,
)
from . import sites as site_rules
from .building_blocks import (
    ContextBuilder,
    OutcomeBuilder,
    PayloadParser,
    ReasonCheck,
    TimeCheck,
)
from .machine import TRANSITIONS
from .schema_parts import BOOL, EMPTY, Schema, free_text, obj, text
from .signatures import MILESTONES, SIGNATURE_KEYS, SIGNATURE_MEANINGS
from .states import State

ReasonPolicy = Literal["always", "never", "when the rules say so"]
REASON_POLICIES: tuple[ReasonPolicy, ...] = ("always", "never", "when the rules say so")
#: How the service decides a command: a protocol move (``commands.prepare``), a correction of a
#: recorded move (``corrections.decide_correction``) or a signature
#: (``signatures.decide_signature``).
CommandKind = Literal["move", "correction", "signature", "query"]
#: The roles that record the protocol's moves, corrections and signatures (a command's
#: ``roles`` unless it says otherwise; a signature also checks ``signatures.SIGNING_ROLES``).
RECORDING_ROLES: tuple[str, ...] = ("service", "clinician")
#: Keys of every correction besides the corrected command's correctable payload keys.
CORRECTION_KEYS = ("corrects", "changes")


@attrs.frozen(kw_only=True)
class Move:
    """A trigger of the machine a command fires, and what its rules read from the record."""

    trigger: str
    context: ContextBuilder = blocks.no_context
    #: A cheaper context giving the same answer to "is this move allowed now?" (``allowed_now``
    #: asks it after every command); None: :attr:`context`.
    allowed_context: ContextBuilder | None = None


def _tuple_of_moves(value: Iterable[Move]) -> tuple[Move, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class CommandDef:
    """One command of the contract, defined once."""

    name: str
    #: One sentence: what the command records (docs tables, schemas, ``protocol commands``).
    summary: str
    #: The event class it records (``course.PatientCourse.<event>``).
    event: str
    kind: CommandKind = "move"
    #: The machine's triggers it fires (a move command); the first is the one it fires unless
    #: :attr:`trigger_of` says which.
    moves: tuple[Move, ...] = attrs.field(default=(), converter=_tuple_of_moves)
    #: Which trigger a payload names (``give_infusion``'s day); None: the only move's.
    trigger_of: Callable[[Mapping[str, Any]], str] | None = None
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    #: Validates and normalises the payload: (normalised payload, payload facts).
    parse: PayloadParser = blocks.parse_nothing
    #: Checks the clinical time against the record (after the payload is parsed).
    check_time: TimeCheck | None = None
    #: Checks the command's reason against the record and the payload's facts (after the time).
    check_reason: ReasonCheck | None = None
    #: What the move established (recorded as the event's ``outcome``).
    outcome: OutcomeBuilder = blocks.no_outcome
    reason: ReasonPolicy = "never"
    #: What a required reason says (in the message of a missing one).
    reason_asks: str = "why"
    #: Payload keys a correction of this command may change (besides ``occurred_at``); empty:
    #: the command is not correctable.
    correctable: tuple[str, ...] = ()
    #: Its clinical time may precede the patient's last move (a toxicity began before D3, and
    #: was reported after it); other moves are recorded in the order they happened.
    episode: bool = False
    #: The payload's JSON Schema (``#/$defs/...`` names :attr:`schema_defs` or ``schemas.DEFS``).
    payload_schema: Schema = attrs.field(factory=lambda: dict(EMPTY))
    schema_defs: Mapping[str, Schema] = attrs.field(factory=dict)
    #: Whole example envelopes (valid, and recorded by the docs' story): ``examples_of(name)``.
    examples: tuple[Mapping[str, Any], ...] = ()
    #: States in which this command is the patient's next protocol action (the views' board).
    next_in: tuple[str, ...] = ()
    #: The roles that may record it (the service refuses others: ``forbidden``).
    roles: tuple[str, ...] = RECORDING_ROLES

    @property
    def keys(self) -> tuple[str, ...]:
        return self.required + self.optional

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(m.trigger for m in self.moves)

    def trigger_for(self, payload: Mapping[str, Any]) -> str:
        if self.trigger_of is not None:
            return self.trigger_of(payload)
        return self.moves[0].trigger


class RegistryError(ValueError):
    """The definitions disagree with each other or with the machine's transition table."""


class Registry:
    """The commands, and every table derived from them (built once; look-ups are dict reads)."""

    def __init__(
        self,
        definitions: Iterable[CommandDef],
        transitions: Sequence[Mapping[str, Any]] = TRANSITIONS,
    ) -> None:
        self.definitions: tuple[CommandDef, ...] = tuple(definitions)
        self.transitions: tuple[Mapping[str, Any], ...] = tuple(transitions)
        commands: dict[str, CommandDef] = {}
        for d in self.definitions:
            if d.name in commands:
                raise RegistryError(f"command {d.name!r} is defined twice")
            commands[d.name] = d
        #: name -> definition, in the contract's order.
        self.commands: Mapping[str, CommandDef] = MappingProxyType(commands)
        self.names: tuple[str, ...] = tuple(commands)
        self.name_set: frozenset[str] = frozenset(commands)
        #: The protocol's moves (``prepare`` decides them), by name.
        self.moves: Mapping[str, CommandDef] = MappingProxyType(
            {n: d for n, d in commands.items() if d.kind == "move"}
        )
        by_trigger: dict[str, CommandDef] = {}
        contexts: dict[str, ContextBuilder] = {}
        allowed_contexts: dict[str, ContextBuilder] = {}
        for d in self.moves.values():
            for m in d.moves:
                if m.trigger in by_trigger:
                    raise RegistryError(
                        f"trigger {m.trigger!r} belongs to {by_trigger[m.trigger].name} and "
                        f"{d.name}"
                    )
                by_trigger[m.trigger] = d
                if m.context is not blocks.no_context:
                    contexts[m.trigger] = m.context
                allowed_contexts[m.trigger] = m.allowed_context or m.context
        #: trigger -> the command that fires it.
        self.by_trigger: Mapping[str, CommandDef] = MappingProxyType(by_trigger)
        #: trigger -> what its rules read from the record (moves without: none).
        self.contexts: Mapping[str, ContextBuilder] = MappingProxyType(contexts)
        #: trigger -> the context ``allowed_now`` builds for it.
        self.allowed_contexts: Mapping[str, ContextBuilder] = MappingProxyType(allowed_contexts)
        #: command -> its payload keys, for the common case (only known keys) checked at once.
        self.keysets: Mapping[str, frozenset[str]] = MappingProxyType(
            {n: frozenset(d.keys) for n, d in commands.items()}
        )
        #: Commands that always need a reason (a missing one is malformed input).
        self.reason_always: frozenset[str] = frozenset(
            n for n, d in commands.items() if d.reason == "always"
        )
        #: Moves (triggers) that always need a reason.
        self.reason_required: frozenset[str] = frozenset(
            t for n in self.reason_always for t in commands[n].triggers
        )
        #: Moves (triggers) whose facts a correction may change, in the contract's order.
        self.correctable: tuple[str, ...] = tuple(
            t for d in self.moves.values() if d.correctable for t in d.triggers
        )
        #: Commands whose clinical time may precede the patient's last move.
        self.episode_commands: frozenset[str] = frozenset(
            n for n, d in commands.items() if d.episode
        )
        #: trigger -> the name of the event class it records.
        self.events: Mapping[str, str] = MappingProxyType(
            {t: d.event for t, d in by_trigger.items()}
        )
        #: state -> the commands that are the patient's next protocol action in it.
        due: dict[str, list[str]] = {}
        for d in self.definitions:
            for state in d.next_in:
                due.setdefault(str(state), []).append(d.name)
        self.next_due: Mapping[str, tuple[str, ...]] = MappingProxyType(
            {s: tuple(names) for s, names in due.items()}
        )
        self._check()

    def __iter__(self) -> Iterator[CommandDef]:
        return iter(self.definitions)

    def __len__(self) -> int:
        return len(self.definitions)

    def __getitem__(self, name: str) -> CommandDef:
        return self.commands[name]

    def __contains__(self, name: object) -> bool:
        return name in self.commands

    def with_command(
        self, definition: CommandDef, transitions: Iterable[Mapping[str, Any]] = ()
    ) -> Registry:
        """A new registry: these definitions and ``definition`` (and its transitions)."""
        return Registry([*self.definitions, definition], [*self.transitions, *transitions])

    def transitions_of(self, trigger: str) -> list[Mapping[str, Any]]:
        return [t for t in self.transitions if str(t["trigger"]) == trigger]

    def rules_of(self, trigger: str) -> list[str]:
        """The rules the transitions of ``trigger`` check (``!rule``: taken when it fails)."""
        rules: list[str] = []
        for t in self.transitions_of(trigger):
            names = [*t.get("conditions", ()), *(f"!{u}" for u in t.get("unless", ()))]
            rules.extend(n for n in names if n not in rules)
        return rules

    def _check(self) -> None:
        """The definitions agree with each other and with the transition table."""
        table: dict[str, list[Mapping[str, Any]]] = {}
        for t in self.transitions:
            table.setdefault(str(t["trigger"]), []).append(t)
        problems: list[str] = []
        for trigger in table:
            if trigger not in self.by_trigger:
                problems.append(f"trigger {trigger!r} of the transition table has no command")
        for d in self.definitions:
            if d.reason not in REASON_POLICIES:
                problems.append(f"{d.name}: reason {d.reason!r} is not one of {REASON_POLICIES}")
            if d.kind == "move" and not d.moves:
                problems.append(f"{d.name}: a move command fires at least one trigger")
            if d.kind != "move" and d.moves:
                problems.append(f"{d.name}: a {d.kind} fires no trigger")
            for trigger in d.triggers:
                rows = table.get(trigger)
                if not rows:
                    problems.append(f"{d.name}: trigger {trigger!r} is not in the table")
                elif d.reason == "always" and any(
                    "reason_given" not in r.get("conditions", ()) for r in rows
                ):
                    problems.append(
                        f"{d.name}: always needs a reason, but a transition of {trigger} does "
                        "not check the rule reason_given"
                    )
            if len(d.triggers) > 1 and d.trigger_of is None:
                problems.append(f"{d.name}: several triggers need trigger_of to choose one")
            unknown = set(d.correctable) - set(d.keys)
            if unknown:
                problems.append(f"{d.name}: correctable keys {sorted(unknown)} are not its keys")
            for example in d.examples:
                if example.get("command") != d.name:
                    problems.append(f"{d.name}: an example is of {example.get('command')!r}")
                elif d.kind == "move" and not set(example.get("payload") or {}) <= set(d.keys):
                    problems.append(f"{d.name}: an example's payload has keys it does not take")
            for state in d.next_in:
                if state not in {s.value for s in State}:
                    problems.append(f"{d.name}: next_in names {state!r}, not a state")
        if problems:
            raise RegistryError("; ".join(problems))


# ----------------------------------------------------------------------------------------------
# Example envelopes: examples.json (the docs' story, docs/commands.md), by command
# ----------------------------------------------------------------------------------------------

_EXAMPLES: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).with_name("examples.json")).read_text(encoding="utf-8")
)


def examples_of(name: str) -> tuple[Mapping[str, Any], ...]:
    """The example envelopes of command ``name`` (``examples.json``)."""
    return tuple(_EXAMPLES.get(name, ()))


# ----------------------------------------------------------------------------------------------
# The commands
# ----------------------------------------------------------------------------------------------

_SCREENING_SCHEMA = obj({"screening": {"$ref": "#/$defs/screening"}}, ("screening",))
_INFUSION_SCHEMA = obj(
    {
        "day": {
            "type": "integer",
            "enum": [1, 2, 3],
            "description": "D1 10 %, D2 30 %, D3 60 %: the integer 1, 2 or 3 (the "
            "service refuses 1.0, which JSON Schema counts as an integer)",
        },
        "cells": {"$ref": "#/$defs/cells"},
        "weight": {"$ref": "#/$defs/weight"},
        "product_lot": free_text(2000),
        "deviation_reason": free_text(
            2000, "why a deviation from the plan (dose, day) is accepted"
        ),
        "confirm_unusual_dose": {
            "type": "boolean",
            "description": "true: the clinician confirms a count that reads as a unit mix-up "
            "(cells vs cells/kg, a power of ten) was really given (with a deviation reason)",
        },
        "bag_id": text(
            200, "the bag infused: a bag of this patient's released lot for this fraction"
        ),
        "verified_by": text(
            200, "the second person who verified patient and bag at the bedside (not the actor)"
        ),
        "thawed_at": {
            "type": "string",
            "format": "date-time",
            "description": "when the bag was thawed (the thaw limit is a protocol parameter)",
        },
        "pre_infusion": {
            "$ref": "#/$defs/pre_infusion",
            "description": "the observations the pre-infusion gate reads (issue 20): optional "
            "under protocol 1.0 (judged when sent), required before D2 and D3 under 1.1",
        },
    },
    ("day",),
)
_INFUSION_SCHEMA["anyOf"] = [{"required": ["cells"]}, {"required": ["bag_id"]}]
_INFUSION_SCHEMA["dependentRequired"] = {
    "bag_id": ["verified_by", "thawed_at"],
    "verified_by": ["bag_id"],
    "thawed_at": ["bag_id"],
}
_DIN = {
    "type": "string",
    "minLength": 14,
    "maxLength": 20,
    # facility code 5 letters/digits, 2-digit year, 6-digit sequence, check character (spaces
    # anywhere); that the check character is the right one no pattern states
    "pattern": r"^ *([A-Za-z0-9] *){5}([0-9] *){8}[A-Za-z0-9*] *$",
    "description": "ISBT 128 donation identification number: 13 characters and its ISO 7064 MOD "
    "37-2 check character (spaces ignored). Not stated by this schema: the check character "
    "is the one ISO 7064 MOD 37-2 computes",
}
_COLLECTION_ID = text(200, "the site's own collection id (when it does not use ISBT 128)")
#: A collection is named by its DIN or by the site's id, never both (``product.parse_collection``).
#: The example (a course whose product is not tracked) lets a generator that starts from "every
#: property" (schemathesis's coverage phase) find a valid payload.
_ONE_COLLECTION_ID: Schema = {
    "not": {"required": ["din", "collection_id"]},
    "examples": [{"apheresis_contraindication": False}],
}
#: A new apheresis names its collection (``product.parse_repeat_apheresis``): one of the two.
_EXACTLY_ONE_COLLECTION_ID: Schema = {
    "oneOf": [{"required": ["din"]}, {"required": ["collection_id"]}],
    "examples": [{"apheresis_contraindication": False, "collection_id": "COL-2"}],
}
_INFUSION_SCHEMA["if"] = {"properties": {"day": {"const": 1}}}
_INFUSION_SCHEMA["then"] = {"required": ["weight"]}
_INFUSION_SCHEMA["else"] = {"not": {"required": ["weight"]}}

_S = State

# -- after the course (issue 16): the payloads' schemas are ``schemas.DEFS``' (derived from the
# payload Structs of ``payloads.PAYLOAD_TYPES``, by the names given there); a payload that is one
# Struct is a reference to its definition, which the command's schema inlines.


def _struct_object(alias: str) -> Schema:
    """The payload as one payload Struct (``payloads.PAYLOAD_TYPES[alias]`` or
    ``product.PRODUCT_PAYLOAD_TYPES[alias]``)."""
    assert alias in {**payloads.PAYLOAD_TYPES, **product.PRODUCT_PAYLOAD_TYPES}, alias
    return {"$ref": f"#/$defs/{alias}"}


DEFINITIONS: tuple[CommandDef, ...] = (
    CommandDef(
        name="screen",
        summary="Screen a new patient: eligible -> screened, otherwise screen_failed.",
        event="Screened",
        moves=[Move(trigger="screen")],
        required=("screening",),
        # the patient's site (issue 17): required by the service once the trial has sites
        optional=("site",),
        parse=site_rules.parse_screen_payload,
        outcome=blocks.screening_outcome,
        correctable=("screening",),
        payload_schema=obj(
            {"screening": {"$ref": "#/$defs/screening"}, "site": site_rules.SITE_SCHEMA},
            ("screening",),
        ),
        examples=examples_of("screen"),
        next_in=(_S.CANDIDATE,),
    ),
    CommandDef(
        name="rescreen",
        summary="Screen a screen-failed patient again.",
        event="Rescreened",
        moves=[Move(trigger="rescreen")],
        required=("screening",),
        parse=blocks.parse_screening_payload,
        outcome=blocks.screening_outcome,
        correctable=("screening",),
        payload_schema=_SCREENING_SCHEMA,
        examples=examples_of("rescreen"),
        next_in=(_S.SCREEN_FAILED,),
    ),
    CommandDef(
        name="record_apheresis",
        summary="T-cell collection (apheresis) done.",
        event="ApheresisRecorded",
        moves=[Move(trigger="record_apheresis", context=blocks.ctx_apheresis)],
        required=("apheresis_contraindication",),
        optional=("product_id", "din", "collection_id"),
        parse=product_commands.parse_apheresis,
        correctable=("apheresis_contraindication", "product_id"),
        payload_schema=obj(
            {
                "apheresis_contraindication": BOOL,
                "product_id": free_text(200, "the collected product's id (lot)"),
                "din": _DIN,
                "collection_id": _COLLECTION_ID,
            },
            ("apheresis_contraindication",),
        )
        | _ONE_COLLECTION_ID,
        examples=examples_of("record_apheresis"),
        next_in=(_S.SCREENED,),
    ),
    CommandDef(
        name="start_manufacture",
        summary="Manufacture of a lot from the patient's collection started (the course waits "
        "in apheresed).",
        event="ManufactureStarted",
        moves=[Move(trigger="start_manufacture", context=product.ctx_manufacture)],
        required=("lot_id",),
        optional=("collection_id",),
        parse=product.parse_start_manufacture,
        payload_schema=_struct_object("start_manufacture"),
        examples=examples_of("start_manufacture"),
    ),
    CommandDef(
        name="release_product",
        summary="The release decision of a lot: its release tests as reported by the lab, "
        "released (with its bags and expiry) or rejected (a failed manufacture).",
        event="ProductReleased",
        moves=[Move(trigger="release_product", context=product.ctx_release)],
        required=("lot_id", "decision", "tests", "released_by", "manufactured_on"),
        optional=("expires_at", "bags", "exception_reason"),
        parse=product.parse_release,
        outcome=product.release_outcome,
        payload_schema=_struct_object("release_product"),
        examples=examples_of("release_product"),
    ),
    CommandDef(
        name="repeat_apheresis",
        summary="A new apheresis after a failed manufacture (with a reason).",
        event="ApheresisRepeated",
        moves=[Move(trigger="repeat_apheresis", context=product.ctx_manufacture)],
        required=("apheresis_contraindication",),
        optional=("din", "collection_id"),
        parse=product.parse_repeat_apheresis,
        reason="always",
        reason_asks="why a new apheresis is collected",
        payload_schema=obj(
            {"apheresis_contraindication": BOOL, "din": _DIN, "collection_id": _COLLECTION_ID},
            ("apheresis_contraindication",),
        )
        | _EXACTLY_ONE_COLLECTION_ID,
        examples=examples_of("repeat_apheresis"),
    ),
    CommandDef(
        name="give_infusion",
        summary="A CAR-T fraction given: day 1 (10 %), 2 (30 %) or 3 (60 %) of the course dose.",
        event="InfusionGiven",
        moves=[
            Move(
                trigger="infuse_d1",
                context=pre_infusion.with_gate_hold(product.with_product(blocks.ctx_d1)),
            ),
            Move(
                trigger="infuse_d2",
                context=pre_infusion.with_gate_hold(product.with_product(blocks.ctx_later_day(2))),
            ),
            Move(
                trigger="infuse_d3",
                context=pre_infusion.with_gate_hold(product.with_product(blocks.ctx_later_day(3))),
            ),
        ],
        trigger_of=blocks.infusion_trigger,
        required=("day",),
        optional=(
            "cells",
            "weight",
            "product_lot",
            "deviation_reason",
            *product.BEDSIDE_KEYS,
            "pre_infusion",
            "confirm_unusual_dose",
        ),
        parse=pre_infusion.parse_infusion_observations(product_commands.parse_infusion),
        outcome=pre_infusion.with_gate_outcome(blocks.infusion_outcome),
        correctable=("cells", "weight", "product_lot", "deviation_reason", "pre_infusion"),
        payload_schema=_INFUSION_SCHEMA,
        examples=examples_of("give_infusion"),
        next_in=(_S.APHERESED, _S.CONTINUED, _S.INFUSED_D1, _S.INFUSED_D2),
    ),
    # -- the pre-infusion gate (issue 20) -------------------------------------------------------
    CommandDef(
        name="assess_pre_infusion",
        summary="A bedside assessment before the next fraction (temperature, room-air SpO2, "
        "vasopressors, infection): a failing pre-infusion gate holds the fraction until a "
        "re-assessment meets it or the fraction is given. The state does not change.",
        event="PreInfusionAssessed",
        moves=[Move(trigger="assess_pre_infusion", context=pre_infusion.ctx_assessment)],
        required=("day", "pre_infusion"),
        parse=pre_infusion.parse_assessment,
        outcome=pre_infusion.assessment_outcome,
        correctable=("pre_infusion",),
        payload_schema=obj(
            {
                "day": {
                    "type": "integer",
                    "enum": [1, 2, 3],
                    "description": "the fraction assessed: the course's next one",
                },
                "pre_infusion": {"$ref": "#/$defs/pre_infusion"},
            },
            ("day", "pre_infusion"),
        ),
        examples=examples_of("assess_pre_infusion"),
    ),
    CommandDef(
        name="report_toxicity",
        summary="CRS, ICANS or another toxicity observed (a new episode, or an update of an "
        "open one by its toxicity_id). The state does not change.",
        event="ToxicityReported",
        moves=[Move(trigger="report_toxicity")],
        required=("toxicity",),
        optional=("toxicity_id", "adverse_event"),
        parse=follow_up.parse_toxicity_ae,
        check_time=follow_up.toxicity_time,
        check_reason=toxicity.explicit_icans_reason,
        outcome=follow_up.toxicity_ae_outcome,
        correctable=("toxicity", "toxicity_id", "adverse_event"),
        episode=True,
        payload_schema=obj(
            {
                "toxicity": {"$ref": "#/$defs/toxicity"},
                "toxicity_id": free_text(
                    100, "the open episode this updates; leave out for a new episode"
                ),
                "adverse_event": {
                    "$ref": "#/$defs/adverse_event",
                    "description": "attribution, ICH E2A seriousness, expectedness, outcome "
                    "and awareness time: a serious one starts the SAE reporting clocks",
                },
            },
            ("toxicity",),
        ),
        examples=examples_of("report_toxicity"),
    ),
    CommandDef(
        name="resolve_toxicity",
        summary="An open toxicity resolved (lifts the hold it caused).",
        event="ToxicityResolved",
        moves=[Move(trigger="resolve_toxicity", context=blocks.ctx_resolve)],
        required=("toxicity_id",),
        parse=blocks.parse_resolution,
        check_time=blocks.resolution_time,
        episode=True,
        payload_schema=obj({"toxicity_id": free_text(100)}, ("toxicity_id",)),
        examples=examples_of("resolve_toxicity"),
    ),
    CommandDef(
        name="cancel_remaining_fractions",
        summary="The course's remaining fractions will not be given (e.g. after toxicity).",
        event="FractionsCancelled",
        moves=[Move(trigger="cancel_remaining_fractions", context=blocks.ctx_course_end)],
        reason="always",
        reason_asks="why the course's remaining fractions will not be given",
        examples=examples_of("cancel_remaining_fractions"),
    ),
    CommandDef(
        name="assess_response",
        summary="Response assessment of the course: CR, CRi, PR or NR (computed; a clinician's "
        "differing response needs a reason).",
        event="ResponseAssessed",
        moves=[Move(trigger="assess_response", context=blocks.ctx_course_end)],
        required=("assessment",),
        optional=("clinician_response",),
        parse=blocks.parse_assessment,
        outcome=blocks.response_outcome,
        reason="when the rules say so",
        correctable=("assessment", "clinician_response"),
        payload_schema=obj(
            {
                "assessment": {"$ref": "#/$defs/assessment"},
                "clinician_response": {
                    "enum": list(response.RESPONSES),
                    "description": "a clinician's response differing from the computed one "
                    "(needs a reason)",
                },
            },
            ("assessment",),
        ),
        examples=examples_of("assess_response"),
        next_in=(_S.INFUSED_D3,),
    ),
    CommandDef(
        name="continue_treatment",
        summary="Another course decided (PR: up to 3 courses in all; CR/CRi/NR: clinical "
        "decision with a reason).",
        event="CourseContinued",
        moves=[Move(trigger="continue_treatment", context=blocks.ctx_decision)],
        reason="when the rules say so",
        examples=examples_of("continue_treatment"),
        next_in=(_S.ASSESSED,),
    ),
    CommandDef(
        name="cease",
        summary="Treatment ceased (after CR/CRi a reason is required).",
        event="TreatmentCeased",
        moves=[Move(trigger="cease", context=blocks.ctx_decision)],
        reason="when the rules say so",
        examples=examples_of("cease"),
        next_in=(_S.ASSESSED,),
    ),
    CommandDef(
        name="discontinue",
        summary="Treatment discontinued for severe toxicity (e.g. CRS grade >= 3).",
        event="TreatmentDiscontinued",
        moves=[
            Move(
                trigger="discontinue",
                context=blocks.ctx_discontinue,
                allowed_context=blocks.ctx_discontinue_worst,
            )
        ],
        reason="always",
        reason_asks="why treatment is discontinued",
        examples=examples_of("discontinue"),
        next_in=(_S.ASSESSED,),
    ),
    CommandDef(
        name="withdraw",
        summary="Patient withdrawn from the study.",
        event="Withdrawn",
        moves=[Move(trigger="withdraw")],
        reason="always",
        reason_asks="why the patient is withdrawn",
        examples=examples_of("withdraw"),
    ),
    CommandDef(
        name="record_death",
        summary="Patient died.",
        event="DeathRecorded",
        moves=[Move(trigger="record_death")],
        optional=("cause", "cause_of_death", "aware_at"),
        parse=follow_up.parse_death,
        check_time=follow_up.death_time,
        outcome=follow_up.death_outcome,
        payload_schema=obj(
            {
                "cause": free_text(500),
                "cause_of_death": {"$ref": "#/$defs/cause_of_death"},
                "aware_at": {
                    "type": "string",
                    "format": "date-time",
                    "pattern": payloads.INSTANT_PATTERN,
                    "description": "when the site became aware (ISO time with offset)",
                },
            }
        ),
        examples=examples_of("record_death"),
    ),
    # -- after the course (issue 16) -----------------------------------------------------------
    CommandDef(
        name="record_follow_up",
        summary="A follow-up visit after the end of treatment (disease status, B-cell aplasia, "
        "IgG, new malignancy, vital status). The state does not change.",
        event="FollowUpRecorded",
        moves=[Move(trigger="record_follow_up", context=follow_up.ctx_follow_up)],
        required=("visit", "disease_status"),
        optional=(
            "vital_status",
            "b_cell_aplasia",
            "igg",
            "ig_replacement",
            "new_malignancy",
            "note",
        ),
        parse=follow_up.parse_follow_up,
        check_time=follow_up.follow_up_time,
        outcome=follow_up.follow_up_outcome,
        episode=True,
        payload_schema=_struct_object("follow_up"),
        examples=examples_of("record_follow_up"),
        next_in=(_S.CEASED, _S.DISCONTINUED),
    ),
    CommandDef(
        name="record_missed_visit",
        summary="A follow-up visit that did not take place, with its reason (lost to follow-up "
        "after the protocol's number of consecutive missed visits).",
        event="VisitMissed",
        moves=[Move(trigger="record_missed_visit", context=follow_up.ctx_follow_up)],
        required=("visit", "missed_reason"),
        parse=follow_up.parse_missed_visit,
        check_time=follow_up.follow_up_time,
        outcome=follow_up.missed_visit_outcome,
        episode=True,
        payload_schema=_struct_object("missed_visit"),
        examples=examples_of("record_missed_visit"),
    ),
    CommandDef(
        name="record_sae_report",
        summary="A safety report of a serious adverse event sent (initial, follow-up or "
        "expedited SUSAR report; its clinical time is when it was sent). A late report is "
        "recorded with its delay.",
        event="SaeReportSent",
        moves=[Move(trigger="record_sae_report", context=follow_up.ctx_sae_report)],
        required=("case_id", "report", "sent_to"),
        optional=("reference",),
        parse=follow_up.parse_sae_report,
        check_time=follow_up.sae_report_time,
        outcome=follow_up.sae_report_outcome,
        correctable=("sent_to", "reference"),
        episode=True,
        payload_schema=_struct_object("sae_report"),
        examples=examples_of("record_sae_report"),
    ),
    CommandDef(
        name="transfer_site",
        summary="The patient moves to another site (a hospital transfer), with a reason; the "
        "state does not change. The new site's tokens see the patient from then on, the old "
        "site's no longer.",
        event="SiteTransferred",
        moves=[Move(trigger="transfer_site")],
        required=("site",),
        parse=site_rules.parse_transfer,
        outcome=site_rules.transfer_outcome,
        reason="always",
        reason_asks="why the patient moves to another site",
        episode=True,
        payload_schema=obj({"site": site_rules.SITE_SCHEMA}, ("site",)),
        examples=examples_of("transfer_site"),
    ),
    CommandDef(
        name="correct",
        summary="Correct a recorded fact: a new event naming the corrected version, with a reason.",
        event="FactCorrected",
        kind="correction",
        required=CORRECTION_KEYS,
        reason="always",
        reason_asks="what was wrong and why",
        payload_schema=obj(
            {
                "corrects": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the version of the event whose facts are corrected",
                },
                "changes": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"not": {"const": "day"}},
                    "description": "payload keys of the corrected command (and occurred_at) "
                    "with their new values",
                },
            },
            CORRECTION_KEYS,
        ),
        examples=examples_of("correct"),
    ),
    CommandDef(
        name="sign",
        summary="An investigator's electronic signature of a recorded milestone.",
        event="MilestoneSigned",
        kind="signature",
        required=SIGNATURE_KEYS,
        payload_schema=obj(
            {
                "milestone": {"enum": list(MILESTONES)},
                "signs_version": {"type": "integer", "minimum": 1},
                "meaning": {"enum": list(SIGNATURE_MEANINGS)},
                "printed_name": text(200),
            },
            SIGNATURE_KEYS,
        ),
        examples=examples_of("sign"),
    ),
)

# -- data queries (issue 17): a monitor asks, the site answers, the monitor closes or re-opens.
# They never move the state; the service decides them with ``protocol/queries.py``.
_QUERY_ID = text(40, "the query's id, e.g. Q-7 (the version of the event that opened it)")
_QUERY_TEXT = free_text(queries.TEXT_MAX)
QUERY_DEFINITIONS: tuple[CommandDef, ...] = (
    CommandDef(
        name="open_query",
        summary="A monitor's data query on the patient, or on a recorded value (an event "
        "version and a field path of it). The state does not change.",
        event="QueryOpened",
        kind="query",
        required=("text",),
        optional=("on_version", "field"),
        payload_schema=obj(
            {
                "text": free_text(
                    queries.TEXT_MAX, "the question, e.g. 'D2 cells: the source says 1.8e7'"
                ),
                "on_version": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the version of the event the query is about",
                },
                "field": text(
                    queries.FIELD_MAX,
                    "a field path of that event: payload.cells, payload.cells.value, "
                    "occurred_at, reason (a correction: changes....)",
                ),
            },
            ("text",),
        ),
        examples=examples_of("open_query"),
        roles=queries.MONITOR_ROLES,
    ),
    CommandDef(
        name="answer_query",
        summary="The site's answer to an open or re-opened query (optionally naming the "
        "correction it recorded).",
        event="QueryAnswered",
        kind="query",
        required=("query_id", "text"),
        optional=("correction",),
        payload_schema=obj(
            {
                "query_id": _QUERY_ID,
                "text": _QUERY_TEXT,
                "correction": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the version of the correct command's event the site "
                    "recorded for this query",
                },
            },
            ("query_id", "text"),
        ),
        examples=examples_of("answer_query"),
        roles=queries.SITE_ROLES,
    ),
    CommandDef(
        name="close_query",
        summary="The monitor closes a query (one not answered: with a reason).",
        event="QueryClosed",
        kind="query",
        required=("query_id",),
        reason="when the rules say so",
        reason_asks="why the query is closed without the site's answer",
        payload_schema=obj({"query_id": _QUERY_ID}, ("query_id",)),
        examples=examples_of("close_query"),
        roles=queries.MONITOR_ROLES,
    ),
    CommandDef(
        name="reopen_query",
        summary="The monitor re-opens an answered or closed query: the site is asked again.",
        event="QueryReopened",
        kind="query",
        required=("query_id", "text"),
        payload_schema=obj({"query_id": _QUERY_ID, "text": _QUERY_TEXT}, ("query_id", "text")),
        examples=examples_of("reopen_query"),
        roles=queries.MONITOR_ROLES,
    ),
)

#: The commands of the contract.
REGISTRY = Registry((*DEFINITIONS, *QUERY_DEFINITIONS))
