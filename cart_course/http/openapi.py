"""The OpenAPI 3.1 document (``/schema/openapi.json`` and ``.yaml``) and its local page.

Litestar derives the document from the routes; :func:`refine` then makes it say exactly what the
server accepts: the command bodies are a ``oneOf`` of the contract's JSON Schemas
(``cart_course.schemas.SCHEMAS``) discriminated by ``command``, and every parameter carries the
constraints the server checks, taken from the same constants (``params.py``)."""

from __future__ import annotations

import copy
import re
from html import escape
from typing import Any, Final

import msgspec
from litestar import Request, Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath

from .. import (
    __version__,
    schemas,  # read when the document is made: schemas.SCHEMAS may be replaced
)
from ..protocol.sites import DEFAULT_SITE, SITE_SCHEMA
from ..sites import MAX_SITE_NAME, SITE_TIME_ZONES
from ..tokens import MAX_NAME, ROLES
from .checkpoint_routes import VerifyRequest
from .params import printable_text

Schema = dict[str, Any]
#: The one route per command whose command is a path segment: the document lists one path per
#: command instead, each with that command's body.
PATIENT_COMMAND_PATH: Final = "/v1/patients/{patient_id}/commands/{command}"
COMMANDS_PATH: Final = "/v1/commands"
_COMPONENTS: Final = "#/components/schemas/"
VERIFY_PATH: Final = "/v1/audit/verify"
_NUMERIC_KEYWORDS: Final = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
)
#: What the document says of a body's ``actor``: the server ignores it.
IGNORED_ACTOR: Final[Schema] = {
    "description": "ignored: the recorded actor is the token's (any value is accepted and dropped)"
}


def _ref(name: str) -> Schema:
    return {"$ref": _COMPONENTS + name}


def _rewrite_refs(value: Any, prefix: str) -> Any:
    """The schema with its local ``#/$defs/x`` references pointing at ``components``."""
    if isinstance(value, dict):
        out = {k: _rewrite_refs(v, prefix) for k, v in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = _COMPONENTS + prefix + ref.removeprefix("#/$defs/")
        return out
    if isinstance(value, list):
        return [_rewrite_refs(v, prefix) for v in value]
    return value


def command_components() -> dict[str, Schema]:
    """The contract's command schemas as OpenAPI components: ``Command.<name>`` (the envelope of
    ``POST /v1/commands``), ``PatientCommand.<name>`` (the per-patient body: no ``command``, no
    ``patient_id``) and their shared definitions ``CommandDefs.<name>``. The body's ``actor`` is
    accepted and ignored (the token's actor is recorded), so it is optional and unconstrained."""
    out: dict[str, Schema] = {}
    for name, original in schemas.SCHEMAS.items():
        schema = copy.deepcopy(original)
        for key, definition in schema.pop("$defs", {}).items():
            out[f"CommandDefs.{key}"] = _rewrite_refs(definition, "CommandDefs.")
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        schema = _rewrite_refs(schema, "CommandDefs.")
        schema["properties"]["actor"] = dict(IGNORED_ACTOR)
        required = [r for r in schema.get("required", []) if r != "actor"]
        payload = schema["properties"].get("payload", {})
        if payload.get("required") and "payload" not in required:
            required.append("payload")  # a payload with required fields cannot be left out
        schema["required"] = required
        out[f"Command.{name}"] = schema
        patient = copy.deepcopy(schema)
        for key in ("command", "patient_id"):
            patient["properties"].pop(key)
        patient["required"] = [r for r in patient["required"] if r not in ("command", "patient_id")]
        patient["title"] = f"{name} (for one patient)"
        out[f"PatientCommand.{name}"] = patient
    return out


def new_token_schema() -> Schema:
    """The body of ``POST /v1/tokens`` as ``tokens.check_actor_role`` checks it."""
    schema: Schema = {
        "type": "object",
        "title": "NewToken",
        "properties": {
            "actor": {**printable_text(MAX_NAME), "description": "who the token is for"},
            "role": {"enum": list(ROLES)},
            "name": {
                "anyOf": [printable_text(MAX_NAME), {"type": "null"}],
                "description": "the person's or service's printed name",
            },
        },
        "required": ["actor", "role"],
        "additionalProperties": False,
    }
    schema["properties"]["sites"] = {
        "anyOf": [
            {"type": "array", "items": dict(SITE_SCHEMA), "maxItems": 50},
            {"type": "null"},
        ],
        "description": "the sites the token is limited to (issue 17; none or null: "
        "trial-wide). Not stated by this schema: only service, clinician and monitor tokens "
        "may be limited, each site one the trial defines (else 422)",
    }
    return schema


def new_site_schema() -> Schema:
    """The body of ``POST /v1/sites`` as ``sites.SiteStore.add`` checks it."""
    return {
        "type": "object",
        "title": "NewSite",
        "properties": {
            "id": {**SITE_SCHEMA, "not": {"const": DEFAULT_SITE}},
            "name": {**printable_text(MAX_SITE_NAME), "description": "the site's name"},
            "time_zone": {
                "enum": list(SITE_TIME_ZONES),
                "description": "an IANA time zone (an Area/Location name of the tz database, "
                "or UTC), e.g. Europe/Paris",
            },
        },
        "required": ["id", "name", "time_zone"],
        "additionalProperties": False,
    }


def _integers(value: Any) -> Any:
    """Bounds as JSON integers (Litestar writes ``le=1000`` as ``1000.0``)."""
    if isinstance(value, dict):
        return {
            k: int(v)
            if k in _NUMERIC_KEYWORDS and isinstance(v, float) and v.is_integer()
            else _integers(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\W]+", name) if part)


def refine(document: Schema) -> Schema:
    """The document Litestar derived, made exact (see the module's docstring)."""
    doc: Schema = _integers(copy.deepcopy(document))
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components.pop("PatientCommand", None)
    components.update(command_components())
    components["NewToken"] = new_token_schema()
    components["NewSite"] = new_site_schema()
    paths: dict[str, Any] = doc.get("paths", {})
    post = paths.get(COMMANDS_PATH, {}).get("post")
    if post is not None:
        post["requestBody"] = {
            "required": True,
            "description": "The contract's command envelope: one of the commands, told apart by "
            "`command`",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [_ref(f"Command.{name}") for name in schemas.SCHEMAS],
                        "discriminator": {
                            "propertyName": "command",
                            "mapping": {
                                name: _COMPONENTS + f"Command.{name}" for name in schemas.SCHEMAS
                            },
                        },
                    }
                }
            },
        }
    verify = paths.get(VERIFY_PATH, {}).get("post")
    if verify is not None:  # the body's schema as msgspec states it (Litestar drops patterns)
        (body,), defs = msgspec.json.schema_components(
            [VerifyRequest], ref_template=_COMPONENTS + "{name}"
        )
        components.update(defs)
        verify["requestBody"]["content"]["application/json"]["schema"] = body
    template = paths.pop(PATIENT_COMMAND_PATH, None)
    if template is not None:
        for name in schemas.SCHEMAS:
            item = copy.deepcopy(template)
            operation = item["post"]
            operation["parameters"] = [
                p for p in operation.get("parameters", []) if p.get("name") != "command"
            ]
            operation["operationId"] = f"Record{_camel(name)}"
            operation["summary"] = f"Record {name} for one patient"
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(f"PatientCommand.{name}")}},
            }
            paths[PATIENT_COMMAND_PATH.replace("{command}", name)] = item
    return doc


class _Refined(OpenAPIRenderPlugin):
    """A render plugin that renders :func:`refine`'s document (made once per app)."""

    _made: tuple[int, Schema] | None = None

    def refined(self, openapi_schema: Schema) -> Schema:
        if self._made is None or self._made[0] != id(openapi_schema):
            self._made = (id(openapi_schema), refine(openapi_schema))
        return self._made[1]


class JsonDocument(_Refined, JsonRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: Schema) -> bytes:
        return super().render(request, self.refined(openapi_schema))


class YamlDocument(_Refined, YamlRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: Schema) -> bytes:
        return super().render(request, self.refined(openapi_schema))


class SchemaPage(_Refined):
    """``/schema``: the document's links (JSON, YAML) and its operations, as plain HTML served by
    this server (no script, style, font or image from anywhere)."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        openapi_schema = self.refined(openapi_schema)
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
        render_plugins=[SchemaPage(), JsonDocument(), YamlDocument()],
        # registered before Litestar's own catch-all (an HTML page): a problem, as elsewhere
        openapi_router=Router(
            "/schema", route_handlers=[schema_not_found], include_in_schema=False
        ),
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
        ),
    )
