"""When a due date is overdue: judged in the UTC offset of the clinical time it was counted from
(``projection.overdue_from``), never the UTC date, on both sides of UTC."""

from __future__ import annotations

import datetime as dt

import pytest

from cart_course.views import queries
from cart_course.views.projection import overdue_from


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


@pytest.mark.parametrize(
    ("due_on", "counted_from", "expected"),
    [
        # west of UTC: the local day 2026-11-24 ends at 05:00 UTC on the 25th
        ("2026-11-24", "2026-11-23T20:00:00-05:00", "2026-11-25T05:00:00.000000"),
        # east of UTC: it ends at 15:00 UTC on the 24th
        ("2026-11-24", "2026-11-23T07:00:00+09:00", "2026-11-24T15:00:00.000000"),
        ("2026-11-24", "2026-11-23T07:00:00+05:30", "2026-11-24T18:30:00.000000"),
        ("2026-11-24", "2026-11-23T07:00:00+00:00", "2026-11-25T00:00:00.000000"),
        ("2026-11-24", None, "2026-11-25T00:00:00.000000"),  # no clinical time: UTC
        (None, "2026-11-23T07:00:00+09:00", None),
        ("9999-12-31", "9999-12-30T07:00:00+00:00", None),  # past the calendar: never
    ],
)
def test_overdue_from_is_the_end_of_the_due_day_in_its_offset(
    due_on: str | None, counted_from: str | None, expected: str | None
) -> None:
    assert overdue_from(due_on, counted_from) == expected


@pytest.mark.parametrize(
    ("counted_from", "last_on_time", "first_overdue"),
    [
        ("2026-11-23T20:00:00-05:00", "2026-11-24T23:59:59-05:00", "2026-11-25T00:00:00-05:00"),
        ("2026-11-23T07:00:00+09:00", "2026-11-24T23:59:59+09:00", "2026-11-25T00:00:00+09:00"),
    ],
)
def test_a_row_turns_overdue_when_its_local_due_day_ends(
    counted_from: str, last_on_time: str, first_overdue: str
) -> None:
    due_on = "2026-11-24"
    end = overdue_from(due_on, counted_from)
    before = queries._Cutoff(_utc(last_on_time))
    after = queries._Cutoff(_utc(first_overdue))
    assert before.days_overdue(due_on, end) == 0
    assert after.days_overdue(due_on, end) == 1
    # the SQL test the board and the counts use agrees with the days
    assert not end or (before.param < end <= after.param)
    # a whole local day later: 2 days overdue
    later = queries._Cutoff(_utc(first_overdue) + dt.timedelta(days=1))
    assert later.days_overdue(due_on, end) == 2


def test_the_utc_date_no_longer_decides() -> None:
    """The reviewer's case: D1 on 2026-11-23 at 20:00 -05:00, D2 due on the 24th (local). At
    19:30 -05:00 on the 24th it is already the 25th in UTC, but D2 is still on schedule."""
    end = overdue_from("2026-11-24", "2026-11-23T20:00:00-05:00")
    now = _utc("2026-11-24T19:30:00-05:00")
    assert now.date() == dt.date(2026, 11, 25)
    assert queries._Cutoff(now).days_overdue("2026-11-24", end) == 0
    # East: at 00:30 +09:00 on the 25th it is still the 24th in UTC, but the due day is over.
    end_east = overdue_from("2026-11-24", "2026-11-23T07:00:00+09:00")
    east_now = _utc("2026-11-25T00:30:00+09:00")
    assert east_now.date() == dt.date(2026, 11, 24)
    assert queries._Cutoff(east_now).days_overdue("2026-11-24", end_east) == 1


def test_a_day_given_as_now_means_that_calendar_day() -> None:
    cutoff = queries._Cutoff(dt.date(2026, 11, 25))
    end_west = overdue_from("2026-11-24", "2026-11-23T20:00:00-05:00")
    end_east = overdue_from("2026-11-24", "2026-11-23T07:00:00+09:00")
    assert cutoff.days_overdue("2026-11-24", end_west) == 1
    assert cutoff.days_overdue("2026-11-24", end_east) == 1
    assert cutoff.days_overdue("2026-11-25", None) == 0
    assert queries.as_of(dt.date(2026, 11, 25)) == "2026-11-25"
