"""An SAE over HTTP from its onset to its initial report's due time turning overdue on the board
(issue 16): the board's "overdue" is judged on the real clock, at the due instant itself."""

from __future__ import annotations

import datetime as dt
import random
import time

from http_support import stack
from litestar.testing import TestClient

from cart_course.demo import eligible_screening

#: The initial SAE report is due this long after the site became aware (24 h by default).
DAY = dt.timedelta(hours=24)


def _at(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat(timespec="seconds")


def test_an_sae_turns_overdue_on_the_board_at_its_due_instant() -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    due = now + dt.timedelta(seconds=6)
    aware = due - DAY
    with stack("memory:") as s, TestClient(s.app) as client:

        def post(command: str, at: dt.datetime, payload: dict[str, object], role: str) -> dict:
            r = client.post(
                f"/v1/patients/SAE-1/commands/{command}",
                json={"occurred_at": _at(at), "payload": payload},
                headers=s.auth(role),
            )
            assert r.status_code == 201, r.text
            return r.json()

        screening = eligible_screening(random.Random(5))
        screening["informed_consent_date"] = (now - dt.timedelta(days=13)).date().isoformat()
        post("screen", now - dt.timedelta(days=12), {"screening": screening}, "clinician")
        post(
            "record_apheresis",
            now - dt.timedelta(days=10),
            {"apheresis_contraindication": False},
            "service",
        )
        post(
            "give_infusion",
            now - dt.timedelta(days=2),
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
            "service",
        )
        onset = aware - dt.timedelta(hours=2)
        reported = post(
            "report_toxicity",
            onset,
            {
                "toxicity": {"kind": "CRS", "grade": 3, "scale": "ASTCT", "scale_version": "2019"},
                "adverse_event": {
                    "attribution": "probable",
                    "seriousness": ["hospitalisation"],
                    "expected": True,
                    "aware_at": _at(aware),
                },
            },
            "clinician",
        )
        (clock,) = reported["outcome"]["sae"]["clocks"]
        assert clock == {"report": "initial", "within_hours": 24}

        def row() -> dict:
            board = client.get("/v1/board", headers=s.auth("monitor"))
            assert board.status_code == 200, board.text
            (only,) = [r for r in board.json() if r["patient_id"] == "SAE-1"]
            return only

        def overdue_ids() -> list[str]:
            r = client.get("/v1/board?overdue=true", headers=s.auth("monitor"))
            return [x["patient_id"] for x in r.json()]

        before = row()
        assert before["next_action"] == f"record_sae_report (CRS-1 initial, due {_at(due)})"
        assert before["overdue"] is False
        just_after = due.replace(tzinfo=None) + dt.timedelta(microseconds=1)
        assert before["overdue_from"] == just_after.isoformat(timespec="microseconds")
        assert "SAE-1" not in overdue_ids()
        time.sleep(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
        assert row()["overdue"] is True
        assert "SAE-1" in overdue_ids()
        # the report, sent late, is recorded (never refused) with its delay; the board moves on
        sent = post(
            "record_sae_report",
            dt.datetime.now(dt.UTC).replace(microsecond=0),
            {"case_id": "CRS-1", "report": "initial", "sent_to": "sponsor", "reference": "S-1"},
            "clinician",
        )
        assert sent["outcome"]["due_at"] == _at(due)
        patient = client.get("/v1/patients/SAE-1", headers=s.auth("monitor")).json()
        (case,) = patient["sae_cases"]
        assert case["clocks"][0]["late"] is True and case["clocks"][0]["delay_hours"] >= 0
        assert not row()["next_action"].startswith("record_sae_report")
