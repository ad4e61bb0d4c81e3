"""``cart-course``: the command line. Thin: parse, call the service, render.

Every error is one line on stderr and a non-zero exit (2 for bad input, 1 for a refusal or
conflict, 3 for an unexpected failure); never a traceback (set ``CART_COURSE_DEBUG=1`` for one).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from eventsourcing.persistence import MapperDeserialisationError, PersistenceError

from ..errors import CartCourseError, InvalidCommandError, StoreError
from ..protocol.errors import ProtocolInputError
from .common import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    envvar="CART_COURSE_DB",
    default=None,
    metavar="URL",
    help="Store: a SQLite file path (default var/cart-course.sqlite), memory: (with the colon) "
    "or postgresql://user:password@host:port/dbname. Also CART_COURSE_DB. Empty is an error.",
)
@click.version_option(package_name="cart-course")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """Event-sourced, auditable treatment courses for the CD19 CAR-T trial (NCT03599375)."""
    ctx.obj = Context(db=db)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from . import course, protocol

    for builtin in (course, protocol):
        builtin.register(cli)
    for name in ("audit", "views", "serve", "keys", "ledger"):
        try:
            module: Any = __import__(f"{__name__}.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(cli)


_register()


def _store_error(exc: Exception) -> CartCourseError:
    from ..service import store_errors

    try:
        with store_errors("the store"):
            raise exc
    except CartCourseError as error:
        return error
    except Exception:
        return StoreError(f"cannot read the store: {type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("CART_COURSE_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="cart-course", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:  # one line, with where to look for help
        where = exc.ctx.command_path if exc.ctx is not None else "cart-course"
        click.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except (InvalidCommandError, ProtocolInputError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except CartCourseError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except (PersistenceError, MapperDeserialisationError) as exc:
        # A store failure that a read path did not name: the same line as the others
        # ("cannot read the store: ..."), never "unexpected".
        if debug:
            raise
        click.echo(f"error: {_store_error(exc).message}", err=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        sys.exit(3)
    sys.exit(0)
