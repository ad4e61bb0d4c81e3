"""Wiring the ledger into the service: settings from the environment (read by ``bootstrap``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..keys import KeyFormatError, read_signing_key
from .checkpoint import DEFAULT_ORIGIN
from .core import CHECKPOINT_EVERY_EVENTS, CHECKPOINT_EVERY_MINUTES, Ledger
from .store import LedgerStore

if TYPE_CHECKING:
    from ..bootstrap import Settings
    from ..service import CourseService

ENV_SIGNING_KEY = "CART_COURSE_SIGNING_KEY"
ENV_CHECKPOINT_EVERY = "CART_COURSE_CHECKPOINT_EVERY"
ENV_CHECKPOINT_MINUTES = "CART_COURSE_CHECKPOINT_MINUTES"
ENV_LOG_ORIGIN = "CART_COURSE_LOG_ORIGIN"


def _number(environ: Mapping[str, str], name: str, default: float, kind: type) -> Any:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise StoreError(f"{name} must be a positive number (got {text!r})")
    return value


def ledger_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ledger's fields of ``bootstrap.Settings`` from the environment."""
    return {
        "signing_key": environ.get(ENV_SIGNING_KEY) or None,
        "checkpoint_every": _number(environ, ENV_CHECKPOINT_EVERY, CHECKPOINT_EVERY_EVENTS, int),
        "checkpoint_minutes": _number(
            environ, ENV_CHECKPOINT_MINUTES, CHECKPOINT_EVERY_MINUTES, float
        ),
        "log_origin": environ.get(ENV_LOG_ORIGIN) or DEFAULT_ORIGIN,
    }


def attach_ledger(service: CourseService, settings: Settings) -> Ledger:
    """Give the service its signing key and checkpointing (``settings.signing_key`` set)."""
    assert settings.signing_key is not None
    try:
        key = read_signing_key(settings.signing_key)
    except KeyFormatError as exc:
        raise StoreError(f"{ENV_SIGNING_KEY}: {exc}") from None
    try:
        store = LedgerStore.open(settings.store)
    except Exception as exc:
        raise StoreError(
            f"cannot open the ledger tables in {settings.store.display}: {exc}"
        ) from None
    ledger = Ledger(
        app=service.log,
        store=store,
        key=key,
        origin=settings.log_origin,
        every_events=settings.checkpoint_every,
        every_minutes=settings.checkpoint_minutes,
    )
    service.ledger = ledger
    return ledger
