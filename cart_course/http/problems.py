"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error names what was wrong and what is allowed: the domain's ``to_json`` members (failed
rules, allowed moves, the wrong field) are carried as extension members.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec

from ..errors import CartCourseError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("cart_course.http")


@attrs.define(kw_only=True)
class Problem:
    """An RFC 9457 problem: ``type``, ``title``, ``status``, ``detail``, ``instance``, plus the
    domain's members (``error`` code, ``field``, ``failed_rules``, ``allowed_moves`` ...)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    error: str | None = None
    field: str | None = None
    failed_rules: list[dict[str, str]] | None = None
    allowed_moves: list[str] | None = None


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
    body: dict[str, Any] = {
        "type": f"urn:cart-course:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "error": code,
    }
    for key, value in (extra or {}).items():
        if key not in ("error", "message"):
            body[key] = value
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def domain_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, CartCourseError)
    extra = exc.to_json()
    if "failed" in extra:  # MoveRefused uses failed_rules already; keep names stable
        extra["failed_rules"] = extra.pop("failed")
    return problem(
        request,
        status=exc.http_status,
        code=exc.code,
        title=exc.title,
        detail=exc.message,
        extra=extra,
    )


def _field_of(item: Any) -> str:
    if isinstance(item, dict):
        key = item.get("key")
        source = getattr(item.get("source"), "value", item.get("source"))
        if key and key != "data":
            return (
                f"{source}.{key}" if source in ("query", "header", "path", "cookie") else str(key)
            )
    return "(body)"


def _invalid_body(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return problem(
        request,
        status=400,
        code="invalid_body",
        title="Request body is not valid JSON",
        detail=str(exc.detail),
        extra={"field": "(body)"},
    )


def http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ValidationException):
        items = exc.extra if isinstance(exc.extra, list) else []
        first = items[0] if items else {}
        field = _field_of(first)
        message = first.get("message") if isinstance(first, dict) else None
        if field == "(body)" and not items:
            return _invalid_body(request, exc)
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
    return problem(
        request,
        status=status,
        code="http_error" if status != 404 else "not_found",
        title=str(exc.detail) if status != 404 else "Not found",
        detail=str(exc.detail),
        headers=dict(exc.headers or {}),
    )


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(
        request,
        status=500,
        code="internal_error",
        title="Internal error",
        detail=f"unexpected {type(exc).__name__}; the request was not recorded",
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    CartCourseError: domain_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}

_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "No token, or an unknown or revoked token",
    403: "The token's role may not use this route",
    404: "Not found (e.g. no such patient)",
    409: "The protocol refuses the move: failed rules and the moves allowed now",
    412: "If-Match version is not the patient's current version",
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
