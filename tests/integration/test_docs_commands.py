"""docs/commands.md is true: every command example is valid against its schema and records
through the service; every rejection example is what the service answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from cart_course.contract import ALL_COMMANDS, parse_command
from cart_course.errors import CartCourseError
from cart_course.protocol import catalog
from cart_course.protocol.registry import REGISTRY
from cart_course.schemas import SCHEMAS
from cart_course.service import CourseService

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def story() -> list[dict[str, Any]]:
    (jsonl,) = blocks("jsonl")
    return [json.loads(line) for line in jsonl.splitlines() if line.strip()]


def examples() -> list[dict[str, Any]]:
    return [json.loads(b) for b in blocks("json")]


def test_every_command_example_is_valid_and_part_of_the_story() -> None:
    commands = [e for e in examples() if "actor" in e]
    assert {c["command"] for c in commands} == set(ALL_COMMANDS)
    lines = story()
    for command in [*commands, *lines]:
        errors = list(
            jsonschema.Draft202012Validator(SCHEMAS[command["command"]]).iter_errors(command)
        )
        assert errors == [], (command["command"], [e.message for e in errors])
    for command in commands:
        assert command in lines, command["command"]


def test_the_story_records_every_line_and_then_nothing_new(memory_service: CourseService) -> None:
    lines = story()
    results = [memory_service.execute(parse_command(line)) for line in lines[:-1]]
    # the story's last line transfers P-101 to site S02, which the trial defines by then (the
    # screenings before it name no site: a trial without sites, as stores of the last release)
    assert lines[-1]["command"] == "transfer_site"
    memory_service.sites.store().add("S02", "Lyon Sud", "Europe/Paris", created_by="admin")
    results.append(memory_service.execute(parse_command(lines[-1])))
    assert [r.status for r in results] == ["recorded"] * len(lines)
    again = memory_service.execute_batch([parse_command(line) for line in lines])
    assert [getattr(r, "status", r) for r in again] == ["duplicate"] * len(lines)
    states = {row["patient_id"]: row["state"] for row in memory_service.patients()}
    assert states == {
        "P-101": "ceased",
        "P-102": "discontinued",
        "P-103": "withdrawn",
        "P-104": "died",
        "P-105": "infused_d1",
    }
    # The result example is the D1 infusion's result as recorded.
    (documented,) = [e for e in examples() if e.get("status") == "recorded"]
    d1 = next(r for r in results if r.idempotency_key == documented["idempotency_key"])
    assert d1.to_json()["outcome"] == documented["outcome"]
    assert {k: v for k, v in d1.to_json().items() if k != "allowed_moves"} == {
        k: v for k, v in documented.items() if k != "allowed_moves"
    }


def test_the_rejection_examples_are_what_the_service_answers(
    memory_service: CourseService,
) -> None:
    lines = story()
    p101 = [line for line in lines if line["patient_id"] == "P-101"]
    by_key = {line["idempotency_key"]: line for line in p101}
    for line in p101[:4]:  # screened, apheresis, D1, CRS report (opens a hold)
        memory_service.execute(parse_command(line))
    crs = by_key["P-101-crs-1"]
    hotter = json.loads(json.dumps(crs))
    hotter["payload"]["toxicity"]["observations"]["temperature"]["value"] = 39.0
    attempts = {
        "move_refused": by_key["P-101-c1-d2"],
        "invalid_command": {**by_key["P-101-crs-1-resolved"], "payload": {"toxicity_id": 5}},
        "patient_not_found": {
            **by_key["P-101-apheresis"],
            "patient_id": "P-999",
            "expected_version": None,
        },
        "version_conflict": {**by_key["P-101-crs-1-resolved"], "expected_version": 3},
        "idempotency_conflict": hotter,
    }
    documented = {e["error"]: e for e in examples() if "error" in e}
    assert set(documented) == set(attempts)
    for code, command in attempts.items():
        try:
            memory_service.execute(parse_command(command))
        except CartCourseError as exc:
            assert exc.to_json() == documented[code], code
        else:
            raise AssertionError(f"{code}: recorded")


def test_the_command_tables_are_generated_from_the_registry() -> None:
    page = DOC.read_text(encoding="utf-8")
    assert page.count(catalog.BEGIN) == 1 and page.count(catalog.END) == 1
    assert page == catalog.update_commands_doc(page), (
        f"the command tables of docs/commands.md are stale: regenerate them with "
        f"`{catalog.REGENERATE}`"
    )
    generated = page.split(catalog.BEGIN, 1)[1].split(catalog.END, 1)[0]
    assert generated.strip() == catalog.commands_markdown().strip()


def test_each_commands_first_example_is_its_definitions_example() -> None:
    first: dict[str, dict[str, Any]] = {}
    for example in examples():
        if "actor" in example:
            first.setdefault(example["command"], example)
    assert {name: REGISTRY[name].examples[0] for name in first} == first
