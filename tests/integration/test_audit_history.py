"""Replay, as-of views, conformance of a non-conforming legacy history, signatures, exports."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
import tracemalloc
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from cart_course.audit import as_of, check_history, patient_events, replay, streams
from cart_course.audit.exports import csv_timeline, jsonl
from cart_course.audit.fhir import PROGRESS_URL, SITE_HISTORY_URL, SITE_URL, bundle
from cart_course.audit.history import timeline
from cart_course.audit.report import html_report
from cart_course.contract import parse_command
from cart_course.course import MOVE_EVENTS, PatientCourse
from cart_course.demo import assessment, cohort, crs, eligible_screening
from cart_course.protocol.commands import context_facts, outcome_of, payload_facts, trigger_for
from cart_course.protocol.versions import CURRENT
from cart_course.service import CourseService

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
DEST = {
    "infuse_d1": "infused_d1",
    "infuse_d2": "infused_d2",
    "infuse_d3": "infused_d3",
    "continue_treatment": "continued",
}


def _load(service: CourseService, n: int = 30, seed: int = 5) -> None:
    commands = [parse_command(c) for c in cohort(n, seed=seed)]
    for i in range(0, len(commands), 500):
        service.execute_batch(commands[i : i + 500])


def test_replay_equals_the_application_record(service: CourseService) -> None:
    _load(service)
    for pid, events in streams(service.log):
        assert replay(pid, events).to_json() == service.record(pid).to_json()


def _legacy(service: CourseService, pid: str, steps: list[tuple[Any, ...]]) -> None:
    """Import a history as legacy data: events written directly, no guard consulted."""
    course = PatientCourse.register(pid, "legacy.import", "service")
    for n, (command, payload, day, reason, *override) in enumerate(steps, start=1):
        record = course.record
        trigger = trigger_for(command, payload)
        when = T0 + dt.timedelta(days=day)
        ctx = context_facts(record, trigger)
        norm, pfacts = payload_facts(record, command, payload, when.date(), ctx)
        facts = {**ctx, **pfacts, **(override[0] if override else {})}
        if reason:
            facts["reason"] = reason
        run = CURRENT.dry_run(record.state, trigger, facts)
        course.record_event(
            MOVE_EVENTS[trigger],
            command=command,
            trigger=trigger,
            from_state=record.state,
            to_state=run.dest or DEST[trigger],
            payload=norm,
            facts=facts,
            outcome=outcome_of(trigger, facts, CURRENT),
            protocol_version=CURRENT.id,
            actor="legacy.import",
            role="service",
            reason=reason,
            occurred_at=when.isoformat(),
            idempotency_key=f"legacy:{pid}:{n}",
            digest="legacy",
        )
    service.app.save(course)


def _cells(n: float) -> dict[str, Any]:
    return {"value": n, "unit": "cells"}


W = {"value": 70, "unit": "kg"}


def test_conformance_reports_every_violation_of_a_legacy_history(service: CourseService) -> None:
    rng = random.Random(1)
    start = [
        ("screen", {"screening": eligible_screening(rng)}, 0, None),
        ("record_apheresis", {"apheresis_contraindication": False}, 3, None),
    ]
    course = [
        ("give_infusion", {"day": 1, "cells": _cells(7e6), "weight": W}, 10, None),
        ("give_infusion", {"day": 2, "cells": _cells(2.1e7)}, 11, None),
        ("give_infusion", {"day": 3, "cells": _cells(4.2e7)}, 12, None),
        ("assess_response", {"assessment": assessment("PR")}, 40, None),
    ]
    _legacy(service, "L-D3-BEFORE-D2", [*start, course[0], course[2]])
    _legacy(
        service,
        "L-HOLD",
        [
            *start,
            course[0],
            ("report_toxicity", {"toxicity": crs(3)}, 10, None),
            (
                "give_infusion",
                {"day": 2, "cells": _cells(2.1e7)},
                11,
                None,
                {"open_toxicities": []},
            ),
        ],
    )
    again = ("continue_treatment", {}, 41, None)
    _legacy(service, "L-4TH-COURSE", [*start, *course, again, *course, again, *course, again])
    _legacy(
        service,
        "L-OVERDOSE",
        [*start, ("give_infusion", {"day": 1, "cells": _cells(2e7), "weight": W}, 10, None)],
    )
    _load(service, n=15)
    result = check_history_all(service)
    found = {(f.patient_id, f.version, f.check, r) for f in result for r in (f.rules or ("",))}
    assert ("L-D3-BEFORE-D2", 5, "refused", "permitted_sequence") in found
    assert ("L-HOLD", 6, "refused", "no_open_hold") in found
    assert ("L-HOLD", 6, "facts", "") in found  # the import recorded no open toxicity
    assert ("L-4TH-COURSE", 18, "refused", "another_course_permitted") in found
    assert ("L-OVERDOSE", 4, "refused", "dose_within_tolerance_or_deviation") in found
    assert {f.patient_id for f in result} == {
        "L-D3-BEFORE-D2",
        "L-HOLD",
        "L-4TH-COURSE",
        "L-OVERDOSE",
        "P-0011",  # the demo's death from CRS: its SAE report was sent late (issue 16)
    }
    assert [f.check for f in result if f.patient_id == "P-0011"] == ["late_report"]


def check_history_all(service: CourseService) -> list[Any]:
    findings: list[Any] = []
    for pid, events in streams(service.log):
        findings.extend(check_history(pid, events).findings)
    return findings


def test_regrade_under_ctcae_lists_each_toxicity(memory_service: CourseService) -> None:
    _load(memory_service, n=40)
    regrades = []
    for pid, events in streams(memory_service.log):
        regrades.extend(check_history(pid, events, regrade="CTCAE").regrades)
    assert regrades and any(r.kind == "CRS" and r.grade is not None for r in regrades)
    assert any(r.kind == "ICANS" and r.grade is None and "CTCAE" in r.note for r in regrades)


def _corrected_and_signed(service: CourseService) -> tuple[str, list[Any]]:
    _load(service, n=40)
    for pid, events in streams(service.log):
        if any(e.kind == "corrected" for e in events):
            return pid, events
    raise AssertionError("the demo cohort has a corrected patient")


def test_signature_of_a_corrected_fact_covers_the_superseded_version(
    memory_service: CourseService,
) -> None:
    pid, events = _corrected_and_signed(memory_service)
    correction = next(e for e in events if e.kind == "corrected")
    target = correction.get("corrects")
    # Sign the corrected infusion before ... no: sign now, then correct again.
    sign = {
        "command": "sign",
        "patient_id": pid,
        "occurred_at": "2026-03-01T10:00:00+00:00",
        "actor": {"id": "dr.sign", "role": "clinician", "name": "S. Igner, MD"},
        "idempotency_key": "s1",
        "payload": {
            "milestone": "infusion",
            "signs_version": target,
            "meaning": "approval",
            "printed_name": "S. Igner, MD",
        },
    }
    memory_service.execute(parse_command(sign))
    fix = {
        "command": "correct",
        "patient_id": pid,
        "occurred_at": "2026-03-02T10:00:00+00:00",
        "actor": {"id": "dr.sign", "role": "clinician"},
        "idempotency_key": "c2",
        "reason": "bag label re-read",
        "payload": {"corrects": target, "changes": {"product_lot": "LOT-X"}},
    }
    memory_service.execute(parse_command(fix))
    rows = list(timeline(pid, patient_events(memory_service.log, pid)))
    sig = next(r for r in rows if r["event"] == "MilestoneSigned")
    assert sig["printed_name"] == "S. Igner, MD" and sig["meaning"] == "approval"
    assert any("signed hash matches" in n for n in sig["notes"])
    assert any("covers" in n and "superseded" in n for n in sig["notes"])
    signed_row = next(r for r in rows if r["version"] == target)
    assert any("corrected later" in n for n in signed_row["notes"])


def test_as_of_views(memory_service: CourseService) -> None:
    pid, events = _corrected_and_signed(memory_service)
    correction = next(e for e in events if e.kind == "corrected")
    before = as_of(pid, events, version=correction.version - 1)["record"]
    after = as_of(pid, events, version=correction.version)["record"]
    d2 = lambda rec: rec["courses"][0]["fractions"][1]["delivered_cells"]  # noqa: E731
    assert d2(before) != d2(after)
    # What the system knew just before the correction was recorded: the old dose.
    knew = as_of(pid, events, recorded_at=events[correction.version - 2].recorded_time)
    assert d2(knew["record"]) == d2(before)
    # What had happened by the day of D2 (clinical time), as known now: D2 with the corrected dose,
    # and no D3 yet.
    d2_event = next(e for e in events if e.get("trigger") == "infuse_d2")
    view = as_of(pid, events, occurred_at=dt.datetime.fromisoformat(d2_event.occurred_at))
    assert view["record"]["state"] == "infused_d2"
    assert d2(view["record"]) == d2(after)


def test_fhir_bundle_validates_and_carries_progress_and_provenance(service: CourseService) -> None:
    _load(service, n=20)
    for pid, events in streams(service.log):
        data = bundle(pid, events)
        parsed = Bundle.model_validate(data)
        kinds = [e.resource.get_resource_type() for e in parsed.entry]
        assert kinds.count("Provenance") == len(events)
        subject = next(
            e["resource"]
            for e in data["entry"]
            if e["resource"]["resourceType"] == "ResearchSubject"
        )
        urls = [x["url"] for x in subject["extension"]]
        assert PROGRESS_URL in urls
        assert set(urls) <= {PROGRESS_URL, SITE_URL, SITE_HISTORY_URL}
        # issue 17: the subject's site (S00: a trial without sites), as a Location
        assert urls.count(SITE_URL) == 1
        assert kinds.count("Location") == 1
    signed = [json.loads(line) for line in jsonl(service.log) if '"MilestoneSigned"' in line]
    assert signed and all(s["fields"]["printed_name"] for s in signed)


def test_exports_stream_in_constant_memory(memory_service: CourseService) -> None:
    _load(memory_service, n=60)
    text = "".join(csv_timeline(memory_service.log))
    assert text.count("\n") == 1 + sum(len(ev) for _pid, ev in streams(memory_service.log))
    tracemalloc.start()
    for _ in jsonl(memory_service.log):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000  # one stream at a time, not the whole log


def test_html_report_is_self_contained(memory_service: CourseService) -> None:
    pid, events = _corrected_and_signed(memory_service)
    page = html_report(pid, events, findings=check_history(pid, events).findings, problems=[])
    assert "<svg" in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    for section in ("Timeline", "Signatures", "Deviations", "Conformance", "Path through"):
        assert section in page


@pytest.mark.parametrize("bad", ["2026-13-01T00:00:00Z"])
def test_bad_time_is_refused_clearly(bad: str) -> None:
    from cart_course.contract import parse_time
    from cart_course.errors import InvalidCommandError

    with pytest.raises(InvalidCommandError, match="--occurred-at"):
        parse_time(bad, "--occurred-at")


def test_the_csv_timeline_cannot_smuggle_a_spreadsheet_formula(
    memory_service: CourseService,
) -> None:
    """A reason typed as a formula is exported as text (a leading ' for spreadsheets), the
    history itself keeps it as typed; numbers stay numbers."""
    formula = '=HYPERLINK("http://evil.example","click")'
    at = "2026-01-05T09:00:00+00:00"
    screen = {
        "command": "screen",
        "patient_id": "CSV-1",
        "occurred_at": at,
        "actor": {"id": "dr.a", "role": "clinician"},
        "payload": {"screening": eligible_screening(random.Random(1))},
    }
    memory_service.execute(parse_command(screen))
    withdraw = {**screen, "command": "withdraw", "reason": formula, "payload": {}}
    withdraw["occurred_at"] = "2026-01-06T09:00:00+00:00"
    memory_service.execute(parse_command(withdraw))
    rows = list(csv.reader(io.StringIO("".join(csv_timeline(memory_service.log, "CSV-1")))))
    cells = [cell for row in rows for cell in row]
    assert "'" + formula in cells
    assert formula not in cells
    assert not any(c.startswith(("=", "+", "@")) for c in cells)
    events = patient_events(memory_service.log, "CSV-1")
    assert [e for e in timeline("CSV-1", events) if e.get("reason")][-1]["reason"] == formula
