"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright):
what a monitor, an auditor, an admin and a service see. Screenshots go to tests/artifacts/
(ignored by git); every page is checked with axe-core (no serious or critical violation)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from browser_support import ARTIFACTS, launch, needs_chromium
from http_support import free_port, screen_body
from server_support import CLI, Server, demo_server

from bench.bench_dashboard import load_board

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core-4.10.3" / "axe.min.js"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("browser")) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(server: Server, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: print("console:", m.type, m.text))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    external: list[str] = []
    pg.on("request", lambda r: None if r.url.startswith(server.url) else external.append(r.url))
    yield pg
    context.close()
    assert external == [], f"the dashboard fetched from outside the server: {external}"
    assert errors == [], f"script errors: {errors}"


def login(page: Any, server: Server, role: str, hash_: str = "") -> None:
    page.goto(server.url + "/")
    page.fill("#token", server.tokens[role])
    page.click("#login-form button")
    page.wait_for_selector("#who b")
    if hash_:
        page.goto(server.url + "/" + hash_)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2 A/AA)."""
    if not page.evaluate("() => typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text() + "\n;true")  # a devtools evaluation: no CSP applies
    result = page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:120] for n in v["nodes"][:3]]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def column(page: Any, n: int) -> list[str]:
    """The text of the board's column n (1-based), top to bottom."""
    return [
        (t or "").strip()
        for t in page.locator(f"#board tbody tr > :nth-child({n})").all_text_contents()
    ]


def wait_rows(page: Any, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError("the board did not show what was expected")


def status(page: Any) -> str:
    return (page.locator("#board-status").text_content() or "").strip()


# -- the board -----------------------------------------------------------------------------------


def test_board_needs_attention_first_sorts_filters_in_the_url_and_exports_csv(
    server: Server, page: Any
) -> None:
    login(page, server, "monitor")
    page.wait_for_selector("#board tbody tr")
    assert "demo monitor" in (page.locator("#who").text_content() or "")
    assert "monitor" in (page.locator("#who .role").text_content() or "")
    assert status(page) == "40 patients · sorted needs attention first"
    # needs attention first: the overdue rows lead, most days overdue first
    overdue = page.locator("#board tbody tr.overdue")
    n_overdue = overdue.count()
    assert n_overdue >= 1
    leading = page.locator("#board tbody tr").nth(0)
    assert "overdue" in (leading.get_attribute("class") or "")
    days = [
        int(re.search(r"(\d+) days? overdue", t).group(1))  # type: ignore[union-attr]
        for t in column(page, 5)[:n_overdue]
    ]
    assert days == sorted(days, reverse=True)
    # plain words, no identifiers: states, actions and doses as a clinician reads them
    states = column(page, 3)
    assert not any("_" in s for s in states), states
    assert not any(re.search(r"\binfuse_d\d|assess_response|record_", a) for a in column(page, 5))
    doses = [d for d in column(page, 7) if d != "–"]
    assert doses and all(
        re.fullmatch(r"\d\.\d × 10[⁰¹²³⁴⁵⁶⁷⁸⁹]+ cells \(\d+ % of plan\)", d) for d in doses
    ), doses
    per_kg = page.locator("#board .dose").first.get_attribute("title") or ""
    assert re.fullmatch(r"\d\.\d × 10[⁰¹²³⁴⁵⁶⁷⁸⁹]+ cells/kg", per_kg), per_kg
    # cells/kg by keyboard (issue 18): Tab from the row's patient link reaches the dose, which
    # then shows its cells/kg beside it (hidden when not focused) and describes itself with it
    row = page.locator("#board tbody tr", has=page.locator(".dose")).first
    first_dose = row.locator(".dose").first
    row.locator("th a").first.focus()
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.classList.contains('dose')"):
            break
    focused = page.evaluate(
        "() => ({text: document.activeElement.textContent, title: document.activeElement.title,"
        " shown: getComputedStyle(document.activeElement, '::after').content})"
    )
    assert focused["title"] == per_kg, focused
    assert focused["shown"] == f'"{per_kg}"', focused  # visible on focus
    assert "cells (" in focused["text"]
    shot(page, "board-dose-focus.png")
    assert axe_violations(page) == []
    page.evaluate("() => document.activeElement.blur()")
    unfocused = first_dose.evaluate("el => getComputedStyle(el, '::after').content")
    assert unfocused in ("none", "normal"), unfocused
    assert not any(re.search(r"\d{4}-\d{2}-\d{2}", d) for d in column(page, 10))  # no raw ISO
    shot(page, "board.png")
    assert axe_violations(page) == []

    # sort by state: the protocol's order, and the URL says so
    page.click("#board thead button[data-sort='state']")
    wait_rows(page, lambda: "sort=state" in page.url and "sorted by state" in status(page))
    labels = httpx.get(server.url + "/v1/protocol/labels", headers=_auth(server, "monitor"))
    order = list(labels.json()["states"].values())
    shown = column(page, 3)
    assert [order.index(s) for s in shown] == sorted(order.index(s) for s in shown)
    state_header = page.locator("#board thead th[data-col='state']")
    assert state_header.get_attribute("aria-sort") == "ascending"
    # due date, descending on the second click; patients without a due date last
    page.click("#board thead button[data-sort='due']")
    wait_rows(page, lambda: "sort=due" in page.url)
    page.click("#board thead button[data-sort='due']")
    wait_rows(page, lambda: "sort=-due" in page.url and "descending" in status(page))
    due = [_day(d) for d in column(page, 6)]
    dated = [d for d in due if d is not None]
    assert dated == sorted(dated, reverse=True)
    assert due == dated + [None] * (len(due) - len(dated))

    # a summary card filters, the URL keeps it, a reload shows the same
    card = page.locator("#cards button[data-flag='toxicity']")
    n_tox = int(card.locator("b").text_content() or "0")
    assert n_tox >= 1
    card.click()
    wait_rows(page, lambda: "toxicity=1" in page.url and "of 40 shown" in status(page))
    assert card.get_attribute("aria-pressed") == "true"
    assert page.locator("#board tbody tr").count() == n_tox
    assert page.locator("#board tbody tr:not(.toxicity)").count() == 0
    shown_ids = column(page, 1)
    page.reload()
    page.wait_for_selector("#board tbody tr")
    wait_rows(page, lambda: column(page, 1) == shown_ids)
    assert page.locator("#f-toxicity").is_checked()
    plural = "patient" if n_tox == 1 else "patients"
    assert status(page) == f"{n_tox} {plural} of 40 shown · sorted by due, descending"
    shot(page, "board-toxicity.png")

    # the CSV is the current filter, in the current order
    with page.expect_download() as download:
        page.click("#csv")
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["patient_id"] for r in rows] == shown_ids
    assert all(int(r["open_toxicities"]) > 0 for r in rows)
    assert rows[0]["state_label"] and "_" not in rows[0]["state_label"]

    # one patient: "1 patient", not "1 patients"
    page.click("#f-reset")
    wait_rows(page, lambda: status(page).startswith("40 patients"))
    page.fill("#f-text", "p-0001")
    wait_rows(page, lambda: "q=p-0001" in page.url and status(page).startswith("1 patient of 40"))
    assert column(page, 1) == ["P-0001"]


def test_a_monitor_sees_the_sites_and_filters_the_board_by_one(server: Server, page: Any) -> None:
    login(page, server, "monitor")
    page.wait_for_selector("#sites-table tbody tr")
    # the Sites panel: the demo's three sites, each with its counts (as /v1/counts/sites says)
    per_site = httpx.get(server.url + "/v1/counts/sites", headers=_auth(server, "monitor")).json()
    rows = page.locator("#sites-table tbody tr")
    assert [rows.nth(i).get_attribute("data-site") for i in range(rows.count())] == [
        "S01",
        "S02",
        "S03",
    ]
    s03 = page.locator("#sites-table tbody tr[data-site='S03']")
    cells = [(t or "").strip() for t in s03.locator("td").all_text_contents()]
    expected = per_site["S03"]
    assert cells[:3] == [
        str(expected["patients"]),
        str(expected["overdue_actions"]),
        str(expected["open_queries"]),
    ]
    assert "Tokyo Medical Center" in (s03.locator("th").text_content() or "")
    assert sum(v["patients"] for v in per_site.values()) == 40
    # the board's Site column: each row's site, its name on hover
    sites_shown = set(column(page, 2))
    assert sites_shown == {"S01", "S02", "S03"}, sites_shown
    assert page.locator("#board tbody td[data-site='S01']").first.get_attribute("title") == (
        "Paris University Hospital"
    )
    # a click on S03 filters the board to S03's patients; the URL and the Site filter keep it
    s03.locator("button").click()
    wait_rows(page, lambda: "site=S03" in page.url and "at site S03" in status(page))
    assert set(column(page, 2)) == {"S03"}
    assert page.locator("#board tbody tr").count() == expected["patients"]
    assert page.locator("#f-site").input_value() == "S03"
    assert s03.locator("button").get_attribute("aria-pressed") == "true"
    assert status(page).startswith(f"{expected['patients']} patients at site S03")
    # the cards count S03's patients only
    overdue_card = int(page.locator("#cards button[data-flag='overdue'] b").text_content() or "0")
    assert overdue_card == page.locator("#board tbody tr.overdue").count()
    # sorted by site, the filter stays
    page.click("#board thead button[data-sort='site']")
    wait_rows(page, lambda: "sort=site" in page.url and "sorted by site" in status(page))
    assert "site=S03" in page.url
    # the dates are in the browser's time zone (a trial-wide token), and the note says which
    assert "Times in your browser's time zone" in (page.locator("#view").text_content() or "")
    shot(page, "board-sites.png")
    assert axe_violations(page) == []
    # a reload shows the same
    page.reload()
    page.wait_for_selector("#board tbody tr")
    wait_rows(page, lambda: set(column(page, 2)) == {"S03"} and "at site S03" in status(page))
    assert page.locator("#f-site").input_value() == "S03"
    # the CSV asks for S03 and holds S03's patients only
    with (
        page.expect_request(lambda r: "/v1/board.csv" in r.url) as asked,
        page.expect_download() as download,
    ):
        page.click("#csv")
    assert "site=S03" in asked.value.url
    text = Path(download.value.path()).read_text()
    exported = list(csv.DictReader(io.StringIO(text)))
    assert len(exported) == expected["patients"]
    assert {r["site"] for r in exported} == {"S03"}
    # the Site select back to all sites: every patient again
    page.select_option("#f-site", "")
    wait_rows(page, lambda: "site=" not in page.url and status(page).startswith("40 patients"))


def test_a_site_limited_monitor_sees_its_site_in_its_time_zone(server: Server, page: Any) -> None:
    from zoneinfo import ZoneInfo

    issued = httpx.post(
        server.url + "/v1/tokens",
        json={"actor": "monitor.tokyo", "role": "monitor", "sites": ["S03"]},
        headers=_auth(server, "admin"),
    )
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]
    page.goto(server.url + "/")
    page.fill("#token", token)
    page.click("#login-form button")
    page.wait_for_selector("#sites-table tbody tr")
    page.wait_for_selector("#board tbody tr")
    assert (page.locator("#who-sites").text_content() or "").strip() == "site S03"
    # its site only: in the Sites panel, the Site filter and the board
    rows = page.locator("#sites-table tbody tr")
    assert [rows.nth(i).get_attribute("data-site") for i in range(rows.count())] == ["S03"]
    assert page.locator("#f-site option").all_text_contents() == [
        "all sites",
        "S03 · Tokyo Medical Center",
    ]
    assert set(column(page, 2)) == {"S03"}
    # times in the site's zone, and the note under the board says so
    note = page.locator("#view p.small").last.text_content() or ""
    assert "Times in the site's time zone (Asia/Tokyo)." in note
    first = page.locator("#board tbody tr").first.get_attribute("data-patient")
    board = httpx.get(
        server.url + "/v1/board?sort=attention", headers={"Authorization": f"Bearer {token}"}
    ).json()
    row = next(r for r in board if r["patient_id"] == first)
    when = dt.datetime.fromisoformat(row["last_occurred_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
    shown = page.locator("#board tbody tr").first.locator("td").last.text_content() or ""
    assert shown.strip() == f"{when.day} {when:%b %Y, %H:%M}"
    shot(page, "board-site-limited.png")
    assert axe_violations(page) == []


def _auth(server: Server, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.tokens[role]}"}


def _day(text: str) -> dt.date | None:
    return None if text in ("–", "") else dt.datetime.strptime(text, "%d %b %Y").date()


def test_board_keyboard_sort_and_card(server: Server, page: Any) -> None:
    login(page, server, "auditor")
    page.wait_for_selector("#board tbody tr")
    page.locator("#board thead button[data-sort='patient']").focus()
    page.keyboard.press("Enter")
    wait_rows(page, lambda: "sorted by patient" in status(page))
    ids = column(page, 1)
    assert ids == sorted(ids)
    page.keyboard.press("Enter")
    wait_rows(page, lambda: "sorted by patient, descending" in status(page))
    assert column(page, 1) == sorted(ids, reverse=True)
    page.locator("#cards button[data-flag='overdue']").focus()
    page.keyboard.press("Space")
    wait_rows(page, lambda: "overdue=1" in page.url and "of 40 shown" in status(page))
    assert page.locator("#board tbody tr:not(.overdue)").count() == 0
    assert page.locator("#board tbody tr.overdue").count() >= 1
    # the skip link is the first stop of the keyboard
    page.reload()
    page.wait_for_selector("#board tbody tr")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"


def test_board_updates_live_and_the_indicator_tells_the_truth(server: Server, page: Any) -> None:
    login(page, server, "monitor")
    page.wait_for_selector("#board tbody tr")
    page.wait_for_selector("#live.on")
    assert page.locator("#live").text_content() == "● live"
    r = httpx.post(
        server.url + "/v1/commands",
        json=screen_body("LIVE-1", payload={**screen_body("LIVE-1")["payload"], "site": "S01"}),
        headers=_auth(server, "clinician"),
    )
    assert r.status_code == 201, r.text
    page.wait_for_selector("#board tr[data-patient='LIVE-1']", timeout=10_000)
    shot(page, "board-live.png")
    # the stream ends (logged out): the indicator says so at once
    page.click("#logout")
    assert page.locator("#live").text_content() == "○ not live"


# -- the patient page ----------------------------------------------------------------------------


def test_patient_page_with_crs_summary_first(server: Server, page: Any) -> None:
    login(page, server, "auditor", "#/patient/P-0006")
    page.wait_for_selector("#timeline tbody tr")
    page.wait_for_selector("#diagram svg")
    # the clinical summary comes first, then the pictures, then the events
    headings = [h.strip() for h in page.locator("#p-body h2:visible").all_text_contents()]
    assert headings[0] == "Clinical summary"
    assert headings[-1] == "What happened"
    assert "eligible" in (page.locator("#eligibility").text_content() or "")
    # the live demo is recorded relative to the moment the server started: what the page must
    # show is read from the API, and its instants written in the page's (the browser's) zone
    summary = httpx.get(
        f"{server.url}/v1/patients/P-0006",
        headers={"Authorization": f"Bearer {server.tokens['auditor']}"},
    ).json()
    zone = ZoneInfo(page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone"))

    def day(text: str) -> str:  # "2026-09-25" or an instant -> "25 Sep 2026" in the page's zone
        when = dt.datetime.fromisoformat(text)
        if isinstance(when, dt.datetime) and when.tzinfo is not None:
            when = when.astimezone(zone)
        return f"{when.day} {when:%b %Y}"

    crs = next(t for t in summary["toxicities"] if t["id"] == "CRS-1")
    course = page.locator(".fractions tbody tr")
    d1 = [c.strip() for c in course.nth(0).locator("th, td").all_text_contents()]
    given = summary["courses"][0]["fractions"][0]["given_on"]
    assert d1[0] == "D1" and d1[1] == day(given) and d1[2].endswith("× 10⁶")
    assert d1[3].endswith("× 10⁵") and d1[4] == "105 %" and d1[5] == "LOT-P-0006"
    d3 = course.nth(2).text_content() or ""
    assert "not given: CRS grade >= 3 after D2: D3 withheld" in d3
    assert "Weight 68.8 kg" in (page.locator("#p-body").text_content() or "")
    tox = page.locator("#toxicities tbody tr").nth(0).text_content() or ""
    assert "Cytokine release syndrome (CRS)" in tox and f"grade 3 {day(crs['onset'])}" in tox
    assert f"resolved {day(crs['resolved_at'])}" in tox
    due = page.locator("#due").text_content() or ""
    # the next visit of the schedule (which one depends on the demo clock and the patient's site)
    assert re.search(r"Follow-up visit \((D28|M[0-9]+), window", due) and "_" not in due
    assert "Case other-1" in (page.locator("#sae").text_content() or "")
    # the diagram: this patient's path strong, the rest faint; the current state marked
    assert page.locator("#diagram g.node.current[data-state='discontinued']").count() == 1
    assert page.locator("#diagram path.edge.taken").count() == 5
    assert page.locator("#diagram path.edge:not(.taken)").count() >= 8
    path = page.locator("#path").text_content()
    assert path == (
        "Candidate (not yet screened) → Eligible (screened) → Apheresis done → D1 given (10 %) "
        "→ D2 given (30 %) → Treatment discontinued (toxicity)"
    )
    # the timeline reads as sentences, not JSON
    timeline = page.locator("#timeline").text_content() or ""
    assert "{" not in timeline and '":' not in timeline
    assert "Cytokine release syndrome (CRS) grade 3" in timeline
    assert "Reason: severe cytokine release syndrome (grade 3)" in timeline
    # the toxicity timeline: drawn inline when the server has the figure, else nothing shown
    figure = httpx.get(
        server.url + "/v1/patients/P-0006/figures/toxicity.svg", headers=_auth(server, "auditor")
    )
    if figure.status_code == 404:
        assert page.locator("#toxicity-timeline").is_hidden()
    else:
        assert figure.status_code == 200
        page.wait_for_selector("#toxicity-timeline svg")
        assert page.locator("#toxicity-timeline").is_visible()
    # an auditor may open the audit report
    assert page.locator("#report-link").is_visible()
    shot(page, "patient-crs.png")
    assert axe_violations(page) == []


def test_screen_failure_names_the_failed_criterion(server: Server, page: Any) -> None:
    login(page, server, "monitor", "#/patient/P-0007")
    page.wait_for_selector("#failed-criteria li")
    text = page.locator("#eligibility").text_content() or ""
    assert "not eligible" in text and "failed 1 criterion" in text
    assert page.locator("#failed-criteria").text_content() == (
        "Inclusion not met: KPS>80 (recorded: kps 70)"
    )
    assert page.locator("#report-link").count() == 0  # a monitor has no audit report link
    shot(page, "patient-screen-failed.png")


def test_toxicity_figure_and_queries_panel_plug_in_when_served(server: Server, page: Any) -> None:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50" role="img" '
        'aria-label="CRS grade by day"><rect id="fig" width="10" height="10"/></svg>'
    )
    seen: list[str | None] = []

    def figure(route: Any) -> None:
        seen.append(route.request.headers.get("authorization"))
        route.fulfill(status=200, content_type="image/svg+xml", body=svg)

    page.route("**/v1/patients/P-0006/figures/toxicity.svg", figure)
    page.route(
        "**/static/queries.js",
        lambda route: route.fulfill(
            status=200,
            content_type="text/javascript",
            body="window.cartQueries = {mount(el, o) { el.textContent = "
            "'queries for ' + o.patientId + ' as ' + o.role + (typeof o.api); }};",
        ),
    )
    login(page, server, "monitor", "#/patient/P-0006")
    page.wait_for_selector("#toxicity-timeline svg rect#fig")
    # every fetch of the figure carries the token (the page may draw it again on a live update)
    assert seen and set(seen) == {f"Bearer {server.tokens['monitor']}"}
    page.wait_for_function("() => document.querySelector('#queries').textContent.length > 0")
    assert page.locator("#queries").text_content() == "queries for P-0006 as monitorfunction"


def test_patient_terms_are_text_and_the_path_shows_state_changes_only(
    server: Server, page: Any
) -> None:
    from cart_course.demo import _Patient

    day1 = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
    p = _Patient("TERM-1", day1 - dt.timedelta(days=20), random.Random(7))
    p.screen()
    p.commands[0]["payload"]["site"] = "S01"  # serve --demo's trial has sites (issue 17)
    p.apheresis()
    p.infusion(1, days=day1.date().toordinal() - p.t.date().toordinal())
    for command in p.commands:
        body = {k: v for k, v in command.items() if k != "actor"}
        r = httpx.post(server.url + "/v1/commands", json=body, headers=_auth(server, "clinician"))
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
            headers=_auth(server, "clinician"),
        )
        assert r.status_code == 201, r.text
    csp: list[str] = []
    page.on(
        "console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None
    )
    login(page, server, "auditor", "#/patient/TERM-1")
    page.wait_for_selector("#timeline tbody tr")
    terms = page.locator("#toxicities tbody th").all_text_contents()
    assert "Other toxicity (<i>rash</i> & itch)" in terms  # shown as text, not markup
    assert "Other toxicity (fatigue)" in terms
    assert page.locator("#p-body i").count() == 0
    due = page.locator("#due").text_content() or ""
    assert "fractions are held until it resolves" in due
    assert (page.locator("#path").text_content() or "") == (
        "Candidate (not yet screened) → Eligible (screened) → Apheresis done → D1 given (10 %)"
    )
    shot(page, "patient-term.png")
    page.click("#report-link")
    page.wait_for_selector("#report h1")
    cells = page.locator("#report td").all_text_contents()
    assert "<i>rash</i> & itch" in cells
    assert page.locator("#report i").count() == 0
    assert csp == [], csp


# -- the audit report ----------------------------------------------------------------------------


def test_audit_report_is_a_readable_printable_page(server: Server, page: Any) -> None:
    login(page, server, "auditor", "#/patient/P-0006")
    page.click("#report-link")
    page.wait_for_selector("#report h1")
    assert "#/report/P-0006" in page.url
    assert page.locator("iframe").count() == 0
    assert (page.locator("#report h1").text_content() or "") == "Audit report: patient P-0006"
    text = page.locator("#report").text_content() or ""
    assert '{"' not in text and "..." not in text  # entered values in full, not raw JSON
    assert "creatinine: 1.0 mg/dL (upper limit 1.2 mg/dL)" in text
    assert "Treatment discontinued (toxicity)" in text
    assert "7.2 × 10⁶ cells, 105 % of 6.9 × 10⁶ planned (7,209,000)" in text
    assert page.locator("#print").is_visible()
    shot(page, "report.png")
    assert axe_violations(page) == []
    page.emulate_media(media="print")
    assert page.locator("header").is_hidden() and page.locator("#print").is_hidden()
    page.emulate_media(media="screen")


def test_a_monitor_sees_no_audit_report(server: Server, page: Any) -> None:
    login(page, server, "monitor", "#/patient/P-0006")
    page.wait_for_selector("#timeline tbody tr")
    assert page.locator("#report-link").count() == 0
    page.goto(server.url + "/#/report/P-0006")
    page.wait_for_selector("#report .error")
    assert "for auditor tokens" in (page.locator("#report .error").text_content() or "")


# -- admin and service tokens --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "heading", "where"),
    [
        ("admin", "This is an administrator's token", "cart-course tokens add ACTOR ROLE"),
        ("service", "This is a service token", "POST /v1/commands"),
    ],
)
def test_admin_and_service_tokens_are_told_what_they_are_for(
    server: Server, page: Any, role: str, heading: str, where: str
) -> None:
    login(page, server, role)
    page.wait_for_selector("#role-page h1")
    assert page.locator("#role-page h1").text_content() == heading
    assert where in (page.locator("#role-page").text_content() or "")
    assert page.locator("#role-page a[href='/schema']").count() == 1
    assert page.locator("#nav a").count() == 0  # no board link for this token
    assert page.locator("#live").text_content() == "○ not live"
    assert page.locator("#live.on").count() == 0
    assert axe_violations(page) == []
    shot(page, f"dashboard-{role}.png")


# -- 1,000 patients: page weight, first paint, interactive ---------------------------------------


@pytest.mark.slow
def test_board_of_1000_patients_weight_and_time_to_interactive(
    tmp_path: Path, browser: Any
) -> None:
    db = str(tmp_path / "big.sqlite")
    subprocess.run(
        [CLI, "demo", "--patients", "1000", "--json"],
        env={**os.environ, "CART_COURSE_DB": db},
        check=True,
        capture_output=True,
    )
    server = Server(db, free_port(), "--demo")
    try:
        warm = httpx.get(server.url + "/v1/board", headers=_auth(server, "monitor"), timeout=60)
        assert len(warm.json()) == 1000  # the views caught up, as on a running server
        figures = load_board(browser, server.url, server.tokens["monitor"])
    finally:
        server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "board-1000-performance.json").write_text(json.dumps(figures, indent=2))
    print("board of 1,000 patients:", json.dumps(figures))
    best = min(figures, key=lambda f: f["interactive_ms"])
    assert best["rows"] == 1000
    # the goal is < 1 s on this machine; the bound leaves room for a loaded shared CI machine
    assert best["interactive_ms"] < 3000, figures
    assert best["first_contentful_paint_ms"] is not None


def test_the_axe_check_finds_a_serious_violation_when_there_is_one(browser: Any) -> None:
    context = browser.new_context()
    pg = context.new_page()
    pg.set_content(
        "<html lang='en'><head><title>t</title></head><body><main>"
        "<p style='color:#bbb;background:#fff'>faint text</p><img src='x.png'></main></body></html>"
    )
    found = {v["id"] for v in axe_violations(pg)}
    context.close()
    assert {"color-contrast", "image-alt"} <= found, found
