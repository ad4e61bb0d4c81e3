"""The course CLI as a user runs it: a real process on a real SQLite file."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cart_course.storage import new_cipher_key

CLI = str(Path(sys.executable).with_name("cart-course"))

SCREEN = {
    "command": "screen",
    "patient_id": "CLI-1",
    "occurred_at": "2026-01-05T09:00:00+00:00",
    "actor": {"id": "dr.lee", "role": "clinician"},
    "idempotency_key": "cli-1-screen",
    "payload": {
        "screening": {
            "diagnosis_rr_b_all": True,
            "failed_standard_lines": 2,
            "effective_standard_option": False,
            "cd19_expressed": True,
            "kps": 90,
            "life_expectancy_months": 6,
            "lvef_pct": 60,
            "ecg_obvious_abnormality": False,
            "spo2_room_air_pct": 97,
            "creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 1.2},
            "alt": {"value": 30, "unit": "U/L", "uln": 40},
            "ast": {"value": 28, "unit": "U/L", "uln": 40},
            "bilirubin": {"value": 0.8, "unit": "mg/dL"},
            "hemoglobin": {"value": 10.5, "unit": "g/dL"},
            "apheresis_contraindication": False,
            "informed_consent_signed": True,
            "other_primary_malignancy": False,
            "severe_uncontrolled_disease": False,
            "uncontrolled_active_infection": False,
            "hiv": False,
            "hbv": False,
            "hcv": False,
            "pregnant": False,
            "nursing": False,
            "last_systemic_glucocorticoid": None,
        }
    },
}
APHERESIS = {
    "command": "record_apheresis",
    "patient_id": "CLI-1",
    "occurred_at": "2026-01-08T10:00:00+00:00",
    "actor": {"id": "emr.site-01", "role": "service"},
    "idempotency_key": "cli-1-apheresis",
    "payload": {"apheresis_contraindication": False, "product_id": "LOT-CLI-1"},
}


def run(
    db: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CART_COURSE_")}
    environ.update(env or {})
    return subprocess.run(
        [CLI, "--db", str(db), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.sqlite"


def test_record_from_an_argument_a_file_and_stdin(db: Path, tmp_path: Path) -> None:
    first = run(db, "record", json.dumps(SCREEN))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == (
        "CLI-1: Screened recorded as version 2; state candidate -> screened"
    )
    assert "allowed now: record_apheresis" in first.stdout

    path = tmp_path / "apheresis.json"
    path.write_text(json.dumps(APHERESIS))
    second = run(db, "record", str(path), "--json")
    assert second.returncode == 0, second.stderr
    body = json.loads(second.stdout)
    assert (body["status"], body["version"], body["to_state"]) == ("recorded", 3, "apheresed")

    # stdin, and an idempotent retry: the first result again, nothing new recorded.
    again = run(db, "record", "-", "--json", stdin=json.dumps(APHERESIS))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "duplicate"
    assert json.loads(again.stdout)["version"] == 3
    retry = run(db, "record", str(path))
    assert "already recorded (idempotent retry) as version 3" in retry.stdout
    show = run(db, "show", "CLI-1", "--json")
    assert json.loads(show.stdout)["version"] == 3


def test_refusals_and_bad_input_are_one_line_errors(db: Path) -> None:
    assert run(db, "record", json.dumps(SCREEN)).returncode == 0
    d2 = {
        **APHERESIS,
        "command": "give_infusion",
        "idempotency_key": "cli-1-d2",
        "payload": {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}},
    }
    refused = run(db, "record", json.dumps(d2))
    line = one_line_error(refused)
    assert refused.returncode == 1
    assert "infuse_d2 refused in state screened" in line

    cases = [
        (("record", "{bad json"), "not valid JSON (line 1, column 2)"),
        (("record", json.dumps({**SCREEN, "colour": "red"})), "colour: unknown key"),
        (("record", json.dumps({**SCREEN, "occurred_at": "2026-01-05"})), "no UTC offset"),
        (
            ("record", json.dumps({**APHERESIS, "patient_id": "NOBODY"})),
            "no patient 'NOBODY' on record",
        ),
        (("record", "/no/such/file.json"), "cannot read '/no/such/file.json'"),
        (("show", "NOBODY"), "no patient 'NOBODY' on record"),
        (("demo", "--patients", "0"), "--patients"),
        (("ingest", "/no/such/file.jsonl"), "does not exist"),
    ]
    for args, expected in cases:
        line = one_line_error(run(db, *args))
        assert expected in line, (args, line)
    bad_store = subprocess.run(
        [CLI, "--db", "ftp://nowhere", "patients"], capture_output=True, text=True, check=False
    )
    assert "unknown store URL 'ftp://nowhere'" in one_line_error(bad_store)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ingest_writes_rejections_as_json_lines(db: Path, tmp_path: Path, workers: str) -> None:
    """--errors-format jsonl: each rejected line as the contract's rejection body, with its line
    number, in line order, whatever the number of workers."""
    d2 = {
        **APHERESIS,
        "command": "give_infusion",
        "idempotency_key": "cli-1-d2",
        "payload": {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}},
    }
    lines = [json.dumps(SCREEN), "{not json", json.dumps(d2), json.dumps({**SCREEN, "x": 1})]
    lines += [json.dumps({**APHERESIS, "patient_id": f"GHOST-{i}"}) for i in range(1600)]
    commands = tmp_path / "mixed.jsonl"
    commands.write_text("\n".join(lines) + "\n")
    report = tmp_path / "errors.jsonl"
    done = run(
        db,
        "ingest",
        str(commands),
        "--workers",
        workers,
        "--errors",
        str(report),
        "--errors-format",
        "jsonl",
    )
    assert done.returncode == 1, done.stderr
    rejected = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 3, 4, *range(5, 1605)]
    assert rejected[0]["error"] == "invalid_json"
    refused = rejected[1]
    assert (refused["error"], refused["state"], refused["move"]) == (
        "move_refused",
        "screened",
        "infuse_d2",
    )
    assert refused["failed_rules"] and "record_apheresis" in refused["allowed_moves"]
    assert (rejected[2]["error"], rejected[2]["field"]) == ("invalid_command", "x")
    assert {r["error"] for r in rejected[3:]} == {"patient_not_found"}


def test_record_json_prints_a_rejection_as_its_json_body(db: Path) -> None:
    """A service calling the CLI reads a rejection as HTTP gives it: the error code, the failed
    rules and the moves allowed now (stdout), with the one line on stderr and the exit code."""
    assert run(db, "record", json.dumps(SCREEN)).returncode == 0
    d2 = {
        **APHERESIS,
        "command": "give_infusion",
        "idempotency_key": "cli-1-d2",
        "payload": {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}},
    }
    refused = run(db, "record", json.dumps(d2), "--json")
    assert refused.returncode == 1
    assert "infuse_d2 refused in state screened" in one_line_error(refused)
    body = json.loads(refused.stdout)
    assert body["error"] == "move_refused"
    assert (body["state"], body["move"]) == ("screened", "infuse_d2")
    assert body["failed_rules"] and all({"rule", "message"} <= set(r) for r in body["failed_rules"])
    assert "record_apheresis" in body["allowed_moves"]

    invalid = run(db, "record", json.dumps({**SCREEN, "colour": "red"}), "--json")
    assert invalid.returncode == 2
    one_line_error(invalid)
    invalid_body = json.loads(invalid.stdout)
    assert [p["field"] for p in invalid_body.pop("problems")] == ["colour"]
    assert invalid_body | {"message": ""} == {
        "error": "invalid_command",
        "field": "colour",
        "message": "",
    }

    not_json = run(db, "record", "{bad json", "--json")
    assert not_json.returncode == 2
    assert json.loads(not_json.stdout)["error"] == "invalid_json"
    assert json.loads(run(db, "show", "CLI-1", "--json").stdout)["version"] == 2  # nothing new


def test_demo_jsonl_with_a_bare_name_writes_under_var_and_a_path_where_it_says(
    tmp_path: Path,
) -> None:
    """``demo --jsonl cohort.jsonl`` run from a clone writes var/cohort.jsonl (next to the default
    store, which the .gitignore keeps out), not into the repository's root."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CART_COURSE_")}

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, "demo", "--patients", "2", *args],
            capture_output=True,
            text=True,
            env=environ,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )

    bare = demo("--jsonl", "cohort.jsonl")
    assert bare.returncode == 0, bare.stderr
    assert not (tmp_path / "cohort.jsonl").exists()
    written = (tmp_path / "var" / "cohort.jsonl").read_text().splitlines()
    assert f"wrote {len(written)} commands for 2 patients to var/cohort.jsonl" in bare.stderr
    assert json.loads(written[0])["command"] == "screen"

    explicit = demo("--jsonl", "./here.jsonl", "--json")
    assert explicit.returncode == 0, explicit.stderr
    assert json.loads(explicit.stdout)["file"] == "./here.jsonl"
    assert (tmp_path / "here.jsonl").read_text().splitlines() == written
    elsewhere = tmp_path / "out" / "c.jsonl"
    elsewhere.parent.mkdir()
    assert demo("--jsonl", str(elsewhere)).returncode == 0
    assert elsewhere.read_text().splitlines() == written


def test_ingest_reports_rejected_lines_and_records_nothing_new_the_second_time(
    db: Path, tmp_path: Path
) -> None:
    commands = tmp_path / "cohort.jsonl"
    written = run(db, "demo", "--patients", "12", "--seed", "4", "--jsonl", str(commands))
    assert written.returncode == 0, written.stderr
    lines = commands.read_text().splitlines()
    assert f"wrote {len(lines)} commands for 12 patients" in written.stderr
    assert not db.exists() or run(db, "patients", "--json").stdout.strip() == "[]"
    # Spoil two lines: one is not JSON, one names a patient nobody screened.
    lines[4] = "{not json"
    lines.append(json.dumps({**APHERESIS, "patient_id": "GHOST"}))
    commands.write_text("\n".join(lines) + "\n\n")

    first = run(db, "ingest", str(commands), "--batch-size", "25", "--json")
    assert first.returncode == 1  # some lines were rejected
    summary = json.loads(first.stdout)
    errors = [line for line in first.stderr.splitlines() if line.startswith("line ")]
    assert errors[0] == (
        "line 5: invalid_json: Expecting property name enclosed in double quotes (column 2)"
    )
    assert errors[-1] == (
        f"line {len(lines)}: patient_not_found: no patient 'GHOST' on record; a patient is "
        "registered by 'screen'"
    )
    assert summary["lines"] == len(lines)
    assert summary["rejected"] == len(errors)
    assert summary["recorded"] + summary["rejected"] == len(lines)
    assert "Traceback" not in first.stderr

    second = run(db, "ingest", str(commands))
    assert second.stdout.startswith(
        f"{len(lines)} lines: 0 recorded, {summary['recorded']} already recorded, "
        f"{summary['rejected']} rejected"
    )
    patients = json.loads(run(db, "patients", "--json").stdout)
    screened = {
        json.loads(line)["patient_id"]
        for line in lines
        if line.startswith('{"') and json.loads(line)["command"] == "screen"
    }
    assert {p["patient_id"] for p in patients} == screened
    # Every recorded line is one event; each patient also has its registration, and the query
    # rules' events (a query opened or closed by them: the demo's D2 counts corrected beyond the
    # tolerance, one of them then given its reason) follow the commands that triggered them.
    by_rules = [
        step
        for pid in screened
        for q in json.loads(run(db, "queries", "show", pid, "--json").stdout)
        for step in q["history"]
        if step["by"] == "system:query-rules"
    ]
    assert by_rules and {s["action"] for s in by_rules} <= {"open", "close"}
    assert sum(p["version"] for p in patients) == (
        summary["recorded"] + len(screened) + len(by_rules)
    )


def test_demo_show_and_patients(db: Path) -> None:
    demo = run(db, "demo", "--patients", "20", "--seed", "1")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("demo cohort of 20 patients: ")
    assert "0 rejected" in demo.stdout
    table = run(db, "patients").stdout.splitlines()
    assert table[0].split()[:4] == ["patient", "state", "course", "version"]
    assert len(table) == 21
    rows: list[dict[str, Any]] = json.loads(run(db, "patients", "--json").stdout)
    assert [r["patient_id"] for r in rows] == [f"P-{i:04d}" for i in range(1, 21)]
    treated = next(r for r in rows if r["course_number"] >= 1)
    text = run(db, "show", treated["patient_id"]).stdout
    assert text.startswith(f"patient {treated['patient_id']}  state {treated['state']}")
    assert "course 1: weight" in text
    assert "  D1 " in text
    assert "allowed now: " in text
    data = json.loads(run(db, "show", treated["patient_id"], "--json").stdout)
    assert data["state"] == treated["state"]
    assert data["current_course"]["planned_total_cells"] > 0
    assert isinstance(data["allowed_moves"], list)
    # The same demo again records nothing new.
    again = run(db, "demo", "--patients", "20", "--seed", "1")
    assert " 0 events recorded" in again.stdout


def test_encrypted_store_with_a_wrong_key_is_a_clear_error(db: Path) -> None:
    key = new_cipher_key()
    assert (
        run(db, "record", json.dumps(SCREEN), env={"CART_COURSE_CIPHER_KEY": key}).returncode == 0
    )
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert raw and b"CLI-1" not in raw
    ok = run(db, "show", "CLI-1", env={"CART_COURSE_CIPHER_KEY": key})
    assert ok.returncode == 0 and "state screened" in ok.stdout
    for env in ({"CART_COURSE_CIPHER_KEY": new_cipher_key()}, {}):
        for args in (("show", "CLI-1"), ("patients",)):
            line = one_line_error(run(db, *args, env=env))
            assert "do not decrypt with this key" in line
            assert "CART_COURSE_CIPHER_KEY" in line
    line = one_line_error(run(db, "patients", env={"CART_COURSE_CIPHER_KEY": "secret"}))
    assert "CART_COURSE_CIPHER_KEY is not an AES key" in line
    assert line.endswith("make one with: cart-course new-key")


def test_new_key_makes_a_key_the_store_takes(db: Path) -> None:
    made = run(db, "new-key")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert run(db, "new-key").stdout.strip() != key  # a new one each time
    env = {"CART_COURSE_CIPHER_KEY": key}
    assert run(db, "record", json.dumps(SCREEN), env=env).returncode == 0
    assert "state screened" in run(db, "show", "CLI-1", env=env).stdout
