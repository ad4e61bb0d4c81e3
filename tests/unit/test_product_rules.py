"""The cell product's pure parts: the DIN check character, the bedside rule, product status."""

from __future__ import annotations

import pytest

from cart_course.protocol import product
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.machine import RULES, Probe
from cart_course.protocol.parameters import DEFAULT_PARAMETERS
from cart_course.protocol.record import PatientRecord


def test_din_check_character_iso_7064_mod_37_2() -> None:
    # the worked example of the UK Red Book, Annex 2
    assert product.din_check_character("G123498654321") == "H"
    assert product.parse_din("G1234 98 654321 H", "payload.din") == "G123498654321H"
    with pytest.raises(ProtocolInputError) as wrong:
        product.parse_din("G1234 98 654321 J", "payload.din")
    assert wrong.value.field == "payload.din" and "check character" in wrong.value.message
    with pytest.raises(ProtocolInputError):
        product.parse_din("G1234 98 65432X H", "payload.din")


def _bag(**changes: object) -> dict[str, object]:
    bag: dict[str, object] = {
        "bag_id": "B1",
        "lot_id": "L1",
        "collection_id": "G123498654321H",
        "lot_status": "released",
        "lot_course": 1,
        "expires_at": "2027-01-01T00:00:00+00:00",
        "cells": 7e6,
        "fraction": 1,
        "infused_version": None,
    }
    bag.update(changes)
    return bag


def _facts(**changes: object) -> dict[str, object]:
    facts: dict[str, object] = {
        "day": 1,
        "course_number": 1,
        "bag_id": "B1",
        "bag": _bag(),
        "verified_by": "rn.b",
        "administered_by": "rn.a",
        "thawed_at": "2026-02-01T09:00:00+00:00",
        "infused_at": "2026-02-01T09:20:00+00:00",
        "cells": 7e6,
        "product_tracked": True,
    }
    facts.update(changes)
    return facts


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"bag": _bag(lot_status="rejected")}, "rejected"),
        ({"bag": _bag(lot_status="in_manufacture")}, "not released"),
        ({"bag": _bag(lot_course=2)}, "course 2"),
        ({"bag": _bag(infused_version=7)}, "already infused"),
        ({"bag": _bag(fraction=3)}, "labelled for D3"),
        ({"bag": _bag(expires_at="2026-02-01T09:00:00+00:00")}, "expired"),
        ({"thawed_at": "2026-02-01T08:00:00+00:00"}, "thaw limit is 30 minutes"),
        ({"thawed_at": "2026-02-01T10:00:00+00:00"}, "after the infusion"),
        ({"verified_by": "RN.A"}, "another person"),
        ({"bag": None}, "not a bag of this patient"),
    ],
)
def test_the_bedside_rule_refuses_each_case(changes: dict[str, object], words: str) -> None:
    check = RULES["product_identity_verified"]
    assert check.check(Probe("apheresed", _facts(), DEFAULT_PARAMETERS))
    probe = Probe("apheresed", _facts(**changes), DEFAULT_PARAMETERS)
    assert not check.check(probe)
    assert words in check.explain(probe)


def test_an_untracked_course_needs_no_bag_and_a_tracked_one_does() -> None:
    check = RULES["product_identity_verified"].check
    assert check(Probe("apheresed", {"day": 1}, DEFAULT_PARAMETERS))
    tracked = {"day": 1, "product_tracked": True, "bags_available": 0}
    assert not check(Probe("apheresed", tracked, DEFAULT_PARAMETERS))
    assert not check(Probe("apheresed", tracked, DEFAULT_PARAMETERS, hypothetical=True))
    ready = {**tracked, "bags_available": 1}
    assert check(Probe("apheresed", ready, DEFAULT_PARAMETERS, hypothetical=True))


def test_product_status_and_vein_to_vein() -> None:
    record = PatientRecord(patient_id="P")
    assert product.product_status(record) is None
    record.collections.append(
        {"id": "C1", "id_type": "site", "collected_on": "2026-01-01", "version": 3}
    )
    assert product.product_status(record) == "collected"
    record.lots["L1"] = {"lot_id": "L1", "collection_id": "C1", "course_number": 1}
    record.lots["L1"]["status"] = "in_manufacture"
    assert product.product_status(record) == "in_manufacture"
    record.lots["L1"]["status"] = "rejected"
    assert product.product_status(record) == "failed"
    assert product.manufacturing_failures(record) == 1
    record.lots["L1"]["status"] = "released"
    record.bags["B1"] = {"bag_id": "B1", "lot_id": "L1", "cells": 7e6, "fraction": 1}
    record.bags["B1"]["infused_version"] = None
    assert product.product_status(record) == "released"
    assert product.vein_to_vein_days(record) is None
    record.bags["B1"].update(infused_version=9, infused_at="2026-01-29T09:00:00+01:00")
    assert product.product_status(record) == "infused"
    assert product.vein_to_vein_days(record) == 28
    again = PatientRecord.from_json(record.to_json())
    assert again == record and product.product_summary(again) == product.product_summary(record)
