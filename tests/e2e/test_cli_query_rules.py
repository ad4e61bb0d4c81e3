"""The query rules and a query's age from the command line, as an operator runs them (issue 17):
``record`` and ``ingest`` with several workers open the same queries by default; a query's age
on ``status``, ``status --sites`` and ``queries list`` counts from its clinical time; the demo's
queries are days to weeks old."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cart_course.demo import cohort

CLI = [sys.executable, "-m", "cart_course"]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CLINICIAN = {"id": "dr.lee", "role": "clinician"}
MONITOR = {"id": "cra.kim", "role": "monitor"}


def run(
    db: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CART_COURSE_QUERY_RULES"}
    return subprocess.run(
        [*CLI, "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, **(env or {})},
    )


def _story(pid: str) -> list[dict[str, Any]]:
    """Screened at S01 20 days ago, collected, D1 three days ago without a bag or a lot, and a
    monitor's query raised ten days ago (at the site visit) on the screening."""
    screen = next(c for c in cohort(1, 1) if c["command"] == "screen")

    def envelope(command: str, days: float, payload: dict[str, Any], actor: Any) -> dict[str, Any]:
        return {
            "command": command,
            "patient_id": pid,
            "occurred_at": (NOW - dt.timedelta(days=days)).isoformat(),
            "actor": actor,
            "idempotency_key": f"{pid}:{command}",
            "payload": payload,
        }

    return [
        envelope("screen", 20, {**screen["payload"], "site": "S01"}, CLINICIAN),
        envelope("record_apheresis", 17, {"apheresis_contraindication": False}, CLINICIAN),
        envelope(
            "give_infusion",
            3,
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
            CLINICIAN,
        ),
        envelope("open_query", 10, {"text": "KPS: the source says 80", "on_version": 2}, MONITOR),
    ]


def _queries(db: Path, pid: str) -> list[tuple[Any, ...]]:
    shown = json.loads(run(db, "queries", "show", pid, "--json").stdout)
    return [
        (q["query_id"], q["status"], q["rule"], q["on_version"], q["opened_occurred_at"])
        for q in (shown["queries"] if isinstance(shown, dict) else shown)
    ]


def test_record_and_ingest_open_the_same_queries_and_ages_count_from_clinical_time(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cli.sqlite"
    assert (
        run(db, "sites", "add", "S01", "Paris University Hospital", "Europe/Paris").returncode == 0
    )
    # one command at a time: the D1 without a lot opens a query by itself
    results = []
    for envelope in _story("R-1"):
        done = run(db, "record", json.dumps(envelope), "--json")
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    (opened,) = results[2]["outcome"]["queries"]
    assert (opened["rule"], opened["status"], opened["on_version"]) == (
        "fraction_unverified",
        "open",
        results[2]["version"],
    )
    # the same story for R-2 from a file, two workers: the same queries
    lines = tmp_path / "r2.jsonl"
    lines.write_text("".join(json.dumps(c) + "\n" for c in _story("R-2")), encoding="utf-8")
    ingested = run(db, "ingest", str(lines), "--workers", "2", "--batch-size", "2")
    assert ingested.returncode == 0, ingested.stderr
    r1, r2 = _queries(db, "R-1"), _queries(db, "R-2")
    assert [q[:4] for q in r1] == [q[:4] for q in r2] and len(r1) == 2
    # the file again: nothing recorded, no query opened twice
    again = run(db, "ingest", str(lines), "--workers", "2")
    assert again.returncode == 0 and "4 lines: 0 recorded" in again.stdout, again.stdout
    assert _queries(db, "R-2") == r2
    # ages from the clinical times: the monitor's query 10 days, the rule's (D1's) 3 days
    listed = json.loads(run(db, "queries", "list", "--patient", "R-1", "--json").stdout)["queries"]
    assert sorted(round(q["age_days"]) for q in listed) == [3, 10]
    assert all(dt.datetime.fromisoformat(q["opened_at"]) >= NOW for q in listed)  # recorded now
    board = json.loads(run(db, "status", "--json").stdout)["patients"]
    assert {r["patient_id"]: round(r["oldest_open_query_age_days"]) for r in board} == {
        "R-1": 10,
        "R-2": 10,
    }
    assert "queries 2 open (oldest 10" in run(db, "status").stdout
    sites = json.loads(run(db, "status", "--sites", "--json").stdout)["sites"]
    assert sites["S01"]["open_queries"] == 4 and 6 < sites["S01"]["median_query_age_days"] < 7
    text = run(db, "queries", "list", "--patient", "R-1").stdout
    assert ", 10 d old" in text or ", 10.0" in text, text


def test_the_rules_can_be_turned_off_for_a_process(tmp_path: Path) -> None:
    db = tmp_path / "off.sqlite"
    assert (
        run(db, "sites", "add", "S01", "Paris University Hospital", "Europe/Paris").returncode == 0
    )
    off = {"CART_COURSE_QUERY_RULES": "0"}
    for envelope in _story("R-3")[:3]:
        done = run(db, "record", json.dumps(envelope), "--json", env=off)
        assert done.returncode == 0 and "queries" not in json.loads(done.stdout)["outcome"]
    assert _queries(db, "R-3") == []
    bad = run(db, "patients", env={"CART_COURSE_QUERY_RULES": "sometimes"})
    assert bad.returncode != 0 and "CART_COURSE_QUERY_RULES" in bad.stderr


def test_the_demo_queries_are_days_to_weeks_old(tmp_path: Path) -> None:
    db = tmp_path / "demo.sqlite"
    demo = run(db, "demo", "--patients", "24")
    assert demo.returncode == 0, demo.stderr
    listed = json.loads(run(db, "queries", "list", "--json").stdout)["queries"]
    statuses = {q["status"] for q in listed}
    assert {"open", "answered", "closed", "reopened"} <= statuses
    ages = [q["age_days"] for q in listed if q["status"] != "closed"]
    assert ages and all(1 <= a <= 60 for a in ages), ages
    assert max(ages) >= 14  # weeks, not all of them new
    sites = json.loads(run(db, "status", "--sites", "--json").stdout)["sites"]
    medians = [s["median_query_age_days"] for s in sites.values() if s["open_queries"]]
    assert medians and all(m >= 1 for m in medians)
