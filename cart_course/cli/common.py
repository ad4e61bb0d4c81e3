"""What every CLI command shares: the lazily built service, the token a command acts with, and
output helpers."""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import click

from ..access import authenticate, permit, service_for, trial_wide_only
from ..bootstrap import ENV_TOKEN, Settings, System, cli_token
from ..contract import parse_patient_id
from ..errors import ForbiddenError, InvalidCommandError
from ..eventlog import EventLog
from ..jsonin import DuplicateKeyError, loads
from ..service import CourseService
from ..tokens import TokenInfo


class Context:
    """What a command works with: the settings (``--db``, ``--protocol`` and the environment) and the
    :class:`~cart_course.bootstrap.System` built from them on first use.

    A command that reads or writes patient data takes a token (:func:`with_token`:
    ``--token-file`` or ``CART_COURSE_TOKEN``); with one, :attr:`token` is its info and
    :attr:`service` the service as the token sees it (a site-limited token: its sites' patients
    only; :attr:`log`, the whole trial's, is refused to it). Without a token the command acts
    as the operator, on the whole trial. A command that takes no token refuses to run while
    ``CART_COURSE_TOKEN`` is set (it would act as the operator, beyond the token)."""

    def __init__(self, db: str | None, protocol: str | None = None) -> None:
        self.db = db
        self.protocol = protocol
        self._system: System | None = None
        #: The token this command acts with (set by :func:`with_token`); None: the operator.
        self.token: TokenInfo | None = None
        self._takes_token = False

    @property
    def settings(self) -> Settings:
        return self.system.settings

    @property
    def system(self) -> System:
        if not self._takes_token and cli_token() is not None:
            command = _command_path()
            raise ForbiddenError(
                f"'{command}' acts as the operator, on the whole trial, and takes no token; "
                f"unset {ENV_TOKEN} to run it as the operator"
            )
        if self._system is None:
            self._system = System(Settings.from_env(self.db, protocol=self.protocol))
        return self._system

    @property
    def service(self) -> CourseService:
        """The service as the command's token sees it (``access.service_for``)."""
        return service_for(self.system.service, self.token)

    @property
    def log(self) -> EventLog:
        """The store's log, read-only (the audit and the views read it): the whole trial's, so
        refused to a site-limited token."""
        if self.token is not None and self.token.sites:
            raise trial_wide_only(self.token.sites, f"'{_command_path()}'")
        return self.system.log

    @property
    def sites(self) -> frozenset[str] | None:
        """The sites the command's token is limited to; None: the whole trial."""
        return frozenset(self.token.sites) if self.token is not None and self.token.sites else None

    def act_with(
        self,
        token_file: str | None,
        roles: Iterable[str],
        *,
        trial_wide: bool,
        params: dict[str, Any],
        path_arg: str | None = None,
    ) -> None:
        """Authenticate the command's token (``--token-file``, else ``CART_COURSE_TOKEN``; none:
        the operator) against the store's token store and check its role and scope as the HTTP
        guard does (``access.authenticate``, ``access.permit``); write the access to the
        audit-access log with the token's scope (a refused one too, as over HTTP)."""
        self._takes_token = True
        token = read_token_file(token_file) if token_file is not None else cli_token()
        if token is None:
            return  # the operator
        info = authenticate(self.system.tokens, token)
        command = _command_path()
        try:
            permit(info, roles, trial_wide=trial_wide, what=f"'{command}'")
        except ForbiddenError:
            self._log_access(info, command, params, path_arg, 403)
            raise
        self._log_access(info, command, params, path_arg, 200)
        self.token = info

    def _log_access(
        self,
        info: TokenInfo,
        command: str,
        params: dict[str, Any],
        path_arg: str | None,
        status: int,
    ) -> None:
        """One entry per command run with a token, written before the command reads or writes
        anything (when it cannot be written, nothing is done): method ``CLI``, path ``/cli/``
        and the command's words (and its product id, ``audit product``), the arguments and
        options given (not their defaults) as a query (patient ids pseudonymised on an
        encrypted store, as over HTTP); status 200 when the token may run the command, 403
        when refused."""
        path = "/cli/" + "/".join(command.split()[1:])
        if path_arg is not None and params.get(path_arg):
            path += "/" + str(params[path_arg])
        given = click.get_current_context()
        spelled = {  # the name the user wrote: --site, --patient, PATIENT_ID (patient_id)
            p.name: max(p.opts, key=len).lstrip("-") if isinstance(p, click.Option) else p.name
            for p in given.command.params
        }
        query = [
            (spelled.get(name) or name, "true" if value is True else str(value))
            for name, values in sorted(params.items())
            if name not in _UNLOGGED
            and name != path_arg
            and given.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
            for value in (values if isinstance(values, tuple) else (values,))
            if _loggable(value)
        ]
        self.system.tokens.log_access(
            actor=info.actor,
            role=info.role,
            scope=info.scope,
            method="CLI",
            path=path,
            query=urlencode(query),
            status=status,
        )

    def close(self) -> None:
        if self._system is not None:
            self._system.close()
            self._system = None


pass_context = click.make_pass_decorator(Context)

#: Parameters never written to the access log: the command's input (a JSON envelope may hold
#: a patient's data), files, and the token file's path.
_UNLOGGED = frozenset({"source", "file", "errors_to", "out", "token_file"})


def _loggable(value: Any) -> bool:
    if value is None or value is False:
        return False
    return isinstance(value, str | int | float | bool)


def _command_path() -> str:
    current = click.get_current_context(silent=True)
    return current.command_path if current is not None else "cart-course"


TOKEN_FILE_HELP = (
    f"Act with the token in this file (also {ENV_TOKEN}; this option wins): as the token's "
    "actor and role, and for a site-limited token on its sites' patients only, as over HTTP. "
    "Without a token: the operator, on the whole trial. No --token VALUE: a token on the "
    "command line is kept in the shell's history and shown by ps."
)


def read_token_file(path: str) -> str:
    """The token in the file at ``path`` (one line; surrounding whitespace dropped). A file
    others may read draws a warning (chmod 600 it), as ssh does for a key."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(4096)
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.BadParameter(
            f"cannot read {path!r}: {reason}", param_hint="--token-file"
        ) from None
    token = text.strip()
    if not token or any(c.isspace() for c in token):
        raise click.BadParameter(
            f"{path!r} must hold one token on one line (as 'cart-course tokens add' prints it)",
            param_hint="--token-file",
        )
    if stat.S_ISREG(mode) and mode & 0o077:
        click.echo(
            f"warning: the token file {path} may be read by others (mode {mode & 0o777:o}); "
            f"chmod 600 {path}",
            err=True,
        )
    return token


def with_token(
    roles: Iterable[str], *, trial_wide: bool = False, path_arg: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command that reads or writes patient data: ``--token-file`` (and ``CART_COURSE_TOKEN``)
    and what its token may do, named as on the HTTP route it mirrors: ``roles`` (``http/auth``'s
    role tuples), ``trial_wide`` (a site-limited token is refused). Put it under the command's
    options, above ``@pass_context``."""
    allowed = tuple(roles)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, token_file: str | None, **kwargs: Any) -> Any:
            ctx = click.get_current_context().find_object(Context)
            assert ctx is not None
            ctx.act_with(
                token_file, allowed, trial_wide=trial_wide, params=kwargs, path_arg=path_arg
            )
            return fn(*args, **kwargs)

        return click.option(
            "--token-file",
            type=click.Path(dir_okay=False),
            default=None,
            metavar="PATH",
            help=TOKEN_FILE_HELP,
        )(run)

    return decorate


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
