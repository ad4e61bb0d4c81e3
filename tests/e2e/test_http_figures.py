"""The cohort figures over HTTP: SVG for the viewers' roles, the printable report, the Cohort
page; refusals per role and for bad parameters (issue 18 item 3)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from http_support import Stack, stack
from litestar.testing import TestClient

COHORT = [
    "/v1/cohort/figures/swimmer.svg",
    "/v1/cohort/figures/best-response.svg",
    "/v1/cohort/figures/max-grade.svg",
    "/v1/cohort/figures/vein-to-vein.svg",
    "/v1/cohort/report.html",
]
TOXICITY = "/v1/patients/{}/figures/toxicity.svg"


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[Stack, TestClient[Any]]]:
    with stack(demo=40) as s, TestClient(s.app) as client:
        yield s, client


def _patient_with_crs(s: Stack) -> str:
    for pid in s.service.patient_ids():
        record = s.service.record(pid)
        if any(t.kind == "CRS" and t.worst_grade >= 3 for t in record.toxicities.values()):
            return pid
    raise AssertionError("the demo cohort has severe CRS")


@pytest.mark.parametrize("path", COHORT)
@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("monitor", 200),
        ("auditor", 200),
        ("clinician", 200),
        ("service", 403),
        ("admin", 403),
    ],
)
def test_cohort_figures_are_for_the_roles_of_the_board(
    demo: tuple[Stack, TestClient[Any]], path: str, role: str, status: int
) -> None:
    s, client = demo
    r = client.get(path, headers=s.auth(role))
    assert r.status_code == status, r.text
    if status == 200:
        kind = "text/html" if path.endswith(".html") else "image/svg+xml"
        assert r.headers["content-type"].startswith(kind)
        assert r.headers["cache-control"] == "no-store"  # patient data
    else:
        assert r.json()["error"] == "forbidden" or "may not use this route" in r.text


@pytest.mark.parametrize("path", [*COHORT, TOXICITY.format("P-0001")])
def test_figures_need_a_token(demo: tuple[Stack, TestClient[Any]], path: str) -> None:
    _, client = demo
    assert client.get(path).status_code == 401


@pytest.mark.parametrize(
    ("role", "status"),
    [("monitor", 200), ("auditor", 200), ("clinician", 200), ("service", 200), ("admin", 403)],
)
def test_the_toxicity_timeline_is_read_like_the_patient(
    demo: tuple[Stack, TestClient[Any]], role: str, status: int
) -> None:
    s, client = demo
    pid = _patient_with_crs(s)
    patient = client.get(f"/v1/patients/{pid}", headers=s.auth(role))
    r = client.get(TOXICITY.format(pid), headers=s.auth(role))
    assert r.status_code == status == patient.status_code
    if status == 200:
        assert r.headers["content-type"].startswith("image/svg+xml")
        svg = r.text
        assert f"patient {pid}" in svg and 'role="img"' in svg
        desc = re.search(r"<desc[^>]*>([^<]+)</desc>", svg)
        assert desc and "CRS grade 3" in desc.group(1)


def test_an_unknown_patient_is_404(demo: tuple[Stack, TestClient[Any]]) -> None:
    s, client = demo
    r = client.get(TOXICITY.format("P-9999"), headers=s.auth("monitor"))
    assert r.status_code == 404 and r.json()["error"] == "patient_not_found"


@pytest.mark.parametrize(
    ("query", "field"),
    [("sort=age", "query.sort"), ("state=asleep", "query.state"), ("limit=0", "limit")],
)
def test_bad_parameters_are_refused_naming_the_parameter(
    demo: tuple[Stack, TestClient[Any]], query: str, field: str
) -> None:
    s, client = demo
    r = client.get(f"/v1/cohort/figures/swimmer.svg?{query}", headers=s.auth("monitor"))
    assert r.status_code in (400, 422), r.text
    assert field in r.text


def test_the_swimmer_sorts_filters_and_pages(demo: tuple[Stack, TestClient[Any]]) -> None:
    s, client = demo

    def names(query: str) -> list[str]:
        r = client.get(f"/v1/cohort/figures/swimmer.svg?{query}", headers=s.auth("monitor"))
        assert r.status_code == 200, r.text
        # the patient ids are the y tick labels, top to bottom
        return re.findall(r">(P-\d{4})</text>", r.text)

    by_id = names("sort=patient_id")
    assert by_id == sorted(by_id) and len(by_id) >= 30
    by_time = names("sort=time_on_study")
    assert sorted(by_time) == by_id and by_time != by_id
    assert names("sort=patient_id&offset=10&limit=5") == by_id[10:15]
    died = names("state=died")
    assert died and set(died) < set(by_id)
    r = client.get("/v1/cohort/figures/swimmer.svg?state=died", headers=s.auth("monitor"))
    assert "state died" in r.text


def test_the_report_shows_every_figure_with_its_table(
    demo: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = demo
    r = client.get("/v1/cohort/report.html", headers=s.auth("auditor"))
    html = r.text
    for anchor in ("swimmer", "best-response", "max-grade", "vein-to-vein"):
        assert f'<section id="{anchor}">' in html
        assert f'id="fig-{anchor}"' in html
    assert html.count("<table>") == 4 and html.count("<svg ") == 4
    assert "@media print" in html and "<script" not in html
    csp = r.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp and "'sha256-" in csp
    assert "log position" in html


def test_the_cohort_page_is_served_with_its_own_script_only(
    demo: tuple[Stack, TestClient[Any]],
) -> None:
    _, client = demo
    page = client.get("/cohort")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/cohort.js"></script>' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert client.get("/static/cohort.js").status_code == 200
    assert client.get("/static/cohort.css").status_code == 200


def test_a_figure_drawn_again_after_a_new_event_shows_it() -> None:
    """The figures of one log position are drawn once; the next event draws them anew."""
    from http_support import screen_body

    with stack(demo=3) as s, TestClient(s.app) as client:

        def not_infused() -> int:
            r = client.get("/v1/cohort/figures/swimmer.svg", headers=s.auth("monitor"))
            m = re.search(r"; (\d+) patients without a D1", r.text)
            assert m, r.text[:500]
            return int(m.group(1))

        before = not_infused()
        assert not_infused() == before  # the same answer from what was drawn
        r = client.post("/v1/commands", json=screen_body("NEW-1"), headers=s.auth("clinician"))
        assert r.status_code == 201, r.text
        assert not_infused() == before + 1
