"""The trial's sites over HTTP (issue 17), for admins: list, add, deactivate."""

from __future__ import annotations

from typing import Annotated, Any

import attrs
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from ..errors import InvalidCommandError
from ..protocol.text import FREE_TEXT_PATTERN, free_text_problem
from .auth import ADMINS, current_token
from .common import Tok, created, location_header, read_json_object
from .problems import problem_responses

#: A deactivation reason: free text of up to 4000 characters (as a command's reason).
REASON_MAX = 4000


@attrs.define(kw_only=True)
class NewSite:
    id: str
    name: str
    time_zone: str


@attrs.define(kw_only=True)
class SiteView:
    id: str
    name: str
    time_zone: str
    active: bool
    created_at: str
    created_by: str | None
    deactivated_at: str | None
    deactivated_by: str | None
    deactivation_reason: str | None


def _view(site: Any) -> SiteView:
    return SiteView(**site.to_json())


@get(
    "/v1/sites",
    opt={"roles": ADMINS},
    sync_to_thread=True,
    responses=problem_responses(),
    summary="The trial's sites (id, name, IANA time zone, active; who added or deactivated them)",
    tags=["sites"],
)
def list_sites(tokens: Tok) -> list[SiteView]:
    tokens.sites.forget()
    return [_view(s) for s in tokens.sites.list()]


@post(
    "/v1/sites",
    opt={"roles": ADMINS, "body": "site"},
    before_request=read_json_object,
    sync_to_thread=True,
    responses=problem_responses(409, 413, 415),
    response_headers=location_header("The site: /v1/sites/{id}"),
    response_description="Added",
    status_code=201,
    summary="Add a site (id, name, IANA time zone)",
    tags=["sites"],
)
def add_site(
    request: Request[Any, Any, Any], tokens: Tok, data: JSONBody[NewSite]
) -> Response[SiteView]:
    site = tokens.sites.add(
        data.id, data.name, data.time_zone, created_by=current_token(request).actor
    )
    return created(_view(site), "/v1/sites", site.id)


@delete(
    "/v1/sites/{site_id:str}",
    opt={"roles": ADMINS},
    sync_to_thread=True,
    responses=problem_responses(404),
    status_code=200,
    summary="Deactivate a site: no new patient or transfer in; its patients and tokens stay",
    tags=["sites"],
)
def deactivate_site(
    request: Request[Any, Any, Any],
    tokens: Tok,
    site_id: FromPath[str],
    reason: Annotated[
        str | None,
        QueryParameter(
            min_length=1,
            max_length=REASON_MAX,
            description="Why the site closes (kept with the change, as `sites deactivate "
            "--reason`): free text (no control character but line feed and tab)",
            schema_extra={"pattern": FREE_TEXT_PATTERN},
        ),
    ] = None,
) -> SiteView:
    if reason is not None:
        problem = free_text_problem(reason) if reason.strip() else "must not be blank"
        if problem is not None:
            raise InvalidCommandError("query.reason", problem)
    return _view(tokens.sites.deactivate(site_id, by=current_token(request).actor, reason=reason))


ROUTES = [list_sites, add_site, deactivate_site]
