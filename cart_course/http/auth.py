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

from ..contract import Actor
from ..tokens import TokenInfo, TokenStore

WRITERS = ("service", "clinician")
#: Who records commands over ``POST /v1/commands``: the writers, and the roles that act on data
#: queries (the service refuses a command its role may not record: 403).
COMMANDERS = (*WRITERS, "monitor", "data_manager")
READERS = ("service", "clinician", "monitor", "auditor", "data_manager")
VIEWERS = ("clinician", "monitor", "auditor", "data_manager")
AUDITORS = ("auditor",)
ADMINS = ("admin",)
METRICS_READERS = ("monitor", "auditor", "admin", "data_manager")
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
    token = bearer(connection)
    if token is None:
        raise NotAuthorizedException(
            "send 'Authorization: Bearer <token>'; tokens come from 'cart-course tokens add'"
        )
    store: TokenStore = connection.app.state.tokens
    info = store.authenticate(token)
    if info is None:
        raise NotAuthorizedException("unknown or revoked token")
    connection.scope[SCOPE_KEY] = info  # type: ignore[literal-required]
    if info.role not in roles:
        raise PermissionDeniedException(
            f"role {info.role!r} may not use this route; roles allowed: {', '.join(roles)}"
        )
    if info.sites and handler.opt.get("trial_wide"):
        raise PermissionDeniedException(
            "this route reads the whole trial; this token is limited to site(s) "
            f"{', '.join(info.sites)}: use a trial-wide token"
        )


def current_token(connection: ASGIConnection[Any, Any, Any, Any]) -> TokenInfo:
    info = connection.scope.get(SCOPE_KEY)
    assert isinstance(info, TokenInfo)
    return info


def current_actor(connection: ASGIConnection[Any, Any, Any, Any]) -> Actor:
    info = current_token(connection)
    return Actor(id=info.actor, role=info.role, name=info.name)
