"""Corrections: a new event naming the corrected version, with a reason; the current state
reflects it; the history keeps both; nothing is overwritten."""

from __future__ import annotations

import datetime as dt
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


def test_moves_are_recorded_in_the_order_they_happened(service: CourseService) -> None:
    p = Course(service, "K-7")
    p.screen()
    # apheresis a year before screening: refused, nothing recorded
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "record_apheresis",
            {"apheresis_contraindication": False, "product_id": "LOT-K-7"},
            days=-365,
        )
    assert info.value.field == "occurred_at"
    assert "before this patient's last move (screen at" in info.value.message
    assert len(service.events("K-7")) == 2
    p.t += dt.timedelta(days=366)
    p.apheresis()
    p.infuse(1, days=14)  # version 4
    # a fever that began before D2 but is reported after it: a toxicity may precede the last move
    p.infuse(2)  # version 5
    p.do("report_toxicity", {"toxicity": crs(1)}, hours=-5)
    now = p.t
    # ... but not before the patient's first event
    with pytest.raises(InvalidCommandError) as info:
        p.do("report_toxicity", {"toxicity": crs(1)}, days=-800)
    assert "before this patient's first recorded event" in info.value.message
    # death decades before screening: refused
    with pytest.raises(InvalidCommandError):
        p.do("record_death", {}, days=-9000)
    assert len(service.events("K-7")) == 6
    # late entry is fine: clinical time in order, recorded (record time) whenever
    p.t = now
    assert p.do("record_death", {}, days=1).status == "recorded"


def test_a_correction_that_puts_a_move_out_of_order_is_a_finding(service: CourseService) -> None:
    p = _infused(service, "K-8")  # v2 screen, v3 apheresis, v4 D1, v5 D2
    d1 = service.events("K-8")[3]
    before_apheresis = (
        dt.datetime.fromisoformat(d1.occurred_at) - dt.timedelta(days=30)
    ).isoformat()
    done = p.do(
        "correct", {"corrects": 4, "changes": {"occurred_at": before_apheresis}}, reason="typo"
    )
    assert any("is before the move it followed (record_apheresis" in d for d in done.deviations)
    after_d2 = (dt.datetime.fromisoformat(d1.occurred_at) + dt.timedelta(days=30)).isoformat()
    done = p.do("correct", {"corrects": 4, "changes": {"occurred_at": after_d2}}, reason="typo")
    assert any("is after the move that followed it (infuse_d2" in d for d in done.deviations)
