"""The watchlist by adverse-event grade (issue 16): ``cart-course status --ae-grade N`` and
``GET /v1/board?min_ae_grade=N`` list the patients with an open or recent adverse event (any
toxicity episode) whose worst grade is N or more; open: no resolution on record; recent: ended
at most ``AE_RECENT_DAYS`` (30) days before the moment judged. The board rows carry what a
dashboard shows of it (``max_ae_grade``, ``max_open_grade``, the SAE report due)."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from http_support import stack
from litestar.testing import TestClient

from cart_course.demo import eligible_screening
from cart_course.views.queries import AE_RECENT_DAYS

CLI = str(Path(sys.executable).with_name("cart-course"))
EST = dt.timezone(dt.timedelta(hours=-5))


def _at(when: dt.datetime) -> str:
    return when.astimezone(EST).isoformat(timespec="seconds")


def test_the_watchlist_by_ae_grade_over_http_and_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "trial.sqlite"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    d1 = now - dt.timedelta(days=70)
    with stack(str(db)) as s, TestClient(s.app) as client:

        def post(pid: str, command: str, at: dt.datetime, payload: dict[str, Any]) -> None:
            role = "service" if command in ("record_apheresis", "give_infusion") else "clinician"
            r = client.post(
                f"/v1/patients/{pid}/commands/{command}",
                json={"occurred_at": _at(at), "payload": payload},
                headers=s.auth(role),
            )
            assert r.status_code == 201, r.text

        def patient_with(
            pid: str, kind: str, grade: int, resolved_days_ago: int | None, serious: bool = False
        ) -> None:
            screening = eligible_screening(random.Random(5))
            screening["informed_consent_date"] = (d1 - dt.timedelta(days=13)).date().isoformat()
            post(pid, "screen", d1 - dt.timedelta(days=12), {"screening": screening})
            post(
                pid,
                "record_apheresis",
                d1 - dt.timedelta(days=10),
                {"apheresis_contraindication": False},
            )
            post(
                pid,
                "give_infusion",
                d1,
                {
                    "day": 1,
                    "cells": {"value": 7e6, "unit": "cells"},
                    "weight": {"value": 70, "unit": "kg"},
                },
            )
            toxicity: dict[str, Any] = {"kind": kind, "grade": grade}
            if kind == "other":
                toxicity.update(term="Febrile neutropenia", scale="CTCAE", scale_version="5.0")
            else:
                toxicity.update(scale="ASTCT", scale_version="2019")
            payload: dict[str, Any] = {"toxicity": toxicity}
            if serious:
                payload["adverse_event"] = {
                    "attribution": "probable",
                    "seriousness": ["hospitalisation"],
                    "expected": True,
                    "aware_at": _at(now - dt.timedelta(hours=2)),
                }
            post(pid, "report_toxicity", now - dt.timedelta(days=50), payload)
            if resolved_days_ago is not None:
                tox_id = f"{kind.upper() if kind != 'other' else 'OTHER'}-1"
                post(
                    pid,
                    "resolve_toxicity",
                    now - dt.timedelta(days=resolved_days_ago),
                    {"toxicity_id": tox_id},
                )

        patient_with("G4-OPEN", "CRS", 4, None, serious=True)
        patient_with("G3-RECENT", "ICANS", 3, AE_RECENT_DAYS - 1)
        patient_with("G3-OLD", "ICANS", 3, AE_RECENT_DAYS + 1)
        patient_with("G2-OPEN", "other", 2, None)

        def board(query: str) -> list[dict[str, Any]]:
            r = client.get(f"/v1/board{query}", headers=s.auth("monitor"))
            assert r.status_code == 200, r.text
            rows: list[dict[str, Any]] = r.json()
            return rows

        def ids(query: str) -> list[str]:
            return [row["patient_id"] for row in board(query)]

        assert ids("?min_ae_grade=3") == ["G3-RECENT", "G4-OPEN"]
        assert ids("?min_ae_grade=4") == ["G4-OPEN"]
        assert ids("?min_ae_grade=2") == ["G2-OPEN", "G3-RECENT", "G4-OPEN"]
        assert ids("?min_ae_grade=5") == []
        assert ids("?min_ae_grade=3&sae=true") == ["G4-OPEN"]
        for bad in ("0", "6", "three"):
            r = client.get(f"/v1/board?min_ae_grade={bad}", headers=s.auth("monitor"))
            assert r.status_code == 422, r.text
            assert "min_ae_grade" in r.text
        # both: the next action is a follow-up visit or an SAE report
        assert ids("?sae=true&follow_up_due=true") == ids("?sae=true") == ["G4-OPEN"]

        rows = {row["patient_id"]: row for row in board("")}
        assert rows["G4-OPEN"]["max_ae_grade"] == 4 and rows["G4-OPEN"]["max_open_grade"] == 4
        assert rows["G3-OLD"]["max_ae_grade"] == 3 and rows["G3-OLD"]["max_open_grade"] is None
        assert rows["G3-OLD"]["open_ae_grade"] is None and rows["G4-OPEN"]["open_ae_grade"] == 4
        sae = rows["G4-OPEN"]
        assert sae["next_kind"] == "sae_report"
        assert (sae["sae_case_id"], sae["sae_report"]) == ("CRS-1", "initial")
        assert sae["sae_due_at"] == _at(now + dt.timedelta(hours=22))
        assert rows["G2-OPEN"]["sae_due_at"] is None
        # the patient's summary carries the grades of every episode and its AE facts
        summary = client.get("/v1/patients/G4-OPEN", headers=s.auth("monitor")).json()
        (episode,) = summary["toxicities"]
        assert episode["worst_grade"] == 4
        assert episode["adverse_event"]["seriousness"] == ["hospitalisation"]

    def status(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [CLI, "--db", str(db), "status", "--json", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    found = status("--ae-grade", "3")
    assert [p["patient_id"] for p in found["patients"]] == ["G3-RECENT", "G4-OPEN"]
    assert found["matching"] == 2
    # judged as of --now: two days later the recently resolved grade 3 is no longer recent
    later = (now + dt.timedelta(days=2)).isoformat()
    assert [p["patient_id"] for p in status("--ae-grade", "3", "--now", later)["patients"]] == [
        "G4-OPEN"
    ]
    bad = subprocess.run(
        [CLI, "--db", str(db), "status", "--ae-grade", "6"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--ae-grade" in bad.stderr
