"""The application service on every store (memory, SQLite, PostgreSQL): full patient paths,
queries, machine-readable rejections, and every command of the contract."""

from __future__ import annotations

import datetime as dt
import itertools
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import T0, Course, assessment, crs, envelope, icans, screening

from cart_course.contract import ALL_COMMANDS, parse_command
from cart_course.course import PatientCourse, stream_id
from cart_course.demo import cohort, ensure_demo_sites, query_steps
from cart_course.errors import (
    CartCourseError,
    InvalidCommandError,
    MoveRefused,
    PatientNotFoundError,
)
from cart_course.service import CourseService
from cart_course.storage import open_application, parse_store_url


def test_a_complete_response_path_and_what_the_summary_says(service: CourseService) -> None:
    p = Course(service, "P-100")
    first = p.screen()
    assert (first.status, first.version, first.event) == ("recorded", 2, "Screened")
    assert (first.from_state, first.to_state) == ("candidate", "screened")
    assert first.outcome["eligible"] is True
    assert first.allowed_moves[0] == "record_apheresis"
    assert {"withdraw", "record_death"} <= set(first.allowed_moves)
    assert not {"infuse_d1", "assess_response"} & set(first.allowed_moves)
    p.apheresis()
    d1 = p.infuse(1, days=14)
    assert d1.outcome["planned_total_cells"] == pytest.approx(70e6)
    assert d1.outcome["planned_cells"] == pytest.approx(7e6)
    p.infuse(2, factor=0.9)  # 10 % under the plan: recorded with what was delivered
    p.infuse(3)
    assessed = p.assess("CR")
    assert assessed.outcome["response"] == "CR"
    assert "cease" in assessed.allowed_moves

    summary = service.summary("P-100")
    assert summary["state"] == "assessed"
    assert summary["course_number"] == 1
    course = summary["current_course"]
    assert course["planned_total_cells"] == pytest.approx(70e6)
    assert course["delivered_cells"] == pytest.approx(70e6 * (0.1 + 0.27 + 0.6))
    assert [f["day"] for f in course["fractions"]] == [1, 2, 3]
    assert course["fractions"][1]["delivered_cells"] == pytest.approx(0.9 * 21e6)
    assert course["response"] == "CR"
    assert summary["open_toxicities"] == []
    assert set(summary["allowed_moves"]) >= {"cease", "report_toxicity"}

    ceased = p.do("cease", reason="CR after the first course; patient declines more", days=1)
    assert ceased.to_state == "ceased"
    # follow-up: toxicities, visits (issue 16), and a death or a withdrawal of consent
    assert service.summary("P-100")["allowed_moves"] == [
        "report_toxicity",
        "withdraw",
        "record_death",
        "record_follow_up",
        "record_missed_visit",
        "transfer_site",
    ]
    assert service.summary("P-100")["ended"]["state"] == "ceased"


def test_history_keeps_every_fact_clinical_time_and_record_time(service: CourseService) -> None:
    p = Course(service, "P-101")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    events = service.events("P-101")
    assert [type(e).__name__ for e in events] == [
        "Registered",
        "Screened",
        "ApheresisRecorded",
        "InfusionGiven",
    ]
    assert [e.originator_version for e in events] == [1, 2, 3, 4]
    assert {e.originator_id for e in events} == {stream_id("P-101")}
    infusion = events[-1]
    assert isinstance(infusion, PatientCourse.InfusionGiven)
    assert (infusion.trigger, infusion.from_state, infusion.to_state) == (
        "infuse_d1",
        "apheresed",
        "infused_d1",
    )
    assert infusion.protocol_version == "1.0"
    assert (infusion.actor, infusion.role) == ("dr.lee", "clinician")
    assert infusion.idempotency_key == "P-101:3:give_infusion"
    # Every fact the guard read is on the event (open toxicities, previous date, weight ...).
    assert infusion.facts["open_toxicities"] == []
    assert infusion.facts["previous_date"] == "2026-01-08"
    assert infusion.facts["weight_kg"] == 70.0
    # Clinical time is what the caller said; record time is the store's clock (now, not 2026-01).
    assert infusion.occurred_at == p.t.isoformat()
    assert infusion.timestamp > events[-2].timestamp
    assert infusion.timestamp.date() != p.t.date()
    # The events chain: each names the hash of the one before.
    from cart_course.course import event_hash

    for before, after in itertools.pairwise(events):
        assert after.prev_hash == event_hash(before)


def test_toxicity_hold_blocks_the_next_fraction_until_resolved(service: CourseService) -> None:
    p = Course(service, "P-102")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    reported = p.do("report_toxicity", {"toxicity": crs(1)}, hours=4)
    assert reported.outcome["toxicity_id"] == "CRS-1"
    assert reported.outcome["grade"] == 1
    assert reported.to_state == "infused_d1"  # a report does not move the state
    summary = service.summary("P-102")
    assert [t["id"] for t in summary["open_toxicities"]] == ["CRS-1"]
    assert "infuse_d2" not in summary["allowed_moves"]

    with pytest.raises(MoveRefused) as info:
        p.infuse(2)
    body = info.value.to_json()
    assert body["error"] == "move_refused"
    assert body["state"] == "infused_d1"
    assert body["move"] == "infuse_d2"
    assert body["failed_rules"], "the refusal names the failed rules"
    assert all(r["rule"] and r["message"] for r in body["failed_rules"])
    assert any("CRS-1" in r["message"] or "toxicit" in r["message"] for r in body["failed_rules"])
    assert "resolve_toxicity" in body["allowed_moves"]
    assert "infuse_d2" not in body["allowed_moves"]
    assert len(service.events("P-102")) == 5  # nothing recorded by the refusal

    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, hours=8)
    assert service.summary("P-102")["open_toxicities"] == []
    assert p.infuse(2, days=0, hours=1).to_state == "infused_d2"


def test_severe_crs_cancels_remaining_fractions_and_discontinues(service: CourseService) -> None:
    p = Course(service, "P-103")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    p.infuse(2)
    severe = p.do("report_toxicity", {"toxicity": crs(3)}, hours=10)
    assert severe.outcome["severe"] is True
    with pytest.raises(InvalidCommandError) as no_reason:  # always needs one: the contract's
        p.do("cancel_remaining_fractions")
    assert no_reason.value.field == "reason"
    assert "cancel_remaining_fractions requires a reason" in no_reason.value.message
    cancelled = p.do("cancel_remaining_fractions", reason="CRS grade 3 after D2")
    assert cancelled.event == "FractionsCancelled"
    assert service.summary("P-103")["current_course"]["cancelled"] is True
    assert p.do("discontinue", reason="severe CRS (grade 3)").to_state == "discontinued"
    # Toxicity follow-up goes on after the end of treatment.
    assert p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, days=3).event == "ToxicityResolved"
    assert service.summary("P-103")["open_toxicities"] == []


def test_partial_response_continues_to_another_course(service: CourseService) -> None:
    p = Course(service, "P-104")
    p.screen()
    p.apheresis()
    p.full_course()
    p.assess("PR")
    assert p.do("continue_treatment", days=1).to_state == "continued"
    p.full_course(first_gap=7)
    summary = service.summary("P-104")
    assert summary["course_number"] == 2
    assert [c["number"] for c in summary["courses"]] == [1, 2]
    assert summary["state"] == "infused_d3"
    p.assess("NR")
    ceased = p.do("cease", days=1)
    assert ceased.to_state == "ceased"


def test_screen_failure_rescreen_icans_withdraw_and_death(service: CourseService) -> None:
    failed = Course(service, "P-105")
    result = failed.screen(kps=60)
    assert result.to_state == "screen_failed"
    assert result.outcome["eligible"] is False
    assert result.outcome["failed_criteria"]
    again = failed.do("rescreen", {"screening": screening()})
    assert (again.from_state, again.to_state) == ("screen_failed", "screened")

    w = Course(service, "P-106")
    w.screen()
    w.apheresis()
    with pytest.raises(InvalidCommandError) as info:
        w.do("withdraw")
    body = info.value.to_json()
    assert body["error"] == "invalid_command"
    assert body["field"] == "reason"
    assert "withdraw requires a reason" in body["message"]
    assert "withdraw" in service.allowed_moves("P-106")  # allowed, with a reason
    assert w.do("withdraw", reason="consent withdrawn").to_state == "withdrawn"

    d = Course(service, "P-107")
    d.screen()
    d.apheresis()
    d.full_course()
    neuro = d.do("report_toxicity", {"toxicity": icans(3)}, hours=20)
    assert neuro.outcome["kind"] == "ICANS"
    assert neuro.outcome["grade"] == 3
    died = d.do("record_death", {"cause": "neurotoxicity"}, days=2)
    assert died.to_state == "died"
    assert service.summary("P-107")["allowed_moves"] == []


def test_every_command_of_the_contract_records(service: CourseService) -> None:
    """Hand-written courses that use each command of the contract at least once, each
    recording exactly one event."""
    seen: Counter[str] = Counter()

    def run(
        p: Course, command: str, payload: dict[str, object] | None = None, **kw: object
    ) -> None:
        before = len(list(service.events(p.pid)))
        result = p.do(command, payload, **kw)
        seen[result.command] += 1
        # Each command records exactly one event, and the result names its version.
        assert len(list(service.events(p.pid))) == before + 1 == result.version, command

    a = Course(service, "E-1")
    seen[a.screen(kps=60).command] += 1
    run(a, "rescreen", {"screening": screening()}, days=21)
    run(a, "record_apheresis", {"apheresis_contraindication": False}, days=3)
    for day in (1, 2):
        seen[a.infuse(day, days=14 if day == 1 else 1).command] += 1
    run(a, "report_toxicity", {"toxicity": crs(3)}, hours=6)
    run(a, "cancel_remaining_fractions", reason="CRS grade 3")
    run(a, "assess_response", {"assessment": assessment("PR")}, days=20)
    run(a, "continue_treatment", days=1)
    run(a, "resolve_toxicity", {"toxicity_id": "CRS-1"}, hours=2)
    first_d1 = next(
        e.originator_version
        for e in service.events("E-1")
        if getattr(e, "trigger", "") == "infuse_d1"
    )
    run(
        a,
        "correct",
        {"corrects": first_d1, "changes": {"cells": {"value": 6.9e6, "unit": "cells"}}},
        reason="D1 count re-read from the bag label",
    )
    assessed = next(
        e.originator_version
        for e in service.events("E-1")
        if getattr(e, "trigger", "") == "assess_response"
    )
    run(
        a,
        "sign",
        {
            "milestone": "response_assessment",
            "signs_version": assessed,
            "meaning": "approval",
            "printed_name": "Dr. K. Lee",
        },
    )
    a.full_course(first_gap=7)
    seen["give_infusion"] += 3
    a.assess("CR")
    seen["assess_response"] += 1
    run(a, "cease", reason="CR after the second course", days=1)
    b = Course(service, "E-2")
    b.screen()
    b.apheresis()
    b.infuse(1, days=14)
    b.do("report_toxicity", {"toxicity": crs(4)}, hours=6)
    run(b, "discontinue", reason="CRS grade 4 after D1")
    # after the course (issue 16): the episode as a serious adverse event, its report, visits
    serious = {
        "toxicity": crs(4),
        "toxicity_id": "CRS-1",
        "adverse_event": {
            "attribution": "probable",
            "seriousness": ["life_threatening"],
            "expected": True,
            "aware_at": (b.t + dt.timedelta(hours=1)).isoformat(),
        },
    }
    run(b, "report_toxicity", serious, hours=1)
    run(b, "record_sae_report", {"case_id": "CRS-1", "report": "initial", "sent_to": "sponsor"})
    run(b, "record_follow_up", {"visit": "D28", "disease_status": {"status": "remission"}}, days=27)
    run(b, "record_missed_visit", {"visit": "M2", "missed_reason": "moved abroad"}, days=33)
    c = Course(service, "E-3")
    c.screen()
    run(c, "withdraw", reason="consent withdrawn")
    d = Course(service, "E-4")
    d.screen()
    run(d, "record_death", {"cause": "disease progression"})
    e = Course(service, "E-5")  # a tracked product: a failed lot, a new apheresis (issue 15)
    e.screen()
    run(e, "record_apheresis", {"apheresis_contraindication": False, "collection_id": "C-5"})
    run(e, "start_manufacture", {"lot_id": "LOT-E5"})
    failed = [{"name": "viability", "result": "40 %", "passed": False}]
    rejected = {"decision": "rejected", "tests": failed, "released_by": "qp"}
    run(e, "release_product", {"lot_id": "LOT-E5", **rejected, "manufactured_on": "2026-01-05"})
    run(
        e,
        "repeat_apheresis",
        {"apheresis_contraindication": False, "collection_id": "C-5-2"},
        reason="LOT-E5 failed release",
    )
    # the pre-infusion gate (issue 20): a bedside assessment before the next fraction
    f = Course(service, "E-6")
    f.screen()
    f.apheresis()
    observations = {
        "highest_temperature": {"value": 37.0, "unit": "C"},
        "spo2_room_air_pct": 97,
        "vasopressors": False,
        "uncontrolled_active_infection": False,
    }
    run(f, "assess_pre_infusion", {"day": 1, "pre_infusion": observations}, days=14)
    # a multi-site trial (issue 17): screened without a site (S00), then transferred
    assert service.site_of("E-5") == "S00"
    service.sites.store().add("S02", "Lyon", "Europe/Paris", created_by="admin")
    run(e, "transfer_site", {"site": "S02"}, reason="closer to home")
    assert service.site_of("E-5") == "S02"
    # data queries (issue 17): a monitor asks about the screening, the site answers, the monitor
    # closes and re-opens
    monitor = {"id": "cra.kim", "role": "monitor"}
    run(d, "open_query", {"text": "KPS source?", "on_version": 2}, actor=monitor)
    run(d, "answer_query", {"query_id": "Q-4", "text": "KPS 90 in the chart"})
    run(d, "close_query", {"query_id": "Q-4"}, actor=monitor)
    run(d, "reopen_query", {"query_id": "Q-4", "text": "file the chart page"}, actor=monitor)
    assert set(ALL_COMMANDS) <= set(seen), set(ALL_COMMANDS) - set(seen)
    assert service.summary("E-1")["state"] == "ceased"
    assert len(service.summary("E-1")["corrections"]) == 1
    assert len(service.summary("E-1")["signatures"]) == 1


def test_the_demo_cohort_records_every_command_without_rejection(service: CourseService) -> None:
    ensure_demo_sites(service.sites.store())  # three sites, in three time zones (issue 17)
    raw = list(cohort(60, seed=3, sites=True))
    steps = query_steps(raw)  # the data queries ``cart-course demo`` adds (issue 17)
    commands = [parse_command(c) for c in sorted(raw + steps, key=lambda c: c["occurred_at"])]
    results = service.execute_batch(commands)
    rejected = [
        (c.patient_id, c.command, r)
        for c, r in zip(commands, results, strict=True)
        if isinstance(r, Exception)
    ]
    assert rejected == []
    assert {c.command for c in commands} == set(ALL_COMMANDS)
    rows = service.patients()
    assert [r["patient_id"] for r in rows] == [f"P-{i:04d}" for i in range(1, 61)]
    states = Counter(r["state"] for r in rows)
    assert set(states) >= {"ceased", "screen_failed", "discontinued", "withdrawn", "died"}
    # spread over the three sites; the transferred patients are at the next site now
    sites = Counter(r["site"] for r in rows)
    assert set(sites) == {"S01", "S02", "S03"} and sum(sites.values()) == 60
    moved = {c.patient_id for c in commands if c.command == "transfer_site"}
    assert moved and all(service.summary(p)["site_transfers"] for p in moved)
    # What the patients list says agrees with each patient's full summary.
    for row in rows[:10]:
        summary = service.summary(row["patient_id"])
        assert (row["state"], row["version"], row["course_number"]) == (
            summary["state"],
            summary["version"],
            summary["course_number"],
        )
    # Recording the same cohort again records nothing new.
    # The query rules opened (and, once corrected, closed) queries on the demo's D2 counts
    # corrected beyond the tolerance: one event each, after the command's own.
    by_rules = [
        q for r in results if not isinstance(r, Exception) for q in r.outcome.get("queries", ())
    ]
    assert {q["rule"] for q in by_rules} == {"deviation_without_reason"}
    assert {q["status"] for q in by_rules} == {"open", "closed"}
    again = service.execute_batch(commands)
    assert {r.status for r in again if not isinstance(r, Exception)} == {"duplicate"}
    assert sum(len(service.events(r["patient_id"])) for r in rows) == (
        len(commands) + 60 + len(by_rules)
    )


def test_bad_input_and_unknown_patients_are_clear_errors(service: CourseService) -> None:
    with pytest.raises(PatientNotFoundError) as missing:
        service.summary("NOBODY")
    assert missing.value.to_json()["error"] == "patient_not_found"
    with pytest.raises(PatientNotFoundError):
        service.events("NOBODY")
    # A command other than screen cannot register a patient.
    with pytest.raises(PatientNotFoundError):
        service.execute(
            parse_command(
                envelope("record_apheresis", "NOBODY", {"apheresis_contraindication": False}, at=T0)
            )
        )
    assert service.patients() == []

    p = Course(service, "P-108")
    p.screen()
    p.apheresis()
    with pytest.raises(InvalidCommandError) as info:
        p.do("give_infusion", {"day": 4, "cells": {"value": 1e6, "unit": "cells"}})
    assert info.value.field == "payload.day"
    with pytest.raises(InvalidCommandError) as info:
        p.do("give_infusion", {"day": 1, "cells": {"value": 7e6, "unit": "cells"}})
    assert info.value.field == "payload.weight"
    with pytest.raises(InvalidCommandError) as info:
        p.do("record_death", {"cuase": "typo"})
    assert info.value.field == "payload.cuase"
    assert "cause" in info.value.message
    with pytest.raises(InvalidCommandError) as info:
        parse_command(envelope("screen", "P 108", {}, at=T0))
    assert info.value.field == "patient_id"
    # A patient is registered once: a second screening is refused by the protocol.
    with pytest.raises(MoveRefused) as refused:
        p.screen()
    assert refused.value.to_json()["state"] == "apheresed"
    assert len(service.events("P-108")) == 3
    assert [r["patient_id"] for r in service.patients()] == ["P-108"]


def test_existing_streams_answers_for_many_patients_in_one_call(
    service: CourseService, store_url: str
) -> None:
    """The batch path asks once which screened patients the store already holds: the answer
    is exact on every store, also past one query's worth of ids (500)."""
    commands = [parse_command(c) for c in cohort(30, 4) if c["command"] == "screen"][:12]
    service.execute_batch(commands)
    recorded = {stream_id(c.patient_id) for c in commands}
    unknown = [stream_id(f"NEW-{i}") for i in range(1200)]
    asked = [*unknown[:600], *recorded, *unknown[600:]]
    assert service.app.existing_streams(asked) == recorded
    assert service.app.existing_streams([]) == set()


def test_a_batch_screening_patients_the_store_already_holds_records_nothing_twice(
    store_url: str,
) -> None:
    """A new service (empty cache) given a batch that screens patients already in the store:
    the screens are recognised as retries (same keys) and nothing is registered again."""
    commands = [parse_command(c) for c in cohort(20, 6)]
    first = CourseService(open_application(parse_store_url(store_url)))
    try:
        refused_first = [
            r.message for r in first.execute_batch(commands) if isinstance(r, CartCourseError)
        ]
        if store_url == "memory:":  # one process: the same store object, a fresh cache
            second = CourseService(first.app)
        else:
            second = CourseService(open_application(parse_store_url(store_url)))
        results = second.execute_batch(commands)
        assert {r.status for r in results if not isinstance(r, CartCourseError)} == {"duplicate"}
        assert [r.message for r in results if isinstance(r, CartCourseError)] == refused_first
        versions = {pid: second.record(pid).version for pid in second.patient_ids()}
        assert versions == {pid: first.record(pid).version for pid in first.patient_ids()}
    finally:
        first.close()
