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


@pytest.mark.parametrize(
    "char", ["\x00", "\r", "\x1b", "\u2028", "\u2029", "\u202e", "\u202d", "\u2066", "\u061c"]
)
def test_a_reason_with_a_control_or_bidi_override_character_is_refused(char: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, "reason": f"consent {char}withdrawn"})
    assert caught.value.field == "reason"
    assert f"U+{ord(char):04X}" in caught.value.message and "position 8" in caught.value.message


def test_a_reason_may_hold_line_feeds_tabs_and_any_script() -> None:
    reason = "consent withdrawn\n\tby phone: \u0645\u0648\u0627\u0641\u0642\u0629 \u200c ok"
    assert parse_command({**BASE, "reason": reason}).reason == reason


def test_free_text_in_a_payload_is_refused_the_same_way() -> None:
    from cart_course.protocol.building_blocks import _text
    from cart_course.protocol.errors import ProtocolInputError

    with pytest.raises(ProtocolInputError) as caught:
        _text({"cause": "sepsis\u202e"}, "cause")
    assert caught.value.field == "payload.cause" and "U+202E" in caught.value.message


@pytest.mark.parametrize(
    ("when", "says"),
    [
        ("1899-12-31T23:59:59Z", "before 1900"),
        ("0001-01-01T00:00:00Z", "before 1900"),
        ("2026-01-05T10:00:00+14:01", "UTC offset +14:01"),
        ("2026-01-05T10:00:00-23:59", "UTC offset -23:59"),
        ("2026-01-05T10:00:00.5+15:00", "UTC offset +15:00"),
    ],
)
def test_a_time_outside_the_plausible_window_is_refused(when: str, says: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, "occurred_at": when})
    assert caught.value.field == "occurred_at" and says in caught.value.message


@pytest.mark.parametrize(
    "when", ["1900-01-01T00:00:00Z", "2026-01-05T10:00:00+14:00", "2026-01-05T10:00:00-12:00"]
)
def test_a_time_at_the_edges_of_the_window_is_accepted(when: str) -> None:
    assert parse_command({**BASE, "occurred_at": when}).occurred_at.year >= 1900


@pytest.mark.parametrize("actor_id", ["system:query-rules", "System:Query-Rules", " system:x"])
def test_no_command_or_token_may_act_as_the_system(actor_id: str, tmp_path: Any) -> None:
    """The query rules record as ``system:query-rules`` and tell their own steps by that
    prefix: a person taking it (by a command's actor or a token's) could pass a monitor's close
    off as the rules'. Refused at both doors, naming the field."""
    from cart_course.tokens import SQLiteTokenStore

    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, "actor": {"id": actor_id, "role": "clinician"}})
    assert caught.value.field == "actor.id"
    assert "the system's own" in caught.value.message
    store = SQLiteTokenStore(str(tmp_path / "tokens.sqlite"))
    try:
        with pytest.raises(InvalidCommandError) as caught:
            store.add(actor_id, "monitor")
        assert caught.value.field == "actor"
        assert store.list() == []
    finally:
        store.close()


def test_a_token_row_written_into_the_database_as_the_system_is_refused(tmp_path: Any) -> None:
    """A database writer inserts a token row naming ``system:query-rules`` (``tokens add``
    would refuse it) to record steps that pass for the query rules': authentication refuses
    it, naming the token to revoke; an ordinary token of the same store still works."""
    import sqlite3

    from cart_course.access import authenticate
    from cart_course.errors import UnauthenticatedError
    from cart_course.tokens import COLUMNS, SQLiteTokenStore, hash_token

    path = tmp_path / "tokens.sqlite"
    store = SQLiteTokenStore(str(path))
    try:
        _, ordinary = store.add("cra.kim", "monitor")
        minted = "cc_minted_by_the_database_writer_0123456789abcdef"
        digest = hash_token(minted)
        conn = sqlite3.connect(path)
        conn.execute(
            f"INSERT INTO cart_course_tokens ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            (digest[:12], digest, "system:query-rules", "monitor", None,
             "2026-12-07T09:00:00+00:00", "dba", None, None),
        )  # fmt: skip
        conn.commit()
        conn.close()
        with pytest.raises(UnauthenticatedError) as caught:
            authenticate(store, minted)
        assert "system's own actor" in str(caught.value) and digest[:12] in str(caught.value)
        assert authenticate(store, ordinary).actor == "cra.kim"
    finally:
        store.close()
