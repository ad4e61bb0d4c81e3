"""The parameters of the routes, declared once with the constraints the server enforces.

Each constraint is taken from the constant the server validates with (the contract's patient
identifier and version bounds, the protocol's states and versions, the feed's positions), so the
OpenAPI document and the server cannot drift apart. Litestar checks bounds itself; where the
server's own parser checks a value (a patient id, a time, an entity tag: with the contract's
wording), ``schema_extra`` only documents it.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Any, Final

from litestar.openapi.spec import OpenAPIFormat, OpenAPIType
from litestar.params import HeaderParameter, ParameterKwarg, PathParameter, QueryParameter

from ..contract import MAX_VERSION, TIME_SCHEMA_PATTERN, UNPRINTABLE_CATEGORIES
from ..protocol.states import State as CourseState
from ..protocol.versions import VERSIONS
from ..schemas import SCHEMAS

#: The envelope's fields as the contract's JSON Schema has them (every command's envelope has
#: the same ``patient_id``, ``idempotency_key`` and ``expected_version``).
ENVELOPE: Final[dict[str, Any]] = next(iter(SCHEMAS.values()))["properties"]
#: ``^[A-Za-z0-9._:-]{1,64}$``: the contract's patient identifier.
PATIENT_ID_PATTERN: Final[str] = ENVELOPE["patient_id"]["pattern"]
#: The largest position in the log a client may name (the feed, the stream, ``wait_for``): as
#: many digits as a version, so that ``Last-Event-ID``'s pattern states the bound exactly.
MAX_POSITION: Final = MAX_VERSION
#: A position as text (``Last-Event-ID``): 1 to 18 digits, 0 .. :data:`MAX_POSITION`.
POSITION_PATTERN: Final = f"^[0-9]{{1,{len(str(MAX_POSITION))}}}$"
#: One strong entity tag (a version) or ``*``: what ``If-Match`` takes.
IF_MATCH_PATTERN: Final = (
    rf'^(\*|"[0-9]{{1,{len(str(MAX_VERSION))}}}"|[0-9]{{1,{len(str(MAX_VERSION))}}})$'
)
#: ``Idempotency-Key``: the envelope's ``idempotency_key`` (1-200 characters, not blank).
IDEMPOTENCY_KEY: Final[dict[str, Any]] = next(
    s for s in ENVELOPE["idempotency_key"]["anyOf"] if s.get("type") == "string"
)
STATES: Final = tuple(s.value for s in CourseState)
#: The most rows a page of the feed or of the access log holds.
MAX_PAGE: Final = 1000
#: The most rows a page of the board holds.
MAX_BOARD_PAGE: Final = 10_000
#: The most events one stream request may ask for.
MAX_STREAM_EVENTS: Final = 100_000


def _documented(**schema: Any) -> dict[str, Any]:
    """``schema_extra``: the parameter's whole schema (no ``null`` branch: an optional parameter
    is left out, never sent empty)."""
    return {"one_of": None, **schema}


def integer_query(
    minimum: int, maximum: int, description: str | None = None, **kwargs: Any
) -> ParameterKwarg:
    """An integer query parameter, ``minimum`` .. ``maximum`` (Litestar checks the bounds)."""
    return QueryParameter(
        ge=minimum,
        le=maximum,
        description=description,
        schema_extra=_documented(type=OpenAPIType.INTEGER, minimum=minimum, maximum=maximum),
        **kwargs,
    )


def position_query(description: str | None = None) -> ParameterKwarg:
    return integer_query(0, MAX_POSITION, description)


def patient_id_path() -> ParameterKwarg:
    return PathParameter(
        description="The trial's patient identifier: 1-64 characters of A-Z a-z 0-9 . _ - :",
        min_length=1,
        max_length=64,
        schema_extra=_documented(type=OpenAPIType.STRING, pattern=PATIENT_ID_PATTERN),
    )


def patient_id_query(description: str | None = None) -> ParameterKwarg:
    return QueryParameter(
        description=description,
        schema_extra=_documented(type=OpenAPIType.STRING, pattern=PATIENT_ID_PATTERN),
    )


def state_query() -> ParameterKwarg:
    return QueryParameter(
        name="state",
        description="One of the protocol's states",
        schema_extra=_documented(type=OpenAPIType.STRING, enum=list(STATES)),
    )


def board_sort_query() -> ParameterKwarg:
    """The board's order: one of its sort keys, ``-`` in front for descending."""
    from ..views.queries import BOARD_SORTS

    keys = [*BOARD_SORTS, *(f"-{k}" for k in BOARD_SORTS)]
    return QueryParameter(
        name="sort",
        description="Order of the rows: attention (needs attention first), patient, state (in the "
        "protocol's order), "
        "course, next_action, due, dose (% of plan), toxicity, response, last_event; '-' in "
        "front for descending; empty values last",
        schema_extra=_documented(type=OpenAPIType.STRING, enum=keys),
    )


def contains_query() -> ParameterKwarg:
    return QueryParameter(
        name="q",
        max_length=64,
        description="Patients whose id contains this text (case-insensitive)",
    )


def protocol_query() -> ParameterKwarg:
    """A protocol version's identifier (the registered versions, read when the document is
    built)."""
    return QueryParameter(
        description="A protocol version (default: each event's own)",
        schema_extra=_documented(type=OpenAPIType.STRING, enum=list(VERSIONS)),
    )


def time_query(description: str) -> ParameterKwarg:
    return QueryParameter(
        description=description,
        schema_extra=_documented(
            type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME, pattern=TIME_SCHEMA_PATTERN
        ),
    )


def idempotency_header() -> ParameterKwarg:
    return HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="Makes a retry safe: the same key and command is recorded once (UTF-8 "
        "text, as the body's idempotency_key)",
        schema_extra=_documented(
            type=OpenAPIType.STRING,
            min_length=IDEMPOTENCY_KEY["minLength"],
            max_length=IDEMPOTENCY_KEY["maxLength"],
            pattern=IDEMPOTENCY_KEY["pattern"],
        ),
    )


def if_match_header() -> ParameterKwarg:
    return HeaderParameter(
        name="If-Match",
        required=False,
        description='The patient\'s version you decided on, e.g. "4" (or *: the patient exists); '
        "412 when it has moved on. Weak tags (W/) never match",
        schema_extra=_documented(type=OpenAPIType.STRING, pattern=IF_MATCH_PATTERN),
    )


def last_event_id_header() -> ParameterKwarg:
    return HeaderParameter(
        name="Last-Event-ID",
        required=False,
        description="Resume after this position (the id of the last event received); "
        "the after parameter wins when both are sent",
        schema_extra=_documented(type=OpenAPIType.STRING, pattern=POSITION_PATTERN),
    )


@functools.cache
def unprintable_class() -> str:
    """A regex character class body of every character the contract refuses in a name
    (:data:`cart_course.contract.UNPRINTABLE_CATEGORIES`: control and format characters, line and
    paragraph separators), as ``\\uXXXX`` / ``\\U000XXXXX`` ranges (read by Python, Rust and
    ECMAScript's unicode mode alike)."""
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in UNPRINTABLE_CATEGORIES:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])

    def escaped(code: int) -> str:
        return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"

    return "".join(escaped(a) if a == b else f"{escaped(a)}-{escaped(b)}" for a, b in ranges)


def printable_text(max_length: int) -> dict[str, Any]:
    """A name as the contract takes it: 1..``max_length`` characters, not blank, nothing
    unprintable (:func:`unprintable_class`)."""
    bad = unprintable_class()
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": f"^[^{bad}]*[^{bad}\\s][^{bad}]*$",
    }
