"""Data queries through the service on every store (memory, SQLite, PostgreSQL): a monitor opens a
query on a recorded value, the site answers (pointing to its correction), the monitor closes or
re-opens it; the refusals record nothing; the query rules open and close system queries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from integration_helpers import Course, envelope, screening

from cart_course.bootstrap import Settings, build_service
from cart_course.contract import Command, parse_command
from cart_course.errors import (
    CartCourseError,
    ForbiddenError,
    InvalidCommandError,
    RecordConflictError,
    StoreError,
)
from cart_course.service import CourseService

MONITOR = {"id": "cra.kim", "role": "monitor", "name": "J. Kim"}
DATA_MANAGER = {"id": "dm.ng", "role": "data_manager"}
SITE = {"id": "dr.lee", "role": "clinician", "name": "Dr. K. Lee"}


def _course(service: CourseService, pid: str = "P-Q1", **infusion: Any) -> Course:
    c = Course(service, pid)
    c.screen()
    c.apheresis()
    c.infuse(1, days=14, **infusion)
    c.infuse(2, **infusion)
    return c


def _refused(service: CourseService, pid: str, call: Any, error: type[Exception]) -> Any:
    """``call`` raises ``error`` and records nothing."""
    before = service.record(pid).version
    with pytest.raises(error) as info:
        call()
    assert service.record(pid).version == before
    return info.value


def test_the_query_workflow_open_answer_close_reopen(service: CourseService) -> None:
    c = _course(service)
    d2 = c.service.record(c.pid).courses[0].fractions[1].version
    state = service.record(c.pid).state
    opened = c.do(
        "open_query",
        {"text": "D2 cells: the source says 1.8e7", "on_version": d2, "field": "payload.cells"},
        actor=MONITOR,
        hours=2,
    )
    qid = opened.outcome["query_id"]
    assert qid == f"Q-{opened.version}"
    assert opened.event == "QueryOpened" and opened.to_state == state == opened.from_state
    (q,) = service.queries(c.pid)
    assert (q["status"], q["on_version"], q["field"], q["opened_by"]) == (
        "open",
        d2,
        "payload.cells",
        "cra.kim",
    )
    assert service.record(c.pid).state == state  # the protocol state does not move
    # the site corrects the value and answers, naming its correction
    fixed = c.do(
        "correct",
        {"corrects": d2, "changes": {"cells": {"value": 1.8e7, "unit": "cells"}}},
        reason="D2 count read from the wrong label; source says 1.8e7",
        actor=SITE,
    )
    answered = c.do(
        "answer_query",
        {"query_id": qid, "text": "corrected to 1.8e7", "correction": fixed.version},
        actor=SITE,
    )
    assert answered.outcome == {"query_id": qid, "status": "answered", "correction": fixed.version}
    closed = c.do("close_query", {"query_id": qid}, actor=MONITOR)
    assert closed.outcome["status"] == "closed"
    reopened = c.do(
        "reopen_query", {"query_id": qid, "text": "file the bag label too"}, actor=DATA_MANAGER
    )
    assert reopened.outcome["status"] == "reopened"
    again = c.do("answer_query", {"query_id": qid, "text": "filed"}, actor=SITE)
    assert again.outcome["status"] == "answered"
    (q,) = service.queries(c.pid)
    assert [s["action"] for s in q["history"]] == ["open", "answer", "close", "reopen", "answer"]
    assert [s["by"] for s in q["history"]] == ["cra.kim", "dr.lee", "cra.kim", "dm.ng", "dr.lee"]
    assert q["answer"] == "filed" and q["correction"] == fixed.version
    summary = service.summary(c.pid)["queries"]
    assert summary["open_queries"] == 1 and summary["by_status"] == {"answered": 1}


def test_a_retry_gives_the_same_query_id_and_records_nothing(service: CourseService) -> None:
    c = _course(service, "P-Q2")
    command = c.command("open_query", {"text": "weight: source says 72 kg?"}, actor=MONITOR)
    first = service.execute(command)
    again = service.execute(command)
    assert again.status == "duplicate"
    assert again.outcome["query_id"] == first.outcome["query_id"]
    assert again.version == first.version == service.record(c.pid).version
    assert len(service.queries(c.pid)) == 1


def test_bad_query_commands_are_clear_errors_and_record_nothing(service: CourseService) -> None:
    c = _course(service, "P-Q3")
    d1 = service.record(c.pid).courses[0].fractions[0].version
    # a field path that the named event does not have: the fields it has are listed
    err = _refused(
        service,
        c.pid,
        lambda: c.do(
            "open_query",
            {"text": "?", "on_version": d1, "field": "payload.celsl"},
            actor=MONITOR,
        ),
        RecordConflictError,
    )
    assert err.field == "payload.field"
    assert "payload.cells.value" in err.message and "payload.weight" in err.message
    # a version not on record
    _refused(
        service,
        c.pid,
        lambda: c.do("open_query", {"text": "?", "on_version": 999}, actor=MONITOR),
        RecordConflictError,
    )
    opened = c.do("open_query", {"text": "D1 lot?", "on_version": d1}, actor=MONITOR)
    qid = opened.outcome["query_id"]
    # answering as a monitor
    err = _refused(
        service,
        c.pid,
        lambda: c.do("answer_query", {"query_id": qid, "text": "x"}, actor=MONITOR),
        ForbiddenError,
    )
    assert "clinician" in str(err)
    # a site opening a query, a monitor recording a move
    _refused(service, c.pid, lambda: c.do("open_query", {"text": "?"}, actor=SITE), ForbiddenError)
    _refused(service, c.pid, lambda: c.infuse(3, actor=MONITOR), ForbiddenError)
    # closing a query that is not answered, without a reason
    err = _refused(
        service,
        c.pid,
        lambda: c.do("close_query", {"query_id": qid}, actor=MONITOR),
        InvalidCommandError,
    )
    assert err.field == "reason" and "not answered" in err.message
    # an unknown query id: the patient's queries are named
    err = _refused(
        service,
        c.pid,
        lambda: c.do("answer_query", {"query_id": "Q-1234", "text": "x"}, actor=SITE),
        RecordConflictError,
    )
    assert qid in err.message
    # closed with a reason; then acting on the closed query
    c.do("close_query", {"query_id": qid}, actor=MONITOR, reason="lot found in the binder")
    for command, payload, actor in (
        ("answer_query", {"query_id": qid, "text": "late"}, SITE),
        ("close_query", {"query_id": qid}, MONITOR),
    ):
        err = _refused(
            service,
            c.pid,
            lambda command=command, payload=payload, actor=actor: c.do(
                command, payload, actor=actor
            ),
            RecordConflictError,
        )
        assert "closed" in err.message
    # nothing of a query's own is refused silently
    assert isinstance(err, CartCourseError)


def test_an_answer_may_point_only_to_a_correction_of_the_queried_event(
    service: CourseService,
) -> None:
    """Review of issue 17: an answer naming the site's ``correct`` must name a correction of
    the event the query is about, not a correction of another event of the patient."""
    c = _course(service, "P-Q4")
    d1, d2 = (f.version for f in service.record(c.pid).courses[0].fractions[:2])
    qid = c.do(
        "open_query",
        {"text": "D2 cells: the source says 1.8e7", "on_version": d2, "field": "payload.cells"},
        actor=MONITOR,
    ).outcome["query_id"]
    wrong = c.do(
        "correct",
        {"corrects": d1, "changes": {"weight": {"value": 71, "unit": "kg"}}},
        reason="D1 weight re-read from the chart",
        actor=SITE,
    )
    err = _refused(
        service,
        c.pid,
        lambda: c.do(
            "answer_query",
            {"query_id": qid, "text": "corrected", "correction": wrong.version},
            actor=SITE,
        ),
        RecordConflictError,
    )
    assert err.field == "payload.correction"
    assert f"corrects version {d1}" in err.message and f"version {d2}" in err.message
    assert service.queries(c.pid)[0]["status"] == "open"
    # a correction of the queried event is accepted; a query on the patient takes any correction
    right = c.do(
        "correct",
        {"corrects": d2, "changes": {"cells": {"value": 1.8e7, "unit": "cells"}}},
        reason="D2 count read from the wrong label",
        actor=SITE,
    )
    answered = c.do(
        "answer_query",
        {"query_id": qid, "text": "corrected", "correction": right.version},
        actor=SITE,
    )
    assert answered.outcome["correction"] == right.version
    general = c.do("open_query", {"text": "weight at D1?"}, actor=MONITOR).outcome["query_id"]
    done = c.do(
        "answer_query",
        {"query_id": general, "text": "see the correction", "correction": wrong.version},
        actor=SITE,
    )
    assert done.outcome["status"] == "answered"


def test_the_rules_open_a_query_and_close_it_when_the_data_are_corrected(store_url: str) -> None:
    service = build_service(Settings.for_store(store_url))  # the rules run by default
    try:
        c = Course(service, "P-R1")
        c.screen()
        c.apheresis()
        no_lot = c.d1_without_lot()
        (opened,) = no_lot.outcome["queries"]
        assert opened["rule"] == "fraction_unverified" and opened["on_version"] == no_lot.version
        (q,) = service.queries(c.pid)
        assert q["opened_by"] == "system:query-rules" and q["field"] == "payload.product_lot"
        # the rules run again: nothing new
        assert service.run_query_rules(c.pid) == []
        assert len(service.queries(c.pid)) == 1
        fixed = c.do(
            "correct",
            {"corrects": no_lot.version, "changes": {"product_lot": "LOT-77"}},
            reason="lot from the pharmacy record",
        )
        (closed,) = fixed.outcome["queries"]
        assert closed == {**closed, "query_id": q["query_id"], "status": "closed"}
        (q,) = service.queries(c.pid)
        assert q["status"] == "closed" and q["history"][-1]["by"] == "system:query-rules"
        assert service.run_query_rules(c.pid) == []
    finally:
        service.close()


def _open_and_answer(service: CourseService, pid: str) -> tuple[Course, str, str]:
    """A course with two queries: one answered, one open."""
    c = _course(service, pid)
    d2 = service.record(pid).courses[0].fractions[1].version
    first = c.do(
        "open_query",
        {"text": "D2 cells?", "on_version": d2, "field": "payload.cells.value"},
        actor=MONITOR,
    ).outcome["query_id"]
    second = c.do("open_query", {"text": "consent form copy missing"}, actor=MONITOR).outcome[
        "query_id"
    ]
    c.do("answer_query", {"query_id": first, "text": "source checked: right"}, actor=SITE)
    return c, first, second


def test_the_views_count_open_queries_and_filter_the_board(
    service: CourseService, store_url: str
) -> None:
    from cart_course.storage import parse_store_url
    from cart_course.views import Views
    from cart_course.views import queries as vq

    c, first, second = _open_and_answer(service, "P-V1")
    Course(service, "P-V2").screen()
    views = Views(service.log, parse_store_url(store_url), batch_size=7)
    try:
        views.catch_up()
        rows = {r["patient_id"]: r for r in vq.board(views.db)}
        assert rows["P-V1"]["open_queries"] == 2 and rows["P-V2"]["open_queries"] == 0
        opened = {q["query_id"]: q for q in vq.query_list(views.db, patient_id="P-V1")}
        # the oldest open query's clinical opening time (UTC), which its age counts from
        assert dt.datetime.fromisoformat(rows["P-V1"]["oldest_open_query_at"]) == (
            dt.datetime.fromisoformat(opened[first]["opened_occurred_at"])
        )
        assert rows["P-V1"]["oldest_open_query_age_days"] >= 0
        assert [r["patient_id"] for r in vq.board(views.db, has_open_queries=True)] == ["P-V1"]
        assert vq.count(views.db, has_open_queries=True) == 1
        assert [q["query_id"] for q in vq.query_list(views.db, status="answered")] == [first]
        assert opened[first]["awaiting"] == "monitor" and opened[second]["awaiting"] == "site"
        c.do("close_query", {"query_id": first}, actor=MONITOR)
        c.do("close_query", {"query_id": second}, actor=MONITOR, reason="copy found on file")
        views.catch_up()
        assert vq.board(views.db, has_open_queries=True) == []
        assert vq.patient(views.db, "P-V1")["open_queries"] == 0  # type: ignore[index]
        assert {q["status"] for q in vq.query_list(views.db)} == {"closed"}
        from cart_course.views.metrics import metrics_text

        text = metrics_text(views)
        assert 'cart_course_data_queries{status="closed"} 2' in text
        assert 'cart_course_data_queries{status="open"} 0' in text
        # a rebuild gives the same rows
        before = views.dump()
        views.rebuild()
        assert views.dump() == before
    finally:
        views.close()


def test_the_audit_shows_queries_in_the_timeline_and_as_of(service: CourseService) -> None:
    from cart_course.audit import as_of, check_history, patient_events, verify
    from cart_course.audit.history import timeline
    from cart_course.audit.report import html_report

    c, first, second = _open_and_answer(service, "P-A1")
    opened_at = service.record(c.pid).version
    c.do("close_query", {"query_id": first}, actor=MONITOR)
    events = patient_events(service.log, c.pid)
    rows = [r for r in timeline(c.pid, events) if r["event"].startswith("Query")]
    assert [r["move"] for r in rows] == ["open_query", "open_query", "answer_query", "close_query"]
    assert rows[0]["actor"] == "cra.kim" and rows[0]["role"] == "monitor"
    assert f"query {first} opened on v" in rows[0]["notes"][0]
    # as of the version before the close: both unresolved; now: only the second
    then = as_of(c.pid, events, version=opened_at)
    assert {q["query_id"] for q in then["open_queries"]} == {first, second}
    now = as_of(c.pid, events, version=events[-1].version)
    assert [q["query_id"] for q in now["open_queries"]] == [second]
    result = check_history(c.pid, events)
    assert result.ok and [q["query_id"] for q in result.open_queries] == [second]
    report = html_report(c.pid, events, findings=[], problems=[])
    assert "Data queries open at the time of the report" in report and "consent form" in report
    assert verify(service.log).ok


def test_an_edited_query_row_is_found_by_the_views_check(tmp_path: Any) -> None:
    import sqlite3

    from cart_course.ledger.views import compare_views
    from cart_course.storage import parse_store_url
    from cart_course.views import Views

    url = str(tmp_path / "q.sqlite")
    service = build_service(Settings.for_store(url))
    try:
        c, first, _second = _open_and_answer(service, "P-T1")
        views = Views(service.log, parse_store_url(url))
        views.catch_up()
        views.close()
        assert compare_views(service.log, parse_store_url(url))[1] == []
        with sqlite3.connect(url) as db:
            db.execute("UPDATE view_query SET status = 'closed' WHERE query_id = ?", (first,))
        (problem,) = compare_views(service.log, parse_store_url(url))[1]
        assert problem.patient_id == c.pid and "view_query (status)" in problem.message
    finally:
        service.close()


# -- the query rules run by default, on every path a command is recorded (issue 17) -------------

NOW = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


def _unverified_story(pid: str) -> list[Command]:
    """Screening to D2, both fractions without a bag or a lot (the rule opens a query on each);
    a correction giving D1 its lot (closes D1's); D2's count corrected beyond the tolerance
    without a reason (a second rule opens a query on D2); its reason given (closes that one)."""
    c = Course(None, pid)  # type: ignore[arg-type]  # only builds the commands
    return [
        c.command("screen", {"screening": screening()}),
        c.command(
            "record_apheresis",
            {"apheresis_contraindication": False, "product_id": f"LOT-{pid}"},
            days=3,
        ),
        c.command(
            "give_infusion",
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
            days=14,
        ),
        c.command("give_infusion", {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}}, days=1),
        c.command(
            "correct",
            {"corrects": 4, "changes": {"product_lot": f"LOT-{pid}"}},
            reason="lot from the pharmacy record",
        ),
        c.command(
            "correct",
            {"corrects": 6, "changes": {"cells": {"value": 3.4e7, "unit": "cells"}}},
            reason="D2 count re-read from the pharmacy record",
        ),
        c.command(
            "correct",
            {"corrects": 6, "changes": {"deviation_reason": "a second bag was thawed"}},
            reason="the deviation's reason, as the query rule asked",
        ),
    ]


def _queries_of(service: CourseService, pid: str) -> list[tuple[Any, ...]]:
    """A patient's queries without their record times (which differ between two runs)."""
    return [
        (
            q["query_id"],
            q["status"],
            q["rule"],
            q["on_version"],
            q["field"],
            q["opened_occurred_at"],
            tuple((h["version"], h["action"], h["by"], h["occurred_at"]) for h in q["history"]),
        )
        for q in service.queries(pid)
    ]


def test_a_batch_gives_the_same_queries_as_one_command_at_a_time(store_url: str) -> None:
    """The rules run by default after each command that records or corrects a move they read:
    one at a time (``record``, HTTP) and in a batch (``ingest``) give the same events; a retry
    of each (one at a time, then the whole batch again) records nothing."""
    one = build_service(Settings.for_store(store_url))
    batch = build_service(Settings.for_store("memory:"))
    try:
        commands = _unverified_story("P-B1")
        singles = [one.execute(c) for c in commands]
        rules = [q for r in singles for q in r.outcome.get("queries", ())]
        assert [(q["rule"], q["status"], q["on_version"]) for q in rules] == [
            ("fraction_unverified", "open", 4),
            ("fraction_unverified", "open", 6),
            ("fraction_unverified", "closed", 4),  # the lot given
            ("deviation_without_reason", "open", 6),  # the count corrected beyond tolerance
            ("deviation_without_reason", "closed", 6),  # its reason given
        ]
        results = batch.execute_batch(commands)
        assert [r.version for r in results] == [r.version for r in singles]
        assert [r.outcome.get("queries") for r in results] == [
            r.outcome.get("queries") for r in singles
        ]
        assert _queries_of(batch, "P-B1") == _queries_of(one, "P-B1")
        statuses = {q[0]: q[1] for q in _queries_of(one, "P-B1")}
        assert sorted(statuses.values()) == ["closed", "closed", "open"]
        # D2 still has no lot: its query stays open; each query's clinical time is its command's
        (d2,) = [q for q in one.queries("P-B1") if q["status"] == "open"]
        assert d2["on_version"] == 6 and d2["opened_occurred_at"] == commands[3].occurred_iso
        # idempotent retries: nothing recorded, no query opened twice
        version = one.record("P-B1").version
        assert {one.execute(c).status for c in commands} == {"duplicate"}
        again = one.execute_batch(commands)
        assert {r.status for r in again} == {"duplicate"}
        assert one.record("P-B1").version == version and len(one.queries("P-B1")) == 3
        # the rules over the whole record again: nothing new
        assert one.run_query_rules("P-B1") == []
    finally:
        one.close()
        batch.close()


def test_the_rules_can_be_turned_off(store_url: str) -> None:
    assert Settings.from_env("memory:", {}).query_rules is True
    assert Settings.from_env("memory:", {"CART_COURSE_QUERY_RULES": "1"}).query_rules is True
    assert Settings.from_env("memory:", {"CART_COURSE_QUERY_RULES": "0"}).query_rules is False
    assert Settings.from_env("memory:", {"CART_COURSE_QUERY_RULES": "off"}).query_rules is False
    with pytest.raises(StoreError) as bad:
        Settings.from_env("memory:", {"CART_COURSE_QUERY_RULES": "maybe"})
    assert "CART_COURSE_QUERY_RULES" in str(bad.value) and "'maybe'" in str(bad.value)
    service = build_service(Settings.for_store(store_url, query_rules=False))
    try:
        results = [service.execute(c) for c in _unverified_story("P-OFF")[:4]]  # up to D2
        assert all("queries" not in r.outcome for r in results)
        assert service.queries("P-OFF") == [] and service.record("P-OFF").version == 5
        # asked for, they run over the whole record (neither fraction has a lot)
        opened = service.run_query_rules("P-OFF")
        assert [(q["rule"], q["on_version"]) for q in opened] == [
            ("fraction_unverified", 4),
            ("fraction_unverified", 5),
        ]
    finally:
        service.close()


def test_a_query_age_counts_from_its_clinical_time(service: CourseService, store_url: str) -> None:
    """A query opened with an occurred_at ten days before ``now`` is ten days old on the board,
    in the per-site counts and the list, whenever it was recorded; its record time is kept."""
    from cart_course.storage import parse_store_url
    from cart_course.views import Views
    from cart_course.views import queries as vq

    c = _course(service, "P-AGE")
    raised = NOW - dt.timedelta(days=10)
    opened = service.execute(
        parse_command(
            envelope(
                "open_query",
                c.pid,
                {
                    "text": "D1 weight: the source says 71 kg",
                    "on_version": 4,
                    "field": "payload.weight",
                },
                at=raised,
                actor=MONITOR,
            )
        )
    )
    (q,) = [q for q in service.queries(c.pid) if q["query_id"] == opened.outcome["query_id"]]
    assert q["opened_occurred_at"] == raised.isoformat()
    recorded = dt.datetime.fromisoformat(q["opened_at"])
    assert recorded > NOW  # recorded today: the record time stays, the age does not use it
    assert q["history"][0]["at"] == q["opened_at"]
    assert q["history"][0]["occurred_at"] == raised.isoformat()
    views = Views(service.log, parse_store_url(store_url))
    try:
        views.catch_up()
        row = vq.patient(views.db, c.pid, now=NOW)
        assert row is not None
        assert row["oldest_open_query_age_days"] == 10.0
        assert dt.datetime.fromisoformat(row["oldest_open_query_at"]) == raised
        (listed,) = vq.query_list(views.db, patient_id=c.pid, now=NOW)
        assert listed["age_days"] == 10.0 and listed["opened_at"] == q["opened_at"]
        site = service.site_of(c.pid)
        assert vq.site_counts(views.db, NOW)[site]["median_query_age_days"] == 10.0
        # a query raised in another offset compares by its instant: 12 days, the oldest now
        east = (NOW - dt.timedelta(days=12)).astimezone(dt.timezone(dt.timedelta(hours=9)))
        service.execute(
            parse_command(
                envelope("open_query", c.pid, {"text": "consent copy?"}, at=east, actor=MONITOR)
            )
        )
        views.catch_up()
        row = vq.patient(views.db, c.pid, now=NOW)
        assert row is not None and row["oldest_open_query_age_days"] == 12.0
        assert vq.site_counts(views.db, NOW)[site]["median_query_age_days"] == 11.0
        assert [x["age_days"] for x in vq.query_list(views.db, patient_id=c.pid, now=NOW)] == [
            12.0,
            10.0,
        ]
        assert service.summary(c.pid)["queries"]["oldest_open_query_at"] == east.isoformat()
    finally:
        views.close()
