"""ASGI middleware: metrics and the audit-access log (``observe``), and ``HEAD`` on every ``GET``
route with ``OPTIONS`` listing it (``head_as_get``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .auth import SCOPE_KEY
from .ops import CLIENT_CLOSED, UNMATCHED
from .problems import HEAD_KEY, PROBLEM_JSON, problem_bytes

log = logging.getLogger("cart_course.http")


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
                            scope=info.scope,
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
            # the route's full path template: the dashboard ("/") and the schema page
            # ("/schema") are two routes, not both "/"
            route = (
                str(scope.get("path_template") or UNMATCHED) if handler is not None else UNMATCHED
            )
            if disconnected and (status is None or status >= 500):
                label = CLIENT_CLOSED
            else:
                label = str(500 if status is None else status)
            state.metrics.observe(method, route, label, time.perf_counter() - started)

    return middleware


def route_methods(app: Any, path_template: str) -> set[str] | None:
    """Every method the route at ``path_template`` answers (all its handlers), or None."""
    for route in getattr(app, "routes", ()):
        if getattr(route, "path_format", None) == path_template:
            return {str(m) for m in getattr(route, "methods", ())}
    return None


def _allow_head(scope: Scope, send: Send) -> Send:
    """``OPTIONS`` lists every method of the route (Litestar's own answer can miss a handler
    added to the path later, e.g. ``POST /v1/tokens``), and ``HEAD`` wherever it lists ``GET``
    (as ``405`` does): the same methods as the document and ``405``."""

    async def send_allow(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = []
            template = scope.get("path_template")
            known = route_methods(scope.get("litestar_app"), str(template)) if template else None
            for name, value in message.get("headers") or []:
                if bytes(name).lower() == b"allow":
                    methods = {m.strip() for m in bytes(value).decode("latin-1").split(",")}
                    if known:
                        methods |= known
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
            await app(scope, receive, _allow_head(scope, send))
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
