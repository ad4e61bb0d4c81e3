"""Tokens (admin) and the audit-access log (auditors): who may use the API, and who read the
audit routes."""

from __future__ import annotations

from typing import Annotated, Any

import attrs
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody

from ..errors import InvalidCommandError
from .auth import ADMINS, AUDITORS, current_token
from .common import Tok, created, location_header, read_json_object
from .params import MAX_PAGE, integer_query, position_query
from .problems import problem_responses


@attrs.define(kw_only=True)
class NewToken:
    actor: str
    role: str
    name: str | None = None
    #: The sites the token is limited to (issue 17); left out (or null): trial-wide; an empty
    #: list is refused (422), never read as "no limit".
    sites: list[str] | None = None


@attrs.define(kw_only=True)
class TokenView:
    id: str
    actor: str
    role: str
    name: str | None
    created_at: str
    created_by: str | None
    revoked_at: str | None
    revoked_by: str | None
    active: bool
    sites: list[str]


@attrs.define(kw_only=True)
class IssuedToken:
    """The token itself is shown here once; only its hash is stored."""

    token: str
    info: TokenView


def _token_view(info: Any) -> TokenView:
    return TokenView(**info.to_json())


# -- tokens (admin) ------------------------------------------------------------------------------


@get(
    "/v1/tokens",
    opt={"roles": ADMINS},
    sync_to_thread=True,
    responses=problem_responses(),
    summary="Every token (never the token itself)",
    tags=["tokens"],
)
def list_tokens(tokens: Tok) -> list[TokenView]:
    return [_token_view(i) for i in tokens.list()]


@post(
    "/v1/tokens",
    opt={"roles": ADMINS, "body": "token"},
    before_request=read_json_object,
    sync_to_thread=True,
    responses=problem_responses(413, 415),
    response_headers=location_header("The token: /v1/tokens/{id} (DELETE it to revoke)"),
    response_description="Issued; the token is shown here once",
    status_code=201,
    summary="Issue a token for an actor and role",
    tags=["tokens"],
)
def add_token(
    request: Request[Any, Any, Any], tokens: Tok, data: JSONBody[NewToken]
) -> Response[IssuedToken]:
    """``actor`` (1-200 printable characters), ``role`` (one of the roles), an optional
    ``name`` and optional ``sites`` (the sites a service, clinician or monitor token is limited
    to; left out: trial-wide; an empty list is 422, never read as "no limit"); other keys are
    422."""
    if data.sites is not None and not data.sites:
        raise InvalidCommandError(
            "sites",
            "is empty: give at least one site the token is limited to, or leave sites out "
            "for a trial-wide token",
        )
    info, token = tokens.add(
        data.actor,
        data.role,
        name=data.name,
        created_by=current_token(request).actor,
        sites=data.sites or (),
    )
    return created(IssuedToken(token=token, info=_token_view(info)), "/v1/tokens", info.id)


@delete(
    "/v1/tokens/{token_id:str}",
    opt={"roles": ADMINS},
    sync_to_thread=True,
    responses=problem_responses(404),
    status_code=200,
    summary="Revoke a token",
    tags=["tokens"],
)
def revoke_token(
    request: Request[Any, Any, Any], tokens: Tok, token_id: FromPath[str]
) -> TokenView:
    return _token_view(tokens.revoke(token_id, revoked_by=current_token(request).actor))


@get(
    "/v1/audit/access-log",
    opt={"roles": AUDITORS, "audit": True},
    sync_to_thread=True,
    responses=problem_responses(),
    summary="Who read the audit endpoints, when, and what",
    tags=["audit"],
)
def get_access_log(
    tokens: Tok,
    after: Annotated[int, position_query("Access-log id to read after")] = 0,
    limit: Annotated[int, integer_query(1, MAX_PAGE)] = 100,
) -> list[dict[str, Any]]:
    return [e.to_json() for e in tokens.access_log(after=after, limit=limit)]
