"""The product's chain of identity end to end: HTTP (collection -> release -> three bedside-checked
fractions -> audit product) and the CLI (wrong bag, expired bag refused; audit product)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import run
from http_support import Stack, screen_body, stack
from litestar.testing import TestClient

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
DIN = "G1234 98 654321 H"


def at(days: float, minutes: float = 0) -> str:
    return (T0 + dt.timedelta(days=days, minutes=minutes)).isoformat()


def bags(lot: str) -> list[dict[str, Any]]:
    return [
        {"bag_id": f"{lot}-{d}", "cells": 70e6 * share, "fraction": d}
        for d, share in ((1, 0.1), (2, 0.3), (3, 0.6))
    ]


def release_body(lot: str, *, expires_days: float = 300) -> dict[str, Any]:
    return {
        "lot_id": lot,
        "decision": "released",
        "tests": [
            {"name": "sterility", "result": "no growth", "passed": True},
            {"name": "viability", "result": "88 %", "passed": True},
        ],
        "released_by": "qp.novak",
        "manufactured_on": "2026-01-20",
        "expires_at": at(expires_days),
        "bags": bags(lot),
    }


def infusion(day: int, bag: str, when: float, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "day": day,
        "bag_id": bag,
        "verified_by": "rn.baker",
        "thawed_at": at(when, -15),
    }
    if day == 1:
        payload["weight"] = {"value": 70, "unit": "kg"}
    payload.update(extra)
    return payload


@pytest.fixture
def api() -> Iterator[tuple[Stack, TestClient[Any]]]:
    with stack("memory:") as s, TestClient(s.app) as client:
        yield s, client


def test_http_collection_release_three_bedside_checked_fractions_and_audit_product(
    api: tuple[Stack, TestClient[Any]],
) -> None:
    s, client = api
    nurse = s.auth("clinician")

    def post(command: str, payload: dict[str, Any], when: float, **kw: Any) -> Any:
        body = {"occurred_at": at(when), "payload": payload, **kw}
        return client.post(f"/v1/patients/H-P1/commands/{command}", json=body, headers=nurse)

    assert client.post("/v1/commands", json=screen_body("H-P1"), headers=nurse).status_code == 201
    steps = [
        ("record_apheresis", {"apheresis_contraindication": False, "din": DIN}, 3),
        ("start_manufacture", {"lot_id": "LOT-H1"}, 4),
        ("release_product", release_body("LOT-H1"), 16),
    ]
    for command, payload, when in steps:
        r = post(command, payload, when)
        assert r.status_code == 201, r.text
        assert r.json()["to_state"] == "apheresed"
    # a bag of no lot of this patient: refused, nothing recorded, no other patient named (a
    # reference that is not on the patient's record is a record conflict: 409)
    wrong = post("give_infusion", infusion(1, "LOT-ELSEWHERE-1", 18), 18)
    assert wrong.status_code == 409 and wrong.json()["field"] == "payload.bag_id"
    assert wrong.json()["error"] == "record_conflict"
    # the same person twice at the bedside
    same = post("give_infusion", infusion(1, "LOT-H1-1", 18, verified_by="clinician.tester"), 18)
    assert same.status_code == 409
    assert same.json()["failed_rules"][0]["rule"] == "product_identity_verified"
    for day in (1, 2, 3):
        r = post("give_infusion", infusion(day, f"LOT-H1-{day}", 17 + day), 17 + day)
        assert r.status_code == 201, r.text
        assert r.json()["to_state"] == f"infused_d{day}"
    chain = client.get("/v1/audit/product/LOT-H1-2", headers=s.auth("auditor"))
    assert chain.status_code == 200, chain.text
    data = chain.json()
    assert (data["kind"], data["patient_id"], data["lots"]) == ("bag", "H-P1", ["LOT-H1"])
    assert [step["step"] for step in data["steps"]] == [
        "record_apheresis",
        "start_manufacture",
        "release_product",
        "infuse_d2",
    ]
    d2 = data["steps"][-1]
    assert (d2["administered_by"], d2["verified_by"]) == ("clinician.tester", "rn.baker")
    assert d2["release_decision"]["decision"] == "released"
    whole = client.get("/v1/audit/product/G123498654321H", headers=s.auth("auditor")).json()
    assert [step["step"] for step in whole["steps"]][-3:] == ["infuse_d1", "infuse_d2", "infuse_d3"]
    missing = client.get("/v1/audit/product/NOPE", headers=s.auth("auditor"))
    assert missing.status_code == 404
    assert client.get("/v1/audit/product/LOT-H1", headers=nurse).status_code == 403


def envelope(command: str, when: float, payload: dict[str, Any], key: str) -> str:
    return json.dumps(
        {
            "command": command,
            "patient_id": "C-P1",
            "occurred_at": at(when),
            "actor": {"id": "rn.adams", "role": "clinician"},
            "idempotency_key": key,
            "payload": payload,
        }
    )


def test_cli_wrong_bag_and_expired_bag_are_refused_and_audit_product(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite"
    screen = {**screen_body("C-P1"), "actor": {"id": "dr.lee", "role": "clinician"}}
    lines = [
        json.dumps({**screen, "idempotency_key": "s"}),
        envelope("record_apheresis", 3, {"apheresis_contraindication": False, "din": DIN}, "a"),
        envelope("start_manufacture", 4, {"lot_id": "LOT-C1"}, "m"),
        envelope("release_product", 16, release_body("LOT-C1", expires_days=20), "r"),
    ]
    source = tmp_path / "story.jsonl"
    source.write_text("\n".join(lines) + "\n")
    ingested = run(db, "ingest", str(source))
    assert ingested.returncode == 0, ingested.stderr
    wrong = run(
        db,
        "record",
        "--json",
        "-",
        stdin=envelope("give_infusion", 18, infusion(1, "LOT-OF-SOMEONE-1", 18), "w"),
    )
    assert wrong.returncode != 0
    assert json.loads(wrong.stdout)["field"] == "payload.bag_id"
    expired = run(
        db,
        "record",
        "--json",
        "-",
        stdin=envelope("give_infusion", 25, infusion(1, "LOT-C1-1", 25), "e"),
    )
    assert expired.returncode != 0
    refusal = json.loads(expired.stdout)
    assert refusal["error"] == "move_refused"
    assert refusal["failed_rules"][0]["rule"] == "product_identity_verified"
    assert "expired" in refusal["failed_rules"][0]["message"]
    chain = run(db, "audit", "product", "LOT-C1")
    assert chain.returncode == 0, chain.stderr
    assert "lot LOT-C1 released by qp.novak" in chain.stdout
    assert run(db, "audit", "product", "NOPE").returncode == 1
