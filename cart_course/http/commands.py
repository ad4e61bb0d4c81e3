"""The command routes: ``POST /v1/commands`` (the contract's envelope) and the per-patient
shortcut ``POST /v1/patients/{id}/commands/{command}``, with ``Idempotency-Key`` and ``If-Match``.
The recorded actor is the token's, never the body's."""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import quote

import attrs
from litestar import Request, Response, post
from litestar.datastructures import ResponseHeader
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from ..access import parse_as
from ..contract import parse_expected_version
from ..errors import InvalidCommandError, PatientNotFoundError
from .auth import COMMANDERS, current_token
from .common import (
    PatientId,
    Svc,
    header_text,
    if_match_version,
    read_json_object,
)
from .params import idempotency_header, if_match_header
from .problems import PreconditionFailedError, problem_responses


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
    expected = if_match_version(if_match)
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
    command = parse_as(data, current_token(request))  # the token is the actor
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


IDEMPOTENCY = idempotency_header()
IF_MATCH = if_match_header()
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
    opt={"roles": COMMANDERS, "body": "command"},
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
    opt={"roles": COMMANDERS, "body": "patient_command"},
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
