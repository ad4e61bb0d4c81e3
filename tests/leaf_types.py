"""Values with the type of every leaf, for tests that compare data written two ways."""

from __future__ import annotations

from typing import Any


def typed(value: Any) -> Any:
    """``value`` with each leaf paired with its type's name, so that ``1 == 1.0 == True`` do not
    hide a change of type (lists and dicts are walked; anything else is a leaf)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)
