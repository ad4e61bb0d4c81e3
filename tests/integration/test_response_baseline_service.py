"""A response assessment without a baseline, through the service on every store: a CR is recorded
with the progression flag not evaluable; a PR that needs the baseline is recorded only as a
clinician's response with a reason; what downstream readers (record, summary, replay,
conformance, exports, FHIR, views) make of such events."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course

from cart_course.audit import check_history, patient_events, replay
from cart_course.audit.exports import csv_timeline, jsonl
from cart_course.audit.fhir import bundle
from cart_course.audit.report import html_report
from cart_course.errors import InvalidCommandError, MoveRefused
from cart_course.service import CourseService
from cart_course.storage import parse_store_url
from cart_course.views import Views, queries

#: The reported case: CR in every respect, but no baseline marrow blasts recorded.
CR_NO_BASELINE: dict[str, Any] = {
    "marrow_blasts_pct": 1,
    "circulating_blasts_present": False,
    "anc": {"value": 1.5, "unit": "10^9/L"},
    "platelets": {"value": 150, "unit": "10^9/L"},
    "extramedullary_disease": "none",
}
PR_NO_BASELINE = {**CR_NO_BASELINE, "marrow_blasts_pct": 12}
REASON = "baseline marrow 40 % at the referring hospital; report pending"


def _after_d3(service: CourseService, pid: str) -> Course:
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.full_course()
    return p


def _assessment_event(service: CourseService, pid: str) -> Any:
    return next(e for e in service.events(pid) if getattr(e, "trigger", "") == "assess_response")


@pytest.fixture
def views(service: CourseService, store_url: str) -> Iterator[Views]:
    with closing(Views(service.log, parse_store_url(store_url), batch_size=50)) as v:
        yield v


def test_cr_without_baseline_is_recorded_and_the_course_goes_on(service: CourseService) -> None:
    p = _after_d3(service, "RB-1")
    assessed = p.do("assess_response", {"assessment": CR_NO_BASELINE}, days=26)
    assert (assessed.from_state, assessed.to_state) == ("infused_d3", "assessed")
    out = assessed.outcome
    assert (out["computed_response"], out["response"], out["progression"]) == ("CR", "CR", None)
    assert any(
        r.startswith("progression not evaluable: baseline marrow blasts %") for r in out["reasons"]
    )
    assert {"continue_treatment", "cease"} <= set(assessed.allowed_moves)
    course = service.summary("RB-1")["current_course"]
    assert (course["response"], course["computed_response"]) == ("CR", "CR")
    event = _assessment_event(service, "RB-1")
    assert event.outcome["progression"] is None
    ceased = p.do("cease", reason="CR after the first course; patient declines more", days=1)
    assert ceased.to_state == "ceased"


def test_the_same_payload_with_the_clinicians_cr_is_recorded(service: CourseService) -> None:
    p = _after_d3(service, "RB-2")
    payload = {"assessment": CR_NO_BASELINE, "clinician_response": "CR"}
    assessed = p.do("assess_response", payload, days=26, reason="baseline marrow not available")
    assert (assessed.outcome["computed_response"], assessed.outcome["response"]) == ("CR", "CR")
    assert p.do("continue_treatment", reason="CR; second course wished", days=1).to_state == (
        "continued"
    )


def test_pr_without_baseline_is_recorded_as_the_clinicians_response_with_a_reason(
    service: CourseService,
) -> None:
    p = _after_d3(service, "RB-3")
    with pytest.raises(InvalidCommandError) as invalid:
        p.do("assess_response", {"assessment": PR_NO_BASELINE}, days=26)
    assert invalid.value.field == "payload.assessment.baseline_marrow_blasts_pct"
    assert "or a clinician's response (clinician_response) with a reason" in invalid.value.message
    payload = {"assessment": PR_NO_BASELINE, "clinician_response": "PR"}
    with pytest.raises(MoveRefused) as refused:
        p.do("assess_response", payload)
    body = refused.value.to_json()
    assert [f["rule"] for f in body["failed_rules"]] == ["clinician_response_consistent"]
    assert "the computed response is not evaluable" in body["failed_rules"][0]["message"]
    assessed = p.do("assess_response", payload, reason=REASON)
    out = assessed.outcome
    assert (out["computed_response"], out["response"], out["progression"]) == (None, "PR", None)
    assert out["reasons"][0].startswith(
        "not evaluable under harmonised B-ALL (NCCN/CIBMTR): baseline marrow blasts % "
        "('baseline_marrow_blasts_pct') not recorded; needed to decide between PR and NR"
    )
    course = service.summary("RB-3")["current_course"]
    assert (course["response"], course["computed_response"]) == ("PR", None)
    event = _assessment_event(service, "RB-3")
    assert event.reason == REASON
    assert (event.outcome["computed_response"], event.outcome["response"]) == (None, "PR")
    # PR: another course is permitted (the decision rules read the clinician's category)
    assert p.do("continue_treatment", reason="PR: a second course", days=1).to_state == "continued"


def test_downstream_readers_take_a_null_progression_and_a_clinician_only_category(
    service: CourseService, views: Views
) -> None:
    _after_d3(service, "RB-4").do("assess_response", {"assessment": CR_NO_BASELINE}, days=26)
    p = _after_d3(service, "RB-5")
    p.do(
        "assess_response",
        {"assessment": PR_NO_BASELINE, "clinician_response": "PR"},
        days=26,
        reason=REASON,
    )
    for pid in ("RB-4", "RB-5"):
        events = patient_events(service.log, pid)
        # replay gives the service's record; the guards re-run on the stored facts conform
        assert replay(pid, events).to_json() == service.record(pid).to_json()
        assert check_history(pid, events).findings == []
        Bundle.model_validate(bundle(pid, events))
        assert "assess" in html_report(pid, events, findings=[], problems=[]).lower()
    lines = [json.loads(line)["fields"] for line in jsonl(service.log)]
    outcomes = [f["outcome"] for f in lines if f.get("trigger") == "assess_response"]
    assert {(o["computed_response"], o["response"], o["progression"]) for o in outcomes} == {
        ("CR", "CR", None),
        (None, "PR", None),
    }
    assert "RB-5" in "".join(csv_timeline(service.log, "RB-5"))
    views.catch_up()
    assert queries.skipped(views.db) == []
    assert queries.cohort(views.db)["response"] == {"CR": 1, "PR": 1}
    rows = {pid: queries.patient(views.db, pid) for pid in ("RB-4", "RB-5")}
    assert all(row is not None and row["state"] == "assessed" for row in rows.values())
