"""``cart-course export`` as a user runs it: real process, real SQLite file (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import run


def test_export_commands_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "e2e.sqlite"
    assert run(db, "demo", "--patients", "12").returncode == 0
    out = tmp_path / "sdtm"
    done = run(db, "export", "sdtm", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"]["DM"] == 12
    # only notes that a text was transliterated to ASCII (XPT v5): the demo's deviations say
    # "tolerance is ±20%" (issue 17's corrections beyond the tolerance)
    assert all(f["level"] == "note" and f["rule"] == "ASCII" for f in summary["findings"])
    assert (out / "dm.xpt").exists() and (out / "define.xml").exists()
    check = run(db, "export", "check", str(out))
    assert check.returncode == 0 and "(0 errors)" in check.stderr
    again = run(db, "export", "sdtm", "--out", str(out))
    assert again.returncode == 2 and "not empty: give --force" in again.stderr
    forced = run(db, "export", "sdtm", "--out", str(out), "--force", "--format", "dataset-json")
    assert forced.returncode == 0 and (out / "dm.json").exists()
    odm = tmp_path / "odm.xml"
    made = run(db, "export", "odm", "--out", str(odm), "--json")
    assert made.returncode == 0, made.stderr
    cutoff = json.loads(made.stdout)["cutoff"]
    assert "<AuditRecord>" in odm.read_text(encoding="utf-8")
    assert run(db, "export", "odm", "--out", str(odm)).returncode == 2
    at = run(db, "export", "odm", "--out", str(tmp_path / "at.xml"), "--as-of", cutoff)
    assert at.returncode == 0
    assert (tmp_path / "at.xml").read_bytes() == odm.read_bytes()
    for bad, says in (
        ("2001-01-01T00:00:00Z", "before the first event"),
        ("2999-01-01T00:00:00Z", "in the future"),
        ("yesterday", "--as-of"),
    ):
        refused = run(db, "export", "sdtm", "--out", str(tmp_path / "x"), "--as-of", bad, "--json")
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert json.loads(refused.stdout)["field"] == "--as-of"
        assert "Traceback" not in refused.stderr
        assert not (tmp_path / "x").exists()
    (out / "dm.json").write_text((out / "dm.json").read_text().replace('"U"', '"Q"'))
    broken = run(db, "export", "check", str(out))
    assert broken.returncode == 1 and "error CT DM.SEX" in broken.stdout
