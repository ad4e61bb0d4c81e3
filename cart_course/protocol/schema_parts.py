"""Parts of JSON Schemas (draft 2020-12) the command definitions and ``schemas.py`` share.

Plain data builders: a command's payload schema is written in its definition
(``registry.py``) with these; ``schemas.py`` assembles the envelopes from the definitions.
"""

from __future__ import annotations

from typing import Any, Final

Schema = dict[str, Any]


def text(max_len: int, description: str = "") -> Schema:
    """A non-blank string of at most ``max_len`` characters."""
    schema: Schema = {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": r"\S"}
    if description:
        schema["description"] = description
    return schema


#: What free text may not hold (``protocol/text.py``): control characters but line feed and tab,
#: the line and paragraph separators, the bidirectional embeddings, overrides and isolates.
NOT_FREE_TEXT = (
    r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e"
    r"\u2066-\u2069\u061c]"
)


def free_text(max_len: int, description: str = "") -> Schema:
    """:func:`text` that is free text: printable, line feeds and tabs allowed
    (``text.free_text_problem``)."""
    return {**text(max_len, description), "not": {"pattern": NOT_FREE_TEXT}}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(
    properties: dict[str, Schema], required: tuple[str, ...] = (), description: str = ""
) -> Schema:
    """An object of exactly these properties (no others)."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def quantity(units: tuple[str, ...], description: str, *, minimum: float = 0) -> Schema:
    """A value with its unit: ``{"value": 70, "unit": "kg"}``."""
    return obj(
        {"value": {"type": "number", "minimum": minimum}, "unit": {"enum": list(units)}},
        ("value", "unit"),
        description,
    )


#: The payload of a command without facts.
EMPTY: Final[Schema] = {"type": "object", "maxProperties": 0}
BOOL: Final[Schema] = {"type": "boolean"}
DATE: Final[Schema] = {
    "type": "string",
    "format": "date",
    "pattern": r"^\d{4}-\d{2}-\d{2}$",
    "description": "a calendar date, YYYY-MM-DD",
}
PCT: Final[Schema] = {"type": "number", "minimum": 0, "maximum": 100}
