"""``make bench``: run every ``bench/bench_*.py`` and write ``docs/performance.md``."""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from .harness import QUICK, Section, machine

OUT = Path(__file__).resolve().parent.parent / "docs" / "performance.md"

HEADER = """# Performance

Measured by `make bench` (`python -m bench`); this page is written by it. Every figure is reported
next to a baseline measured in the same run on the same machine (a bare `transitions` trigger, a
bare eventsourcing application, raw `sqlite3`, a bare Litestar endpoint), so the ratios stay
meaningful on other hardware even when the absolute numbers do not. Timings are the best of
several repeats unless a percentile is given.
"""


#: The rest of the page from this line on is kept by a full run (comparisons of two versions
#: of the code made by ``python -m bench.ab``, which ``make bench`` cannot repeat).
KEPT = "<!-- kept by make bench -->"


def main(argv: list[str]) -> int:
    wanted = set(argv)
    sections: list[Section] = []
    package = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        short = info.name.removeprefix("bench_")
        if wanted and short not in wanted:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        started = time.perf_counter()
        print(f"bench {short} ...", file=sys.stderr, flush=True)
        result = module.run()
        sections.extend(result if isinstance(result, list) else [result])
        print(f"bench {short}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    text = [
        HEADER,
        f"Last run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}"
        + (" (quick mode: smaller sizes)" if QUICK else "")
        + ".",
        "",
    ]
    text.extend(s.markdown() for s in sections)
    body = "\n".join(text) + "\n"
    if QUICK or wanted:
        print(body)
    else:
        old = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if KEPT in old:  # measurements this run does not make (python -m bench.ab): kept
            body += "\n" + old[old.index(KEPT) :]
        OUT.write_text(body, encoding="utf-8")
        print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
