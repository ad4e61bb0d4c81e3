"""The OpenAPI 3.1 document (``/schema/openapi.json`` and ``.yaml``) and its local page.

Litestar derives the document from the routes; :func:`refine` then makes it say exactly what the
server accepts: the command bodies are a ``oneOf`` of the contract's JSON Schemas
(``cart_course.schemas.SCHEMAS``) discriminated by ``command``, and every parameter carries the
constraints the server checks, taken from the same constants (``params.py``)."""

from __future__ import annotations

from html import escape
from typing import Any

from litestar import Request, Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath

from .. import __version__
from ..tokens import ROLES


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


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
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
    )
