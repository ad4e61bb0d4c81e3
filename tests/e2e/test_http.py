"""The HTTP service in-process over real stores: commands, queries, errors, tokens, feed, SSE."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import Stack, screen_body, stack
from litestar.testing import TestClient

from cart_course.http.app import route_table
from cart_course.http.params import IF_MATCH_PATTERN, MAX_POSITION, PATIENT_ID_PATTERN
from cart_course.protocol.states import State
from cart_course.protocol.versions import VERSIONS
from cart_course.schemas import SCHEMAS
from cart_course.tokens import ROLES


@pytest.fixture(params=["memory", "sqlite"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, TestClient]]:
    url = "memory:" if request.param == "memory" else str(tmp_path / "http.sqlite")
    with stack(url, demo=4) as s, TestClient(s.app) as client:
        yield s, client


def test_command_is_recorded_with_the_token_actor_not_the_body_actor(api) -> None:
    s, client = api
    body = screen_body("H-1", actor={"id": "mallory", "role": "clinician"})
    r = client.post("/v1/commands", json=body, headers=s.auth("clinician"))
    assert r.status_code == 201, r.text
    assert r.json()["to_state"] == "screened"
    assert r.headers["etag"] == '"2"'
    history = client.get("/v1/patients/H-1/history", headers=s.auth("auditor")).json()
    screened = history[-1]
    assert (screened["actor"], screened["role"]) == ("clinician.tester", "clinician")
    assert "mallory" not in json.dumps(history)


def test_idempotency_key_header_records_once(api) -> None:
    s, client = api
    headers = {**s.auth("service"), "Idempotency-Key": "ehr-42"}
    first = client.post("/v1/commands", json=screen_body("H-2"), headers=headers)
    again = client.post("/v1/commands", json=screen_body("H-2"), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["status"] == "duplicate"
    assert again.json()["version"] == first.json()["version"]
    assert len(client.get("/v1/patients/H-2/history", headers=s.auth("auditor")).json()) == 2
    other = screen_body("H-2", occurred_at="2026-01-06T09:00:00+00:00")
    clash = client.post("/v1/commands", json=other, headers=headers)
    assert clash.status_code == 422
    assert clash.json()["error"] == "idempotency_conflict"


def test_if_match_stale_version_is_412_and_nothing_recorded(api) -> None:
    s, client = api
    client.post("/v1/commands", json=screen_body("H-3"), headers=s.auth("clinician"))
    body = {
        "command": "record_apheresis",
        "patient_id": "H-3",
        "occurred_at": "2026-01-08T10:00:00+00:00",
        "payload": {"apheresis_contraindication": False, "product_id": "LOT-H-3"},
    }
    stale = client.post("/v1/commands", json=body, headers={**s.auth("service"), "If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.headers["content-type"].startswith("application/problem+json")
    assert stale.json()["actual_version"] == 2
    ok = client.post("/v1/commands", json=body, headers={**s.auth("service"), "If-Match": '"2"'})
    assert ok.status_code == 201, ok.text
    bad = client.post("/v1/commands", json=body, headers={**s.auth("service"), "If-Match": "x"})
    assert bad.status_code == 422 and bad.json()["field"] == "If-Match"


def test_refused_move_is_409_problem_with_failed_rules_and_allowed_moves(api) -> None:
    s, client = api
    client.post("/v1/commands", json=screen_body("H-4"), headers=s.auth("clinician"))
    r = client.post(
        "/v1/patients/H-4/commands/give_infusion",
        json={
            "occurred_at": "2026-01-09T10:00:00+00:00",
            "payload": {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
        },
        headers=s.auth("clinician"),
    )
    assert r.status_code == 409, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert problem["type"].startswith("urn:cart-course:problem:")
    assert problem["status"] == 409 and problem["title"]
    assert "record_apheresis" in problem["allowed_moves"]
    assert problem["failed_rules"] or problem["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "fly", "patient_id": "P", "occurred_at": "2026-01-01T00:00:00Z"}, "command"),
        ({"command": "screen", "patient_id": "P"}, "occurred_at"),
        (
            {"command": "screen", "patient_id": "bad id!", "occurred_at": "2026-01-01T00:00Z"},
            "patient_id",
        ),
        (
            {"command": "screen", "patient_id": "P", "occurred_at": "2026-01-01T00:00:00"},
            "occurred_at",
        ),
        (
            {
                "command": "screen",
                "patient_id": "P",
                "occurred_at": "2026-01-01T00:00:00Z",
                "colour": 1,
            },
            "colour",
        ),
        ([1, 2], "(body)"),
    ],
)
def test_bad_input_is_422_naming_the_field(api, body: object, field: str) -> None:
    s, client = api
    r = client.post("/v1/commands", json=body, headers=s.auth("clinician"))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_malformed_json_is_400_problem(api) -> None:
    s, client = api
    r = client.post(
        "/v1/commands",
        content=b'{"command": ',
        headers={**s.auth("clinician"), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_body"


def test_patient_state_moves_and_404(api) -> None:
    s, client = api
    r = client.get("/v1/patients/P-0001", headers=s.auth("monitor"))
    assert r.status_code == 200
    assert r.json()["state"] and "allowed_moves" in r.json()
    moves = client.get("/v1/patients/P-0001/moves", headers=s.auth("clinician")).json()
    assert moves["allowed_moves"] == r.json()["allowed_moves"]
    missing = client.get("/v1/patients/NOPE/moves", headers=s.auth("clinician"))
    assert missing.status_code == 404 and missing.json()["error"] == "patient_not_found"


def test_feed_pages_by_position_without_gaps_or_repeats(api) -> None:
    s, client = api
    seen: list[int] = []
    after = 0
    while True:
        page = client.get(f"/v1/events?after={after}&limit=7", headers=s.auth("monitor")).json()
        if not page["events"]:
            break
        seen += [e["position"] for e in page["events"]]
        after = page["next_after"]
    assert seen == list(range(1, page["last_position"] + 1))
    assert all(
        e["patient_id"]
        for e in client.get("/v1/events", headers=s.auth("monitor")).json()["events"]
    )


def test_sse_stream_delivers_events_after_a_position(api) -> None:
    s, client = api
    with client.stream(
        "GET", "/v1/events/stream?after=3&max_events=2", headers=s.auth("monitor")
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    ids = [line.split(": ")[1] for line in text.splitlines() if line.startswith("id: ")]
    assert ids == ["4", "5"]
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert data[0]["position"] == 4 and data[0]["patient_id"]


def test_tokens_managed_over_http_and_revocation_is_immediate(api) -> None:
    s, client = api
    made = client.post(
        "/v1/tokens", json={"actor": "nurse.kim", "role": "clinician"}, headers=s.auth("admin")
    )
    assert made.status_code == 201
    token = made.json()["token"]
    mine = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/patients", headers=mine).status_code == 200
    listed = client.get("/v1/tokens", headers=s.auth("admin")).json()
    assert token not in json.dumps(listed)  # only hashes are kept
    gone = client.delete(f"/v1/tokens/{made.json()['info']['id']}", headers=s.auth("admin"))
    assert gone.status_code == 200 and gone.json()["revoked_at"]
    assert client.get("/v1/patients", headers=mine).status_code == 401
    bad_role = client.post(
        "/v1/tokens", json={"actor": "x", "role": "king"}, headers=s.auth("admin")
    )
    assert bad_role.status_code == 422 and bad_role.json()["field"] == "role"


def test_reads_of_audit_endpoints_are_logged(api) -> None:
    s, client = api
    client.get("/v1/patients/P-0002/history", headers=s.auth("auditor"))
    client.get("/v1/patients/P-0001", headers=s.auth("auditor"))  # not an audit read
    log = client.get("/v1/audit/access-log", headers=s.auth("auditor")).json()
    paths = [(e["actor"], e["path"], e["status"]) for e in log]
    assert ("auditor.tester", "/v1/patients/P-0002/history", 200) in paths
    assert not any(p == "/v1/patients/P-0001" for _, p, _ in paths)


def test_reads_of_the_event_feed_and_its_stream_are_logged(api) -> None:
    s, client = api
    client.get("/v1/events?after=2&limit=3", headers=s.auth("monitor"))
    with client.stream(
        "GET", "/v1/events/stream?after=3&max_events=1", headers=s.auth("monitor")
    ) as r:
        assert r.status_code == 200
        for _ in r.iter_lines():
            pass
    log = client.get("/v1/audit/access-log", headers=s.auth("auditor")).json()
    seen = {(e["actor"], e["path"], e["query"], e["status"]) for e in log}
    assert ("monitor.tester", "/v1/events", "after=2&limit=3", 200) in seen
    assert ("monitor.tester", "/v1/events/stream", "after=3&max_events=1", 200) in seen


def test_health_ready_metrics(api) -> None:
    s, client = api
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/ready").json() == {"status": "ready"}  # public: no store, no count
    client.get("/v1/patients", headers=s.auth("monitor"))
    text = client.get("/metrics", headers=s.auth("monitor")).text
    assert 'route="/v1/patients",status="200"' in text
    position = client.get("/v1/events?limit=1", headers=s.auth("monitor")).json()["last_position"]
    assert position > 0 and f"cart_course_log_position {position}" in text
    assert "cart_course_store_info{store=" in text


def test_openapi_document_is_3_1_and_covers_every_route(api) -> None:
    s, client = api
    doc = client.get("/schema/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for method, path, roles in route_table(s.app):
        if roles is None:
            continue
        path = path.replace(":str", "")
        if path == "/v1/patients/{patient_id}/commands/{command}":
            # one path per command, each with its command's body
            for command in SCHEMAS:
                item = doc["paths"][path.replace("{command}", command)]
                body = item[method.lower()]["requestBody"]["content"]["application/json"]
                assert body["schema"] == {"$ref": f"#/components/schemas/PatientCommand.{command}"}
            assert path not in doc["paths"]
            continue
        assert method.lower() in doc["paths"][path], path


def test_openapi_command_body_is_one_of_the_contract_schemas(api) -> None:
    """POST /v1/commands: a oneOf discriminated by ``command``, one component per command, each
    the contract's JSON Schema (``schemas.SCHEMAS``) with its definitions in ``components``."""
    _, client = api
    doc = client.get("/schema/openapi.json").json()
    body = doc["paths"]["/v1/commands"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert schema["discriminator"]["propertyName"] == "command"
    assert set(schema["discriminator"]["mapping"]) == set(SCHEMAS)
    components = doc["components"]["schemas"]
    for name, original in SCHEMAS.items():
        assert {"$ref": f"#/components/schemas/Command.{name}"} in schema["oneOf"]
        mine = components[f"Command.{name}"]
        assert mine["properties"]["command"] == {"const": name}
        assert mine["properties"]["payload"] == json.loads(
            json.dumps(original["properties"]["payload"]).replace(
                '"#/$defs/', '"#/components/schemas/CommandDefs.'
            )
        )
        assert "actor" not in mine["required"]  # the token's actor is recorded
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)))
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in components, ref


def test_openapi_parameters_carry_the_servers_constraints(api) -> None:
    _, client = api
    doc = client.get("/schema/openapi.json").json()

    def parameter(path: str, name: str) -> dict:
        item = doc["paths"][path]
        operation = item.get("get") or item.get("post")
        return next(p for p in operation["parameters"] if p["name"] == name)["schema"]

    assert parameter("/v1/patients/{patient_id}", "patient_id")["pattern"] == PATIENT_ID_PATTERN
    assert parameter("/v1/board", "state")["enum"] == [s.value for s in State]
    assert parameter("/v1/counts", "wait_for") == {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_POSITION,
        "description": "Answer once the views reached this position",
    }
    assert parameter("/v1/events", "after")["maximum"] == MAX_POSITION
    assert parameter("/v1/events/stream", "Last-Event-ID")["pattern"] == "^[0-9]{1,18}$"
    assert len(str(MAX_POSITION)) == 18
    assert parameter("/v1/audit/conformance", "protocol")["enum"] == list(VERSIONS)
    assert parameter("/v1/commands", "If-Match")["pattern"] == IF_MATCH_PATTERN
    assert doc["components"]["schemas"]["NewToken"]["properties"]["role"] == {"enum": list(ROLES)}


# -- access: 401 and 403 for every route of the app's own route table ---------------------------

with stack() as _s:
    ROUTES = route_table(_s.app)
PUBLIC = {"/health", "/ready", "/", "/static", "/schema", "/cohort"}
SAMPLE = {"patient_id": "P-0001", "token_id": "nope", "command": "screen"}
AUDIT_ROUTES = {
    "/v1/patients/{patient_id:str}/as-of",
    "/v1/patients/{patient_id:str}/conformance",
    "/v1/audit/conformance",
    "/v1/audit/verify",
    "/v1/exports/events.jsonl",
    "/v1/exports/timeline.csv",
    "/v1/patients/{patient_id:str}/fhir",
    "/v1/patients/{patient_id:str}/report.html",
}
VIEW_ROUTES = {
    "/v1/board",
    "/v1/board.csv",
    "/v1/watchlist",
    "/v1/counts",
    "/v1/deviations",
}
#: Routes every valid token may use (who am I): still 401 without a token.
EVERY_ROLE = {"/v1/me"}


def _url(path: str) -> str:
    for name, value in SAMPLE.items():
        path = path.replace("{" + name + ":str}", value)
    if path.startswith("/static"):
        path = "/static/app.js"
    return path


def test_every_route_is_protected_or_deliberately_public() -> None:
    public = {path for _, path, roles in ROUTES if roles is None}
    assert public <= PUBLIC | {p for p in public if p.startswith(("/schema", "/static"))}
    protected = {path for _, path, roles in ROUTES if roles}
    assert len(protected) >= 13
    assert protected >= AUDIT_ROUTES | VIEW_ROUTES
    assert all(roles == ("auditor",) for _, path, roles in ROUTES if path in AUDIT_ROUTES)


@pytest.mark.parametrize(
    ("method", "path", "roles"), [r for r in ROUTES if r[2]], ids=lambda v: str(v)
)
def test_unauthenticated_401_and_wrong_role_403(
    method: str, path: str, roles: tuple[str, ...]
) -> None:
    with stack(demo=1) as s, TestClient(s.app) as client:
        url = _url(path)
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
            r = client.request(method, url, headers=headers, json={})
            assert r.status_code == 401, (url, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = [role for role in s.token if role not in roles]
        assert wrong or path in EVERY_ROLE, f"{path}: every role may use it"
        for role in wrong:
            r = client.request(method, url, headers=s.auth(role), json={})
            assert r.status_code == 403, (url, role, r.text)
            assert r.json()["error"] == "forbidden"
        right = client.request(
            method, url, headers=s.auth(roles[0]), json={}, params={"max_events": 1, "after": 0}
        )
        assert right.status_code not in (401, 403), (url, right.text)


# -- audit and views over HTTP ------------------------------------------------------------------


def test_audit_endpoints_answer_and_exports_stream(api) -> None:
    s, client = api
    a = s.auth("auditor")
    assert client.get("/v1/audit/verify", headers=a).json()["ok"] is True
    as_of = client.get("/v1/patients/P-0001/as-of?version=2", headers=a).json()
    assert as_of["versions_included"] == [1, 2]
    two = client.get(
        "/v1/patients/P-0001/as-of?version=2&occurred_at=2026-01-01T00:00:00Z", headers=a
    )
    assert two.status_code == 422
    lines = client.get("/v1/exports/events.jsonl?patient_id=P-0001", headers=a).text.splitlines()
    history = client.get("/v1/patients/P-0001/history", headers=a).json()
    assert [json.loads(x)["version"] for x in lines] == [e["version"] for e in history]
    csv_text = client.get("/v1/exports/timeline.csv", headers=a)
    assert csv_text.headers["content-type"].startswith("text/csv")
    bundle = client.get("/v1/patients/P-0001/fhir", headers=a).json()
    assert bundle["resourceType"] == "Bundle"
    report = client.get("/v1/patients/P-0001/report.html", headers=a)
    assert report.headers["content-type"].startswith("text/html") and "P-0001" in report.text
    missing = client.get("/v1/exports/events.jsonl?patient_id=NOPE", headers=a)
    assert missing.status_code == 404


def test_board_sees_a_write_just_made(api) -> None:
    s, client = api
    before = client.get("/v1/board", headers=s.auth("monitor")).json()
    r = client.post("/v1/commands", json=screen_body("H-9"), headers=s.auth("clinician"))
    assert r.status_code == 201
    after = client.get("/v1/board?state=screened", headers=s.auth("monitor")).json()
    assert "H-9" in [row["patient_id"] for row in after]
    assert "H-9" not in [row["patient_id"] for row in before]
    counts = client.get("/v1/counts", headers=s.auth("monitor")).json()
    assert counts
    assert isinstance(client.get("/v1/watchlist", headers=s.auth("monitor")).json(), list)


def test_token_revoked_by_another_process_stops_working_within_the_cache_window(
    tmp_path: Path,
) -> None:
    """The server remembers a verified token briefly; a revocation made elsewhere (the CLI,
    another worker) takes effect once that window has passed, and a token issued elsewhere
    works at once."""
    import time

    from cart_course.storage import parse_store_url
    from cart_course.tokens import open_token_store

    url = str(tmp_path / "tokens.sqlite")
    with stack(url, demo=1) as s, TestClient(s.app) as client:
        s.app.state.tokens.cache_seconds = 0.3
        cli = open_token_store(parse_store_url(url))  # what 'cart-course tokens ...' opens
        try:
            info, token = cli.add("nurse.lee", "monitor")
            mine = {"Authorization": f"Bearer {token}"}
            assert client.get("/v1/patients", headers=mine).status_code == 200
            cli.revoke(info.id, revoked_by="admin.cli")
            time.sleep(0.35)
            assert client.get("/v1/patients", headers=mine).status_code == 401
        finally:
            cli.close()
