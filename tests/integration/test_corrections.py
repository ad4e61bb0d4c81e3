"""Corrections: a new event naming the corrected version, with a reason; the current state
reflects it; the history keeps both; nothing is overwritten."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

from cart_course.course import PatientCourse
from cart_course.errors import ForbiddenError, InvalidCommandError
from cart_course.service import CourseService


def _infused(service: CourseService, pid: str = "K-1") -> Course:
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)  # version 4
    # version 5: 42e6 transcribed (a deviation, so it needed a reason), 21e6 given
    p.infuse(2, factor=2.0, extra={"deviation_reason": "double dose per bag label"})
    return p


def test_a_corrected_dose_changes_the_state_and_keeps_both_in_history(
    service: CourseService,
) -> None:
    p = _infused(service)
    before = service.summary("K-1")["current_course"]
    assert before["fractions"][1]["delivered_cells"] == pytest.approx(42e6)
    assert before["fractions"][1]["deviations"], "a doubled fraction is a deviation"

    result = p.do(
        "correct",
        {"corrects": 5, "changes": {"cells": {"value": 21e6, "unit": "cells"}}},
        reason="D2 transcribed from the wrong bag label; pharmacy record says 2.1e7",
    )
    assert (result.event, result.version, result.command) == ("FactCorrected", 6, "correct")
    assert result.outcome["corrects"] == 5

    after = service.summary("K-1")
    d2 = after["current_course"]["fractions"][1]
    assert d2["delivered_cells"] == pytest.approx(21e6)
    assert d2["deviations"] == []
    assert after["current_course"]["delivered_cells"] == pytest.approx(7e6 + 21e6)
    assert after["state"] == "infused_d2"  # a correction does not move the state
    assert after["corrections"] == [
        {
            "version": 6,
            "corrects": 5,
            "trigger": "infuse_d2",
            "changes": {"cells": {"value": 21e6, "unit": "cells"}},
            "reason": "D2 transcribed from the wrong bag label; pharmacy record says 2.1e7",
            "occurred_at": p.t.isoformat(),
        }
    ]

    events = service.events("K-1")
    original, correction = events[4], events[5]
    assert isinstance(original, PatientCourse.InfusionGiven)
    assert original.payload["cells"]["value"] == pytest.approx(42e6)  # not overwritten
    assert isinstance(correction, PatientCourse.FactCorrected)
    assert correction.corrects == 5
    assert correction.payload["cells"]["value"] == pytest.approx(21e6)
    assert correction.reason.startswith("D2 transcribed")


def test_a_second_correction_builds_on_the_first(service: CourseService) -> None:
    p = _infused(service, "K-2")
    fix = {"cells": {"value": 20e6, "unit": "cells"}}
    p.do("correct", {"corrects": 5, "changes": fix}, reason="first re-count")
    p.do(
        "correct",
        {"corrects": 5, "changes": {"occurred_at": "2026-01-24T10:00:00+00:00"}},
        reason="given on the 24th, not the 23rd",
    )
    d2 = service.summary("K-2")["current_course"]["fractions"][1]
    assert d2["delivered_cells"] == pytest.approx(20e6)  # the first correction still holds
    assert d2["given_on"] == "2026-01-24"
    assert len(service.summary("K-2")["corrections"]) == 2


def test_a_corrected_toxicity_grade_lifts_the_severity(service: CourseService) -> None:
    p = _infused(service, "K-3")
    p.do("report_toxicity", {"toxicity": crs(3)}, hours=3)  # version 6
    assert service.summary("K-3")["open_toxicities"][0]["grade"] == 3
    p.do(
        "correct",
        {"corrects": 6, "changes": {"toxicity": crs(1)}},
        reason="vasopressor was given for a line flush, not for hypotension",
    )
    tox = service.summary("K-3")["open_toxicities"][0]
    assert tox["grade"] == 1


def test_a_correction_needs_a_reason_and_a_correctable_target(service: CourseService) -> None:
    p = _infused(service, "K-4")
    fix = {"corrects": 5, "changes": {"cells": {"value": 21e6, "unit": "cells"}}}
    cases = [
        ({**fix}, None, "reason"),
        ({"corrects": 99, "changes": fix["changes"]}, "typo", "payload.corrects"),
        ({"corrects": 1, "changes": fix["changes"]}, "typo", "payload.corrects"),
        ({"corrects": 5, "changes": {}}, "typo", "payload.changes"),
        ({"corrects": 5, "changes": {"day": 3}}, "typo", "payload.changes.day"),
        ({"corrects": 5, "changes": {"colour": "red"}}, "typo", "payload.changes.colour"),
        ({**fix, "why": "x"}, "typo", "payload.why"),
        # a corrected clinical time obeys the rules of any clinical time
        ({"corrects": 5, "changes": {"occurred_at": "2099-01-01T09:00:00Z"}}, "typo", None),
        ({"corrects": 5, "changes": {"occurred_at": "2026-01-01T09:00"}}, "typo", None),
    ]
    for payload, reason, field in cases:
        with pytest.raises(InvalidCommandError) as info:
            p.do("correct", payload, reason=reason)
        assert info.value.field == (field or "payload.changes.occurred_at"), (
            payload,
            info.value.message,
        )
    assert len(service.events("K-4")) == 5  # nothing recorded


def test_a_corrected_clinical_time_may_not_be_in_the_future(service: CourseService) -> None:
    p = _infused(service, "K-5")
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {"corrects": 4, "changes": {"occurred_at": "2099-01-01T09:00:00Z"}},
            reason="typo",
        )
    assert "is in the future; clinical time is when it happened" in info.value.message


def test_only_an_investigator_may_sign(service: CourseService) -> None:
    p = _infused(service, "K-6")
    with pytest.raises(ForbiddenError) as info:
        p.do(
            "sign",
            {
                "milestone": "infusion",
                "signs_version": 4,
                "meaning": "approval",
                "printed_name": "Site Robot",
            },
            actor={"id": "emr.bot", "role": "service"},
        )
    assert "a service may not sign" in info.value.message
    assert len(service.events("K-6")) == 5
