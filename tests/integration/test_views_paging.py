"""Paging the board: pages taken one after the other give every matching row once, in the
order of the unpaged answer -- by patient id, and most overdue first (a keyset on the sort key)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from overdue_cohort import D1, d1_patient

from cart_course.contract import parse_command
from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views import Views, queries


def record_overdue(service: CourseService) -> None:
    commands = [c for pid, day in D1.items() for c in d1_patient(pid, day)]
    results = service.execute_batch([parse_command(c) for c in commands])
    assert all(hasattr(r, "status") for r in results), results


@pytest.fixture
def views(service: CourseService, store_url: str) -> Iterator[Views]:
    record_overdue(service)
    with closing(Views(service.log, parse_store_url(store_url))) as v:
        v.catch_up()
        yield v


def pages(views: Views, limit: int, **filters: Any) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    after: Any = None
    while True:
        page = queries.board(views.db, limit=limit, after=after, **filters)
        if not page:
            return out
        out.append(page)
        last = page[-1]
        if filters.get("overdue"):
            after = queries.overdue_key(last, filters.get("now"))
        else:
            after = last["patient_id"]


NOW_INSTANT = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
NOW_DAY = dt.date(2026, 6, 1)


@pytest.mark.parametrize("now", [NOW_INSTANT, NOW_DAY], ids=["instant", "day"])
@pytest.mark.parametrize("limit", [1, 2, 3])
def test_overdue_pages_give_every_row_once_most_overdue_first(
    views: Views, now: Any, limit: int
) -> None:
    whole = queries.board(views.db, overdue=True, now=now)
    assert [r["patient_id"] for r in whole] == ["A-4", "A-5", "A-2", "A-3", "A-1"]
    days = [r["days_overdue"] for r in whole]
    assert days == sorted(days, reverse=True) and days[-1] > 0
    paged = [r["patient_id"] for page in pages(views, limit, overdue=True, now=now) for r in page]
    assert paged == [r["patient_id"] for r in whole]


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_pages_by_patient_id(views: Views, limit: int) -> None:
    whole = [r["patient_id"] for r in queries.board(views.db)]
    paged = [r["patient_id"] for page in pages(views, limit) for r in page]
    assert paged == whole == sorted(whole)


def test_overdue_page_after_a_patient_id_goes_on_from_its_place(views: Views) -> None:
    """A patient id as ``after`` in the overdue order: its place is looked up (the reviewer's
    ``?overdue=true&limit=1`` then ``&after=<that id>`` gave [] before)."""
    first = queries.board(views.db, overdue=True, now=NOW_INSTANT, limit=1)
    assert [r["patient_id"] for r in first] == ["A-4"]
    rest = queries.board(views.db, overdue=True, now=NOW_INSTANT, after="A-4")
    assert [r["patient_id"] for r in rest] == ["A-5", "A-2", "A-3", "A-1"]
    with pytest.raises(queries.UnknownPageStart):
        queries.board(views.db, overdue=True, now=NOW_INSTANT, after="NOBODY")
