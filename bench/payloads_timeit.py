"""Parse (and re-encode) time of one screening / toxicity / response / dose payload.

``python -m bench.payloads_timeit`` prints microseconds per call (best of 5 repeats); run it on
two commits to compare (issue 13: typed payloads at the edge must not make ingest slower).
"""

from __future__ import annotations

import random
import sys
import timeit
from collections.abc import Callable
from typing import Any

from cart_course.demo import assessment, crs, eligible_screening, icans
from cart_course.protocol.dosing import parse_cell_dose, parse_weight
from cart_course.protocol.eligibility import parse_screening
from cart_course.protocol.response import parse_response_assessment
from cart_course.protocol.toxicity import parse_toxicity_report


def _best_us(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _measure(parse: Callable[[Any], Any], data: Any, number: int) -> tuple[float, float]:
    parsed = parse(data)
    parse_us = _best_us(lambda: parse(data), number)
    if not hasattr(parsed, "to_json"):
        return parse_us, float("nan")
    return parse_us, _best_us(lambda: parsed.to_json(), number)


def main() -> None:
    rng = random.Random(7)
    screening = eligible_screening(rng)
    cases: dict[str, tuple[Callable[[Any], Any], Any]] = {
        "screening": (parse_screening, screening),
        "toxicity CRS g2": (parse_toxicity_report, crs(2)),
        "toxicity ICANS g2": (parse_toxicity_report, icans(2)),
        "response CR": (parse_response_assessment, assessment("CR")),
        "weight": (parse_weight, {"value": 70.5, "unit": "kg"}),
        "cell dose": (lambda d: parse_cell_dose(d, 70.5), {"value": 7e6, "unit": "cells"}),
    }
    number = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(f"{'payload':<20} {'parse us':>9} {'to_json us':>11}")
    for name, (parse, data) in cases.items():
        parse_us, json_us = _measure(parse, data, number)
        print(f"{name:<20} {parse_us:9.2f} {json_us:11.2f}")


if __name__ == "__main__":
    main()
