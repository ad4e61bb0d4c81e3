"""The board as the dashboard asks for it: its order (needs attention first, every column), its
filters, its CSV (the same rows in the same order), the protocol's words and who is logged in."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_support import Stack, stack
from litestar.testing import TestClient

from cart_course.contract import parse_command
from cart_course.demo import live_cohort
from cart_course.protocol.labels import STATE_LABELS
from cart_course.protocol.states import State
from cart_course.views.queries import BOARD_SORTS


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, TestClient[Any]]]:
    url = str(tmp_path_factory.mktemp("board") / "board.sqlite")
    with stack(url) as s, TestClient(s.app) as client:
        # the cohort of `serve --demo`: in progress today (due, overdue, open toxicity)
        now = dt.datetime.now(dt.UTC)
        s.service.execute_batch([parse_command(c) for c in live_cohort(40, 1, now)])
        yield s, client


def board(api: tuple[Stack, TestClient[Any]], query: str = "") -> list[dict[str, Any]]:
    s, client = api
    r = client.get("/v1/board" + query, headers=s.auth("monitor"))
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def test_needs_attention_first(api: tuple[Stack, TestClient[Any]]) -> None:
    rows = board(api, "?sort=attention")
    flags = [
        (r["days_overdue"] > 0, r["severe_open"] or r["hold"], r["open_toxicities"] > 0)
        for r in rows
    ]
    overdue = [r for r in rows if r["overdue"]]
    assert overdue and rows[: len(overdue)] == overdue  # overdue first
    days = [r["days_overdue"] for r in overdue]
    assert days == sorted(days, reverse=True)
    rest = flags[len(overdue) :]
    severe = [f for f in rest if f[1]]
    assert rest[: len(severe)] == severe  # then severe toxicity or fractions held
    assert len(rows) == 40


@pytest.mark.parametrize("sort", sorted(BOARD_SORTS))
def test_every_column_sorts_both_ways_with_empty_values_last(
    api: tuple[Stack, TestClient[Any]], sort: str
) -> None:
    up = board(api, f"?sort={sort}")
    down = board(api, f"?sort=-{sort}")
    assert sorted(r["patient_id"] for r in up) == sorted(r["patient_id"] for r in down)
    key = BOARD_SORTS[sort]
    keys = [key(r) for r in up]
    assert keys == sorted(keys)
    if sort in ("due", "response", "dose"):
        empty = [r["patient_id"] for r in up if key(r)[0] == 1]
        assert empty and [r["patient_id"] for r in up[-len(empty) :]] == sorted(empty)
        assert {r["patient_id"] for r in down[-len(empty) :]} == set(empty)


def test_next_actions_sort_by_their_words(api: tuple[Stack, TestClient[Any]]) -> None:
    shown = [r["next_action_label"] for r in board(api, "?sort=next_action") if r["next_action"]]
    assert shown == sorted(shown, key=str.lower)


def test_states_sort_in_the_protocols_order(api: tuple[Stack, TestClient[Any]]) -> None:
    order = [s.value for s in State]
    shown = [order.index(r["state"]) for r in board(api, "?sort=state")]
    assert shown == sorted(shown)


def test_filters_combine_and_name_a_bad_value(api: tuple[Stack, TestClient[Any]]) -> None:
    s, client = api
    awaiting = board(api, "?awaiting=true")
    assert awaiting and all(r["next_action"] == "assess_response" for r in awaiting)
    assert all(r["hold"] for r in board(api, "?hold=true"))
    assert [r["patient_id"] for r in board(api, "?q=p-001")] == [f"P-001{i}" for i in range(10)]
    both = board(api, "?toxicity=true&state=discontinued")
    assert both and all(r["open_toxicities"] and r["state"] == "discontinued" for r in both)
    r = client.get("/v1/board?sort=colour", headers=s.auth("monitor"))
    assert r.status_code == 422 and r.json()["field"] == "query.sort"
    assert "due" in r.json()["message"]
    r = client.get("/v1/board?sort=due&after=P-0003", headers=s.auth("monitor"))
    assert r.status_code == 422 and r.json()["field"] == "query.after"


def test_counts_say_what_needs_action_as_the_filters_find_it(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = api
    attention = client.get("/v1/counts", headers=s.auth("monitor")).json()["attention"]
    assert attention["overdue"] == len(board(api, "?overdue=true")) > 0
    assert attention["open_toxicity"] == len(board(api, "?toxicity=true")) > 0
    assert attention["hold"] == len(board(api, "?hold=true"))
    assert attention["awaiting_assessment"] == len(board(api, "?awaiting=true")) > 0
    sae = board(api, "?sae=true")
    assert attention["sae_report_due"] == len(sae)
    assert all(r["next_action"].startswith("record_sae_report (") for r in sae)


def test_rows_carry_the_protocols_words_and_cells_per_kg(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    rows = board(api)
    for r in rows:
        assert r["state_label"] == STATE_LABELS[r["state"]]
        assert "_" not in (r["next_action_label"] or "")
    dosed = [r for r in rows if r["delivered_cells"]]
    assert dosed
    for r in dosed:  # the plan is 1e6 cells/kg: cells/kg = delivered / plan * 1e6
        assert r["delivered_cells_per_kg"] == pytest.approx(
            r["delivered_cells"] / r["planned_cells"] * 1e6
        )


def test_csv_is_the_current_filter_in_the_current_order(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = api
    query = "?toxicity=true&sort=-dose"
    rows = board(api, query)
    r = client.get("/v1/board.csv" + query, headers=s.auth("auditor"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [t["patient_id"] for t in table] == [row["patient_id"] for row in rows]
    first = table[0]
    assert first["state_label"] == rows[0]["state_label"]
    assert first["hold"] in ("true", "false")
    share = round(100 * rows[0]["delivered_cells"] / rows[0]["planned_cells"])
    assert first["percent_of_plan"] == str(share)
    assert client.get("/v1/board.csv", headers=s.auth("admin")).status_code == 403


def test_the_board_is_gzipped_for_a_client_that_accepts_it(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = api
    r = client.get("/v1/board", headers={**s.auth("monitor"), "Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and len(r.json()) == 40
    other = client.get(
        "/v1/patients/P-0001/history", headers={**s.auth("monitor"), "Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in other.headers


def test_labels_and_who_am_i(api: tuple[Stack, TestClient[Any]]) -> None:
    s, client = api
    labels = client.get("/v1/protocol/labels", headers=s.auth("monitor")).json()
    assert labels["states"]["infused_d1"] == "D1 given (10 %)"
    assert labels["criteria"]["kps"]["text"] == "KPS>80"
    expected = {
        "admin": {"may_admin"},
        "service": {"may_read_patients", "may_record"},
        "clinician": {"may_view_board", "may_read_patients", "may_record"},
        "monitor": {"may_view_board", "may_read_patients", "may_read_metrics"},
        "auditor": {"may_view_board", "may_read_patients", "may_audit", "may_read_metrics"},
    }
    for role, may in expected.items():
        me = client.get("/v1/me", headers=s.auth(role)).json()
        assert me["role"] == role and me["actor"] == f"{role}.tester"
        granted = {k for k, v in me.items() if k.startswith("may_") and v}
        assert granted == may | ({"may_read_metrics"} if role == "admin" else set()), role
    assert client.get("/v1/me").status_code == 401


def test_the_dashboards_files_are_in_the_package() -> None:
    static = Path(__file__).resolve().parents[2] / "cart_course" / "http" / "static"
    assert (static / "vendor" / "dagre-1.1.4" / "dagre.min.js").stat().st_size > 50_000
    assert "MIT" in (static / "vendor" / "dagre-1.1.4" / "LICENSE").read_text()
