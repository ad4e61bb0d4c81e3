"""Findings of the adversarial review of issue 17 (sites, site-scoped access, data queries) over
HTTP: each test is one finding, as a user or an attacker holding a site-limited token meets it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, screen_body
from litestar.testing import TestClient

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Stack, TestClient[Any]]]:
    s = Stack(str(tmp_path / "review.sqlite"))
    s.tokens.sites.add("S01", "Paris", "Europe/Paris", created_by="admin.tester")
    s.tokens.sites.add("S02", "Tokyo", "Asia/Tokyo", created_by="admin.tester")
    try:
        with TestClient(s.app) as client:
            for pid, site in (("P-A1", "S01"), ("P-B1", "S02")):
                body = screen_body(pid)
                body["payload"] = {**body["payload"], "site": site}  # type: ignore[dict-item]
                body["occurred_at"] = T0.isoformat()
                r = client.post("/v1/commands", json=body, headers=s.auth("clinician"))
                assert r.status_code == 201, r.text
            yield s, client
    finally:
        s.close()


VIEW_ROUTES = ("/v1/board", "/v1/board.csv", "/v1/watchlist", "/v1/counts", "/v1/deviations")


@pytest.mark.parametrize("path", VIEW_ROUTES)
def test_an_unknown_site_in_a_view_filter_is_a_clear_error(
    api: tuple[Stack, TestClient[Any]], path: str
) -> None:
    """A monitor who mistypes a site (S4 for S04) got an empty board, counts of zero, an empty
    CSV: as if the site had no patients. The CLI (`status --site S99`) refuses it; so does
    HTTP now, naming the field and the trial's sites."""
    s, client = api
    r = client.get(path, params={"site": "S99"}, headers=s.auth("monitor"))
    assert r.status_code == 422, (path, r.status_code, r.text[:200])
    problem = r.json()
    assert problem["field"] == "query.site"
    assert "'S99' is not a site of this trial" in problem["detail"]
    assert "S01" in problem["detail"] and "S02" in problem["detail"]
    # a known site without patients is not an error; the default site is known
    assert client.get(path, params={"site": "S00"}, headers=s.auth("monitor")).status_code == 200
    assert client.get(path, params={"site": "S02"}, headers=s.auth("monitor")).status_code == 200


def test_the_audit_report_names_the_patients_site_and_its_transfers(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """An auditor printing a patient's audit report read its state and course at the top but
    not its site: a multi-site trial's report says which site the patient is at and where it
    was before (the transfer, when and why)."""
    s, client = api
    r = client.post(
        "/v1/patients/P-A1/commands/transfer_site",
        json={
            "occurred_at": (T0 + dt.timedelta(days=1)).isoformat(),
            "payload": {"site": "S02"},
            "reason": "referred to Tokyo",
        },
        headers=s.auth("clinician"),
    )
    assert r.status_code == 201, r.text
    html = client.get("/v1/patients/P-A1/report.html", headers=s.auth("auditor")).text
    head = html[html.index("<h1>") : html.index("<h2>")]
    assert "Site <b>S02</b>" in head
    assert "transferred from S01 to S02 at v3" in head and "referred to Tokyo" in head
    other = client.get("/v1/patients/P-B1/report.html", headers=s.auth("auditor")).text
    assert "Site <b>S02</b>" in other[other.index("<h1>") : other.index("<h2>")]
