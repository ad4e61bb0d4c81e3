"""The signed ledger as a user runs it: keys, checkpoints, proofs, verify --checkpoint; real
processes on a real SQLite file, and the stores of the previous release upgraded."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from cli_support import PREVIOUS_STORES, previous_store, run

from cart_course.demo import cohort


def test_keys_checkpoint_prove_and_check_proof(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    keys = tmp_path / "keys"
    made = run(db, "keys", "generate", "--out", str(keys), "--name", "site-a")
    assert made.returncode == 0, made.stderr
    private, public = keys / "site-a.key", keys / "site-a.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("site-a+")
    again = run(db, "keys", "generate", "--out", str(keys), "--name", "site-a")
    assert again.returncode == 2 and "never overwritten" in again.stderr

    assert run(db, "demo", "--patients", "6").returncode == 0
    unsigned = run(db, "audit", "verify")
    assert unsigned.returncode == 0 and "nothing is signed" in unsigned.stdout
    nokey = run(db, "audit", "checkpoint")
    assert nokey.returncode == 2 and "CART_COURSE_SIGNING_KEY" in nokey.stderr

    key = {"CART_COURSE_SIGNING_KEY": str(private)}
    held = tmp_path / "held.checkpoint"
    issued = run(db, "audit", "checkpoint", "--out", str(held), **key)
    assert issued.returncode == 0, issued.stderr
    lines = held.read_text().split("\n")
    assert lines[0] == "cart-course" and lines[1].isdigit() and lines[5] == ""
    assert lines[6].startswith("\u2014 site-a ")

    ok = run(db, "audit", "verify", "--checkpoint", str(held), "--public-key", str(public))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "unchanged and extends them" in ok.stdout
    as_json = json.loads(
        run(
            db, "audit", "verify", "--json", "--checkpoint", str(held), "--public-key", str(public)
        ).stdout
    )
    assert as_json["ledger"]["ok"] is True and as_json["ledger"]["tree_size"] == int(lines[1])

    proof_run = run(db, "audit", "prove", "P-0002", "3", "--checkpoint", str(held))
    assert proof_run.returncode == 0, proof_run.stderr
    proof = json.loads(proof_run.stdout)
    assert proof["patient_id"] == "P-0002" and proof["version"] == 3
    path = tmp_path / "proof.json"
    path.write_text(proof_run.stdout)
    checked = run(
        db,
        "audit",
        "check-proof",
        str(path),
        "--checkpoint",
        str(held),
        "--public-key",
        str(public),
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("proof: OK: P-0002 v3 is leaf ")

    data = bytearray(base64.b64decode(proof["leaf_data"]))
    data[-5] ^= 1  # one bit of the stored event changed
    path.write_text(json.dumps({**proof, "leaf_data": base64.b64encode(bytes(data)).decode()}))
    forged = run(
        db,
        "audit",
        "check-proof",
        str(path),
        "--checkpoint",
        str(held),
        "--public-key",
        str(public),
    )
    assert forged.returncode == 1 and "does not verify" in forged.stderr

    other = run(db, "keys", "generate", "--out", str(tmp_path / "other"))
    assert other.returncode == 0
    wrong = run(
        db,
        "audit",
        "verify",
        "--checkpoint",
        str(held),
        "--public-key",
        str(tmp_path / "other" / "cart-course.pub"),
    )
    assert wrong.returncode == 2 and "does not verify with the public key" in wrong.stderr

    # Rotation: a new key signs from now on; the auditor holds both public keys.
    rotated = run(db, "keys", "generate", "--out", str(keys), "--name", "site-b")
    assert rotated.returncode == 0
    later = tmp_path / "later.checkpoint"
    new_key = {"CART_COURSE_SIGNING_KEY": str(keys / "site-b.key")}
    assert run(db, "demo", "--patients", "8", **new_key).returncode == 0
    assert run(db, "audit", "checkpoint", "--out", str(later), **new_key).returncode == 0
    both = ["--public-key", str(public), "--public-key", str(keys / "site-b.pub")]
    for checkpoint in (held, later):
        result = run(db, "audit", "verify", "--checkpoint", str(checkpoint), *both)
        assert result.returncode == 0, result.stdout + result.stderr

    with sqlite3.connect(db) as conn:
        conn.execute(
            "DELETE FROM stored_events WHERE rowid = (SELECT MAX(rowid) FROM stored_events)"
        )
    cut = run(db, "audit", "verify", "--checkpoint", str(later), *both)
    assert cut.returncode == 1 and "[checkpoint]" in cut.stdout


@pytest.mark.parametrize("kind", sorted(PREVIOUS_STORES))
def test_previous_release_store_gets_its_first_checkpoint(kind: str, tmp_path: Path) -> None:
    db, key = previous_store(tmp_path, kind)
    env = {"CART_COURSE_CIPHER_KEY": key} if key else {}
    assert run(db, "keys", "generate", "--out", str(tmp_path / "keys")).returncode == 0
    public = tmp_path / "keys" / "cart-course.pub"
    env["CART_COURSE_SIGNING_KEY"] = str(tmp_path / "keys" / "cart-course.key")
    before = run(db, "audit", "verify", **env)
    assert before.returncode == 0 and "nothing is signed" in before.stdout
    new = next(c for c in cohort(1, 1) if c["command"] == "screen")
    new.update(patient_id="P-UPGRADE", idempotency_key="upgrade-1")
    recorded = run(db, "record", json.dumps(new), **env)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    with sqlite3.connect(db) as conn:
        ((size, up_to),) = conn.execute(
            "SELECT size, up_to FROM cart_course_checkpoints"
        ).fetchall()
        (rows,) = conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()
    assert size == rows and up_to >= rows  # the first save signed the whole log, old and new
    held = tmp_path / "held.checkpoint"
    assert run(db, "audit", "checkpoint", "--out", str(held), **env).returncode == 0
    ok = run(db, "audit", "verify", "--checkpoint", str(held), "--public-key", str(public), **env)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_views_verify_names_the_patients_whose_rows_differ(tmp_path: Path) -> None:
    db = tmp_path / "v.sqlite"
    assert run(db, "demo", "--patients", "5").returncode == 0
    nothing = run(db, "views", "verify")
    assert nothing.returncode == 0 and "nothing to compare" in nothing.stdout
    assert run(db, "views", "rebuild").returncode == 0
    same = run(db, "views", "verify")
    assert same.returncode == 0 and same.stdout.startswith("views: OK")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE view_board SET state = 'screened', hold = 1 WHERE patient_id = 'P-0002'"
        )
    edited = run(db, "views", "verify")
    assert edited.returncode == 1
    assert "P-0002: [views]" in edited.stdout and "view_board (hold, state)" in edited.stdout
