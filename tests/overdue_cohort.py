"""Patients whose D2 is long overdue, in an order other than the overdue order (two share a D1
date): shared by the board-paging tests of the views and of the HTTP API."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from cart_course.demo import _Patient


def d1_patient(pid: str, day1: dt.datetime) -> list[dict[str, Any]]:
    """Screened, apheresed and given D1 at ``day1``: D2 is due the next day (long overdue)."""
    p = _Patient(pid, day1 - dt.timedelta(days=20), random.Random(7))
    p.screen()
    p.apheresis()
    p.infusion(1, days=day1.date().toordinal() - p.t.date().toordinal())
    return p.commands


#: Patient ids in an order other than the overdue order; two share a D1 date (a tie).
D1 = {
    "A-3": dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC),
    "A-1": dt.datetime(2026, 3, 5, 9, tzinfo=dt.UTC),
    "A-4": dt.datetime(2026, 2, 20, 9, tzinfo=dt.UTC),
    "A-2": dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC),
    "A-5": dt.datetime(2026, 2, 25, 9, tzinfo=dt.UTC),
}
