"""``correct`` and ``sign`` are pure protocol decisions (``protocol/corrections.py``,
``protocol/signatures.py``): decided on a record and its history as plain data, without a store,
an aggregate or a clock."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from cart_course.demo import eligible_screening
from cart_course.protocol.commands import prepare
from cart_course.protocol.corrections import (
    RecordedCorrection,
    RecordedMove,
    decide_correction,
)
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.signatures import SignerNotPermittedError, decide_signature
from cart_course.protocol.versions import CURRENT

STEPS: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("screen", "2026-01-05T09:00:00+00:00", {}, None),
    (
        "record_apheresis",
        "2026-01-08T09:00:00+00:00",
        {"apheresis_contraindication": False},
        None,
    ),
    (
        "give_infusion",
        "2026-01-22T09:00:00+00:00",
        {
            "day": 1,
            "cells": {"value": 7e6, "unit": "cells"},
            "weight": {"value": 70, "unit": "kg"},
        },
        None,
    ),
    ("withdraw", "2026-01-23T09:00:00+00:00", {}, "consent withdrawn"),
]


def _patient() -> tuple[PatientRecord, list[RecordedMove]]:
    """A patient recorded by the pure protocol alone: screened, apheresed, D1, withdrawn."""
    record = PatientRecord(patient_id="D-1", version=1)
    history = []
    for command, when, payload, reason in STEPS:
        if command == "screen":
            payload = {"screening": eligible_screening(random.Random(1))}
        occurred = dt.datetime.fromisoformat(when)
        prepared = prepare(record, command, payload, occurred, reason, CURRENT)
        prepared.apply_to(record, occurred_at=when, protocol_version=CURRENT.id, reason=reason)
        history.append(
            RecordedMove(
                version=record.version,
                command=command,
                trigger=prepared.trigger,
                from_state=prepared.from_state,
                to_state=prepared.to_state,
                payload=prepared.payload,
                facts=prepared.facts,
                protocol_version=CURRENT.id,
                occurred_at=when,
            )
        )
    return record, history


def _time(value: Any, field: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def test_a_correction_is_decided_on_the_record_and_its_history() -> None:
    record, history = _patient()
    d1 = history[2]
    correction = decide_correction(
        record,
        history,
        {"corrects": d1.version, "changes": {"cells": {"value": 8e6, "unit": "cells"}}},
        "bag label misread",
        record.version,
        _time,
    )
    assert correction.corrects == d1.version and correction.trigger == "infuse_d1"
    assert correction.outcome["cells"] == 8e6
    assert correction.facts["cells"] == 8e6 and correction.protocol_version == CURRENT.id
    assert correction.findings == []  # +14 % of the plan: within tolerance
    assert correction.result_outcome()["corrects"] == d1.version


def test_a_later_correction_starts_from_the_last_corrected_payload() -> None:
    record, history = _patient()
    d1 = history[2]
    corrected = {**d1.payload, "product_lot": "LOT-9"}
    earlier = RecordedCorrection(
        version=record.version + 1, corrects=d1.version, payload=corrected, facts=d1.facts
    )
    correction = decide_correction(
        record,
        [*history, earlier],
        {"corrects": d1.version, "changes": {"deviation_reason": "pharmacy note"}},
        "add the note",
        record.version + 1,
        _time,
    )
    assert correction.payload["product_lot"] == "LOT-9"
    assert correction.payload["deviation_reason"] == "pharmacy note"


@pytest.mark.parametrize(
    ("payload", "reason", "field", "message"),
    [
        ({"corrects": 4, "changes": {"cells": 1}, "x": 1}, "r", "payload.x", "unknown key"),
        ({"corrects": 4, "changes": {"cells": 1}}, None, "reason", "needs a reason"),
        ({"corrects": 99, "changes": {"cells": 1}}, "r", "payload.corrects", "(1..5)"),
        ({"corrects": 4, "changes": {}}, "r", "payload.changes", "non-empty object"),
        (
            {"corrects": 5, "changes": {"cells": 1}},
            "r",
            "payload.corrects",
            "version 5 is not a correctable move; correctable: screen, rescreen, ",
        ),
        (
            {"corrects": 4, "changes": {"day": 2}},
            "r",
            "payload.changes.day",
            "cannot be corrected on give_infusion; correctable keys: cells, deviation_reason, "
            "occurred_at, pre_infusion, product_lot, weight",
        ),
        (
            {"corrects": 4, "changes": {"cells": {"value": -1, "unit": "cells"}}},
            "r",
            "payload.changes.cells",
            "",
        ),
    ],
)
def test_a_correction_is_refused_naming_the_field(
    payload: dict[str, Any], reason: str | None, field: str, message: str
) -> None:
    record, history = _patient()
    assert record.version == 5 and history[2].version == 4
    with pytest.raises(ProtocolInputError) as refused:
        decide_correction(record, history, payload, reason, record.version, _time)
    assert refused.value.field.startswith(field)
    assert message in refused.value.message


def test_a_signature_is_decided_on_what_the_signed_version_recorded() -> None:
    asked: list[int] = []

    def signed(version: int) -> tuple[str, str] | None:
        asked.append(version)
        return {2: ("screen", "h2"), 3: ("record_apheresis", "h3")}.get(version)

    payload = {
        "milestone": "eligibility",
        "signs_version": 2,
        "meaning": "approval",
        "printed_name": "Dr. K. Lee",
    }
    signature = decide_signature(payload, "clinician", 5, signed, "Dr. K. Lee")
    assert signature.signed_hash == "h2" and signature.outcome() == {
        "milestone": "eligibility",
        "signs_version": 2,
        "meaning": "approval",
    }
    with pytest.raises(ProtocolInputError, match="version 3 is not a eligibility milestone"):
        decide_signature({**payload, "signs_version": 3}, "clinician", 5, signed, "Dr. K. Lee")
    assert asked == [2, 3]
    with pytest.raises(SignerNotPermittedError, match="a service may not sign"):
        decide_signature(payload, "service", 5, signed, "Dr. K. Lee")
    with pytest.raises(ProtocolInputError) as refused:
        decide_signature({**payload, "meaning": "maybe"}, "clinician", 5, signed, "Dr. K. Lee")
    assert refused.value.field == "payload.meaning"
    with pytest.raises(ProtocolInputError) as refused:
        decide_signature({**payload, "signs_version": 6}, "clinician", 5, signed, "Dr. K. Lee")
    assert refused.value.field == "payload.signs_version"
    assert asked == [2, 3]  # a malformed signature never asks what a version recorded
    # The printed name is the signer's registered name, and a signer needs one.
    for registered in ("Dr. K. Leigh", None):
        with pytest.raises(ProtocolInputError) as refused:
            decide_signature(payload, "clinician", 5, signed, registered, actor="dr.lee")
        assert refused.value.field == "payload.printed_name"
        assert (
            "registered name 'Dr. K. Leigh'" if registered else "dr.lee has no registered"
        ) in refused.value.message
    assert asked == [2, 3]
