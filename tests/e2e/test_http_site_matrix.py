"""The acceptance matrix of issue 17: every route of the app's route table x every role x
trial-wide and site-limited tokens x own-site, other-site and unknown patients, over HTTP, on
SQLite and PostgreSQL.

What it holds, for each cell:

- a role the route does not name is refused (403), as is a site-limited token on a route that
  reads the whole trial (``opt["trial_wide"]``); no other cell answers 403 or 5xx;
- a trial-wide token sees both sites' patients: the other site's patient answers as the own
  site's does;
- a site-limited token gets, for the other site's patient, exactly what it gets for a patient
  that does not exist (status, body with the id swapped, content type): no existence leak;
- no response to a site-limited token carries the other site's patient id or stream id, in its
  body or its headers, unless the request named that id itself (then the answer is the
  not-on-record answer, which echoes what was asked);
- the audit-access log records each audited read with the token's scope.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from http_support import Stack, crs_report, screen_body
from litestar.testing import TestClient

from cart_course.course import stream_id
from cart_course.http.app import route_table
from cart_course.http.common import declared_query

OWN, OTHER, NONE = "P-OWN1", "P-OTHR2", "P-NONE3"
SITE_ROLES = ("service", "clinician", "monitor")
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def matrix_stack(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Stack]:
    url = (
        str(tmp_path / "matrix.sqlite")
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    s = Stack(url)
    try:
        yield s
    finally:
        s.close()


def _screen(pid: str, site: str) -> dict[str, Any]:
    body = screen_body(pid)
    body["payload"] = {**body["payload"], "site": site}
    body["occurred_at"] = T0.isoformat()
    return body


def _apheresis(pid: str) -> dict[str, Any]:
    return {
        "command": "record_apheresis",
        "patient_id": pid,
        "occurred_at": (T0 + dt.timedelta(days=3)).isoformat(),
        "payload": {"apheresis_contraindication": False, "product_id": f"LOT-{pid}"},
    }


class Matrix:
    def __init__(self, s: Stack, client: TestClient[Any]) -> None:
        self.s = s
        self.client = client
        s.tokens.sites.add("S01", "Paris", "Europe/Paris", created_by="admin.tester")
        s.tokens.sites.add("S02", "Tokyo", "Asia/Tokyo", created_by="admin.tester")
        # tokens: every role trial-wide (the stack's), and the site-limited roles at S01
        self.tokens: dict[tuple[str, str], str] = {
            (role, "trial"): token for role, token in s.token.items()
        }
        for role in SITE_ROLES:
            _, self.tokens[(role, "S01")] = s.tokens.add(f"{role}.s01", role, sites=["S01"])
        for pid, site in ((OWN, "S01"), (OTHER, "S02")):
            for body in (_screen(pid, site), _apheresis(pid)):
                r = client.post("/v1/commands", json=body, headers=s.auth("clinician"))
                assert r.status_code == 201, r.text
        self.secret = (OTHER, str(stream_id(OTHER)))
        self.counter = itertools.count(1)

    def headers(self, role: str, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[(role, scope)]}"}

    def request(
        self, method: str, path: str, handler: Any, role: str, scope: str, target: str | None
    ) -> tuple[Any, bool]:
        """Send the route's request for ``target`` (a patient id where the route takes one);
        returns the response and whether the request named a patient."""
        n = next(self.counter)
        names_patient = "{patient_id" in path
        url = path.replace("{patient_id:str}", target or OWN)
        # monitors and data managers record data queries (issue 17), the others a toxicity
        asks = role in ("monitor", "data_manager")
        command = "open_query" if asks else "report_toxicity"
        url = url.replace("{command:str}", command)
        url = url.replace("{product_id:str}", f"LOT-{OWN}")
        url = url.replace("{file_path:path}", "app.css").replace("{path:str}", "swagger")
        if "{token_id:str}" in url:
            info, _ = self.s.tokens.add(f"throwaway.{n}", "monitor")
            url = url.replace("{token_id:str}", info.id)
        if "{site_id:str}" in url:
            site = self.s.tokens.sites.add(f"X{n}", "Closing", "UTC", created_by="t")
            url = url.replace("{site_id:str}", site.id)
        query: dict[str, Any] = {}
        declared = declared_query(handler) if handler.opt.get("roles") is not None else {}
        if "patient_id" in declared and target is not None:
            query["patient_id"] = target
            names_patient = True
        if "max_events" in declared:
            query.update(after=0, max_events=1)
        if "version" in declared:  # as-of: one of version, recorded_at, occurred_at
            query["version"] = 1
        body: Any = None
        payload: dict[str, Any] = (
            {"text": "matrix: please check the source"} if asks else crs_report()
        )
        if method == "POST" and path == "/v1/commands":
            body = {
                "command": command,
                "patient_id": target or OWN,
                "occurred_at": (T0 + dt.timedelta(days=4)).isoformat(),
                "idempotency_key": f"matrix-{n}",
                "payload": payload,
            }
            names_patient = True
        elif method == "POST" and "/commands/" in path:
            body = {
                "occurred_at": (T0 + dt.timedelta(days=4)).isoformat(),
                "idempotency_key": f"matrix-{n}",
                "payload": payload,
            }
        elif method == "POST" and path == "/v1/tokens":
            body = {"actor": f"new.{n}", "role": "monitor"}
        elif method == "POST" and path == "/v1/sites":
            body = {"id": f"N{n}", "name": "New", "time_zone": "Europe/Berlin"}
        elif method == "POST":
            body = {"checkpoint": "not a checkpoint"}
        headers = self.headers(role, scope) if handler.opt.get("roles") is not None else {}
        response = self.client.request(method, url, params=query, json=body, headers=headers)
        return response, names_patient


def _leaks(response: Any, secrets: tuple[str, ...]) -> list[str]:
    text = response.content.decode("utf-8", "replace") + json.dumps(dict(response.headers))
    return [s for s in secrets if s in text]


def _swapped(response: Any, old: str, new: str) -> tuple[int, str, str]:
    return (
        response.status_code,
        response.headers.get("content-type", ""),
        response.content.decode("utf-8", "replace").replace(old, new),
    )


def test_every_route_every_role_every_scope(matrix_stack: Stack) -> None:
    s = matrix_stack
    with TestClient(s.app) as client:
        m = Matrix(s, client)
        handlers = {
            (method, route.path): handler
            for route in s.app.routes
            for handler in getattr(route, "route_handlers", [])
            for method in getattr(handler, "http_methods", ())
        }
        table = route_table(s.app)
        assert len(table) > 40  # every route, from the app's own table
        exercised = set()
        for method, path, roles in table:
            handler = handlers[(method, path)]
            takes_patient = "{patient_id" in path or "patient_id" in (
                declared_query(handler) if roles is not None else {}
            )
            if method == "POST" and path == "/v1/commands":
                takes_patient = True
            targets: list[str | None] = [OWN, OTHER, NONE] if takes_patient else [None]
            for (role, scope), target in itertools.product(m.tokens, targets):
                cell = (method, path, role, scope, target)
                response, named = m.request(method, path, handler, role, scope, target)
                exercised.add((method, path))
                status = response.status_code
                assert status < 500, (cell, response.text[:300])
                forbidden = roles is not None and (
                    role not in roles or (scope != "trial" and handler.opt.get("trial_wide"))
                )
                if forbidden:
                    assert status == 403, (cell, status, response.text[:200])
                    continue
                assert status != 403, (cell, response.text[:300])
                if scope == "trial" and target == OTHER:
                    # a trial-wide token sees the other site's patient as the own site's
                    own, _ = m.request(method, path, handler, role, scope, OWN)
                    assert (status < 400) == (own.status_code < 400), (cell, response.text[:200])
                if scope != "trial":
                    if target == OTHER:
                        # exactly the answer for a patient not on record (ids swapped)
                        unknown, _ = m.request(method, path, handler, role, scope, NONE)
                        assert _swapped(response, OTHER, NONE) == _swapped(unknown, NONE, NONE), (
                            cell
                        )
                        assert status in (404, 412), cell
                    if not (named and target == OTHER):
                        assert _leaks(response, m.secret) == [], (cell, response.text[:300])
                if target == OWN and method == "GET" and roles is not None:
                    assert status == 200, (cell, response.text[:300])
        assert exercised == {(m_, p) for m_, p, _ in table}
        # the audit-access log records the scope of each audited read
        scopes = {e.scope for e in s.tokens.access_log(limit=10_000)}
        assert {"trial", "S01"} <= scopes


def test_site_limited_token_lists_and_feeds_only_its_site(matrix_stack: Stack) -> None:
    s = matrix_stack
    with TestClient(s.app) as client:
        m = Matrix(s, client)
        clinician = m.headers("clinician", "S01")
        monitor = m.headers("monitor", "S01")
        assert [p["patient_id"] for p in client.get("/v1/patients", headers=clinician).json()] == [
            OWN
        ]
        board = client.get("/v1/board", headers=monitor).json()
        assert [(r["patient_id"], r["site"]) for r in board] == [(OWN, "S01")]
        # a monitor trial-wide filters by site; a site-limited one may not ask another site
        wide = m.headers("monitor", "trial")
        assert [r["patient_id"] for r in client.get("/v1/board?site=S02", headers=wide).json()] == [
            OTHER
        ]
        assert client.get("/v1/board?site=S02", headers=monitor).status_code == 403
        assert client.get("/v1/board?site=S99", headers=wide).status_code == 422  # no such site
        assert client.get("/v1/board?site=s-1", headers=wide).status_code in (400, 422)
        counts = client.get("/v1/counts", headers=monitor).json()
        assert sum(counts["state"].values()) == 1
        per_site = client.get("/v1/counts/sites", headers=monitor).json()
        assert list(per_site) == ["S01"] and per_site["S01"]["patients"] == 1
        assert client.get("/v1/counts/sites", headers=wide).json()["S02"]["patients"] == 1
        # the feed reads past the other site's events, and goes on after them
        page = client.get("/v1/events?limit=500", headers=clinician).json()
        assert {e["patient_id"] for e in page["events"]} == {OWN}
        everything = client.get("/v1/events?limit=500", headers=m.headers("clinician", "trial"))
        assert page["next_after"] == everything.json()["next_after"]
        # a write on the other site's patient: as for a patient not on record, nothing recorded
        before = client.get(f"/v1/patients/{OTHER}", headers=wide).json()["version"]
        r = client.post(
            f"/v1/patients/{OTHER}/commands/withdraw",
            json={"occurred_at": (T0 + dt.timedelta(days=5)).isoformat(), "reason": "x"},
            headers=clinician,
        )
        assert r.status_code == 404
        assert client.get(f"/v1/patients/{OTHER}", headers=wide).json()["version"] == before
        # screening the other site's patient id: the id is taken (nothing else said)
        r = client.post("/v1/commands", json=_screen(OTHER, "S01"), headers=clinician)
        assert r.status_code == 409 and r.json()["error"] == "patient_id_taken"
        assert "S02" not in r.text
        # screening at another site than its own: forbidden, nothing recorded
        r = client.post("/v1/commands", json=_screen("P-NEW9", "S02"), headers=clinician)
        assert r.status_code == 403
        assert client.get("/v1/patients/P-NEW9", headers=wide).status_code == 404
        # after a transfer to S02, the S01 token no longer sees the patient; S02's would
        r = client.post(
            f"/v1/patients/{OWN}/commands/transfer_site",
            json={
                "occurred_at": (T0 + dt.timedelta(days=5)).isoformat(),
                "payload": {"site": "S02"},
                "reason": "moved to Tokyo",
            },
            headers=s.auth("clinician"),
        )
        assert r.status_code == 201, r.text
        assert client.get(f"/v1/patients/{OWN}", headers=clinician).status_code == 404
        summary = client.get(f"/v1/patients/{OWN}", headers=wide).json()
        assert summary["site"] == "S02"
        assert summary["site_transfers"][0]["from_site"] == "S01"
        history = client.get(f"/v1/patients/{OWN}/history", headers=wide).json()
        assert history[-1]["type"] == "SiteTransferred"
        assert history[-1]["reason"] == "moved to Tokyo"


def test_who_am_i_names_the_tokens_sites_and_a_single_sites_time_zone(
    matrix_stack: Stack,
) -> None:
    s = matrix_stack
    with TestClient(s.app) as client:
        m = Matrix(s, client)
        # trial-wide: no sites, the dashboard writes times in the browser's zone
        wide = client.get("/v1/me", headers=m.headers("monitor", "trial")).json()
        assert wide["sites"] is None and wide["site_time_zone"] is None
        # one site: its id and its time zone (the dashboard writes times in it)
        one = client.get("/v1/me", headers=m.headers("monitor", "S01")).json()
        assert one["sites"] == ["S01"] and one["site_time_zone"] == "Europe/Paris"
        assert one["role"] == "monitor" and one["may_view_board"] is True
        # two sites: both named, no single time zone
        _, both = s.tokens.add("monitor.s0102", "monitor", sites=["S01", "S02"])
        two = client.get("/v1/me", headers={"Authorization": f"Bearer {both}"}).json()
        assert sorted(two["sites"]) == ["S01", "S02"] and two["site_time_zone"] is None
