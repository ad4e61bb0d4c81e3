"""The board's "overdue" agrees with the protocol's schedule rule on both sides of UTC, and the
views' lag is measured on the real clock, whatever ``--now`` the query judges overdue at."""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

import pytest

from cart_course.contract import parse_command
from cart_course.demo import CLINICIAN, SERVICE, eligible_screening
from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views import Views, queries
from cart_course.views.metrics import metrics_text


def _cmd(pid: str, command: str, at: str, payload: dict[str, Any], **extra: Any) -> Any:
    return parse_command(
        {
            "command": command,
            "patient_id": pid,
            "occurred_at": at,
            "actor": CLINICIAN if command == "screen" else SERVICE,
            "payload": payload,
            **extra,
        }
    )


def _run(service: CourseService, command: Any) -> Any:
    (result,) = service.execute_batch([command])
    return result


def _cells(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "cells"}


def _after_d1(service: CourseService, pid: str, d1_at: str) -> None:
    offset = d1_at[19:]
    for command, at, payload in (
        (
            "screen",
            f"2026-11-01T09:00:00{offset}",
            {"screening": eligible_screening(random.Random(5))},
        ),
        ("record_apheresis", f"2026-11-05T09:00:00{offset}", {"apheresis_contraindication": False}),
        (
            "give_infusion",
            d1_at,
            {"day": 1, "cells": _cells(7e6), "weight": {"value": 70, "unit": "kg"}},
        ),
    ):
        result = _run(service, _cmd(pid, command, at, payload))
        assert hasattr(result, "status"), result


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


@pytest.mark.parametrize(
    "d1_at",
    [
        "2026-11-23T20:00:00-05:00",  # west of UTC: already the 24th in UTC
        "2026-11-23T07:00:00+09:00",  # east of UTC: still the 22nd in UTC
    ],
)
def test_overdue_agrees_with_the_protocols_schedule_on_both_sides_of_utc(
    service: CourseService, views: Views, d1_at: str
) -> None:
    offset = d1_at[19:]
    _after_d1(service, "ON-TIME", d1_at)
    _after_d1(service, "LATE", d1_at)
    views.catch_up()
    last_on_time = f"2026-11-24T23:59:00{offset}"
    first_late = f"2026-11-25T00:00:00{offset}"

    # What a monitor sees: due the next local day, not overdue until that local day is over.
    for pid in ("ON-TIME", "LATE"):
        row = queries.patient(views.db, pid, now=_utc(last_on_time))
        assert row is not None
        assert (row["next_action"], row["due_on"], row["overdue"]) == (
            "infuse_d2",
            "2026-11-24",
            False,
        )
    late = queries.patient(views.db, "LATE", now=_utc(first_late))
    assert late is not None and (late["overdue"], late["days_overdue"]) == (True, 1)
    assert [
        r["patient_id"] for r in queries.board(views.db, overdue=True, now=_utc(first_late))
    ] == [
        "LATE",
        "ON-TIME",
    ]
    assert queries.count(views.db, overdue=True, now=_utc(last_on_time)) == 0
    assert queries.count(views.db, overdue=True, now=_utc(first_late)) == 2
    west_evening = queries.patient(views.db, "ON-TIME", now=_utc(f"2026-11-24T19:30:00{offset}"))
    assert west_evening is not None and west_evening["overdue"] is False

    # The protocol agrees: D2 at the last minute of the due day is on schedule ...
    on_time = _run(
        service, _cmd("ON-TIME", "give_infusion", last_on_time, {"day": 2, "cells": _cells(2.1e7)})
    )
    assert hasattr(on_time, "status") and on_time.deviations == (), on_time
    # ... and from the first minute the board calls overdue, it is off schedule (refused without
    # a deviation reason).
    refused = _run(
        service, _cmd("LATE", "give_infusion", first_late, {"day": 2, "cells": _cells(2.1e7)})
    )
    assert not hasattr(refused, "status")
    assert "next calendar day" in str(refused)


def test_a_day_as_now_means_that_day_in_every_offset(service: CourseService, views: Views) -> None:
    _after_d1(service, "W", "2026-11-23T20:00:00-05:00")
    _after_d1(service, "E", "2026-11-23T07:00:00+09:00")
    views.catch_up()
    assert queries.count(views.db, overdue=True, now=dt.date(2026, 11, 24)) == 0
    rows = queries.board(views.db, overdue=True, now=dt.date(2026, 11, 25))
    assert [(r["patient_id"], r["days_overdue"]) for r in rows] == [("E", 1), ("W", 1)]


def test_the_lag_is_measured_on_the_real_clock_not_as_of_now(
    service: CourseService, views: Views
) -> None:
    _after_d1(service, "L-1", "2026-11-23T20:00:00-05:00")
    views.catch_up()
    _run(
        service,
        _cmd(
            "L-1", "give_infusion", "2026-11-24T20:00:00-05:00", {"day": 2, "cells": _cells(2.1e7)}
        ),
    )
    time.sleep(0.05)  # the event waits at least this long
    in_the_past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    text = metrics_text(views, in_the_past)
    lag = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("cart_course_view_lag")
    }
    # D2 and the data query the query rules open on it (recorded without a lot or a bag)
    assert lag["cart_course_view_lag_events"] == 2
    assert lag["cart_course_view_lag_seconds"] >= 0.05
    # ``now`` still judges overdue: D2 is due 2026-11-25 (local), overdue as of 2030
    views.catch_up()
    later = metrics_text(views, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert "cart_course_overdue_actions 1" in later
    assert "cart_course_overdue_actions 0" in metrics_text(views, in_the_past)
    assert "cart_course_view_lag_seconds 0.0" in later


def test_views_of_an_older_release_are_rebuilt_with_the_offsets(tmp_path: Any) -> None:
    """A board written before ``overdue_from`` existed is dropped and recomputed from the log."""
    import sqlite3

    from cart_course.storage import open_application

    url = str(tmp_path / "old.sqlite")
    service = CourseService(open_application(parse_store_url(url)))
    try:
        _after_d1(service, "O-1", "2026-11-23T20:00:00-05:00")
        views = Views(service.log, parse_store_url(url))
        views.catch_up()
        views.close()
        conn = sqlite3.connect(url)
        for index in (
            "view_board_overdue",
            "view_board_kind_overdue",
            "view_board_kind_due",
            "view_board_site_overdue",
        ):
            conn.execute(f"DROP INDEX {index}")  # the indexes on overdue_from (issues 16, 17)
        conn.execute("ALTER TABLE view_board DROP COLUMN overdue_from")
        conn.commit()
        conn.close()
        views = Views(service.log, parse_store_url(url))
        try:
            assert views.position() == 0  # the old rows are gone: recomputed on catch-up
            views.catch_up()
            row = queries.patient(views.db, "O-1", now=_utc("2026-11-24T23:59:00-05:00"))
            assert row is not None and row["overdue_from"] == "2026-11-25T05:00:00.000000"
            assert row["overdue"] is False
        finally:
            views.close()
    finally:
        service.close()
