"""The query rules and a query's age over HTTP, with the server as ``cart-course serve`` builds it
(``bootstrap.http_app``, settings from the environment, ``CART_COURSE_QUERY_RULES`` unset):
a fraction recorded without its bedside check opens a query by itself, on the patient's queries
and the board; a correction giving its lot closes it; a query's age counts from its clinical
time (issue 17)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import screen_body
from litestar.testing import TestClient

from cart_course.bootstrap import ENV_QUERY_RULES, http_app
from cart_course.demo import ensure_demo_sites
from cart_course.storage import ENV_DB, parse_store_url
from cart_course.tokens import open_token_store

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    db = tmp_path / "rules.sqlite"
    monkeypatch.setenv(ENV_DB, str(db))
    monkeypatch.delenv(ENV_QUERY_RULES, raising=False)  # the default
    tokens = open_token_store(parse_store_url(str(db)))
    try:
        ensure_demo_sites(tokens.sites)
        auth = {
            role: {"Authorization": f"Bearer {tokens.add(f'{role}.t', role)[1]}"}
            for role in ("clinician", "monitor")
        }
    finally:
        tokens.close()
    with TestClient(http_app()) as client:
        yield client, auth


def _post(
    client: TestClient,
    auth: dict[str, str],
    command: str,
    at: dt.datetime,
    payload: dict[str, Any],
    reason: str | None = None,
) -> Any:
    body = {"occurred_at": at.isoformat(), "payload": payload, "reason": reason}
    r = client.post(f"/v1/patients/R-1/commands/{command}", json=body, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


def _course_to_d1(client: TestClient, auth: dict[str, dict[str, str]]) -> int:
    """R-1 screened 20 days ago at S01, collected, D1 given 3 days ago without a bag or a lot;
    returns D1's version."""
    screen = screen_body("R-1", occurred_at=(NOW - dt.timedelta(days=20)).isoformat())
    screen["payload"] = {**screen["payload"], "site": "S01"}  # type: ignore[dict-item]
    r = client.post("/v1/commands", json=screen, headers=auth["clinician"])
    assert r.status_code == 201, r.text
    _post(
        client,
        auth["clinician"],
        "record_apheresis",
        NOW - dt.timedelta(days=17),
        {"apheresis_contraindication": False},
    )
    d1 = _post(
        client,
        auth["clinician"],
        "give_infusion",
        NOW - dt.timedelta(days=3),
        {"day": 1, "cells": {"value": 7e6, "unit": "cells"}, "weight": {"value": 70, "unit": "kg"}},
    )
    return int(d1["version"])


def test_a_fraction_without_its_bedside_check_opens_a_query_a_correction_closes_it(
    served: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, auth = served
    d1 = _course_to_d1(client, auth)
    (q,) = client.get("/v1/patients/R-1/queries", headers=auth["monitor"]).json()
    assert (q["status"], q["rule"], q["on_version"], q["field"], q["opened_by"]) == (
        "open",
        "fraction_unverified",
        d1,
        "payload.product_lot",
        "system:query-rules",
    )
    assert q["awaiting"] == "site" and "bedside check" in q["text"]
    # its clinical time is D1's, three days ago: three days old, wherever it was recorded
    assert q["opened_occurred_at"] == (NOW - dt.timedelta(days=3)).isoformat()
    (row,) = client.get("/v1/board?has_open_queries=true", headers=auth["monitor"]).json()
    assert (row["patient_id"], row["open_queries"]) == ("R-1", 1)
    assert 3.0 <= row["oldest_open_query_age_days"] < 3.1
    # the site gives the lot: the rule closes its query
    fixed = _post(
        client,
        auth["clinician"],
        "correct",
        NOW - dt.timedelta(hours=1),
        {"corrects": d1, "changes": {"product_lot": "LOT-R-1"}},
        reason="lot from the pharmacy record",
    )
    (closed,) = fixed["outcome"]["queries"]
    assert (closed["query_id"], closed["status"]) == (q["query_id"], "closed")
    (q,) = client.get("/v1/patients/R-1/queries", headers=auth["monitor"]).json()
    assert q["status"] == "closed"
    assert "no longer match" in q["history"][-1]["reason"]
    assert client.get("/v1/board?has_open_queries=true", headers=auth["monitor"]).json() == []
    board = client.get("/v1/board", headers=auth["monitor"]).json()
    assert [(r["patient_id"], r["open_queries"]) for r in board] == [("R-1", 0)]


def test_a_query_raised_ten_days_ago_is_ten_days_old_everywhere(
    served: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, auth = served
    d1 = _course_to_d1(client, auth)
    _post(
        client,
        auth["clinician"],
        "correct",
        NOW - dt.timedelta(days=2),
        {"corrects": d1, "changes": {"product_lot": "LOT-R-1"}},
        reason="lot from the pharmacy record",
    )
    raised = NOW - dt.timedelta(days=10)  # the monitor's visit, entered today
    opened = _post(
        client,
        auth["monitor"],
        "open_query",
        raised,
        {"text": "screening KPS: the source says 80", "on_version": 2},
    )
    qid = opened["outcome"]["query_id"]
    listed = client.get("/v1/queries?status=open", headers=auth["monitor"]).json()
    (q,) = [x for x in listed if x["query_id"] == qid]
    assert 10.0 <= q["age_days"] < 10.1
    assert q["opened_occurred_at"] == raised.isoformat()
    assert dt.datetime.fromisoformat(q["opened_at"]) >= NOW  # the record time, kept
    (row,) = client.get("/v1/board?has_open_queries=true", headers=auth["monitor"]).json()
    assert 10.0 <= row["oldest_open_query_age_days"] < 10.1
    assert dt.datetime.fromisoformat(row["oldest_open_query_at"]) == raised
    sites = client.get("/v1/counts/sites", headers=auth["monitor"]).json()
    assert sites["S01"]["open_queries"] == 1
    assert 10.0 <= sites["S01"]["median_query_age_days"] < 10.1
    metrics = client.get("/metrics", headers=auth["monitor"])
    assert metrics.status_code == 200
    gauges = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.text.splitlines()
        if line.startswith("cart_course_site_") and 'site="S01"' in line
    }
    assert gauges['cart_course_site_open_queries{site="S01"}'] == 1
    assert 10.0 <= gauges['cart_course_site_median_query_age_days{site="S01"}'] < 10.1
    # the patient's history shows both times of the opening step
    (mine,) = [
        x
        for x in client.get("/v1/patients/R-1/queries", headers=auth["monitor"]).json()
        if x["query_id"] == qid
    ]
    step = mine["history"][0]
    assert step["occurred_at"] == raised.isoformat() and step["at"] == mine["opened_at"]
