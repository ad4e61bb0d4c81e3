"""After the course through the service (issue 16): the docs' story with follow-up visits, an SAE
reported late and a death attributed to CRS; what the audit (conformance, FHIR, exports) and the
views (due dates across UTC offsets, overdue) make of them."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from cart_course.audit import check_history, patient_events
from cart_course.audit.exports import csv_timeline, jsonl
from cart_course.audit.fhir import bundle
from cart_course.contract import parse_command
from cart_course.demo import CLINICIAN, SERVICE, assessment, eligible_screening
from cart_course.service import CourseService
from cart_course.views import Views, queries
from cart_course.views.metrics import metrics_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def _cmd(pid: str, command: str, at: str, payload: dict[str, Any], **extra: Any) -> Any:
    return parse_command(
        {
            "command": command,
            "patient_id": pid,
            "occurred_at": at,
            "actor": CLINICIAN if command in ("screen", "cease") else SERVICE,
            "payload": payload,
            **extra,
        }
    )


def _ok(service: CourseService, command: Any) -> Any:
    (result,) = service.execute_batch([command])
    assert hasattr(result, "status"), result
    return result


def _story(service: CourseService) -> None:
    (block,) = re.findall(r"```jsonl\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    for line in block.splitlines():
        if line.strip():
            command = parse_command(json.loads(line))
            if command.command == "transfer_site":  # the story's last line names site S02
                service.sites.store().add("S02", "Lyon Sud", "Europe/Paris", created_by="admin")
            _ok(service, command)


def test_the_audit_lists_a_visit_outside_its_window_and_a_late_report(
    service: CourseService,
) -> None:
    _story(service)
    # P-101: M3 (day 91 +/- 14 after D1 on 2026-01-22) a day after its window
    _ok(
        service,
        _cmd(
            "P-101",
            "record_follow_up",
            "2026-05-08T10:00:00+02:00",
            {"visit": "M3", "disease_status": {"status": "relapse", "cd19": "negative"}},
        ),
    )
    # P-102: CRS-1's initial report was sent in time (the story); the patient dies of it: the
    # episode is grade 5 and closed; the follow-up report of the death is sent 2 hours late
    _ok(
        service,
        _cmd(
            "P-102",
            "record_death",
            "2026-02-18T03:00:00+01:00",
            {
                "cause": "cytokine release syndrome",
                "cause_of_death": {"category": "adverse_event", "toxicity_id": "CRS-1"},
                "aware_at": "2026-02-18T08:00:00+01:00",
            },
        ),
    )
    summary = service.summary("P-102")
    (crs,) = summary["toxicities"]
    assert (crs["grade"], crs["worst_grade"], crs["open"], crs["fatal"]) == (5, 5, False, True)
    (case,) = summary["sae_cases"]
    assert [(c["report"], c["due_at"]) for c in case["clocks"]] == [
        ("initial", "2026-02-16T09:00:00+01:00"),
        ("follow_up", "2026-03-05T08:00:00+01:00"),
    ]
    _ok(
        service,
        _cmd(
            "P-102",
            "record_sae_report",
            "2026-03-05T10:00:00+01:00",
            {"case_id": "CRS-1", "report": "follow_up", "sent_to": "sponsor"},
        ),
    )
    findings = {
        pid: [
            (f.check, f.message)
            for f in check_history(pid, patient_events(service.log, pid)).findings
        ]
        for pid in ("P-101", "P-102")
    }
    assert findings["P-101"] == [
        (
            "window",
            "visit M3 on 2026-05-08 is 1 day(s) outside its window 2026-04-09 to 2026-05-07",
        )
    ]
    assert findings["P-102"] == [
        (
            "late_report",
            "follow_up report of case CRS-1 sent at 2026-03-05T10:00:00+01:00, due "
            "2026-03-05T08:00:00+01:00: 2.0 h late",
        )
    ]
    resources: dict[str, list[dict[str, Any]]] = {}
    for pid in ("P-101", "P-102"):
        document = bundle(pid, patient_events(service.log, pid))
        Bundle.model_validate(document)
        resources[pid] = [entry["resource"] for entry in document["entry"]]
        assert pid in "".join(csv_timeline(service.log, pid))
    (adverse_event,) = [r for r in resources["P-102"] if r["resourceType"] == "AdverseEvent"]
    assert [c["code"] for c in adverse_event["seriousness"]["coding"]] == [
        "serious",
        "death",
        "hospitalisation",
    ]
    assert adverse_event["outcome"]["coding"][0]["code"] == "fatal"
    assert adverse_event["event"]["text"] == "cytokine release syndrome grade 5"
    encounters = [r for r in resources["P-101"] if r["resourceType"] == "Encounter"]
    assert [r["type"][0]["text"] for r in encounters] == ["D28", "M3"]
    observations = [r for r in resources["P-101"] if r["resourceType"] == "Observation"]
    assert observations[-1]["valueCodeableConcept"]["text"] == "relapse (CD19-negative)"
    triggers = {json.loads(line)["fields"].get("trigger") for line in jsonl(service.log)}
    assert {"record_follow_up", "record_missed_visit", "record_sae_report"} <= triggers


def _ceased(service: CourseService, pid: str, d1_at: str) -> None:
    offset = d1_at[19:]
    day = dt.datetime.fromisoformat(d1_at)

    def at(days: int, hour: int = 10) -> str:
        when = (day + dt.timedelta(days=days)).date()
        return f"{when.isoformat()}T{hour:02d}:00:00{offset}"

    _ok(service, _cmd(pid, "screen", at(-20), {"screening": eligible_screening(random.Random(5))}))
    _ok(service, _cmd(pid, "record_apheresis", at(-14), {"apheresis_contraindication": False}))
    _ok(
        service,
        _cmd(
            pid,
            "give_infusion",
            d1_at,
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
        ),
    )
    _ok(
        service,
        _cmd(
            pid, "cancel_remaining_fractions", at(1), {}, reason="declined the remaining fractions"
        ),
    )
    _ok(service, _cmd(pid, "assess_response", at(2), {"assessment": assessment("NR")}))
    _ok(service, _cmd(pid, "cease", at(3), {}))


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


@pytest.mark.parametrize("d1_at", ["2026-01-22T20:00:00-05:00", "2026-01-22T07:00:00+09:00"])
def test_a_follow_up_visit_is_overdue_after_its_window_ends_in_d1s_offset(
    service: CourseService, views: Views, d1_at: str
) -> None:
    offset = d1_at[19:]
    _ceased(service, "FU-1", d1_at)
    views.catch_up()
    row = queries.patient(views.db, "FU-1", now=_utc(f"2026-02-26T23:59:00{offset}"))
    assert row is not None
    assert row["next_action"] == "record_follow_up (D28, window 2026-02-12 to 2026-02-26)"
    assert (row["due_on"], row["overdue"]) == ("2026-02-26", False)
    late = queries.patient(views.db, "FU-1", now=_utc(f"2026-02-27T00:00:00{offset}"))
    assert late is not None and (late["overdue"], late["days_overdue"]) == (True, 1)
    first_late = _utc(f"2026-02-27T00:00:00{offset}")
    due = queries.board(views.db, overdue=True, now=first_late, action="record_follow_up")
    assert [r["patient_id"] for r in due] == ["FU-1"]
    assert queries.count(views.db, overdue=True, now=first_late, action="record_sae_report") == 0
    text = metrics_text(views, first_late)
    assert "cart_course_overdue_follow_up_visits 1" in text
    assert "cart_course_overdue_sae_reports 0" in text
    # the protocol agrees: the visit on the last day of the window is in it, the next day not
    on_time = _ok(
        service,
        _cmd(
            "FU-1",
            "record_follow_up",
            f"2026-02-26T23:59:00{offset}",
            {"visit": "D28", "disease_status": {"status": "remission"}},
        ),
    )
    assert on_time.outcome["in_window"] is True
    views.catch_up()
    row = queries.patient(views.db, "FU-1", now=_utc(f"2026-02-27T00:00:00{offset}"))
    assert row is not None and row["next_action"].startswith("record_follow_up (M2")
    assert row["overdue"] is False


@pytest.mark.parametrize("offset", ["-05:00", "+09:00"])
def test_an_sae_report_is_overdue_from_its_due_instant_in_every_offset(
    service: CourseService, views: Views, offset: str
) -> None:
    _ceased(service, "SAE-2", f"2026-01-22T10:00:00{offset}")
    aware = f"2026-01-24T18:30:00{offset}"
    _ok(
        service,
        _cmd(
            "SAE-2",
            "report_toxicity",
            f"2026-01-24T18:00:00{offset}",
            {
                "toxicity": {
                    "kind": "other",
                    "term": "sepsis",
                    "grade": 4,
                    "scale": "CTCAE",
                    "scale_version": "5.0",
                },
                "adverse_event": {
                    "attribution": "possible",
                    "seriousness": ["life_threatening"],
                    "expected": False,
                    "aware_at": aware,
                },
            },
        ),
    )
    views.catch_up()
    due = _utc(aware) + dt.timedelta(hours=24)
    row = queries.patient(views.db, "SAE-2", now=due)
    assert row is not None
    assert (
        row["next_action"]
        == f"record_sae_report (other-1 initial, due 2026-01-25T18:30:00{offset})"
    )
    assert row["overdue"] is False
    late = queries.patient(views.db, "SAE-2", now=due + dt.timedelta(seconds=1))
    assert late is not None and late["overdue"] is True
    assert queries.count(views.db, overdue=True, now=due + dt.timedelta(seconds=1)) == 1
    after = due + dt.timedelta(seconds=1)
    assert queries.count(views.db, overdue=True, now=after, action="record_sae_report") == 1
    assert "cart_course_overdue_sae_reports 1" in metrics_text(views, after)
    assert "cart_course_overdue_sae_reports 0" in metrics_text(views, due)
    # sent: the expedited SUSAR report (7 days, life-threatening) is next
    _ok(
        service,
        _cmd(
            "SAE-2",
            "record_sae_report",
            f"2026-01-25T12:00:00{offset}",
            {"case_id": "other-1", "report": "initial", "sent_to": "sponsor"},
        ),
    )
    views.catch_up()
    row = queries.patient(views.db, "SAE-2", now=due)
    assert row is not None
    assert (
        row["next_action"]
        == f"record_sae_report (other-1 expedited, due 2026-01-31T18:30:00{offset})"
    )
