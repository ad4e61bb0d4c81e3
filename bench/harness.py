"""The shared harness: timing helpers and the section format of ``docs/performance.md``."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import attrs

#: ``BENCH_QUICK=1`` runs a smaller size of every benchmark (used by the test suite's smoke test).
QUICK = os.environ.get("BENCH_QUICK") == "1"


@attrs.define
class Section:
    """One benchmark's report: a title, how it was measured, and a table of figures."""

    title: str
    method: str
    rows: list[dict[str, Any]] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    def markdown(self) -> str:
        out = [f"## {self.title}", "", self.method, ""]
        if self.rows:
            headers = list(self.rows[0])
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "---|" * len(headers))
            for row in self.rows:
                out.append("| " + " | ".join(_fmt(row.get(h)) for h in headers) + " |")
            out.append("")
        for note in self.notes:
            out.append(f"- {note}")
        if self.notes:
            out.append("")
        return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return "" if value is None else str(value)


def best_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs, in seconds (least disturbed by the machine's noise)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def per_call_us(fn: Callable[[], Any], n: int, repeat: int = 5) -> float:
    def loop() -> None:
        for _ in range(n):
            fn()

    return best_of(loop, repeat) / n * 1e6


def percentiles(samples: list[float], *points: float) -> list[float]:
    ordered = sorted(samples)
    return [ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] for p in points]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
