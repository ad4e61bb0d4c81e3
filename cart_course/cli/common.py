"""What every CLI command shares: the lazily built service and output helpers."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..bootstrap import Settings, System
from ..contract import parse_patient_id
from ..errors import InvalidCommandError
from ..eventlog import EventLog
from ..jsonin import DuplicateKeyError, loads
from ..service import CourseService


class Context:
    """What a command works with: the settings (``--db``, ``--protocol`` and the environment) and the
    :class:`~cart_course.bootstrap.System` built from them on first use."""

    def __init__(self, db: str | None, protocol: str | None = None) -> None:
        self.db = db
        self.protocol = protocol
        self._system: System | None = None

    @property
    def settings(self) -> Settings:
        return self.system.settings

    @property
    def system(self) -> System:
        if self._system is None:
            self._system = System(Settings.from_env(self.db, protocol=self.protocol))
        return self._system

    @property
    def service(self) -> CourseService:
        return self.system.service

    @property
    def log(self) -> EventLog:
        """The store's log, read-only (the audit and the views read it)."""
        return self.system.log

    def close(self) -> None:
        if self._system is not None:
            self._system.close()
            self._system = None


pass_context = click.make_pass_decorator(Context)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


class JSONInputError(click.BadParameter):
    """SOURCE is not one JSON document (its body's ``error``: ``invalid_json``)."""

    code = "invalid_json"


#: What ``record`` (and every command reading one JSON document) accepts as SOURCE.
SOURCE_FORMS = "a JSON object (starting with {), a path to a file holding one, or - for stdin"


def read_json_input(source: str) -> Any:
    """JSON from an argument, a file path, or '-' (stdin). Errors name the input."""
    raw: bytes
    if source == "-":
        raw = sys.stdin.buffer.read()
    elif source.lstrip().startswith(("{", "[")):
        try:
            raw = source.encode("utf-8")
        except UnicodeEncodeError:  # an argument that was not UTF-8 (surrogateescape)
            raise JSONInputError(
                "the JSON argument is not UTF-8 text", param_hint="SOURCE"
            ) from None
    elif not source.strip():
        raise JSONInputError(f"{source!r} is empty; give {SOURCE_FORMS}", param_hint="SOURCE")
    else:
        try:
            with open(source, "rb") as fh:
                raw = fh.read()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            if isinstance(exc, FileNotFoundError) and _is_json(source):
                raise JSONInputError(
                    f"{source[:40]!r} is JSON but not an object; give {SOURCE_FORMS}",
                    param_hint="SOURCE",
                ) from None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            shown = source if len(source) <= 80 else source[:77] + "..."
            raise JSONInputError(
                f"cannot read {shown!r}: {reason}; SOURCE is {SOURCE_FORMS}",
                param_hint="SOURCE",
            ) from None
    return decode_json_document(raw)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def decode_json_document(raw: bytes) -> Any:
    """One JSON document from bytes: UTF-8 (a leading byte order mark is skipped); every way it
    can fail is a one-line :class:`click.BadParameter` with the line and column."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise JSONInputError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, byte {column} of it)",
            param_hint="SOURCE",
        ) from None
    try:
        # Without trailing whitespace, a truncated document's error is where it stops.
        return loads(text.rstrip())
    except DuplicateKeyError as exc:
        raise JSONInputError(f"not accepted: {exc.reason}", param_hint="SOURCE") from None
    except json.JSONDecodeError as exc:
        raise JSONInputError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}",
            param_hint="SOURCE",
        ) from None
    except RecursionError:
        raise JSONInputError(
            "not valid JSON: nested too deeply (arrays and objects within each other)",
            param_hint="SOURCE",
        ) from None
    except ValueError as exc:  # an integer of more digits than Python converts
        detail = (
            f"an integer has more than {sys.get_int_max_str_digits()} digits"
            if "digits" in str(exc)
            else str(exc)
        )
        raise JSONInputError(f"not valid JSON: {detail}", param_hint="SOURCE") from None


def patient_id_argument(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """A patient id argument or option checked like a command's ``patient_id`` (1-64 characters
    of A-Z a-z 0-9 . _ - :), so a bad one is a one-line error that echoes at most a bounded,
    printable part of it (None: not given)."""
    if value is None:
        return None
    try:
        return parse_patient_id(value, param.human_readable_name)
    except InvalidCommandError:
        shown = ascii(value[:40]) + ("..." if len(value) > 40 else "")
        raise click.BadParameter(
            f"{shown} is not a patient identifier: 1-64 characters of A-Z a-z 0-9 . _ - :",
            ctx=ctx,
            param=param,
        ) from None
