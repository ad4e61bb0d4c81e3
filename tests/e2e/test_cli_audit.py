"""The audit commands as a user runs them: real process, real SQLite file."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from cli_support import CLI, run


def test_audit_commands_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "e2e.sqlite"
    assert run(db, "demo", "--patients", "20").returncode == 0
    history = run(db, "audit", "history", "P-0001")
    assert history.returncode == 0 and "Registered" in history.stdout
    assert json.loads(run(db, "audit", "history", "P-0001", "--json").stdout)[0]["version"] == 1
    asof = run(db, "audit", "as-of", "P-0001", "--version", "3")
    assert asof.returncode == 0 and "state:" in asof.stdout
    bad = run(db, "audit", "as-of", "P-0001", "--recorded-at", "yesterday")
    assert bad.returncode == 2 and "--recorded-at" in bad.stderr and "Traceback" not in bad.stderr
    # the demo's one finding (issue 16): the SAE report of the death from CRS was sent late
    conformance = run(db, "audit", "conformance", "--json")
    assert conformance.returncode == 1, conformance.stderr
    findings = json.loads(conformance.stdout)["findings"]
    checks = [(f["check"], f["move"]) for f in findings]
    assert checks.count(("late_report", "record_sae_report")) == 1
    # and the demo's D2 counts corrected beyond the dose tolerance without a deviation reason
    # (the data queries' rules at work, issue 17): each such correction is a finding, also when
    # a later correction gave the reason (the record did not conform in between)
    corrections = [f for f in findings if f["check"] == "correction"]
    assert corrections and len(corrections) + 1 == len(findings)
    assert all(
        f["move"] == "infuse_d2" and f["rules"] == ["dose_within_tolerance_or_deviation"]
        for f in corrections
    )
    late = next(f for f in findings if f["check"] == "late_report")
    assert late["message"].endswith("6.0 h late")
    clean = run(db, "audit", "verify")
    assert clean.returncode == 0 and "verified the log up to notification " in clean.stdout
    position = json.loads(run(db, "audit", "verify", "--json").stdout)
    assert position["verified_up_to_notification"] == position["rows_in_store"] > 100
    seal = tmp_path / "seal.jsonl"
    assert run(db, "audit", "seal", str(seal)).returncode == 0
    assert run(db, "audit", "verify", "--seal", str(seal)).returncode == 0
    fhir = run(db, "audit", "export", "fhir", "--patient", "P-0001")
    assert json.loads(fhir.stdout)["resourceType"] == "Bundle"
    html = tmp_path / "r.html"
    assert (
        run(db, "audit", "export", "html", "--patient", "P-0001", "--out", str(html)).returncode
        == 0
    )
    assert "<svg" in html.read_text()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "DELETE FROM stored_events WHERE rowid = (SELECT MAX(rowid) FROM stored_events)"
        )
    assert run(db, "audit", "verify").returncode == 0  # a deleted tail needs the seal
    tampered = run(db, "audit", "verify", "--seal", str(seal))
    assert (
        tampered.returncode == 1 and "TAMPERED" in tampered.stdout and "[seal]" in tampered.stdout
    )
    missing = run(db, "audit", "history", "NOBODY")
    assert missing.returncode == 1 and "NOBODY" in missing.stderr


def test_verify_names_an_altered_snapshot(tmp_path: Path) -> None:
    """A 56-event course (snapshot at v50) ingested from a file; its snapshot then edited."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from integration_helpers import T0, crs, envelope, screening

    steps: list[tuple[str, dict[str, object], float]] = [
        ("screen", {"screening": screening()}, 0),
        ("record_apheresis", {"apheresis_contraindication": False, "product_id": "LOT-S"}, 72),
        (
            "give_infusion",
            {
                "day": 1,
                "cells": {"value": 7.0e6, "unit": "cells"},
                "weight": {"value": 70.0, "unit": "kg"},
                "product_lot": "LOT-S",
            },
            14 * 24,
        ),
    ]
    for n in range(1, 27):
        steps.append(("report_toxicity", {"toxicity": crs(1)}, 0.05))
        steps.append(("resolve_toxicity", {"toxicity_id": f"CRS-{n}"}, 0.05))
    lines, at = [], T0
    for i, (command, payload, hours) in enumerate(steps):
        at += dt.timedelta(hours=hours)
        lines.append(json.dumps(envelope(command, "S-1", payload, at=at, key=f"S-1:{i}")))
    commands = tmp_path / "commands.jsonl"
    commands.write_text("\n".join(lines) + "\n")
    db = tmp_path / "snap.sqlite"
    ingest = run(db, "ingest", str(commands))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    clean = run(db, "audit", "verify")
    assert clean.returncode == 0 and "1 snapshot checked" in clean.stdout, clean.stdout
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE stored_snapshots SET state = CAST(replace(CAST(state AS TEXT), "
            "'\"weight_kg\":70.0', '\"weight_kg\":95.0') AS BLOB)"
        )
    assert "weight 95.0 kg" in run(db, "show", "S-1").stdout  # what users now see
    tampered = run(db, "audit", "verify")
    assert tampered.returncode == 1
    assert "S-1 v50: [snapshot] the stored snapshot at v50 differs" in tampered.stdout


def test_verify_while_a_site_ingests(tmp_path: Path) -> None:
    """An auditor runs `audit verify` while `ingest` records one command per transaction into the
    same SQLite file: every run is clean, and says up to which notification it verified."""
    db = tmp_path / "live.sqlite"
    commands = tmp_path / "cohort.jsonl"
    assert run(db, "demo", "--patients", "300", "--jsonl", str(commands)).returncode == 0
    assert run(db, "demo", "--patients", "10", "--seed", "5").returncode == 0
    site = subprocess.Popen(
        [*CLI, "--db", str(db), "ingest", str(commands), "--batch-size", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    positions = []
    try:
        while site.poll() is None and len(positions) < 4:
            verified = run(db, "audit", "verify")
            assert verified.returncode == 0, verified.stdout + verified.stderr
            line = next(x for x in verified.stdout.splitlines() if x.startswith("verified"))
            positions.append(int(line.rsplit(" ", 1)[1]))
    finally:
        site.terminate()
        site.wait(30)
    assert len(positions) >= 2 and positions == sorted(positions) and positions[0] < positions[-1]
