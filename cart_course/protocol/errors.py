"""Errors raised by the pure protocol code."""

from __future__ import annotations


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
