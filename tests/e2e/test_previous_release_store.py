"""Stores written by the previous release (2026-11-25, checked in under tests/fixtures) keep
loading, replaying, verifying and taking new commands after every change of the stored form."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_support import NEW_SCREENING, PREVIOUS_STORES, previous_store
from cli_support import run as cli


def run(db: Path, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(db, *args, **({"CART_COURSE_CIPHER_KEY": key} if key else {}))


@pytest.mark.parametrize("kind", sorted(PREVIOUS_STORES))
def test_previous_release_store_loads_replays_verifies_and_grows(kind: str, tmp_path: Path) -> None:
    db, key = previous_store(tmp_path, kind)

    patients = run(db, key, "patients", "--json")
    assert patients.returncode == 0, patients.stderr
    listed = json.loads(patients.stdout)
    assert len(listed) >= 6

    verify = run(db, key, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "TAMPERED" not in verify.stdout

    conformance = run(db, key, "audit", "conformance")
    assert conformance.returncode in (0, 1), conformance.stderr
    assert "Traceback" not in conformance.stderr

    history = run(db, key, "audit", "history", "P-0001", "--json")
    assert history.returncode == 0, history.stderr
    assert json.loads(history.stdout)[0]["version"] == 1

    shown = run(db, key, "show", "P-0001", "--json")
    assert shown.returncode == 0, shown.stderr
    # issue 17: the patients of a store written before sites are in the documented default
    # site, S00 "Unassigned (before sites)", without any stored event being rewritten
    assert {p["site"] for p in listed} == {"S00"}
    assert json.loads(shown.stdout)["site"] == "S00"
    board = run(db, key, "status", "--json", "--site", "S00")
    assert board.returncode == 0, board.stderr
    rows = json.loads(board.stdout)["patients"]
    assert rows and {r["site"] for r in rows} == {"S00"}
    assert len(rows) == min(len(listed), 200)

    new = NEW_SCREENING
    recorded = run(db, key, "record", json.dumps(new))
    assert recorded.returncode in (0, 1), recorded.stderr
    assert "recorded as version" in recorded.stdout + recorded.stderr or "refused" in (
        recorded.stdout + recorded.stderr
    )
    again = run(db, key, "patients", "--json")
    assert any(p.get("patient_id") == "P-NEW-1" for p in json.loads(again.stdout))

    after = run(db, key, "audit", "verify")
    assert after.returncode == 0, after.stdout + after.stderr

    # the trial adds its first site: new patients need one; the old ones move by transfer_site
    added = run(db, key, "sites", "add", "S01", "Paris", "Europe/Paris")
    assert added.returncode == 0, added.stderr
    unsited = run(
        db,
        key,
        "record",
        json.dumps({**new, "patient_id": "P-NEW-2", "idempotency_key": "screen-P-NEW-2"}),
    )
    assert unsited.returncode == 2 and "payload.site" in unsited.stderr
    assert "S01 (Paris, Europe/Paris)" in unsited.stderr
    moved = {
        "command": "transfer_site",
        "patient_id": "P-0001",
        "occurred_at": "2026-11-21T09:30:00+01:00",
        "actor": {"id": "dr.lee", "role": "clinician"},
        "reason": "sites introduced: the patient is followed at Paris",
        "idempotency_key": "transfer-P-0001",
        "payload": {"site": "S01"},
    }
    transferred = run(db, key, "record", json.dumps(moved))
    assert transferred.returncode == 0, transferred.stdout + transferred.stderr
    assert json.loads(run(db, key, "show", "P-0001", "--json").stdout)["site"] == "S01"
    assert run(db, key, "audit", "verify").returncode == 0


def test_a_previous_release_store_rechecked_under_the_amendment_lists_the_fractions_it_refuses(
    tmp_path: Path,
) -> None:
    """Issue 20: the store of the previous release (recorded under 1.0, no pre-infusion
    observations) conforms under its own version, and ``--protocol 1.1`` lists each D2 and D3
    the amendment would have refused, with the rule that refuses it; the store is unchanged."""
    db, _ = previous_store(tmp_path, "plain")
    own = run(db, None, "audit", "conformance", "--json")
    assert own.returncode == 0, own.stdout + own.stderr
    assert json.loads(own.stdout)["findings"] == []
    amended = run(db, None, "audit", "conformance", "--protocol", "1.1", "--json")
    assert amended.returncode == 1, amended.stderr
    findings = json.loads(amended.stdout)["findings"]
    assert findings
    assert {f["move"] for f in findings} == {"infuse_d2", "infuse_d3"}
    for f in findings:
        assert f["rules"] == ["pre_infusion_criteria_met"], f
        assert f["protocol_version"] == "1.1"
        assert f"before D{f['move'][-1]}" in f["message"]
    again = run(db, None, "audit", "verify")
    assert again.returncode == 0 and "TAMPERED" not in again.stdout
