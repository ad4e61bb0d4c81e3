"""Corrections of adverse-event facts (issue 16): ``correct`` of a ``report_toxicity``'s
``adverse_event`` (seriousness, attribution, expectedness, outcome, awareness) and of a
``record_sae_report`` (to whom, reference, when sent), through the registry's correctable keys;
the episode, its safety case, the SAE clocks, the board and the conformance findings follow the
corrected value. On every backend."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import Course

from cart_course.audit import check_history, patient_events
from cart_course.bootstrap import Settings, build_service
from cart_course.errors import InvalidCommandError
from cart_course.protocol.payloads import Attribution, SeriousnessCriterion
from cart_course.service import CourseService
from cart_course.views import Views, queries

CRS3 = {"kind": "CRS", "grade": 3, "scale": "ASTCT", "scale_version": "2019"}


def _treated(service: CourseService, pid: str, ae: dict[str, Any]) -> tuple[Course, int]:
    """A patient after D1 with a CRS grade 3 reported with ``ae``; (course, its version)."""
    p = Course(service, pid)
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    result = p.do("report_toxicity", {"toxicity": CRS3, "adverse_event": ae}, hours=6)
    return p, result.version


def _iso(p: Course, hours: float) -> str:
    return (p.t + dt.timedelta(hours=hours)).isoformat()


def _case(service: CourseService, pid: str) -> dict[str, Any] | None:
    cases = service.summary(pid).get("sae_cases") or []
    return cases[0] if cases else None


def _late(pid: str, service: CourseService) -> list[str]:
    """The conformance's late-report findings of the patient (their delay)."""
    findings = check_history(pid, patient_events(service.log, pid)).findings
    return [f.message.rsplit(": ", 1)[1] for f in findings if f.check == "late_report"]


def _row(views: Views, pid: str, now: dt.datetime) -> dict[str, Any]:
    views.catch_up()
    row = queries.patient(views.db, pid, now)
    assert row is not None
    return row


def test_a_report_corrected_to_serious_opens_the_case_and_its_clock(
    service: CourseService, views: Views
) -> None:
    p, v = _treated(service, "AE-1", {"attribution": "possible", "expected": True})
    aware = _iso(p, 2)
    assert _case(service, "AE-1") is None
    assert _row(views, "AE-1", p.t)["sae_due_at"] is None
    result = p.do(
        "correct",
        {
            "corrects": v,
            "changes": {
                "adverse_event": {
                    "attribution": "possible",
                    "expected": True,
                    "seriousness": ["hospitalisation"],
                    "aware_at": aware,
                }
            },
        },
        hours=3,
        reason="the patient was admitted for it: serious (hospitalisation)",
    )
    assert result.outcome["adverse_event"]["serious"] is True
    case = _case(service, "AE-1")
    assert case is not None
    assert case["seriousness"] == ["hospitalisation"] and case["susar"] is False
    due = (dt.datetime.fromisoformat(aware) + dt.timedelta(hours=24)).isoformat()
    assert [(c["report"], c["due_at"]) for c in case["clocks"]] == [("initial", due)]
    (episode,) = service.summary("AE-1")["toxicities"]
    assert episode["adverse_event"]["seriousness"] == ["hospitalisation"]
    row = _row(views, "AE-1", p.t)
    assert (row["next_kind"], row["sae_case_id"], row["sae_report"], row["sae_due_at"]) == (
        "sae_report",
        "CRS-1",
        "initial",
        due,
    )
    assert service.summary("AE-1")["sae_report_due"] == {
        "case_id": "CRS-1",
        "report": "initial",
        "due_at": due,
    }
    overdue_at = dt.datetime.fromisoformat(due) + dt.timedelta(seconds=1)
    assert [r["patient_id"] for r in queries.board(views.db, overdue=True, now=overdue_at)] == [
        "AE-1"
    ]
    assert queries.count(views.db, overdue=True, action="record_sae_report", now=overdue_at) == 1


def test_a_report_corrected_to_not_serious_cancels_its_running_clock(
    service: CourseService, views: Views
) -> None:
    p, v = _treated(
        service,
        "AE-2",
        {"attribution": "probable", "seriousness": ["life_threatening"], "expected": False},
    )
    case = _case(service, "AE-2")
    assert case is not None and case["susar"] is True
    assert [c["report"] for c in case["clocks"]] == ["initial", "expedited"]
    assert _row(views, "AE-2", p.t)["next_kind"] == "sae_report"
    p.do(
        "correct",
        {
            "corrects": v,
            "changes": {"adverse_event": {"attribution": "probable", "expected": False}},
        },
        reason="entered as life-threatening by mistake: grade 3 CRS, not serious",
    )
    case = _case(service, "AE-2")
    assert case is not None and case["seriousness"] == [] and case["susar"] is False
    assert all(str(c["cancelled"]).endswith("not serious") for c in case["clocks"])
    row = _row(views, "AE-2", p.t)
    assert row["sae_due_at"] is None and row["next_kind"] != "sae_report"
    assert "sae_report_due" not in service.summary("AE-2")
    # no report is due any more: an initial report is refused, naming what is due (none)
    with pytest.raises(InvalidCommandError) as info:
        p.do("record_sae_report", {"case_id": "CRS-1", "report": "initial", "sent_to": "sponsor"})
    assert "no initial report due; due: none" in str(info.value)


def test_a_corrected_awareness_moves_the_clock_and_judges_the_report_again(
    service: CourseService, views: Views
) -> None:
    serious = {"attribution": "possible", "seriousness": ["hospitalisation"], "expected": True}
    p, v = _treated(service, "AE-3", serious)
    onset = p.t
    sent = p.do(
        "record_sae_report",
        {"case_id": "CRS-1", "report": "initial", "sent_to": "sponsor"},
        hours=30,
    )
    case = _case(service, "AE-3")
    assert case is not None
    (clock,) = case["clocks"]
    assert clock["late"] is True and clock["delay_hours"] == 6.0
    assert _late("AE-3", service) == ["6.0 h late"]
    # the site became aware 10 hours after the onset, not at it: the report was on time
    p.do(
        "correct",
        {
            "corrects": v,
            "changes": {
                "adverse_event": {
                    **serious,
                    "aware_at": (onset + dt.timedelta(hours=10)).isoformat(),
                }
            },
        },
        reason="awareness was the next morning's ward round",
    )
    case = _case(service, "AE-3")
    assert case is not None
    (clock,) = case["clocks"]
    assert clock["due_at"] == (onset + dt.timedelta(hours=34)).isoformat()
    assert (clock["late"], clock["delay_hours"], clock["report_version"]) == (
        False,
        None,
        sent.version,
    )
    assert _late("AE-3", service) == []
    # an awareness before the onset is refused, naming the corrected field; nothing recorded
    before = service.summary("AE-3")
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {
                "corrects": v,
                "changes": {
                    "adverse_event": {
                        **serious,
                        "aware_at": (onset - dt.timedelta(hours=1)).isoformat(),
                    }
                },
            },
            reason="typo",
        )
    assert info.value.field == "payload.changes.adverse_event.aware_at"
    assert service.summary("AE-3") == before


def test_a_corrected_onset_moves_a_clock_counted_from_it(service: CourseService) -> None:
    serious = {"attribution": "possible", "seriousness": ["hospitalisation"], "expected": True}
    p, v = _treated(service, "AE-8", serious)  # no aware_at: the clock runs from the onset
    onset = p.t
    case = _case(service, "AE-8")
    assert case is not None
    assert case["clocks"][0]["due_at"] == (onset + dt.timedelta(hours=24)).isoformat()
    p.do(
        "correct",
        {"corrects": v, "changes": {"occurred_at": (onset + dt.timedelta(hours=3)).isoformat()}},
        reason="onset was at the 9 pm observation, not 6 pm",
    )
    case = _case(service, "AE-8")
    assert case is not None
    assert case["clocks"][0]["due_at"] == (onset + dt.timedelta(hours=27)).isoformat()
    assert (
        service.summary("AE-8")["toxicities"][0]["onset"]
        == (onset + dt.timedelta(hours=3)).isoformat()
    )


@pytest.mark.parametrize(
    ("seriousness", "days"), [(["hospitalisation"], 15), (["life_threatening"], 7)]
)
def test_a_report_corrected_to_a_susar_starts_the_expedited_clock(
    service: CourseService, seriousness: list[str], days: int
) -> None:
    p, v = _treated(
        service,
        "AE-4",
        {"attribution": "unrelated", "seriousness": ["hospitalisation"], "expected": False},
    )
    onset = p.t
    case = _case(service, "AE-4")
    assert case is not None and [c["report"] for c in case["clocks"]] == ["initial"]
    p.do(
        "correct",
        {
            "corrects": v,
            "changes": {
                "adverse_event": {
                    "attribution": "probable",
                    "seriousness": seriousness,
                    "expected": False,
                }
            },
        },
        reason="the investigator's causality assessment: probably related",
    )
    case = _case(service, "AE-4")
    assert case is not None and case["susar"] is True
    assert case["seriousness"] == seriousness
    expedited = [c for c in case["clocks"] if c["report"] == "expedited"]
    assert [c["due_at"] for c in expedited] == [(onset + dt.timedelta(days=days)).isoformat()]


def test_a_sent_report_is_corrected_and_judged_again(service: CourseService) -> None:
    serious = {"attribution": "possible", "seriousness": ["hospitalisation"], "expected": True}
    p, _v = _treated(service, "AE-5", serious)
    onset = p.t
    sent = p.do(
        "record_sae_report",
        {"case_id": "CRS-1", "report": "initial", "sent_to": "sponsor", "reference": "S-9"},
        hours=20,
    )
    p.do(
        "correct",
        {
            "corrects": sent.version,
            "changes": {
                "sent_to": "sponsor pharmacovigilance",
                "reference": "SAE-2026-001",
                "occurred_at": (onset + dt.timedelta(hours=26)).isoformat(),
            },
        },
        reason="sent two days later than entered, under the sponsor's reference",
    )
    case = _case(service, "AE-5")
    assert case is not None
    (clock,) = case["clocks"]
    assert (clock["sent_to"], clock["reference"]) == ("sponsor pharmacovigilance", "SAE-2026-001")
    assert (clock["late"], clock["delay_hours"]) == (True, 2.0)
    assert _late("AE-5", service) == ["2.0 h late"]
    before = service.summary("AE-5")
    # a report sent before the site was aware: refused, naming the corrected field
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {
                "corrects": sent.version,
                "changes": {"occurred_at": (onset - dt.timedelta(hours=1)).isoformat()},
            },
            reason="typo",
        )
    assert info.value.field == "payload.changes.occurred_at"
    # the case and the report it answers are not correctable keys
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {"corrects": sent.version, "changes": {"case_id": "ICANS-1"}},
            reason="wrong case",
        )
    assert info.value.field == "payload.changes.case_id"
    assert "correctable keys: occurred_at, reference, sent_to" in str(info.value)
    assert service.summary("AE-5") == before


def test_a_toxicity_report_without_ae_facts_corrects_as_before(service: CourseService) -> None:
    p = Course(service, "AE-6")
    p.screen()
    p.apheresis()
    p.infuse(1, days=14)
    v = p.do("report_toxicity", {"toxicity": CRS3}, hours=6).version
    result = p.do(
        "correct",
        {"corrects": v, "changes": {"toxicity": {**CRS3, "grade": 2}}},
        reason="grade 2: low-flow oxygen only",
    )
    assert "adverse_event_now" not in result.outcome and "sae_case" not in result.outcome
    summary = service.summary("AE-6")
    assert summary["toxicities"][0]["grade"] == 2 and "sae_cases" not in summary
    assert "adverse_event" not in summary["toxicities"][0]


#: What the payload allows (``protocol/payloads.py``).
_ATTRIBUTIONS = get_args(Attribution)
_CRITERIA = get_args(SeriousnessCriterion)


def _ae_facts() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "attribution": st.sampled_from(_ATTRIBUTIONS),
            "seriousness": st.lists(st.sampled_from(_CRITERIA), max_size=2, unique=True),
            "expected": st.booleans(),
        },
        optional={"aware_hours": st.integers(min_value=0, max_value=72)},
    )


def _as_payload(ae: dict[str, Any], onset: dt.datetime) -> dict[str, Any]:
    out = {k: v for k, v in ae.items() if k != "aware_hours"}
    if "aware_hours" in ae:
        out["aware_at"] = (onset + dt.timedelta(hours=ae["aware_hours"])).isoformat()
    return out


def _running(case: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The clocks still running, (report, due instant in UTC)."""
    if case is None:
        return []
    return sorted(
        (c["report"], dt.datetime.fromisoformat(c["due_at"]).astimezone(dt.UTC).isoformat())
        for c in case["clocks"]
        if not c.get("sent_at") and not c.get("cancelled")
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=_ae_facts(), right=_ae_facts())
def test_a_corrected_report_leaves_the_case_as_if_recorded_right(
    first: dict[str, Any], right: dict[str, Any]
) -> None:
    """Property: a report recorded with wrong adverse-event facts and then corrected has the same
    episode facts, seriousness, SUSAR status and running clocks as a report recorded right."""
    service = build_service(Settings.for_store("memory:"))
    try:
        wrong, v = _treated(service, "W-1", {})
        onset = wrong.t
        right_patient, _ = _treated(service, "R-1", {})
        assert right_patient.t == onset
        # the same onset for both: a second report with the facts (the first had none)
        wrong.t = right_patient.t = onset - dt.timedelta(hours=1)
        v = wrong.do(
            "report_toxicity",
            {"toxicity": CRS3, "toxicity_id": "CRS-1", "adverse_event": _as_payload(first, onset)},
            hours=1,
        ).version
        right_patient.do(
            "report_toxicity",
            {"toxicity": CRS3, "toxicity_id": "CRS-1", "adverse_event": _as_payload(right, onset)},
            hours=1,
        )
        wrong.do(
            "correct",
            {"corrects": v, "changes": {"adverse_event": _as_payload(right, onset)}},
            reason="the adverse-event form was filled in for another episode",
        )
        a, b = service.summary("W-1"), service.summary("R-1")
        assert a["toxicities"][0].get("adverse_event") == b["toxicities"][0].get("adverse_event")
        case_a, case_b = _case(service, "W-1"), _case(service, "R-1")
        assert _running(case_a) == _running(case_b)
        for key in ("seriousness", "susar"):
            assert (case_a or {}).get(key, [] if key == "seriousness" else False) == (
                case_b or {}
            ).get(key, [] if key == "seriousness" else False)
    finally:
        service.close()
