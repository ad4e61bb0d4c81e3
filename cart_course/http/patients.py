"""Reading patients and the log: the patient list and summary, the moves allowed now, a patient's
history, the event feed (paged and as Server-Sent Events) and the protocol's diagram."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import attrs
from litestar import Request, Response, get
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ..contract import parse_patient_id
from ..protocol.labels import labels_document
from ..protocol.machine import TRANSITIONS
from ..protocol.states import TERMINAL
from ..protocol.states import State as CourseState
from ..tokens import ROLES
from .auth import (
    ADMINS,
    AUDITORS,
    METRICS_READERS,
    READERS,
    VIEWERS,
    WRITERS,
    bearer,
    current_token,
)
from .common import PatientId, Svc, Tok, last_event_id
from .feed import PatientIndex, event_json, last_position, read_feed_page
from .params import (
    MAX_PAGE,
    MAX_STREAM_EVENTS,
    integer_query,
    last_event_id_header,
    position_query,
)
from .problems import HEAD_KEY, problem_responses

SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0
#: How often a live stream asks again whether its token is still valid (revoked: the stream ends).
SSE_RECHECK_SECONDS = 5.0


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
class Transition:
    trigger: str
    source: str
    dest: str


@attrs.define(kw_only=True)
class ProtocolDiagram:
    states: list[str]
    terminal: list[str]
    transitions: list[Transition]


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
    after: Annotated[int, position_query("Position to read after")] = 0,
    limit: Annotated[int, integer_query(1, MAX_PAGE)] = 100,
) -> EventPage:
    index: PatientIndex = request.app.state.index
    events, scanned = read_feed_page(service, index, after, limit)
    return EventPage(
        after=after,
        next_after=scanned,
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
    after: Annotated[int | None, position_query("Position to read after")] = None,
    max_events: Annotated[int | None, integer_query(1, MAX_STREAM_EVENTS)] = None,
    last_event_id_header: Annotated[str | None, last_event_id_header()] = None,
) -> ServerSentEvent:
    index: PatientIndex = request.app.state.index
    resume = last_event_id(last_event_id_header)  # checked even when ``after`` is given
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
            page, scanned = await asyncio.to_thread(read_feed_page, service, index, position, 100)
            for item in page:
                position = item["position"]
                yield ServerSentEventMessage(data=json.dumps(item), event="event", id=str(position))
                sent += 1
                if max_events is not None and sent >= max_events:
                    return
            read_past = scanned > position  # another site's events: read past, never shown
            position = scanned
            if not page and not read_past:
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


@get(
    "/v1/protocol/labels",
    opt={"roles": READERS},
    responses=problem_responses(),
    summary="The protocol's words for its states, actions, responses and eligibility criteria",
    tags=["protocol"],
)
async def get_labels() -> dict[str, Any]:
    return labels_document()


@attrs.define(kw_only=True)
class Me:
    """Who the token is, and what its role may do (the dashboard shows only that)."""

    actor: str
    role: str
    name: str | None
    #: read the board and the monitors' views
    may_view_board: bool
    #: read patients, their history and the live event stream
    may_read_patients: bool
    #: record commands (clinicians, services)
    may_record: bool
    #: open the audit report, the audit routes and the exports (auditors)
    may_audit: bool
    #: manage tokens (admins)
    may_admin: bool
    #: read /metrics
    may_read_metrics: bool
    #: the sites the token is limited to (issue 17); null: trial-wide
    sites: list[str] | None = None
    #: the site's time zone when the token is limited to exactly one site (the dashboard writes
    #: times in it); null otherwise
    site_time_zone: str | None = None


@get(
    "/v1/me",
    opt={"roles": ROLES},
    responses=problem_responses(),
    summary="The token's actor and role, and what the role may do",
    tags=["patients"],
)
async def get_me(request: Request[Any, Any, Any]) -> Me:
    info = current_token(request)
    role = info.role
    time_zone = None
    if len(info.sites) == 1:
        store = request.app.state.tokens.sites
        known = {s.id: s for s in store.list()}
        if info.sites[0] in known:
            time_zone = known[info.sites[0]].time_zone
    return Me(
        actor=info.actor,
        role=role,
        name=info.name,
        may_view_board=role in VIEWERS,
        may_read_patients=role in READERS,
        may_record=role in WRITERS,
        may_audit=role in AUDITORS,
        may_admin=role in ADMINS,
        may_read_metrics=role in METRICS_READERS,
        sites=list(info.sites) if info.sites else None,
        site_time_zone=time_zone,
    )
