"""``make bench`` keeps working: every benchmark runs in quick mode (small sizes) and reports its
section, without writing docs/performance.md (only a full run does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_benchmark_runs_and_reports_in_quick_mode() -> None:
    page = ROOT / "docs" / "performance.md"
    before = page.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env={**os.environ, "BENCH_QUICK": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    titles = [line for line in done.stdout.splitlines() if line.startswith("## ")]
    for wanted in (
        "## Command path",
        "## Ingest of a JSON Lines file",
        "## Where an ingested event's CPU goes",
        "## Cost of one command as history grows",
        "## Audit",
        "## CDISC exports",
        "## Views",
        "## Protocol",
        "## HTTP service",
    ):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
    assert "| nan" not in done.stdout.lower()
    assert "rejected lines 0 (expected 0)" in done.stdout
    assert page.read_bytes() == before  # quick runs print; they never overwrite the page


def test_the_ab_comparison_reads_every_ratio_of_a_section() -> None:
    from bench.ab import ratios

    page = """## Audit: verify
| patients | events | ratio (target >= 0.5) |
|---|---|---|
| 200 | 1834 | 0.35 |

## Protocol
| operation | us per call | x bare trigger |
|---|---|---|
| allowed moves now (candidate) | 1.91 | 0.117 |
"""
    assert ratios(page) == {
        "Audit: verify / 200 (ratio)": 0.35,
        "Protocol / allowed moves now (candidate) (x bare trigger)": 0.117,
    }
