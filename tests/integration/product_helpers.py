"""A tracked product's course through the service: collection, lot, release, bedside checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from integration_helpers import Course

from cart_course.service import CommandResult

DIN = "G1234 98 654321 H"
NURSE = {"id": "rn.adams", "role": "clinician"}
SECOND = "rn.baker"
PASSED = [{"name": "sterility", "result": "no growth", "passed": True}]


def bags(lot: str, weight: float = 70.0) -> list[dict[str, Any]]:
    return [
        {"bag_id": f"{lot}-{day}", "cells": weight * 1e6 * share, "fraction": day}
        for day, share in ((1, 0.10), (2, 0.30), (3, 0.60))
    ]


def collect(c: Course, din: str = DIN) -> CommandResult:
    return c.do("record_apheresis", {"apheresis_contraindication": False, "din": din}, days=3)


def release(
    c: Course,
    lot: str,
    *,
    tests: list[dict[str, Any]] | None = None,
    decision: str = "released",
    expires_in: dt.timedelta = dt.timedelta(days=365),
    **extra: Any,
) -> CommandResult:
    payload: dict[str, Any] = {
        "lot_id": lot,
        "decision": decision,
        "tests": PASSED if tests is None else tests,
        "released_by": "qp.novak",
        "manufactured_on": c.t.date().isoformat(),
    }
    if decision == "released":
        payload["expires_at"] = (c.t + expires_in).isoformat()
        payload["bags"] = bags(lot)
    payload.update(extra)
    return c.do("release_product", payload, days=1)


def tracked(c: Course, lot: str = "LOT-1") -> None:
    """Screened, collected, one lot made and released (three bags: ``LOT-1-1`` .. ``-3``)."""
    c.screen()
    collect(c)
    c.do("start_manufacture", {"lot_id": lot})
    c.t += dt.timedelta(days=12)
    release(c, lot)


def bedside(
    c: Course,
    day: int,
    bag: str,
    *,
    thawed_minutes: float = 15,
    verified_by: str = SECOND,
    actor: dict[str, Any] | None = None,
    days: float = 1,
    **extra: Any,
) -> CommandResult:
    at = c.t + dt.timedelta(days=days)
    payload: dict[str, Any] = {
        "day": day,
        "bag_id": bag,
        "verified_by": verified_by,
        "thawed_at": (at - dt.timedelta(minutes=thawed_minutes)).isoformat(),
    }
    if day == 1:
        payload["weight"] = {"value": 70, "unit": "kg"}
    payload.update(extra)
    return c.do("give_infusion", payload, days=days, hours=0, actor=actor or NURSE)
