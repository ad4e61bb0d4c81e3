"""Errors raised by the pure protocol code."""

from __future__ import annotations


class ProtocolInputError(ValueError):
    """Input that the protocol cannot evaluate: names the field, what was wrong and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
