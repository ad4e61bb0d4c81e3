"""The Litestar application: thin routes over the service (parse, call, render).

Writes take the command envelope (``POST /v1/commands``) or a per-patient shortcut
(``POST /v1/patients/{id}/commands/{command}``), an ``Idempotency-Key`` header and an optional
``If-Match`` version. The recorded actor is the token's, never the body's. Errors are RFC 9457
problem details (``problems.py``); roles per route are in each handler's ``opt`` (``auth.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from html import escape
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import attrs
from litestar import Litestar, Request, Response, Router, delete, get, post
from litestar.datastructures import ResponseHeader, State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, SerializationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.static_files import create_static_files_router
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..bootstrap import Settings, build_service
from ..contract import (
    ENVELOPE_KEYS,
    MAX_VERSION,
    parse_command,
    parse_expected_version,
    parse_patient_id,
)
from ..errors import InvalidCommandError, PatientNotFoundError, StoreError
from ..jsonin import duplicate_key
from ..protocol.errors import key_name
from ..protocol.machine import TRANSITIONS
from ..protocol.states import TERMINAL
from ..protocol.states import State as CourseState
from ..service import CourseService
from ..storage import StoreSettings
from ..tokens import ROLES, TokenStore, check_actor_role, open_token_store
from .auth import (
    ADMINS,
    AUDITORS,
    READERS,
    SCOPE_KEY,
    WRITERS,
    bearer,
    current_actor,
    current_token,
    token_guard,
)
from .feed import PatientIndex, event_json, last_position, read_feed
from .problems import (
    EXCEPTION_HANDLERS,
    HEAD_KEY,
    MAX_BODY_BYTES,
    PROBLEM_JSON,
    BodyError,
    EmptyBodyError,
    HeaderError,
    PreconditionFailedError,
    UnsupportedMediaTypeError,
    problem_bytes,
    problem_responses,
)
from .security import DASHBOARD_CSP, security_headers

STATIC = Path(__file__).resolve().parent / "static"
SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0
#: How often a live stream asks again whether its token is still valid (revoked: the stream ends).
SSE_RECHECK_SECONDS = 5.0
#: The deepest nesting of arrays and objects a JSON body may have (a command needs about 6).
MAX_JSON_DEPTH = 32
#: The OpenAPI security requirement of every route that needs a token.
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
log = logging.getLogger("cart_course.http")


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
    """Only whether the store answers: where it is and how much it holds is for ``/metrics``."""

    status: str


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


def _shown(text: str, limit: int = 40) -> str:
    """``repr`` of a client's text, cut short (an error message must not echo 5000 digits)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def header_text(value: str | None, name: str) -> str | None:
    """A header's value as text. HTTP carries bytes and Litestar reads them as Latin-1; text
    headers (Idempotency-Key, If-Match, Last-Event-ID) are UTF-8, so the same key sent in the
    header and in the body is the same key."""
    if value is None:
        return None
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # already text (not read from the raw bytes)
        return value
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HeaderError(
            name, f"{name} is not valid UTF-8; send its text encoded as UTF-8"
        ) from None


#: A version as an entity tag: as many digits as the contract's largest version has (more is no
#: version: 422, as the same number in the body's ``expected_version`` is).
_VERSION_DIGITS = len(str(MAX_VERSION))
_STRONG_TAG = re.compile(
    rf'"([0-9]{{1,{_VERSION_DIGITS}}})"|([0-9]{{1,{_VERSION_DIGITS}}})', re.ASCII
)
_WEAK_TAG = re.compile(r'W/"[^"]*"', re.ASCII)
_POSITION = re.compile(r"[0-9]{1,19}", re.ASCII)
MAX_POSITION = 2**62
IF_MATCH_HINT = (
    f"send the patient's version (a whole number from 0 to {MAX_VERSION}) as an entity tag, "
    'e.g. If-Match: "4" (or *)'
)


def _if_match(value: str | None) -> int | Literal["*"] | None:
    """The version ``If-Match`` asks for, ``"*"`` (any: the patient exists), or None.

    Strong comparison (RFC 9110 13.1.1): a weak tag (``W/"4"``) never matches, so a request
    carrying only weak tags fails with 412 without being tried."""
    text = header_text(value, "If-Match")
    if text is None:
        return None
    text = text.strip()
    if text == "*":
        return "*"
    strong: set[int] = set()
    for tag in (t.strip() for t in text.split(",")):
        found = _STRONG_TAG.fullmatch(tag)
        if found:
            strong.add(int(found.group(1) or found.group(2)))  # at most MAX_VERSION
        elif not _WEAK_TAG.fullmatch(tag):  # a weak tag is skipped: it never matches
            raise InvalidCommandError(
                "If-Match", f"{_shown(tag)} is not a version; {IF_MATCH_HINT}"
            )
    if len(strong) > 1:
        raise InvalidCommandError(
            "If-Match", f"names {len(strong)} versions; send one: the version you decided on"
        )
    if strong:
        return strong.pop()
    raise PreconditionFailedError(
        f"If-Match {_shown(text)} holds only weak entity tags, which never match under If-Match "
        f"(RFC 9110 strong comparison); {IF_MATCH_HINT}"
    )


def _last_event_id(value: str | None) -> int | None:
    text = header_text(value, "Last-Event-ID")
    if text is None:
        return None
    text = text.strip()
    if not _POSITION.fullmatch(text) or int(text) > MAX_POSITION:
        raise HeaderError(
            "Last-Event-ID",
            f"Last-Event-ID {_shown(text)} is not a position: send the id of the last event "
            f"received (a whole number from 0 to {MAX_POSITION}), or leave the header out",
        )
    return int(text)


def _apply_headers(
    data: dict[str, Any], idempotency_key: str | None, if_match: str | None
) -> tuple[dict[str, Any], bool]:
    """The envelope with the headers' key and version; True when ``If-Match: *``."""
    data = dict(data)
    key = header_text(idempotency_key, "Idempotency-Key")
    if key is not None:
        if not key.strip() or len(key) > 200:
            raise InvalidCommandError("Idempotency-Key", "must be 1-200 characters")
        body_key = data.get("idempotency_key")
        if body_key is not None and body_key != key:
            raise InvalidCommandError(
                "Idempotency-Key",
                "differs from the body's idempotency_key; send one of them, or the same value",
            )
        data["idempotency_key"] = key
    expected = _if_match(if_match)
    if isinstance(expected, int):
        # The body's version is held to the contract first (an integer, never 4.0 or true):
        # a header must not make a malformed body acceptable.
        body_expected = parse_expected_version(data.get("expected_version"))
        if body_expected is not None and body_expected != expected:
            raise InvalidCommandError(
                "If-Match", "differs from the body's expected_version; send one of them"
            )
        data["expected_version"] = expected
    return data, expected == "*"


def _execute(
    request: Request[Any, Any, Any], service: Svc, data: Any, *, any_match: bool = False
) -> Response[CommandOutcome]:
    if "actor" in data if isinstance(data, dict) else False:
        data = {k: v for k, v in data.items() if k != "actor"}  # the token is the actor
    command = parse_command(data, actor=current_actor(request))
    if any_match:
        try:
            service.record(command.patient_id)
        except PatientNotFoundError:
            raise PreconditionFailedError(
                f"If-Match: * matches a patient on record; {command.patient_id!r} is not "
                "(a patient is registered by 'screen': send it without If-Match)"
            ) from None
    result = service.execute(command).to_json()
    status = 201 if result["status"] == "recorded" else 200
    request.app.state.last_write = time.monotonic()
    headers = {"ETag": f'"{result["version"]}"'}
    if status == 201:
        headers["Location"] = f"/v1/patients/{quote(result['patient_id'], safe='')}"
    return Response(CommandOutcome(**result), status_code=status, headers=headers)


# -- JSON bodies ---------------------------------------------------------------------------------


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


class JSONRequest(Request[Any, Any, Any]):
    """Reads a JSON body strictly: text that is not UTF-8, malformed JSON and nesting deeper than
    :data:`MAX_JSON_DEPTH` are a ``400`` problem (msgspec raises UnicodeDecodeError and
    RecursionError for the first and the last, which are no server errors)."""

    async def json(self) -> Any:
        try:
            value = await super().json()
        except UnicodeDecodeError as exc:
            raise BodyError(
                f"is not valid UTF-8 ({exc.reason}); JSON text must be UTF-8 (RFC 8259)"
            ) from None
        except RecursionError:
            raise BodyError(
                f"is nested too deeply; at most {MAX_JSON_DEPTH} levels of arrays and objects"
            ) from None
        except SerializationException as exc:
            raise BodyError(f"is not valid JSON: {exc}") from None
        if _depth(value) > MAX_JSON_DEPTH:
            raise BodyError(
                f"is nested too deeply; at most {MAX_JSON_DEPTH} levels of arrays and objects"
            )
        return value


PATIENT_COMMAND_KEYS = ("occurred_at", "payload", "reason", "idempotency_key", "expected_version")
TOKEN_KEYS = ("actor", "role", "name")
_BODY_WHAT = {
    "command": "the command envelope: " + ", ".join(k for k in ENVELOPE_KEYS if k != "actor"),
    "patient_command": "the command's " + ", ".join(PATIENT_COMMAND_KEYS),
    "token": "the token's actor, role and (optional) name",
}


def _content_type_ok(media: str, params: dict[str, str]) -> bool:
    charset = params.get("charset", "utf-8").strip().strip('"').lower()
    return media.strip().lower() == "application/json" and charset in ("utf-8", "utf8")


async def read_json_object(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of the routes that take a JSON body (``opt["body"]`` names which).

    Checks, before Litestar converts anything: the body is not empty, is sent as
    ``application/json`` (else 415), is a JSON object, and (per route) has only the keys the
    route takes, each of the right type. The checked object is kept in ``request.state``."""
    kind: str = request.route_handler.opt["body"]
    what = _BODY_WHAT[kind]
    body = await request.body()
    if not body.strip():
        raise EmptyBodyError(
            f"the request body is empty; send a JSON object (Content-Type: application/json) "
            f"with {what}"
        )
    media, params = request.content_type
    if not _content_type_ok(media, params):
        sent = request.headers.get("content-type")
        raise UnsupportedMediaTypeError(
            f"Content-Type {_shown(sent) if sent else '(none)'} is not accepted; "
            "send the body as JSON in UTF-8 with Content-Type: application/json"
        )
    data = await request.json()
    if (duplicate := duplicate_key(body, data)) is not None:
        raise InvalidCommandError("(body)", duplicate.reason)
    if not isinstance(data, dict):
        raise InvalidCommandError(
            "(body)", f"must be a JSON object with {what}; got {type(data).__name__}"
        )
    if kind == "patient_command":
        extra = sorted(data.keys() - {*PATIENT_COMMAND_KEYS, "actor"})
        if extra:
            raise InvalidCommandError(
                key_name(extra[0]),
                f"unknown key; allowed keys are: {', '.join(PATIENT_COMMAND_KEYS)} "
                "(the command and patient_id come from the path, the actor from the token)",
            )
        envelope = {k: v for k, v in data.items() if k != "actor"}
        envelope.update(request.path_params)
        parse_command(envelope, actor=current_actor(request))  # the contract's checks and words
    elif kind == "token":
        extra = sorted(data.keys() - set(TOKEN_KEYS))
        if extra:
            raise InvalidCommandError(
                key_name(extra[0]), f"unknown key; allowed keys are: {', '.join(TOKEN_KEYS)}"
            )
        check_actor_role(data.get("actor"), data.get("role"), data.get("name"))  # type: ignore[arg-type]
    request.state.json_body = data


# ----------------------------------------------------------------------------------------------
# Routes
# ----------------------------------------------------------------------------------------------

IDEMPOTENCY = HeaderParameter(
    name="Idempotency-Key",
    required=False,
    description="Makes a retry safe: the same key and command is recorded once (UTF-8 text)",
)
IF_MATCH = HeaderParameter(
    name="If-Match",
    required=False,
    description='The patient\'s version you decided on, e.g. "4" (or *: the patient exists); '
    "412 when it has moved on. Weak tags (W/) never match",
)
COMMAND_RESPONSES: dict[int, ResponseSpec] = {
    **problem_responses(404, 409, 412, 413, 415),
    200: ResponseSpec(
        data_container=CommandOutcome,
        description="An idempotent retry of a command already recorded "
        '(status "duplicate"): nothing new is recorded',
        generate_examples=False,
    ),
}
COMMAND_HEADERS = [
    ResponseHeader(
        name="Location",
        documentation_only=True,
        description="The patient: /v1/patients/{patient_id}",
    ),
    ResponseHeader(
        name="ETag", documentation_only=True, description='The patient\'s new version, e.g. "5"'
    ),
]
COMMAND_CREATED = "Recorded (status recorded); Location is the patient, ETag its new version"


@post(
    "/v1/commands",
    opt={"roles": WRITERS, "body": "command"},
    before_request=read_json_object,
    sync_to_thread=True,
    responses=COMMAND_RESPONSES,
    response_headers=COMMAND_HEADERS,
    response_description=COMMAND_CREATED,
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
    envelope, any_match = _apply_headers(data, idempotency_key, if_match)
    return _execute(request, service, envelope, any_match=any_match)


@post(
    "/v1/patients/{patient_id:str}/commands/{command:str}",
    opt={"roles": WRITERS, "body": "patient_command"},
    before_request=read_json_object,
    sync_to_thread=True,
    responses=COMMAND_RESPONSES,
    response_headers=COMMAND_HEADERS,
    response_description=COMMAND_CREATED,
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
    """The body takes only ``occurred_at``, ``payload``, ``reason``, ``idempotency_key`` and
    ``expected_version`` (unknown keys are 422), checked as the contract checks them."""
    raw: dict[str, Any] = request.state.json_body  # as sent (``data`` is a lenient conversion)
    envelope = {k: v for k, v in raw.items() if k != "actor"}
    envelope.update(command=command, patient_id=patient_id)
    envelope, any_match = _apply_headers(envelope, idempotency_key, if_match)
    return _execute(request, service, envelope, any_match=any_match)


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
    data = service.summary(parse_patient_id(patient_id))
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
    record = service.record(parse_patient_id(patient_id))
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
    return [event_json(e, patient_id) for e in service.events(parse_patient_id(patient_id))]


@get(
    "/v1/events",
    opt={"roles": READERS, "audit": True},  # every patient's events: written to the access log
    sync_to_thread=True,
    responses=problem_responses(),
    summary="The event feed, paged by position",
    tags=["events"],
)
def get_events(
    request: Request[Any, Any, Any],
    service: Svc,
    after: Annotated[
        int, QueryParameter(ge=0, le=MAX_POSITION, description="Position to read after")
    ] = 0,
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
    opt={"roles": READERS, "audit": True},  # logged once per connection, as it starts
    responses=problem_responses(),
    media_type="text/event-stream",
    response_description="An endless text/event-stream: one 'event' per recorded event (id = "
    "position), comments as keep-alive; ends with an 'end' event when the token is revoked",
    summary="Server-Sent Events: each new event as it is recorded (resumes at Last-Event-ID)",
    tags=["events"],
)
async def stream_events(
    request: Request[Any, Any, Any],
    service: Svc,
    tokens: Tok,
    after: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
    max_events: Annotated[int | None, QueryParameter(ge=1, le=100_000)] = None,
    last_event_id: Annotated[
        str | None,
        HeaderParameter(
            name="Last-Event-ID",
            required=False,
            description="Resume after this position (the id of the last event received); "
            "the after parameter wins when both are sent",
        ),
    ] = None,
) -> ServerSentEvent:
    index: PatientIndex = request.app.state.index
    resume = _last_event_id(last_event_id)  # checked even when ``after`` is given
    start = after if after is not None else resume
    if start is None:
        start = await asyncio.to_thread(last_position, service)
    token = bearer(request)
    head = request.scope.get(HEAD_KEY) == "HEAD"

    async def still_valid() -> str | None:
        """None while the token is valid; else why the stream ends."""
        try:
            info = await asyncio.to_thread(tokens.authenticate, token) if token else None
        except Exception as exc:
            return f"the token cannot be checked ({type(exc).__name__}); reconnect later"
        return None if info is not None else "the token was revoked; the stream ends"

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        position = start
        sent = 0
        idle = 0.0
        checked = time.monotonic()
        yield ServerSentEventMessage(data=None, comment=f"cart-course events after {position}")
        if head:
            return
        while max_events is None or sent < max_events:
            if time.monotonic() - checked >= SSE_RECHECK_SECONDS:
                checked = time.monotonic()
                why = await still_valid()
                if why is not None:
                    end = {"error": "unauthenticated", "status": 401, "detail": why}
                    yield ServerSentEventMessage(data=json.dumps(end), event="end")
                    return
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
    opt={"roles": ADMINS, "body": "token"},
    before_request=read_json_object,
    sync_to_thread=True,
    responses=problem_responses(413, 415),
    response_headers=[
        ResponseHeader(
            name="Location",
            documentation_only=True,
            description="The token: /v1/tokens/{id} (DELETE it to revoke)",
        )
    ],
    response_description="Issued; the token is shown here once",
    status_code=201,
    summary="Issue a token for an actor and role",
    tags=["tokens"],
)
def add_token(
    request: Request[Any, Any, Any], tokens: Tok, data: JSONBody[NewToken]
) -> Response[IssuedToken]:
    """``actor`` (1-200 printable characters), ``role`` (one of the roles) and an optional
    ``name``; other keys are 422."""
    info, token = tokens.add(
        data.actor, data.role, name=data.name, created_by=current_token(request).actor
    )
    return Response(
        IssuedToken(token=token, info=_token_view(info)),
        status_code=201,
        headers={"Location": f"/v1/tokens/{quote(info.id, safe='')}"},
    )


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
    after: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return [e.to_json() for e in tokens.access_log(after=after, limit=limit)]


# -- operations --------------------------------------------------------------------------------


@get("/health", summary="The process is up (also HEAD)", tags=["operations"])
async def health() -> Health:
    return Health(status="ok", version=__version__)


@get(
    "/ready",
    sync_to_thread=True,
    summary="The store answers (also HEAD); public, for load balancers: ready or not, no more",
    tags=["operations"],
    responses={503: problem_responses()[503]},
)
def ready(service: Svc, tokens: Tok) -> Ready:
    try:
        last_position(service)
        tokens.ping()
    except Exception as exc:
        # the error's text may name the store (a path, a host): the log has it, not the answer
        log.warning("not ready: the store does not answer: %s: %s", type(exc).__name__, exc)
        raise StoreError(
            f"the store does not answer ({type(exc).__name__}); the server log has the details"
        ) from None
    mismatch = service.log.settings_mismatch()  # one row: read with this server's cipher key?
    if mismatch is not None:
        log.warning("not ready: %s", mismatch)
        raise StoreError(
            "the store's events do not read with this server's settings (cipher key or "
            "compression); the server log has the details"
        )
    return Ready(status="ready")


def _label(value: str) -> str:
    """A Prometheus label value, escaped (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
        "# HELP cart_course_store_info The event store this server uses (always 1).",
        "# TYPE cart_course_store_info gauge",
        f'cart_course_store_info{{store="{_label(request.app.state.store_display)}"}} 1',
    ]
    from .extras import views_metrics

    views = views_metrics(request.app.state)
    if "# TYPE cart_course_log_position " not in views:  # the views declare it when they run
        lines += [
            "# HELP cart_course_log_position Last notification id in the event log.",
            "# TYPE cart_course_log_position gauge",
            f"cart_course_log_position {last_position(service)}",
        ]
    return "\n".join(lines) + "\n" + views


@get("/", include_in_schema=False, media_type="text/html")
async def dashboard() -> Response[bytes]:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html",
        headers={"Content-Security-Policy": DASHBOARD_CSP},
    )


# ----------------------------------------------------------------------------------------------
# Middleware: metrics and the audit-access log
# ----------------------------------------------------------------------------------------------


#: The ``status`` label of a request whose client went away before its answer started (or
#: while the server was failing it because of that): not a server error, so no 5xx alert fires.
CLIENT_CLOSED = "client_closed"


class Metrics:
    def __init__(self) -> None:
        #: (method, route, status): status is the HTTP status as text, or :data:`CLIENT_CLOSED`
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.seconds: Counter[tuple[str, str]] = Counter()


class _ReadRefused(Exception):
    """Raised into a handler still sending the body of a read that was refused (503)."""


def observe(app: ASGIApp) -> ASGIApp:
    """Metrics, and the audit-access log: a read of an audit route is written to the log when
    its response starts, before any of its body is sent (a streamed export: before streaming
    starts). When the entry cannot be written the read is not served: ``503`` instead.

    A request whose client disconnected before the answer started (reading the body fails, the
    handler gives up) is counted with status :data:`CLIENT_CLOSED`, never as a 500."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        refused = False
        disconnected = False
        handler = scope.get("route_handler")
        method = str(scope.get(HEAD_KEY) or scope.get("method", "GET"))
        state = scope["litestar_app"].state
        audited = handler is not None and bool(handler.opt.get("audit"))

        async def refuse(exc: Exception) -> None:
            log.error("audit read of %s refused: %s", scope["path"], exc)
            body = problem_bytes(
                status=503,
                code="access_log_unavailable",
                title="Audit-access log unavailable",
                detail="this read of an audit route is not served, because "
                f"{getattr(exc, 'message', exc)}; retry later",
                instance=scope["path"],
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"5"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message  # type: ignore[return-value]

        async def send_wrapper(message: Message) -> None:
            nonlocal status, refused
            if refused:  # the handler goes on sending the refused read: stop it
                raise _ReadRefused
            if message["type"] == "http.response.start":
                status = message["status"]
                info: Any = scope.get(SCOPE_KEY)
                if audited and info is not None:
                    try:
                        await asyncio.to_thread(
                            state.tokens.log_access,
                            actor=info.actor,
                            role=info.role,
                            method=method,
                            path=scope["path"],
                            query=scope.get("query_string", b"").decode("latin-1"),
                            status=status,
                        )
                    except Exception as exc:
                        refused = True
                        status = 503
                        await refuse(exc)
                        return
            await send(message)

        try:
            await app(scope, receive_wrapper, send_wrapper)  # type: ignore[arg-type]
        except Exception:
            if not refused and not disconnected:
                raise
        finally:
            route = next(iter(handler.paths)) if handler is not None else "(unmatched)"
            if disconnected and (status is None or status >= 500):
                label = CLIENT_CLOSED
            else:
                label = str(500 if status is None else status)
            state.metrics.requests[(method, route, label)] += 1
            state.metrics.seconds[(method, route)] += time.perf_counter() - started

    return middleware


def _allow_head(send: Send) -> Send:
    """``OPTIONS`` lists ``HEAD`` wherever it lists ``GET`` (as ``405`` does): the same methods."""

    async def send_allow(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = []
            for name, value in message.get("headers") or []:
                if bytes(name).lower() == b"allow":
                    methods = {m.strip() for m in bytes(value).decode("latin-1").split(",")}
                    if "GET" in methods:
                        methods.add("HEAD")
                    value = ", ".join(sorted(m for m in methods if m)).encode("latin-1")
                headers.append((name, value))
            message = {**message, "headers": headers}
        await send(message)

    return send_allow


def head_as_get(app: ASGIApp) -> ASGIApp:
    """``HEAD`` on every ``GET`` route (RFC 9110 9.3.2): routed, authorised and answered as the
    ``GET`` (status and headers), without the body; ``OPTIONS`` lists it (``_allow_head``)."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "OPTIONS":  # type: ignore[comparison-overlap]
            await app(scope, receive, _allow_head(send))
            return
        if scope["type"] != "http" or scope.get("method") != "HEAD":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        done = False

        async def send_head(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.body":
                if not done:
                    done = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        # a copy: the server keeps its own scope (it must know the answer has no body)
        head_scope: Any = {**scope, "method": "GET", HEAD_KEY: "HEAD"}
        await app(head_scope, receive, send_head)

    return handler


# ----------------------------------------------------------------------------------------------
# The OpenAPI page: local, no script (the usual UIs load theirs from CDNs)
# ----------------------------------------------------------------------------------------------


class SchemaPage(OpenAPIRenderPlugin):
    """``/schema``: the document's links (JSON, YAML) and its operations, as plain HTML served by
    this server (no script, style, font or image from anywhere)."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        info = openapi_schema.get("info", {})
        rows = []
        for path, item in openapi_schema.get("paths", {}).items():
            for method, operation in item.items():
                if not isinstance(operation, dict):
                    continue
                rows.append(
                    f"<tr><td>{escape(method.upper())}</td><td><code>{escape(path)}</code></td>"
                    f"<td>{escape(str(operation.get('summary', '')))}</td></tr>"
                )
        page = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(str(info.get('title', '')))} API</title></head><body>"
            f"<h1>{escape(str(info.get('title', '')))} {escape(str(info.get('version', '')))}"
            "</h1>"
            f"<p>{escape(str(info.get('description', '')))}</p>"
            "<p>The OpenAPI 3.1 document: <a href='/schema/openapi.json'>openapi.json</a> · "
            "<a href='/schema/openapi.yaml'>openapi.yaml</a> (open it in any OpenAPI viewer).</p>"
            "<table><thead><tr><th>Method</th><th>Path</th><th>What</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table></body></html>\n"
        )
        return page.encode()


@get("/{path:str}", include_in_schema=False, sync_to_thread=False)
def schema_not_found(path: FromPath[str]) -> None:
    """Any other path under /schema: the ``404`` problem (no UI is served there)."""
    raise NotFoundException


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
    from . import checkpoint_routes, extras

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
    extra_routes = [*extras.routes(state), *checkpoint_routes.ROUTES]

    def close_views() -> None:
        if state.views is not None:
            state.views.close()
            state.views = None

    static = create_static_files_router(
        path="/static", directories=[STATIC], include_in_schema=False, opt={}
    )
    public: list[Any] = [health, ready, dashboard, static]
    protected = Router(
        path="/",
        route_handlers=[h for h in [*ROUTES, *extra_routes] if h not in public],
        security=BEARER,
    )
    app = Litestar(
        route_handlers=[protected, *public],
        dependencies=DEPENDENCIES,
        guards=[token_guard],
        middleware=[observe],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=JSONRequest,
        request_max_body_size=MAX_BODY_BYTES,
        state=state,
        on_shutdown=[close_views, *(on_shutdown or [])],
        openapi_config=OpenAPIConfig(
            title="cart-course",
            version=__version__,
            description=(
                "Event-sourced, auditable treatment courses for a CD19 CAR-T trial. "
                "Authenticate with 'Authorization: Bearer <token>' (every route but /health, "
                "/ready and the dashboard). Roles: "
                + ", ".join(ROLES)
                + ". Errors are RFC 9457 problem details. Every GET route also answers HEAD."
            ),
            path="/schema",
            # no UI loaded from a CDN: a local page linking to the document (JSON and YAML)
            render_plugins=[SchemaPage(), JsonRenderPlugin(), YamlRenderPlugin()],
            # registered before Litestar's own catch-all (an HTML page): a problem, as elsewhere
            openapi_router=Router(
                "/schema", route_handlers=[schema_not_found], include_in_schema=False
            ),
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        debug=False,
    )
    app.asgi_handler = security_headers(head_as_get(app.asgi_handler))
    return app


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
