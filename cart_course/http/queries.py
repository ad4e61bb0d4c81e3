"""Data queries over HTTP (issue 17): the list of queries (from the views) and one patient's
queries with their steps (from the patient's record). Opening, answering, closing and
re-opening are commands of the contract: ``POST /v1/commands`` or
``POST /v1/patients/{id}/commands/{open_query|answer_query|close_query|reopen_query}``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from ..contract import parse_patient_id
from ..errors import InvalidCommandError
from ..views import queries as view_queries
from .auth import READERS, VIEWERS, current_token
from .common import PatientId, Svc
from .extras import SiteFilter, WaitFor, view_sites, views_of
from .params import MAX_BOARD_PAGE, integer_query, patient_id_query
from .problems import problem_responses

#: ``status``: a query's status, or ``unresolved`` (every query that is not closed).
STATUS_FILTERS = (*view_queries.QUERY_STATUSES, "unresolved")


@get(
    "/v1/patients/{patient_id:str}/queries",
    opt={"roles": READERS},
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="A patient's data queries, oldest first, each with every step (who, when, what)",
    tags=["queries"],
)
def get_patient_queries(service: Svc, patient_id: PatientId) -> list[dict[str, Any]]:
    return service.queries(parse_patient_id(patient_id))


@get(
    "/v1/queries",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(404, 504),
    summary="Data queries of every patient, oldest first, with status, age and what they are about",
    tags=["queries", "views"],
)
def get_queries(
    request: Request[Any, Any, Any],
    service: Svc,
    status: Annotated[
        str | None,
        QueryParameter(
            description="open, answered, reopened, closed, or unresolved (every query not closed)",
            schema_extra={"enum": list(STATUS_FILTERS)},
        ),
    ] = None,
    patient_id: Annotated[str | None, patient_id_query("Only this patient's queries")] = None,
    limit: Annotated[int | None, integer_query(1, MAX_BOARD_PAGE)] = None,
    site: SiteFilter = None,
    wait_for: WaitFor = None,
) -> list[dict[str, Any]]:
    if status is not None and status not in STATUS_FILTERS:
        raise InvalidCommandError(
            "query.status", f"{status[:40]!r} is not one of {', '.join(STATUS_FILTERS)}"
        )
    pid = parse_patient_id(patient_id, "query.patient_id") if patient_id is not None else None
    scope = view_sites(request, service, site)  # the token's sites, narrowed to ``site``
    if pid is not None:
        # a patient not on record is 404 (as on /v1/deviations and the exports), and another
        # site's patient, to a site-limited token, answers as one
        service.record(pid)
    access = views_of(request.app.state)
    with access.lock:
        db = access.fresh(wait_for)
        return view_queries.query_list(
            db,
            status=None if status in (None, "unresolved") else status,
            unresolved=status == "unresolved",
            patient_id=pid,
            limit=limit,
            sites=scope,
        )


@get(
    "/v1/whoami",
    opt={"roles": READERS},
    sync_to_thread=False,
    responses=problem_responses(),
    summary="The token's actor, role and name (the dashboard shows what the role may do)",
    tags=["queries"],
)
def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
    info = current_token(request)
    return {"actor": info.actor, "role": info.role, "name": info.name}


def routes(state: State) -> list[Any]:
    """The query routes (the list needs the views: a store)."""
    out: list[Any] = [get_patient_queries, whoami]
    if state.get("store") is not None:
        out.append(get_queries)
    return out
