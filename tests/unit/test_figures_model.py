"""The cohort figures' data (``cart_course.figures.model``) from constructed histories: markers
on the right day since D1 with the right grade, deaths, the swimmer's orders, the counts."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cart_course.contract import parse_command
from cart_course.demo import _Patient, crs, icans, patient_commands
from cart_course.figures import model
from cart_course.figures.read import cohort_records
from cart_course.protocol.record import PatientRecord
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url

START = dt.datetime(2026, 1, 5, 8, tzinfo=dt.UTC)


def _record(*builders: Callable[[], list[dict[str, object]]]) -> list[PatientRecord]:
    """Record the commands of each builder through the real service (memory store) and read the
    patients back as the figures do (the event log, replayed)."""
    svc = CourseService(open_application(parse_store_url("memory:")))
    try:
        for build in builders:
            svc.execute_batch([parse_command(c) for c in build()])
        return cohort_records(svc.log)
    finally:
        svc.close()


def _crs2_on_day3(
    pid: str = "P-CRS", *, resolve: bool = True
) -> Callable[[], list[dict[str, object]]]:
    def build() -> list[dict[str, object]]:
        p = _Patient(pid, START, random.Random(3))
        p.screen()
        p.apheresis()
        p.course(first_gap=10)  # D1, D2 a day later, D3 two days later (same hour)
        p.toxicity(crs(2), hours=24)  # a day after D3: day 3 after D1
        if resolve:
            p.resolve("CRS-1", hours=36)
        return p.commands

    return build


def _scenario(
    pid: str, scenario: str, days_later: int = 0
) -> Callable[[], list[dict[str, object]]]:
    return lambda: patient_commands(
        pid, scenario, START + dt.timedelta(days=days_later), random.Random(11)
    )


def test_a_crs_grade_2_on_day_3_is_a_grade_2_crs_marker_on_day_3_after_d1() -> None:
    [record] = _record(_crs2_on_day3())
    bar = model.swimmer_bar(record)
    assert bar is not None
    crs_markers = [m for m in bar.markers if m.kind == "CRS"]
    assert len(crs_markers) == 1
    marker = crs_markers[0]
    assert (marker.grade, marker.clinical_day, marker.label) == (2, 3, "CRS grade 2")
    assert marker.day == pytest.approx(3.0)
    fractions = [(m.label, m.clinical_day) for m in bar.markers if m.kind == "fraction"]
    assert fractions == [("D1", 0), ("D2", 1), ("D3", 2)]
    assert not [m for m in bar.markers if m.kind in ("death", "ICANS")]
    assert bar.ongoing and bar.markers[-1].kind == "ongoing"


def test_the_toxicity_timeline_steps_up_to_the_grade_and_back_to_0_when_resolved() -> None:
    [record] = _record(_crs2_on_day3())
    timeline = model.toxicity_timeline(record)
    assert [(s.clinical_day, s.grade) for s in timeline.steps["CRS"]] == [(0, 0), (3, 2), (4, 0)]
    assert [(s.day, s.grade) for s in timeline.steps["CRS"]][1] == (pytest.approx(3.0), 2)
    assert [s.grade for s in timeline.steps["ICANS"]] == [0]
    assert [m.label for m in timeline.fractions] == ["D1", "D2", "D3"]
    assert [(m.label, m.grade, m.clinical_day) for m in timeline.reports] == [
        ("CRS grade 2", 2, 3),
        ("CRS resolved", 0, 4),
    ]
    head, rows = timeline.table()
    assert head[0] == "day" and ["3", "3.00", "CRS grade 2", "2"] in rows


def test_a_worsening_episode_and_a_second_kind_are_stepped_each_on_its_own_line() -> None:
    def build() -> list[dict[str, object]]:
        p = _Patient("P-TWO", START, random.Random(4))
        p.screen()
        p.apheresis()
        p.course(first_gap=10)
        p.toxicity(crs(1), hours=2)  # D3 + 2 h: day 2
        p.toxicity(crs(3), hours=24, toxicity_id="CRS-1")  # the same episode worsens: day 3
        p.toxicity(icans(2), hours=24)  # day 4
        return p.commands

    [record] = _record(build)
    timeline = model.toxicity_timeline(record)
    assert [(s.clinical_day, s.grade) for s in timeline.steps["CRS"]] == [(0, 0), (2, 1), (3, 3)]
    assert [(s.clinical_day, s.grade) for s in timeline.steps["ICANS"]] == [(0, 0), (4, 2)]
    bar = model.swimmer_bar(record)
    assert bar is not None
    # the swimmer marks each episode once, at its onset, with its worst grade
    assert [
        (m.kind, m.grade, m.clinical_day) for m in bar.markers if m.kind in ("CRS", "ICANS")
    ] == [
        ("CRS", 3, 2),
        ("ICANS", 2, 4),
    ]


def test_a_patient_who_died_gets_a_death_marker_at_the_end_of_the_bar() -> None:
    [record] = _record(_scenario("P-0501", "death"))
    bar = model.swimmer_bar(record)
    assert bar is not None
    deaths = [m for m in bar.markers if m.kind == "death"]
    assert len(deaths) == 1
    assert deaths[0].day == bar.end_day  # time on study ends with the death
    assert not bar.ongoing and not [m for m in bar.markers if m.kind == "ongoing"]
    # the CRS that caused it was closed at grade 5 (ASTCT: death due to CRS)
    assert [m.grade for m in bar.markers if m.kind == "CRS"] == [5]
    timeline = model.toxicity_timeline(record)
    assert timeline.steps["CRS"][-1].grade == 5


def test_a_relapse_and_the_responses_of_each_course_are_marked() -> None:
    relapsed, courses = _record(
        _scenario("P-0102", "icans"), _scenario("P-0103", "partial_response_courses")
    )
    bar = model.swimmer_bar(relapsed)
    assert bar is not None
    [relapse] = [m for m in bar.markers if m.kind == "relapse"]
    assert relapse.label == "relapse (CD19-)"
    assert relapse.day > next(m for m in bar.markers if m.kind == "response").day
    bar = model.swimmer_bar(courses)
    assert bar is not None
    responses = [(m.category, m.course) for m in bar.markers if m.kind == "response"]
    assert responses == [("PR", 1), ("PR", 2), ("PR", 3)]
    assert len([m for m in bar.markers if m.kind == "fraction"]) == 9
    counts = model.best_response([relapsed, courses])
    assert counts.groups == ("course 1", "course 2", "course 3")
    by_name = {s.name: s.counts for s in counts.series}
    assert by_name["PR"] == (1, 1, 1) and by_name["CR"] == (1, 0, 0)


def test_swimmer_orders_by_time_on_study_longest_first_and_pages() -> None:
    records = _record(
        _scenario("P-0303", "death"),  # a few days
        _scenario("P-0301", "partial_response_courses", 1),  # three courses: the longest
        _scenario("P-0302", "no_response_ceased", 2),
        _scenario("P-0304", "screen_failure", 3),  # never infused
    )
    figure = model.swimmer(records, sort="time_on_study")
    times = [b.time_on_study for b in figure.bars]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]
    assert figure.bars[-1].patient_id == "P-0303"  # the death after a few days: shortest
    assert figure.not_infused == 1 and figure.total == 3
    assert [b.patient_id for b in model.swimmer(records, sort="patient_id").bars] == [
        "P-0301",
        "P-0302",
        "P-0303",
    ]
    assert [b.patient_id for b in model.swimmer(records, sort="d1").bars] == [
        "P-0303",
        "P-0301",
        "P-0302",
    ]
    page = model.swimmer(records, sort="patient_id", offset=1, limit=1)
    assert [b.patient_id for b in page.bars] == ["P-0302"] and page.total == 3 and page.offset == 1
    with pytest.raises(ValueError, match="time_on_study"):
        model.swimmer(records, sort="age")


def test_max_grade_counts_each_infused_patient_once_per_syndrome() -> None:
    records = _record(
        _crs2_on_day3("P-1"),
        _scenario("P-2", "icans", 1),
        _scenario("P-3", "death", 2),
        _scenario("P-4", "screen_failure", 3),
    )
    counts = model.max_grades(records)
    assert counts.patients == 3  # not the screen failure
    by_name = {s.name: s.counts for s in counts.series}
    assert by_name["CRS"] == (1, 0, 1, 0, 0, 1)  # none (ICANS patient), grade 2, grade 5
    assert by_name["ICANS"] == (2, 0, 1, 0, 0, 0)
    assert counts.table()[1][0] == ["0 (none)", "1", "2"]


def test_vein_to_vein_counts_only_products_tracked_from_their_collection() -> None:
    def tracked() -> list[dict[str, object]]:
        return patient_commands("P-0401", "complete_response", START, random.Random(2), "normal")

    records = _record(tracked, _scenario("P-0402", "complete_response", 1))
    figure = model.vein_to_vein(records)
    assert [p for p, _ in figure.values] == ["P-0401"]
    assert figure.without_chain == 1
    assert figure.values[0][1] > 0 and figure.median == figure.values[0][1]


def test_select_keeps_the_boards_filters() -> None:
    records = _record(_crs2_on_day3("P-OPEN", resolve=False), _scenario("P-2", "death", 1))
    assert [r.patient_id for r in model.select(records, toxicity=True)] == ["P-OPEN"]
    assert [r.patient_id for r in model.select(records, state="died")] == ["P-2"]
    assert model.select(records, state="screened") == []


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=1, max_value=10_000))
def test_every_cohort_gives_figures_that_add_up(seed: int) -> None:
    """Whatever the cohort: every marker lies on its bar, the swimmer's order holds, each
    infused patient is counted once per syndrome, each course once."""
    from cart_course.demo import cohort

    svc = CourseService(open_application(parse_store_url("memory:")))
    try:
        svc.execute_batch([parse_command(c) for c in cohort(14, seed)])
        records = cohort_records(svc.log)
    finally:
        svc.close()
    figure = model.swimmer(records)
    infused = [r for r in records if model.first_d1(r) is not None]
    assert figure.total == len(infused) and figure.not_infused == len(records) - len(infused)
    times = [b.time_on_study for b in figure.bars]
    assert times == sorted(times, reverse=True)
    by_id = {r.patient_id: r for r in records}
    for bar in figure.bars:
        record = by_id[bar.patient_id]
        assert all(m.day <= bar.end_day for m in bar.markers)
        fractions = sum(len(c.fractions) for c in record.courses)
        assert len([m for m in bar.markers if m.kind == "fraction"]) == fractions
        died = [m for m in bar.markers if m.kind == "death"]
        assert bool(died) == (record.state == "died")
        assert bar.ongoing == (
            not died and record.state != "withdrawn" and not record.follow_up.get("lost")
        )
    grades = model.max_grades(records)
    assert all(sum(s.counts) == len(infused) == grades.patients for s in grades.series)
    best = model.best_response(records)
    courses = sum(len(r.courses) for r in records)
    assert sum(sum(s.counts) for s in best.series) == courses
