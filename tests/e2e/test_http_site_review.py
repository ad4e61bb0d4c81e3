"""Findings of the adversarial review of issue 17 (sites, site-scoped access, data queries) over
HTTP: each test is one finding, as a user or an attacker holding a site-limited token meets it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, crs_report, screen_body
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


def _site_token(s: Stack, role: str, site: str = "S01") -> dict[str, str]:
    _, token = s.tokens.add(f"{role}.{site.lower()}", role, sites=[site])
    return {"Authorization": f"Bearer {token}"}


def _screen(pid: str, site: str, **changes: Any) -> dict[str, Any]:
    body = screen_body(pid)
    body["payload"] = {**body["payload"], "site": site}  # type: ignore[dict-item]
    body["occurred_at"] = (T0 + dt.timedelta(days=1)).isoformat()
    body.update(changes)
    return body


def test_screening_another_sites_patient_id_says_taken_only_when_it_would_be_recorded(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """A site-limited token screening another site's patient id got 'patient_id_taken' (409)
    before anything else was checked: a monitor (who may not screen at all), a screening
    without its data, at a site not the token's, or with a wrong If-Match each answered 409
    for an id on record and 403/422/412 for an id that is not, so any token could enumerate
    the other sites' patients. Now a screening that would be refused for a new patient is
    refused the same way; only one that would be recorded learns that the id is taken."""
    s, client = api
    monitor, clinician = _site_token(s, "monitor"), _site_token(s, "clinician")
    wide = s.auth("auditor")
    bad: list[tuple[dict[str, str], Any]] = [
        (monitor, lambda pid: _screen(pid, "S01")),  # a monitor may not screen
        (clinician, lambda pid: _screen(pid, "S02")),  # not the token's site
        (clinician, lambda pid: _screen(pid, "S01", payload={"site": "S01"})),  # no screening
        (clinician, lambda pid: _screen(pid, "S01", expected_version=3)),  # a wrong version
        (clinician, lambda pid: _screen(pid, "S01", occurred_at="2031-01-01T00:00:00Z")),
    ]
    for n, (headers, body) in enumerate(bad):
        other = client.post("/v1/commands", json=body("P-B1"), headers=headers)
        new = f"P-NEW{n}"
        unknown = client.post("/v1/commands", json=body(new), headers=headers)
        assert other.status_code == unknown.status_code, (n, other.text, unknown.text)
        assert other.text.replace("P-B1", new) == unknown.text, n
        assert other.status_code in (403, 409, 412, 422), (n, other.text)
        assert client.get(f"/v1/patients/{new}", headers=wide).status_code == 404
    # a screening that would be recorded: the id is taken (and nothing else is said)
    r = client.post("/v1/commands", json=_screen("P-B1", "S01"), headers=clinician)
    assert r.status_code == 409 and r.json()["error"] == "patient_id_taken"
    assert "S02" not in r.text
    assert client.get("/v1/patients/P-B1", headers=wide).json()["site"] == "S02"
    assert client.get("/v1/patients/P-B1", headers=wide).json()["version"] == 2


def test_prometheus_has_the_open_queries_and_their_median_age_per_site(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """Per-site counts (status --sites, /v1/counts/sites, the dashboard) give each site's
    patients, overdue actions, open queries and median query age; /metrics gave only the
    first two per site, so a monitor could not alert on one site's unanswered queries."""
    s, client = api
    r = client.post(
        "/v1/patients/P-A1/commands/open_query",
        json={"occurred_at": (T0 + dt.timedelta(days=1)).isoformat(), "payload": {"text": "KPS?"}},
        headers=s.auth("monitor"),
    )
    assert r.status_code == 201, r.text
    counts = client.get("/v1/counts/sites", headers=s.auth("monitor")).json()
    text = client.get("/metrics", headers=s.auth("monitor")).text
    assert "# TYPE cart_course_site_open_queries gauge" in text
    assert 'cart_course_site_open_queries{site="S01"} 1' in text
    assert 'cart_course_site_open_queries{site="S02"} 0' in text
    assert "# TYPE cart_course_site_median_query_age_days gauge" in text
    age = counts["S01"]["median_query_age_days"]
    assert f'cart_course_site_median_query_age_days{{site="S01"}} {float(age)}' in text
    # a site without open queries has no age: no series (its query count says 0)
    assert 'cart_course_site_median_query_age_days{site="S02"}' not in text


def test_an_admin_deactivating_a_site_over_http_can_say_why(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """`cart-course sites deactivate S02 --reason ...` keeps why a site closes; over HTTP the
    reason could not be given (DELETE /v1/sites/S02?reason=... was silently ignored and the
    site's deactivation_reason stayed null)."""
    s, client = api
    r = client.delete(
        "/v1/sites/S02", params={"reason": "site closed by the sponsor"}, headers=s.auth("admin")
    )
    assert r.status_code == 200, r.text
    assert r.json()["deactivation_reason"] == "site closed by the sponsor"
    listed = {x["id"]: x for x in client.get("/v1/sites", headers=s.auth("admin")).json()}
    assert listed["S02"]["deactivation_reason"] == "site closed by the sponsor"
    changes = s.tokens.sites.changes("S02")
    assert changes[-1]["detail"] == "site closed by the sponsor"
    # a reason that is not printable text is refused, naming the parameter; nothing changes
    bad = client.delete("/v1/sites/S01", params={"reason": "a\u202eb"}, headers=s.auth("admin"))
    assert bad.status_code == 422 and bad.json()["field"] == "query.reason"
    assert listed["S01"]["active"] is True
    assert {x["id"]: x for x in client.get("/v1/sites", headers=s.auth("admin")).json()}["S01"][
        "active"
    ]


def test_a_token_asked_for_an_empty_list_of_sites_is_refused_not_made_trial_wide(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """POST /v1/tokens with "sites": [] issued a trial-wide token (an empty list read as "no
    limit") while its answer said "sites": []: an admin whose tool sends the sites ticked, none
    ticked by mistake, gave a site user every site's patients. Now 422 on sites, no token."""
    s, client = api
    before = len(s.tokens.list())
    r = client.post(
        "/v1/tokens",
        json={"actor": "dr.nosite", "role": "clinician", "sites": []},
        headers=s.auth("admin"),
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "sites" and "at least one site" in r.json()["detail"]
    assert len(s.tokens.list()) == before
    # left out: trial-wide, as documented; given: limited
    wide = client.post(
        "/v1/tokens", json={"actor": "dr.wide", "role": "clinician"}, headers=s.auth("admin")
    )
    assert wide.status_code == 201
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {wide.json()['token']}"})
    assert me.json()["sites"] is None


@pytest.mark.parametrize("scope", ["trial", "S01"])
def test_the_query_list_of_a_patient_not_on_record_is_404_for_every_token(
    api: tuple[Stack, TestClient[Any]], scope: str
) -> None:
    """GET /v1/queries?patient_id=P-TYPO answered [] to a trial-wide token (a mistyped id read
    as "no queries") and 404 to a site-limited one; /v1/deviations and the exports answer 404
    to both. Now 404 to every token, as they do."""
    s, client = api
    headers = s.auth("monitor") if scope == "trial" else _site_token(s, "monitor", scope)
    r = client.get("/v1/queries", params={"patient_id": "P-TYPO"}, headers=headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "patient_not_found"
    assert client.get("/v1/queries", params={"patient_id": "P-A1"}, headers=headers).json() == []


def test_conformance_and_the_audit_report_list_the_queries_open_as_of_a_cut_off(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """Issue 17: "conformance and the audit report list open queries at the time of the report
    (as-of works for them too)". Only /as-of took a time: the conformance (trial and patient)
    and the audit report listed the queries open now, so an auditor could not list those open
    at a data cut-off. They now take ``as_of`` (a record time): the record as the system knew
    it then, the queries open then."""
    s, client = api
    monitor, site, auditor = s.auth("monitor"), s.auth("clinician"), s.auth("auditor")
    at = (T0 + dt.timedelta(days=1)).isoformat()
    r = client.post(
        "/v1/patients/P-A1/commands/open_query",
        json={"occurred_at": at, "payload": {"text": "KPS at screening?"}},
        headers=monitor,
    )
    qid = r.json()["outcome"]["query_id"]
    cut_off = dt.datetime.now(dt.UTC).isoformat()
    for command, payload, headers, reason in (
        ("answer_query", {"query_id": qid, "text": "KPS 90"}, site, None),
        ("close_query", {"query_id": qid}, monitor, None),
    ):
        body: dict[str, Any] = {"occurred_at": at, "payload": payload}
        if reason:
            body["reason"] = reason
        r = client.post(f"/v1/patients/P-A1/commands/{command}", json=body, headers=headers)
        assert r.status_code == 201, r.text
    now = client.get("/v1/audit/conformance", headers=auditor).json()
    assert now["open_queries"] == []
    then = client.get("/v1/audit/conformance", params={"as_of": cut_off}, headers=auditor).json()
    assert [(q["patient_id"], q["query_id"], q["status"]) for q in then["open_queries"]] == [
        ("P-A1", qid, "open")
    ]
    assert then["patients"] == now["patients"] == 2
    one = client.get(
        "/v1/patients/P-A1/conformance", params={"as_of": cut_off}, headers=auditor
    ).json()
    assert [q["query_id"] for q in one["open_queries"]] == [qid]
    html = client.get(
        "/v1/patients/P-A1/report.html", params={"as_of": cut_off}, headers=auditor
    ).text
    section = html[html.index("Data queries open at the time of the report") :]
    assert f"<td>{qid}</td><td>open</td>" in section[: section.index("</table>")]
    assert "as of" in html[html.index("<h1>") : html.index("<h2>")]
    current = client.get("/v1/patients/P-A1/report.html", headers=auditor).text
    assert f"<td>{qid}</td><td>open</td>" not in current
    # a cut-off before the patient was registered: the report says so; a bad time names the field
    early = client.get(
        "/v1/patients/P-A1/report.html", params={"as_of": "2020-01-01T00:00:00Z"}, headers=auditor
    )
    assert early.status_code == 422 and early.json()["field"] == "query.as_of"
    assert "before patient P-A1 was registered" in early.json()["detail"]
    bad = client.get("/v1/audit/conformance", params={"as_of": "yesterday"}, headers=auditor)
    assert bad.status_code in (400, 422) and "as_of" in bad.text


def test_the_query_list_filters_by_site_as_the_board_does(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """A trial-wide monitor visiting one site for source data verification could list that
    site's patients (board ?site=) but not that site's data queries: GET /v1/queries took no
    site (?site= was ignored: every site's queries). It now takes ``site`` as the views do (an
    unknown site 422; a site-limited token: one of its sites, another 403)."""
    s, client = api
    at = (T0 + dt.timedelta(days=1)).isoformat()
    for pid in ("P-A1", "P-B1"):
        r = client.post(
            f"/v1/patients/{pid}/commands/open_query",
            json={"occurred_at": at, "payload": {"text": f"{pid}: KPS?"}},
            headers=s.auth("monitor"),
        )
        assert r.status_code == 201, r.text
    wide = s.auth("monitor")
    listed = client.get("/v1/queries", params={"site": "S02"}, headers=wide).json()
    assert [q["patient_id"] for q in listed] == ["P-B1"]
    assert len(client.get("/v1/queries", headers=wide).json()) == 2
    assert client.get("/v1/queries", params={"site": "S99"}, headers=wide).status_code == 422
    limited = _site_token(s, "monitor", "S01")
    assert client.get("/v1/queries", params={"site": "S02"}, headers=limited).status_code == 403
    own = client.get("/v1/queries", params={"site": "S01"}, headers=limited).json()
    assert [q["patient_id"] for q in own] == ["P-A1"]


def test_a_token_of_one_site_is_not_offered_a_transfer_it_cannot_record(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """The moves allowed now listed transfer_site to a token limited to one site, though every
    transfer it can send is refused (to its own site: "already at site"; to another: 403).
    The moves a token of one site is offered now leave it out; a token of two sites (which may
    move a patient between them) and a trial-wide one still see it."""
    s, client = api
    one = _site_token(s, "clinician", "S01")
    _, both = s.tokens.add("dr.both", "clinician", sites=["S01", "S02"])
    two = {"Authorization": f"Bearer {both}"}
    wide = s.auth("clinician")

    def moves(headers: dict[str, str]) -> list[str]:
        r = client.get("/v1/patients/P-A1/moves", headers=headers)
        assert r.status_code == 200, r.text
        allowed: list[str] = r.json()["allowed_moves"]
        summary = client.get("/v1/patients/P-A1", headers=headers).json()
        assert summary["allowed_moves"] == allowed
        return allowed

    assert "transfer_site" in moves(wide) and "transfer_site" in moves(two)
    assert "transfer_site" not in moves(one) and "withdraw" in moves(one)
    r = client.post(
        "/v1/patients/P-A1/commands/report_toxicity",
        json={
            "occurred_at": (T0 + dt.timedelta(days=1)).isoformat(),
            "payload": crs_report(),
        },
        headers=one,
    )
    # refused (no toxicity before the apheresis): the moves it lists leave it out too
    assert r.status_code == 409, r.text
    assert "withdraw" in r.json()["allowed_moves"]
    assert "transfer_site" not in r.json()["allowed_moves"]
    r = client.post(
        "/v1/patients/P-A1/commands/record_apheresis",
        json={
            "occurred_at": (T0 + dt.timedelta(days=3)).isoformat(),
            "payload": {"apheresis_contraindication": False, "product_id": "LOT-P-A1"},
        },
        headers=one,
    )
    assert r.status_code == 201, r.text
    assert "transfer_site" not in r.json()["allowed_moves"] and r.json()["allowed_moves"]


def test_a_site_limited_token_screening_learns_no_other_site(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    """A screening at an unknown site, without a site, or at a deactivated site of its own
    answered a site-limited token with the trial's active sites (ids, names, time zones). Now
    it names only the token's own sites: the others are none of its business."""
    s, client = api
    clinician = _site_token(s, "clinician")
    unknown = client.post("/v1/commands", json=_screen("P-N1", "S99"), headers=clinician)
    assert unknown.status_code == 403, unknown.text
    none = _screen("P-N2", "S01")
    none["payload"] = {k: v for k, v in none["payload"].items() if k != "site"}
    missing = client.post("/v1/commands", json=none, headers=clinician)
    assert missing.status_code == 422 and missing.json()["field"] == "payload.site"
    assert "this token's sites: S01" in missing.json()["detail"]
    s.tokens.sites.deactivate("S01", by="admin.tester", reason="closed")
    closed = client.post("/v1/commands", json=_screen("P-N3", "S01"), headers=clinician)
    assert closed.status_code == 422 and "deactivated" in closed.json()["detail"]
    for r in (unknown, missing, closed):
        assert "S02" not in r.text and "Tokyo" not in r.text, r.text
    wide = s.auth("auditor")
    for pid in ("P-N1", "P-N2", "P-N3"):
        assert client.get(f"/v1/patients/{pid}", headers=wide).status_code == 404
    # a trial-wide clinician still gets the trial's active sites named
    r = client.post("/v1/commands", json=_screen("P-N4", "S99"), headers=s.auth("clinician"))
    assert r.status_code == 422 and "S02" in r.json()["detail"]
