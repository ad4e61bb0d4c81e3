"""The command contract: one JSON envelope for Python, CLI, JSON Lines and HTTP.

```json
{"command": "give_infusion", "patient_id": "P-001", "occurred_at": "2026-03-02T09:30:00+01:00",
 "actor": {"id": "nurse.jones", "role": "clinician"}, "reason": null,
 "idempotency_key": "infusion-P-001-c1-d1", "expected_version": 4,
 "payload": {"day": 1, "cells": {"value": 7.0e6, "unit": "cells"},
             "weight": {"value": 70, "unit": "kg"}}}
```
See ``docs/commands.md`` and ``schemas.py`` (one JSON Schema per command).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import attrs

from .encoding import canonical as canonical_json_data
from .encoding import canonical_reference
from .errors import InvalidCommandError
from .protocol.errors import key_name
from .protocol.payloads import INSTANT_PATTERN
from .protocol.queries import system_actor_problem
from .protocol.registry import REGISTRY
from .protocol.text import free_text_problem

ENVELOPE_KEYS = (
    "command",
    "patient_id",
    "occurred_at",
    "actor",
    "reason",
    "idempotency_key",
    "expected_version",
    "payload",
)
_ENVELOPE_KEY_SET = frozenset(ENVELOPE_KEYS)
#: Roles that record commands: the protocol's moves (service, clinician) and the data queries
#: (monitor, data_manager: ``protocol/queries.py``); which role may record which command is each
#: command's ``roles`` (the service refuses the others as ``forbidden``).
WRITE_ROLES = ("service", "clinician", "monitor", "data_manager")
#: Every command of the contract, in the registry's order (``protocol/registry.py``).
ALL_COMMANDS: tuple[str, ...] = REGISTRY.names
_COMMAND_SET = REGISTRY.name_set
#: Clinical time may run ahead of the record clock by at most this much (clock skew).
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:")
#: The largest ``expected_version`` (18 digits; ``If-Match`` takes the same versions). A
#: patient's version counts its events: no stream comes near it.
MAX_VERSION = 10**18 - 1
#: Commands that always need a ``reason`` (reason policy ``always`` in the registry: the moves
#: that do, and ``correct``); a missing or blank one is malformed input (``invalid_command``,
#: field ``reason``). Moves that need one only in some states (``cease`` after CR ...) are judged
#: by the protocol's rule ``reason_given`` (``move_refused``).
REASON_ALWAYS_REQUIRED: frozenset[str] = REGISTRY.reason_always
#: What a reason is asked for, in the message of a missing one.
_REASON_WHAT: dict[str, str] = {n: REGISTRY[n].reason_asks for n in REASON_ALWAYS_REQUIRED}
#: The one form of a date-time of the contract (RFC 3339's date-time, ISO 8601's extended
#: format): date, ``T``, hours and minutes, optional seconds and fraction, and ``Z`` or an
#: offset in hours and minutes. The same pattern as the JSON Schema's (``schemas.py``).
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$"
_TIME = re.compile(TIME_PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?", re.ASCII)
TIME_FORM = (
    "YYYY-MM-DDThh:mm[:ss[.fraction]] followed by Z or a UTC offset +hh:mm / -hh:mm "
    "(e.g. 2026-03-02T09:30:00+01:00 or 2026-03-02T08:30:00Z)"
)


@attrs.frozen(kw_only=True)
class Actor:
    id: str
    role: str
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "role": self.role}
        if self.name:
            data["name"] = self.name
        return data


@attrs.frozen(kw_only=True)
class Command:
    command: str
    patient_id: str
    occurred_at: dt.datetime
    actor: Actor
    payload: Mapping[str, Any]
    reason: str | None = None
    idempotency_key: str | None = None
    expected_version: int | None = None
    #: The digest, computed on first use (the command is immutable; its payload is not copied,
    #: so a caller must not change the payload mapping after handing the command over).
    _digest: str | None = attrs.field(init=False, default=None, eq=False, hash=False, repr=False)
    _occurred_iso: str | None = attrs.field(
        init=False, default=None, eq=False, hash=False, repr=False
    )
    #: Set by :func:`parse_command`: the envelope was validated. The service validates any other
    #: command (one built directly as ``Command(...)``) before deciding on it.
    _validated: bool = attrs.field(init=False, default=False, eq=False, hash=False, repr=False)
    #: Set by :func:`parse_command` for data decoded from JSON text: every value is JSON data, so
    #: the digest may be encoded by msgspec (``encoding.canonical``: the same bytes as json's for
    #: JSON data, ~3x faster). Other commands are encoded by ``json`` itself (a Python caller's
    #: payload may hold values msgspec and json write differently, e.g. a datetime).
    _json_data: bool = attrs.field(init=False, default=False, eq=False, hash=False, repr=False)

    @property
    def validated(self) -> bool:
        return self._validated

    @property
    def occurred_iso(self) -> str:
        """``occurred_at.isoformat()``, computed once (the digest and the event both use it)."""
        text = self._occurred_iso
        if text is None:
            text = self.occurred_at.isoformat()
            object.__setattr__(self, "_occurred_iso", text)
        return text

    @property
    def digest(self) -> str:
        """What makes two commands the same command (for idempotent retries)."""
        digest = self._digest
        if digest is None:
            digest = hashlib.sha256(self._digested()).hexdigest()
            object.__setattr__(self, "_digest", digest)
        return digest

    def _digested(self) -> bytes:
        """``canonical({command, patient_id, occurred_at, payload, reason})``: json's bytes,
        written by msgspec when the command was decoded from JSON text."""
        return (canonical_json_data if self._json_data else canonical_reference)(
            {
                "command": self.command,
                "patient_id": self.patient_id,
                "occurred_at": self.occurred_iso,
                "payload": self.payload,
                "reason": self.reason,
            }
        )

    @property
    def key(self) -> str:
        """The idempotency key; without one, the command's content is its key."""
        return self.idempotency_key or f"auto:{self.digest}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "command": self.command,
            "patient_id": self.patient_id,
            "occurred_at": self.occurred_iso,
            "actor": self.actor.to_json(),
            "reason": self.reason,
            "idempotency_key": self.idempotency_key,
            "expected_version": self.expected_version,
            "payload": dict(self.payload),
        }
        return data


def _shown(value: str, limit: int = 40) -> str:
    """``repr`` of a client's text, cut short (a message must not echo 5000 characters)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}..."


#: The plausible window of a contract's time: from 1900 on, with a UTC offset of at most 14 hours
#: (UTC-12:00 to UTC+14:00 are in use; RFC 3339's syntax allows up to 23:59).
MIN_YEAR = 1900
MAX_UTC_OFFSET = dt.timedelta(hours=14)
#: :data:`TIME_PATTERN` as the schemas state it: with the plausible window above (a year from
#: 1900, an offset of at most 14:00) and ASCII digits only, so that the document says exactly
#: which times :func:`parse_time` accepts (its own, looser pattern lets it name what is wrong).
TIME_SCHEMA_PATTERN = INSTANT_PATTERN


def parse_time(value: Any, field: str) -> dt.datetime:
    """A date-time of the contract: exactly :data:`TIME_PATTERN` (RFC 3339), a real calendar
    date and time, with a UTC offset. Nothing else is read as a time: not ISO 8601's other
    forms (week dates, basic format without separators, offsets with seconds), not a space or a
    line break for the ``T``."""
    if not isinstance(value, str):
        raise InvalidCommandError(field, f"must be a date-time string: {TIME_FORM}")
    if _TIME.fullmatch(value) is None:
        if _LOCAL_TIME.fullmatch(value) is not None:
            raise InvalidCommandError(
                field,
                f"{_shown(value)} has no UTC offset; clinical time must be unambiguous: add Z or "
                "+hh:mm / -hh:mm",
            )
        if _DATE.fullmatch(value) is not None:
            raise InvalidCommandError(
                field,
                f"{_shown(value)} is a date: it has no time and no UTC offset; clinical time must "
                f"be unambiguous: give {TIME_FORM}",
            )
        hint = ""
        if _TIME.fullmatch(value.replace(" ", "+")) is not None:
            hint = " (a + in a URL's query must be sent as %2B)"
        raise InvalidCommandError(
            field, f"{_shown(value)} is not a date-time of the form {TIME_FORM}{hint}"
        )
    try:
        parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] == "Z" else value)
    except ValueError as exc:  # the form is right, the values are not (month 13, +25:00 ...)
        raise InvalidCommandError(
            field, f"{_shown(value)} is not a valid date-time ({exc}); use {TIME_FORM}"
        ) from None
    offset = parsed.utcoffset()
    if offset is not None and abs(offset) > MAX_UTC_OFFSET:
        raise InvalidCommandError(
            field,
            f"{_shown(value)} has the UTC offset {value[-6:]}; offsets in "
            "use on Earth are from -12:00 to +14:00 (at most 14 hours either way)",
        )
    if parsed.year < MIN_YEAR:
        raise InvalidCommandError(
            field,
            f"{_shown(value)} is before {MIN_YEAR}: not a plausible time of a clinical record "
            "(a typo in the year?)",
        )
    return parsed


def parse_expected_version(value: Any, field: str = "expected_version") -> int | None:
    """An ``expected_version``: null, or a whole number from 0 to :data:`MAX_VERSION` -- an
    integer, never a string, a float (not even 4.0) or a boolean."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        shown = repr(value)
        raise InvalidCommandError(
            field,
            f"must be an integer from 0 to {MAX_VERSION} (the patient's version you decided on; "
            f"0: not on record yet), or null; got {shown if len(shown) <= 40 else shown[:40] + '...'}",
        )
    return value


def _text(
    data: Mapping[str, Any], key: str, field: str, *, max_len: int, required: bool
) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidCommandError(field, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidCommandError(field, "must be a non-empty string")
    if len(value) > max_len:
        raise InvalidCommandError(field, f"must be at most {max_len} characters")
    return value


def _reason(data: Mapping[str, Any], command: str) -> str | None:
    """The envelope's ``reason``: text of up to 4000 characters, or null; required (neither null
    nor blank) by the commands of :data:`REASON_ALWAYS_REQUIRED`."""
    value = data.get("reason")
    if command in REASON_ALWAYS_REQUIRED and (
        value is None or (isinstance(value, str) and not value.strip())
    ):
        raise InvalidCommandError(
            "reason",
            f"{command} requires a reason ({_REASON_WHAT.get(command, 'why')}): give it as "
            "text of 1-4000 characters" + ("" if value is None else f"; {_shown(value)} is blank"),
        )
    text = _text(data, "reason", "reason", max_len=4000, required=False)
    problem = None if text is None else free_text_problem(text)
    if problem is not None:
        raise InvalidCommandError("reason", problem)
    return text


#: Actors already parsed, by (id, role, name): a service records many commands of few people.
_ACTORS: dict[tuple[Any, ...], Actor] = {}
_ACTORS_MAX = 4096


def parse_clinical_time(value: Any, field: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A clinical time: :func:`parse_time`, and not in the future (beyond a clock skew of
    :data:`MAX_CLOCK_SKEW`): clinical time is when something happened."""
    parsed = parse_time(value, field)
    now = now or dt.datetime.now(dt.UTC)
    if parsed - now > MAX_CLOCK_SKEW:
        raise InvalidCommandError(
            field,
            f"{parsed.isoformat()} is in the future; clinical time is when it happened "
            f"(at most {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes ahead of this "
            "server's clock)",
        )
    return parsed


def parse_actor(value: Any) -> Actor:
    key: tuple[Any, ...] | None = None
    if type(value) is dict and len(value) <= 3:
        key = tuple(value.items())  # the exact keys and values that were accepted before
        try:
            known = _ACTORS.get(key)
        except TypeError:  # an unhashable value: not an actor we know
            known = key = None
        if known is not None:
            return known
    actor = _parse_actor(value)
    if key is not None and len(_ACTORS) < _ACTORS_MAX:
        _ACTORS[key] = actor
    return actor


#: Unicode categories a name (an actor's id or name) may not hold: control characters (Cc: line
#: feed, NUL, ...), invisible format characters (Cf: zero width space U+200B, the right-to-left
#: override U+202E, ...) and the line and paragraph separators (Zl, Zp). A name is printable
#: text: what an audit trail shows is what was recorded.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_CATEGORY_WHAT = {
    "Cc": "control character",
    "Cf": "invisible formatting character",
    "Zl": "line separator",
    "Zp": "paragraph separator",
    "Cs": "lone surrogate",
}


def check_printable(
    value: str, field: str, example: str, categories: frozenset[str] = UNPRINTABLE_CATEGORIES
) -> None:
    """Refuse a name holding a character of ``categories`` (by default
    :data:`UNPRINTABLE_CATEGORIES`), naming it and its position."""
    if value.isprintable():  # fast path: str.isprintable is False for every C* and Z* but " "
        return
    for i, char in enumerate(value):
        category = unicodedata.category(char)
        if category in categories:
            name = unicodedata.name(char, "")
            raise InvalidCommandError(
                field,
                f"holds the {_CATEGORY_WHAT.get(category, 'unprintable character')} "
                f"U+{ord(char):04X}{' (' + name + ')' if name else ''} at position {i}; "
                f"it must be printable text, e.g. {example}",
            )


def _parse_actor(value: Any) -> Actor:
    if not isinstance(value, Mapping):
        raise InvalidCommandError(
            "actor", 'must be an object like {"id": "nurse.jones", "role": "clinician"}'
        )
    extra = sorted(set(value) - {"id", "role", "name"}, key=str)
    if extra:
        raise InvalidCommandError(
            f"actor.{key_name(extra[0])}", "unknown key; allowed keys are: id, role, name"
        )
    actor_id = _text(value, "id", "actor.id", max_len=200, required=True)
    role = value.get("role")
    if role not in WRITE_ROLES:
        raise InvalidCommandError(
            "actor.role",
            f"{role!r} may not record commands; roles that write: {', '.join(WRITE_ROLES)}",
        )
    name = _text(value, "name", "actor.name", max_len=200, required=False)
    assert actor_id is not None
    check_printable(actor_id, "actor.id", "nurse.jones")
    reserved = system_actor_problem(actor_id)
    if reserved is not None:
        raise InvalidCommandError("actor.id", reserved)
    if name is not None:
        check_printable(name, "actor.name", '"J. Jones"')
    return Actor(id=actor_id, role=role, name=name)


def parse_patient_id(value: Any, field: str = "patient_id") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidCommandError(
            field, "must be a non-empty string (the trial's patient identifier)"
        )
    if len(value) > 64 or not set(value) <= _ID_CHARS:
        raise InvalidCommandError(
            field, f"{value!r} is not a patient identifier: 1-64 characters of A-Z a-z 0-9 . _ - :"
        )
    return value


def parse_command(
    data: Any,
    *,
    now: dt.datetime | None = None,
    actor: Actor | None = None,
    json_data: bool = False,
) -> Command:
    """Validate an envelope. ``actor`` (from an authenticated token) overrides the body's actor.

    ``json_data``: ``data`` was decoded from JSON text by msgspec (str keys; str, int, finite
    float, bool, None, list and dict values only), as the ingest decodes its lines. The digest
    is then written by the fast encoder; it is the same digest either way. (``json.loads``
    also gives NaN and infinities, which msgspec would write as null: such data must not be
    marked so.)"""
    if type(data) is not dict and not isinstance(data, Mapping):
        raise InvalidCommandError(
            "(command)", "must be a JSON object with: " + ", ".join(ENVELOPE_KEYS)
        )
    extra = sorted(data.keys() - _ENVELOPE_KEY_SET, key=str)
    if extra:
        raise InvalidCommandError(
            key_name(extra[0]), f"unknown key; allowed keys are: {', '.join(ENVELOPE_KEYS)}"
        )
    command = data.get("command")
    if not isinstance(command, str) or command not in _COMMAND_SET:
        raise InvalidCommandError(
            "command", f"{command!r} is not a command; commands are: {', '.join(ALL_COMMANDS)}"
        )
    patient_id = parse_patient_id(data.get("patient_id"))
    occurred_at = parse_clinical_time(data.get("occurred_at"), "occurred_at", now=now)
    if actor is None:
        actor = parse_actor(data.get("actor"))
    reason = _reason(data, command)
    key = _text(data, "idempotency_key", "idempotency_key", max_len=200, required=False)
    expected = parse_expected_version(data.get("expected_version"))
    payload = data.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise InvalidCommandError("payload", "must be a JSON object")
    parsed = Command(
        command=command,
        patient_id=patient_id,
        occurred_at=occurred_at,
        actor=actor,
        payload=payload,
        reason=reason,
        idempotency_key=key,
        expected_version=expected,
    )
    if json_data:
        object.__setattr__(parsed, "_json_data", True)
    try:
        # The digest is computed here, once (it is cached, and every command needs it): it
        # encodes the command's texts as UTF-8, which also proves they are valid Unicode.
        parsed.digest  # noqa: B018
        for text in (key, actor.id, actor.name):
            if text is not None:
                text.encode()
    except UnicodeEncodeError:
        where = _not_unicode(
            {"reason": reason, "idempotency_key": key, "payload": payload},
            {"actor.id": actor.id, "actor.name": actor.name},
        )
        raise InvalidCommandError(
            where,
            "holds a lone surrogate (such as \\ud800), which is not a character: "
            "text must be valid Unicode",
        ) from None
    object.__setattr__(parsed, "_validated", True)
    return parsed


def validated(command: Command) -> Command:
    """``command`` if :func:`parse_command` made it, else the same command validated by it (a
    command built directly is held to the same contract; raises InvalidCommandError)."""
    if command.validated:
        return command
    return parse_command(command.to_json())


def _not_unicode(*fields: Mapping[str, Any]) -> str:
    """The first field (a dotted path into the payload) whose text is not valid Unicode."""

    def bad(value: Any, path: str) -> str | None:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return path
            return None
        if isinstance(value, Mapping):
            for k, v in value.items():
                found = bad(k, f"{path} (a key)") or bad(v, f"{path}.{key_name(k)}")
                if found:
                    return found
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                found = bad(v, f"{path}[{i}]")
                if found:
                    return found
        return None

    for group in fields:
        for name, value in group.items():
            found = bad(value, name)
            if found:
                return found
    return "(command)"
