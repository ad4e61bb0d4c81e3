"""The composition root: settings from the environment and flags -> everything a process uses.

:class:`Settings` is read here, and only here, from the environment (``CART_COURSE_DB``,
``CART_COURSE_CIPHER_KEY``, ``CART_COURSE_COMPRESS``, ``CART_COURSE_DEBUG``,
``CART_COURSE_PROTOCOL_VERSION``, ``CART_COURSE_QUERY_RULES``,
``CART_COURSE_TOKEN``, ``USER``) and the ``--db`` and
``--protocol`` flags.
:class:`System` builds, from settings, what the entry points use: the service
(commands), the log's read interface (:class:`~cart_course.eventlog.EventLog`: audit, views,
feed), the token store and the views. The CLI (``cli.common.Context``), the HTTP server
(:func:`http_app`, the factory ``cart-course serve`` gives uvicorn), ``ingest`` (its workers
build their service with :func:`build_service`) and the test fixtures all start here.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .errors import StoreError, UnauthenticatedError
from .eventlog import EventLog
from .ledger.checkpoint import DEFAULT_ORIGIN
from .ledger.core import CHECKPOINT_EVERY_EVENTS, CHECKPOINT_EVERY_MINUTES
from .ledger.service import attach_ledger, ledger_settings
from .protocol.query_rules import RULES as QUERY_RULES
from .protocol.versions import CURRENT, VERSIONS, ProtocolVersion, UnknownProtocolVersionError
from .protocol.versions import get_version as _get_version
from .service import CourseService
from .sites import LazySites
from .storage import (
    ENV_CIPHER_KEY,
    ENV_COMPRESS,
    ENV_DB,
    StoreConfigError,
    StoreSettings,
    check_reachable,
    open_application,
    parse_store_url,
    store_url_from_env,
)

if TYPE_CHECKING:
    from .tokens import TokenStore
    from .views import Views

#: ``CART_COURSE_DEBUG=1``: errors of the CLI end in their traceback.
ENV_DEBUG = "CART_COURSE_DEBUG"
#: The query rules (``protocol/query_rules.py``; issue 17) run after every command that records
#: or corrects a move they read, by default; ``CART_COURSE_QUERY_RULES=0`` turns them off (then
#: ``cart-course queries run-rules`` runs them when asked).
ENV_QUERY_RULES = "CART_COURSE_QUERY_RULES"
_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def query_rules_enabled(value: str | None) -> bool:
    """``CART_COURSE_QUERY_RULES``: unset or empty means on; anything but an on/off word is a
    one-line error naming the variable and the words it takes."""
    word = (value or "").strip().lower()
    if not word or word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise StoreError(
        f"{ENV_QUERY_RULES}: {value!r} is neither on nor off; use 1 (the default: the query "
        "rules run after every command) or 0 (they run only at 'cart-course queries run-rules')"
    )


#: ``CART_COURSE_PROTOCOL_VERSION=1.1``: the protocol version new moves are decided and recorded
#: under (default: ``versions.CURRENT``). Recorded events keep the version they were made under.
ENV_PROTOCOL_VERSION = "CART_COURSE_PROTOCOL_VERSION"


def protocol_version(version_id: str | None, source: str = ENV_PROTOCOL_VERSION) -> ProtocolVersion:
    """The protocol version named by ``version_id`` (``None`` or empty: the current one); an
    unknown one is a one-line error naming ``source`` and the known versions."""
    if not version_id:
        return CURRENT
    try:
        return _get_version(version_id.strip())
    except UnknownProtocolVersionError:
        raise StoreError(
            f"{source}: {version_id!r} is not a protocol version; known: {', '.join(VERSIONS)}"
        ) from None


def configured_protocol(
    flag: str | None = None, environ: Mapping[str, str] | None = None
) -> ProtocolVersion:
    """The protocol version this process records new moves under: ``--protocol`` (``flag``),
    else ``CART_COURSE_PROTOCOL_VERSION``, else the current one (what ``Settings`` holds, for
    commands that open no store: ``cart-course protocol ...``)."""
    if flag is not None:
        return protocol_version(flag, "--protocol")
    environ = os.environ if environ is None else environ
    return protocol_version(environ.get(ENV_PROTOCOL_VERSION))


@attrs.frozen(kw_only=True)
class Settings:
    store: StoreSettings
    cipher_key: str | None = None
    compress: bool = False
    #: The service's signing key file (``CART_COURSE_SIGNING_KEY``; see ``cart_course.ledger``)
    #: and when it checkpoints the log: every N events or T minutes.
    signing_key: str | None = None
    checkpoint_every: int = CHECKPOINT_EVERY_EVENTS
    checkpoint_minutes: float = CHECKPOINT_EVERY_MINUTES
    log_origin: str = DEFAULT_ORIGIN
    #: Run the query rules after every command that records or corrects a move they read
    #: (default; ``CART_COURSE_QUERY_RULES=0``: off).
    query_rules: bool = True
    #: The id of the protocol version new moves are decided and recorded under (``--protocol``
    #: or ``CART_COURSE_PROTOCOL_VERSION``; default ``versions.CURRENT``). An id, not the
    #: version, so that settings pickle to the ingest workers.
    protocol_id: str = CURRENT.id

    @property
    def protocol(self) -> ProtocolVersion:
        return protocol_version(self.protocol_id)

    @classmethod
    def from_env(
        cls,
        db: str | None = None,
        environ: Mapping[str, str] | None = None,
        protocol: str | None = None,
    ) -> Settings:
        """Settings from the environment; ``db`` (``--db``) and ``protocol`` (``--protocol``),
        when given, win over ``CART_COURSE_DB`` and ``CART_COURSE_PROTOCOL_VERSION``."""
        environ = os.environ if environ is None else environ
        version = configured_protocol(protocol, environ)
        try:
            store = parse_store_url(store_url_from_env(environ, db))
        except StoreConfigError as exc:
            raise StoreError(str(exc)) from None
        return cls(
            store=store,
            protocol_id=version.id,
            cipher_key=check_cipher_key(environ.get(ENV_CIPHER_KEY) or None),
            compress=environ.get(ENV_COMPRESS, "").lower() in ("1", "true", "yes", "y"),
            query_rules=query_rules_enabled(environ.get(ENV_QUERY_RULES)),
            **ledger_settings(environ),
        )

    @classmethod
    def for_store(
        cls,
        url: str,
        *,
        cipher_key: str | None = None,
        compress: bool = False,
        query_rules: bool = True,
    ) -> Settings:
        """Settings for the store ``url``, ignoring the environment (tests, tools)."""
        try:
            store = parse_store_url(url)
        except StoreConfigError as exc:
            raise StoreError(str(exc)) from None
        return cls(
            store=store,
            cipher_key=check_cipher_key(cipher_key),
            compress=compress,
            query_rules=query_rules,
        )


def check_cipher_key(key: str | None) -> str | None:
    """A key is base64 of 16, 24 or 32 random bytes (AES); say how to make one if it is not."""
    if key is None:
        return None
    try:
        raw = base64.b64decode(key.encode(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in (16, 24, 32):
        raise StoreError(
            f"{ENV_CIPHER_KEY} is not an AES key (base64 of 16, 24 or 32 bytes); make one with: "
            "cart-course new-key"
        )
    return key


def debug_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``CART_COURSE_DEBUG=1`` asks for tracebacks."""
    return (os.environ if environ is None else environ).get(ENV_DEBUG) == "1"


def operator_name(environ: Mapping[str, str] | None = None) -> str | None:
    """Who runs this process (``USER``), for what the CLI records as made by the operator."""
    return (os.environ if environ is None else environ).get("USER")


#: ``CART_COURSE_TOKEN``: the token the CLI acts with (its actor, role and sites), as
#: ``--token-file`` gives it; unset: the CLI acts as the operator (docs/security.md).
ENV_TOKEN = "CART_COURSE_TOKEN"


def cli_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The token ``CART_COURSE_TOKEN`` holds (surrounding whitespace dropped); None when unset.
    Set but blank is an error: a token was meant, and acting as the operator instead would
    widen what the command may do."""
    value = (os.environ if environ is None else environ).get(ENV_TOKEN)
    if value is None:
        return None
    if not value.strip():
        raise UnauthenticatedError(
            f"{ENV_TOKEN} is set but empty; set it to a token, or unset it to act as the operator"
        )
    return value.strip()


def export_store(settings: Settings) -> None:
    """Hand the store and the protocol version to child processes that build their own
    :class:`System` (the server's workers): they read it back with :meth:`Settings.from_env`."""
    os.environ[ENV_DB] = settings.store.url
    os.environ[ENV_PROTOCOL_VERSION] = settings.protocol.id


def build_service(settings: Settings) -> CourseService:
    """The application service over the store (StoreError, one line, when it cannot open)."""
    try:
        check_reachable(settings.store)
        app = open_application(
            settings.store, cipher_key=settings.cipher_key, compress=settings.compress
        )
    except StoreConfigError as exc:
        raise StoreError(str(exc)) from None
    except Exception as exc:  # connection refused, bad key format, unreadable file ...
        raise StoreError(f"cannot open the store {settings.store.display}: {exc}") from None
    service = CourseService(
        app,
        protocol=settings.protocol,
        query_rules=QUERY_RULES if settings.query_rules else (),
    )
    if settings.signing_key:
        attach_ledger(service, settings)
    service.sites = LazySites(lambda: build_tokens(settings), owned=True)
    return service


def build_tokens(settings: Settings) -> TokenStore:
    """The API tokens kept beside the events."""
    from .streamids import access_log_pseudonymiser
    from .tokens import open_token_store

    store = open_token_store(settings.store)
    if settings.cipher_key:  # an encrypted store's access log names no patient
        store.pseudonymise = access_log_pseudonymiser(settings.cipher_key)
    return store


def build_views(settings: Settings, log: EventLog, **options: Any) -> Views:
    """The monitors' views of the store, fed from ``log``."""
    from .views import Views

    return Views(log, settings.store, **options)


class System:
    """Everything one process uses, built from settings on first use and closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._service: CourseService | None = None
        self._tokens: TokenStore | None = None

    @property
    def service(self) -> CourseService:
        if self._service is None:
            self._service = build_service(self.settings)
            # the trial's sites from this process's token store (one database for both)
            self._service.sites = LazySites(lambda: self.tokens)
        return self._service

    @property
    def log(self) -> EventLog:
        """The store's log, read-only (audit, views, feed)."""
        return self.service.log

    @property
    def tokens(self) -> TokenStore:
        if self._tokens is None:
            self._tokens = build_tokens(self.settings)
        return self._tokens

    def views(self, **options: Any) -> Views:
        """New views of the store (the caller closes them)."""
        return build_views(self.settings, self.log, **options)

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None
        if self._tokens is not None:
            self._tokens.close()
            self._tokens = None


def http_app() -> Any:
    """The HTTP application for ``cart-course serve`` (a uvicorn factory: one per worker
    process), over a :class:`System` built from the environment."""
    from .http import create_app

    system = System(Settings.from_env())
    close: Callable[[], None] = system.close
    try:
        return create_app(
            system.service, system.tokens, store=system.settings.store, on_shutdown=[close]
        )
    except BaseException:
        close()
        raise
