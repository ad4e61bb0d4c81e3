"""``cart-course``: the command line. Thin: parse, call the service, render.

Every error is one line on stderr and a non-zero exit (2 for bad input, 1 for a refusal or
conflict, 3 for an unexpected failure); never a traceback (set ``CART_COURSE_DEBUG=1`` for one).
With ``--json`` the error's body (the contract's rejection body) is also printed on stdout; the
exit status does not depend on ``--json``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from eventsourcing.persistence import MapperDeserialisationError, PersistenceError

from ..bootstrap import debug_enabled
from ..errors import CartCourseError, InvalidCommandError, RecordConflictError, StoreError
from ..protocol.errors import ProtocolInputError
from ..protocol.versions import CURRENT, VERSIONS
from .common import Context, echo_json

#: ``cart-course --help`` lists the commands in these sections, in this order (a command not named
#: here is listed under "Other"). Add a new command's name to its section.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Start here": ("run", "serve", "demo", "protocol"),
    "Record": ("record", "ingest"),
    "Monitor": ("patients", "show", "status", "watch", "views"),
    "Audit": ("audit", "keys"),
    "Export": ("export",),
    "Admin": ("tokens", "new-key"),
}

START_HERE = (
    "Where to start: `cart-course run` records a demo cohort in the default store (on an empty "
    "store) and lists every patient; `cart-course serve --demo` (or `make run`) serves the "
    "dashboard and the API and prints a token per role; `cart-course COMMAND --help` tells "
    "more about each command."
)


class SectionedGroup(click.Group):
    """A group whose help lists its commands by section (``SECTIONS``), each with its whole
    first sentence (click's default cuts descriptions to the terminal's width)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = {
            name: command
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        }
        placed = {name for names in SECTIONS.values() for name in names}
        sections = [*SECTIONS.items(), ("Other", tuple(sorted(set(commands) - placed)))]
        for title, names in sections:
            rows = [
                (name, commands[name].get_short_help_str(limit=500))
                for name in names
                if name in commands
            ]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


@click.group(
    cls=SectionedGroup,
    epilog=START_HERE,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--db",
    default=None,
    metavar="URL",
    help="Store: a SQLite file path (default var/cart-course.sqlite), memory: (with the colon) "
    "or postgresql://user:password@host:port/dbname. Also CART_COURSE_DB. Empty is an error.",
)
@click.option(
    "--protocol",
    default=None,
    metavar="VERSION",
    help="Protocol version new moves are decided and recorded under (default: the current one, "
    f"{CURRENT.id}; known: {', '.join(VERSIONS)}). Also CART_COURSE_PROTOCOL_VERSION. Recorded "
    "events keep the version they were made under.",
)
@click.version_option(package_name="cart-course")
@click.pass_context
def cli(ctx: click.Context, db: str | None, protocol: str | None) -> None:
    """Event-sourced, auditable treatment courses for the CD19 CAR-T trial (NCT03599375)."""
    ctx.obj = Context(db=db, protocol=protocol)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from . import course, protocol

    for builtin in (course, protocol):
        builtin.register(cli)
    for name in (
        "audit",
        "views",
        "serve",
        "keys",
        "ledger",
        "exports",
        "report",
        "store",
        "queries",
    ):
        try:
            module: Any = __import__(f"{__name__}.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(cli)


_register()


def _store_error(exc: Exception) -> CartCourseError:
    from ..eventlog import store_errors

    try:
        with store_errors("the store"):
            raise exc
    except CartCourseError as error:
        return error
    except Exception:
        return StoreError(f"cannot read the store: {type(exc).__name__}: {exc}")


def wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for JSON (``--json`` before any ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _parameter(exc: click.ClickException) -> str | None:
    """The name of the argument or option a usage error is about (as the user writes it)."""
    param = getattr(exc, "param", None)
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    if param is not None:
        return str(param.human_readable_name)
    hint = getattr(exc, "param_hint", None)
    if isinstance(hint, str):
        return hint.strip("'\"")
    return None


def usage_error(exc: click.ClickException) -> tuple[str, dict[str, Any]]:
    """A usage error as its message and its JSON body (the contract's rejection body: the
    error code, the message and the field). A missing argument or option "is required"."""
    field = _parameter(exc)
    if isinstance(exc, click.MissingParameter) and field is not None:
        message = f"{field} is required"
    else:
        message = exc.format_message()
    body: dict[str, Any] = {"error": getattr(exc, "code", "invalid_request"), "message": message}
    if field is not None:
        body["field"] = field
    return message, body


def _body(exc: BaseException) -> dict[str, Any]:
    """The JSON body of an error (the contract's rejection body)."""
    if isinstance(exc, CartCourseError):
        return exc.to_json()
    if isinstance(exc, ProtocolInputError):
        others = [(p.field, p.message) for p in exc.others]
        return InvalidCommandError(exc.field, exc.message, others=others).to_json()
    return {"error": "unexpected", "message": f"unexpected {type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Every error is one line on stderr; with ``--json`` its body (the contract's
    rejection body: ``error``, ``message`` and, where there is one, ``field``) is also printed
    on stdout. The exit status is the same with and without ``--json``."""
    args = sys.argv[1:] if argv is None else argv
    as_json = wants_json(args)
    debug = debug_enabled()

    def fail(
        status: int, line: str, body: dict[str, Any], exc: BaseException | None = None
    ) -> NoReturn:
        if as_json and not getattr(exc, "body_printed", False):
            echo_json(body)
        click.echo(line, err=True)
        sys.exit(status)

    try:
        cli.main(args=args, prog_name="cart-course", standalone_mode=False)
    except click.exceptions.Abort:
        fail(1, "aborted", {"error": "aborted", "message": "aborted"})
    except click.UsageError as exc:  # one line, with where to look for help
        where = exc.ctx.command_path if exc.ctx is not None else "cart-course"
        message, body = usage_error(exc)
        fail(2, f"error: {message} (see '{where} --help')", body)
    except click.ClickException as exc:
        if as_json:
            echo_json(usage_error(exc)[1])
        exc.show()
        sys.exit(2)
    except (InvalidCommandError, ProtocolInputError) as exc:
        if debug:
            raise
        # a conflict with the patient's record is not malformed input: 1, as a refusal
        status = 1 if isinstance(exc, RecordConflictError) else 2
        fail(status, f"error: {exc}", _body(exc), exc)
    except CartCourseError as exc:
        if debug:
            raise
        fail(1, f"error: {exc.message}", _body(exc), exc)
    except KeyboardInterrupt:
        if as_json:
            echo_json({"error": "interrupted", "message": "interrupted"})
        sys.exit(130)
    except (PersistenceError, MapperDeserialisationError) as exc:
        # A store failure that a read path did not name: the same line as the others
        # ("cannot read the store: ..."), never "unexpected".
        if debug:
            raise
        error = _store_error(exc)
        fail(1, f"error: {error.message}", _body(error))
    except Exception as exc:
        if debug:
            raise
        fail(3, f"error: unexpected {type(exc).__name__}: {exc}", _body(exc))
    sys.exit(0)
