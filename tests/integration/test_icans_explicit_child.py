"""Issue 20: an explicit ICANS grade replaces the CAPD only with a reason. For a child under 12
(the age given with the explicit grade, ``toxicity.age_years``, else the age the patient's ICANS
reports on record state), an explicit ICANS grade needs the command's reason saying why the CAPD
was not applicable; without it the report is an input error naming ``reason``, nothing recorded.
From 12 years, or when no age is known, nothing more is asked."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course

from cart_course.demo import icans_capd
from cart_course.errors import InvalidCommandError
from cart_course.protocol.toxicity import parse_toxicity_report
from cart_course.service import CourseService

WHY = "non-verbal infant: the CAPD does not apply at this developmental age"


def explicit(grade: int = 2, age: float | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "kind": "ICANS",
        "scale": "ASTCT",
        "scale_version": "2019",
        "grade": grade,
    }
    if age is not None:
        report["age_years"] = age
    return report


def _infused(service: CourseService, pid: str) -> Course:
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    return p


def test_at_11_9_years_an_explicit_grade_without_a_reason_is_refused_naming_the_reason(
    memory_service: CourseService,
) -> None:
    p = _infused(memory_service, "C-1")
    version = memory_service.record("C-1").version
    with pytest.raises(InvalidCommandError) as refused:
        p.do("report_toxicity", {"toxicity": explicit(age=11.9)})
    body = refused.value.to_json()
    assert body["field"] == "reason"
    assert "under 12 (age 11.9 years, payload.toxicity.age_years)" in body["message"]
    assert "why the CAPD was not applicable" in body["message"]
    assert memory_service.record("C-1").version == version  # nothing recorded
    # a blank reason is no reason
    with pytest.raises(InvalidCommandError):
        p.do("report_toxicity", {"toxicity": explicit(age=11.9)}, reason="   ")
    done = p.do("report_toxicity", {"toxicity": explicit(age=11.9)}, reason=WHY)
    assert done.status == "recorded"
    tox = memory_service.record("C-1").toxicities["ICANS-1"]
    assert (tox.grade, tox.report["age_years"]) == (2, 11.9)
    assert memory_service.events("C-1")[-1].reason == WHY


def test_at_12_years_an_explicit_grade_needs_no_reason(memory_service: CourseService) -> None:
    p = _infused(memory_service, "C-2")
    assert p.do("report_toxicity", {"toxicity": explicit(age=12)}).status == "recorded"


def test_an_explicit_grade_with_no_age_takes_the_age_on_record(
    memory_service: CourseService,
) -> None:
    """A child's ICANS graded by the CAPD at 11.5 years is on record: a later explicit grade
    (the CAPD no longer applicable) without an age still needs the reason."""
    p = _infused(memory_service, "C-3")
    p.do("report_toxicity", {"toxicity": icans_capd(4, "wakes_spontaneously", 11.5)})
    p.do("resolve_toxicity", {"toxicity_id": "ICANS-1"}, hours=24)
    with pytest.raises(InvalidCommandError) as refused:
        p.do("report_toxicity", {"toxicity": explicit(grade=3)}, hours=24)
    message = refused.value.to_json()["message"]
    assert refused.value.to_json()["field"] == "reason"
    assert "ICANS-1 on record (11.5 years at its onset)" in message
    assert p.do("report_toxicity", {"toxicity": explicit(grade=3)}, reason=WHY).status == (
        "recorded"
    )


def test_an_adult_on_record_or_no_age_known_asks_nothing_more(
    memory_service: CourseService,
) -> None:
    adult = _infused(memory_service, "C-4")
    adult.do(
        "report_toxicity",
        {
            "toxicity": {
                "kind": "ICANS",
                "observations": {"age_years": 34, "ice_score": 8, "consciousness": "none"},
            }
        },
    )
    adult.do("resolve_toxicity", {"toxicity_id": "ICANS-1"}, hours=24)
    assert adult.do("report_toxicity", {"toxicity": explicit()}).status == "recorded"
    unknown = _infused(memory_service, "C-5")
    assert unknown.do("report_toxicity", {"toxicity": explicit()}).status == "recorded"


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (
            {"kind": "CRS", "scale": "ASTCT", "scale_version": "2019", "grade": 1, "age_years": 5},
            "only with an explicit ICANS grade",
        ),
        (
            {
                "kind": "ICANS",
                "observations": {"age_years": 5, "capd_score": 3, "consciousness": "none"},
                "age_years": 5,
            },
            "only with an explicit ICANS grade",
        ),
        ({**explicit(), "age_years": -1}, "age"),
        ({**explicit(), "age_years": "11"}, "age"),
    ],
)
def test_a_misplaced_or_bad_age_names_the_field(report: dict[str, Any], message: str) -> None:
    from cart_course.protocol.errors import ProtocolInputError

    with pytest.raises(ProtocolInputError) as bad:
        parse_toxicity_report(report)
    assert bad.value.field == "age_years"
    assert message in str(bad.value)


def test_an_explicit_grade_with_its_age_round_trips() -> None:
    report = parse_toxicity_report(explicit(age=0.8))
    assert report.age_years == 0.8
    assert parse_toxicity_report(report.to_json()) == report
    assert "age_years" not in parse_toxicity_report(explicit()).to_json()
