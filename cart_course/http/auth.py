"""Bearer tokens -> actor and role; each route names the roles that may use it.

A route's ``opt`` carries ``roles`` (a tuple of roles); routes without it are public (health,
readiness, the dashboard's static files, the OpenAPI document). ``audit=True`` marks the routes
whose reads are written to the audit-access log.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from ..access import (  # the roles of each route: one table for HTTP and the CLI
    ADMINS,
    AUDITORS,
    COMMANDERS,
    METRICS_READERS,
    READERS,
    VIEWERS,
    WRITERS,
    actor_of,
    authenticate,
    permit,
)
from ..contract import Actor
from ..errors import ForbiddenError, UnauthenticatedError
from ..tokens import TokenInfo, TokenStore

__all__ = [
    "ADMINS",
    "AUDITORS",
    "COMMANDERS",
    "METRICS_READERS",
    "READERS",
    "VIEWERS",
    "WRITERS",
]
SCOPE_KEY = "cart_course_token"


def bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    roles: tuple[str, ...] | None = handler.opt.get("roles")
    if roles is None:
        return
    store: TokenStore = connection.app.state.tokens
    try:
        info = authenticate(store, bearer(connection))
    except UnauthenticatedError as exc:
        raise NotAuthorizedException(exc.message) from None
    connection.scope[SCOPE_KEY] = info  # type: ignore[literal-required]
    try:  # the same checks as the CLI's (access.permit)
        permit(info, roles, trial_wide=bool(handler.opt.get("trial_wide")), what="this route")
    except ForbiddenError as exc:
        raise PermissionDeniedException(exc.message) from None


def current_token(connection: ASGIConnection[Any, Any, Any, Any]) -> TokenInfo:
    info = connection.scope.get(SCOPE_KEY)
    assert isinstance(info, TokenInfo)
    return info


def current_actor(connection: ASGIConnection[Any, Any, Any, Any]) -> Actor:
    return actor_of(current_token(connection))
