"""Malformed commands are answered alike at every entry point: the Python service, ``cart-course
record``, the per-line report of ``cart-course ingest`` and both HTTP routes say
``invalid_command`` (CLI exit 2, HTTP 422) naming the same field, on one line.

The cases are what a reviewer found answered otherwise: a decimal infusion day (``1.0`` was
refused as the unknown move ``infuse_d1.0``), a missing reason where the command always needs one
(refused by the protocol as 409), date-times in ISO 8601's other forms (recorded), and key names
with line breaks or thousands of characters (echoed raw, breaking the one-line error)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, stack
from litestar.testing import TestClient

from cart_course.contract import parse_command
from cart_course.errors import InvalidCommandError
from cart_course.service import CourseService

CLI = str(Path(sys.executable).with_name("cart-course"))
DOCS = Path(__file__).resolve().parents[2] / "docs"
LONG_KEY = "k" * 3000


def _story() -> list[dict[str, Any]]:
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```jsonl\n(.*?)```", text, flags=re.DOTALL)
    return [json.loads(line) for line in block.splitlines() if line.strip()]


#: P-101 screened, apheresed and given D1 (state infused_d1, version 4).
SETUP = _story()[:3]
ACTOR = {"id": "dr.lee", "role": "clinician"}


def _envelope(command: str, payload: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "command": command,
        "patient_id": "P-101",
        "occurred_at": "2026-01-23T09:30:00+01:00",
        "actor": ACTOR,
        "payload": payload or {},
    }
    body.update(extra)
    return body


def _d2(day: Any, **extra_payload: Any) -> dict[str, Any]:
    return _envelope(
        "give_infusion", {"day": day, "cells": {"value": 2.1e7, "unit": "cells"}, **extra_payload}
    )


#: (case id, envelope, the field named)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("day 2.0", _d2(2.0), "payload.day"),
    ("day 1.0", _d2(1.0), "payload.day"),
    ("day 3.0", _d2(3.0), "payload.day"),
    ("day true", _d2(True), "payload.day"),
    ("withdraw without reason", _envelope("withdraw"), "reason"),
    ("discontinue with reason null", _envelope("discontinue", reason=None), "reason"),
    ("cancel with a blank reason", _envelope("cancel_remaining_fractions", reason="  "), "reason"),
    (
        "correct without reason",
        _envelope("correct", {"corrects": 4, "changes": {"product_lot": "L-2"}}),
        "reason",
    ),
    (
        "week date, offset with seconds",
        _envelope("withdraw", reason="x", occurred_at="2026-W04-5x09:30:00+01:00:30"),
        "occurred_at",
    ),
    (
        "basic format",
        _envelope("withdraw", reason="x", occurred_at="20260123T093000+0100"),
        "occurred_at",
    ),
    (
        "line break for T",
        _envelope("withdraw", reason="x", occurred_at="2026-01-23\n09:30:00+01:00"),
        "occurred_at",
    ),
    (
        "offset with seconds",
        _envelope("withdraw", reason="x", occurred_at="2026-01-23T09:30:00+01:00:30"),
        "occurred_at",
    ),
    (
        "envelope key with line breaks",
        {**_envelope("withdraw", reason="x"), "bad\nkey\nhere": 1},
        "'bad\\nkey\\nhere'",
    ),
    ("payload key with a line break", _d2(2, **{"x\ny": 1}), "payload.'x\\ny'"),
    (
        "a 3000-character envelope key",
        {**_envelope("withdraw", reason="x"), LONG_KEY: 1},
        f"{'k' * 40!r}... (3000 characters)",
    ),
    (
        "a 3000-character payload key",
        _d2(2, **{LONG_KEY: 1}),
        f"payload.{'k' * 40!r}... (3000 characters)",
    ),
    (
        "expected_version 4.0",
        _envelope("withdraw", reason="x", expected_version=4.0),
        "expected_version",
    ),
    (
        "expected_version true",
        _envelope("withdraw", reason="x", expected_version=True),
        "expected_version",
    ),
    (
        "expected_version of 30 digits",
        _envelope("withdraw", reason="x", expected_version=10**29),
        "expected_version",
    ),
]
IDS = [c[0] for c in CASES]


def _check_message(field: str, message: str) -> None:
    """One line, starting with the field, never the whole of a long key; what is allowed."""
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{field}: "), (field, message)
    assert len(message) < 600, len(message)
    if field == "occurred_at":  # refused for its form (the times are after P-101's last move)
        assert "YYYY-MM-DDThh:mm[:ss[.fraction]]" in message, message


# -- Python -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("why", "envelope", "field"), CASES, ids=IDS)
def test_python_service(
    memory_service: CourseService, why: str, envelope: dict[str, Any], field: str
) -> None:
    for line in SETUP:
        memory_service.execute(parse_command(line))
    with pytest.raises(InvalidCommandError) as caught:
        memory_service.execute(parse_command(copy.deepcopy(envelope)))
    body = caught.value.to_json()
    assert (body["error"], body["field"]) == ("invalid_command", field), why
    _check_message(field, body["message"])
    if field == "reason":
        assert f"{envelope['command']} requires a reason" in body["message"]
    if field == "payload.day":
        assert "1, 2 or 3, an integer" in body["message"]
    assert memory_service.record("P-101").version == 4


# -- CLI ----------------------------------------------------------------------------------------


def _cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CART_COURSE_")}
    return subprocess.run(
        [CLI, "--db", str(db), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("entry")
    db = root / "store.sqlite"
    setup = root / "setup.jsonl"
    setup.write_text("".join(json.dumps(line) + "\n" for line in SETUP), encoding="utf-8")
    done = _cli("ingest", "--workers", "1", str(setup), db=db)
    assert done.returncode == 0, done.stderr
    return db


@pytest.mark.parametrize(
    ("why", "envelope", "field"),
    [c for c in CASES if c[0] in {"day 1.0", "withdraw without reason", "line break for T"}]
    + [c for c in CASES if "key" in c[0]],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_cli_record(cli_db: Path, why: str, envelope: dict[str, Any], field: str) -> None:
    done = _cli("record", json.dumps(envelope), db=cli_db)
    assert done.returncode == 2, (why, done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    _check_message(field, lines[0].removeprefix("error: "))


def test_cli_ingest_reports_each_line_on_one_line(cli_db: Path, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for _, e, _ in CASES), encoding="utf-8")
    report = tmp_path / "report.txt"
    done = _cli("ingest", "--workers", "1", "--errors", str(report), str(source), db=cli_db)
    assert done.returncode == 1, done.stderr
    assert f"{len(CASES)} rejected" in done.stdout + done.stderr
    lines = report.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(CASES), lines
    for number, (line, (why, _, field)) in enumerate(zip(lines, CASES, strict=True), start=1):
        prefix = f"line {number}: invalid_command: "
        assert line.startswith(prefix), (why, line)
        _check_message(field, line.removeprefix(prefix))


# -- HTTP, both routes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Stack, TestClient[Any]]]:
    with stack("memory:") as s, TestClient(s.app) as client:
        for line in SETUP:
            s.service.execute(parse_command(line))
        yield s, client


def _problem(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert (body["error"], body["field"]) == ("invalid_command", field)
    assert body["message"] == body["detail"]
    _check_message(field, body["message"])


@pytest.mark.parametrize(("why", "envelope", "field"), CASES, ids=IDS)
def test_http_envelope_route(
    api: tuple[Stack, TestClient[Any]], why: str, envelope: dict[str, Any], field: str
) -> None:
    s, client = api
    body = {k: v for k, v in envelope.items() if k != "actor"}
    _problem(client.post("/v1/commands", json=body, headers=s.auth("clinician")), field)


@pytest.mark.parametrize(("why", "envelope", "field"), CASES, ids=IDS)
def test_http_patient_route(
    api: tuple[Stack, TestClient[Any]], why: str, envelope: dict[str, Any], field: str
) -> None:
    s, client = api
    body = {k: v for k, v in envelope.items() if k not in ("actor", "command", "patient_id")}
    path = f"/v1/patients/P-101/commands/{envelope['command']}"
    _problem(client.post(path, json=body, headers=s.auth("clinician")), field)
    assert s.service.record("P-101").version == 4


# -- every invalid field, at every entry point ---------------------------------------------------

#: A screening with three invalid fields: each is named in ``problems``, the first is the
#: headline (``field``, ``message``).
MANY = {
    "command": "screen",
    "patient_id": "P-777",
    "occurred_at": "2026-01-05T09:30:00+01:00",
    "actor": ACTOR,
    "payload": {
        "screening": {
            "kps": 180,
            "alt": {"value": 20, "unit": "U/L", "uln": 2},
            "hemoglobin": {"value": 12, "unit": "mmol/L"},
        }
    },
}
MANY_FIELDS = {
    "payload.screening.kps",
    "payload.screening.alt.uln",
    "payload.screening.hemoglobin.unit",
}


def _check_problems(body: dict[str, Any]) -> None:
    assert body["error"] == "invalid_command", body
    problems = body["problems"]
    assert {p["field"] for p in problems} == MANY_FIELDS, problems
    assert (problems[0]["field"], problems[0]["message"]) == (
        body["field"],
        body["message"].removeprefix(f"{body['field']}: ").split(" (and ")[0],
    )
    assert all(p["message"] for p in problems)


def test_every_invalid_field_python(memory_service: CourseService) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        memory_service.execute(parse_command(copy.deepcopy(MANY)))
    _check_problems(caught.value.to_json())


def test_every_invalid_field_cli_record_json(cli_db: Path) -> None:
    done = _cli("record", "--json", json.dumps(MANY), db=cli_db)
    assert done.returncode == 2, done.stderr
    _check_problems(json.loads(done.stdout))


def test_every_invalid_field_ingest_jsonl_report(cli_db: Path, tmp_path: Path) -> None:
    source = tmp_path / "many.jsonl"
    source.write_text(json.dumps(MANY) + "\n", encoding="utf-8")
    report = tmp_path / "report.jsonl"
    done = _cli(
        "ingest", "--workers", "1", "--errors", str(report), "--errors-format", "jsonl",
        str(source), db=cli_db,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = report.read_text(encoding="utf-8").splitlines()
    _check_problems(json.loads(line))


def test_every_invalid_field_http(api: tuple[Stack, TestClient[Any]]) -> None:
    s, client = api
    body = {k: v for k, v in MANY.items() if k != "actor"}
    response = client.post("/v1/commands", json=body, headers=s.auth("clinician"))
    assert response.status_code == 422, response.text
    _check_problems(response.json())


def test_a_conflict_with_the_record_is_409_not_422(api: tuple[Stack, TestClient[Any]]) -> None:
    """Well-formed, but the record says no: a move before the patient's last move, a correction
    of a version that is not a correctable move, a signature of a version that is not the
    milestone (docs/commands.md, "Rejections": ``record_conflict``)."""
    s, client = api
    cases = [
        (_envelope("withdraw", reason="x", occurred_at="2026-01-01T09:30:00+01:00"), "occurred_at"),
        (
            _envelope("correct", {"corrects": 1, "changes": {"product_lot": "L"}}, reason="x"),
            "payload.corrects",
        ),
        (
            _envelope("correct", {"corrects": 99, "changes": {"product_lot": "L"}}, reason="x"),
            "payload.corrects",
        ),
        (
            _envelope(
                "sign",
                {
                    "milestone": "eligibility",
                    "signs_version": 3,
                    "meaning": "approval",
                    "printed_name": "Dr Lee",
                },
            ),
            "payload.signs_version",
        ),
    ]
    # A signer signs with the name registered with their token (issue 14).
    _, named = s.tokens.add("dr.lee.named", "clinician", name="Dr Lee")
    for envelope, field in cases:
        body = {k: v for k, v in envelope.items() if k != "actor"}
        response = client.post(
            "/v1/commands", json=body, headers={"Authorization": f"Bearer {named}"}
        )
        assert response.status_code == 409, response.text
        problem = response.json()
        assert (problem["error"], problem["field"]) == ("record_conflict", field), problem
        assert problem["problems"][0]["field"] == field
    assert s.service.record("P-101").version == 4
