"""The protocol's words: every state and command has them, the board's next actions read as
words, cell counts as people write them, and the board's sort is a total order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cart_course.protocol.labels import (
    ACTION_LABELS,
    DONE_LABELS,
    STATE_LABELS,
    cells_text,
    labels_document,
    next_action_label,
)
from cart_course.protocol.registry import REGISTRY
from cart_course.protocol.states import State
from cart_course.views.queries import BOARD_SORTS, sort_board


def test_every_state_and_command_has_words() -> None:
    assert set(STATE_LABELS) == set(State)
    names = set(REGISTRY.names) | {t for d in REGISTRY.definitions for t in d.triggers}
    assert names - set(ACTION_LABELS) == set(), "a command without words on the board"
    assert names - set(DONE_LABELS) == set(), "a command without words on the timeline"
    for text in [*STATE_LABELS.values(), *ACTION_LABELS.values(), *DONE_LABELS.values()]:
        assert "_" not in text and text[0].isupper(), text


@pytest.mark.parametrize(
    ("board", "words"),
    [
        ("assess_response", "Assess response"),
        ("infuse_d2", "Give D2, 30 % of the dose"),
        ("infuse_d1 (course 2)", "Give D1, 10 % of the dose (course 2)"),
        ("resolve_toxicity (fractions held)", "Resolve toxicity (fractions held)"),
        (
            "record_follow_up (M3, window 2026-12-01 to 2026-12-29)",
            "Follow-up visit (M3, window 2026-12-01 to 2026-12-29)",
        ),
        (
            "record_sae_report (CRS-1 initial, due 2026-10-05T08:12:00+00:00)",
            "Send SAE report (CRS-1 initial, due 2026-10-05T08:12:00+00:00)",
        ),
        ("decide: continue_treatment, cease or discontinue", ACTION_LABELS["decide"]),
        ("lost to follow-up", "Lost to follow-up"),
        (None, None),
    ],
)
def test_the_boards_next_action_in_words(board: str | None, words: str | None) -> None:
    assert next_action_label(board) == words


def test_an_unknown_command_still_reads_as_words() -> None:
    assert next_action_label("record_capd (due 2026-01-01)") == "Record capd (due 2026-01-01)"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (55_000_000, "5.5 × 10⁷"),
        (9_960_000, "1.0 × 10⁷"),
        (1e6, "1.0 × 10⁶"),
        (0, "0"),
        (None, "-"),
    ],
)
def test_cells_as_people_write_them(n: float | None, text: str) -> None:
    assert cells_text(n) == text


def test_the_document_names_every_criterion() -> None:
    doc = labels_document()
    assert doc["criteria"]["kps"] == {"kind": "inclusion", "text": "KPS>80", "inputs": ["kps"]}
    assert doc["responses"]["CRi"].endswith("(CRi)")


rows = st.lists(
    st.fixed_dictionaries(
        {
            "patient_id": st.text("PQ0123", min_size=1, max_size=4),
            "site": st.one_of(st.none(), st.sampled_from(["S00", "S01", "S03"])),
            "state": st.sampled_from([s.value for s in State]),
            "course_number": st.one_of(st.none(), st.integers(0, 3)),
            "next_action": st.one_of(
                st.none(),
                st.sampled_from(["assess_response", "infuse_d2", "record_sae_report (x)"]),
            ),
            "due_on": st.one_of(st.none(), st.sampled_from(["2026-01-02", "2026-03-04"])),
            "delivered_cells": st.one_of(st.none(), st.floats(0, 1e8)),
            "planned_cells": st.one_of(st.none(), st.floats(1, 1e8)),
            "open_toxicities": st.integers(0, 2),
            "max_open_grade": st.one_of(st.none(), st.integers(1, 4)),
            "response": st.one_of(st.none(), st.sampled_from(["CR", "NR"])),
            "last_occurred_at": st.one_of(st.none(), st.just("2026-01-01T00:00:00+00:00")),
            "days_overdue": st.integers(0, 5),
            "severe_open": st.booleans(),
            "hold": st.booleans(),
        }
    ),
    max_size=12,
    unique_by=lambda r: r["patient_id"],
)


@given(rows, st.sampled_from(sorted(BOARD_SORTS)))
def test_sorting_keeps_every_row_orders_them_and_puts_empty_values_last(
    data: list[dict[str, Any]], sort: str
) -> None:
    key = BOARD_SORTS[sort]
    up = sort_board(data, sort)
    down = sort_board(data, "-" + sort)
    ids = sorted(r["patient_id"] for r in data)
    assert sorted(r["patient_id"] for r in up) == ids == sorted(r["patient_id"] for r in down)
    assert [key(r) for r in up] == sorted(key(r) for r in data)

    def empty(r: dict[str, Any]) -> bool:
        k = key(r)
        return isinstance(k, tuple) and len(k) == 2 and k[0] == 1

    present = [key(r) for r in down if not empty(r)]
    assert present == sorted(present, reverse=True)
    flags = [empty(r) for r in down]
    assert flags == sorted(flags)  # the empty ones last


def test_the_board_sorts_by_site_and_by_patient_within_a_site() -> None:
    rows_ = [
        {"patient_id": "P-3", "site": "S03"},
        {"patient_id": "P-1", "site": "S01"},
        {"patient_id": "P-4", "site": None},
        {"patient_id": "P-2", "site": "S03"},
    ]
    up = [(r["site"], r["patient_id"]) for r in sort_board(rows_, "site")]
    assert up == [("S01", "P-1"), ("S03", "P-2"), ("S03", "P-3"), (None, "P-4")]
    down = [(r["site"], r["patient_id"]) for r in sort_board(rows_, "-site")]
    assert down == [("S03", "P-2"), ("S03", "P-3"), ("S01", "P-1"), (None, "P-4")]
