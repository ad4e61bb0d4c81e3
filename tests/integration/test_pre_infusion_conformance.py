"""Issue 20: a store recorded under protocol 1.0 (pre-infusion observations optional), re-checked
under the amendment 1.1 (required before D2 and D3), lists exactly the fractions the amendment
would have refused; under each event's own version it conforms as before."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cart_course.audit import patient_events
from cart_course.audit.conformance import Conformance, check_history
from cart_course.contract import parse_command
from cart_course.demo import cohort
from cart_course.protocol.versions import V1_1
from cart_course.service import CourseService


def record(service: CourseService, commands: list[dict[str, Any]]) -> None:
    results = service.execute_batch([parse_command(c) for c in commands])
    errors = [r for r in results if not hasattr(r, "status")]
    assert not errors, errors


def conformance(service: CourseService, protocol: Any = None) -> Conformance:
    result = Conformance()
    for pid in service.patient_ids():
        check_history(pid, patient_events(service.log, pid), protocol=protocol, result=result)
    return result


def test_a_store_recorded_under_1_0_rechecked_under_the_amendment_lists_the_fractions_it_refuses(
    memory_service: CourseService,
) -> None:
    commands = list(cohort(20, 5, start=dt.datetime(2025, 3, 3, 8, tzinfo=dt.UTC)))
    record(memory_service, commands)
    # the fractions the amendment requires observations for, and those that carried none
    expected = set()
    for c in commands:
        payload = c["payload"]
        if (
            c["command"] == "give_infusion"
            and payload["day"] in (2, 3)
            and "pre_infusion" not in payload
            and "deviation_reason" not in payload
        ):
            expected.add((c["patient_id"], f"infuse_d{payload['day']}"))
    assert expected, "the cohort gives D2 and D3 without observations"

    own = conformance(memory_service)
    assert not [f for f in own.findings if "pre_infusion_criteria_met" in f.rules]

    amended = conformance(memory_service, V1_1)
    gate = [f for f in amended.findings if "pre_infusion_criteria_met" in f.rules]
    assert {(f.patient_id, f.move) for f in gate} == expected
    for f in gate:  # the move itself, and a correction of it re-judged with its new facts
        assert f.check in ("refused", "correction") and f.protocol_version == "1.1"
        assert "requires the pre-infusion observations before D" in f.message
    assert {f.check for f in gate} >= {"refused"}
    # the patient whose D2 and D3 carried observations (the held D2 of the demo) conforms
    held = [c["patient_id"] for c in commands if c["command"] == "assess_pre_infusion"]
    assert held and not [f for f in gate if f.patient_id in held]
    # every event keeps its version: the store itself is unchanged by the re-check
    versions = {
        e.get("protocol_version")
        for pid in memory_service.patient_ids()
        for e in patient_events(memory_service.log, pid)
        if e.get("protocol_version")
    }
    assert versions == {"1.0"}


def test_a_childs_icans_by_capd_is_recorded_regraded_and_conforms(
    memory_service: CourseService,
) -> None:
    """Issue 20: the demo's child (ICANS scored with the CAPD) is recorded with its grade from
    the CAPD, conforms, and re-grades to the same grades from the stored observations."""
    commands = list(cohort(20, 5, start=dt.datetime(2025, 3, 3, 8, tzinfo=dt.UTC)))
    record(memory_service, commands)
    child = {
        c["patient_id"]
        for c in commands
        if c["command"] == "report_toxicity"
        and "capd_score" in c["payload"]["toxicity"].get("observations", {})
    }
    assert len(child) == 1
    (pid,) = child
    episode = memory_service.record(pid).toxicities["ICANS-1"]
    assert (episode.worst_grade, episode.grade, episode.open) == (3, 2, False)
    reports = [e for e in patient_events(memory_service.log, pid) if e.type.endswith("Reported")]
    assert "CAPD 11/32 (>= 9)" in reports[0].get("outcome")["reasons"][0]
    result = check_history(pid, patient_events(memory_service.log, pid), regrade="ASTCT")
    assert result.ok, [str(f) for f in result.findings]
    assert [(r.recorded_grade, r.grade) for r in result.regrades] == [(3, 3), (2, 2)]
    ctcae = check_history(pid, patient_events(memory_service.log, pid), regrade="CTCAE")
    assert all(r.grade is None and "no ICANS term" in r.note for r in ctcae.regrades)


def test_after_the_amendment_new_fractions_need_observations_and_old_ones_keep_their_version(
    memory_service: CourseService,
) -> None:
    """A service under 1.1 on a store recorded under 1.0: D2 without observations is refused
    (naming the rule), with them it is recorded under 1.1; the D1 recorded before keeps 1.0, and
    each event conforms under its own version."""
    import random

    from cart_course.demo import _Patient, pre_infusion
    from cart_course.errors import CartCourseError
    from cart_course.service import CourseService as Service

    p = _Patient("A-1", dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC), random.Random(3))
    p.screen()
    p.apheresis()
    p.infusion(1, days=14)
    record(memory_service, p.commands)
    amended = Service(memory_service.app, protocol=V1_1)
    before = memory_service.record("A-1").version
    p.infusion(2)
    try:
        amended.execute(parse_command(p.commands[-1]))
    except CartCourseError as exc:
        body = exc.to_json()
        assert body["error"] == "move_refused"
        assert [r["rule"] for r in body["failed_rules"]] == ["pre_infusion_criteria_met"]
    else:  # pragma: no cover - the amendment must refuse it
        raise AssertionError("D2 without observations was recorded under 1.1")
    assert memory_service.record("A-1").version == before  # nothing recorded
    p.commands[-1]["payload"]["pre_infusion"] = pre_infusion(37.0)
    assert amended.execute(parse_command(p.commands[-1])).status == "recorded"
    versions = [
        (e.get("trigger"), e.get("protocol_version"))
        for e in patient_events(memory_service.log, "A-1")
        if e.get("trigger")
    ]
    assert versions[-2:] == [("infuse_d1", "1.0"), ("infuse_d2", "1.1")]
    assert check_history("A-1", patient_events(memory_service.log, "A-1")).ok


def test_a_fever_on_record_is_carried_by_the_fraction_and_judged_again_by_the_audit(
    memory_service: CourseService,
) -> None:
    """A morning fever (38.9 C) and an afternoon "highest in the last 48 h: 37.0 C": the service
    refuses D2 that afternoon, records it given with a reason as a deviation carrying the fever
    on record (``pre_infusion_window``), and the audit's re-check judges the stored facts the
    same way (conforms with the reason; refused once the reason is taken away)."""
    import random

    from cart_course.demo import CLINICIAN, eligible_screening, pre_infusion

    day0 = dt.datetime(2026, 2, 2, 9, tzinfo=dt.UTC)
    n = iter(range(100))

    def cmd(command: str, payload: dict[str, Any], at: dt.datetime) -> dict[str, Any]:
        return {
            "command": command,
            "patient_id": "P-FEVER",
            "occurred_at": at.isoformat(),
            "actor": CLINICIAN,
            "reason": None,
            "idempotency_key": f"fever-{next(n)}",
            "payload": payload,
        }

    d1_at = day0 + dt.timedelta(days=16)
    morning = d1_at + dt.timedelta(hours=23)
    afternoon = morning + dt.timedelta(hours=6)
    d2 = {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}, "pre_infusion": pre_infusion(37.0)}
    record(
        memory_service,
        [
            cmd("screen", {"screening": eligible_screening(random.Random(3))}, day0),
            cmd("record_apheresis", {"apheresis_contraindication": False}, day0 + dt.timedelta(2)),
            cmd(
                "give_infusion",
                {
                    "day": 1,
                    "cells": {"value": 7e6, "unit": "cells"},
                    "weight": {"value": 70, "unit": "kg"},
                },
                d1_at,
            ),
            cmd("assess_pre_infusion", {"day": 2, "pre_infusion": pre_infusion(38.9)}, morning),
            cmd("assess_pre_infusion", {"day": 2, "pre_infusion": pre_infusion(37.0)}, afternoon),
        ],
    )
    refused = memory_service.execute_batch([parse_command(cmd("give_infusion", d2, afternoon))])
    assert type(refused[0]).__name__ == "MoveRefused", refused
    assert "a lower maximum given since does not erase it" in str(refused[0])
    record(
        memory_service,
        [
            cmd(
                "give_infusion",
                {**d2, "deviation_reason": "investigator: fever from a treated line infection"},
                afternoon,
            )
        ],
    )
    events = patient_events(memory_service.log, "P-FEVER")
    given = [e for e in events if e.get("trigger") == "infuse_d2"]
    assert len(given) == 1
    window = given[0].get("facts")["pre_infusion_window"]
    assert window["judged_at"] == afternoon.isoformat()
    assert [t["value"] for t in window["temperatures"]] == [38.9]
    assert given[0].get("outcome")["pre_infusion_gate"]["failed_criteria"] == [
        "temperature_on_record"
    ]
    own = Conformance()
    check_history("P-FEVER", events, result=own)
    assert not [f for f in own.findings if "pre_infusion_criteria_met" in f.rules]
    # the same stored facts without the reason: the re-check refuses the fraction
    for e in given:
        e.data = {
            **e.data,
            "facts": {k: v for k, v in e.data["facts"].items() if k != "deviation_reason"},
        }
    again = Conformance()
    check_history("P-FEVER", events, result=again)
    gate = [f for f in again.findings if "pre_infusion_criteria_met" in f.rules]
    assert gate and "on record within the 48 h" in gate[0].message
