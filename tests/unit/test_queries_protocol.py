"""The data-query decisions as pure code: what each step records, and each refusal's field and
words (the service records nothing when one is raised)."""

from __future__ import annotations

from typing import Any

import pytest

from cart_course.protocol.errors import ProtocolInputError, RecordConflictInputError
from cart_course.protocol.queries import (
    decide_answer,
    decide_close,
    decide_open,
    decide_reopen,
    evolve_query,
    field_paths,
)
from cart_course.protocol.record import PatientRecord

INFUSION = {
    "payload": {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}, "product_lot": "L-1"},
    "occurred_at": "2026-01-23T09:30:00+01:00",
}


def lookup(version: int) -> tuple[str, Any] | None:
    return {
        6: ("InfusionGiven", INFUSION),
        7: ("InfusionGiven", INFUSION),
        8: ("FactCorrected", {"corrects": 6, "changes": {"cells": 1}}),
        9: ("FactCorrected", {"corrects": 7, "changes": {"cells": 1}}),
    }.get(version)


def _record(status: str | None = None) -> PatientRecord:
    record = PatientRecord(patient_id="P-1", version=10)
    if status is not None:
        evolve_query(
            record, action="open", query_id="Q-10", status="open", text="?", on_version=7,
            field="payload.cells", correction=None, rule=None, actor="cra", role="monitor",
            reason=None, occurred_at="2026-02-01T00:00:00+00:00",
            recorded_at="2026-02-01T00:00:00+00:00", version=10,
        )  # fmt: skip
        record.queries["Q-10"]["status"] = status
    return record


def test_a_query_on_a_field_names_the_version_and_path_and_gets_the_next_version_as_id() -> None:
    change = decide_open(
        _record(),
        {"text": "D2 cells?", "on_version": 7, "field": "payload.cells.value"},
        10,
        lookup,
    )
    assert (change.query_id, change.on_version, change.field, change.status) == (
        "Q-11",
        7,
        "payload.cells.value",
        "open",
    )


def test_a_field_the_event_does_not_have_lists_the_fields_it_has() -> None:
    assert field_paths(INFUSION) == [
        "payload",
        "payload.day",
        "payload.cells",
        "payload.cells.value",
        "payload.cells.unit",
        "payload.product_lot",
        "occurred_at",
    ]
    with pytest.raises(RecordConflictInputError) as info:
        decide_open(
            _record(), {"text": "?", "on_version": 7, "field": "payload.weight"}, 10, lookup
        )
    assert info.value.field == "payload.field"
    assert "payload.cells.value, payload.cells.unit, payload.product_lot" in info.value.message
    with pytest.raises(ProtocolInputError) as info:
        decide_open(_record(), {"text": "?", "field": "payload.cells"}, 10, lookup)
    assert info.value.field == "payload.on_version"


@pytest.mark.parametrize(
    ("status", "step", "field", "words"),
    [
        ("answered", "answer", "payload.query_id", "waits for the monitor"),
        ("closed", "answer", "payload.query_id", "re-opens it"),
        ("closed", "close", "payload.query_id", "closed already"),
        ("open", "close", "reason", "not answered"),
        ("reopened", "reopen", "payload.query_id", "waits for the site"),
    ],
)
def test_a_step_the_status_does_not_allow_is_refused(
    status: str, step: str, field: str, words: str
) -> None:
    record = _record(status)
    with pytest.raises(ProtocolInputError) as info:
        if step == "answer":
            decide_answer(record, {"query_id": "Q-10", "text": "x"}, 10, lookup)
        elif step == "close":
            decide_close(record, {"query_id": "Q-10"}, None)
        else:
            decide_reopen(record, {"query_id": "Q-10", "text": "again"})
    assert info.value.field == field and words in info.value.message


def test_an_answer_names_only_a_correction_and_a_close_with_reason_needs_no_answer() -> None:
    with pytest.raises(RecordConflictInputError) as info:
        decide_answer(
            _record("open"), {"query_id": "Q-10", "text": "x", "correction": 7}, 10, lookup
        )
    assert "InfusionGiven, not a correction" in info.value.message
    answer = decide_answer(
        _record("open"), {"query_id": "Q-10", "text": "fixed", "correction": 9}, 10, lookup
    )
    assert (answer.status, answer.correction) == ("answered", 9)
    # a correction of another event than the one the query is about (v8 corrects v6)
    with pytest.raises(RecordConflictInputError) as info:
        decide_answer(
            _record("open"), {"query_id": "Q-10", "text": "x", "correction": 8}, 10, lookup
        )
    assert info.value.field == "payload.correction"
    assert "corrects version 6" in info.value.message and "about version 7" in info.value.message
    closed = decide_close(_record("open"), {"query_id": "Q-10"}, "found in the binder")
    assert closed.status == "closed"
