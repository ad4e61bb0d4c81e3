"""Corrections: a new event naming the corrected version, with a reason; the current state
reflects it; the history keeps both; nothing is overwritten."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

from cart_course.course import PatientCourse
from cart_course.errors import ForbiddenError, InvalidCommandError, RecordConflictError
from cart_course.service import CourseService


def _infused(service: CourseService, pid: str = "K-1") -> Course:
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)  # version 4
    # version 5: 42e6 transcribed (a deviation, so it needed a reason), 21e6 given
    p.infuse(2, factor=2.0, extra={"deviation_reason": "double dose per bag label"})
    return p


def _sign_infusion(p: Course, printed_name: str, **kw: Any) -> object:
    """Sign the infusion recorded at version 4 (see :func:`_infused`)."""
    payload = {
        "milestone": "infusion",
        "signs_version": 4,
        "meaning": "approval",
        "printed_name": printed_name,
    }
    return p.do("sign", payload, **kw)


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
        # an error in a corrected value is named where the client wrote it
        (
            {"corrects": 5, "changes": {"cells": {"value": 21e6, "unit": "cellz"}}},
            "typo",
            "payload.changes.cells.unit",
        ),
        (
            {"corrects": 4, "changes": {"weight": {"value": 70, "unit": "stone"}}},
            "typo",
            "payload.changes.weight.unit",
        ),
        ({"corrects": 5, "changes": {"cells": None}}, "typo", "payload.changes.cells"),
        # a key name is shown escaped: the error stays one line
        ({"corrects": 5, "changes": {"a\nb": 1}}, "typo", "payload.changes.'a\\nb'"),
        ({**fix, "x\ny": 1}, "typo", "payload.'x\\ny'"),
    ]
    for payload, reason, field in cases:
        with pytest.raises(InvalidCommandError) as info:
            p.do("correct", payload, reason=reason)
        assert info.value.field == (field or "payload.changes.occurred_at"), (
            payload,
            info.value.message,
        )
        # a version the record does not hold (99), or one that is not a correctable move (1),
        # is a conflict with the record (409), not malformed input (422)
        conflict = payload.get("corrects") in (99, 1)
        assert isinstance(info.value, RecordConflictError) == conflict, payload
        assert info.value.to_json()["error"] == (
            "record_conflict" if conflict else "invalid_command"
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
        _sign_infusion(p, "Site Robot", actor={"id": "emr.bot", "role": "service"})
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
    assert isinstance(info.value, RecordConflictError)  # well-formed; the record says no
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


# A corrected D1 weight re-plans the whole course ----------------------------------------------

WEIGHT_50 = {"weight": {"value": 50, "unit": "kg"}}


def _weighed_wrong(service: CourseService, pid: str, d2_cells: dict[str, object]) -> Course:
    """D1 at 70 kg (7e6 cells, version 4), D2 as given (version 5): the patient weighed 50 kg."""
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    p.infuse(2, extra={"cells": d2_cells})
    return p


def test_a_corrected_d1_weight_replans_the_whole_course(service: CourseService) -> None:
    p = _weighed_wrong(service, "K-9", {"value": 3e5, "unit": "cells/kg"})
    before = service.summary("K-9")["current_course"]
    assert before["fractions"][1]["delivered_cells"] == pytest.approx(21e6)
    done = p.do(
        "correct", {"corrects": 4, "changes": WEIGHT_50}, reason="weight keyed from the wrong chart"
    )
    course = service.summary("K-9")["current_course"]
    assert course["weight_kg"] == 50
    assert course["planned_total_cells"] == pytest.approx(50e6)
    assert course["fraction_plan"] == pytest.approx([5e6, 15e6, 30e6])
    d1, d2 = course["fractions"]
    assert (d1["planned_cells"], d1["delivered_cells"]) == pytest.approx((5e6, 7e6))
    assert "+40% against the planned 5e+06" in d1["deviations"][0]
    # D2 was entered in cells/kg: 3e5/kg x 50 kg, planned 30 % of 50e6: on plan at 50 kg
    assert (d2["planned_cells"], d2["delivered_cells"]) == pytest.approx((15e6, 15e6))
    assert d2["dose_as_entered"] == {"value": 3e5, "unit": "cells/kg"}
    assert d2["deviations"] == []
    assert course["delivered_cells"] == pytest.approx(22e6)  # one weight, not two
    assert [e["version"] for e in done.outcome["replanned"]] == [5]
    assert done.outcome["replanned"][0]["planned_cells"] == pytest.approx(15e6)
    assert len(done.deviations) == 1 and done.deviations[0].startswith(
        "correction of version 4: D1 delivers 7e+06 cells"
    )
    # D3 is planned and judged with the corrected weight and the re-planned D2
    d3 = p.infuse(3, extra={"cells": {"value": 6e5, "unit": "cells/kg"}})
    assert (d3.outcome["planned_cells"], d3.outcome["cells"]) == pytest.approx((30e6, 30e6))
    assert d3.outcome["delivered_course_total"] == pytest.approx(52e6)
    assert d3.deviations == ()


def test_a_fraction_off_the_corrected_plan_is_a_finding_of_the_correction(
    service: CourseService,
) -> None:
    p = _weighed_wrong(service, "K-10", {"value": 21e6, "unit": "cells"})
    done = p.do("correct", {"corrects": 4, "changes": WEIGHT_50}, reason="weighed in lb")
    assert done.status == "recorded"  # the correction states facts: it is still recorded
    d2 = service.summary("K-10")["current_course"]["fractions"][1]
    assert (d2["planned_cells"], d2["delivered_cells"]) == pytest.approx((15e6, 21e6))
    assert d2["deviations"] == [
        "D2 delivers 2.1e+07 cells, +40% against the planned 1.5e+07 (30% of 1e+06/kg x 50 kg); "
        "tolerance is ±20%"
    ]
    assert [f.split(":")[0] for f in done.deviations] == [
        "correction of version 4",
        "correction of version 4 re-plans D2 (version 5)",
    ]
    assert done.deviations[1].endswith("; no deviation reason is recorded for it")
    deviations = service.summary("K-10")["deviations"]
    assert [(d["version"], d["trigger"]) for d in deviations] == [
        (4, "infuse_d1"),
        (5, "infuse_d2"),
        (6, "correct"),
        (6, "correct"),
    ]
    # A deviation reason added to D2 by its own correction: judged with the corrected weight
    fixed = p.do(
        "correct",
        {"corrects": 5, "changes": {"deviation_reason": "bag prepared for 70 kg"}},
        reason="reason missing",
    )
    assert fixed.deviations == ()
    assert fixed.outcome["planned_cells"] == pytest.approx(15e6)
    d2 = service.summary("K-10")["current_course"]["fractions"][1]
    assert d2["planned_cells"] == pytest.approx(15e6) and len(d2["deviations"]) == 1
    # Weight corrected back to 70 kg: the whole course is on plan again
    back = p.do(
        "correct", {"corrects": 4, "changes": {"weight": {"value": 70, "unit": "kg"}}}, reason="x"
    )
    assert back.deviations == ()
    course = service.summary("K-10")["current_course"]
    assert [f["planned_cells"] for f in course["fractions"]] == pytest.approx([7e6, 21e6])
    assert [f["deviations"] for f in course["fractions"]] == [[], []]
    assert [d["trigger"] for d in service.summary("K-10")["deviations"]] == ["correct"] * 2


def test_a_later_dose_in_cells_per_kg_is_corrected_with_the_corrected_weight(
    service: CourseService,
) -> None:
    p = _weighed_wrong(service, "K-11", {"value": 3e5, "unit": "cells/kg"})
    p.do("correct", {"corrects": 4, "changes": WEIGHT_50}, reason="weighed in lb")
    done = p.do(
        "correct",
        {"corrects": 5, "changes": {"cells": {"value": 4e5, "unit": "cells/kg"}}},
        reason="re-read the infusion sheet",
    )
    assert done.outcome["cells"] == pytest.approx(20e6)  # 4e5/kg x 50 kg, not x 70 kg
    assert done.outcome["planned_cells"] == pytest.approx(15e6)
    d2 = service.summary("K-11")["current_course"]["fractions"][1]
    assert (d2["planned_cells"], d2["delivered_cells"]) == pytest.approx((15e6, 20e6))
    assert "+33% against the planned 1.5e+07" in d2["deviations"][0]
    assert "x 50 kg" in done.deviations[0]
    p.infuse(3, extra={"cells": {"value": 6e5, "unit": "cells/kg"}})
    v = service.record("K-11").version
    done = p.do(
        "correct",
        {"corrects": v, "changes": {"cells": {"value": 5.5e5, "unit": "cells/kg"}}},
        reason="re-read",
    )
    assert done.outcome["cells"] == pytest.approx(27.5e6)
    assert service.summary("K-11")["current_course"]["delivered_cells"] == pytest.approx(54.5e6)


def test_a_d1_correction_that_keeps_the_plan_replans_nothing(service: CourseService) -> None:
    p = _weighed_wrong(service, "K-12", {"value": 21e6, "unit": "cells"})
    done = p.do(
        "correct",
        {"corrects": 4, "changes": {"weight": {"value": 70000, "unit": "g"}, "product_lot": "L2"}},
        reason="lot number",
    )
    assert "replanned" not in done.outcome and done.deviations == ()
    assert service.summary("K-12")["current_course"]["fractions"][1]["delivered_cells"] == 21e6


def _replanned_history(service: CourseService, pid: str) -> None:
    """Over two snapshot intervals: a weight correction before the second snapshot, a D2
    correction in cells/kg after it, D3 in between."""
    p = _weighed_wrong(service, pid, {"value": 21e6, "unit": "cells"})  # v2..v5
    for _ in range(25):
        p.do("report_toxicity", {"toxicity": crs(1)}, hours=0.05)
        tox = service.summary(pid)["open_toxicities"][0]["id"]
        p.do("resolve_toxicity", {"toxicity_id": tox}, hours=0.05)
    p.do("correct", {"corrects": 4, "changes": WEIGHT_50}, reason="weighed in lb")  # v56
    p.infuse(3, extra={"cells": {"value": 6e5, "unit": "cells/kg"}})  # v57
    p.do(
        "correct",
        {"corrects": 5, "changes": {"cells": {"value": 3e5, "unit": "cells/kg"}}},
        reason="re-read",
    )
    for _ in range(25):
        p.do("report_toxicity", {"toxicity": crs(1)}, hours=0.05)
        tox = service.summary(pid)["open_toxicities"][0]["id"]
        p.do("resolve_toxicity", {"toxicity_id": tox}, hours=0.05)
    p.do("correct", {"corrects": 4, "changes": {"weight": {"value": 60, "unit": "kg"}}}, reason="x")


def test_a_replanned_course_replays_to_the_same_record_everywhere(service: CourseService) -> None:
    from cart_course.audit import check_history, patient_events, replay
    from cart_course.course import stream_id
    from cart_course.protocol.record import PatientRecord
    from cart_course.storage import SNAPSHOT_INTERVAL
    from cart_course.views.projection import apply_event

    _replanned_history(service, "K-13")
    live = service.record("K-13")
    assert live.version > 2 * SNAPSHOT_INTERVAL
    course = live.courses[0]
    assert course.weight_kg == 60
    assert [f.planned_cells for f in course.fractions] == pytest.approx([6e6, 18e6, 36e6])
    assert [f.cells for f in course.fractions] == pytest.approx([7e6, 18e6, 36e6])

    app, sid = service.app, stream_id("K-13")
    replayed: object = None
    for event in app.events.get(sid):  # from scratch: no snapshot, no cache
        replayed = event.mutate(replayed)
    assert isinstance(replayed, PatientCourse)
    assert replayed.record.to_json() == live.to_json()
    for at in (live.version, 56, 58, 2 * SNAPSHOT_INTERVAL + 1):  # from the latest snapshot
        restored = app.repository.get(sid, version=at)
        from_events: object = None
        for event in app.events.get(sid, lte=at):
            from_events = event.mutate(from_events)
        assert isinstance(restored, PatientCourse) and isinstance(from_events, PatientCourse)
        assert restored.record.to_json() == from_events.record.to_json(), at
    assert PatientRecord.from_json(live.to_json()) == live  # the snapshot round trip

    events = patient_events(service.log, "K-13")
    assert replay("K-13", events).to_json() == live.to_json()  # the audit replay
    view = None  # the monitors' views fold the same events with the same functions
    for event in service.events("K-13"):
        view = apply_event(view, event)
    assert view is not None and view.to_json() == live.to_json()
    assert view.summary() == live.summary()
    # Conformance: D3 and D2's correction read the re-planned course as recorded (no "facts"
    # findings); the correction at v56 is named twice: the corrected D1 itself is off plan
    # without a reason, and so is D2 as that correction re-planned it (a later correction of D2
    # does not change what v56 did)
    found = check_history("K-13", events).findings
    assert [(f.check, f.version) for f in found] == [("correction", 56), ("correction", 56)]
    assert "re-plans D2 (v5), now off its plan" in found[0].message


def test_conformance_names_a_fraction_the_corrected_weight_left_off_plan(
    service: CourseService,
) -> None:
    from cart_course.audit import check_history, patient_events

    p = _weighed_wrong(service, "K-12", {"value": 21e6, "unit": "cells"})
    p.do("correct", {"corrects": 4, "changes": WEIGHT_50}, reason="weighed in lb")
    report = check_history("K-12", patient_events(service.log, "K-12"))
    off = [f for f in report.findings if "re-plans D2 (v5), now off its plan" in f.message]
    assert len(off) == 1 and off[0].message.endswith("no deviation reason is recorded for it")
    # once D2 has its deviation reason (its own correction), the finding is gone
    p.do(
        "correct",
        {"corrects": 5, "changes": {"deviation_reason": "bag prepared for 70 kg"}},
        reason="reason missing",
    )
    p.do("correct", {"corrects": 4, "changes": WEIGHT_50}, reason="restated")
    report = check_history("K-12", patient_events(service.log, "K-12"))
    later = [f for f in report.findings if f.version == 8 and "re-plans" in f.message]
    assert later == []


@pytest.mark.parametrize("name", ["x" * 201, "Dr. Lee\nApproved by nobody", "Dr.\x00Lee"])
def test_a_printed_name_is_one_plain_line(service: CourseService, name: str) -> None:
    p = _infused(service, "K-13")
    with pytest.raises(InvalidCommandError) as info:
        _sign_infusion(p, name)
    assert info.value.field == "payload.printed_name"
    assert len(service.events("K-13")) == 5


def test_discontinuation_is_allowed_after_a_grade_rises_and_not_after_it_is_corrected_down(
    service: CourseService,
) -> None:
    """The moves allowed now follow a course's worst toxicity as it changes: an open episode
    re-reported at a severe grade allows discontinuation; a correction of that report down to
    grade 1 takes it away again (the other episode, grade 2, is not severe); the answers are
    those of the transitions machine fired on the full facts."""
    from cart_course.protocol.commands import allowed_now, context_facts
    from cart_course.protocol.machine import Probe, dry_run_by_trigger
    from cart_course.protocol.versions import CURRENT

    def library_allows_discontinue(pid: str) -> bool:
        record = service.record(pid)
        probe = Probe(
            record.state, context_facts(record, "discontinue"), CURRENT.params, hypothetical=True
        )
        return dry_run_by_trigger(CURRENT.machine, probe, "discontinue").allowed

    p = _infused(service, "K-W")
    p.do("report_toxicity", {"toxicity": crs(1)}, hours=1)  # version 6: CRS-1 grade 1
    icans = {
        "kind": "ICANS",
        "observations": {"age_years": 34, "ice_score": 5, "consciousness": "wakes_to_voice"},
    }
    p.do("report_toxicity", {"toxicity": icans}, hours=2)  # version 7: ICANS-1 grade 2
    assert "discontinue" not in allowed_now(service.record("K-W"), CURRENT)
    assert not library_allows_discontinue("K-W")
    p.do("report_toxicity", {"toxicity": crs(3), "toxicity_id": "CRS-1"}, hours=3)  # version 8
    assert service.record("K-W").worst_of_course(1).id == "CRS-1"  # type: ignore[union-attr]
    assert "discontinue" in allowed_now(service.record("K-W"), CURRENT)
    assert library_allows_discontinue("K-W")
    p.do(
        "correct",
        {"corrects": 8, "changes": {"toxicity": crs(1), "toxicity_id": "CRS-1"}},
        reason="vasopressor was given for a line flush, not for hypotension",
    )
    assert service.record("K-W").worst_of_course(1).id == "ICANS-1"  # type: ignore[union-attr]
    assert "discontinue" not in allowed_now(service.record("K-W"), CURRENT)
    assert not library_allows_discontinue("K-W")


# A corrected date moves the schedule of what is counted from it --------------------------------


def _d1_d2(service: CourseService, pid: str) -> tuple[Course, str, str]:
    """v3 apheresis, v4 D1, v5 D2 on the next calendar day: the dates of D1 and D2."""
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    p.infuse(2)
    d1, d2 = (service.events(pid)[v - 1].facts["infusion_date"] for v in (4, 5))
    return p, d1, d2


def _at(date: str, days: int) -> str:
    return f"{dt.date.fromisoformat(date) + dt.timedelta(days=days)}T09:00:00+00:00"


def test_a_corrected_d1_date_judges_d2_again(service: CourseService) -> None:
    p, d1, d2 = _d1_d2(service, "K-30")
    done = p.do(
        "correct", {"corrects": 4, "changes": {"occurred_at": _at(d1, -1)}}, reason="keyed late"
    )
    assert done.status == "recorded"  # a correction states facts: it is recorded anyway
    earlier = str(dt.date.fromisoformat(d1) - dt.timedelta(days=1))
    assert list(done.deviations) == [
        f"correction of version 4 moves the date D2 (version 5) is counted from: D2 on {d2} "
        f"is 2 day(s) after D1 on {earlier}; the protocol gives it on the next calendar day; "
        "no deviation reason is recorded for it"
    ]
    assert done.outcome["rescheduled"] == [
        {
            "version": 5,
            "day": 2,
            "previous_date": earlier,
            "schedule_problem": f"D2 on {d2} is 2 day(s) after D1 on {earlier}; "
            "the protocol gives it on the next calendar day",
            "deviation_reason": None,
        }
    ]
    # put back on its day: D2 is on schedule again, and nothing is found
    done = p.do("correct", {"corrects": 4, "changes": {"occurred_at": _at(d1, 0)}}, reason="undo")
    assert done.deviations == ()
    assert done.outcome["rescheduled"][0]["schedule_problem"] is None


def test_a_correction_of_d2_is_judged_from_the_corrected_d1_date(service: CourseService) -> None:
    p, d1, _d2 = _d1_d2(service, "K-31")
    p.do("correct", {"corrects": 4, "changes": {"occurred_at": _at(d1, -1)}}, reason="keyed late")
    done = p.do(
        "correct",
        {"corrects": 5, "changes": {"cells": {"value": 21e6, "unit": "cells"}}},
        reason="recount",
    )
    assert any("D2 on" in d and "is 2 day(s) after D1" in d for d in done.deviations), (
        done.deviations
    )


def test_a_corrected_apheresis_date_judges_d1_again(service: CourseService) -> None:
    p, d1, _d2 = _d1_d2(service, "K-32")
    done = p.do(
        "correct",
        {"corrects": 3, "changes": {"occurred_at": _at(d1, 1)}},
        reason="apheresis date keyed wrong",
    )
    assert any(
        d.startswith("correction of version 3 moves the date D1 (version 4) is counted from: ")
        and "is before apheresis" in d
        for d in done.deviations
    ), done.deviations
    assert [e["version"] for e in done.outcome["rescheduled"]] == [4]


def test_a_corrected_d3_date_reschedules_nothing(service: CourseService) -> None:
    p, _d1, d2 = _d1_d2(service, "K-33")
    p.infuse(3)
    done = p.do(
        "correct", {"corrects": 6, "changes": {"occurred_at": _at(d2, 1)}}, reason="same day"
    )
    assert "rescheduled" not in done.outcome


def test_conformance_names_a_fraction_a_corrected_date_left_off_schedule(
    service: CourseService,
) -> None:
    from cart_course.audit import check_history, patient_events

    p, d1, _d2 = _d1_d2(service, "K-34")
    p.do("correct", {"corrects": 4, "changes": {"occurred_at": _at(d1, -1)}}, reason="keyed late")
    report = check_history("K-34", patient_events(service.log, "K-34"))
    off = [f for f in report.findings if f.version == 6 and f.check == "correction"]
    assert len(off) == 1
    assert off[0].message.startswith("v4's correction moves the date D2 (v5) is counted from: D2")
    assert "is 2 day(s) after D1" in off[0].message
    assert off[0].message.endswith("no deviation reason is recorded for it")
    # on its day again: nothing to find
    p.do("correct", {"corrects": 4, "changes": {"occurred_at": _at(d1, 0)}}, reason="undo")
    report = check_history("K-34", patient_events(service.log, "K-34"))
    assert [f for f in report.findings if f.version == 7] == []


def test_an_unknown_signature_key_is_shown_on_one_line(service: CourseService) -> None:
    p = _infused(service, "K-35")
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "sign",
            {"milestone": "infusion", "signs_version": 4, "meaning": "approval", "x\ny": 1},
        )
    assert info.value.field == "payload.'x\\ny'"
    assert "\n" not in info.value.message
