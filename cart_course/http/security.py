"""Security and cache headers on every response, and the Content-Security-Policy of each page.

Every answer (JSON, problems, pages, streams, the static files) carries
``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy:
no-referrer``, and a ``Content-Security-Policy`` (``frame-ancestors 'none'`` in all of them): the
strict :data:`API_CSP` unless the route set its own (the dashboard: :data:`DASHBOARD_CSP`; the
audit report: :data:`REPORT_CSP`; the schema page). Every answer but the dashboard's static
assets (``/static/...``: code, no patient data) is ``Cache-Control: no-store``: API answers,
the report and the exports carry patient data, which no browser or proxy may keep.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ..audit.report import CSS as REPORT_CSS


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: The report's one inline ``<style>`` (allowed by its hash, nothing else inline).
REPORT_STYLE = _sha256(REPORT_CSS)
#: JSON, problems, exports, streams: nothing may be loaded, run or framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#: The dashboard: its own script, stylesheet and API only; no frame (the audit report is shown
#: as a page of the dashboard, its body in the page and its style left out; the report's style
#: hash stays allowed, so that a report's markup never needs more).
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; "
    f"style-src 'self' {REPORT_STYLE}; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The printable audit report opened on its own: its inline style and SVG only.
REPORT_CSP = (
    f"default-src 'none'; style-src {REPORT_STYLE}; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The local schema page (``/schema``): plain HTML with links, no script or style.
SCHEMA_CSP = API_CSP

ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_CACHEABLE_PREFIX = "/static/"


def security_headers(app: ASGIApp) -> ASGIApp:
    """Adds the headers above to every ``http.response.start`` (a route's own
    ``Content-Security-Policy`` is kept; ``Cache-Control`` is ``no-store`` but on /static/)."""

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(_CACHEABLE_PREFIX)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers") or [])
                names = {bytes(k).lower() for k, _ in headers}
                headers += [h for h in ALWAYS if h[0] not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", API_CSP.encode()))
                if not cacheable:
                    headers = [h for h in headers if bytes(h[0]).lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_secured)

    return handler
