"""The pure record: clinical times with different UTC offsets are ordered as instants."""

from __future__ import annotations

from cart_course.protocol.record import PatientRecord, evolve


def _report(record: PatientRecord, occurred_at: str, version: int) -> None:
    evolve(
        record,
        trigger="report_toxicity",
        to_state="apheresed",
        facts={"toxicity": {"kind": "other"}, "toxicity_id": f"other-{version}"},
        outcome={
            "toxicity_id": f"other-{version}",
            "kind": "other",
            "grade": 1,
            "scale": "CTCAE",
            "scale_version": "5.0",
            "severe": False,
            "opens_hold": False,
        },
        occurred_at=occurred_at,
        version=version,
        protocol_version="1.0",
    )


def test_last_clinical_time_is_the_latest_instant_not_the_latest_text() -> None:
    record = PatientRecord(patient_id="P-1")
    # 09:00 in Paris is 08:00 UTC; the second report, 08:30 UTC, happened later.
    _report(record, "2026-03-02T09:00:00+01:00", 1)
    _report(record, "2026-03-02T08:30:00+00:00", 2)
    assert record.last_occurred_at == "2026-03-02T08:30:00+00:00"
    assert record.first_occurred_at == "2026-03-02T09:00:00+01:00"


def test_a_late_entry_of_an_earlier_event_moves_the_first_clinical_time_back() -> None:
    record = PatientRecord(patient_id="P-1")
    _report(record, "2026-03-02T10:00:00+00:00", 1)
    _report(record, "2026-03-01T23:30:00-05:00", 2)  # 04:30 UTC on 2 March: earlier
    assert record.first_occurred_at == "2026-03-01T23:30:00-05:00"
    assert record.last_occurred_at == "2026-03-02T10:00:00+00:00"


def test_toxicity_indexes_kept_by_evolve_equal_a_rebuild_and_survive_snapshots() -> None:
    """The open/kind/course indexes (what makes commands cost the same with long histories) are
    kept by ``evolve`` exactly as a rebuild from the toxicities computes them."""
    import datetime as dt

    from cart_course.contract import parse_command
    from cart_course.demo import cohort
    from cart_course.service import CourseService
    from cart_course.storage import open_application, parse_store_url

    svc = CourseService(open_application(parse_store_url("memory:")))
    commands = [
        parse_command(c) for c in cohort(80, 5, start=dt.datetime(2025, 1, 6, tzinfo=dt.UTC))
    ]
    svc.execute_batch(commands)
    checked = 0
    for pid in svc.patient_ids():
        live = svc.record(pid)
        restored = PatientRecord.from_json(live.to_json())
        for record in (live, restored):
            assert record.open_ids == [t.id for t in record.toxicities.values() if t.open]
            counts: dict[str, int] = {}
            for t in record.toxicities.values():
                counts[t.kind] = counts.get(t.kind, 0) + 1
            assert record.kind_counts == counts
            assert sorted(i for ids in record.course_ids.values() for i in ids) == sorted(
                record.toxicities
            )
            for number, ids in record.course_ids.items():
                episodes = [record.toxicities[i] for i in ids]
                worst = max(episodes, key=lambda t: t.worst_grade)
                assert record.worst_of_course(number) is worst, (pid, number)
            assert set(record.course_worst) == set(record.course_ids)
        checked += bool(live.toxicities)
    assert checked >= 10  # the cohort has holds, severe CRS and ICANS
