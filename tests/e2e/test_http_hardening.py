"""Hardening of the HTTP layer: bad input is a 4xx problem that says what was wrong and what is
allowed, and changes nothing (never a 500); headers are UTF-8 text; audit reads are logged
before they are served; a revoked token's live stream ends; HEAD, If-Match, 415; the OpenAPI
document says what the routes do."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, screen_body, stack
from litestar import Litestar, get
from litestar.testing import TestClient

from cart_course.errors import ForbiddenError, PatientNotFoundError, StoreError
from cart_course.http import common, patients
from cart_course.http.problems import EXCEPTION_HANDLERS, MAX_BODY_BYTES
from cart_course.protocol.states import State as CourseState
from cart_course.tokens import open_token_store

JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=["memory", "sqlite"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, TestClient]]:
    url = "memory:" if request.param == "memory" else str(tmp_path / "http.sqlite")
    with stack(url, demo=2) as s, TestClient(s.app) as client:
        yield s, client


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[tuple[Stack, TestClient, Path]]:
    path = tmp_path / "http.sqlite"
    with stack(str(path), demo=1) as s, TestClient(s.app) as client:
        yield s, client, path


def history(s: Stack, client: TestClient, patient_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/patients/{patient_id}/history", headers=s.auth("auditor"))
    return r.json() if r.status_code == 200 else []  # type: ignore[no-any-return]


def assert_problem(r: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"] and body["error"]
    if field is not None:
        assert body.get("field") == field, body
    return body


# -- 1. header text is UTF-8 ---------------------------------------------------------------------


def test_idempotency_key_header_is_read_as_utf8(api) -> None:
    s, client = api
    key = "tox-fatigue-é"
    header = {**s.auth("clinician"), "Idempotency-Key": key.encode()}
    first = client.post("/v1/commands", json=screen_body("U-1"), headers=header)
    assert first.status_code == 201, first.text
    assert first.json()["idempotency_key"] == key
    in_body = client.post(
        "/v1/commands", json=screen_body("U-1", idempotency_key=key), headers=s.auth("clinician")
    )
    assert in_body.status_code == 200 and in_body.json()["status"] == "duplicate", in_body.text
    both = client.post("/v1/commands", json=screen_body("U-1", idempotency_key=key), headers=header)
    assert both.status_code == 200, both.text
    assert len(history(s, client, "U-1")) == 2  # registered + screened, once


def raw_request(
    s: Stack, method: str, path: str, headers: dict[str, bytes], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app, with header bytes exactly as given (the test
    client re-encodes header values that are not UTF-8)."""

    async def run() -> tuple[int, dict[str, str], bytes]:
        out: list[Any] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            out.append(message)

        route, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": route,
            "raw_path": route.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v) for k, v in headers.items()],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        await s.app(scope, receive, send)  # type: ignore[arg-type]
        start = next(m for m in out if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content

    return asyncio.run(run())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("POST", "/v1/commands", "Idempotency-Key"),
        ("POST", "/v1/commands", "If-Match"),
        ("POST", "/v1/patients/U-2/commands/screen", "Idempotency-Key"),
        ("GET", "/v1/events/stream?max_events=1", "Last-Event-ID"),
    ],
)
@pytest.mark.parametrize("value", [b"key-\xff", b"\xb2"], ids=["xff", "latin1-superscript-2"])
def test_header_that_is_not_utf8_is_400_naming_it(
    method: str, path: str, name: str, value: bytes
) -> None:
    """``b"\\xb2"`` is how a Latin-1 client (Python's http.client) sends ``If-Match: ²``."""
    with stack(demo=1) as s:
        token = s.token["clinician"].encode()
        body = screen_body("U-2")
        if "/commands/" in path:
            body = {k: v for k, v in body.items() if k not in ("command", "patient_id")}
        status, headers, content = raw_request(
            s,
            method,
            path,
            {
                "Authorization": b"Bearer " + token,
                "Content-Type": b"application/json",
                name: value,
            },
            json.dumps(body).encode() if method == "POST" else b"",
        )
        assert status == 400, content
        assert headers["content-type"].startswith("application/problem+json")
        problem = json.loads(content)
        assert problem["field"] == name and "UTF-8" in problem["detail"]
        with pytest.raises(PatientNotFoundError):
            s.service.record("U-2")


# -- 2. no 500s: body decoding, If-Match, Last-Event-ID ------------------------------------------

BODY_ROUTES = ["/v1/commands", "/v1/patients/P-0001/commands/screen", "/v1/tokens"]


def _role(path: str) -> str:
    return "admin" if path == "/v1/tokens" else "clinician"


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_body_that_is_not_utf8_is_400(api, path: str) -> None:
    s, client = api
    content = b'{"command": "screen", "patient_id": "U-3", "occurred_at": "\xff"}'
    r = client.post(path, content=content, headers={**s.auth(_role(path)), **JSON})
    body = assert_problem(r, 400, "(body)")
    assert "UTF-8" in body["detail"]


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize(
    "content",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"payload":' * 40 + b"{}" + b"}" * 40,  # decodes, but deeper than allowed
    ],
    ids=["arrays-10000", "objects-5000", "objects-41"],
)
def test_deeply_nested_body_is_400(api, path: str, content: bytes) -> None:
    s, client = api
    r = client.post(path, content=content, headers={**s.auth(_role(path)), **JSON})
    body = assert_problem(r, 400, "(body)")
    assert "nested too deeply" in body["detail"] and str(common.MAX_JSON_DEPTH) in body["detail"]


@pytest.mark.parametrize(
    "value",
    ["²".encode(), b"9" * 5000, b'"' + b"9" * 19 + b'"', b"-1", b"1.0", b"", b'"1'],
    ids=["unicode-digit", "5000-digits", "19-digits", "negative", "float", "empty", "unbalanced"],
)
def test_malformed_if_match_is_422(api, value: bytes) -> None:
    s, client = api
    r = client.post(
        "/v1/commands", json=screen_body("U-4"), headers={**s.auth("clinician"), "If-Match": value}
    )
    body = assert_problem(r, 422, "If-Match")
    assert len(body["detail"]) < 300  # names the value, does not echo 5000 digits
    assert history(s, client, "U-4") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "value",
    ["²".encode(), b"9" * 5000, b"99999999999999999999999", b"nope", b"", b"-3"],
    ids=["unicode-digit", "5000-digits", "overflow", "text", "empty", "negative"],
)
def test_bad_last_event_id_is_400_before_the_stream_starts(api, value: bytes) -> None:
    s, client = api
    r = client.get(
        "/v1/events/stream?max_events=1",
        headers={**s.auth("monitor"), "Last-Event-ID": value},
    )
    assert_problem(r, 400, "Last-Event-ID")


def test_last_event_id_resumes_after_that_position(api) -> None:
    s, client = api
    with client.stream(
        "GET", "/v1/events/stream?max_events=2", headers={**s.auth("monitor"), "Last-Event-ID": "3"}
    ) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert [x[4:] for x in text.splitlines() if x.startswith("id: ")] == ["4", "5"]


# -- 3. the audit-access log is written before the read is served --------------------------------


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock
    return other


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "url", ["/v1/audit/verify", "/v1/exports/events.jsonl", "/v1/patients/P-0001/history"]
)
def test_audit_read_is_refused_when_the_access_log_cannot_be_written(sqlite_api, url) -> None:
    s, client, path = sqlite_api
    s.tokens.log_timeout = 0.3
    auditor = s.auth("auditor")
    before = len(s.tokens.access_log(limit=1000))
    other = _hold_write_lock(path)
    try:
        started = time.monotonic()
        r = client.get(url, headers=auditor)
        assert time.monotonic() - started < 10
    finally:
        other.rollback()
        other.close()
    body = assert_problem(r, 503)
    assert body["error"] == "access_log_unavailable" and "not served" in body["detail"]
    assert "P-0001" not in r.text.replace(url, "")  # none of the read was sent
    assert len(s.tokens.access_log(limit=1000)) == before
    ok = client.get(url, headers=auditor)
    assert ok.status_code == 200
    log = s.tokens.access_log(limit=1000)
    assert [(e.path, e.status) for e in log[before:]] == [(url.split("?")[0], 200)]


@pytest.mark.timeout(120)
def test_authentication_does_not_wait_behind_an_access_log_write(tmp_path: Path) -> None:
    from cart_course.storage import parse_store_url

    path = tmp_path / "tokens.sqlite"
    store = open_token_store(parse_store_url(str(path)))
    try:
        store.log_timeout = 2.0
        _, token = store.add("nurse.lee", "monitor")
        other = _hold_write_lock(path)
        outcome: list[BaseException | None] = []

        def write() -> None:
            try:
                store.log_access(
                    actor="a", role="auditor", method="GET", path="/x", query="", status=200
                )
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.2)  # the writer now waits for SQLite's write lock
        started = time.monotonic()
        info = store.authenticate(token)
        waited = time.monotonic() - started
        writer.join(timeout=60)
        other.rollback()
        other.close()
        assert info is not None and info.actor == "nurse.lee"
        assert waited < 0.5, f"authentication waited {waited:.2f}s behind the access-log write"
        assert len(outcome) == 1 and isinstance(outcome[0], StoreError)
        assert "access log" in str(outcome[0]) and "locked" in str(outcome[0])
    finally:
        store.close()


# -- 4. a revoked token's live stream ends -------------------------------------------------------


@pytest.mark.timeout(60)
def test_revoked_token_stops_receiving_the_live_stream(api, monkeypatch) -> None:
    s, client = api
    monkeypatch.setattr(patients, "SSE_RECHECK_SECONDS", 0.2)
    monkeypatch.setattr(patients, "SSE_POLL_SECONDS", 0.05)
    info, token = s.tokens.add("watcher", "monitor")
    timer = threading.Timer(0.5, lambda: s.tokens.revoke(info.id, revoked_by="admin"))
    timer.start()
    try:
        with client.stream(
            "GET", "/v1/events/stream", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status_code == 200
            text = "".join(r.iter_text())  # ends: the stream closes once the token is revoked
    finally:
        timer.cancel()
    assert "event: end" in text
    end = json.loads(next(x[6:] for x in text.splitlines() if x.startswith("data: ")))
    assert end["error"] == "unauthenticated" and "revoked" in end["detail"]


# -- 5. a role that may not sign is 403 ----------------------------------------------------------


def test_role_that_may_not_sign_is_403(api) -> None:
    s, client = api
    body = {
        "command": "sign",
        "patient_id": "P-0001",
        "occurred_at": "2026-02-01T09:00:00+00:00",
        "payload": {},
    }
    r = client.post("/v1/commands", json=body, headers=s.auth("service"))
    problem = assert_problem(r, 403)
    assert problem["error"] == "forbidden"


def test_forbidden_error_of_the_service_is_403_with_its_message() -> None:
    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise ForbiddenError("a service may not sign")

    with TestClient(Litestar([boom], exception_handlers=EXCEPTION_HANDLERS)) as client:
        r = client.get("/boom")
    problem = assert_problem(r, 403)
    assert problem["error"] == "forbidden" and problem["detail"] == "a service may not sign"


# -- 6. the per-patient command body is strict --------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"patient_id": "P-0002"}, "patient_id"),
        ({"command": "withdraw"}, "command"),
        ({"bogus": 1}, "bogus"),
        ({"expected_version": "99"}, "expected_version"),
        ({"expected_version": 17.0}, "expected_version"),
        ({"expected_version": True}, "expected_version"),
        ({"expected_version": -1}, "expected_version"),
    ],
)
def test_patient_command_body_is_strict(api, extra: dict[str, Any], field: str) -> None:
    s, client = api
    body = {k: v for k, v in screen_body("U-6").items() if k not in ("command", "patient_id")}
    r = client.post(
        "/v1/patients/U-6/commands/screen", json={**body, **extra}, headers=s.auth("clinician")
    )
    problem = assert_problem(r, 422, field)
    if field != "expected_version":
        assert "unknown key" in problem["detail"] and "occurred_at" in problem["detail"]
    assert history(s, client, "U-6") == []
    ok = client.post("/v1/patients/U-6/commands/screen", json=body, headers=s.auth("clinician"))
    assert ok.status_code == 201, ok.text


# -- 7. filters and identifiers ------------------------------------------------------------------


@pytest.mark.parametrize("query", ["state=nonsense", "state", "state=", "state=%FF"])
def test_board_state_filter_must_be_a_state(api, query: str) -> None:
    s, client = api
    r = client.get(f"/v1/board?{query}", headers=s.auth("monitor"))
    problem = assert_problem(r, 422, "query.state")
    assert all(state.value in problem["detail"] for state in CourseState)
    assert "state_filter" not in r.text
    assert client.get("/v1/board?state=screened", headers=s.auth("monitor")).status_code == 200


def test_deviations_of_an_unknown_patient_is_404_like_the_exports(api) -> None:
    s, client = api
    r = client.get("/v1/deviations?patient_id=nope", headers=s.auth("monitor"))
    assert_problem(r, 404)
    assert r.json()["error"] == "patient_not_found"
    bad = client.get("/v1/deviations?patient_id=a%20b", headers=s.auth("monitor"))
    assert_problem(bad, 422, "query.patient_id")
    known = client.get("/v1/deviations?patient_id=P-0001", headers=s.auth("monitor"))
    assert known.status_code == 200


@pytest.mark.parametrize("suffix", ["", "/moves", "/history"])
def test_malformed_patient_id_is_422_and_unknown_is_404(api, suffix: str) -> None:
    s, client = api
    bad = client.get(f"/v1/patients/a%20b{suffix}", headers=s.auth("auditor"))
    problem = assert_problem(bad, 422, "patient_id")
    assert "not a patient identifier" in problem["detail"]
    missing = client.get(f"/v1/patients/NOPE{suffix}", headers=s.auth("auditor"))
    assert_problem(missing, 404)


# -- 8. messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_empty_body_says_it_is_empty(api, path: str) -> None:
    s, client = api
    r = client.post(path, content=b"", headers={**s.auth(_role(path)), **JSON})
    problem = assert_problem(r, 422, "(body)")
    assert "empty" in problem["detail"] and "JSON object" in problem["detail"]


def test_405_lists_the_allowed_methods(api) -> None:
    s, client = api
    r = client.put("/v1/patients", headers=s.auth("clinician"))
    problem = assert_problem(r, 405)
    assert "GET" in problem["detail"] and "PUT" in problem["detail"]
    assert "GET" in r.headers["allow"] and "HEAD" in r.headers["allow"]


def test_404_of_an_unknown_route_says_so(api) -> None:
    _, client = api
    problem = assert_problem(client.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in problem["detail"] and "/schema" in problem["detail"]


def test_413_states_the_size_limit(api) -> None:
    s, client = api
    r = client.post(
        "/v1/commands", content=b" " * (MAX_BODY_BYTES + 1), headers={**s.auth("clinician"), **JSON}
    )
    problem = assert_problem(r, 413)
    assert str(MAX_BODY_BYTES) in problem["detail"]


def test_500_says_not_recorded_only_for_writes(api, monkeypatch) -> None:
    s, client = api

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(s.service, "patients", fail)
    monkeypatch.setattr(s.service, "execute", fail)
    read = assert_problem(client.get("/v1/patients", headers=s.auth("clinician")), 500)
    assert "not recorded" not in read["detail"]
    write = client.post("/v1/commands", json=screen_body("U-8"), headers=s.auth("clinician"))
    assert "not recorded" in assert_problem(write, 500)["detail"]


# -- 9. HEAD, If-Match, 415 ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_head_on_health_and_ready(api, path: str) -> None:
    _, client = api
    r = client.head(path)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == len(client.get(path).content)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/v1/patients", "monitor"),
        ("/v1/patients/P-0001", "monitor"),
        ("/v1/exports/timeline.csv", "auditor"),
        ("/v1/events/stream", "monitor"),
    ],
)
def test_head_on_get_routes_needs_the_token_and_sends_no_body(api, path: str, role: str) -> None:
    s, client = api
    assert client.head(path).status_code == 401
    r = client.head(path, headers=s.auth(role))
    assert r.status_code == 200 and r.content == b""


def test_head_of_an_audit_route_is_logged_as_head(api) -> None:
    s, client = api
    assert client.head("/v1/audit/verify", headers=s.auth("auditor")).status_code == 200
    log = s.tokens.access_log(limit=1000)
    assert (log[-1].method, log[-1].path) == ("HEAD", "/v1/audit/verify")


def _apheresis(patient_id: str) -> dict[str, Any]:
    return {
        "command": "record_apheresis",
        "patient_id": patient_id,
        "occurred_at": "2026-01-08T10:00:00+00:00",
        "payload": {"apheresis_contraindication": False, "product_id": f"LOT-{patient_id}"},
    }


def test_weak_if_match_never_matches(api) -> None:
    s, client = api
    client.post("/v1/commands", json=screen_body("U-9"), headers=s.auth("clinician"))
    weak = client.post(
        "/v1/commands", json=_apheresis("U-9"), headers={**s.auth("service"), "If-Match": 'W/"2"'}
    )
    problem = assert_problem(weak, 412, "If-Match")
    assert "weak" in problem["detail"]
    assert len(history(s, client, "U-9")) == 2
    strong = client.post(
        "/v1/commands", json=_apheresis("U-9"), headers={**s.auth("service"), "If-Match": '"2"'}
    )
    assert strong.status_code == 201, strong.text


def test_if_match_star_matches_an_existing_patient_only(api) -> None:
    s, client = api
    star = {**s.auth("clinician"), "If-Match": "*"}
    new = client.post("/v1/commands", json=screen_body("U-10"), headers=star)
    assert_problem(new, 412, "If-Match")
    assert history(s, client, "U-10") == []
    client.post("/v1/commands", json=screen_body("U-10"), headers=s.auth("clinician"))
    ok = client.post("/v1/commands", json=_apheresis("U-10"), headers=star)
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None, "application/json; charset=latin-1"],
)
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_body_not_sent_as_json_is_415(api, path: str, content_type: str | None) -> None:
    s, client = api
    headers = {**s.auth(_role(path))}
    if content_type:
        headers["Content-Type"] = content_type
    content = json.dumps(screen_body("U-11")).encode()
    problem = assert_problem(client.post(path, content=content, headers=headers), 415)
    assert "application/json" in problem["detail"]
    assert history(s, client, "U-11") == []


def test_json_with_utf8_charset_is_accepted(api) -> None:
    s, client = api
    headers = {**s.auth("clinician"), "Content-Type": "application/json; charset=UTF-8"}
    content = json.dumps(screen_body("U-12")).encode()
    assert client.post("/v1/commands", content=content, headers=headers).status_code == 201


# -- 10. the OpenAPI document --------------------------------------------------------------------


def test_openapi_documents_duplicates_sse_public_routes_and_location(api) -> None:
    _, client = api
    doc = client.get("/schema/openapi.json").json()
    for path in ("/v1/commands", "/v1/patients/{patient_id}/commands/screen"):
        responses = doc["paths"][path]["post"]["responses"]
        assert "duplicate" in responses["200"]["description"]
        assert "CommandOutcome" in json.dumps(responses["200"])
        assert "Location" in responses["201"]["headers"]
        assert "415" in responses and "412" in responses
    stream = doc["paths"]["/v1/events/stream"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    assert not doc.get("security")
    for path in ("/health", "/ready"):
        assert not doc["paths"][path]["get"].get("security"), path
    assert doc["paths"]["/v1/patients"]["get"]["security"] == [{"bearer": []}]
    assert "Location" in doc["paths"]["/v1/tokens"]["post"]["responses"]["201"]["headers"]


def test_201_responses_send_location(api) -> None:
    s, client = api
    r = client.post("/v1/commands", json=screen_body("U-13"), headers=s.auth("clinician"))
    assert r.status_code == 201 and r.headers["location"] == "/v1/patients/U-13"
    assert client.get(r.headers["location"], headers=s.auth("monitor")).status_code == 200
    made = client.post(
        "/v1/tokens", json={"actor": "nurse.kim", "role": "clinician"}, headers=s.auth("admin")
    )
    assert made.status_code == 201
    assert made.headers["location"] == f"/v1/tokens/{made.json()['info']['id']}"


# -- 11. POST /v1/tokens is strict ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"actor": "a", "role": "monitor", "bogus": 1}, "bogus"),
        ({"actor": "a", "role": "monitor", "name": ""}, "name"),
        ({"actor": "a", "role": "monitor", "name": "x" * 5000}, "name"),
        ({"actor": "a", "role": "monitor", "name": "tab\there"}, "name"),
        ({"actor": "x\n\u0000", "role": "monitor"}, "actor"),
        ({"actor": "x" * 201, "role": "monitor"}, "actor"),
        ({"actor": "", "role": "monitor"}, "actor"),
        ({"actor": 5, "role": "monitor"}, "actor"),
        ({"role": "monitor"}, "actor"),
        ({"actor": "a", "role": ["monitor"]}, "role"),
    ],
)
def test_new_token_fields_are_checked(api, body: dict[str, Any], field: str) -> None:
    s, client = api
    before = len(s.tokens.list())
    r = client.post("/v1/tokens", json=body, headers=s.auth("admin"))
    assert_problem(r, 422, field)
    assert len(s.tokens.list()) == before


def test_new_token_with_a_printable_name_is_issued(api) -> None:
    s, client = api
    body = {"actor": "nurse.kim", "role": "clinician", "name": "K. Kim (Station 4, é)"}
    assert client.post("/v1/tokens", json=body, headers=s.auth("admin")).status_code == 201
    no_name = {"actor": "nurse.lee", "role": "monitor", "name": None}
    assert client.post("/v1/tokens", json=no_name, headers=s.auth("admin")).status_code == 201


# -- 12. history events carry no null position ---------------------------------------------------


def test_history_events_have_no_null_position(api) -> None:
    s, client = api
    events = history(s, client, "P-0001")
    assert events and all(e.get("position", 0) is not None for e in events)
    feed = client.get("/v1/events", headers=s.auth("monitor")).json()["events"]
    assert all(isinstance(e["position"], int) for e in feed)


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_holding_a_key_twice_is_refused(api, path: str) -> None:
    s, client = api
    headers = {**s.auth(_role(path)), "Content-Type": "application/json"}
    text = json.dumps(screen_body("U-13"))
    content = ('{"patient_id": "U-14", ' + text[1:]).encode()  # patient_id twice
    problem = assert_problem(client.post(path, content=content, headers=headers), 422, "(body)")
    assert "'patient_id' more than once" in problem["detail"]
    assert history(s, client, "U-13") == [] and history(s, client, "U-14") == []


def test_a_signature_carries_the_name_registered_with_the_token(api) -> None:
    s, client = api
    _, token = s.tokens.add("dr.named", "clinician", name="Dr. N. Amed")
    named = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/commands", json=screen_body("U-20"), headers=named).status_code == 201

    def sign(printed_name: str, headers: dict[str, str]) -> Any:
        body = {
            "command": "sign",
            "patient_id": "U-20",
            "occurred_at": "2026-03-02T12:00:00+00:00",
            "payload": {
                "milestone": "eligibility",
                "signs_version": 2,
                "meaning": "approval",
                "printed_name": printed_name,
            },
        }
        return client.post("/v1/commands", json=body, headers=headers)

    other = assert_problem(sign("Dr. Someone Else", named), 422, "payload.printed_name")
    assert "registered name 'Dr. N. Amed'" in other["detail"]
    unnamed = assert_problem(sign("Clin Ician", s.auth("clinician")), 422, "payload.printed_name")
    assert "no registered name" in unnamed["detail"]
    assert len(history(s, client, "U-20")) == 2
    assert sign("Dr. N. Amed", named).status_code == 201
    assert history(s, client, "U-20")[-1]["printed_name"] == "Dr. N. Amed"
