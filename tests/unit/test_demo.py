"""The demo cohorts: reproducible, every path present, and a live one that is in progress."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from cart_course.contract import parse_command
from cart_course.demo import SCENARIOS, cohort, live_cohort
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def test_same_seed_same_cohort_and_every_clinical_time_in_the_past() -> None:
    first, second = list(cohort(60, 4)), list(cohort(60, 4))
    assert first == second
    assert max(dt.datetime.fromisoformat(c["occurred_at"]) for c in first) < NOW


def test_a_live_cohort_stops_at_now_and_leaves_patients_mid_course() -> None:
    commands = list(live_cohort(40, 1, NOW))
    assert commands == list(live_cohort(40, 1, NOW))
    assert max(dt.datetime.fromisoformat(c["occurred_at"]) for c in commands) <= NOW
    svc = CourseService(open_application(parse_store_url("memory:")))
    results = svc.execute_batch([parse_command(c, now=NOW) for c in commands])
    assert not [r for r in results if isinstance(r, Exception)]
    states = Counter(row["state"] for row in svc.patients())
    in_progress = sum(
        n
        for s, n in states.items()
        if s not in ("ceased", "discontinued", "withdrawn", "died", "screen_failed")
    )
    assert in_progress >= 5, states


def test_every_scenario_appears_in_a_cohort_big_enough_to_hold_them() -> None:
    commands = list(cohort(len(SCENARIOS), 9))
    kinds = {c["command"] for c in commands}
    assert {"rescreen", "correct", "sign", "discontinue", "withdraw", "record_death"} <= kinds


def test_every_patient_of_a_live_cohort_is_on_record() -> None:
    """Even a patient enrolled while their site is behind with data entry is screened."""
    for day in range(0, 60, 7):
        now = NOW + dt.timedelta(days=day)
        patients = {c["patient_id"] for c in live_cohort(40, 1, now)}
        assert len(patients) == 40, (now, len(patients))
