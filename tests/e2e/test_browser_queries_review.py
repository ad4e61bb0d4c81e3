"""Findings of the review of issue 17 in the dashboard's data-query panel (static/queries.js),
in Debian's chromium driven by Playwright: a double click on "Open query" opened the query twice
(each submit sent a new Idempotency-Key), and the panel wrote its times as raw UTC ISO strings
while the rest of the page writes them in the display time zone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import httpx
import pytest
from browser_support import ARTIFACTS, launch, needs_chromium
from server_support import Server, demo_server

pytestmark = needs_chromium

PATIENT = "P-0001"
ZONE = "Asia/Tokyo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("browser-queries-review")) as s:
        yield s


def _queries(server: Server) -> list[dict[str, object]]:
    r = httpx.get(
        f"{server.url}/v1/patients/{PATIENT}/queries",
        headers={"Authorization": f"Bearer {server.tokens['monitor']}"},
    )
    r.raise_for_status()
    data: list[dict[str, object]] = r.json()
    return data


def test_a_double_click_opens_one_query_and_times_are_in_the_display_zone(
    server: Server,
) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    before = len(_queries(server))
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1400, "height": 1100}, timezone_id=ZONE)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(server.url + "/")
            page.fill("#token", server.tokens["monitor"])
            page.click("#login-form button")
            page.wait_for_selector("#board tbody tr")
            page.goto(f"{server.url}/#/patient/{PATIENT}")
            page.wait_for_selector("#queries .q-summary")
            form = page.locator("#queries form.q-open")
            form.locator("input[name=text]").fill("weight at D1: the source says 71 kg")
            form.locator("button").dblclick()
            page.wait_for_function(
                "(n) => document.querySelectorAll('#queries tr[data-query]').length > n",
                arg=before,
            )
            page.wait_for_timeout(1500)  # a second submit, if one was sent, has been recorded
            after = _queries(server)
            assert len(after) == before + 1, [q["query_id"] for q in after]
            # the panel writes times as the page does: in the display zone, not raw UTC ISO
            new = after[-1]
            opened = dt.datetime.fromisoformat(str(new["opened_at"])).astimezone(ZoneInfo(ZONE))
            row = page.locator(f"#queries tr[data-query='{new['query_id']}']")
            row.locator("summary").click()
            text = row.text_content() or ""
            assert "+00:00" not in text, text
            shown = f"{opened.day} {opened:%b %Y, %H:%M}"
            assert shown in text, (shown, text)
            page.screenshot(path=str(ARTIFACTS / "queries-review-one-query.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
