"""A toxicity hold is judged at the clinical time of the fraction, not in the order the data were
entered: a fraction given while an episode was open is refused even when the episode's
resolution (later in clinical time) was entered first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course, crs

from cart_course.errors import MoveRefused
from cart_course.service import CourseService


def test_a_fraction_given_while_a_hold_was_open_is_refused_whatever_the_entry_order(
    service: CourseService,
) -> None:
    p = Course(service, "HOLD-1")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)  # 2026-01-22 10:00
    p.do("report_toxicity", {"toxicity": crs(1)}, hours=2)  # onset 12:00
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, days=1, hours=0)  # 2026-01-23 12:00
    with pytest.raises(MoveRefused) as info:
        p.infuse(2, days=0, hours=-3)  # given 2026-01-23 09:00: CRS-1 was still open
    assert [f["rule"] for f in info.value.failed] == ["no_open_hold"]
    assert "CRS grade 1 (CRS-1)" in info.value.message
    assert "CRS-1 resolved at 2026-01-23T12:00:00+00:00" in info.value.message
    assert service.summary("HOLD-1")["state"] == "infused_d1"  # nothing recorded
    done = p.infuse(2, days=0, hours=4)  # 13:00, after the resolution: on schedule
    assert done.to_state == "infused_d2" and done.deviations == ()


def test_an_episode_that_began_after_the_fraction_does_not_hold_it(
    service: CourseService,
) -> None:
    p = Course(service, "HOLD-2")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)  # 2026-01-22 10:00
    p.do("report_toxicity", {"toxicity": crs(1)}, days=1, hours=6)  # onset 2026-01-23 16:00
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, hours=6)  # 22:00
    done = p.infuse(2, days=0, hours=-12)  # 10:00 on the 23rd, before the onset
    assert done.to_state == "infused_d2"


def test_a_grade_reached_after_the_fraction_does_not_hold_it(service: CourseService) -> None:
    """An 'other' toxicity at grade 1 (no hold) when D2 was given, raised to grade 3 and
    resolved afterwards: D2, entered last, is judged on the grade at its time and recorded."""
    rash = {"kind": "other", "term": "rash", "scale": "CTCAE", "scale_version": "5.0"}
    p = Course(service, "HOLD-3")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)  # 2026-01-22 10:00
    p.do("report_toxicity", {"toxicity": {**rash, "grade": 1}}, hours=10)  # 20:00
    p.do(
        "report_toxicity",
        {"toxicity_id": "other-1", "toxicity": {**rash, "grade": 3}},
        hours=16,  # 2026-01-23 12:00
    )
    p.do("resolve_toxicity", {"toxicity_id": "other-1"}, hours=2)  # 14:00
    done = p.infuse(2, days=0, hours=-3)  # 11:00 on the 23rd: the rash was grade 1 then
    assert done.to_state == "infused_d2"
    # given at 13:00, while it was grade 3 and open, the same D2 would have been refused
    q = Course(service, "HOLD-4")
    q.screen()
    q.apheresis()
    q.infuse(1, days=14)
    q.do("report_toxicity", {"toxicity": {**rash, "grade": 1}}, hours=10)
    q.do("report_toxicity", {"toxicity_id": "other-1", "toxicity": {**rash, "grade": 3}}, hours=16)
    q.do("resolve_toxicity", {"toxicity_id": "other-1"}, hours=2)
    with pytest.raises(MoveRefused) as info:
        q.infuse(2, days=0, hours=-1)  # 13:00
    assert "other grade 3 (other-1)" in info.value.message
