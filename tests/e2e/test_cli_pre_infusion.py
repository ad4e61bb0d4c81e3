"""The pre-infusion gate as a user meets it at the command line (issue 20): a held fraction in
``show`` and on the board, a refusal naming the criterion, a bad unit naming the field."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path

from cart_course.demo import NURSE, _Patient, pre_infusion

CLI = str(Path(sys.executable).with_name("cart-course"))


def cli(db: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--db", str(db), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_a_held_fraction_shows_refuses_and_a_missing_unit_names_the_field(tmp_path: Path) -> None:
    db = tmp_path / "gate.sqlite"
    p = _Patient("G-1", dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC), random.Random(2))
    p.screen()
    p.apheresis()
    p.infusion(1, days=14)
    observations = pre_infusion(38.6, 89)
    p.cmd("assess_pre_infusion", {"day": 2, "pre_infusion": observations}, actor=NURSE, days=1)
    lines = tmp_path / "g.jsonl"
    lines.write_text("".join(json.dumps(c) + "\n" for c in p.commands))
    assert cli(db, "ingest", str(lines)).returncode == 0

    shown = cli(db, "show", "G-1")
    assert shown.returncode == 0, shown.stderr
    assert "D2 HELD by the pre-infusion assessment" in shown.stdout
    assert "room-air SpO2 89 % is below 91 %" in shown.stdout
    board = cli(db, "status", "--json")
    (row,) = json.loads(board.stdout)["patients"]
    assert (row["next_action"], row["due_on"], row["hold"]) == ("re-assess before D2", None, True)

    d2 = {**p.commands[-2], "idempotency_key": "g-1-d2", "occurred_at": p.at(1).isoformat()}
    d2["payload"] = {"day": 2, "cells": {"value": 2.7e7, "unit": "cells"}}
    refused = cli(db, "record", json.dumps(d2))
    assert refused.returncode == 1
    assert "D2 is held by the pre-infusion assessment" in refused.stderr

    d2["payload"]["pre_infusion"] = {**observations, "highest_temperature": {"value": 37.0}}
    bad = cli(db, "record", json.dumps(d2))
    assert bad.returncode == 2
    assert "payload.pre_infusion.highest_temperature.unit" in bad.stderr
    assert json.loads(cli(db, "show", "G-1", "--json").stdout)["version"] == 5  # nothing recorded
