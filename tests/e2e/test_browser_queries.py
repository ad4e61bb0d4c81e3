"""The dashboard's data-query panel (static/queries.js) in Debian's chromium driven by
Playwright: a monitor opens a query on a recorded value (a bad field path is refused on the
page, naming the fields the event has), the site's clinician answers it, the monitor closes and
re-opens it; screenshots go to tests/artifacts/ and the test asserts what the page shows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_support import ARTIFACTS, launch, needs_chromium
from server_support import Server, demo_server

pytestmark = needs_chromium
PATIENT = "P-0001"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("browser-queries")) as s:
        yield s


def _login(page, server: Server, role: str) -> None:  # type: ignore[no-untyped-def]
    if page.locator("#logout").is_visible():
        page.click("#logout")
    page.goto(server.url + "/")
    page.fill("#token", server.tokens[role])
    page.click("#login-form button")
    page.wait_for_selector("#board tbody tr")
    page.goto(f"{server.url}/#/patient/{PATIENT}")
    page.wait_for_selector("#queries .q-summary")


def _status(page, qid: str) -> str:  # type: ignore[no-untyped-def]
    return page.locator(f"#queries tr[data-query='{qid}'] .q-status").text_content() or ""


def _open_query(page, field: str) -> None:  # type: ignore[no-untyped-def]
    """The monitor's form: a query on version 2's ``field``, sent."""
    form = page.locator("#queries form.q-open")
    form.locator("input[name=text]").fill("KPS: the source says 80")
    form.locator("input[name=on_version]").fill("2")
    form.locator("input[name=field]").fill(field)
    form.locator("button").click()


def _wait_status(page, qid: str, status: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector(f"#queries tr[data-query='{qid}'][data-status='{status}']")


def test_the_query_workflow_in_the_dashboard(server: Server) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            _login(page, server, "monitor")
            before = {
                r.get_attribute("data-query") for r in page.locator("#queries tr[data-query]").all()
            }
            # the site's answer form is not offered to a monitor
            assert page.locator("#queries form.q-answer").count() == 0
            # a field path the screening does not have: refused on the page, nothing recorded
            _open_query(page, "payload.kps")
            page.wait_for_function(
                "() => document.querySelector('#queries .q-error').textContent.length > 0"
            )
            error = page.locator("#queries .q-error").text_content() or ""
            assert "is not a field of version 2" in error and "payload.screening.kps" in error
            page.screenshot(path=str(ARTIFACTS / "queries-bad-field.png"), full_page=True)
            # the right path: the query opens
            _open_query(page, "payload.screening.kps")
            page.wait_for_function(
                "(n) => document.querySelectorAll('#queries tr[data-query]').length > n",
                arg=len(before),
            )
            (qid,) = {
                r.get_attribute("data-query") for r in page.locator("#queries tr[data-query]").all()
            } - before
            assert qid is not None and _status(page, qid) == "open"
            row = page.locator(f"#queries tr[data-query='{qid}']")
            assert "KPS: the source says 80" in (row.text_content() or "")
            assert "payload.screening.kps" in (row.text_content() or "")
            page.screenshot(path=str(ARTIFACTS / "queries-opened.png"), full_page=True)

            # the site answers
            _login(page, server, "clinician")
            assert page.locator("#queries form.q-open").count() == 0
            answer = page.locator(f"#queries form.q-answer[data-query='{qid}']")
            answer.locator("input[name=text]").fill("KPS 90 at screening; the source was re-read")
            answer.locator("button").click()
            _wait_status(page, qid, "answered")
            row = page.locator(f"#queries tr[data-query='{qid}']")
            assert "answer: KPS 90 at screening" in (row.text_content() or "")
            page.screenshot(path=str(ARTIFACTS / "queries-answered.png"), full_page=True)

            # the monitor closes it, then re-opens it
            _login(page, server, "monitor")
            page.locator(f"#queries form.q-close[data-query='{qid}'] button").click()
            _wait_status(page, qid, "closed")
            reopen = page.locator(f"#queries form.q-reopen[data-query='{qid}']")
            reopen.locator("input[name=text]").fill("please file the KPS form")
            reopen.locator("button").click()
            _wait_status(page, qid, "reopened")
            row = page.locator(f"#queries tr[data-query='{qid}']")
            row.locator("summary").click()
            steps = row.locator("li").all_text_contents()
            assert [s.split(" by ")[0].split(" ", 1)[1] for s in steps] == [
                "open → open",
                "answer → answered",
                "close → closed",
                "reopen → reopened",
            ]
            assert "by monitor.demo" in steps[0] or "monitor" in steps[0]
            page.screenshot(path=str(ARTIFACTS / "queries-reopened.png"), full_page=True)
            # the patient's timeline says each step in words (reloaded: the page as a monitor
            # finds it later)
            page.goto(f"{server.url}/#/patient/{PATIENT}")
            page.reload()
            page.wait_for_selector("#timeline tbody tr")
            timeline = page.locator("#timeline tbody").text_content() or ""
            for words in ("Data query opened", "Data query answered", "Data query closed"):
                assert words in timeline, words
            assert f"query {qid} on event" in timeline and "KPS: the source says 80" in timeline
            assert errors == []
        finally:
            browser.close()
