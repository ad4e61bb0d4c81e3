"""The CLI speaks one language: with ``--json`` every command's error is also printed on stdout
as its JSON body (the contract's rejection body: ``error``, ``message``, ``field`` where there is
one), the one line stays on stderr, and the exit status is the same with and without ``--json``.

Run in-process (``cli.main``) so that each family's errors are cheap to cover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cli_course import APHERESIS, SCREEN

from cart_course.cli import main


def invoke(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    for name in ("CART_COURSE_DB", "CART_COURSE_CIPHER_KEY", "CART_COURSE_COMPRESS"):
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def both(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    db: str,
    args: tuple[str, ...],
) -> tuple[int, dict[str, Any], str]:
    """Run ``args`` without and with ``--json``: the same exit status and stderr line; returns
    the status, the JSON body and the line."""
    status, out, err = invoke(capsys, monkeypatch, "--db", db, *args)
    assert status != 0
    assert out == ""  # without --json, an error is only its line on stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    status_json, out_json, err_json = invoke(capsys, monkeypatch, "--db", db, *args, "--json")
    assert status_json == status
    assert [line for line in err_json.splitlines() if line.strip()] == lines
    body = json.loads(out_json)
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["message"]
    return status, body, lines[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "cli.sqlite")


COURSE = [
    # (args, exit status, error code, field)
    (("show",), 2, "invalid_request", "PATIENT_ID"),
    (("show", "NOBODY"), 1, "patient_not_found", None),
    (("show", "bad id!"), 2, "invalid_request", "PATIENT_ID"),
    (("record", "{not json"), 2, "invalid_json", "SOURCE"),
    (("record", json.dumps({**SCREEN, "actor": None})), 2, "invalid_command", "actor"),
    (("record", json.dumps({**SCREEN, "colour": "red"})), 2, "invalid_command", "colour"),
    (("ingest", "no-such-file.jsonl"), 2, "invalid_request", "FILE"),
    (("ingest", "-", "--workers", "0"), 2, "invalid_request", "--workers"),
    (("demo", "--patients", "0"), 2, "invalid_request", "--patients"),
    (("patients", "--no-such-option"), 2, "invalid_request", None),
]
AUDIT = [
    (("audit", "history"), 2, "invalid_request", "PATIENT_ID"),
    (("audit", "history", "NOBODY"), 1, "patient_not_found", None),
    (("audit", "as-of", "NOBODY"), 2, "invalid_request", None),
    (("audit", "conformance", "--protocol", "v99"), 2, "invalid_request", "--protocol"),
    (("audit", "verify", "--seal", "no-such-seal"), 2, "invalid_request", "--seal"),
    (("audit", "seal"), 2, "invalid_request", "FILE"),
]
VIEWS = [
    (("status", "--now", "yesterday"), 2, "invalid_request", "--now"),
    (("status", "--state", "nowhere"), 2, "invalid_request", "--state"),
    (("views", "watchlist", "--wait-for", "999", "--timeout", "0"), 1, "views_timeout", None),
    (("views", "deviations", "--patient", "bad id!"), 2, "invalid_request", "--patient"),
    (("views", "follow", "--interval", "0"), 2, "invalid_request", "--interval"),
]
TOKENS = [
    (("tokens", "revoke", "tok_nothing"), 1, "token_not_found", None),
    (("tokens", "add", "a.tester", "wizard"), 2, "invalid_request", "ROLE"),
    (("tokens", "add"), 2, "invalid_request", "ACTOR"),
]


@pytest.mark.parametrize(
    ("args", "status", "code", "field"),
    COURSE + AUDIT + VIEWS + TOKENS,
    ids=lambda v: " ".join(v)[:60] if isinstance(v, tuple) else None,
)
def test_errors_are_json_bodies_with_the_same_exit_status(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    db: str,
    args: tuple[str, ...],
    status: int,
    code: str,
    field: str | None,
) -> None:
    got, body, line = both(capsys, monkeypatch, db, args)
    assert (got, body["error"]) == (status, code), (body, line)
    if field is not None:
        assert body["field"] == field or body["field"].endswith(f".{field}"), body
    assert body["message"] in line or line.endswith(body["message"]) or body["message"][:40] in line


def test_a_missing_argument_or_option_is_required(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    _status, body, line = both(capsys, monkeypatch, db, ("show",))
    assert body == {
        "error": "invalid_request",
        "message": "PATIENT_ID is required",
        "field": "PATIENT_ID",
    }
    assert line == "error: PATIENT_ID is required (see 'cart-course show --help')"


def test_a_refused_move_is_the_contracts_body(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    again = {**APHERESIS, "idempotency_key": "cli-1-apheresis-again"}
    for command in (SCREEN, APHERESIS):
        ok, _out, _err = invoke(capsys, monkeypatch, "--db", db, "record", json.dumps(command))
        assert ok == 0
    status, body, _line = both(capsys, monkeypatch, db, ("record", json.dumps(again)))
    assert status == 1
    assert set(body) >= {"error", "message", "failed_rules", "allowed_moves"}


def test_a_store_that_cannot_be_opened(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    status, body, line = both(capsys, monkeypatch, "ftp://nowhere", ("patients",))
    assert (status, body["error"]) == (1, "store_error")
    assert line == f"error: {body['message']}"


def test_json_output_of_the_commands_that_had_none(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: str, tmp_path: Path
) -> None:
    status, out, _ = invoke(capsys, monkeypatch, "--db", db, "demo", "--patients", "2", "--json")
    assert status == 0 and json.loads(out)["recorded"] > 0
    status, out, _ = invoke(capsys, monkeypatch, "--db", db, "run", "--json")
    data = json.loads(out)
    assert status == 0 and len(data["patients"]) == 2 and data["recorded"] == 0
    seal = tmp_path / "seal.jsonl"
    status, out, _ = invoke(capsys, monkeypatch, "--db", db, "audit", "seal", str(seal), "--json")
    assert status == 0 and json.loads(out)["streams"] == 2 and seal.exists()
    status, out, _ = invoke(capsys, monkeypatch, "--db", db, "views", "rebuild", "--json")
    assert status == 0 and json.loads(out)["position"] > 0
    status, out, _ = invoke(
        capsys, monkeypatch, "--db", db, "views", "follow", "--until-caught-up", "--json"
    )
    assert status == 0
    assert [json.loads(line) for line in out.splitlines()][-1] == {
        "caught_up_at": json.loads(out.splitlines()[0])["following_from"]
    }
    status, out, _ = invoke(capsys, monkeypatch, "--db", db, "new-key", "--json")
    assert status == 0 and len(json.loads(out)["key"]) == 44
    status, out, _ = invoke(
        capsys, monkeypatch, "--db", db, "tokens", "add", "a.tester", "auditor", "--json"
    )
    token_id = json.loads(out)["info"]["id"]
    status, out, _ = invoke(capsys, monkeypatch, "--db", db, "tokens", "revoke", token_id, "--json")
    assert status == 0 and json.loads(out)["revoked_at"]
