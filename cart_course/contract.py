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
from collections.abc import Mapping
from typing import Any

import attrs

from .course import canonical
from .encoding import canonical as canonical_json_data
from .errors import InvalidCommandError
from .protocol.commands import COMMANDS, SERVICE_COMMANDS

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
WRITE_ROLES = ("service", "clinician")
ALL_COMMANDS = (*COMMANDS, *SERVICE_COMMANDS)
#: Clinical time may run ahead of the record clock by at most this much (clock skew).
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:")


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
        return (canonical_json_data if self._json_data else canonical)(
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


def parse_time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise InvalidCommandError(field, "must be an ISO 8601 date-time string with a UTC offset")
    try:
        parsed = dt.datetime.fromisoformat(
            value.replace("Z", "+00:00") if value.endswith("Z") else value
        )
    except ValueError:
        raise InvalidCommandError(
            field, f"{value!r} is not an ISO 8601 date-time (e.g. 2026-03-02T09:30:00+01:00)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidCommandError(
            field,
            f"{value!r} has no UTC offset; clinical time must be unambiguous (add Z or +hh:mm)",
        )
    return parsed


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


def _parse_actor(value: Any) -> Actor:
    if not isinstance(value, Mapping):
        raise InvalidCommandError(
            "actor", 'must be an object like {"id": "nurse.jones", "role": "clinician"}'
        )
    extra = sorted(set(value) - {"id", "role", "name"})
    if extra:
        raise InvalidCommandError(
            f"actor.{extra[0]}", "unknown key; allowed keys are: id, role, name"
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
    extra = sorted(data.keys() - _ENVELOPE_KEY_SET)
    if extra:
        raise InvalidCommandError(
            extra[0], f"unknown key; allowed keys are: {', '.join(ENVELOPE_KEYS)}"
        )
    command = data.get("command")
    if command not in ALL_COMMANDS:
        raise InvalidCommandError(
            "command", f"{command!r} is not a command; commands are: {', '.join(ALL_COMMANDS)}"
        )
    patient_id = parse_patient_id(data.get("patient_id"))
    occurred_at = parse_clinical_time(data.get("occurred_at"), "occurred_at", now=now)
    if actor is None:
        actor = parse_actor(data.get("actor"))
    reason = _text(data, "reason", "reason", max_len=4000, required=False)
    key = _text(data, "idempotency_key", "idempotency_key", max_len=200, required=False)
    expected = data.get("expected_version")
    if expected is not None and (
        isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
    ):
        raise InvalidCommandError("expected_version", "must be a whole number >= 0 (or null)")
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
                found = bad(k, f"{path} (a key)") or bad(v, f"{path}.{k}")
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
