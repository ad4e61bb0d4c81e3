"""What every route module shares: the dependencies, the parameters, the headers' parsing and the
strict reading of JSON bodies (before Litestar converts anything)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import quote

from litestar import Request, Response
from litestar.datastructures import ResponseHeader, State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import SerializationException
from litestar.params import HeaderParameter, ParameterKwarg

from ..access import service_for
from ..contract import ENVELOPE_KEYS, MAX_VERSION, parse_command
from ..errors import InvalidCommandError
from ..jsonin import duplicate_key
from ..protocol.errors import key_name
from ..service import CourseService
from ..tokens import TokenInfo, TokenStore, check_actor_role
from .auth import SCOPE_KEY, current_actor
from .params import MAX_POSITION, POSITION_PATTERN, patient_id_path
from .problems import (
    BodyError,
    EmptyBodyError,
    HeaderError,
    PreconditionFailedError,
    UnsupportedMediaTypeError,
)

#: The deepest nesting of arrays and objects a JSON body may have (a command needs about 6).
MAX_JSON_DEPTH = 32
#: The OpenAPI security requirement of every route that needs a token.
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _service(request: Request[Any, Any, Any]) -> CourseService:
    """The service, as the request's token sees it: a token limited to sites (issue 17) gets a
    :class:`~cart_course.access.ScopedService` (its sites' patients only; routes over the whole
    trial are refused), every other caller the service itself."""
    info = request.scope.get(SCOPE_KEY)
    return service_for(request.app.state.service, info if isinstance(info, TokenInfo) else None)


def _tokens(state: State) -> TokenStore:
    tokens: TokenStore = state.tokens
    return tokens


Svc = NamedDependency[CourseService]
Tok = NamedDependency[TokenStore]

DEPENDENCIES = {
    "service": Provide(_service, sync_to_thread=False),
    "tokens": Provide(_tokens, sync_to_thread=False),
}

PatientId = Annotated[str, patient_id_path()]


def shown(text: str, limit: int = 40) -> str:
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
_POSITION = re.compile(POSITION_PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)
IF_MATCH_HINT = (
    f"send the patient's version (a whole number from 0 to {MAX_VERSION}) as an entity tag, "
    'e.g. If-Match: "4" (or *)'
)


def if_match_version(value: str | None) -> int | Literal["*"] | None:
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
            raise InvalidCommandError("If-Match", f"{shown(tag)} is not a version; {IF_MATCH_HINT}")
    if len(strong) > 1:
        raise InvalidCommandError(
            "If-Match", f"names {len(strong)} versions; send one: the version you decided on"
        )
    if strong:
        return strong.pop()
    raise PreconditionFailedError(
        f"If-Match {shown(text)} holds only weak entity tags, which never match under If-Match "
        f"(RFC 9110 strong comparison); {IF_MATCH_HINT}"
    )


def last_event_id(value: str | None) -> int | None:
    text = header_text(value, "Last-Event-ID")
    if text is None:
        return None
    text = text.strip()
    if not _POSITION.fullmatch(text) or int(text) > MAX_POSITION:
        raise HeaderError(
            "Last-Event-ID",
            f"Last-Event-ID {shown(text)} is not a position: send the id of the last event "
            f"received (a whole number from 0 to {MAX_POSITION}), or leave the header out",
        )
    return int(text)


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


_T = TypeVar("_T")


def location_header(description: str) -> list[ResponseHeader]:
    """The documented ``Location`` of a route that adds something (201: :func:`created`)."""
    return [ResponseHeader(name="Location", documentation_only=True, description=description)]


def created(body: _T, collection: str, item_id: str) -> Response[_T]:
    """201 with ``Location``: the added item's URL (its id quoted) under ``collection``."""
    return Response(
        body, status_code=201, headers={"Location": f"{collection}/{quote(item_id, safe='')}"}
    )


SITE_KEYS = ("id", "name", "time_zone")
PATIENT_COMMAND_KEYS = ("occurred_at", "payload", "reason", "idempotency_key", "expected_version")
TOKEN_KEYS = ("actor", "role", "name", "sites")
_BODY_WHAT = {
    "command": "the command envelope: " + ", ".join(k for k in ENVELOPE_KEYS if k != "actor"),
    "patient_command": "the command's " + ", ".join(PATIENT_COMMAND_KEYS),
    "verify": "the checkpoint's text and (optional) public_keys",
    "token": "the token's actor, role, (optional) name and (optional) sites",
    "site": "the site's id, name and time_zone",
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
            f"Content-Type {shown(sent) if sent else '(none)'} is not accepted; "
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
    elif kind == "verify":
        from .checkpoint_routes import read_verify_request

        read_verify_request(data)
    elif kind == "site":
        extra = sorted(data.keys() - set(SITE_KEYS))
        if extra:
            raise InvalidCommandError(
                key_name(extra[0]), f"unknown key; allowed keys are: {', '.join(SITE_KEYS)}"
            )
    request.state.json_body = data


# -- query parameters ----------------------------------------------------------------------------

#: Handler parameters that are not taken from the query string.
_NOT_QUERY = frozenset({"request", "data", "service", "tokens", "state", "scope", "headers"})
_PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def declared_query(handler: Any) -> dict[str, bool]:
    """The query parameters ``handler`` takes (the name a client sends -> whether it is an
    integer)."""
    cached: dict[str, bool] | None = handler.opt.get("_query")
    if cached is not None:
        return cached
    path_params = {m for p in handler.paths for m in _PATH_PARAM.findall(p)}
    found: dict[str, bool] = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        if name in _NOT_QUERY or name in path_params:
            continue
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg):
            if kwarg.header or kwarg.cookie or isinstance(kwarg, HeaderParameter):
                continue
            name = kwarg.query or kwarg.name or name
        types = get_args(field.annotation) or (field.annotation,)
        found[name] = int in types
    handler.opt["_query"] = found
    return found


async def check_query(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of every route without a body: a query parameter the route takes is
    given at most once (``?limit=1&limit=2`` is no limit), and an optional whole number is a
    number (Litestar would read ``?wait_for=null`` as "left out"). Both are ``422``."""
    declared = declared_query(request.route_handler)
    for key in request.query_params:
        if key not in declared:
            continue
        values = request.query_params.getall(key)
        if len(values) > 1:
            raise InvalidCommandError(
                f"query.{key}", f"is given {len(values)} times; give it once (or leave it out)"
            )
        if declared[key] and values[0] == "null":
            raise InvalidCommandError(
                f"query.{key}", "must be a whole number; leave the parameter out for none"
            )
