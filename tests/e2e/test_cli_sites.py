"""``cart-course sites add|list|deactivate``, ``tokens add --site`` and ``status --site/--sites``
(issue 17), as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import run


def test_sites_tokens_and_the_board_by_site(tmp_path: Path) -> None:
    db = tmp_path / "sites.sqlite"
    assert (
        run(db, "sites", "add", "X01", "Paris University Hospital", "Europe/Paris").returncode == 0
    )
    bad = run(db, "sites", "add", "X02", "Somewhere", "Europe/Pariss")
    assert bad.returncode == 2 and "not an IANA time zone" in bad.stderr
    again = run(db, "sites", "add", "X01", "Again", "Europe/Paris")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert run(db, "sites", "add", "X02", "Tokyo Medical Center", "Asia/Tokyo").returncode == 0
    closed = run(db, "sites", "deactivate", "X02", "--reason", "closed", "--json")
    assert json.loads(closed.stdout)["active"] is False
    listed = json.loads(run(db, "sites", "list", "--json").stdout)
    assert [(s["id"], s["time_zone"], s["active"]) for s in listed] == [
        ("X01", "Europe/Paris", True),
        ("X02", "Asia/Tokyo", False),
    ]
    limited = run(db, "tokens", "add", "dr.a", "--role", "clinician", "--site", "X01", "--json")
    assert json.loads(limited.stdout)["info"]["sites"] == ["X01"]
    auditor = run(db, "tokens", "add", "aud", "auditor", "--site", "X01")
    assert auditor.returncode == 2 and "trial-wide" in auditor.stderr
    unknown = run(db, "tokens", "add", "dr.b", "clinician", "--site", "S09")
    assert unknown.returncode == 2 and "S09" in unknown.stderr
    assert "X01" in run(db, "tokens", "list").stdout
    # a demo cohort over the demo's sites, then the board by site and the per-site counts
    demo = run(db, "demo", "--patients", "12")
    assert demo.returncode == 0, demo.stderr
    board = json.loads(run(db, "status", "--site", "S03", "--json").stdout)
    assert board["patients"] and {r["site"] for r in board["patients"]} == {"S03"}
    counts = json.loads(run(db, "status", "--sites", "--json").stdout)["sites"]
    assert set(counts) >= {"S01", "S02", "S03"}
    assert sum(c["patients"] for c in counts.values()) == 12
    # the demo's data queries not closed, counted at their patients' sites (issue 17)
    listed = json.loads(run(db, "queries", "list", "--status", "unresolved", "--json").stdout)
    by_site: dict[str, int] = {}
    for q in listed["queries"]:
        site = json.loads(run(db, "show", q["patient_id"], "--json").stdout)["site"]
        by_site[site] = by_site.get(site, 0) + 1
    assert by_site, "the demo has data queries not closed"
    assert {s: c["open_queries"] for s, c in counts.items() if c["open_queries"]} == by_site
    assert all(
        (c["median_query_age_days"] is None) == (not c["open_queries"]) for c in counts.values()
    )
    text = run(db, "status", "--sites").stdout
    assert "Tokyo Medical Center" in text and "open queries" in text
    # the deactivated site is marked as such (the JSON says active: false)
    assert counts["X02"]["active"] is False and counts["X01"]["active"] is True
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "(inactive)" in lines["X02"] and "(inactive)" not in lines["X01"]
    wrong = run(db, "status", "--site", "S77")
    assert wrong.returncode == 2 and "S77" in wrong.stderr
