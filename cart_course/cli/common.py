"""What every CLI command shares: the lazily built service and output helpers."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..bootstrap import Settings, build_service
from ..service import CourseService


class Context:
    def __init__(self, db: str | None) -> None:
        self.db = db
        self._service: CourseService | None = None

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.db)

    @property
    def service(self) -> CourseService:
        if self._service is None:
            self._service = build_service(self.settings)
        return self._service

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None


pass_context = click.make_pass_decorator(Context)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def read_json_input(source: str) -> Any:
    """JSON from an argument, a file path, or '-' (stdin). Errors name the input."""
    text: str
    if source == "-":
        text = sys.stdin.read()
    elif source.lstrip().startswith(("{", "[")):
        text = source
    else:
        try:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {source!r}: {exc.strerror}", param_hint="SOURCE"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}",
            param_hint="SOURCE",
        ) from None
