"""``python -m bench.ab BASE_TREE [SECTION ...]``: the same benchmarks on two versions of the code,
taking turns in one sitting, so that both see the same machine load.

BASE_TREE is a copy of another commit's tree (``git archive COMMIT | tar -x -C DIR``; copy
``var/bench`` into it to reuse the audit's cohorts). Each round
runs every section (``BENCH_QUICK=1 python -m bench SECTION``) on the base tree, then on this
one; the ratio columns of each section's tables are collected and printed as one Markdown table
(each ratio is measured against its own baseline in the same process, so the two versions
compare even when the machine's load changes between runs).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("AB_ROUNDS", "2"))


def ratios(markdown: str) -> dict[str, float]:
    """Every ratio of a section's tables: 'section / row label' -> value."""
    found: dict[str, float] = {}
    title = ""
    headers: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            headers = []
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not headers:
                headers = cells
                continue
            for header, cell in zip(headers, cells, strict=False):
                if header.startswith("ratio") or header.startswith("x bare"):
                    label = " / ".join(c for c in cells[:2] if c and not _number(c)) or cells[0]
                    with contextlib.suppress(ValueError):
                        name = header.split(" (")[0]  # without a target that may differ
                        found[f"{title} / {label} ({name})"] = float(cell.replace(",", ""))
        elif not line.strip():
            continue
    return found


def _number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def run_section(tree: Path, section: str) -> str:
    env = dict(os.environ, BENCH_QUICK="1", PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-m", "bench", section],
        cwd=tree,  # ``-m bench`` and the package are taken from the tree's own directory
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def main(argv: list[str]) -> int:
    base = Path(argv[0]).resolve()
    sections = argv[1:] or ["audit", "commands", "protocol"]
    seen: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"base": [], "new": []})
    for round_ in range(ROUNDS):
        for side, tree in (("base", base), ("new", HERE)):
            for section in sections:
                print(f"round {round_ + 1}: {side} {section}", file=sys.stderr, flush=True)
                for key, value in ratios(run_section(tree, section)).items():
                    seen[key][side].append(value)
    print("| measure | base (each round) | this tree (each round) | this / base (best) |")
    print("|---|---|---|---|")
    for key, sides in seen.items():
        b, n = sides["base"], sides["new"]
        if not b or not n:
            continue
        lower_is_better = "x bare" in key
        best_b = min(b) if lower_is_better else max(b)
        best_n = min(n) if lower_is_better else max(n)
        print(
            f"| {key} | {', '.join(f'{v:.3g}' for v in b)} | {', '.join(f'{v:.3g}' for v in n)} "
            f"| {best_n / best_b:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
