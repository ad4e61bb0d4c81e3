"""The audit commands as a user runs them: real process, real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "cart_course"]


def run(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--db", str(db), *args], capture_output=True, text=True, timeout=120
    )


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
    assert run(db, "audit", "conformance").returncode == 0
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
