"""Hypothesis strategies shared by the screening tests: a lab value with its unit (and its
upper limit of normal), each number drawn within its plausible range."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

Within = Callable[[str, str], st.SearchStrategy[float]]


@st.composite
def lab(
    draw: st.DrawFn, within: Within, key: str, units: tuple[str, ...], uln: bool
) -> dict[str, Any]:
    """``{"value", "unit"[, "uln"[, "uln_unit"]]}``, the numbers drawn by ``within(key, unit)``."""
    unit = draw(st.sampled_from(units))
    data: dict[str, Any] = {"value": draw(within(key, unit)), "unit": unit}
    if uln:
        uln_unit = draw(st.sampled_from(units))
        data["uln"] = draw(within(f"{key}_uln", uln_unit))
        if uln_unit != unit or draw(st.booleans()):
            data["uln_unit"] = uln_unit
    return data
