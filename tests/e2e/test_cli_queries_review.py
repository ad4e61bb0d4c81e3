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
