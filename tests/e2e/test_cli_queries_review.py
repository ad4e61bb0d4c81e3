"""Findings of the review of issue 17 in the ``queries`` commands, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "cart_course"]


def run(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--db", str(db), *args], capture_output=True, text=True, timeout=300
    )


def test_queries_list_of_a_patient_not_on_record_says_so(tmp_path: Path) -> None:
    """`queries list --patient P-TYPO` printed "0 query(ies)" for a mistyped id, where
    `queries show P-TYPO` and GET /v1/queries?patient_id=P-TYPO say the patient is not on
    record; now it says so too (exit 1), and a patient on record is listed as before."""
    db = tmp_path / "q.sqlite"
    assert run(db, "demo", "--patients", "3").returncode == 0
    typo = run(db, "queries", "list", "--patient", "P-TYPO")
    assert typo.returncode == 1, typo.stdout
    assert "no patient 'P-TYPO' on record" in typo.stderr
    assert "query(ies)" not in typo.stdout
    known = run(db, "queries", "list", "--patient", "P-0001")
    assert known.returncode == 0 and "query(ies)" in known.stdout


def test_audit_conformance_as_of_lists_the_queries_open_then(tmp_path: Path) -> None:
    """`audit conformance` listed the data queries open now only; `--as-of WHEN` judges the
    record as the system knew it then, with the queries open then."""
    import datetime as dt
    import json

    db = tmp_path / "c.sqlite"
    assert run(db, "demo", "--patients", "2").returncode == 0
    envelope = {
        "patient_id": "P-0001",
        "occurred_at": "2026-12-01T10:00:00+00:00",
        "actor": {"id": "cra.kim", "role": "monitor"},
    }
    opened = run(
        db,
        "record",
        "--json",
        json.dumps({**envelope, "command": "open_query", "payload": {"text": "KPS?"}}),
    )
    assert opened.returncode == 0, opened.stderr
    qid = json.loads(opened.stdout)["outcome"]["query_id"]
    cut_off = dt.datetime.now(dt.UTC).isoformat()
    closed = run(
        db,
        "record",
        json.dumps(
            {
                **envelope,
                "command": "close_query",
                "reason": "asked by mistake",
                "payload": {"query_id": qid},
            }
        ),
    )
    assert closed.returncode == 0, closed.stderr

    def open_then(*extra: str) -> list[str]:
        out = run(db, "audit", "conformance", "P-0001", "--json", *extra)
        return [q["query_id"] for q in json.loads(out.stdout)["open_queries"]]

    assert qid not in open_then()
    assert qid in open_then("--as-of", cut_off)
    text = run(db, "audit", "conformance", "P-0001", "--as-of", cut_off).stdout
    assert f"open data queries as of {cut_off}" in text and qid in text
    bad = run(db, "audit", "conformance", "--as-of", "yesterday")
    assert bad.returncode != 0 and "--as-of" in bad.stderr


def test_queries_list_filters_by_site(tmp_path: Path) -> None:
    """`status --site S03` lists one site's patients; `queries list` listed every site's
    queries with no way to ask for one site's. It now takes --site (repeatable), and an unknown
    site names the known ones, as `status --site` does."""
    import json

    db = tmp_path / "s.sqlite"
    assert run(db, "demo", "--patients", "12").returncode == 0
    every = json.loads(run(db, "queries", "list", "--json").stdout)["queries"]
    board = json.loads(run(db, "status", "--site", "S03", "--json").stdout)["patients"]
    at_s03 = {r["patient_id"] for r in board}
    one = run(db, "queries", "list", "--site", "S03", "--json")
    assert one.returncode == 0, one.stderr
    listed = json.loads(one.stdout)["queries"]
    assert listed and {q["patient_id"] for q in listed} <= at_s03
    assert [q for q in every if q["patient_id"] in at_s03] == listed
    bad = run(db, "queries", "list", "--site", "S99")
    assert bad.returncode == 2 and "S99" in bad.stderr and "S01" in bad.stderr
