"""The board's next-action kind (issue 16): the indexed ``next_kind`` column, the kept counts
per kind and due date that ``status --overdue`` / ``--follow-up-due`` / ``--sae`` count from,
and the rebuild of a board written by an older release (without the column). On every backend:
the kept counts always equal counting the rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import closing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views import Views, queries
from cart_course.views.store import ViewDB

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
START = NOW - dt.timedelta(days=420)


@pytest.fixture
def views(service: CourseService, store_url: str) -> Iterator[Views]:
    commands = [c for c in cohort(60, 3, start=START) if c["occurred_at"] <= NOW.isoformat()]
    for i in range(0, len(commands), 200):
        service.execute_batch([parse_command(c) for c in commands[i : i + 200]])
    with closing(Views(service.log, parse_store_url(store_url))) as v:
        v.catch_up()
        yield v


def _rows(db: ViewDB, now: queries.Moment, kind: str | None) -> int:
    """What the kept counts stand for: the matching rows, counted one by one."""
    cutoff = queries._Cutoff(now)
    sql = f"SELECT COUNT(*) FROM view_board WHERE {cutoff.where}"
    params: list[object] = [cutoff.param]
    if kind is not None:
        sql += " AND next_kind = ?"
        params.append(kind)
    row = db.fetchone(sql, params)
    assert row is not None
    return int(row[0])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    days=st.integers(min_value=-430, max_value=5500),
    seconds=st.integers(min_value=0, max_value=86_399),
    offset_hours=st.integers(min_value=-14, max_value=14),
    as_day=st.booleans(),
)
def test_the_kept_counts_equal_the_rows_at_any_moment(
    views: Views, days: int, seconds: int, offset_hours: int, as_day: bool
) -> None:
    db = views.db
    instant = (NOW + dt.timedelta(days=days, seconds=seconds)).astimezone(
        dt.timezone(dt.timedelta(hours=offset_hours))
    )
    now: queries.Moment = instant.date() if as_day else instant
    for action, kind in ((None, None), *queries.ACTION_KINDS.items()):
        assert queries.count(db, overdue=True, now=now, action=action) == _rows(db, now, kind)
        page = queries.board(db, overdue=True, now=now, action=action, limit=500)
        assert all(r["overdue"] for r in page)
        if kind is not None:
            assert {r["next_kind"] for r in page} <= {kind}


def test_the_board_has_each_kind_and_its_counts(service: CourseService, views: Views) -> None:
    db = views.db
    rows = queries.board(db, limit=1000)
    kinds = {r["patient_id"]: r["next_kind"] for r in rows}
    assert set(kinds.values()) >= {"protocol", "follow_up", None}
    for r in rows:
        action = r["next_action"] or ""
        assert r["next_kind"] == (
            "follow_up"
            if action.startswith("record_follow_up (")
            else "sae_report"
            if action.startswith("record_sae_report (")
            else None
            if not action or action == "lost to follow-up"
            else "protocol"
        )
        if r["next_kind"] == "follow_up":
            assert r["next_visit"] and r["due_on"] == r["visit_window_end"]
            assert f"({r['next_visit']}, window {r['visit_window_start']} to" in action
        if r["next_visit"]:  # the patient's summary says the same (what a UI shows)
            due = service.summary(r["patient_id"])["next_follow_up"]
            assert (due["visit"], due["window_start"], due["window_end"]) == (
                r["next_visit"],
                r["visit_window_start"],
                r["visit_window_end"],
            )
    for action, kind in queries.ACTION_KINDS.items():
        matching = [pid for pid, k in kinds.items() if k == kind]
        assert queries.count(db, action=action) == len(matching)
        assert [r["patient_id"] for r in queries.board(db, action=action, limit=1000)] == sorted(
            matching
        )
    # the kept counts are not cohort figures
    assert not {k for k in queries.cohort(db) if k == "next" or k.startswith("due:")}


def test_a_board_of_an_older_release_is_rebuilt_with_the_kind(
    service: CourseService, store_url: str, views: Views
) -> None:
    """(On the memory store each process's views are its own: a new one rebuilds anyway.)"""
    before = views.dump()
    position = views.position()
    assert position > 0
    db = views.db
    with db.transaction():  # the tables as the previous release wrote them
        for index in (
            "view_board_kind_overdue",
            "view_board_kind",
            "view_board_kind_due",
            "view_board_open_ae",
        ):
            db.execute(f"DROP INDEX {index}")
        for column in (
            "next_kind",
            "next_visit",
            "visit_window_start",
            "visit_window_end",
            "sae_case_id",
            "sae_report",
            "sae_due_at",
            "max_ae_grade",
            "open_ae_grade",
        ):
            db.execute(f"ALTER TABLE view_board DROP COLUMN {column}")
        db.execute("DROP INDEX view_toxicity_ended")
        db.execute("ALTER TABLE view_toxicity DROP COLUMN resolved_utc")
        db.execute(
            "DELETE FROM view_cohort WHERE dimension = ? OR dimension LIKE ?", ("next", "due:%")
        )
    views.close()
    upgraded = Views(service.log, parse_store_url(store_url))
    try:
        assert upgraded.position() == 0  # dropped and recomputed from the log
        assert upgraded.catch_up() == position
        assert upgraded.dump() == before
    finally:
        upgraded.close()


def test_a_follow_up_visit_or_an_sae_report(views: Views) -> None:
    """Both actions at once (``--follow-up-due --sae``, ``?follow_up_due=true&sae=true``): the
    patients whose next action is either, counted from the kept counts as each is."""
    db = views.db
    both = ("record_follow_up", "record_sae_report")
    for overdue in (False, True):
        rows = queries.board(db, overdue=overdue, action=both, now=NOW, limit=1000)
        assert {r["next_kind"] for r in rows} <= {"follow_up", "sae_report"}
        assert (
            queries.count(db, overdue=overdue, action=both, now=NOW)
            == len(rows)
            == sum(queries.count(db, overdue=overdue, action=a, now=NOW) for a in both)
        )
    with pytest.raises(ValueError, match="not one of"):
        queries.count(db, action=("record_follow_up", "screen"))
