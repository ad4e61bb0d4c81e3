"""Moves that do not change the state (internal transitions) take no state from their event: the
event's ``to_state`` is the state when it was recorded, which a replay leaving out events (the
audit's clinical as-of view) must not adopt."""

from __future__ import annotations

from typing import Any

from cart_course.protocol.machine import TRANSITIONS
from cart_course.protocol.record import STAYING_TRIGGERS, PatientRecord, evolve


def test_the_staying_moves_are_exactly_the_machines_internal_transitions() -> None:
    dests: dict[str, set[Any]] = {}
    for t in TRANSITIONS:
        dests.setdefault(str(t["trigger"]), set()).add(t["dest"])
    internal = {trigger for trigger, found in dests.items() if found == {"="}}
    assert {str(t) for t in STAYING_TRIGGERS} == internal
    assert internal  # report_toxicity, resolve_toxicity, cancel_remaining_fractions


def _move(record: PatientRecord, trigger: str, to_state: str, version: int, **kw: Any) -> None:
    evolve(
        record,
        trigger=trigger,
        to_state=to_state,
        facts=kw.get("facts", {}),
        outcome=kw.get("outcome", {}),
        occurred_at=kw.get("occurred_at", "2026-03-02T10:00:00+00:00"),
        version=version,
        protocol_version="1.0",
        reason=kw.get("reason"),
    )


_CRS = {
    "facts": {"toxicity": {"kind": "CRS"}, "toxicity_id": "CRS-1"},
    "outcome": {
        "toxicity_id": "CRS-1",
        "kind": "CRS",
        "grade": 1,
        "scale": "ASTCT",
        "scale_version": "2019",
        "severe": False,
        "opens_hold": False,
    },
}


def test_a_toxicity_report_replayed_without_the_later_move_keeps_the_replayed_state() -> None:
    """Recorded after D2 (to_state infused_d2), with an onset before it: a replay without D2."""
    record = PatientRecord(patient_id="P-1", state="infused_d1")
    _move(record, "report_toxicity", "infused_d2", 5, **_CRS)
    assert record.state == "infused_d1"
    assert record.version == 5 and record.toxicities["CRS-1"].open


def test_a_follow_up_report_replayed_before_the_end_of_treatment_does_not_end_it() -> None:
    record = PatientRecord(patient_id="P-1", state="assessed")
    _move(record, "report_toxicity", "ceased", 9, **_CRS)
    assert record.state == "assessed" and record.ended is None


def test_in_a_full_replay_the_state_and_end_are_as_before() -> None:
    record = PatientRecord(patient_id="P-1", state="assessed")
    _move(record, "cease", "ceased", 8, reason="CR", occurred_at="2026-03-01T10:00:00+00:00")
    assert record.ended == {
        "state": "ceased",
        "reason": "CR",
        "occurred_at": "2026-03-01T10:00:00+00:00",
    }
    _move(record, "report_toxicity", "ceased", 9, **_CRS)
    assert record.state == "ceased" and record.ended is not None
