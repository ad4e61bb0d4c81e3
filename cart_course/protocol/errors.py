"""Errors raised by the pure protocol code."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple, TypeVar

_T = TypeVar("_T")


class FieldProblem(NamedTuple):
    """One invalid field of an input: its path (``creatinine.unit``) and what is allowed."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ProtocolInputError(ValueError):
    """Input that the protocol cannot evaluate: names the field, what was wrong and what is allowed.

    One error can carry several field problems (``problems``, every invalid field of a payload):
    the first is the headline (``field``, ``message``), the others are listed after it in
    ``str(error)``. A single-problem error reads exactly as ``"field: message"``.
    """

    def __init__(self, field: str, message: str, *, others: Sequence[FieldProblem] = ()) -> None:
        self.field = field
        self.message = message
        self.others: tuple[FieldProblem, ...] = tuple(others)
        super().__init__(_text(field, message, self.others))

    @property
    def problems(self) -> tuple[FieldProblem, ...]:
        """Every field problem, the headline first."""
        return (FieldProblem(self.field, self.message), *self.others)

    def with_others(self, others: Sequence[FieldProblem]) -> ProtocolInputError:
        """This error (its class and headline kept) carrying ``others`` after its own problems."""
        self.others = (*self.others, *others)
        self.args = (_text(self.field, self.message, self.others),)
        return self

    def under(self, prefix: str) -> ProtocolInputError:
        """The same error (same class) with every field path under ``prefix``
        (``payload.screening``): ``creatinine.unit`` -> ``payload.screening.creatinine.unit``.
        A path already under the prefix is kept."""

        def at(field: str) -> str:
            return field if field.startswith(prefix) else f"{prefix}.{field}"

        moved = type(self).__new__(type(self))
        moved.__dict__.update(self.__dict__)
        moved.field = at(self.field)
        moved.others = tuple(FieldProblem(at(p.field), p.message) for p in self.others)
        moved.args = (_text(moved.field, moved.message, moved.others),)
        return moved

    @classmethod
    def joined(cls, errors: Iterable[ProtocolInputError]) -> ProtocolInputError:
        """One error for several: the first (its class and headline), listing every problem of
        the others after its own."""
        first, *rest = errors
        if rest:
            first.with_others([p for e in rest for p in e.problems])
        return first


class RecordConflictInputError(ProtocolInputError):
    """Well-formed input that names something the patient's record does not hold: a version
    that is not on record, not a correctable move or not the milestone signed. Not malformed
    input (the same payload is right for another record): the contract's ``record_conflict``
    (HTTP 409), not ``invalid_command`` (422)."""


def _text(field: str, message: str, others: Sequence[FieldProblem]) -> str:
    head = f"{field}: {message}"
    if not others:
        return head
    listed = "; ".join(str(p) for p in others)
    return f"{head} (and {len(others)} more: {listed})"


class Invalid(enum.Enum):
    """What :meth:`Problems.run` returns for a value whose check failed."""

    INVALID = "invalid"


INVALID: Final = Invalid.INVALID


class Problems:
    """Collects the problems of every field of a payload instead of stopping at the first.

    >>> p = Problems()
    >>> p.run(lambda: int("7")), p.run(lambda: _refuse("a", "is required"))
    (7, <Invalid.INVALID: 'invalid'>)
    >>> p.add(ProtocolInputError("b", "must be true or false")); p.count
    2
    """

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[ProtocolInputError] = []

    @property
    def count(self) -> int:
        return len(self.errors)

    def add(self, error: ProtocolInputError) -> None:
        self.errors.append(error)

    def run(self, check: Callable[[], _T]) -> _T | Invalid:
        """``check()``, or :data:`INVALID` after recording the ``ProtocolInputError`` it raised."""
        try:
            return check()
        except ProtocolInputError as exc:
            self.errors.append(exc)
            return INVALID

    def raise_if_any(self) -> None:
        """Raise one error with every problem collected (the first is the headline)."""
        if self.errors:
            raise ProtocolInputError.joined(self.errors)


def _refuse(field: str, message: str) -> None:
    raise ProtocolInputError(field, message)


class ContextInputError(RecordConflictInputError):
    """Input that is well formed but unusable with what is on record (cells/kg before the course
    has a weight, a toxicity id not on record): a conflict with the record (HTTP 409). ``commands.prepare`` judges the move's sequence
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
