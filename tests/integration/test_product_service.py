"""The cell product's chain of identity through the service (issue 15)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from integration_helpers import Course
from product_helpers import DIN, NURSE, SECOND, bedside, collect, release, tracked

from cart_course.audit.conformance import check_history
from cart_course.audit.log import patient_events
from cart_course.errors import InvalidCommandError, MoveRefused
from cart_course.protocol import product
from cart_course.service import CourseService


def test_released_bags_are_infused_after_a_bedside_check(memory_service: CourseService) -> None:
    c = Course(memory_service, "P-1")
    tracked(c)
    record = memory_service.record("P-1")
    assert record.state == "apheresed"
    assert product.product_status(record) == "released"
    assert "infuse_d1" in memory_service.allowed_moves("P-1")
    for day in (1, 2, 3):
        done = bedside(c, day, f"LOT-1-{day}")
        assert done.status == "recorded"
        assert done.to_state == f"infused_d{day}"
        assert done.deviations == ()
    record = memory_service.record("P-1")
    assert [f.cells for f in record.courses[0].fractions] == [7e6, 21e6, 42e6]  # the labels
    assert all(b["infused_version"] for b in record.bags.values())
    assert product.product_status(record) == "infused"
    assert product.vein_to_vein_days(record) == 14
    # the recorded infusions re-check under their protocol version, with no product note
    result = check_history("P-1", patient_events(memory_service.log, "P-1"))
    assert result.ok, result.findings
    assert result.notes == []


def test_without_a_released_bag_a_tracked_course_has_no_infusion(
    memory_service: CourseService,
) -> None:
    c = Course(memory_service, "P-2")
    c.screen()
    collect(c)
    assert "infuse_d1" not in memory_service.allowed_moves("P-2")
    with pytest.raises(MoveRefused) as info:
        c.infuse(1)  # a free count and lot, as before: the product is tracked now
    assert [f["rule"] for f in info.value.failed] == ["product_identity_verified"]
    c.do("start_manufacture", {"lot_id": "LOT-2"})
    with pytest.raises(InvalidCommandError) as unknown:
        bedside(c, 1, "LOT-2-1")  # not released: there is no such bag yet
    assert unknown.value.field == "payload.bag_id"
    assert memory_service.record("P-2").version == 4  # nothing recorded since the lot began


def test_bedside_refusals_name_the_field_and_never_another_patient(
    memory_service: CourseService,
) -> None:
    other = Course(memory_service, "P-OTHER")
    tracked(other, lot="LOT-OTHER")
    c = Course(memory_service, "P-3")
    tracked(c)
    version = memory_service.record("P-3").version

    def refused(day: int, bag: str, **kw: object) -> MoveRefused:
        kw.setdefault("days", 0)
        with pytest.raises(MoveRefused) as info:
            bedside(c, day, bag, **kw)  # type: ignore[arg-type]
        assert "product_identity_verified" in [f["rule"] for f in info.value.failed]
        return info.value

    # a bag of another patient: not this patient's, and whose it is is never said
    with pytest.raises(InvalidCommandError) as wrong:
        bedside(c, 1, "LOT-OTHER-1", days=0)
    assert wrong.value.field == "payload.bag_id"
    assert "P-OTHER" not in str(wrong.value) and "not a bag of this patient" in str(wrong.value)
    # the same person twice
    same = refused(1, "LOT-1-1", verified_by=NURSE["id"])
    assert "payload.verified_by" in str(same)
    # thawed too long before
    thawed = refused(1, "LOT-1-1", thawed_minutes=45)
    assert "payload.thawed_at" in str(thawed) and "30 minutes" in str(thawed)
    # a bag labelled for another fraction
    assert "labelled for D2" in str(refused(1, "LOT-1-2"))
    assert memory_service.record("P-3").version == version  # nothing recorded
    bedside(c, 1, "LOT-1-1", days=0)
    # already infused
    assert "already infused" in str(refused(2, "LOT-1-1", days=1))
    assert "P-OTHER" not in str(refused(2, "LOT-1-1", days=1))


def test_an_expired_bag_is_refused(memory_service: CourseService) -> None:
    c = Course(memory_service, "P-4")
    c.screen()
    collect(c)
    c.do("start_manufacture", {"lot_id": "LOT-4"})
    release(c, "LOT-4", expires_in=dt.timedelta(days=5))
    with pytest.raises(MoveRefused) as info:
        bedside(c, 1, "LOT-4-1", days=10)
    assert "expired" in str(info.value)
    assert info.value.failed[0]["rule"] == "product_identity_verified"


def test_a_count_off_the_label_needs_a_deviation_reason(memory_service: CourseService) -> None:
    c = Course(memory_service, "P-5")
    tracked(c)
    off = {"cells": {"value": 7e6 * 1.15, "unit": "cells"}}
    with pytest.raises(MoveRefused) as info:
        bedside(c, 1, "LOT-1-1", **off)
    assert [f["rule"] for f in info.value.failed] == ["dose_within_tolerance_or_deviation"]
    near = bedside(c, 1, "LOT-1-1", days=0, **off, deviation_reason="bag count re-done at bedside")
    assert near.status == "recorded"
    assert any("label of bag LOT-1-1" in d for d in near.deviations)


def test_a_release_with_a_failed_test_needs_an_exception_and_is_a_deviation(
    memory_service: CourseService,
) -> None:
    c = Course(memory_service, "P-6")
    c.screen()
    collect(c)
    c.do("start_manufacture", {"lot_id": "LOT-6"})
    failed = [*[{"name": "sterility", "result": "no growth", "passed": True}]]
    failed.append({"name": "viability", "result": "66 %", "passed": False})
    with pytest.raises(MoveRefused) as info:
        release(c, "LOT-6", tests=failed)
    assert [f["rule"] for f in info.value.failed] == ["release_tests_passed_or_exception"]
    done = release(c, "LOT-6", tests=failed, exception_reason="no other product; QP accepts")
    assert done.outcome["out_of_specification"] is True
    record = memory_service.record("P-6")
    assert record.deviations[-1]["trigger"] == "release_product"
    assert record.deviations[-1]["reason"] == "no other product; QP accepts"


def test_a_failed_manufacture_allows_a_new_apheresis_or_withdrawal(
    memory_service: CourseService,
) -> None:
    c = Course(memory_service, "P-7")
    c.screen()
    collect(c)
    with pytest.raises(MoveRefused):  # nothing failed yet
        c.do(
            "repeat_apheresis",
            {"apheresis_contraindication": False, "collection_id": "C-2"},
            reason="x",
        )
    c.do("start_manufacture", {"lot_id": "LOT-7A"})
    bad = [{"name": "viability", "result": "41 %", "passed": False}]
    release(c, "LOT-7A", tests=bad, decision="rejected")
    record = memory_service.record("P-7")
    assert product.product_status(record) == "failed"
    assert product.manufacturing_failures(record) == 1
    allowed = memory_service.allowed_moves("P-7")
    assert "repeat_apheresis" in allowed and "withdraw" in allowed
    c.do(
        "repeat_apheresis",
        {"apheresis_contraindication": False, "collection_id": "SITE-COL-7-2"},
        reason="LOT-7A failed release",
        days=3,
    )
    c.do("start_manufacture", {"lot_id": "LOT-7B"})
    release(c, "LOT-7B")
    assert bedside(c, 1, "LOT-7B-1").to_state == "infused_d1"
    assert memory_service.record("P-7").lots["LOT-7B"]["collection_id"] == "SITE-COL-7-2"


@pytest.mark.parametrize(
    ("command", "payload", "field"),
    [
        (
            "record_apheresis",
            {"apheresis_contraindication": False, "din": "G123498654321A"},
            "payload.din",
        ),
        (
            "record_apheresis",
            {"apheresis_contraindication": False, "din": "G12349865"},
            "payload.din",
        ),
        (
            "start_manufacture",
            {"lot_id": "L", "collection_id": "NOT-MINE"},
            "payload.collection_id",
        ),
    ],
)
def test_bad_collection_input_names_the_field(
    memory_service: CourseService, command: str, payload: dict[str, object], field: str
) -> None:
    c = Course(memory_service, "P-8")
    c.screen()
    if command != "record_apheresis":
        collect(c)
    version = memory_service.record("P-8").version
    with pytest.raises(InvalidCommandError) as info:
        c.do(command, payload)
    assert info.value.field == field
    assert memory_service.record("P-8").version == version


def test_bad_release_input_names_the_field(memory_service: CourseService) -> None:
    c = Course(memory_service, "P-9")
    c.screen()
    collect(c)
    c.do("start_manufacture", {"lot_id": "LOT-9"})
    version = memory_service.record("P-9").version
    cases = [
        ({"tests": []}, "payload.tests"),
        ({"lot_id": "LOT-UNKNOWN"}, "payload.lot_id"),
        ({"expires_at": "2020-01-01T00:00:00+00:00"}, "payload.expires_at"),
        ({"tests": [{"name": "x", "result": "y"}]}, "payload.tests"),
    ]
    for change, field in cases:
        with pytest.raises(InvalidCommandError) as info:
            release(c, "LOT-9", **change)
        assert info.value.field.startswith(field), (change, info.value)
    assert memory_service.record("P-9").version == version
    # every invalid field is named at once
    with pytest.raises(InvalidCommandError) as several:
        c.do(
            "release_product",
            {
                "lot_id": 5,
                "decision": "maybe",
                "tests": [],
                "released_by": "qp",
                "manufactured_on": "x",
            },
        )
    assert several.value.field == "payload.lot_id"
    assert "payload.decision" in str(several.value)


def test_legacy_infusions_are_noted_not_tampered(memory_service: CourseService) -> None:
    c = Course(memory_service, "P-10")
    c.screen()
    c.apheresis()
    c.infuse(1, days=14)
    result = check_history("P-10", patient_events(memory_service.log, "P-10"))
    assert result.ok
    assert [n.check for n in result.notes] == ["no product recorded"]
    assert memory_service.record("P-10").collections == []


def test_din_check_character() -> None:
    assert product.din_check_character("G123498654321") == "H"
    assert product.parse_din("g1234 98 654321 h", "payload.din") == "G123498654321H"
    assert DIN.replace(" ", "") == "G123498654321H"
    assert NURSE["id"] != SECOND


def test_the_board_shows_the_product_and_flags_a_long_wait(tmp_path: Path) -> None:
    from cart_course.storage import open_application, parse_store_url
    from cart_course.views import Views, queries

    url = str(tmp_path / "board.sqlite")
    service = CourseService(open_application(parse_store_url(url)))
    try:
        done = Course(service, "B-1")
        tracked(done)
        for day in (1, 2, 3):
            bedside(done, day, f"LOT-1-{day}")
        waiting = Course(service, "B-2")
        waiting.screen()
        collect(waiting)
        waiting.do("start_manufacture", {"lot_id": "LOT-B2A"})
        release(
            waiting,
            "LOT-B2A",
            decision="rejected",
            tests=[{"name": "viability", "result": "40 %", "passed": False}],
        )
        legacy = Course(service, "B-3")
        legacy.screen()
        views = Views(service.log, parse_store_url(url))
        try:
            views.catch_up()
            later = dt.datetime(2026, 3, 30, tzinfo=dt.UTC)
            rows = {r["patient_id"]: r for r in queries.board(views.db, now=later)}
            assert rows["B-1"]["product_status"] == "infused"
            assert rows["B-1"]["vein_to_vein_days"] == 14
            assert rows["B-1"]["product_waiting_too_long"] is False
            assert rows["B-2"]["product_status"] == "failed"
            assert rows["B-2"]["product_waiting_too_long"] is True
            assert rows["B-3"]["product_status"] is None
            failed = queries.board(views.db, product="failed", now=later)
            assert [r["patient_id"] for r in failed] == ["B-2"]
            assert queries.count(views.db, product="any") == 2
            cohort = queries.cohort(views.db)
            assert cohort["product"] == {"failed": 1, "infused": 1}
            assert cohort["manufacturing_failures"] == {"lots": 1}
        finally:
            views.close()
    finally:
        service.close()


def test_exports_carry_the_product(memory_service: CourseService) -> None:
    from fhir.resources.R4B.bundle import Bundle

    from cart_course.audit import exports
    from cart_course.audit.fhir import bundle

    c = Course(memory_service, "X-1")
    tracked(c)
    bedside(c, 1, "LOT-1-1")
    events = patient_events(memory_service.log, "X-1")
    data = bundle("X-1", events)
    Bundle.model_validate(data)  # a valid FHIR R4B bundle
    kinds = [entry["resource"]["resourceType"] for entry in data["entry"]]
    assert kinds.count("BiologicallyDerivedProduct") == 3
    (procedure,) = [
        e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == "Procedure"
    ]
    used = procedure["extension"][0]["valueReference"]["reference"]
    product_entry = next(e for e in data["entry"] if e["fullUrl"] == used)
    assert product_entry["resource"]["status"] == "unavailable"  # infused
    assert {"system": "urn:oid:2.16.840.1.113883.6.18", "value": "G123498654321H"} in (
        product_entry["resource"]["identifier"]
    )
    header, *rows = "".join(exports.csv_timeline(memory_service.log, "X-1")).splitlines()
    assert header.endswith("collection_id,lot_id,bag_id,site")  # site: issue 17
    assert rows[-1].endswith("G123498654321H,LOT-1,LOT-1-1,S00")
    lines = [json.loads(line) for line in exports.jsonl(memory_service.log, "X-1")]
    assert lines[-1]["product"] == {
        "collection_id": "G123498654321H",
        "lot_id": "LOT-1",
        "bag_id": "LOT-1-1",
    }


def test_the_demo_cohort_has_products_a_failed_lot_an_exception_and_a_refused_wrong_bag(
    memory_service: CourseService,
) -> None:
    from cart_course.contract import parse_command
    from cart_course.demo import cohort, wrong_bag_attempt

    commands = list(cohort(40, 1))
    results = memory_service.execute_batch([parse_command(c) for c in commands])
    assert not [r for r in results if isinstance(r, Exception)]
    releases = [c for c in commands if c["command"] == "release_product"]
    assert any(c["payload"]["decision"] == "rejected" for c in releases)
    assert any("exception_reason" in c["payload"] for c in releases)
    assert any(c["command"] == "repeat_apheresis" for c in commands)
    attempt = wrong_bag_attempt(commands)
    assert attempt is not None
    other = next(
        c["patient_id"]
        for c in commands
        if c["payload"].get("bag_id") == attempt["payload"]["bag_id"]
    )
    before = [c for c in commands if c["patient_id"] == attempt["patient_id"]]
    d1 = before.index(next(c for c in before if c["command"] == "give_infusion"))
    # the two patients recorded up to the attempt's D1: the bag is the other patient's
    from cart_course.storage import open_application, parse_store_url

    store = CourseService(open_application(parse_store_url("memory:")))
    try:
        firsts = [c for c in commands if c["patient_id"] in (other, attempt["patient_id"])]
        for c in firsts:
            if c is before[d1]:
                break
            store.execute(parse_command(c))
        with pytest.raises(InvalidCommandError) as info:
            store.execute(parse_command(attempt))
        assert info.value.field == "payload.bag_id"
        assert other not in str(info.value)
    finally:
        store.close()


def test_a_correction_of_a_bedside_checked_infusion_judges_the_bag_as_given(
    memory_service: CourseService,
) -> None:
    c = Course(memory_service, "K-1")
    tracked(c)
    d1 = bedside(c, 1, "LOT-1-1")
    bedside(c, 2, "LOT-1-2")
    fixed = c.do(
        "correct",
        {"corrects": d1.version, "changes": {"cells": {"value": 7.1e6, "unit": "cells"}}},
        reason="count re-read from the label",
    )
    assert fixed.status == "recorded" and fixed.deviations == ()
    result = check_history("K-1", patient_events(memory_service.log, "K-1"))
    assert result.ok, result.findings
