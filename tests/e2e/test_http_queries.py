"""Data queries over HTTP (issue 17): a monitor opens, the site answers, the monitor closes and
re-opens, each with its own token; the list of queries, a patient's queries and the board's
filter; the refusals (a monitor answering or recording a move, an unknown query) are problems
and record nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, stack
from litestar.testing import TestClient


@pytest.fixture(params=["memory", "sqlite"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, TestClient]]:
    url = "memory:" if request.param == "memory" else str(tmp_path / "http.sqlite")
    with stack(url, demo=3) as s, TestClient(s.app) as client:
        yield s, client


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _post(
    s: Stack, client: TestClient, role: str, command: str, payload: dict[str, Any], **extra: Any
) -> Any:
    body = {"occurred_at": _now(), "payload": payload, **extra}
    return client.post(f"/v1/patients/P-0001/commands/{command}", json=body, headers=s.auth(role))


def test_the_query_workflow_over_http(api: tuple[Stack, TestClient]) -> None:
    s, client = api
    history = client.get("/v1/patients/P-0001/history", headers=s.auth("auditor")).json()
    screened = history[1]["version"]
    r = _post(
        s,
        client,
        "monitor",
        "open_query",
        {
            "text": "KPS: the source says 80",
            "on_version": screened,
            "field": "payload.screening.kps",
        },
    )
    assert r.status_code == 201, r.text
    qid = r.json()["outcome"]["query_id"]
    assert r.json()["event"] == "QueryOpened" and qid == f"Q-{r.json()['version']}"
    version = r.json()["version"]
    # a monitor may not answer, nor record a move: 403, nothing recorded
    refused = _post(s, client, "monitor", "answer_query", {"query_id": qid, "text": "x"})
    assert refused.status_code == 403 and "clinician" in refused.json()["detail"]
    refused = _post(s, client, "monitor", "cancel_remaining_fractions", {}, reason="x")
    assert refused.status_code == 403
    # a field path the event does not have: 409 naming the fields it has
    bad = _post(
        s,
        client,
        "data_manager",
        "open_query",
        {"text": "?", "on_version": screened, "field": "kps"},
    )
    assert bad.status_code == 409 and "payload.screening.kps" in bad.json()["detail"]
    # closing an unanswered query without a reason: 422 naming the reason
    early = _post(s, client, "monitor", "close_query", {"query_id": qid})
    assert early.status_code == 422 and early.json()["field"] == "reason"
    assert client.get("/v1/patients/P-0001", headers=s.auth("monitor")).json()["version"] == version
    answered = _post(
        s, client, "clinician", "answer_query", {"query_id": qid, "text": "KPS 90 at screening"}
    )
    assert answered.status_code == 201 and answered.json()["outcome"]["status"] == "answered"
    listed = client.get("/v1/queries?status=answered", headers=s.auth("monitor")).json()
    assert [(q["patient_id"], q["query_id"], q["awaiting"]) for q in listed] == [
        ("P-0001", qid, "monitor")
    ]
    board = client.get("/v1/board?has_open_queries=true", headers=s.auth("monitor")).json()
    assert [(r["patient_id"], r["open_queries"]) for r in board] == [("P-0001", 1)]
    closed = _post(s, client, "monitor", "close_query", {"query_id": qid})
    assert closed.status_code == 201
    assert client.get("/v1/board?has_open_queries=true", headers=s.auth("monitor")).json() == []
    again = _post(s, client, "clinician", "answer_query", {"query_id": qid, "text": "late"})
    assert again.status_code == 409 and "closed" in again.json()["detail"]
    unknown = _post(s, client, "monitor", "close_query", {"query_id": "Q-999"})
    assert unknown.status_code == 409 and qid in unknown.json()["detail"]
    reopened = _post(
        s, client, "data_manager", "reopen_query", {"query_id": qid, "text": "file the KPS form"}
    )
    assert reopened.status_code == 201
    (q,) = client.get("/v1/patients/P-0001/queries", headers=s.auth("clinician")).json()
    assert q["status"] == "reopened" and q["awaiting"] == "site"
    assert [(h["action"], h["role"]) for h in q["history"]] == [
        ("open", "monitor"),
        ("answer", "clinician"),
        ("close", "monitor"),
        ("reopen", "data_manager"),
    ]
    # the auditors' timeline carries the steps
    timeline = client.get(
        "/v1/exports/timeline.csv?patient_id=P-0001", headers=s.auth("auditor")
    ).text
    assert f"query {qid} re-opened" in timeline
    # an auditor records nothing; an unknown status is a clear 422
    assert _post(s, client, "auditor", "open_query", {"text": "?"}).status_code == 403
    r = client.get("/v1/queries?status=pending", headers=s.auth("monitor"))
    assert r.status_code == 422 and "unresolved" in r.json()["detail"]
