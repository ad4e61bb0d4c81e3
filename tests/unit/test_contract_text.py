"""Texts of a command must be Unicode: a lone surrogate (which ``json.loads`` accepts from
``"\\ud800"``) is refused at the boundary with the field named, never a crash later on."""

from __future__ import annotations

from typing import Any

import pytest

from cart_course.contract import parse_command
from cart_course.errors import InvalidCommandError

BASE: dict[str, Any] = {
    "command": "withdraw",
    "patient_id": "P-1",
    "occurred_at": "2026-01-05T10:00:00Z",
    "actor": {"id": "dr.a", "role": "clinician"},
    "reason": "consent withdrawn",
    "payload": {},
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"reason": "x\ud800"}, "reason"),
        ({"idempotency_key": "k-\udfff"}, "idempotency_key"),
        ({"actor": {"id": "dr.\ud800", "role": "clinician"}}, "actor.id"),
        ({"actor": {"id": "dr.a", "role": "clinician", "name": "A\ud800"}}, "actor.name"),
        ({"payload": {"notes": {"list": ["fine", "bad \udc00"]}}}, "payload.notes.list[1]"),
        ({"payload": {"k\ud800": 1}}, "payload (a key)"),
    ],
)
def test_a_lone_surrogate_is_refused_with_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, **change})
    assert caught.value.field == field
    assert "valid Unicode" in caught.value.message


def test_any_unicode_text_is_accepted() -> None:
    command = parse_command({**BASE, "reason": "Rückzug 撤回 🧬", "idempotency_key": "ключ"})
    assert command.reason == "Rückzug 撤回 🧬"
    assert len(command.digest) == 64
