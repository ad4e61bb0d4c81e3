"""Issue 20: the pre-infusion observations are correctable (``correct`` with
``changes.pre_infusion``), on a fraction given (``give_infusion``) and on a bedside assessment
(``assess_pre_infusion``): the gate is judged again on the corrected value (the correction's
findings, the fraction's deviations, conformance), and the hold the views show follows the
corrected assessment while the next fraction still waits on it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course

from cart_course.audit import patient_events
from cart_course.audit.conformance import check_history
from cart_course.bootstrap import Settings, build_service
from cart_course.demo import NURSE, pre_infusion
from cart_course.errors import InvalidCommandError, MoveRefused
from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views import Views, queries

FIX = "transcribed from the wrong chart; the nursing record says otherwise"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[CourseService, Views]]:
    url = str(tmp_path / "s.sqlite")
    service = build_service(Settings.for_store(url))
    views = Views(service.log, parse_store_url(url))
    try:
        yield service, views
    finally:
        views.close()
        service.close()


def _after_d1(service: CourseService, pid: str) -> Course:
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)  # version 4
    return p


def _board_row(views: Views, pid: str) -> tuple[object, object]:
    views.catch_up()
    row = queries.patient(views.db, pid)
    assert row is not None
    return row["next_action"], row["hold"]


def test_the_hold_follows_a_corrected_assessment(store: tuple[CourseService, Views]) -> None:
    service, views = store
    p = _after_d1(service, "H-1")
    fit = p.do("assess_pre_infusion", {"day": 2, "pre_infusion": pre_infusion(37.1)}, actor=NURSE)
    assert (fit.version, fit.outcome["held"]) == (5, False)
    assert _board_row(views, "H-1") == ("infuse_d2", False)
    # the fever was there: corrected, the assessment holds D2 (board and record)
    held = p.do(
        "correct", {"corrects": 5, "changes": {"pre_infusion": pre_infusion(38.6)}}, reason=FIX
    )
    assert held.status == "recorded"
    assert _board_row(views, "H-1") == ("re-assess before D2", True)
    hold = service.record("H-1").pre_infusion_hold
    assert hold is not None and hold["version"] == 5 and hold["day"] == 2
    assert any("temperature" in text for text in hold["failed"])
    # the hold is the gate's: D2 without observations is refused while held
    with pytest.raises(MoveRefused) as refused:
        p.infuse(2)
    assert [r["rule"] for r in refused.value.to_json()["failed_rules"]] == [
        "pre_infusion_criteria_met"
    ]
    # corrected back: the hold is lifted, D2 is the next action again
    p.do("correct", {"corrects": 5, "changes": {"pre_infusion": pre_infusion(37.4)}}, reason=FIX)
    assert service.record("H-1").pre_infusion_hold is None
    assert _board_row(views, "H-1") == ("infuse_d2", False)
    assert p.infuse(2, days=0, hours=1).status == "recorded"  # the refused try was a day on
    views.catch_up()
    followed = views.dump()
    views.rebuild()
    assert views.dump() == followed  # replayed from the log, the same board


def test_a_correction_of_an_assessment_no_longer_waited_on_moves_no_hold(
    store: tuple[CourseService, Views],
) -> None:
    """D2 was given after the assessment: correcting the assessment to a fever records the fact
    (the correction's outcome says it is no longer operative) and puts no hold on D3."""
    service, views = store
    p = _after_d1(service, "H-2")
    p.do("assess_pre_infusion", {"day": 2, "pre_infusion": pre_infusion(37.1)}, actor=NURSE)
    p.infuse(2, extra={"pre_infusion": pre_infusion(37.0)})
    result = p.do(
        "correct", {"corrects": 5, "changes": {"pre_infusion": pre_infusion(38.9)}}, reason=FIX
    )
    assert result.outcome["operative"] is False and result.outcome["held"] is True
    assert service.record("H-2").pre_infusion_hold is None
    assert _board_row(views, "H-2") == ("infuse_d3", False)


def test_a_corrected_infusion_observation_is_judged_again(
    store: tuple[CourseService, Views],
) -> None:
    """D2 given with 37.1 C; the chart said 38.6 C: the correction is recorded (it states a fact)
    and names the gate it now fails; the fraction carries the gate's deviation; conformance
    re-judges the gate on the corrected value. Corrected back, all of it goes."""
    service, _ = store
    p = _after_d1(service, "H-3")
    p.infuse(2, extra={"pre_infusion": pre_infusion(37.1)})  # version 5
    assert check_history("H-3", patient_events(service.log, "H-3")).ok
    result = p.do(
        "correct", {"corrects": 5, "changes": {"pre_infusion": pre_infusion(38.6)}}, reason=FIX
    )
    assert result.status == "recorded"
    assert any("pre-infusion gate" in text for text in result.deviations)
    d2 = service.summary("H-3")["current_course"]["fractions"][1]
    assert any("pre-infusion gate" in text for text in d2["deviations"])
    found = check_history("H-3", patient_events(service.log, "H-3")).findings
    assert [(f.version, f.rules) for f in found] == [(6, ("pre_infusion_criteria_met",))]
    # corrected back to a reading that meets the gate: no deviation, conformance clean
    p.do("correct", {"corrects": 5, "changes": {"pre_infusion": pre_infusion(37.2)}}, reason=FIX)
    d2 = service.summary("H-3")["current_course"]["fractions"][1]
    assert d2["deviations"] == []
    found = check_history("H-3", patient_events(service.log, "H-3")).findings
    assert [f.version for f in found] == [6]  # only the correction that failed it


def test_a_corrected_observation_with_a_deviation_reason_is_a_deviation_not_a_finding(
    store: tuple[CourseService, Views],
) -> None:
    service, _ = store
    p = _after_d1(service, "H-4")
    p.infuse(2, extra={"pre_infusion": pre_infusion(37.1)})  # version 5
    p.do(
        "correct",
        {
            "corrects": 5,
            "changes": {
                "pre_infusion": pre_infusion(38.6),
                "deviation_reason": "given febrile: investigator's decision, infection excluded",
            },
        },
        reason=FIX,
    )
    d2 = service.summary("H-4")["current_course"]["fractions"][1]
    assert any("pre-infusion gate" in text for text in d2["deviations"])
    assert check_history("H-4", patient_events(service.log, "H-4")).ok


@pytest.mark.parametrize(
    ("observations", "field"),
    [
        (
            {**pre_infusion(37.0), "highest_temperature": {"value": 37.0}},
            "payload.changes.pre_infusion.highest_temperature.unit",
        ),
        ({**pre_infusion(37.0), "spo2_room_air_pct": 101}, "payload.changes.pre_infusion"),
        (
            {**pre_infusion(37.0), "highest_temperature": {"value": 46, "unit": "C"}},
            "payload.changes.pre_infusion.highest_temperature",
        ),
    ],
)
def test_a_bad_corrected_observation_names_the_field_and_records_nothing(
    store: tuple[CourseService, Views], observations: dict[str, object], field: str
) -> None:
    service, _ = store
    p = _after_d1(service, "H-5")
    p.infuse(2, extra={"pre_infusion": pre_infusion(37.1)})  # version 5
    with pytest.raises(InvalidCommandError) as bad:
        p.do("correct", {"corrects": 5, "changes": {"pre_infusion": observations}}, reason=FIX)
    assert bad.value.to_json()["field"].startswith(field)
    assert service.record("H-5").version == 5


def test_the_temperature_kept_for_the_window_follows_a_corrected_assessment(
    store: tuple[CourseService, Views],
) -> None:
    """An assessment corrected to a fever keeps that fever, at the assessment's clinical time,
    for the gate's 48-h window (a later passing re-assessment stays a hold); corrected back,
    the fever is gone and a re-assessment lifts the hold."""
    service, _ = store
    p = _after_d1(service, "H-4")
    fit = p.do("assess_pre_infusion", {"day": 2, "pre_infusion": pre_infusion(37.1)}, actor=NURSE)
    assessed_at = service.record("H-4").last_occurred_at
    assert service.record("H-4").pre_infusion_temperatures == []
    p.do(
        "correct",
        {"corrects": fit.version, "changes": {"pre_infusion": pre_infusion(38.6)}},
        reason=FIX,
    )
    kept = service.record("H-4").pre_infusion_temperatures
    assert kept == [{"value": 38.6, "unit": "C", "occurred_at": assessed_at, "version": 5}]
    again = p.do(
        "assess_pre_infusion",
        {"day": 2, "pre_infusion": pre_infusion(37.0)},
        actor=NURSE,
        hours=3,
    )
    assert again.outcome["held"] is True
    assert again.outcome["failed_criteria"] == ["temperature_on_record"]
    hold = service.record("H-4").pre_infusion_hold
    assert hold is not None and hold["temperature"]["value"] == 38.6
    p.do(
        "correct",
        {"corrects": fit.version, "changes": {"pre_infusion": pre_infusion(37.2)}},
        reason=FIX,
    )
    assert service.record("H-4").pre_infusion_temperatures == []
    lifted = p.do(
        "assess_pre_infusion",
        {"day": 2, "pre_infusion": pre_infusion(37.0)},
        actor=NURSE,
        hours=1,
    )
    assert lifted.outcome["held"] is False
    assert service.record("H-4").pre_infusion_hold is None
