"""Errors raised by the pure protocol code."""

from __future__ import annotations

from collections.abc import Sequence


class ProtocolInputError(ValueError):
    """Input that the protocol cannot evaluate: names the field, what was wrong and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ContextInputError(ProtocolInputError):
    """Input that is well formed but unusable with what is on record (cells/kg before the course
    has a weight, a toxicity id not on record). ``commands.prepare`` judges the move's sequence
    first: D3 before D1 is refused as out of sequence, not for its cells/kg."""


#: A key name longer than this, or not plain printable text, is shown by its repr, cut short.
KEY_NAME_PLAIN_MAX = 64
#: How many characters of an unusual key name are shown (then an ellipsis and its length).
KEY_NAME_SHOWN = 40


def key_name(key: object) -> str:
    """A key name a client sent, safe to put in an error's field path and its one-line message.

    An ordinary name (printable text of at most :data:`KEY_NAME_PLAIN_MAX` characters, without
    leading or trailing spaces) is shown as it is: ``colour``. Any other is shown by its
    ``repr`` -- escaped, so never a line break or a control character -- and a long one is cut
    to at most :data:`KEY_NAME_SHOWN` characters (fewer when they are escaped) with an ellipsis
    and its length:
    ``'bad\\nkey'``, ``'xxxx...' (3000 characters)``.

    >>> key_name("colour"), key_name("bad\\nkey"), key_name("x" * 70)
    ('colour', "'bad\\\\nkey'", "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (70 characters)")
    """
    if not isinstance(key, str):
        key = repr(key)
        if len(key) <= KEY_NAME_PLAIN_MAX and key.isprintable():
            return key
    elif 0 < len(key) <= KEY_NAME_PLAIN_MAX and key.isprintable() and key.strip() == key:
        return key
    shown = key[:KEY_NAME_SHOWN]
    while len(repr(shown)) > 2 * KEY_NAME_SHOWN:  # escapes (\x1f, \U0001f600) take room
        shown = shown[:-1]
    return repr(key) if shown == key else f"{shown!r}... ({len(key)} characters)"


def key_names(keys: Sequence[object], most: int = 5) -> str:
    """Several key names for a message (each by :func:`key_name`), at most ``most`` of them."""
    shown = ", ".join(key_name(k) for k in keys[:most])
    return shown if len(keys) <= most else f"{shown} and {len(keys) - most} more"
