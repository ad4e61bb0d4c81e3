"""Commands end to end in the pure core: ``commands.prepare`` decides, ``record.evolve`` assigns."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from patient_moves import PLAN, WEIGHT, Patient, failed_rules

from cart_course.demo import assessment, crs, eligible_screening, icans
from cart_course.protocol.commands import allowed_now
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.versions import CURRENT

# ------------------------------------------------------------------------------------------
# Infusion schedule
# ------------------------------------------------------------------------------------------


def test_fractions_on_consecutive_calendar_days_are_recorded_without_deviation() -> None:
    p = Patient().apheresed().course()
    course = p.record.course
    assert course is not None
    assert [f.day for f in course.fractions] == [1, 2, 3]
    assert [f.given_on for f in course.fractions] == ["2026-01-14", "2026-01-15", "2026-01-16"]
    assert p.record.deviations == []
    assert p.record.state == "infused_d3"


def test_d2_two_days_after_d1_is_refused_without_a_deviation_reason() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    exc = p.refused(
        "give_infusion", {"day": 2, "cells": {"value": PLAN[1], "unit": "cells"}}, on=p.next_day(2)
    )
    assert failed_rules(exc) == ["on_schedule_or_deviation"]
    assert "D2 on 2026-01-16 is 2 day(s) after D1 on 2026-01-14" in str(exc)
    assert "record a deviation reason to proceed" in str(exc)


def test_d2_on_the_same_day_as_d1_is_refused() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    exc = p.refused(
        "give_infusion", {"day": 2, "cells": {"value": PLAN[1], "unit": "cells"}}, on=p.day
    )
    assert failed_rules(exc) == ["on_schedule_or_deviation"]


def test_late_fraction_with_deviation_reason_is_recorded_and_flagged() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    prepared = p.infuse(2, gap=3, deviation_reason="product release delayed")
    assert prepared.to_state == "infused_d2"
    assert prepared.outcome["deviations"] == [
        "D2 on 2026-01-17 is 3 day(s) after D1 on 2026-01-14; "
        "the protocol gives it on the next calendar day"
    ]
    [deviation] = p.record.deviations
    assert deviation["reason"] == "product release delayed"
    assert deviation["trigger"] == "infuse_d2"
    assert "3 day(s) after D1" in deviation["deviation"]


def test_d1_before_apheresis_is_refused() -> None:
    p = Patient().apheresed()
    payload = {
        "day": 1,
        "cells": {"value": PLAN[0], "unit": "cells"},
        "weight": {"value": WEIGHT, "unit": "kg"},
    }
    exc = p.refused("give_infusion", payload, on=p.day - dt.timedelta(days=1))
    assert failed_rules(exc) == ["on_schedule_or_deviation"]
    assert "is before apheresis" in str(exc)


def test_d1_any_day_after_apheresis_is_on_schedule() -> None:
    p = Patient().apheresed()
    assert p.infuse(1, gap=21).outcome["deviations"] == []


def test_d3_before_d2_is_refused_by_sequence() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    exc = p.refused(
        "give_infusion", {"day": 3, "cells": {"value": PLAN[2], "unit": "cells"}}, on=p.next_day()
    )
    assert failed_rules(exc) == ["permitted_sequence"]
    assert exc.allowed and "infuse_d2" in exc.allowed


# ------------------------------------------------------------------------------------------
# Dose tolerance
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "ok"), [(0.79, False), (0.80, True), (1.0, True), (1.20, True), (1.21, False)]
)
def test_fraction_dose_tolerance_both_sides(factor: float, ok: bool) -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    payload = {"day": 2, "cells": {"value": PLAN[1] * factor, "unit": "cells"}}
    if ok:
        assert p.do("give_infusion", payload, on=p.next_day()).outcome["deviations"] == []
    else:
        exc = p.refused("give_infusion", payload, on=p.next_day())
        assert failed_rules(exc) == ["dose_within_tolerance_or_deviation"]
        assert "tolerance is ±20%" in str(exc)


def test_course_total_may_not_exceed_plan_even_when_the_fraction_is_within_tolerance() -> None:
    p = Patient().apheresed()
    p.infuse(1, 2.0, gap=7, deviation_reason="mislabelled bag, clinician informed")
    p.infuse(2, 1.2)
    exc = p.refused(
        "give_infusion",
        {"day": 3, "cells": {"value": PLAN[2] * 1.2, "unit": "cells"}},
        on=p.next_day(),
    )
    assert failed_rules(exc) == ["dose_within_tolerance_or_deviation"]
    assert "the course total would be" in str(exc)
    assert "above the planned 7e+07" in str(exc)


def test_overdose_with_deviation_reason_is_allowed_and_flagged() -> None:
    p = Patient().apheresed()
    prepared = p.infuse(
        1, 1.5, gap=7, deviation_reason="dose calculation error, reported to sponsor"
    )
    assert prepared.to_state == "infused_d1"
    assert "+50%" in prepared.outcome["deviations"][0]
    assert p.record.deviations[0]["reason"] == "dose calculation error, reported to sponsor"
    assert p.record.course is not None and p.record.course.fractions[0].deviations


def test_d1_plans_the_course_from_weight_and_records_the_plan() -> None:
    p = Patient().apheresed()
    out = p.infuse(1, gap=7).outcome
    assert out["planned_total_cells"] == pytest.approx(7e7)
    assert out["fraction_plan"] == pytest.approx(list(PLAN))
    assert out["counted_quantity"] == "CAR-positive viable T cells"


def test_cells_per_kg_are_converted_with_the_course_weight() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    prepared = p.do(
        "give_infusion", {"day": 2, "cells": {"value": 3e5, "unit": "cells/kg"}}, on=p.next_day()
    )
    assert prepared.facts["cells"] == pytest.approx(2.1e7)
    assert prepared.payload["cells"] == {"value": 3e5, "unit": "cells/kg"}


def test_weight_in_pounds_plans_the_same_course() -> None:
    p = Patient().apheresed()
    payload = {
        "day": 1,
        "cells": {"value": 7e6, "unit": "cells"},
        "weight": {"value": 154.3236, "unit": "lb"},
    }
    out = p.do("give_infusion", payload, on=p.next_day(7)).outcome
    assert out["weight_kg"] == pytest.approx(70.0, rel=1e-6)


def test_d1_without_weight_is_bad_input_naming_the_field() -> None:
    p = Patient().apheresed()
    with pytest.raises(ProtocolInputError) as info:
        p.do(
            "give_infusion", {"day": 1, "cells": {"value": 7e6, "unit": "cells"}}, on=p.next_day(7)
        )
    assert info.value.field == "payload.weight"


# ------------------------------------------------------------------------------------------
# Toxicity holds, cancelled fractions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("report", [crs(1), icans(1)], ids=["CRS1", "ICANS1"])
def test_toxicity_hold_blocks_d2_and_d3_until_resolved(report: dict[str, Any]) -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    tox = p.do("report_toxicity", {"toxicity": report}, on=p.day)
    assert tox.to_state == "infused_d1" and tox.outcome["opens_hold"]
    exc = p.refused(
        "give_infusion", {"day": 2, "cells": {"value": PLAN[1], "unit": "cells"}}, on=p.next_day()
    )
    assert failed_rules(exc) == ["no_open_hold"]
    assert "resolve it before the next fraction" in str(exc)
    assert "infuse_d2" not in exc.allowed
    p.do("resolve_toxicity", {"toxicity_id": tox.outcome["toxicity_id"]}, on=p.day)
    p.infuse(2)
    p.do("report_toxicity", {"toxicity": report}, on=p.day)
    exc = p.refused(
        "give_infusion", {"day": 3, "cells": {"value": PLAN[2], "unit": "cells"}}, on=p.next_day()
    )
    assert failed_rules(exc) == ["no_open_hold"]


def test_cancelled_fractions_lead_to_assessment() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    p.do("report_toxicity", {"toxicity": crs(3)})
    exc = p.refused("assess_response", {"assessment": assessment("CR")}, on=p.next_day(20))
    assert failed_rules(exc) == ["remaining_fractions_cancelled"]
    exc = p.refused("cancel_remaining_fractions")
    assert failed_rules(exc) == ["reason_given"]
    p.do("cancel_remaining_fractions", reason="grade 3 CRS after D1")
    assert p.record.state == "infused_d1"
    exc = p.refused(
        "give_infusion", {"day": 2, "cells": {"value": PLAN[1], "unit": "cells"}}, on=p.next_day()
    )
    assert "remaining_fractions_not_cancelled" in failed_rules(exc)
    assert "assess_response" in allowed_now(p.record, CURRENT)
    assert p.assessed("CR").to_state == "assessed"


def test_severe_toxicity_allows_discontinuation_with_reason() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    p.do("report_toxicity", {"toxicity": crs(2)})
    exc = p.refused("discontinue", reason="CRS")
    assert failed_rules(exc) == ["severe_toxicity_recorded"]
    p.do("report_toxicity", {"toxicity": crs(3)})
    assert p.do("discontinue", reason="grade 3 CRS").to_state == "discontinued"
    assert p.record.ended is not None and p.record.ended["reason"] == "grade 3 CRS"


def test_severe_toxicity_of_an_earlier_course_does_not_justify_discontinuation() -> None:
    p = Patient().apheresed().course()
    p.do("report_toxicity", {"toxicity": crs(3)})
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, on=p.next_day())
    p.assessed("PR")
    p.do("continue_treatment", on=p.next_day())
    p.course()
    exc = p.refused("discontinue", reason="CRS in course 1")
    assert failed_rules(exc) == ["severe_toxicity_recorded"]


def test_terminal_state_refuses_infusion_but_follows_up_toxicity() -> None:
    p = Patient().apheresed().course()
    p.assessed("CR")
    p.do("cease", reason="CR; patient declines further treatment")
    exc = p.refused(
        "give_infusion",
        {
            "day": 1,
            "cells": {"value": PLAN[0], "unit": "cells"},
            "weight": {"value": WEIGHT, "unit": "kg"},
        },
        on=p.next_day(),
    )
    assert failed_rules(exc) == ["permitted_sequence"]
    assert set(exc.allowed) <= {
        "report_toxicity",
        "resolve_toxicity",
        "withdraw",
        "record_death",
        "transfer_site",
        # the follow-up after the end of treatment (issue 16)
        "record_follow_up",
        "record_missed_visit",
    }
    assert p.do("report_toxicity", {"toxicity": crs(1)}).to_state == "ceased"


def test_a_death_during_follow_up_is_recorded() -> None:
    """After the end of treatment a death "at any point" is recorded (ceased -> died)."""
    p = Patient().apheresed().course()
    p.assessed("CR")
    p.do("cease", reason="CR; patient declines further treatment")
    assert p.do("record_death", on=p.next_day()).to_state == "died"
    exc = p.refused("record_death", on=p.next_day())  # once
    assert failed_rules(exc) == ["permitted_sequence"]


# ------------------------------------------------------------------------------------------
# Decisions after assessment
# ------------------------------------------------------------------------------------------


def test_partial_response_allows_two_more_courses_then_only_cease() -> None:
    p = Patient().apheresed()
    for number in (1, 2):
        p.course()
        p.assessed("PR")
        assert p.do("continue_treatment", on=p.next_day()).to_state == "continued"
        assert p.record.course_number == number
    p.course()
    p.assessed("PR")
    exc = p.refused("continue_treatment", reason="patient asks for a fourth course")
    assert failed_rules(exc) == ["another_course_permitted"]
    assert "this patient has had 3" in str(exc)
    assert "continue_treatment" not in exc.allowed
    assert p.do("cease").to_state == "ceased"


@pytest.mark.parametrize("response", ["CR", "CRi"])
def test_complete_response_continue_or_cease_needs_a_reason(response: str) -> None:
    p = Patient().apheresed().course()
    p.assessed(response)
    assert failed_rules(p.refused("continue_treatment")) == ["another_course_permitted"]
    assert failed_rules(p.refused("cease")) == ["cease_permitted"]
    assert (
        p.do("continue_treatment", reason="consolidation, patient's wish").to_state == "continued"
    )


def test_no_response_ceases_or_restarts_with_reason() -> None:
    p = Patient().apheresed().course()
    p.assessed("NR")
    assert failed_rules(p.refused("continue_treatment")) == ["another_course_permitted"]
    assert p.do("continue_treatment", reason="restart: clinical assessment").to_state == "continued"
    p.course()
    p.assessed("NR")
    assert p.do("cease").to_state == "ceased"


def test_clinician_response_that_differs_needs_a_reason() -> None:
    p = Patient().apheresed().course()
    payload = {"assessment": assessment("PR"), "clinician_response": "CR"}
    exc = p.refused("assess_response", payload, on=p.next_day(25))
    assert failed_rules(exc) == ["clinician_response_consistent"]
    prepared = p.do("assess_response", payload, reason="marrow aspirate diluted; biopsy shows CR")
    assert prepared.outcome["computed_response"] == "PR"
    assert prepared.outcome["response"] == "CR"
    assert p.record.course is not None and p.record.course.response == "CR"


def test_withdrawal_from_screened_needs_a_reason() -> None:
    p = Patient().screened()
    assert failed_rules(p.refused("withdraw")) == ["reason_given"]
    assert p.do("withdraw", reason="consent withdrawn").to_state == "withdrawn"
    assert allowed_now(p.record, CURRENT) == []


def test_screen_failure_can_be_rescreened() -> None:
    p = Patient()
    bad = eligible_screening(random.Random(5))
    bad["kps"] = 80
    out = p.do("screen", {"screening": bad}).outcome
    assert p.record.state == "screen_failed" and out["failed_criteria"] == ["kps"]
    assert p.refused("record_apheresis", {"apheresis_contraindication": False}).allowed == [
        "rescreen",
        "withdraw",
        "record_death",
        "transfer_site",
    ]
    bad["kps"] = 90
    p.do("rescreen", {"screening": bad}, on=p.next_day(7))
    assert p.record.state == "screened" and p.record.screenings == 2


def test_an_open_episode_of_an_earlier_course_turning_severe_justifies_discontinuation() -> None:
    """Trial text: "Treatment may be discontinued due to any severe toxicity": an episode that
    began in course 1, still open, and severe during course 2 counts in course 2."""
    p = Patient().apheresed().course()
    p.do(
        "report_toxicity",
        {
            "toxicity": {
                "kind": "other",
                "term": "hepatotoxicity",
                "grade": 2,
                "scale": "CTCAE",
                "scale_version": "5.0",
            }
        },
    )
    p.assessed("PR")
    p.do("continue_treatment", on=p.next_day())
    p.infuse(1, gap=7)
    exc = p.refused("discontinue", reason="hepatotoxicity")
    assert failed_rules(exc) == ["severe_toxicity_recorded"]  # grade 2: not severe
    p.do(
        "report_toxicity",
        {
            "toxicity_id": "other-1",
            "toxicity": {
                "kind": "other",
                "term": "hepatotoxicity",
                "grade": 4,
                "scale": "CTCAE",
                "scale_version": "5.0",
            },
        },
    )
    assert "discontinue" in allowed_now(p.record, CURRENT)
    assert p.do("discontinue", reason="grade 4 hepatotoxicity").to_state == "discontinued"


def test_a_hold_lasts_until_the_episode_is_resolved_not_until_it_grades_lower() -> None:
    """A fever masked by tocilizumab grades CRS 0 while the episode is still open: the next
    fraction waits for its resolution."""
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    p.do("report_toxicity", {"toxicity": crs(1)})
    masked = crs(1)
    masked["observations"].update(
        temperature={"value": 37.2, "unit": "C"}, anticytokine_given=True, antipyretics_given=True
    )
    p.do("report_toxicity", {"toxicity_id": "CRS-1", "toxicity": masked})
    assert p.record.toxicities["CRS-1"].grade == 0
    d2 = {"day": 2, "cells": {"value": PLAN[1], "unit": "cells"}}
    exc = p.refused("give_infusion", d2, on=p.next_day())
    assert failed_rules(exc) == ["no_open_hold"]
    assert "CRS grade 1 (CRS-1)" in str(exc)
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"})
    assert p.do("give_infusion", d2, on=p.next_day()).to_state == "infused_d2"


def test_a_fatal_toxicity_does_not_resolve() -> None:
    p = Patient().apheresed()
    p.infuse(1, gap=7)
    fatal = crs(3)
    fatal["observations"]["death_due_to_crs"] = True
    p.do("report_toxicity", {"toxicity": fatal})
    exc = p.refused("resolve_toxicity", {"toxicity_id": "CRS-1"})
    assert failed_rules(exc) == ["toxicity_not_fatal"]
    assert "record the death (record_death)" in str(exc)
    assert "infuse_d2" not in allowed_now(p.record, CURRENT)  # the open episode holds
    assert p.do("record_death").to_state == "died"
