"""The Cohort page and the printable cohort report in a real headless Chromium (Debian's
/usr/bin/chromium driven by Playwright): log in, the four figures, sorting and paging of the
swimmer plot, the report; axe-core finds no serious violation; screenshots in tests/artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser_support import ARTIFACTS, launch, needs_chromium
from server_support import Server, demo_server

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("browser-cohort")) as s:
        yield s


@pytest.fixture
def browser(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        context = b.new_context(viewport={"width": 1400, "height": 1000})
        external: list[str] = []
        csp: list[str] = []

        def watch(page: Any) -> None:
            page.on("console", lambda m: print("console:", m.type, m.text))
            page.on(
                "console", lambda m: csp.append(m.text) if "Content Security" in m.text else None
            )
            page.on("pageerror", lambda e: print("pageerror:", e))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith((server.url, "blob:", "data:"))
                    else external.append(r.url)
                ),
            )

        context.on("page", watch)
        yield context
        b.close()
        assert external == [], f"the page fetched from outside the server: {external}"
        assert csp == [], f"the Content-Security-Policy blocked something: {csp}"


def _serious(page: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -- {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _ticks(page: Any) -> list[str]:
    svg = page.locator("#fig-swimmer-box svg").inner_html()
    return re.findall(r">(P-\d{4})</text>", svg)


def test_cohort_page_figures_sorting_paging_and_report(server: Server, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page()
    page.goto(server.url + "/cohort")
    page.fill("#token", server.tokens["monitor"])
    page.click("#login-form button")
    for name in ("swimmer", "best-response", "max-grade", "vein-to-vein"):
        page.wait_for_selector(f"#fig-{name}-box svg#fig-{name}", timeout=30_000)
        title = page.locator(f"#fig-{name}-box svg title").first.text_content() or ""
        assert title, name
    # 40 demo patients, 50 a page: no pager; the bars in time-on-study order
    assert page.locator("#c-pager").is_hidden()
    by_time = _ticks(page)
    assert len(by_time) >= 30
    page.screenshot(path=str(ARTIFACTS / "cohort.png"), full_page=True)
    assert _serious(page) == []

    page.select_option("#c-sort", "patient_id")
    page.wait_for_function(
        "() => new URLSearchParams(location.search).get('sort') === 'patient_id'"
    )
    page.wait_for_function(
        "() => document.querySelector('#fig-swimmer-box').getAttribute('aria-busy') === 'false'"
    )
    by_id = _ticks(page)
    assert by_id == sorted(by_time) and by_id != by_time
    # pages of 50 over 40 patients: one page; the filter by state keeps the dead only
    page.select_option("#c-state", "died")
    page.wait_for_function(
        "() => (document.querySelector('#fig-swimmer-box desc') || {}).textContent?.includes('state died')"
    )
    assert 0 < len(_ticks(page)) < len(by_id)
    page.select_option("#c-state", "")
    page.wait_for_function(
        "() => (document.querySelector('#fig-swimmer-box desc') || {}).textContent?.includes('all patients')"
    )

    # the filters live in the URL: a reload keeps them
    page.reload()
    page.wait_for_selector("#fig-swimmer-box svg#fig-swimmer")
    assert page.locator("#c-sort").input_value() == "patient_id"

    with page.expect_popup() as popup:
        page.click("#c-report")
    report = popup.value
    report.wait_for_selector("h1")
    assert "Cohort report" in (report.locator("h1").text_content() or "")
    assert report.locator("section svg").count() == 4
    assert report.locator("section table").count() == 4
    # the report's inline style applies (its hash is in the page's policy): tables have borders
    border = report.eval_on_selector("td", "e => getComputedStyle(e).borderTopStyle")
    assert border == "solid"
    report.screenshot(path=str(ARTIFACTS / "cohort-report.png"), full_page=True)
    report.emulate_media(media="print")
    report.screenshot(path=str(ARTIFACTS / "cohort-report-print.png"), full_page=False)
    assert _serious(report) == []


def test_toxicity_timeline_of_a_patient_with_crs(server: Server, browser: Any) -> None:
    """The figure the patient page inlines (fetched with the token, as the dashboard does)."""
    headers = {"Authorization": f"Bearer {server.tokens['clinician']}"}
    board = httpx.get(server.url + "/v1/watchlist", headers=headers).json()
    patients = httpx.get(server.url + "/v1/patients", headers=headers).json()
    chosen = None
    for p in patients:
        summary = httpx.get(server.url + f"/v1/patients/{p['patient_id']}", headers=headers).json()
        if any(t["kind"] == "CRS" and t["worst_grade"] >= 3 for t in summary["toxicities"]):
            chosen = p["patient_id"]
            break
    assert chosen is not None, board
    r = httpx.get(server.url + f"/v1/patients/{chosen}/figures/toxicity.svg", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    page = browser.new_page()
    page.goto(server.url + "/cohort")  # the page's origin and policy, as the dashboard has
    page.set_content(
        f'<!doctype html><html lang="en"><head><title>toxicity</title></head><body><main>{r.text}</main></body></html>'
    )
    page.wait_for_selector("svg#fig-toxicity")
    assert "CRS grade 3" in (page.locator("svg#fig-toxicity desc").text_content() or "")
    page.screenshot(path=str(ARTIFACTS / "toxicity-timeline.png"), full_page=True)
    assert _serious(page) == []


def test_a_refused_token_is_sent_back_to_the_login_form(server: Server, browser: Any) -> None:
    page = browser.new_page()
    page.goto(server.url + "/cohort")
    page.fill("#token", "cc_not-a-token")
    page.click("#login-form button")
    page.wait_for_function(
        "() => document.querySelector('#login-error').textContent.includes('not accepted')"
    )
    assert page.locator("#cohort").is_hidden() and page.locator("#login").is_visible()
    # an admin token is valid but may not read the figures: told which roles may
    page.fill("#token", server.tokens["admin"])
    page.click("#login-form button")
    page.wait_for_selector("#c-refused h2")
    text = page.locator("#c-refused").text_content() or ""
    assert "cannot read the cohort figures" in text and "'admin'" in text
    assert "clinician" in text and "monitor" in text and "auditor" in text
    assert page.locator("#fig-swimmer-box").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "cohort-admin-refused.png"), full_page=True)
