"""A corrected D1 weight re-plans the course: the pure parts (``commands.replan_course``,
``commands.corrected_fraction_context``, ``record.apply_correction`` with ``replanned``)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from integration_helpers import Course

from cart_course.errors import InvalidCommandError
from cart_course.protocol.commands import (
    RecordedFraction,
    corrected_fraction_context,
    outcome_of,
    replan_course,
)
from cart_course.protocol.record import PatientRecord, apply_correction, evolve
from cart_course.protocol.versions import CURRENT
from cart_course.service import CourseService

T = "2026-01-22T10:00:00+00:00"


def _fraction(record: PatientRecord, day: int, cells: dict[str, float | str], version: int) -> dict:
    """Record D``day`` (D1 at 70 kg) the way the service does; returns its facts."""
    course = record.course
    facts: dict = {
        "day": day,
        "course_number": 1 if course is None else course.number,
        "weight_kg": 70.0 if course is None else course.weight_kg,
        "delivered_before": 0.0 if course is None else course.delivered,
        "infusion_date": f"2026-01-{21 + day}",
        "previous_date": f"2026-01-{20 + day}",
        "dose": cells,
        "cells": cells["value"] * (70.0 if cells["unit"] == "cells/kg" else 1.0),
    }
    evolve(
        record,
        trigger=f"infuse_d{day}",
        to_state=f"infused_d{day}",
        facts=facts,
        outcome=outcome_of(f"infuse_d{day}", facts, CURRENT),
        occurred_at=T,
        version=version,
        protocol_version=CURRENT.id,
    )
    return facts


def _course() -> tuple[PatientRecord, dict[int, RecordedFraction]]:
    record = PatientRecord(patient_id="U-1")
    recorded = {}
    for day, cells, version in (
        (1, {"value": 7e6, "unit": "cells"}, 4),
        (2, {"value": 3e5, "unit": "cells/kg"}, 5),
        (3, {"value": 42e6, "unit": "cells"}, 6),
    ):
        facts = _fraction(record, day, cells, version)
        recorded[version] = RecordedFraction(
            version=version, trigger=f"infuse_d{day}", facts=facts, protocol=CURRENT
        )
    return record, recorded


def test_replan_course_judges_every_other_fraction_against_the_new_plan() -> None:
    record, recorded = _course()
    d1 = {**recorded[4].facts, "weight_kg": 50.0}
    outcome = outcome_of("infuse_d1", d1, CURRENT)
    replanned, findings = replan_course(record, 4, outcome, recorded)
    assert [(e["version"], e["day"]) for e in replanned] == [(5, 2), (6, 3)]
    assert [e["planned_cells"] for e in replanned] == pytest.approx([15e6, 30e6])
    assert [e["cells"] for e in replanned] == pytest.approx([15e6, 42e6])  # cells/kg re-derived
    assert replanned[0]["deviations"] == []
    assert "+40% against the planned 3e+07" in replanned[1]["deviations"][0]
    assert "above the planned 5e+07" in replanned[1]["deviations"][1]  # 7 + 15 + 42 = 64e6
    assert len(findings) == 1
    assert findings[0].startswith("correction of version 4 re-plans D3 (version 6): D3 delivers")

    # the record shows it; the pure apply is deterministic (replay gives the same)
    copy = PatientRecord.from_json(record.to_json())
    for target in (record, copy):
        apply_correction(
            target,
            corrects=4,
            trigger="infuse_d1",
            facts=d1,
            outcome={**outcome, "replanned": replanned},
            changes={"weight": {"value": 50, "unit": "kg"}},
            reason="weighed in lb",
            occurred_at=T,
            version=7,
        )
    assert copy.to_json() == record.to_json()
    course = record.courses[0]
    assert [f.planned_cells for f in course.fractions] == pytest.approx([5e6, 15e6, 30e6])
    assert course.delivered == pytest.approx(64e6)
    assert [d["version"] for d in record.deviations] == [4, 6, 6]
    d1_on, d2_on = (f.given_on for f in course.fractions[:2])
    assert corrected_fraction_context(record, 5) == {
        "weight_kg": 50.0,
        "delivered_before": pytest.approx(7e6),
        "previous_date": d1_on,  # its schedule counts from D1 as on record now
    }
    assert corrected_fraction_context(record, 6)["delivered_before"] == pytest.approx(22e6)
    assert corrected_fraction_context(record, 6)["previous_date"] == d2_on
    # D1's weight is its own payload's; its schedule counts from apheresis
    assert corrected_fraction_context(record, 4) == {"previous_date": record.apheresis_date}
    assert corrected_fraction_context(record, 99) == {}


def test_replan_course_does_nothing_when_the_plan_is_unchanged_or_not_d1() -> None:
    record, recorded = _course()
    same = outcome_of("infuse_d1", dict(recorded[4].facts), CURRENT)
    assert replan_course(record, 4, same, recorded) == ([], [])
    d2 = outcome_of("infuse_d2", dict(recorded[5].facts), CURRENT)
    assert replan_course(record, 5, d2, recorded) == ([], [])


def test_a_replanned_entry_for_a_fraction_not_in_the_record_is_ignored() -> None:
    """An as-of view at a clinical time between D1 and D2 holds the D1 correction, not D2."""
    record = PatientRecord(patient_id="U-2")
    facts = _fraction(record, 1, {"value": 7e6, "unit": "cells"}, 4)
    d1 = {**facts, "weight_kg": 50.0}
    entry = {"version": 5, "day": 2, "cells": 1.0, "planned_cells": 1.0, "deviations": ["x"]}
    apply_correction(
        record,
        corrects=4,
        trigger="infuse_d1",
        facts=d1,
        outcome={**outcome_of("infuse_d1", d1, CURRENT), "replanned": [entry]},
        changes={},
        reason="r",
        occurred_at=T,
        version=5,
    )
    assert len(record.courses[0].fractions) == 1
    assert record.courses[0].planned_total == pytest.approx(50e6)


@pytest.fixture
def svc(memory_service: CourseService) -> CourseService:
    """The suite's in-memory service (tests/conftest.py)."""
    return memory_service


def test_a_weight_that_makes_a_cells_per_kg_fraction_implausible_is_refused(
    svc: CourseService,
) -> None:
    p = Course(svc, "U-3", dt.datetime(2026, 1, 5, 8, tzinfo=dt.UTC))
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    # 5e9 cells/kg x 70 kg = 3.5e11 cells (recorded, with a reason); x 300 kg would be 1.5e12
    p.infuse(
        2,
        extra={"cells": {"value": 5e9, "unit": "cells/kg"}, "deviation_reason": "test"},
    )
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {"corrects": 4, "changes": {"weight": {"value": 300, "unit": "kg"}}},
            reason="typo",
        )
    assert info.value.field == "payload.changes.weight"
    assert "D2 (version 5, entered in cells/kg) would not be a plausible fraction" in (
        info.value.message
    )
    assert len(svc.events("U-3")) == 5
