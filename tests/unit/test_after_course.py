"""After the course (issue 16): follow-up visits and their windows, adverse events with
seriousness and reporting clocks, deaths with their cause -- each rule at its edges, through
``commands.prepare`` (decides) and ``record.evolve`` (assigns), as the service does."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from patient_moves import PLAN, recorded_move, unrecorded

from cart_course.demo import assessment, eligible_screening
from cart_course.protocol.commands import MoveRefusedError, Prepared
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.follow_up import aesi_of, next_visit, pending_sae_clock
from cart_course.protocol.parameters import DEFAULT_PARAMETERS as P
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.versions import CURRENT, ProtocolVersion
from cart_course.views.projection import next_due_at

CET = dt.timezone(dt.timedelta(hours=1))
#: D1 of the one course: 2026-01-22 09:30 +01:00.
D1 = dt.datetime(2026, 1, 22, 9, 30, tzinfo=CET)


class Patient:
    """One patient's record under ``version``, moved only through prepare + evolve."""

    def __init__(self, version: ProtocolVersion = CURRENT) -> None:
        self.version = version
        self.record = PatientRecord(patient_id="P-16")

    def do(
        self,
        command: str,
        payload: dict[str, Any] | None,
        at: dt.datetime,
        reason: str | None = None,
    ) -> Prepared:
        return recorded_move(self.record, command, payload, at, reason, self.version)

    def bad(self, command: str, payload: dict[str, Any], at: dt.datetime) -> ProtocolInputError:
        return unrecorded(self.record, ProtocolInputError, lambda: self.do(command, payload, at))

    def refused(self, command: str, payload: dict[str, Any], at: dt.datetime) -> MoveRefusedError:
        return unrecorded(self.record, MoveRefusedError, lambda: self.do(command, payload, at))

    def treated(self, *, end: str = "cease") -> Patient:
        self.do(
            "screen", {"screening": eligible_screening(random.Random(5))}, D1 - dt.timedelta(17)
        )
        self.do("record_apheresis", {"apheresis_contraindication": False}, D1 - dt.timedelta(14))
        for day in (1, 2, 3):
            payload: dict[str, Any] = {
                "day": day,
                "cells": {"value": PLAN[day - 1], "unit": "cells"},
            }
            if day == 1:
                payload["weight"] = {"value": 70, "unit": "kg"}
            self.do("give_infusion", payload, D1 + dt.timedelta(days=day - 1))
        if end == "cease":
            self.do("assess_response", {"assessment": assessment("CR")}, D1 + dt.timedelta(27))
            self.do("cease", None, D1 + dt.timedelta(28), reason="CR; patient declines more")
        return self


def visit(name: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"visit": name, "disease_status": {"status": "remission"}}
    payload.update(changes)
    return payload


def at_day(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime.combine((D1 + dt.timedelta(days=day)).date(), dt.time(hour), tzinfo=CET)


# -- follow-up visits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "in_window"),
    [(28 - 8, False), (28 - 7, True), (28, True), (28 + 7, True), (28 + 8, False)],
)
def test_the_d28_window_at_its_edges(day: int, in_window: bool) -> None:
    p = Patient().treated()
    if day < 28:  # before the cease: a visit entered late may precede the last move
        pass
    out = p.do("record_follow_up", visit("D28"), at_day(day)).outcome
    assert out["window_start"] == "2026-02-12" and out["window_end"] == "2026-02-26"
    assert out["in_window"] is in_window
    assert ("days_outside_window" in out) is (not in_window)
    if not in_window:
        assert out["days_outside_window"] == 1


def test_a_visit_before_d1_or_after_death_is_refused_naming_occurred_at() -> None:
    p = Patient().treated()
    error = p.bad("record_follow_up", visit("D28"), D1 - dt.timedelta(minutes=1))
    assert error.field == "occurred_at" and "before D1" in error.message
    p.do("record_death", {"cause": "progressive disease"}, at_day(40))
    # a visit that happened before the death, entered after it, is recorded
    p.do("record_follow_up", visit("D28"), at_day(30))
    error = p.bad("record_follow_up", visit("M2"), at_day(41))
    assert error.field == "occurred_at" and "after the patient's death" in error.message


def test_a_visit_needs_a_d1_and_the_end_of_treatment() -> None:
    p = Patient()
    p.do("screen", {"screening": eligible_screening(random.Random(5))}, D1)
    with pytest.raises(MoveRefusedError) as info:
        p.do("record_follow_up", visit("D28"), D1 + dt.timedelta(days=1))
    assert [f.rule for f in info.value.failed] == ["permitted_sequence"]
    p.do("cease", None, D1 + dt.timedelta(days=2), reason="declined apheresis")
    with pytest.raises(MoveRefusedError) as info:
        p.do("record_follow_up", visit("D28"), D1 + dt.timedelta(days=3))
    assert [f.rule for f in info.value.failed] == ["follow_up_from_d1"]


def test_bad_visits_name_every_field_and_what_is_allowed() -> None:
    p = Patient().treated()
    error = p.bad(
        "record_follow_up",
        {
            "visit": "M30",
            "disease_status": {"status": "relapsed", "cd19": "dim"},
            "igg": {"value": 5, "unit": "mmol/L"},
        },
        at_day(60),
    )
    fields = {f.field: f.message for f in error.problems}
    assert "allowed: remission, relapse" in fields["payload.disease_status.status"]
    assert "allowed: positive, negative" in fields["payload.disease_status.cd19"]
    assert "allowed: g/L, mg/dL" in fields["payload.igg.unit"]
    error = p.bad("record_follow_up", visit("M30"), at_day(60))
    assert error.field == "payload.visit" and "D28, M2, M3" in error.message
    relapse = p.bad(
        "record_follow_up", visit("M2", disease_status={"status": "relapse"}), at_day(60)
    )
    assert relapse.field == "payload.disease_status.cd19"


def test_a_cd19_negative_relapse_is_recorded_and_does_not_open_a_new_course() -> None:
    p = Patient().treated()
    out = p.do(
        "record_follow_up",
        visit(
            "M2", disease_status={"status": "relapse", "cd19": "negative", "marrow_blasts_pct": 30}
        ),
        at_day(61),
    ).outcome
    assert out["relapse"] == {"cd19": "negative"}
    assert p.record.follow_up["relapse"]["cd19"] == "negative"
    # the trial text decides further courses after each course's assessment only: a relapse in
    # follow-up is not a move back into treatment
    with pytest.raises(MoveRefusedError) as info:
        p.do(
            "give_infusion",
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
            at_day(62),
        )
    assert [f.rule for f in info.value.failed] == ["permitted_sequence"]


def test_lost_to_follow_up_after_the_missed_visits_then_found_again() -> None:
    p = Patient().treated()
    for n, name in enumerate(("D28", "M2", "M3"), start=1):
        out = p.do(
            "record_missed_visit",
            {"visit": name, "missed_reason": "no answer"},
            at_day(30 * n + 10),
        ).outcome
        assert out["consecutive_missed"] == n
        assert out["lost_to_follow_up"] is (n == P.lost_to_follow_up_missed)
    assert p.record.follow_up["lost"] is True
    assert next_visit(p.record, P) is None
    assert next_due_at(p.record)[0] == "lost to follow-up"
    p.do("record_follow_up", visit("M6"), at_day(183))
    assert p.record.follow_up["lost"] is False
    assert next_visit(p.record, P) == ("M9", "2026-10-09", "2026-11-06", D1.isoformat())


def test_the_board_shows_the_next_visit_due_by_its_window_end() -> None:
    p = Patient().treated()
    action, due_on, _hold, overdue = next_due_at(p.record)
    assert action == "record_follow_up (D28, window 2026-02-12 to 2026-02-26)"
    assert due_on == "2026-02-26"
    assert overdue == "2026-02-26T23:00:00.000000"  # the end of the day at +01:00, in UTC
    p.do("record_follow_up", visit("D28"), at_day(28))
    assert next_due_at(p.record)[1] == "2026-03-31"  # M2: day 61 +/- 7


def test_the_schedule_runs_to_15_years() -> None:
    names = [v[0] for v in P.follow_up_schedule]
    assert names[:8] == ["D28", "M2", "M3", "M6", "M9", "M12", "M18", "M24"]
    assert names[-1] == "Y15" and dict((v[0], v[1]) for v in P.follow_up_schedule)["Y15"] == 5479


# -- adverse events, seriousness, clocks -------------------------------------------------------


def _serious(**changes: Any) -> dict[str, Any]:
    ae: dict[str, Any] = {
        "attribution": "probable",
        "seriousness": ["hospitalisation"],
        "expected": True,
        "aware_at": at_day(3, 12).isoformat(),
    }
    ae.update(changes)
    return ae


def _other(term: str, grade: int, ae: dict[str, Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "toxicity": {
            "kind": "other",
            "term": term,
            "grade": grade,
            "scale": "CTCAE",
            "scale_version": "5.0",
        }
    }
    if ae is not None:
        payload["adverse_event"] = ae
    return payload


def test_a_serious_adverse_event_starts_the_24_hour_clock_from_awareness() -> None:
    p = Patient().treated()
    out = p.do(
        "report_toxicity", _other("febrile neutropenia", 3, _serious()), at_day(3, 8)
    ).outcome
    assert out["adverse_event"] == {"serious": True, "susar": False, "aesi": None}
    (case,) = p.record.sae_cases.values()
    (clock,) = case["clocks"]
    assert clock["report"] == "initial" and clock["due_at"] == at_day(4, 12).isoformat()
    assert pending_sae_clock(p.record) == ("other-1", "initial", at_day(4, 12).isoformat())


@pytest.mark.parametrize(("minutes", "late"), [(0, False), (1, True)])
def test_the_initial_report_at_its_clock_edge(minutes: int, late: bool) -> None:
    p = Patient().treated()
    p.do("report_toxicity", _other("sepsis", 4, _serious()), at_day(3, 8))
    sent = at_day(4, 12) + dt.timedelta(minutes=minutes)
    out = p.do(
        "record_sae_report",
        {"case_id": "other-1", "report": "initial", "sent_to": "sponsor", "reference": "S-1"},
        sent,
    ).outcome
    assert out["due_at"] == at_day(4, 12).isoformat()
    (clock,) = p.record.sae_cases["other-1"]["clocks"]
    assert clock["late"] is late  # recorded either way, never refused
    assert clock["delay_hours"] == (round(1 / 60, 2) if late else None)
    assert pending_sae_clock(p.record) is None


@pytest.mark.parametrize(
    ("seriousness", "days"), [(["life_threatening"], 7), (["death"], 7), (["hospitalisation"], 15)]
)
def test_a_susar_starts_the_expedited_clock_of_ich_e2a(seriousness: list[str], days: int) -> None:
    p = Patient().treated()
    ae = _serious(seriousness=seriousness, expected=False, attribution="possible")
    out = p.do("report_toxicity", _other("IEC-HS", 4, ae), at_day(3, 8)).outcome
    assert out["adverse_event"]["susar"] is True and out["adverse_event"]["aesi"] == "IEC-HS"
    clocks = {c["report"]: c["due_at"] for c in p.record.sae_cases["other-1"]["clocks"]}
    assert clocks == {
        "initial": at_day(4, 12).isoformat(),
        "expedited": (at_day(3, 12) + dt.timedelta(days=days)).isoformat(),
    }


@pytest.mark.parametrize("attribution", ["unrelated", "unlikely"])
def test_an_unrelated_or_expected_serious_event_is_no_susar(attribution: str) -> None:
    p = Patient().treated()
    p.do(
        "report_toxicity",
        _other("IEC-HS", 4, _serious(attribution=attribution, expected=False)),
        at_day(3),
    )
    assert p.record.sae_cases["other-1"]["susar"] is False
    p.do("report_toxicity", _other("sepsis", 4, _serious(attribution="definite")), at_day(3))
    assert p.record.sae_cases["other-2"]["susar"] is False  # expected


def test_new_information_after_the_initial_report_starts_a_follow_up_clock() -> None:
    p = Patient().treated()
    p.do("report_toxicity", _other("sepsis", 3, _serious()), at_day(3, 8))
    p.do(
        "record_sae_report",
        {"case_id": "other-1", "report": "initial", "sent_to": "sponsor"},
        at_day(3, 20),
    )
    update = _other(
        "sepsis", 4, {"seriousness": ["life_threatening"], "aware_at": at_day(5).isoformat()}
    )
    update["toxicity_id"] = "other-1"
    p.do("report_toxicity", update, at_day(5))
    case = p.record.sae_cases["other-1"]
    assert case["seriousness"] == ["hospitalisation", "life_threatening"]
    follow_up = case["clocks"][-1]
    assert follow_up["report"] == "follow_up"
    assert follow_up["due_at"] == (at_day(5) + dt.timedelta(days=15)).isoformat()


def test_crs_and_icans_episodes_are_adverse_events_of_those_terms_and_keep_their_holds() -> None:
    p = Patient()
    p.do("screen", {"screening": eligible_screening(random.Random(5))}, D1 - dt.timedelta(17))
    p.do("record_apheresis", {"apheresis_contraindication": False}, D1 - dt.timedelta(14))
    p.do(
        "give_infusion",
        {"day": 1, "cells": {"value": 7e6, "unit": "cells"}, "weight": {"value": 70, "unit": "kg"}},
        D1,
    )
    crs = {"kind": "CRS", "grade": 3, "scale": "ASTCT", "scale_version": "2019"}
    out = p.do(
        "report_toxicity",
        {"toxicity": crs, "adverse_event": _serious(aware_at=at_day(0, 20).isoformat())},
        at_day(0, 18),
    ).outcome
    assert out["opens_hold"] is True and out["adverse_event"]["aesi"] == "CRS"
    assert list(p.record.toxicities) == ["CRS-1"]  # one record, not two
    assert list(p.record.sae_cases) == ["CRS-1"]
    with pytest.raises(MoveRefusedError) as info:
        p.do(
            "give_infusion",
            {"day": 2, "cells": {"value": 2.1e7, "unit": "cells"}},
            D1 + dt.timedelta(1),
        )
    assert [f.rule for f in info.value.failed] == ["no_open_hold"]


@pytest.mark.parametrize(
    ("kind", "term", "grade", "aesi"),
    [
        ("ICANS", None, 2, "ICANS"),
        ("other", "HLH-like syndrome", 3, "IEC-HS"),
        ("other", "prolonged cytopenia", 3, "prolonged cytopenia"),
        ("other", "pneumonia infection", 3, "infection grade >= 3"),
        ("other", "pneumonia infection", 2, None),
        ("other", "tumor lysis syndrome", 3, "tumour lysis syndrome"),
        ("other", "hypogammaglobulinemia", 2, "hypogammaglobulinaemia"),
        ("other", "T-cell malignancy", 4, "second malignancy"),
    ],
)
def test_adverse_events_of_special_interest(
    kind: str, term: str | None, grade: int, aesi: str | None
) -> None:
    assert aesi_of(kind, term, grade) == aesi


def test_bad_adverse_events_name_each_field_and_what_is_allowed() -> None:
    p = Patient().treated()
    error = p.bad(
        "report_toxicity",
        _other("sepsis", 3, {"attribution": "maybe", "seriousness": ["bad"], "outcome": "dead"}),
        at_day(3),
    )
    fields = {f.field: f.message for f in error.problems}
    assert (
        "unrelated, unlikely, possible, probable, definite"
        in fields["payload.adverse_event.attribution"]
    )
    assert "important_medical_event" in fields["payload.adverse_event.seriousness"]
    assert "recovered_with_sequelae" in fields["payload.adverse_event.outcome"]
    grade = p.bad("report_toxicity", _other("sepsis", 6), at_day(3))
    assert grade.field == "payload.toxicity.grade" and "1 to 5" in grade.message
    early = p.bad(
        "report_toxicity", _other("sepsis", 3, _serious(aware_at=at_day(2).isoformat())), at_day(3)
    )
    assert (
        early.field == "payload.adverse_event.aware_at"
        and "before the event's onset" in early.message
    )
    naive = p.bad(
        "report_toxicity", _other("sepsis", 3, _serious(aware_at="2026-02-01T10:00:00")), at_day(3)
    )
    assert naive.field == "payload.adverse_event.aware_at" and "offset" in naive.message


def test_bad_reports_are_refused_naming_the_field() -> None:
    p = Patient().treated()
    p.do("report_toxicity", _other("sepsis", 4, _serious()), at_day(3, 8))
    before = p.bad(
        "record_sae_report",
        {"case_id": "other-1", "report": "initial", "sent_to": "sponsor"},
        at_day(3, 11),
    )
    assert before.field == "occurred_at" and "before the site became aware" in before.message
    unknown = p.bad(
        "record_sae_report", {"case_id": "other-9", "report": "initial", "sent_to": "x"}, at_day(4)
    )
    assert unknown.field == "payload.case_id" and "other-1" in unknown.message
    none_due = p.bad(
        "record_sae_report",
        {"case_id": "other-1", "report": "expedited", "sent_to": "x"},
        at_day(4),
    )
    assert none_due.field == "payload.report"
    kind = p.bad(
        "record_sae_report", {"case_id": "other-1", "report": "final", "sent_to": "x"}, at_day(4)
    )
    assert kind.field == "payload.report" and "initial, follow_up, expedited" in kind.message


def test_no_safety_case_no_report() -> None:
    p = Patient().treated()
    with pytest.raises(ProtocolInputError) as info:  # no case at all: the case id is unknown
        p.do(
            "record_sae_report",
            {"case_id": "CRS-1", "report": "initial", "sent_to": "x"},
            at_day(40),
        )
    assert info.value.field == "payload.case_id"


# -- death with a structured cause -------------------------------------------------------------


def test_a_death_attributed_to_an_open_episode_makes_it_grade_5_and_closes_it() -> None:
    p = Patient().treated(end="none")
    crs = {"kind": "CRS", "grade": 4, "scale": "ASTCT", "scale_version": "2019"}
    p.do("report_toxicity", {"toxicity": crs}, at_day(3))
    assert p.record.toxicities["CRS-1"].open
    out = p.do(
        "record_death",
        {
            "cause": "CRS",
            "cause_of_death": {
                "category": "adverse_event",
                "toxicity_id": "CRS-1",
                "related": "definite",
            },
        },
        at_day(6),
    ).outcome
    assert out["closes_episode"] is True and out["grade"] == 5 and out["within_trm_window"] is True
    tox = p.record.toxicities["CRS-1"]
    assert (tox.grade, tox.worst_grade, tox.open, tox.fatal) == (5, 5, False, True)
    assert tox.ae is not None and tox.ae["outcome"] == "fatal"
    assert p.record.open_ids == []
    # a fatal AE is an SAE: its initial report is due 24 h after the death (no awareness given)
    case = p.record.sae_cases["CRS-1"]
    assert case["seriousness"] == ["death"]
    assert case["clocks"][0]["due_at"] == (at_day(6) + dt.timedelta(hours=24)).isoformat()


@pytest.mark.parametrize(("day", "flagged"), [(30, True), (31, False)])
def test_the_treatment_related_mortality_window_at_its_edge(day: int, flagged: bool) -> None:
    p = Patient().treated()
    out = p.do(
        "record_death",
        {
            "cause_of_death": {"category": "disease_progression"},
            "aware_at": at_day(day, 12).isoformat(),
        },
        at_day(day),
    ).outcome
    assert out["days_after_d1"] == day and out["within_trm_window"] is flagged
    assert ("death" in p.record.sae_cases) is flagged
    if flagged:
        (clock,) = p.record.sae_cases["death"]["clocks"]
        assert clock["due_at"] == at_day(day + 1, 12).isoformat()


def test_bad_deaths_name_the_field() -> None:
    p = Patient().treated()
    unknown = p.bad(
        "record_death",
        {"cause_of_death": {"category": "adverse_event", "toxicity_id": "CRS-7"}},
        at_day(40),
    )
    assert unknown.field == "payload.cause_of_death.toxicity_id" and "CRS-7" in unknown.message
    category = p.bad("record_death", {"cause_of_death": {"category": "old age"}}, at_day(40))
    assert category.field == "payload.cause_of_death.category"
    assert "disease_progression, adverse_event, infection, other" in category.message
    missing = p.bad("record_death", {"cause_of_death": {"category": "adverse_event"}}, at_day(40))
    assert missing.field == "payload.cause_of_death.toxicity_id"
    aware = p.bad("record_death", {"aware_at": at_day(39).isoformat()}, at_day(40))
    assert aware.field == "payload.aware_at"


def test_a_death_with_free_text_only_records_what_it_recorded_before() -> None:
    p = Patient().treated()
    prepared = p.do("record_death", {"cause": "progressive disease"}, at_day(5))
    assert prepared.payload == {"cause": "progressive disease"}
    assert prepared.facts == {"cause": "progressive disease"}
    assert prepared.outcome == {}
    assert p.record.death is None and p.record.sae_cases == {}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_number_is_refused_naming_its_field(bad: float) -> None:
    p = Patient().treated()
    error = p.bad("record_follow_up", visit("D28", igg={"value": bad, "unit": "g/L"}), at_day(30))
    assert (error.field, error.message) == ("payload.igg.value", "must be a finite number")
