"""``cart-course report cohort`` as a user runs it: the printable cohort report in one file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).with_name("cart-course"))


def run(db: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--db", str(db), *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_report_cohort_writes_every_figure_with_its_table_under_var(tmp_path: Path) -> None:
    db = tmp_path / "trial.sqlite"
    assert run(db, "demo", "--patients", "20").returncode == 0
    done = run(db, "report", "cohort", cwd=tmp_path)  # the default: var/cohort.html
    assert done.returncode == 0, done.stderr
    report = tmp_path / "var" / "cohort.html"
    assert "to var/cohort.html" in done.stdout and "20 patients" in done.stdout
    html = report.read_text(encoding="utf-8")
    assert html.count("<svg ") == 4 and html.count("<table>") == 4
    assert "<script" not in html and "http://" not in html.replace(
        "http://www.w3.org/2000/svg", ""
    ).replace("http://www.w3.org/1999/xlink", "")
    again = run(db, "report", "cohort", "--out", str(tmp_path / "again.html"))
    assert again.returncode == 0
    assert (tmp_path / "again.html").read_text(encoding="utf-8") == html  # deterministic

    died = run(db, "report", "cohort", "--state", "died", "--out", "-")
    assert died.returncode == 0 and "state died" in died.stdout
    as_json = run(db, "report", "cohort", "--toxicity", "--json", "--out", str(tmp_path / "t.html"))
    data = json.loads(as_json.stdout)
    assert data["written"].endswith("t.html") and data["patients"] <= 20


def test_a_bad_order_is_refused_naming_the_option(tmp_path: Path) -> None:
    bad = run(tmp_path / "trial.sqlite", "report", "cohort", "--sort", "age")
    assert bad.returncode == 2 and "--sort" in bad.stderr
