"""The pre-infusion safety gate (issue 20): rule ``pre_infusion_criteria_met`` on the raw
observations ``give_infusion`` carries, the bedside assessment that holds a fraction, and the
amendment 1.1 that requires the observations before D2 and D3."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from patient_moves import Patient, failed_rules

from cart_course.protocol.commands import MoveRefusedError, Prepared, allowed_now, prepare
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.parameters import DEFAULT_PARAMETERS
from cart_course.protocol.pre_infusion import judge, parse_pre_infusion
from cart_course.protocol.versions import CURRENT, V1_1


def obs(
    temp: float = 37.0,
    unit: str | None = "C",
    spo2: float = 97,
    *,
    vasopressors: bool = False,
    infection: bool = False,
) -> dict[str, Any]:
    temperature: dict[str, Any] = {"value": temp}
    if unit is not None:
        temperature["unit"] = unit
    return {
        "highest_temperature": temperature,
        "spo2_room_air_pct": spo2,
        "vasopressors": vasopressors,
        "uncontrolled_active_infection": infection,
    }


# -- the limits, at their boundaries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("temp", "unit", "fails"),
    [
        (38.0, "C", False),  # at the limit: not above 38 C
        (38.1, "C", True),
        (100.4, "F", False),  # 38.0 C exactly
        (100.5, "F", True),
        (37.9, "C", False),
    ],
)
def test_temperature_at_the_limit_passes_and_above_it_fails(
    temp: float, unit: str, fails: bool
) -> None:
    failed = judge(parse_pre_infusion(obs(temp, unit)), DEFAULT_PARAMETERS)
    assert [f.criterion for f in failed] == (["temperature"] if fails else [])
    if fails:
        assert "in the last 48 h is above 38 C" in failed[0].message


@pytest.mark.parametrize(("spo2", "fails"), [(91, False), (90.9, True), (100, False), (50, True)])
def test_spo2_at_91_passes_and_below_fails(spo2: float, fails: bool) -> None:
    failed = judge(parse_pre_infusion(obs(spo2=spo2)), DEFAULT_PARAMETERS)
    assert [f.criterion for f in failed] == (["spo2"] if fails else [])


def test_every_failed_criterion_is_named() -> None:
    failed = judge(
        parse_pre_infusion(obs(39.0, spo2=88, vasopressors=True, infection=True)),
        DEFAULT_PARAMETERS,
    )
    assert [f.criterion for f in failed] == ["temperature", "spo2", "vasopressors", "infection"]


# -- bad input: the field named, nothing recorded ------------------------------------------------


@pytest.mark.parametrize(
    ("observations", "field", "words"),
    [
        (obs(unit=None), "payload.pre_infusion.highest_temperature.unit", "'C' or 'F'"),
        (obs(unit="K"), "payload.pre_infusion.highest_temperature.unit", "'C' or 'F'"),
        (obs(29.9), "payload.pre_infusion.highest_temperature.value", "30 to 45 C"),
        (obs(45.1), "payload.pre_infusion.highest_temperature.value", "30 to 45 C"),
        (obs(85.9, "F"), "payload.pre_infusion.highest_temperature.value", "86 to 113 F"),
        (obs(spo2=101), "payload.pre_infusion.spo2_room_air_pct", "0 to 100"),
        (obs(spo2=-1), "payload.pre_infusion.spo2_room_air_pct", "0 to 100"),
        (
            obs(spo2=0.95),
            "payload.pre_infusion.spo2_room_air_pct",
            "0.95 looks like a fraction; send 95",
        ),
        (
            obs(spo2=1),
            "payload.pre_infusion.spo2_room_air_pct",
            "1 looks like a fraction; send 100",
        ),
        (obs(spo2=49.9), "payload.pre_infusion.spo2_room_air_pct", "49.9 % is below 50 %"),
        (obs(spo2=0), "payload.pre_infusion.spo2_room_air_pct", "below 50 %"),
        ({**obs(), "vasopressors": "no"}, "payload.pre_infusion.vasopressors", "true or false"),
        ({**obs(), "pulse": 80}, "payload.pre_infusion.pulse", "unknown field"),
        (
            {k: v for k, v in obs().items() if k != "spo2_room_air_pct"},
            "payload.pre_infusion.spo2_room_air_pct",
            "required",
        ),
        (
            {**obs(), "highest_temperature": 37.0},
            "payload.pre_infusion.highest_temperature",
            "unit",
        ),
    ],
)
def test_bad_observations_name_the_field_and_record_nothing(
    observations: dict[str, Any], field: str, words: str
) -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    err = p.invalid("give_infusion", p.fraction(2, pre_infusion=observations), on=p.next_day())
    problems = {pr.field: pr.message for pr in err.problems}
    assert field in problems, err
    assert words in problems[field]
    err = p.invalid("assess_pre_infusion", {"day": 2, "pre_infusion": observations})
    assert field in {pr.field for pr in err.problems}


def test_fahrenheit_is_converted_and_kept_as_entered() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    d2 = p.infuse(2, pre_infusion=obs(99.5, "F"))
    assert d2.payload["pre_infusion"]["highest_temperature"] == {"value": 99.5, "unit": "F"}
    assert d2.outcome["pre_infusion_gate"]["criteria_met"] is True


# -- the rule on give_infusion --------------------------------------------------------------------


def test_a_fever_refuses_d2_naming_the_criterion_and_a_reason_gives_it_as_a_deviation() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    exc = p.refused("give_infusion", p.fraction(2, pre_infusion=obs(38.6)), on=p.next_day())
    assert failed_rules(exc) == ["pre_infusion_criteria_met"]
    assert "pre-infusion gate: temperature 38.6 C in the last 48 h is above 38 C" in str(exc)
    d2 = p.infuse(
        2,
        pre_infusion=obs(38.6),
        deviation_reason="investigator: fever from a line infection "
        "treated, benefit outweighs the risk",
    )
    assert d2.outcome["pre_infusion_gate"]["failed_criteria"] == ["temperature"]
    assert any("pre-infusion gate" in d for d in d2.outcome["deviations"])
    assert any("pre-infusion gate" in d["deviation"] for d in p.record.deviations)


def test_under_1_0_the_observations_are_optional_and_judged_when_sent() -> None:
    p = Patient().apheresed()
    d1 = p.infuse(1, gap=7)
    assert "pre_infusion_gate" not in d1.outcome  # nothing sent: the outcome it always had
    assert "pre_infusion" not in d1.facts
    p.infuse(2)
    exc = p.refused("give_infusion", p.fraction(3, pre_infusion=obs(spo2=89)), on=p.next_day())
    assert "room-air SpO2 89 % is below 91 %" in str(exc)


def test_the_amendment_requires_the_observations_before_d2_and_d3_not_d1() -> None:
    p = Patient(V1_1).apheresed()
    p.infuse(1, gap=7)  # D1: not required
    exc = p.refused("give_infusion", p.fraction(2), on=p.next_day())
    assert failed_rules(exc) == ["pre_infusion_criteria_met"]
    assert "requires the pre-infusion observations before D2" in str(exc)
    p.infuse(2, pre_infusion=obs())
    exc = p.refused("give_infusion", p.fraction(3), on=p.next_day())
    assert "before D3" in str(exc)
    assert p.infuse(3, pre_infusion=obs()).to_state == "infused_d3"
    assert [f.version for f in p.record.course.fractions] == [3, 4, 5]  # type: ignore[union-attr]


def test_the_gate_limits_are_parameters_of_the_version() -> None:
    assert CURRENT.params.pre_infusion_required_days == ()
    assert V1_1.params.pre_infusion_required_days == (2, 3)
    assert V1_1.params.pre_infusion_max_temperature_c == 38.0
    assert CURRENT.params.pre_infusion_min_spo2_pct == 91.0
    assert CURRENT.params.pre_infusion_gate_days == (1, 2, 3)


# -- the bedside assessment: a held fraction -----------------------------------------------------


def test_a_failing_assessment_holds_d2_until_it_is_given_with_observations_that_meet_the_gate() -> (
    None
):
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    held = p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs(38.7)}, on=p.next_day())
    assert held.to_state == "infused_d1"
    assert held.outcome["held"] is True and held.outcome["failed_criteria"] == ["temperature"]
    assert p.record.pre_infusion_hold is not None
    assert p.record.pre_infusion_hold["day"] == 2
    # the fraction without new observations is refused: the assessment holds it
    exc = p.refused("give_infusion", p.fraction(2))
    assert "D2 is held by the pre-infusion assessment" in str(exc)
    assert "infuse_d2" in allowed_now(p.record, CURRENT)  # with observations that meet it
    # the next day, afebrile: the fever of 24 h before is still within the 48-h window, so D2
    # is given only with a reason, the fever on record a deviation
    exc = p.refused("give_infusion", p.fraction(2, pre_infusion=obs(37.1)), on=p.next_day())
    assert "temperature above 38 C is on record within the 48 h" in str(exc)
    d2 = p.infuse(2, pre_infusion=obs(37.1), deviation_reason="D2 held one day for fever")
    assert d2.outcome["pre_infusion_gate"]["failed_criteria"] == ["temperature_on_record"]
    assert any("38.7 C" in d for d in d2.outcome["deviations"])
    assert p.record.pre_infusion_hold is None


def test_a_held_fraction_is_given_without_a_reason_once_the_fever_is_older_than_48_h() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs(38.7)}, on=p.next_day())
    d2 = p.infuse(2, gap=3, pre_infusion=obs(37.1), deviation_reason="D2 held two days for fever")
    assert d2.outcome["pre_infusion_gate"]["criteria_met"] is True
    assert p.record.pre_infusion_hold is None


def test_a_passing_reassessment_lifts_the_hold() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs(spo2=88)}, on=p.next_day())
    again = p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs()})
    assert again.outcome == {
        "day": 2,
        "course_number": 1,
        "judged": True,
        "criteria_met": True,
        "failed_criteria": [],
        "failed": [],
        "held": False,
    }
    assert p.record.pre_infusion_hold is None
    assert p.infuse(2, gap=0).to_state == "infused_d2"


def test_an_assessment_is_of_the_next_fraction_only() -> None:
    p = Patient().apheresed()
    exc = p.refused("assess_pre_infusion", {"day": 2, "pre_infusion": obs()})
    assert failed_rules(exc) == ["assessment_of_next_fraction"]
    assert "the next is D1" in str(exc)
    assert p.do("assess_pre_infusion", {"day": 1, "pre_infusion": obs()}).outcome["held"] is False


def test_a_hold_of_d1_is_judged_on_d1() -> None:
    p = Patient().apheresed()
    p.do("assess_pre_infusion", {"day": 1, "pre_infusion": obs(infection=True)}, on=p.next_day(7))
    exc = p.refused("give_infusion", p.fraction(1))
    assert "uncontrolled active infection" in str(exc)


# -- properties ---------------------------------------------------------------------------------

observations = st.builds(
    obs,
    temp=st.floats(min_value=35.0, max_value=41.0).map(lambda t: round(t, 1)),
    unit=st.just("C"),
    spo2=st.integers(min_value=80, max_value=100),
    vasopressors=st.booleans(),
    infection=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    seen=observations,
    day=st.sampled_from([1, 2, 3]),
    reason=st.one_of(st.none(), st.just("investigator decision: benefit outweighs the risk")),
    amended=st.booleans(),
)
def test_a_failing_gate_never_lets_a_fraction_through_without_a_reason(
    seen: dict[str, Any], day: int, reason: str | None, amended: bool
) -> None:
    version = V1_1 if amended else CURRENT
    p = Patient(version).apheresed()
    for earlier in range(1, day):
        p.infuse(earlier, gap=7 if earlier == 1 else 1, pre_infusion=obs())
    extra: dict[str, Any] = {"pre_infusion": seen}
    if reason:
        extra["deviation_reason"] = reason
    failed = judge(parse_pre_infusion(seen), version.params)
    payload = p.fraction(day, **extra)
    on = p.next_day(7 if day == 1 else 1)
    if failed and not reason:
        exc = p.refused("give_infusion", payload, on=on)
        assert failed_rules(exc) == ["pre_infusion_criteria_met"]
        for f in failed:
            assert f.message in str(exc)
        return
    given_ = p.do("give_infusion", payload, on=on)
    gate = given_.outcome["pre_infusion_gate"]
    assert gate["failed_criteria"] == [f.criterion for f in failed]
    if failed:  # given anyway: only with the reason, and every failure is a deviation
        assert given_.facts["deviation_reason"] == reason
        for f in failed:
            assert any(f.message in d for d in given_.outcome["deviations"])


def test_a_fever_recorded_in_the_window_is_not_erased_by_a_lower_48h_maximum() -> None:
    """clinical.md s4: no infusion with a temperature > 38 C in the last 48 h. A fever of
    38.9 C assessed in the morning is in the window of the same afternoon's fraction; a
    re-assessment saying the highest temperature of those 48 h was 37.0 C contradicts the
    record and must not give D2 without a reason."""
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    due = p.next_day()
    assert p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs(38.9)}, on=due).outcome[
        "held"
    ]
    p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs(37.0)}, on=due)
    exc = p.refused("give_infusion", p.fraction(2), on=due)
    assert failed_rules(exc) == ["pre_infusion_criteria_met"]


# -- temperatures on record: a fever inside the window counts, one older than the window does not


def _at(day: dt.date, hour: int = 9, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC)


def _do_at(
    p: Patient, command: str, payload: dict[str, Any], at: dt.datetime, **kw: Any
) -> Prepared:
    prepared = prepare(p.record, command, payload, at, kw.get("reason"), p.version)
    prepared.apply_to(
        p.record, occurred_at=at.isoformat(), protocol_version=p.version.id, reason=kw.get("reason")
    )
    p.day = at.date()
    return prepared


def _refused_at(
    p: Patient, command: str, payload: dict[str, Any], at: dt.datetime
) -> MoveRefusedError:
    before = p.record.to_json()
    with pytest.raises(MoveRefusedError) as info:
        prepare(p.record, command, payload, at, None, p.version)
    assert p.record.to_json() == before
    return info.value


def test_the_hold_keeps_the_temperature_it_failed_on_and_when() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    morning = _at(p.next_day(), 8)
    _do_at(p, "assess_pre_infusion", {"day": 2, "pre_infusion": obs(38.9)}, morning)
    assert p.record.pre_infusion_hold is not None
    assert p.record.pre_infusion_hold["temperature"] == {
        "value": 38.9,
        "unit": "C",
        "occurred_at": morning.isoformat(),
    }
    assert p.record.pre_infusion_temperatures == [
        {"value": 38.9, "unit": "C", "occurred_at": morning.isoformat(), "version": 4}
    ]
    # the afternoon's "37.0 in the last 48 h" keeps the hold, with the morning's fever
    again = _do_at(
        p, "assess_pre_infusion", {"day": 2, "pre_infusion": obs(37.0)}, _at(morning.date(), 14)
    )
    assert again.outcome["held"] is True
    assert again.outcome["failed_criteria"] == ["temperature_on_record"]
    assert "38.9 C at " + morning.isoformat() in again.outcome["failed"][0]
    assert again.facts["pre_infusion_window"] == {
        "judged_at": _at(morning.date(), 14).isoformat(),
        "temperatures": [
            {"value": 38.9, "unit": "C", "occurred_at": morning.isoformat(), "version": 4}
        ],
    }
    assert p.record.pre_infusion_hold["temperature"]["occurred_at"] == morning.isoformat()


def test_a_fever_seen_with_passing_fraction_observations_still_refuses_the_fraction() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    morning = _at(p.next_day(), 8)
    _do_at(p, "assess_pre_infusion", {"day": 2, "pre_infusion": obs(38.9)}, morning)
    exc = _refused_at(
        p, "give_infusion", p.fraction(2, pre_infusion=obs(37.0)), _at(morning.date(), 15)
    )
    assert failed_rules(exc) == ["pre_infusion_criteria_met"]
    assert "a lower maximum given since does not erase it" in str(exc)


@pytest.mark.parametrize(
    ("hours", "minutes", "counts"),
    [(47, 59, True), (48, 0, True), (48, 1, False), (0, 0, True)],
)
def test_a_fever_counts_within_48_h_before_the_fraction_and_not_after(
    hours: int, minutes: int, counts: bool
) -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    fever_at = _at(p.next_day(), 8)
    _do_at(p, "assess_pre_infusion", {"day": 2, "pre_infusion": obs(38.4)}, fever_at)
    then = fever_at + dt.timedelta(hours=hours, minutes=minutes)
    payload = p.fraction(2, pre_infusion=obs(37.0))
    if counts:
        exc = _refused_at(p, "give_infusion", payload, then)
        assert "temperature above 38 C is on record within the 48 h" in str(exc)
        # a re-assessment then keeps the hold
        assert _do_at(
            p, "assess_pre_infusion", {"day": 2, "pre_infusion": obs(37.0)}, then
        ).outcome["held"]
        return
    # older than the window: a passing re-assessment lifts the hold, and D2 is given
    lifted = _do_at(p, "assess_pre_infusion", {"day": 2, "pre_infusion": obs(37.0)}, then)
    assert lifted.outcome["held"] is False and p.record.pre_infusion_hold is None
    assert "pre_infusion_window" not in lifted.facts
    late = p.fraction(2, pre_infusion=obs(37.0), deviation_reason="D2 held two days for fever")
    d2 = _do_at(p, "give_infusion", late, then)  # the reason: for the schedule only
    assert d2.to_state == "infused_d2"
    assert d2.outcome["pre_infusion_gate"]["criteria_met"] is True
    assert not any("pre-infusion gate" in d for d in d2.outcome["deviations"])


def test_a_fraction_given_with_a_fever_and_a_reason_counts_for_the_next_fraction() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    d2_at = _at(p.next_day(), 9)
    _do_at(
        p,
        "give_infusion",
        p.fraction(2, pre_infusion=obs(38.5), deviation_reason="investigator: benefit outweighs"),
        d2_at,
    )
    # D3 the next day without observations (optional under 1.0): the D2 fever is in its window
    exc = _refused_at(p, "give_infusion", p.fraction(3), d2_at + dt.timedelta(days=1))
    assert "38.5 C at " + d2_at.isoformat() in str(exc)
    # given with a reason: the fever on record is a deviation of D3
    d3 = _do_at(
        p,
        "give_infusion",
        p.fraction(3, deviation_reason="investigator: fever resolved, proceed"),
        d2_at + dt.timedelta(days=1),
        reason=None,
    )
    assert d3.outcome["pre_infusion_gate"]["failed_criteria"] == ["temperature_on_record"]
    assert any("on record within the 48 h" in d for d in d3.outcome["deviations"])


def test_a_move_with_no_fever_on_record_keeps_its_facts_form() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    p.do("assess_pre_infusion", {"day": 2, "pre_infusion": obs(spo2=89)}, on=p.next_day())
    assert p.record.pre_infusion_temperatures == []
    d2 = p.infuse(2, gap=0, pre_infusion=obs())
    assert "pre_infusion_window" not in d2.facts


def test_an_event_recorded_without_the_window_fact_is_judged_as_before() -> None:
    """An event of the previous form (no ``pre_infusion_window``): the re-check reads only
    its own facts; with the fact, it judges the fever it names."""
    from cart_course.protocol.pre_infusion import gate_failures

    facts: dict[str, Any] = {"day": 2, "pre_infusion": obs(37.0)}
    assert gate_failures(facts, DEFAULT_PARAMETERS) == []
    facts["pre_infusion_window"] = {
        "judged_at": "2026-01-13T14:00:00+00:00",
        "temperatures": [{"value": 38.9, "unit": "C", "occurred_at": "2026-01-13T08:00:00+00:00"}],
    }
    assert [f.criterion for f in gate_failures(facts, DEFAULT_PARAMETERS)] == [
        "temperature_on_record"
    ]
    # a stored SpO2 below today's input floor is judged as recorded, never refused as input
    stored = {"day": 2, "pre_infusion": obs(spo2=0.95)}
    assert [f.criterion for f in gate_failures(stored, DEFAULT_PARAMETERS)] == ["spo2"]


_REASON = "investigator decision: benefit outweighs the risk"


@settings(max_examples=120, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=30 * 60),  # minutes after the previous step
            observations,
            st.booleans(),  # an assessment (True) or an attempt at the fraction (False)
        ),
        min_size=1,
        max_size=6,
    ),
    amended=st.booleans(),
)
def test_no_sequence_of_assessments_lets_a_fraction_through_a_fever_within_48_h(
    steps: list[tuple[int, dict[str, Any], bool]], amended: bool
) -> None:
    """Whatever assessments came before, D2 given without a reason never has a temperature
    above the limit recorded within the 48 h before it."""
    p = Patient(V1_1 if amended else CURRENT).apheresed()
    p.infuse(1, gap=7)
    at = _at(p.next_day(), 6)
    fevers: list[dt.datetime] = []
    for minutes, seen, assessment in steps:
        at += dt.timedelta(minutes=minutes)
        if assessment:
            _do_at(p, "assess_pre_infusion", {"day": 2, "pre_infusion": seen}, at)
            if seen["highest_temperature"]["value"] > 38.0:
                fevers.append(at)
            continue
        fever_in_window = any(at - dt.timedelta(hours=48) <= f <= at for f in fevers)
        payload = p.fraction(2, pre_infusion=seen)
        try:
            given_ = _do_at(p, "give_infusion", payload, at)
        except MoveRefusedError as exc:  # (or off schedule: the steps span several days)
            if fever_in_window:
                assert "pre_infusion_criteria_met" in failed_rules(exc)
            continue
        assert not fever_in_window, "D2 given without a reason with a fever within 48 h"
        assert not judge(parse_pre_infusion(seen), p.version.params)
        assert given_.facts.get("deviation_reason") is None
        return


def test_the_schema_and_the_parser_share_the_spo2_floor() -> None:
    """The JSON Schema a client validates with refuses what the service refuses (below 50 %),
    and the service says why: a fraction typed as a percent."""
    from cart_course.protocol.pre_infusion import SPO2_PLAUSIBLE_MIN_PCT
    from cart_course.schemas import SCHEMAS

    spo2 = SCHEMAS["assess_pre_infusion"]["$defs"]["pre_infusion"]["properties"][
        "spo2_room_air_pct"
    ]
    assert spo2["minimum"] == SPO2_PLAUSIBLE_MIN_PCT == 50.0
    assert parse_pre_infusion(obs(spo2=50)).spo2_room_air_pct == 50
    with pytest.raises(ProtocolInputError) as info:
        parse_pre_infusion(obs(spo2=0.95))
    assert info.value.problems[0].field == "payload.pre_infusion.spo2_room_air_pct"
    assert "0.95 looks like a fraction; send 95" in str(info.value)
