"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
log in, board -> patient -> report, live update; screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_support import free_port, screen_body
from server_support import Server

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = str(tmp_path_factory.mktemp("browser") / "demo.sqlite")
    s = Server(db, free_port(), "--demo")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def page(server: Server) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.on("console", lambda m: print("console:", m.type, m.text))
        pg.on("pageerror", lambda e: print("pageerror:", e))
        external: list[str] = []
        pg.on(
            "request",
            lambda r: None if r.url.startswith(server.url) else external.append(r.url),
        )
        yield pg
        browser.close()
        assert external == [], f"the dashboard fetched from outside the server: {external}"


def test_board_patient_report(server: Server, page) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(server.url + "/")
    page.fill("#token", server.tokens["auditor"])
    page.click("#login-form button")
    page.wait_for_selector("#board tbody tr")
    rows = page.locator("#board tbody tr")
    assert rows.count() == 40
    # highlights: the demo cohort has patients with open toxicity and overdue actions
    page.check("#f-toxicity")
    page.wait_for_function(
        # a function, not an expression: the dashboard's CSP has no 'unsafe-eval'
        "() => document.querySelector('#board-status').textContent.includes('patients')"
    )
    tox_rows = page.locator("#board tbody tr")
    page.screenshot(path=str(ARTIFACTS / "board-toxicity.png"), full_page=True)
    for i in range(tox_rows.count()):
        assert "toxicity" in (tox_rows.nth(i).get_attribute("class") or "")
    page.uncheck("#f-toxicity")
    page.select_option("#f-state", "ceased")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#board tbody tr td:nth-child(2)')].every(td => td.textContent === 'ceased')"
    )
    page.select_option("#f-state", "")
    page.wait_for_function("() => document.querySelectorAll('#board tbody tr').length === 40")
    page.screenshot(path=str(ARTIFACTS / "board.png"), full_page=True)

    page.click("#board a[href='#/patient/P-0001']")
    page.wait_for_selector("#timeline tbody tr")
    assert page.locator("#timeline tbody tr").count() >= 5
    state = page.locator("#p-state").text_content()
    assert page.locator(f"#diagram g.node.current[data-state='{state}']").count() == 1
    assert page.locator("#diagram path.edge.taken").count() >= 4
    page.screenshot(path=str(ARTIFACTS / "patient.png"), full_page=True)

    page.click("#report-link")
    frame = page.frame_locator("iframe#report")
    frame.locator("h1").wait_for()
    assert "P-0001" in frame.locator("h1").text_content()
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_board_updates_live(server: Server, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + "/")
    page.fill("#token", server.tokens["monitor"])
    page.click("#login-form button")
    page.wait_for_selector("#board tbody tr")
    page.wait_for_selector("#live.on")
    r = httpx.post(
        server.url + "/v1/commands",
        json=screen_body("LIVE-1", payload={**screen_body("LIVE-1")["payload"], "site": "S01"}),
        headers={"Authorization": f"Bearer {server.tokens['clinician']}"},
    )
    assert r.status_code == 201, r.text
    page.wait_for_selector("#board tr[data-patient='LIVE-1']", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "board-live.png"), full_page=True)


def _csp_errors(page) -> list[str]:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return errors


def test_admin_token_is_told_which_roles_can_use_the_dashboard(server: Server, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.url + "/")
    page.fill("#token", server.tokens["admin"])
    page.click("#login-form button")
    page.wait_for_selector("#refused")
    text = page.locator("#refused").text_content() or ""
    assert "cannot use the dashboard" in text
    for role in ("clinician", "monitor", "auditor"):
        assert role in text
    assert "admin" in text  # the server's words: the role that was refused
    assert page.locator("#logout").is_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard-admin-refused.png"), full_page=True)


def test_patient_page_shows_term_and_the_path_of_state_changes_only(  # type: ignore[no-untyped-def]
    server: Server, page
) -> None:
    import datetime as dt
    import random

    from cart_course.demo import _Patient

    day1 = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
    p = _Patient("TERM-1", day1 - dt.timedelta(days=20), random.Random(7))
    p.screen()
    p.commands[0]["payload"]["site"] = "S01"  # serve --demo's trial has sites (issue 17)
    p.apheresis()
    p.infusion(1, days=day1.date().toordinal() - p.t.date().toordinal())
    for command in p.commands:
        body = {k: v for k, v in command.items() if k != "actor"}
        r = httpx.post(
            server.url + "/v1/commands",
            json=body,
            headers={"Authorization": f"Bearer {server.tokens['clinician']}"},
        )
        assert r.status_code == 201, r.text
    for hours, term in ((3, "<i>rash</i> & itch"), (4, "fatigue")):
        r = httpx.post(
            server.url + "/v1/patients/TERM-1/commands/report_toxicity",
            json={
                "occurred_at": (day1 + dt.timedelta(hours=hours)).isoformat(),
                "payload": {
                    "toxicity": {
                        "kind": "other",
                        "term": term,
                        "grade": 3 if term == "fatigue" else 2,
                        "scale": "CTCAE",
                        "scale_version": "5.0",
                    }
                },
            },
            headers={"Authorization": f"Bearer {server.tokens['clinician']}"},
        )
        assert r.status_code == 201, r.text
    csp = _csp_errors(page)
    page.goto(server.url + "/")
    page.fill("#token", server.tokens["auditor"])
    page.click("#login-form button")
    page.wait_for_selector("#board tbody tr")
    page.goto(server.url + "/#/patient/TERM-1")
    page.wait_for_selector("#timeline tbody tr")
    terms = [t.text_content() for t in page.locator(".card .tox").all()]
    assert "other (<i>rash</i> & itch) grade 2" in terms  # shown as text, not markup
    assert "other (fatigue) grade 3" in terms
    assert page.locator(".card .tox i").count() == 0
    path = page.locator("#diagram p.small").text_content() or ""
    assert path == "Path: candidate → screened → apheresed → infused_d1", path
    page.screenshot(path=str(ARTIFACTS / "patient-term.png"), full_page=True)

    page.click("#report-link")
    frame = page.frame_locator("iframe#report")
    frame.locator("h1").wait_for()
    assert frame.locator("th", has_text="Term").count() == 1
    assert frame.get_by_role("cell", name="<i>rash</i> & itch", exact=True).count() == 1
    # the report's inline style applies under the dashboard's CSP (allowed by its hash)
    background = frame.locator("th").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert background == "rgb(238, 238, 238)", background
    assert csp == [], csp
