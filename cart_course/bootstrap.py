"""The composition root: settings from the environment and flags -> application -> service.

This is the only module that reads the environment.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping

import attrs

from .errors import StoreError
from .ledger.checkpoint import DEFAULT_ORIGIN
from .ledger.core import CHECKPOINT_EVERY_EVENTS, CHECKPOINT_EVERY_MINUTES
from .ledger.service import attach_ledger, ledger_settings
from .service import CourseService
from .storage import (
    ENV_CIPHER_KEY,
    ENV_COMPRESS,
    StoreConfigError,
    StoreSettings,
    check_reachable,
    open_application,
    parse_store_url,
    store_url_from_env,
)


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

    @classmethod
    def from_env(cls, db: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        try:
            store = parse_store_url(store_url_from_env(environ, db))
        except StoreConfigError as exc:
            raise StoreError(str(exc)) from None
        return cls(
            store=store,
            cipher_key=check_cipher_key(environ.get(ENV_CIPHER_KEY) or None),
            compress=environ.get(ENV_COMPRESS, "").lower() in ("1", "true", "yes", "y"),
            **ledger_settings(environ),
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


def build_service(settings: Settings) -> CourseService:
    try:
        check_reachable(settings.store)
        app = open_application(
            settings.store, cipher_key=settings.cipher_key, compress=settings.compress
        )
    except StoreConfigError as exc:
        raise StoreError(str(exc)) from None
    except Exception as exc:  # connection refused, bad key format, unreadable file ...
        raise StoreError(f"cannot open the store {settings.store.display}: {exc}") from None
    service = CourseService(app)
    if settings.signing_key:
        attach_ledger(service, settings)
    return service
