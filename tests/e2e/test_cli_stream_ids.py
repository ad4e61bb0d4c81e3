"""The encrypted store of the previous release (uuid5 stream ids), migrated by the operator with
``cart-course store migrate-stream-ids``: real processes on a copy of the checked-in fixture."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from cli_support import NEW_SCREENING, previous_store, run

from cart_course.course import stream_id as uuid5


def test_the_previous_release_encrypted_store_migrates_and_verifies(tmp_path: Path) -> None:
    db, key = previous_store(tmp_path, "encrypted")
    assert key is not None
    enc = {"CART_COURSE_CIPHER_KEY": key}
    patients = [p["patient_id"] for p in json.loads(run(db, "patients", "--json", **enc).stdout)]
    assert len(patients) >= 6

    # Before: uuid5 ids, said so; the auditor takes the first checkpoint on upgrade.
    ids = run(db, "store", "ids", **enc)
    assert ids.returncode == 0 and "uuid5" in ids.stdout and "migrate-stream-ids" in ids.stdout
    assert run(db, "keys", "generate", "--out", str(tmp_path / "k")).returncode == 0
    signing = {**enc, "CART_COURSE_SIGNING_KEY": str(tmp_path / "k" / "cart-course.key")}
    held = tmp_path / "held.checkpoint"
    assert run(db, "audit", "checkpoint", "--out", str(held), **signing).returncode == 0
    before = run(db, "audit", "verify", **enc)
    assert before.returncode == 0, before.stdout + before.stderr
    digest = [x for x in before.stdout.splitlines() if x.startswith("log digest:")]

    # Without the key: refused, nothing changed.
    refused = run(db, "store", "migrate-stream-ids")
    assert refused.returncode == 1 and "CART_COURSE_CIPHER_KEY" in refused.stderr

    migrated = run(db, "store", "migrate-stream-ids", "--json", **signing)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    report = json.loads(migrated.stdout)
    assert report["unchanged"] and report["streams"] == len(patients)
    assert report["log_digest_before"] == report["log_digest_after"]
    assert report["merkle_root_before"] == report["merkle_root_after"]

    # The file holds no uuid5 of any patient (rows, free pages and write-ahead log).
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(db.name + "*"))
    for p in patients:
        assert uuid5(p).hex.encode() not in raw and str(uuid5(p)).encode() not in raw, p
    stored = {r[0] for r in sqlite3.connect(db).execute("SELECT originator_id FROM stored_events")}
    assert not stored & {uuid5(p).hex for p in patients}

    # After: loads, replays, verifies (the same digest), the held checkpoint verifies, grows.
    after = run(db, "audit", "verify", **enc)
    assert after.returncode == 0, after.stdout + after.stderr
    assert [x for x in after.stdout.splitlines() if x.startswith("log digest:")] == digest
    pub = str(tmp_path / "k" / "cart-course.pub")
    checked = run(db, "audit", "verify", "--checkpoint", str(held), "--public-key", pub, **enc)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    history = run(db, "audit", "history", "P-0001", "--json", **enc)
    assert history.returncode == 0 and json.loads(history.stdout)[0]["version"] == 1
    looked_up = json.loads(run(db, "store", "lookup", "P-0001", "--json", **enc).stdout)
    exported = run(db, "audit", "export", "jsonl", "--patient", "P-0001", **enc)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(x) for x in exported.stdout.splitlines()]
    assert {x["stream_id"] for x in lines} == {looked_up["stream_id"]} != {str(uuid5("P-0001"))}
    assert run(db, "audit", "export", "fhir", "--patient", "P-0001", **enc).returncode == 0
    conformance = run(db, "audit", "conformance", **enc)
    assert conformance.returncode in (0, 1) and "Traceback" not in conformance.stderr
    assert run(db, "record", json.dumps(NEW_SCREENING), **signing).returncode in (0, 1)
    assert "P-NEW-1" in run(db, "patients", **enc).stdout
    final = run(db, "audit", "verify", "--checkpoint", str(held), "--public-key", pub, **enc)
    assert final.returncode == 0, final.stdout + final.stderr
    ids = run(db, "store", "ids", "--json", **enc)
    assert json.loads(ids.stdout)["scheme"] == "hmac-sha256/1"
    assert json.loads(ids.stdout)["migrated_up_to"] == report["migrated_up_to"]
