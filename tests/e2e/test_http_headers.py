"""Response headers and public surfaces of the HTTP service: security and cache headers, the
CSP of each page, no external URL in any page, OPTIONS and CORS, /ready, /metrics (each family
declared once, disconnects not counted as 500), board paging over HTTP, printable token names,
and the toxicity term in the audit report."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from http_support import Stack, stack
from litestar.testing import TestClient
from overdue_cohort import D1, d1_patient

from cart_course.contract import parse_command
from cart_course.http.security import DASHBOARD_CSP, REPORT_CSP


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, TestClient]]:
    db = str(tmp_path_factory.mktemp("headers") / "h.sqlite")
    with stack(db, demo=4) as s, TestClient(s.app) as client:
        commands = [c for pid, day in D1.items() for c in d1_patient(pid, day)]
        results = s.service.execute_batch([parse_command(c) for c in commands])
        assert all(hasattr(r, "status") for r in results), results
        yield s, client


# -- security and cache headers (item 2) ----------------------------------------------------------

SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

PATIENT_DATA = [
    ("auditor", "/v1/patients"),
    ("auditor", "/v1/patients/P-0001"),
    ("auditor", "/v1/patients/P-0001/history"),
    ("auditor", "/v1/board"),
    ("auditor", "/v1/watchlist"),
    ("auditor", "/v1/events?limit=2"),
    ("auditor", "/v1/patients/P-0001/report.html"),
    ("auditor", "/v1/exports/events.jsonl?patient_id=P-0001"),
    ("auditor", "/v1/exports/timeline.csv?patient_id=P-0001"),
    ("auditor", "/v1/patients/P-0001/fhir"),
    ("auditor", "/v1/audit/access-log"),
    ("monitor", "/metrics"),
    (None, "/v1/patients"),  # a problem (401)
    ("monitor", "/v1/audit/verify"),  # a problem (403)
    (None, "/"),
    (None, "/ready"),
    (None, "/schema"),
    (None, "/schema/openapi.json"),
]


@pytest.mark.parametrize(("role", "path"), PATIENT_DATA)
def test_every_answer_has_security_headers_and_no_store(api, role: str | None, path: str) -> None:
    s, client = api
    r = client.get(path, headers=s.auth(role) if role else {})
    for name, value in SECURITY.items():
        assert r.headers.get(name) == value, (path, name)
    assert r.headers["cache-control"] == "no-store", path
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp, path
    head = client.head(path, headers=s.auth(role) if role else {})
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["x-content-type-options"] == "nosniff"


def test_api_csp_is_strict_and_pages_have_their_own(api) -> None:
    s, client = api
    api_csp = client.get("/v1/patients", headers=s.auth("monitor")).headers
    assert api_csp["content-security-policy"].startswith("default-src 'none'")
    assert client.get("/").headers["content-security-policy"] == DASHBOARD_CSP
    report = client.get("/v1/patients/P-0001/report.html", headers=s.auth("auditor"))
    assert report.headers["content-security-policy"] == REPORT_CSP
    # the report's one inline style is allowed by its hash (the dashboard's frame inherits it)
    assert "'sha256-" in DASHBOARD_CSP and "'unsafe-inline'" not in DASHBOARD_CSP
    assert "script-src 'self'" in DASHBOARD_CSP and "connect-src 'self'" in DASHBOARD_CSP


def test_static_assets_are_cacheable_but_protected(api) -> None:
    _, client = api
    r = client.get("/static/app.js")
    assert r.status_code == 200
    assert r.headers.get("cache-control") != "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_a_refused_audit_read_503_carries_the_headers_too(api, monkeypatch) -> None:
    s, client = api

    def fail(**_: Any) -> None:
        raise RuntimeError("locked")

    monkeypatch.setattr(s.tokens, "log_access", fail)
    r = client.get("/v1/audit/verify", headers=s.auth("auditor"))
    assert r.status_code == 503
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"


# -- no page or script from outside the server (item 5) -----------------------------------------

EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.mark.parametrize("path", ["/", "/schema", "/static/app.js", "/static/app.css"])
def test_no_served_page_references_an_external_url(api, path: str) -> None:
    _, client = api
    r = client.get(path)
    assert r.status_code == 200, path
    assert not EXTERNAL.search(r.text), path
    for host in ("cdn.", "jsdelivr", "unpkg", "googleapis", "gstatic", "redoc"):
        assert host not in r.text.lower(), (path, host)


def test_report_references_no_external_url(api) -> None:
    s, client = api
    html = client.get("/v1/patients/P-0001/report.html", headers=s.auth("auditor")).text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I)


@pytest.mark.parametrize(
    "path", ["/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc"]
)
def test_cdn_based_schema_uis_are_gone(api, path: str) -> None:
    _, client = api
    r = client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["error"] == "not_found"


def test_schema_page_links_the_local_document(api) -> None:
    _, client = api
    page = client.get("/schema")
    assert page.headers["content-type"].startswith("text/html")
    assert "/schema/openapi.json" in page.text and "<script" not in page.text
    assert "/v1/commands" in page.text
    assert client.get("/schema/openapi.json").json()["openapi"].startswith("3.1")
    assert client.get("/schema/openapi.yaml").text.startswith(("openapi", "components", "info"))


# -- OPTIONS and CORS (item 10) -------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://testserver.local", "https://elsewhere.example"])
def test_preflight_is_no_400_text_and_grants_nothing(api, origin: str) -> None:
    _, client = api
    r = client.options(
        "/v1/patients",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 204, r.text
    assert "disallowed" not in r.text.lower()
    assert not any(k.lower().startswith("access-control-") for k in r.headers)
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"


def test_options_lists_the_same_methods_as_405(api) -> None:
    s, client = api
    options = client.options("/v1/patients")
    refused = client.delete("/v1/patients", headers=s.auth("monitor"))
    assert refused.status_code == 405
    assert options.headers["allow"] == refused.headers["allow"] == "GET, HEAD, OPTIONS"
    post = client.options("/v1/commands").headers["allow"]
    assert post == "OPTIONS, POST"


def test_cross_origin_get_carries_no_cors_headers(api) -> None:
    s, client = api
    r = client.get(
        "/v1/patients", headers={**s.auth("monitor"), "Origin": "https://elsewhere.example"}
    )
    assert r.status_code == 200
    assert not any(k.lower().startswith("access-control-") for k in r.headers)


# -- /ready is public and says only ready or not (item 11) ----------------------------------------


def test_ready_shows_no_store_and_no_count(api) -> None:
    s, client = api
    r = client.get("/ready")
    assert r.json() == {"status": "ready"}
    assert "sqlite" not in r.text and "/" not in r.text
    metrics = client.get("/metrics", headers=s.auth("monitor")).text
    assert re.search(r'^cart_course_store_info\{store=".*h\.sqlite"\} 1\.0$', metrics, re.M)


def test_not_ready_is_503_problem_without_the_store_location(api, monkeypatch) -> None:
    s, client = api

    def down() -> None:
        raise OSError(f"unable to open database file {s.app.state.store_display}")

    monkeypatch.setattr(s.tokens, "ping", down)
    r = client.get("/ready")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert "does not answer" in body["detail"] and "OSError" in body["detail"]
    assert s.app.state.store_display not in r.text


# -- /metrics (items 3 and 4) -------------------------------------------------------------------


def families(text: str) -> tuple[Counter[str], Counter[str]]:
    helps: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if line.startswith("# HELP "):
            helps[parts[2]] += 1
        elif line.startswith("# TYPE "):
            types[parts[2]] += 1
    return helps, types


def test_each_metric_family_is_declared_once(api) -> None:
    s, client = api
    text = client.get("/metrics", headers=s.auth("monitor")).text
    helps, types = families(text)
    assert helps and helps == types
    assert all(n == 1 for n in types.values()), {k: n for k, n in types.items() if n > 1}
    declared = set(types)
    samples = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert name, line
            # a summary's samples are its family's name with _count and _sum
            family = re.sub(r"_(count|sum)$", "", name.group(0))
            assert name.group(0) in declared or types[family] == 1, line
            if "{" not in line:
                samples[name.group(0)] += 1
    assert samples["cart_course_log_position"] == 1


def test_metrics_without_the_views_still_declare_the_log_position_once() -> None:
    with stack("memory:") as s:
        s.app.state.store = None  # no read models: the app reports the position itself
        with TestClient(s.app) as client:
            text = client.get("/metrics", headers=s.auth("monitor")).text
    _, types = families(text)
    assert types["cart_course_log_position"] == 1


def test_a_client_that_disconnects_is_not_counted_as_500(api) -> None:
    s, client = api

    async def call() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/commands",
            "raw_path": b"/v1/commands",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"testserver"),
                (b"content-type", b"application/json"),
                (b"content-length", b"100"),
                (b"authorization", f"Bearer {s.token['clinician']}".encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
            "state": {},
        }
        await s.app(scope, receive, send)  # type: ignore[arg-type]
        return sent

    asyncio.run(call())
    text = client.get("/metrics", headers=s.auth("monitor")).text
    assert 'route="/v1/commands",status="client_closed"} 1' in text
    assert not re.search(r'route="/v1/commands",status="5\d\d"', text)


# -- board paging over HTTP (item 1) ------------------------------------------------------------


def _follow(client: TestClient, s: Stack, url: str) -> list[str]:
    seen: list[str] = []
    for _ in range(50):
        r = client.get(url, headers=s.auth("monitor"))
        assert r.status_code == 200, r.text
        seen += [row["patient_id"] for row in r.json()]
        link = r.headers.get("link")
        if not link:
            return seen
        target = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert target, link
        url = target.group(1)
    raise AssertionError("no last page")


@pytest.mark.parametrize("limit", [1, 2, 3])
@pytest.mark.parametrize("query", ["overdue=true", "", "state=infused_d1&overdue=true"])
def test_board_pages_follow_link_next_and_give_every_row_once(api, limit: int, query: str) -> None:
    s, client = api
    whole = [
        r["patient_id"] for r in client.get(f"/v1/board?{query}", headers=s.auth("monitor")).json()
    ]
    assert len(whole) >= 4
    paged = _follow(client, s, f"/v1/board?{query}&limit={limit}")
    assert paged == whole


def test_overdue_board_after_a_patient_id_goes_on_from_its_place(api) -> None:
    s, client = api
    auth = s.auth("monitor")
    whole = client.get("/v1/board?overdue=true", headers=auth).json()
    assert [r["patient_id"] for r in whole][:5] == ["A-4", "A-5", "A-2", "A-3", "A-1"]
    first = client.get("/v1/board?overdue=true&limit=1", headers=auth)
    assert [r["patient_id"] for r in first.json()] == ["A-4"]
    nxt = parse_qs(urlsplit(first.headers["link"][1:].split(">")[0]).query)
    assert nxt["after"][0].startswith("~") and nxt["overdue"] == ["true"]
    by_id = client.get("/v1/board?overdue=true&after=A-4", headers=auth).json()
    assert [r["patient_id"] for r in by_id] == [r["patient_id"] for r in whole[1:]]


@pytest.mark.parametrize("after", ["~not-base64!", "~" + "QQ", "NOBODY"])
def test_a_bad_overdue_cursor_is_422_naming_after(api, after: str) -> None:
    s, client = api
    r = client.get(f"/v1/board?overdue=true&after={after}", headers=s.auth("monitor"))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "query.after"


# -- printable token names (item 9) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "char"),
    [
        ("actor", "\u200b"),  # zero width space (Cf)
        ("actor", "\u202e"),  # right-to-left override (Cf)
        ("name", "\u2028"),  # line separator (Zl)
        ("name", "\u2029"),  # paragraph separator (Zp)
        ("actor", "\ufeff"),  # zero width no-break space (Cf)
        ("name", "\x07"),  # bell (Cc)
    ],
)
def test_token_names_refuse_invisible_characters(api, field: str, char: str) -> None:
    s, client = api
    body = {"actor": "nurse.kim", "role": "clinician", "name": "K. Kim"}
    body[field] = f"nurse{char}kim"
    r = client.post("/v1/tokens", json=body, headers=s.auth("admin"))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["field"] == field
    assert f"U+{ord(char):04X}" in problem["detail"] and "at position 5" in problem["detail"]
    assert "printable" in problem["detail"]


def test_token_names_accept_printable_unicode(api) -> None:
    s, client = api
    body = {"actor": "infirmière.zoë", "role": "clinician", "name": "Zoë Ångström 王"}
    r = client.post("/v1/tokens", json=body, headers=s.auth("admin"))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("where", ["id", "name"])
def test_command_envelope_actor_refuses_invisible_characters(where: str) -> None:
    from cart_course.errors import InvalidCommandError

    actor = {"id": "nurse.jones", "role": "clinician", "name": "J. Jones"}
    actor[where] = "nurse\u202ejones"
    envelope = {
        "command": "withdraw",
        "patient_id": "P-1",
        "occurred_at": "2026-01-05T09:00:00+00:00",
        "reason": "patient's wish",
        "actor": actor,
    }
    with pytest.raises(InvalidCommandError) as caught:
        parse_command(envelope)
    assert caught.value.field == f"actor.{where}"
    assert "U+202E" in caught.value.message


# -- the toxicity term in the audit report (item 7) ---------------------------------------------


def test_report_toxicity_table_shows_the_term_escaped(api) -> None:
    s, client = api
    day1 = dt.datetime(2026, 4, 1, 9, tzinfo=dt.UTC)
    s.service.execute_batch([parse_command(c) for c in d1_patient("T-1", day1)])
    r = client.post(
        "/v1/patients/T-1/commands/report_toxicity",
        json={
            "occurred_at": (day1 + dt.timedelta(hours=5)).isoformat(),
            "payload": {
                "toxicity": {
                    "kind": "other",
                    "term": "<b>rash</b> & itch",
                    "grade": 2,
                    "scale": "CTCAE",
                    "scale_version": "5.0",
                }
            },
        },
        headers=s.auth("clinician"),
    )
    assert r.status_code == 201, r.text
    html = client.get("/v1/patients/T-1/report.html", headers=s.auth("auditor")).text
    assert "<th>Term</th>" in html
    assert "<td>&lt;b&gt;rash&lt;/b&gt; &amp; itch</td>" in html
    assert "<b>rash</b>" not in html
