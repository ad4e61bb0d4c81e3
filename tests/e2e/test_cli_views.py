"""``cart-course status``, ``watch`` and ``views ...`` as a user runs them (a real SQLite file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("cart-course"))


def run(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--db", str(db), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("views") / "trial.sqlite"
    done = run(path, "demo", "--patients", "40")
    assert done.returncode == 0, done.stderr
    return path


def test_status_json_filters_and_counts(db: Path) -> None:
    out = run(db, "status", "--json", "--limit", "500")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["matching"] == len(data["patients"]) == 40
    assert data["views"]["lag_events"] == 0
    died = json.loads(run(db, "status", "--state", "died", "--json").stdout)["patients"]
    assert died and all(p["state"] == "died" for p in died)
    tox = json.loads(run(db, "status", "--toxicity", "--json").stdout)["patients"]
    assert tox and all(p["open_toxicities"] > 0 for p in tox)
    table = run(db, "status", "--state", "screen_failed")
    assert "screen_failed" in table.stdout and "rescreen" in table.stdout


def test_bad_options_are_named_without_a_traceback(db: Path) -> None:
    bad = run(db, "status", "--state", "asleep")
    assert bad.returncode == 2
    assert "--state" in bad.stderr and "infused_d1" in bad.stderr
    assert "Traceback" not in bad.stderr
    when = run(db, "status", "--now", "yesterday-ish")
    assert when.returncode == 2 and "--now" in when.stderr and "ISO" in when.stderr


def test_watch_once_prints_changed_rows(db: Path) -> None:
    out = run(db, "watch", "--once", "--since", "0", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len({r["patient_id"] for r in rows}) == 40
    nothing = run(db, "watch", "--once")
    assert nothing.returncode == 0 and nothing.stdout.startswith("watching from position")
    assert len(nothing.stdout.splitlines()) == 1


def test_rebuild_verify_metrics_and_watchlist(db: Path) -> None:
    rebuilt = run(db, "views", "rebuild", "--verify")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "identical rows before and after" in rebuilt.stdout
    metrics = run(db, "views", "metrics").stdout
    assert 'cart_course_patients{state="ceased"}' in metrics
    assert "cart_course_view_lag_events 0" in metrics
    watch = run(db, "views", "watchlist", "--json")
    assert all(r["grade"] >= 1 for r in json.loads(watch.stdout))
    waited = run(db, "status", "--wait-for", "999999", "--timeout", "0.2", "--no-catch-up")
    assert waited.returncode == 1 and "not 999999" in waited.stderr


def test_status_follow_up_due_and_sae(db: Path) -> None:
    """Issue 16: the ceased and discontinued patients' next action is their next follow-up visit;
    ``--follow-up-due`` and ``--sae`` select by that next action (``--overdue``: past it)."""
    due = json.loads(run(db, "status", "--follow-up-due", "--json").stdout)["patients"]
    assert due and all(p["next_action"].startswith("record_follow_up (") for p in due)
    assert {p["state"] for p in due} <= {"ceased", "discontinued"}
    overdue = run(db, "status", "--follow-up-due", "--overdue", "--now", "2100-01-01", "--json")
    assert {p["patient_id"] for p in json.loads(overdue.stdout)["patients"]} <= {
        p["patient_id"] for p in due
    }
    sae = run(db, "status", "--sae", "--json")
    assert sae.returncode == 0, sae.stderr
    assert all(
        p["next_action"].startswith("record_sae_report (")
        for p in json.loads(sae.stdout)["patients"]
    )
    # both: the next action is either (as over HTTP, ?follow_up_due=true&sae=true)
    both = run(db, "status", "--sae", "--follow-up-due", "--json")
    assert both.returncode == 0, both.stderr
    assert {p["patient_id"] for p in json.loads(both.stdout)["patients"]} == {
        p["patient_id"] for p in due
    } | {p["patient_id"] for p in json.loads(sae.stdout)["patients"]}
