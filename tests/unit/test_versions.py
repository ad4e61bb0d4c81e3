"""Protocol versions: an amendment is a new version and never changes an old one."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from cart_course.protocol import versions
from cart_course.protocol.parameters import DEFAULT_PARAMETERS
from cart_course.protocol.versions import (
    CURRENT,
    VERSIONS,
    UnknownProtocolVersionError,
    get_version,
    make_version,
    register,
)

AMENDED = attrs.evolve(
    DEFAULT_PARAMETERS, dose_tolerance=0.10, max_courses_on_pr=2, hold_crs_grade=2
)


def amendment(id: str = "1.1-test") -> versions.ProtocolVersion:
    return make_version(
        id, "test amendment: tighter dose tolerance, 2 courses on PR", "2027-01-01", AMENDED
    )


def test_current_version_is_1_0_with_the_trial_text_parameters() -> None:
    assert CURRENT.id == "1.0"
    assert get_version("1.0") is CURRENT
    p = CURRENT.params
    assert (p.cells_per_kg, p.fractions, p.max_courses_on_pr) == (1.0e6, (0.10, 0.30, 0.60), 3)


def test_an_amendment_is_a_new_version_with_its_own_machine() -> None:
    new = amendment()
    assert new.id != CURRENT.id
    assert new.params != CURRENT.params
    assert new.machine is not CURRENT.machine
    assert new.to_json()["parameters"]["dose_tolerance"] == 0.10
    assert CURRENT.to_json()["parameters"]["dose_tolerance"] == 0.20


def test_registering_an_existing_version_id_fails_and_keeps_the_old_one() -> None:
    before = CURRENT.params
    with pytest.raises(ValueError, match="exists and is never changed"):
        register(make_version("1.0", "rewrite", "2030-01-01", AMENDED))
    assert get_version("1.0") is CURRENT
    assert get_version("1.0").params == before == DEFAULT_PARAMETERS


def test_parameters_of_a_version_cannot_be_changed_in_place() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        CURRENT.params.dose_tolerance = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        VERSIONS["x"] = CURRENT  # type: ignore[index]


def test_unknown_version_is_named() -> None:
    with pytest.raises(UnknownProtocolVersionError) as info:
        get_version("9.9")
    assert str(info.value).startswith("unknown protocol version '9.9'; known: ")
    assert "1.0" in str(info.value)


def infusion(factor: float) -> dict[str, Any]:
    return {
        "day": 2,
        "course_number": 1,
        "weight_kg": 70.0,
        "previous_date": "2026-01-10",
        "infusion_date": "2026-01-11",
        "delivered_before": 7e6,
        "fractions_cancelled": False,
        "open_toxicities": [],
        "cells": 2.1e7 * factor,
    }


#: Recorded facts (as events carry them), re-checked under both versions: (state, trigger, facts,
#: allowed under 1.0, allowed under the amendment).
RECORDED: list[tuple[str, str, dict[str, Any], bool, bool]] = [
    ("infused_d1", "infuse_d2", infusion(1.15), True, False),
    ("infused_d1", "infuse_d2", infusion(1.05), True, True),
    ("assessed", "continue_treatment", {"response": "PR", "course_number": 2}, True, False),
    ("assessed", "continue_treatment", {"response": "PR", "course_number": 1}, True, True),
    (
        "infused_d1",
        "infuse_d2",
        {**infusion(1.0), "open_toxicities": [{"id": "CRS-1", "kind": "CRS", "grade": 1}]},
        False,
        True,
    ),
]


@pytest.mark.parametrize(("state", "trigger", "facts", "old_ok", "new_ok"), RECORDED)
def test_conformance_recheck_of_recorded_facts_under_the_amendment(
    state: str, trigger: str, facts: dict[str, Any], old_ok: bool, new_ok: bool
) -> None:
    new = amendment()
    assert CURRENT.dry_run(state, trigger, facts).allowed is old_ok
    assert new.dry_run(state, trigger, facts).allowed is new_ok
    assert CURRENT.dry_run(state, trigger, facts).allowed is old_ok  # the old one is unchanged


def test_the_amendment_names_its_own_thresholds_in_refusals() -> None:
    run = amendment().dry_run("infused_d1", "infuse_d2", infusion(1.15))
    assert "tolerance is ±10%" in run.failed[0].message
    run = amendment().dry_run(
        "assessed", "continue_treatment", {"response": "PR", "course_number": 2}
    )
    assert "(2 in all)" in run.failed[0].message
