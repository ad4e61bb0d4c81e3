"""Follow-up visits are checked against the schedule of the patient's protocol version (each
version defines its own ``follow_up_schedule``), not only the default one: a visit outside the
version's schedule is refused naming the version's visits; the window and the board's next
visit are the version's."""

from __future__ import annotations

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_after_course import Patient, at_day, visit

from cart_course.protocol.follow_up import next_visit
from cart_course.protocol.parameters import DEFAULT_FOLLOW_UP_SCHEDULE, DEFAULT_PARAMETERS
from cart_course.protocol.versions import CURRENT, make_version

#: An amendment with a shorter schedule and wider windows (not registered: prepare is given it).
SHORT = (("D28", 28, 10), ("M3", 91, 21), ("M6", 183, 21), ("M12", 365, 45))
AMENDED = make_version(
    "test-short-follow-up",
    "a shorter follow-up schedule (test only)",
    "2027-01-01",
    attrs.evolve(DEFAULT_PARAMETERS, follow_up_schedule=SHORT),
)


def test_a_visit_of_the_default_schedule_not_in_the_versions_is_refused_naming_its_visits() -> None:
    p = Patient(AMENDED).treated()
    error = p.refused("record_follow_up", visit("M2"), at_day(61))
    assert [f.rule for f in error.failed] == ["visit_in_schedule"]
    message = error.failed[0].message
    assert "'M2' is not in this protocol version's follow-up schedule" in message
    assert "D28 (day 28 +/-10), M3 (day 91 +/-21), M6 (day 183 +/-21), M12 (day 365 +/-45)" in (
        message
    )
    # a missed visit is checked the same way
    missed = p.refused(
        "record_missed_visit", {"visit": "M9", "missed_reason": "moved"}, at_day(274)
    )
    assert "its visits: D28" in missed.failed[0].message
    # the same visit is on the default version's schedule
    default = Patient(CURRENT).treated()
    assert default.do("record_follow_up", visit("M2"), at_day(61)).outcome["in_window"] is True


def test_the_window_and_the_next_visit_are_the_versions() -> None:
    p = Patient(AMENDED).treated()
    # day 18 is outside the default D28 window (+/-7) but inside the amended one (+/-10)
    outcome = p.do("record_follow_up", visit("D28"), at_day(18)).outcome
    assert outcome["in_window"] is True
    assert (outcome["window_start"], outcome["window_end"]) == ("2026-02-09", "2026-03-01")
    # the next visit is M3 (the amended schedule has no M2), with its wider window
    name, start, end, _d1 = next_visit(p.record, AMENDED.params) or ("", "", "", "")
    assert (name, start, end) == ("M3", "2026-04-02", "2026-05-14")
    default = Patient(CURRENT).treated()
    assert default.do("record_follow_up", visit("D28"), at_day(18)).outcome["in_window"] is False


def test_a_name_of_no_schedule_is_bad_input_naming_the_known_visits() -> None:
    p = Patient(AMENDED).treated()
    error = p.bad("record_follow_up", visit("M30"), at_day(900))  # nothing recorded
    assert error.field == "payload.visit"
    assert "D28, M2, M3" in error.message


_DEFAULT_NAMES = [name for name, _day, _window in DEFAULT_FOLLOW_UP_SCHEDULE]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(st.sampled_from(_DEFAULT_NAMES), min_size=1, max_size=8, unique=True),
    window=st.integers(min_value=1, max_value=40),
    name=st.sampled_from(_DEFAULT_NAMES),
    missed=st.booleans(),
)
def test_a_visit_is_recorded_exactly_when_the_versions_schedule_has_it(
    schedule: list[str], window: int, name: str, missed: bool
) -> None:
    days = {n: d for n, d, _w in DEFAULT_FOLLOW_UP_SCHEDULE}
    ordered = sorted(schedule, key=lambda n: days[n])
    version = make_version(
        "test-random-schedule",
        "random schedule",
        "2027-01-01",
        attrs.evolve(
            DEFAULT_PARAMETERS, follow_up_schedule=tuple((n, days[n], window) for n in ordered)
        ),
    )
    p = Patient(version).treated()
    when = at_day(days[name])
    command, payload = (
        ("record_missed_visit", {"visit": name, "missed_reason": "did not come"})
        if missed
        else ("record_follow_up", visit(name))
    )
    if name in schedule:
        prepared = p.do(command, payload, when)
        if not missed:
            assert prepared.outcome["in_window"] is True  # on its target day
        seen = p.record.follow_up["missed" if missed else "visits"]
        assert name in seen
        # the next visit is the version's next one after it, or none at its end
        following = ordered[ordered.index(name) + 1 :]
        found = next_visit(p.record, version.params)
        assert (found[0] if found else None) == (following[0] if following else None)
    else:
        error = p.refused(command, payload, when)
        assert [f.rule for f in error.failed] == ["visit_in_schedule"]
        for n in ordered:
            assert f"{n} (day {days[n]} +/-{window})" in error.failed[0].message
