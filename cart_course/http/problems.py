"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error names what was wrong and what is allowed: the domain's ``to_json`` members (failed
rules, allowed moves, the wrong field) are carried as extension members. Every problem also
carries ``message``, the same text as ``detail``: a client reads ``error`` and ``message`` (and
``field`` ...) as the command contract's rejection body, the same keys as in Python, the CLI's
``--json`` and the ingest report (docs/commands.md, "Rejections").
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec

from ..audit.log import UnreadableEventError
from ..errors import (
    CartCourseError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidCommandError,
    MoveRefused,
    PatientNotFoundError,
    RecordConflictError,
    SameCommandOfAnotherActorError,
    StoreError,
    UnauthenticatedError,
    VersionConflictError,
)
from ..ingest import IngestAborted
from ..service import PatientIdTakenError
from ..sites import SiteExistsError, SiteNotFoundError
from ..tokens import TokenNotFoundError
from ..views.runner import ViewsDifferError, ViewsTimeoutError

PROBLEM_JSON = "application/problem+json"
#: The largest request body accepted (bytes); larger bodies are ``413``.
MAX_BODY_BYTES = 10_000_000
#: Methods that may change something (a 500 on them says the request was not recorded).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Scope key holding the method the client sent when it differs (HEAD is routed as GET).
HEAD_KEY = "cart_course_method"
log = logging.getLogger("cart_course.http")


@attrs.define(kw_only=True)
class Problem:
    """An RFC 9457 problem: ``type``, ``title``, ``status``, ``detail``, ``instance``, plus the
    domain's members (``error`` code, ``message`` = ``detail``, ``field``, ``failed_rules``,
    ``allowed_moves`` ...)."""

    type: str
    title: str
    status: int
    detail: str
    error: str
    message: str
    instance: str | None = None
    field: str | None = None
    #: Every invalid field of an invalid command (the first is ``field``/``message``).
    problems: list[dict[str, str]] | None = None
    failed_rules: list[dict[str, str]] | None = None
    allowed_moves: list[str] | None = None


# -- errors of the HTTP layer (problems that are not the domain's) -----------------------------


class _FieldError(CartCourseError):
    """An error about one named part of the request (a header, the body)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "field": self.field}


class BodyError(_FieldError):
    """The request body cannot be read as JSON (not UTF-8, malformed, nested too deeply)."""

    code = "invalid_body"
    title = "Request body is not valid JSON"

    def __init__(self, message: str) -> None:
        super().__init__("(body)", f"the request body {message}")


class EmptyBodyError(_FieldError):
    """A route that takes a JSON object got no body."""

    code = "empty_body"
    title = "Request body is empty"

    def __init__(self, message: str) -> None:
        super().__init__("(body)", message)


class HeaderError(_FieldError):
    """A request header that cannot be read (not UTF-8, or not the form the header takes)."""

    code = "invalid_header"
    title = "Invalid header"


class UnsupportedMediaTypeError(_FieldError):
    code = "unsupported_media_type"
    title = "Unsupported media type"

    def __init__(self, message: str) -> None:
        super().__init__("Content-Type", message)


class PreconditionFailedError(_FieldError):
    """``If-Match`` cannot match (a weak tag, or ``*`` for a patient not on record)."""

    code = "precondition_failed"
    title = "Precondition failed"

    def __init__(self, message: str) -> None:
        super().__init__("If-Match", message)


class ProductNotFoundError(CartCourseError):
    """No collection, lot or bag of that id is on record (``GET /v1/audit/product/{id}``)."""

    code = "product_not_found"
    title = "Product not found"


class CheckpointUnavailableError(CartCourseError):
    """No checkpoint to serve (nothing is signed: the server has no signing key)."""

    code = "checkpoint_unavailable"
    title = "No checkpoint"


# -- statuses ------------------------------------------------------------------------------------

#: The HTTP status of each error type: the domain and the stores know nothing of HTTP. An error
#: takes the status of the nearest class in its MRO listed here (``CartCourseError``: 400).
STATUS_OF: dict[type[CartCourseError], int] = {
    CartCourseError: 400,
    InvalidCommandError: 422,
    RecordConflictError: 409,
    SameCommandOfAnotherActorError: 409,
    IdempotencyConflictError: 422,
    EmptyBodyError: 422,
    MoveRefused: 409,
    VersionConflictError: 412,
    PreconditionFailedError: 412,
    PatientNotFoundError: 404,
    PatientIdTakenError: 409,
    SiteNotFoundError: 404,
    SiteExistsError: 409,
    TokenNotFoundError: 404,
    ProductNotFoundError: 404,
    CheckpointUnavailableError: 404,
    ForbiddenError: 403,
    UnauthenticatedError: 401,
    UnsupportedMediaTypeError: 415,
    BodyError: 400,
    HeaderError: 400,
    UnreadableEventError: 500,
    StoreError: 503,
    IngestAborted: 503,
    ViewsDifferError: 503,
    ViewsTimeoutError: 504,
}


def status_of(exc: CartCourseError) -> int:
    """The HTTP status of a domain, store or HTTP-layer error (:data:`STATUS_OF`)."""
    for cls in type(exc).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            return status
    return 400


# -- rendering -----------------------------------------------------------------------------------


def problem_json(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:cart-course:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "error": code,
        "message": detail,  # the contract's rejection body's key: the same text as detail
    }
    for key, value in (extra or {}).items():
        if key not in ("error", "message"):
            body[key] = value
    return body


def problem_bytes(**kwargs: Any) -> bytes:
    """A problem as the bytes of a response body (for middleware, outside a handler)."""
    return json.dumps(problem_json(**kwargs), separators=(",", ":")).encode()


def problem(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    body = problem_json(
        status=status,
        code=code,
        title=title,
        detail=detail,
        instance=request.url.path,
        extra=extra,
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def domain_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, CartCourseError)
    extra = exc.to_json()
    if "failed" in extra:  # MoveRefused uses failed_rules already; keep names stable
        extra["failed_rules"] = extra.pop("failed")
    return problem(
        request,
        status=status_of(exc),
        code=exc.code,
        title=exc.title,
        detail=exc.message,
        extra=extra,
    )


def forbidden_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The service refused the actor (e.g. a role that may not sign): always ``403 forbidden``."""
    assert isinstance(exc, CartCourseError)
    extra = {k: v for k, v in exc.to_json().items() if k not in ("error", "message")}
    return problem(
        request,
        status=403,
        code="forbidden",
        title="Forbidden",
        detail=exc.message or "the token's actor may not do this",
        extra=extra,
    )


def _public_name(request: Request[Any, Any, Any], key: str, source: Any) -> str:
    """The name a client sends (the query alias or header name), not the Python parameter."""
    handler = request.scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    parameter = getattr(signature, "parameters", {}).get(key) if signature is not None else None
    kwarg = getattr(parameter, "kwarg_definition", None)
    for attribute in (source, "name"):
        alias = getattr(kwarg, str(attribute), None)
        if isinstance(alias, str) and alias:
            return alias
    return key


def _field_of(request: Request[Any, Any, Any], item: Any) -> str:
    if isinstance(item, dict):
        key = item.get("key")
        source = getattr(item.get("source"), "value", item.get("source"))
        if key and key != "data":
            if source == "header":
                return _public_name(request, str(key), "header")
            if source in ("query", "path", "cookie"):
                return f"{source}.{_public_name(request, str(key), source)}"
            return str(key)
    return "(body)"


def _invalid_body(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return problem(
        request,
        status=400,
        code="invalid_body",
        title="Request body is not valid JSON",
        detail=f"the request body is not valid JSON: {exc.detail}",
        extra={"field": "(body)"},
    )


EMPTY_BODY = (
    "the request body is empty; send a JSON object (Content-Type: application/json) "
    "with the command envelope"
)


def _method(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get(HEAD_KEY) or request.method)


def _allowed_methods(exc: HTTPException) -> list[str]:
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    allowed = [m.strip() for m in headers.get("allow", "").split(",") if m.strip()]
    if "GET" in allowed and "HEAD" not in allowed:
        allowed.append("HEAD")  # every GET route answers HEAD (see middleware.head_as_get)
    return sorted(allowed)


def http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ValidationException):
        items = exc.extra if isinstance(exc.extra, list) else []
        first = items[0] if items else {}
        field = _field_of(request, first)
        message = first.get("message") if isinstance(first, dict) else None
        if field == "(body)" and not items:
            return _invalid_body(request, exc)
        if isinstance(first, dict) and first.get("key") == "data" and message == "'data'":
            return problem(
                request,
                status=422,
                code="invalid_request",
                title="Invalid request",
                detail=EMPTY_BODY,
                extra={"field": "(body)"},
            )
        return problem(
            request,
            status=422,
            code="invalid_request",
            title="Invalid request",
            detail=f"{field}: {message or exc.detail}",
            extra={"field": field},
        )
    if isinstance(exc, NotAuthorizedException):
        return problem(
            request,
            status=401,
            code="unauthenticated",
            title="Authentication required",
            detail=str(exc.detail),
            headers={"WWW-Authenticate": 'Bearer realm="cart-course"'},
        )
    if isinstance(exc, PermissionDeniedException):
        return problem(
            request,
            status=403,
            code="forbidden",
            title="Forbidden",
            detail=str(exc.detail),
        )
    status = exc.status_code
    if status == 400:
        return _invalid_body(request, exc)
    headers = dict(exc.headers or {})
    if isinstance(exc, MethodNotAllowedException) or status == 405:
        allowed = _allowed_methods(exc)
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join(allowed)
        return problem(
            request,
            status=405,
            code="method_not_allowed",
            title="Method not allowed",
            detail=f"{_method(request)} is not allowed on {request.url.path}; "
            f"allowed methods: {', '.join(allowed)}",
            extra={"allowed_methods": allowed},
            headers=headers,
        )
    if status == 404:
        detail = str(exc.detail)
        if isinstance(exc, NotFoundException) and detail in ("Not Found", ""):
            detail = (
                f"no route for {_method(request)} {request.url.path}; "
                "the routes are listed in the OpenAPI document at /schema"
            )
        return problem(request, status=404, code="not_found", title="Not found", detail=detail)
    if status == 413:
        return problem(
            request,
            status=413,
            code="body_too_large",
            title="Request body too large",
            detail=f"the request body is larger than the limit of {MAX_BODY_BYTES} bytes "
            f"({MAX_BODY_BYTES / 1_000_000:g} MB); send a smaller body",
            extra={"field": "(body)", "limit_bytes": MAX_BODY_BYTES},
        )
    return problem(
        request,
        status=status,
        code="http_error",
        title=str(exc.detail),
        detail=str(exc.detail),
        headers=headers,
    )


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    consequence = (
        "the request was not recorded"
        if _method(request) in WRITE_METHODS
        else "this read changed nothing; retry, and report it if it persists"
    )
    return problem(
        request,
        status=500,
        code="internal_error",
        title="Internal error",
        detail=f"unexpected {type(exc).__name__}; {consequence}",
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ForbiddenError: forbidden_error,
    CartCourseError: domain_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}

_DESCRIPTIONS = {
    400: "The body is not valid JSON (malformed, not UTF-8, nested too deeply) or a header "
    "cannot be read",
    401: "No token, or an unknown or revoked token",
    403: "The token's role may not use this route (or may not do this, e.g. sign)",
    404: "Not found (e.g. no such patient)",
    409: "The protocol refuses the move: failed rules and the moves allowed now",
    412: "If-Match does not match the patient's current version",
    413: "The body is larger than the limit",
    415: "The body is not sent as application/json",
    422: "Invalid input: names the wrong field and what is allowed",
    503: "The store is unavailable",
    504: "The read models did not reach the asked position in time",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    wanted = sorted({400, 401, 403, 422, 503, *statuses})
    return {
        s: ResponseSpec(
            data_container=Problem,
            description=_DESCRIPTIONS.get(s, "Problem"),
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for s in wanted
    }
