"""The contract reads exactly what it documents: date-times of one form (RFC 3339, the JSON
Schema's pattern), integers that are integers, the reasons some commands always need, and key
names shown so that an error stays one readable line."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.contract import (
    MAX_VERSION,
    REASON_ALWAYS_REQUIRED,
    TIME_PATTERN,
    TIME_SCHEMA_PATTERN,
    parse_command,
    parse_expected_version,
    parse_time,
)
from cart_course.errors import InvalidCommandError
from cart_course.protocol.commands import trigger_for
from cart_course.protocol.errors import ProtocolInputError, key_name
from cart_course.schemas import SCHEMAS

BASE: dict[str, Any] = {
    "command": "withdraw",
    "patient_id": "P-1",
    "occurred_at": "2026-01-05T10:00:00Z",
    "actor": {"id": "dr.a", "role": "clinician"},
    "reason": "consent withdrawn",
    "payload": {},
}
SCHEMA_PATTERN = re.compile(
    SCHEMAS["withdraw"]["properties"]["occurred_at"]["pattern"].removeprefix("^").removesuffix("$"),
    re.ASCII,
)

# -- date-times ---------------------------------------------------------------------------------

ACCEPTED = [
    ("2026-03-02T09:30:00+01:00", dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)),
    ("2026-03-02T08:30:00Z", dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)),
    ("2026-03-02T08:30Z", dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)),
    ("2026-03-02T03:30-05:00", dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)),
    ("2026-03-02T08:30:00.250Z", dt.datetime(2026, 3, 2, 8, 30, 0, 250000, tzinfo=dt.UTC)),
    ("2026-03-02T08:30:00.5+00:00", dt.datetime(2026, 3, 2, 8, 30, 0, 500000, tzinfo=dt.UTC)),
    ("2026-03-02T08:30:00-00:00", dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)),
    ("2026-03-02T23:59:59+14:00", dt.datetime(2026, 3, 2, 9, 59, 59, tzinfo=dt.UTC)),
]
REFUSED = [
    "2026-W02-5x09:00:00+01:00:30",  # a week date, an offset with seconds
    "2026-W02-5T09:00:00+01:00",  # a week date
    "2026-009T09:00:00+01:00",  # an ordinal date
    "20260110T090000+0100",  # ISO 8601's basic format
    "2026-01-10T090000+01:00",
    "2026-01-10T09:00:00+0100",  # an offset without its colon
    "2026-01-10T09:00:00+01",  # hours only
    "2026-01-10T09:00:00+01:00:30",  # seconds in the offset
    "2026-01-09\n09:00:00+01:00",  # a line break for the T
    "2026-01-09 09:00:00+01:00",  # a space for the T
    "2026-01-09t09:00:00+01:00",
    "2026-01-09T09:00:00z",
    "2026-01-09T09:00:00+01:00\n",  # a trailing line break
    " 2026-01-09T09:00:00+01:00",
    "2026-01-09T09+01:00",  # hours only
    "2026-01-09T09:00:00.+01:00",
    "2026-01-09T09:00:00,5+01:00",  # a decimal comma
    "2026-01-09",  # a date
    "2026-01-09T09:00:00",  # no offset
    "2026-01-09T09:00:00.5",
    "２０２６-01-09T09:00:00+01:00",  # digits that are not ASCII
    "2026-13-09T09:00:00Z",  # the form is right, the month is not
    "2026-02-30T09:00:00Z",
    "2026-01-09T24:00:00Z",
    "2026-01-09T09:60:00Z",
    "2026-01-09T09:00:00+24:00",
    "",
]


@pytest.mark.parametrize(("text", "instant"), ACCEPTED)
def test_the_documented_form_is_read(text: str, instant: dt.datetime) -> None:
    parsed = parse_time(text, "occurred_at")
    assert parsed == instant
    assert parsed.utcoffset() is not None
    assert SCHEMA_PATTERN.fullmatch(text)


@pytest.mark.parametrize("text", REFUSED)
def test_any_other_form_is_refused_naming_the_form(text: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_time(text, "occurred_at")
    assert caught.value.field == "occurred_at"
    message = caught.value.message
    assert "\n" not in message
    if text in ("2026-01-09T09:00:00", "2026-01-09T09:00:00.5", "2026-01-09"):
        assert "no UTC offset" in message
    else:
        assert "YYYY-MM-DDThh:mm[:ss[.fraction]]" in message, message


@pytest.mark.parametrize("text", REFUSED[:4])
def test_the_reviewers_forms_are_not_recorded(text: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, "occurred_at": text})
    assert caught.value.field == "occurred_at"


def test_a_plus_lost_in_a_url_query_is_explained() -> None:
    with pytest.raises(InvalidCommandError, match="%2B"):
        parse_time("2026-01-09T09:00:00 01:00", "query.recorded_at")


def test_a_long_value_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_time("9" * 5000, "occurred_at")
    assert len(caught.value.message) < 400


def test_the_contract_and_the_schema_share_one_pattern() -> None:
    """The schemas state the contract's form and its plausible window (issue 21: a year before
    1900 or an offset beyond 14:00 is not called valid by the document)."""
    for name, schema in SCHEMAS.items():
        assert schema["properties"]["occurred_at"]["pattern"] == TIME_SCHEMA_PATTERN, name
    assert not SCHEMA_PATTERN.fullmatch("0092-10-10T14:20:06.8+02:50")
    assert not SCHEMA_PATTERN.fullmatch("2026-01-01T00:00:00+14:01")
    assert SCHEMA_PATTERN.fullmatch("1900-01-01T00:00:00-14:00")
    assert re.fullmatch(TIME_PATTERN, "0092-10-10T14:20:06.8+02:50")  # the contract names it


# Offsets of the plausible window (at most 14 hours either way).
_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
_TIMES = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 12, 31), timezones=_OFFSETS
)


@given(when=_TIMES, spec=st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
@settings(max_examples=300, deadline=None)
def test_every_documented_writing_of_an_instant_reads_back_to_it(
    when: dt.datetime, spec: str
) -> None:
    text = when.isoformat(timespec=spec)
    if when.utcoffset() == dt.timedelta(0) and spec == "seconds":
        text = text.removesuffix("+00:00") + "Z"
    assert SCHEMA_PATTERN.fullmatch(text)
    parsed = parse_time(text, "occurred_at")
    truncated = when.replace(
        second=0 if spec == "minutes" else when.second,
        microsecond={
            "minutes": 0,
            "seconds": 0,
            "milliseconds": when.microsecond // 1000 * 1000,
        }.get(spec, when.microsecond),
    )
    assert parsed == truncated
    assert parsed.utcoffset() == when.utcoffset()


@given(text=st.text(alphabet=st.sampled_from("0123456789-:T+Z.Wz t\n"), max_size=32))
@settings(max_examples=500, deadline=None)
def test_what_the_schema_pattern_refuses_the_contract_refuses(text: str) -> None:
    """The contract is never more lenient than the schema: a text the pattern refuses is
    refused (the contract also refuses texts of the right form that are no time: month 13)."""
    try:
        parse_time(text, "occurred_at")
    except InvalidCommandError as exc:
        assert exc.field == "occurred_at"
        assert "\n" not in exc.message
    else:
        assert SCHEMA_PATTERN.fullmatch(text), text


@given(text=st.from_regex(SCHEMA_PATTERN, fullmatch=True))
@settings(max_examples=300, deadline=None)
def test_what_the_schema_pattern_accepts_is_a_time_or_refused_clearly(text: str) -> None:
    try:
        parsed = parse_time(text, "occurred_at")
    except InvalidCommandError as exc:  # only a text of the form that is no time (month 13)
        assert "is not a valid date-time" in exc.message, exc.message
    else:
        assert parsed.utcoffset() is not None


# -- integers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("day", [1.0, 2.0, 3.0, True, False, "1", None, 0, 4, 1.5])
def test_an_infusion_day_is_the_integer_1_2_or_3(day: Any) -> None:
    with pytest.raises(ProtocolInputError) as caught:
        trigger_for("give_infusion", {"day": day})
    assert caught.value.field == "payload.day"
    assert "1, 2 or 3, an integer" in caught.value.message


@pytest.mark.parametrize("day", [1, 2, 3])
def test_the_integer_days_name_their_moves(day: int) -> None:
    assert trigger_for("give_infusion", {"day": day}) == f"infuse_d{day}"


def test_the_schema_says_the_day_is_an_integer() -> None:
    day = SCHEMAS["give_infusion"]["properties"]["payload"]["properties"]["day"]
    assert day["type"] == "integer" and day["enum"] == [1, 2, 3]


@pytest.mark.parametrize("value", [4.0, True, False, "4", -1, MAX_VERSION + 1, 10**29, [4]])
def test_expected_version_is_an_integer_within_the_bound(value: Any) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, "expected_version": value})
    assert caught.value.field == "expected_version"
    assert str(MAX_VERSION) in caught.value.message


@pytest.mark.parametrize("value", [None, 0, 4, MAX_VERSION])
def test_expected_version_within_the_bound_is_read(value: int | None) -> None:
    assert parse_command({**BASE, "expected_version": value}).expected_version == value
    assert parse_expected_version(value) == value


def test_the_schema_bounds_expected_version_as_the_contract_does() -> None:
    (schema, _null) = SCHEMAS["withdraw"]["properties"]["expected_version"]["anyOf"]
    assert schema["maximum"] == MAX_VERSION
    validator = jsonschema.Draft202012Validator(SCHEMAS["withdraw"])
    assert not validator.is_valid({**BASE, "expected_version": MAX_VERSION + 1})
    assert validator.is_valid({**BASE, "expected_version": MAX_VERSION})


# -- reasons ------------------------------------------------------------------------------------


def test_the_commands_that_always_need_a_reason() -> None:
    assert {
        "withdraw",
        "discontinue",
        "cancel_remaining_fractions",
        "correct",
        "repeat_apheresis",
        "transfer_site",  # a move to another site (issue 17)
    } == REASON_ALWAYS_REQUIRED
    for name in REASON_ALWAYS_REQUIRED:
        assert "reason" in SCHEMAS[name]["required"], name


@pytest.mark.parametrize("command", sorted(REASON_ALWAYS_REQUIRED))
@pytest.mark.parametrize("reason", ["(missing)", None, "", "   ", "\n\t"])
def test_a_missing_or_blank_reason_is_invalid_input(command: str, reason: Any) -> None:
    envelope = {**BASE, "command": command}
    if reason == "(missing)":
        del envelope["reason"]
    else:
        envelope["reason"] = reason
    with pytest.raises(InvalidCommandError) as caught:
        parse_command(envelope)
    assert caught.value.field == "reason"
    assert f"{command} requires a reason" in caught.value.message


@pytest.mark.parametrize("command", ["cease", "continue_treatment", "record_death"])
def test_a_reason_the_rules_may_ask_for_is_left_to_the_protocol(command: str) -> None:
    assert parse_command({**BASE, "command": command, "reason": None}).reason is None


# -- key names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("colour", "colour"),
        ("Rückzug", "Rückzug"),
        ("a b", "a b"),
        ("x" * 64, "x" * 64),
        ("bad\nkey\nhere", "'bad\\nkey\\nhere'"),
        ("tab\there", "'tab\\there'"),
        ("\u2028", "'\\u2028'"),
        (" padded ", "' padded '"),
        ("", "''"),
        ("k" * 3000, f"{'k' * 40!r}... (3000 characters)"),
        ("\n" * 100, f"{chr(10) * 39!r}... (100 characters)"),
        ("\x1f" * 64, f"{chr(31) * 19!r}... (64 characters)"),
    ],
)
def test_key_names_are_shown_on_one_short_line(key: str, shown: str) -> None:
    assert key_name(key) == shown
    assert "\n" not in key_name(key) and len(key_name(key)) < 200


@given(key=st.text(max_size=500))
@settings(max_examples=300, deadline=None)
def test_an_unknown_envelope_key_is_named_safely(key: str) -> None:
    if key in BASE or key in ("idempotency_key", "expected_version"):
        return
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, key: 1})
    field = caught.value.field
    assert field == key_name(key)
    assert field.isprintable() and len(field) < 120
    assert caught.value.message.isprintable()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"actor": {"id": "dr.a", "role": "clinician", "x\ny": 1}}, "actor.'x\\ny'"),
        ({"colour": 1}, "colour"),
        ({"actor": {"id": "dr.a", "role": "clinician", "team": 1}}, "actor.team"),
    ],
)
def test_unknown_keys_of_the_envelope_are_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_command({**BASE, **change})
    assert caught.value.field == field
