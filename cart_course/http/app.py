"""The Litestar application: thin routes over the service (parse, call, render).

Writes take the command envelope (``POST /v1/commands``) or a per-patient shortcut
(``POST /v1/patients/{id}/commands/{command}``), an ``Idempotency-Key`` header and an optional
``If-Match`` version. The recorded actor is the token's, never the body's. Errors are RFC 9457
problem details (``problems.py``); roles per route are in each handler's ``opt`` (``auth.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import attrs
from litestar import Litestar, Request, Response, delete, get, post
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..bootstrap import Settings, build_service
from ..contract import parse_command
from ..errors import InvalidCommandError, StoreError
from ..protocol.machine import TRANSITIONS
from ..protocol.states import TERMINAL
from ..protocol.states import State as CourseState
from ..service import CourseService
from ..storage import StoreSettings
from ..tokens import ROLES, TokenStore, open_token_store
from .auth import (
    ADMINS,
    AUDITORS,
    READERS,
    SCOPE_KEY,
    WRITERS,
    current_actor,
    current_token,
    token_guard,
)
from .feed import PatientIndex, event_json, last_position, read_feed
from .problems import EXCEPTION_HANDLERS, problem_responses

STATIC = Path(__file__).resolve().parent / "static"
SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0


# ----------------------------------------------------------------------------------------------
# Models (attrs: Litestar derives the OpenAPI 3.1 schemas from them)
# ----------------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class CommandOutcome:
    """A recorded command (201), or an idempotent retry of one already recorded (200)."""

    status: str
    patient_id: str
    version: int
    event: str
    command: str
    move: str | None
    from_state: str | None
    to_state: str
    deviations: list[str]
    outcome: dict[str, Any]
    allowed_moves: list[str]
    idempotency_key: str


@attrs.define(kw_only=True)
class PatientCommand:
    """The envelope without ``command``, ``patient_id`` and ``actor`` (they come from the path
    and the token)."""

    occurred_at: str
    payload: dict[str, Any] | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    expected_version: int | None = None


@attrs.define(kw_only=True)
class Moves:
    patient_id: str
    state: str
    version: int
    allowed_moves: list[str]


@attrs.define(kw_only=True)
class EventPage:
    """Events in log order after ``after``; ask again with ``after=next_after``."""

    after: int
    next_after: int
    last_position: int
    events: list[dict[str, Any]]


@attrs.define(kw_only=True)
class Health:
    status: str
    version: str


@attrs.define(kw_only=True)
class Ready:
    status: str
    store: str
    last_position: int


@attrs.define(kw_only=True)
class NewToken:
    actor: str
    role: str
    name: str | None = None


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


@attrs.define(kw_only=True)
class IssuedToken:
    """The token itself is shown here once; only its hash is stored."""

    token: str
    info: TokenView


@attrs.define(kw_only=True)
class Transition:
    trigger: str
    source: str
    dest: str


@attrs.define(kw_only=True)
class ProtocolDiagram:
    states: list[str]
    terminal: list[str]
    transitions: list[Transition]


def _token_view(info: Any) -> TokenView:
    return TokenView(**info.to_json())


# ----------------------------------------------------------------------------------------------
# Dependencies and helpers
# ----------------------------------------------------------------------------------------------


def _service(state: State) -> CourseService:
    service: CourseService = state.service
    return service


def _tokens(state: State) -> TokenStore:
    tokens: TokenStore = state.tokens
    return tokens


Svc = NamedDependency[CourseService]
Tok = NamedDependency[TokenStore]

DEPENDENCIES = {
    "service": Provide(_service, sync_to_thread=False),
    "tokens": Provide(_tokens, sync_to_thread=False),
}

PatientId = Annotated[
    str,
    PathParameter(description="The trial's patient identifier", min_length=1, max_length=64),
]


def _if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    text = text.removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidCommandError(
            "If-Match", f"{value!r} is not a version; send the patient's version, e.g. If-Match: 4"
        )
    return int(text)


def _apply_headers(
    data: dict[str, Any], idempotency_key: str | None, if_match: str | None
) -> dict[str, Any]:
    data = dict(data)
    if idempotency_key is not None:
        if not idempotency_key.strip() or len(idempotency_key) > 200:
            raise InvalidCommandError("Idempotency-Key", "must be 1-200 characters")
        body_key = data.get("idempotency_key")
        if body_key is not None and body_key != idempotency_key:
            raise InvalidCommandError(
                "Idempotency-Key",
                "differs from the body's idempotency_key; send one of them, or the same value",
            )
        data["idempotency_key"] = idempotency_key
    expected = _if_match(if_match)
    if expected is not None:
        body_expected = data.get("expected_version")
        if body_expected is not None and body_expected != expected:
            raise InvalidCommandError(
                "If-Match", "differs from the body's expected_version; send one of them"
            )
        data["expected_version"] = expected
    return data


def _execute(request: Request[Any, Any, Any], service: Svc, data: Any) -> Response[CommandOutcome]:
    if "actor" in data if isinstance(data, dict) else False:
        data = {k: v for k, v in data.items() if k != "actor"}  # the token is the actor
    command = parse_command(data, actor=current_actor(request))
    result = service.execute(command).to_json()
    status = 201 if result["status"] == "recorded" else 200
    request.app.state.last_write = time.monotonic()
    return Response(
        CommandOutcome(**result),
        status_code=status,
        headers={"ETag": f'"{result["version"]}"'},
    )


# ----------------------------------------------------------------------------------------------
# Routes
# ----------------------------------------------------------------------------------------------

IDEMPOTENCY = HeaderParameter(
    name="Idempotency-Key",
    required=False,
    description="Makes a retry safe: the same key and command is recorded once",
)
IF_MATCH = HeaderParameter(
    name="If-Match",
    required=False,
    description="The patient's version you decided on; 412 when it has moved on",
)


@post(
    "/v1/commands",
    opt={"roles": WRITERS},
    sync_to_thread=True,
    responses=problem_responses(404, 409, 412),
    status_code=201,
    summary="Record a command (the JSON envelope of the contract)",
    tags=["commands"],
)
def post_command(
    request: Request[Any, Any, Any],
    service: Svc,
    data: JSONBody[dict[str, Any]],
    idempotency_key: Annotated[str | None, IDEMPOTENCY] = None,
    if_match: Annotated[str | None, IF_MATCH] = None,
) -> Response[CommandOutcome]:
    """Any command of the contract: ``{"command", "patient_id", "occurred_at", "payload",
    "reason", "idempotency_key", "expected_version"}``. The actor is the token's."""
    return _execute(request, service, _apply_headers(data, idempotency_key, if_match))


@post(
    "/v1/patients/{patient_id:str}/commands/{command:str}",
    opt={"roles": WRITERS},
    sync_to_thread=True,
    responses=problem_responses(404, 409, 412),
    status_code=201,
    summary="Record a command for one patient",
    tags=["commands"],
)
def post_patient_command(
    request: Request[Any, Any, Any],
    service: Svc,
    patient_id: PatientId,
    command: FromPath[str],
    data: JSONBody[PatientCommand],
    idempotency_key: Annotated[str | None, IDEMPOTENCY] = None,
    if_match: Annotated[str | None, IF_MATCH] = None,
) -> Response[CommandOutcome]:
    envelope = {k: v for k, v in attrs.asdict(data).items() if v is not None}
    envelope.update(command=command, patient_id=patient_id)
    return _execute(request, service, _apply_headers(envelope, idempotency_key, if_match))


@get(
    "/v1/patients",
    opt={"roles": READERS},
    sync_to_thread=True,
    responses=problem_responses(),
    summary="Every patient with their state",
    tags=["patients"],
)
def list_patients(service: Svc) -> list[dict[str, Any]]:
    return service.patients()


@get(
    "/v1/patients/{patient_id:str}",
    opt={"roles": READERS},
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="A patient's state, courses, doses, toxicities and the moves allowed now",
    tags=["patients"],
)
def get_patient(service: Svc, patient_id: PatientId) -> Response[dict[str, Any]]:
    data = service.summary(patient_id)
    return Response(data, headers={"ETag": f'"{data["version"]}"'})


@get(
    "/v1/patients/{patient_id:str}/moves",
    opt={"roles": READERS},
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="The moves the protocol allows now",
    tags=["patients"],
)
def get_moves(service: Svc, patient_id: PatientId) -> Moves:
    record = service.record(patient_id)
    return Moves(
        patient_id=patient_id,
        state=record.state,
        version=record.version,
        allowed_moves=service.allowed_moves(patient_id),
    )


@get(
    "/v1/patients/{patient_id:str}/history",
    opt={"roles": READERS, "audit": True},
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="Every event of the patient in order (who, when, why, the move, the facts)",
    tags=["patients"],
)
def get_history(
    request: Request[Any, Any, Any], service: Svc, patient_id: PatientId
) -> list[dict[str, Any]]:
    return [event_json(e, patient_id) for e in service.events(patient_id)]


@get(
    "/v1/events",
    opt={"roles": READERS},
    sync_to_thread=True,
    responses=problem_responses(),
    summary="The event feed, paged by position",
    tags=["events"],
)
def get_events(
    request: Request[Any, Any, Any],
    service: Svc,
    after: Annotated[int, QueryParameter(ge=0, le=2**62, description="Position to read after")] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> EventPage:
    index: PatientIndex = request.app.state.index
    events = read_feed(service, index, after, limit)
    return EventPage(
        after=after,
        next_after=events[-1]["position"] if events else after,
        last_position=last_position(service),
        events=events,
    )


@get(
    "/v1/events/stream",
    opt={"roles": READERS},
    responses=problem_responses(),
    summary="Server-Sent Events: each new event as it is recorded (resumes at Last-Event-ID)",
    tags=["events"],
)
async def stream_events(
    request: Request[Any, Any, Any],
    service: Svc,
    after: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
    max_events: Annotated[int | None, QueryParameter(ge=1, le=100_000)] = None,
    last_event_id: Annotated[
        str | None, HeaderParameter(name="Last-Event-ID", required=False)
    ] = None,
) -> ServerSentEvent:
    index: PatientIndex = request.app.state.index
    start = after
    if start is None and last_event_id and last_event_id.strip().isdigit():
        start = int(last_event_id)
    if start is None:
        start = await asyncio.to_thread(last_position, service)

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        import json

        position = start
        sent = 0
        idle = 0.0
        yield ServerSentEventMessage(data=None, comment=f"cart-course events after {position}")
        while max_events is None or sent < max_events:
            page = await asyncio.to_thread(read_feed, service, index, position, 100)
            for item in page:
                position = item["position"]
                yield ServerSentEventMessage(data=json.dumps(item), event="event", id=str(position))
                sent += 1
                if max_events is not None and sent >= max_events:
                    return
            if not page:
                await asyncio.sleep(SSE_POLL_SECONDS)
                idle += SSE_POLL_SECONDS
                if idle >= SSE_KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield ServerSentEventMessage(data=None, comment="keep-alive")
            else:
                idle = 0.0

    return ServerSentEvent(events(), headers={"Cache-Control": "no-store"})


@get(
    "/v1/protocol",
    opt={"roles": READERS},
    responses=problem_responses(),
    summary="The protocol's states and moves (for the state diagram)",
    tags=["protocol"],
)
async def get_protocol() -> ProtocolDiagram:
    seen: set[tuple[str, str, str]] = set()
    transitions = []
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            dest = source if str(t["dest"]) == "=" else t["dest"]  # "=": stays in its state
            key = (str(t["trigger"]), str(source), str(dest))
            if key not in seen:
                seen.add(key)
                transitions.append(Transition(trigger=key[0], source=key[1], dest=key[2]))
    return ProtocolDiagram(
        states=[s.value for s in CourseState],
        terminal=sorted(s.value for s in TERMINAL),
        transitions=transitions,
    )


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
    opt={"roles": ADMINS},
    sync_to_thread=True,
    responses=problem_responses(),
    status_code=201,
    summary="Issue a token for an actor and role",
    tags=["tokens"],
)
def add_token(
    request: Request[Any, Any, Any], tokens: Tok, data: JSONBody[NewToken]
) -> IssuedToken:
    info, token = tokens.add(
        data.actor, data.role, name=data.name, created_by=current_token(request).actor
    )
    return IssuedToken(token=token, info=_token_view(info))


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
    after: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return [e.to_json() for e in tokens.access_log(after=after, limit=limit)]


# -- operations --------------------------------------------------------------------------------


@get("/health", summary="The process is up", tags=["operations"])
async def health() -> Health:
    return Health(status="ok", version=__version__)


@get(
    "/ready",
    sync_to_thread=True,
    summary="The store answers",
    tags=["operations"],
    responses={503: problem_responses()[503]},
)
def ready(request: Request[Any, Any, Any], service: Svc, tokens: Tok) -> Ready:
    try:
        position = last_position(service)
        tokens.ping()
    except Exception as exc:
        raise StoreError(f"the store does not answer: {type(exc).__name__}: {exc}") from None
    return Ready(status="ready", store=request.app.state.store_display, last_position=position)


@get(
    "/metrics",
    opt={"roles": ("monitor", "auditor", "admin")},
    sync_to_thread=True,
    responses=problem_responses(),
    media_type="text/plain; version=0.0.4",
    summary="Prometheus metrics",
    tags=["operations"],
)
def metrics(request: Request[Any, Any, Any], service: Svc) -> str:
    m: Metrics = request.app.state.metrics
    lines = [
        "# HELP cart_course_http_requests_total HTTP requests by route and status.",
        "# TYPE cart_course_http_requests_total counter",
    ]
    for (method, route, status), count in sorted(m.requests.items()):
        lines.append(
            f'cart_course_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}'
        )
    lines += [
        "# HELP cart_course_http_request_seconds_sum Time spent serving requests by route.",
        "# TYPE cart_course_http_request_seconds_sum counter",
    ]
    for (method, route), seconds in sorted(m.seconds.items()):
        lines.append(
            f'cart_course_http_request_seconds_sum{{method="{method}",route="{route}"}} {seconds:.6f}'
        )
    lines += [
        "# HELP cart_course_log_position Position of the last recorded event.",
        "# TYPE cart_course_log_position gauge",
        f"cart_course_log_position {last_position(service)}",
    ]
    from .extras import views_metrics

    return "\n".join(lines) + "\n" + views_metrics(request.app.state)


@get("/", include_in_schema=False, media_type="text/html")
async def dashboard() -> Response[bytes]:
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html")


# ----------------------------------------------------------------------------------------------
# Middleware: metrics and the audit-access log
# ----------------------------------------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.seconds: Counter[tuple[str, str]] = Counter()


def observe(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            handler = scope.get("route_handler")
            route = next(iter(handler.paths)) if handler is not None else "(unmatched)"
            method = scope.get("method", "GET")
            state = scope["litestar_app"].state
            state.metrics.requests[(method, route, status)] += 1
            state.metrics.seconds[(method, route)] += time.perf_counter() - started
            info: Any = scope.get(SCOPE_KEY)
            if handler is not None and handler.opt.get("audit") and info is not None:
                query = scope.get("query_string", b"").decode("latin-1")
                await asyncio.to_thread(
                    state.tokens.log_access,
                    actor=info.actor,
                    role=info.role,
                    method=method,
                    path=scope["path"],
                    query=query,
                    status=status,
                )

    return middleware


# ----------------------------------------------------------------------------------------------
# The factory
# ----------------------------------------------------------------------------------------------

ROUTES: list[Any] = [
    post_command,
    post_patient_command,
    list_patients,
    get_patient,
    get_moves,
    get_history,
    get_events,
    stream_events,
    get_protocol,
    list_tokens,
    add_token,
    revoke_token,
    get_access_log,
    health,
    ready,
    metrics,
    dashboard,
]


def create_app(
    service: Svc,
    tokens: Tok,
    *,
    store: StoreSettings | None = None,
    store_display: str = "",
    on_shutdown: list[Any] | None = None,
) -> Litestar:
    """The HTTP application over ``service``; ``tokens`` maps bearer tokens to actors."""
    from . import extras

    state = State(
        {
            "service": service,
            "tokens": tokens,
            "index": PatientIndex(service),
            "metrics": Metrics(),
            "store": store,
            "views": None,
            "store_display": store_display or (store.display if store else ""),
            "last_write": 0.0,
        }
    )
    extra_routes = extras.routes(state)

    def close_views() -> None:
        if state.views is not None:
            state.views.close()
            state.views = None

    static = create_static_files_router(
        path="/static", directories=[STATIC], include_in_schema=False, opt={}
    )
    return Litestar(
        route_handlers=[*ROUTES, *extra_routes, static],
        dependencies=DEPENDENCIES,
        guards=[token_guard],
        middleware=[observe],
        exception_handlers=EXCEPTION_HANDLERS,
        state=state,
        on_shutdown=[close_views, *(on_shutdown or [])],
        cors_config=CORSConfig(allow_origins=[]),
        openapi_config=OpenAPIConfig(
            title="cart-course",
            version=__version__,
            description=(
                "Event-sourced, auditable treatment courses for a CD19 CAR-T trial. "
                "Authenticate with 'Authorization: Bearer <token>'. Roles: "
                + ", ".join(ROLES)
                + ". Errors are RFC 9457 problem details."
            ),
            path="/schema",
            security=[{"bearer": []}],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """The app for ``cart-course serve`` (uvicorn factory; one per worker process)."""
    settings = Settings.from_env()
    service = build_service(settings)
    tokens = open_token_store(settings.store)

    def close() -> None:
        service.close()
        tokens.close()

    return create_app(service, tokens, store=settings.store, on_shutdown=[close])


def route_table(app: Litestar) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(method, path, roles) of every route; roles None means public."""
    table = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(getattr(handler, "http_methods", ())):
                if method in ("HEAD", "OPTIONS"):
                    continue
                table.append((method, route.path, handler.opt.get("roles")))
    return table


__all__ = ["NotFoundException", "create_app", "create_app_from_env", "route_table"]
