"""Conformance compares a recorded toxicity list with the history by the episodes it names:
how an episode is summed up in such a list changed between releases, and an older record must
not read as inconsistent for that alone."""

from __future__ import annotations

from cart_course.audit.conformance import _same_fact
from cart_course.protocol.record import PatientRecord, Toxicity


def _tox(tid: str, course: int, *, open_: bool = True) -> Toxicity:
    return Toxicity(
        id=tid,
        kind="other",
        term="rash",
        grade=1,
        scale="CTCAE",
        scale_version="5.0",
        course_number=course,
        onset="2026-01-20T20:00:00+00:00",
        report={},
        worst_grade=3,
        resolved_at=None if open_ else "2026-01-21T20:00:00+00:00",
    )


def test_an_older_summary_of_the_same_episodes_is_the_same_fact() -> None:
    record = PatientRecord(patient_id="F-1")
    record.toxicities = {"other-1": _tox("other-1", 1), "other-2": _tox("other-2", 2)}
    old = [{"id": "other-1", "kind": "other", "grade": 2}]  # its grade then, not its worst
    new = [{"id": "other-1", "kind": "other", "grade": 3}]
    assert _same_fact("open_toxicities", old, new, record)
    # a course's list now also names the episode still open from course 1
    course_old = [{"id": "other-2", "kind": "other", "grade": 3}]
    course_new = [*course_old, {"id": "other-1", "kind": "other", "grade": 3}]
    assert _same_fact("course_toxicities", course_old, course_new, record)


def test_a_list_naming_other_episodes_is_a_finding() -> None:
    record = PatientRecord(patient_id="F-2")
    record.toxicities = {"other-1": _tox("other-1", 1, open_=False), "CRS-1": _tox("CRS-1", 2)}
    assert not _same_fact(
        "open_toxicities", [{"id": "CRS-1"}], [{"id": "CRS-1"}, {"id": "other-1"}], record
    )
    # a resolved episode of an earlier course is not carried over: its absence is a finding
    assert not _same_fact("course_toxicities", [], [{"id": "other-1"}], record)
    assert not _same_fact("course_number", 1, 2, record)
