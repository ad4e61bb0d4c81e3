"""A fraction whose count reads as a unit mix-up (cells vs cells/kg, a power of ten) is refused
naming the likely mistake first; a deviation reason alone does not record it, the clinician
confirms such a dose explicitly (``confirm_unusual_dose``) (issue 18)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from patient_moves import PLAN, WEIGHT, Patient, failed_rules

from cart_course.protocol.dosing import MIX_UP_POWERS, unit_mix_up, within_tolerance
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.versions import CURRENT

TOL = CURRENT.params.dose_tolerance  # 20 %
D1 = PLAN[0]  # 7e6 cells at 70 kg


# -- the pure check: dosing.unit_mix_up ------------------------------------------------------


def test_the_issue_example_names_cells_per_kg_entered_as_cells() -> None:
    planned = 0.6 * 70 * 1e6 * 0.935  # a plan 3.93e7: 3.85e7 is 98 % of it
    said = unit_mix_up(5.5e5, "cells", 70, planned, TOL)
    assert said == (
        "looks like cells/kg entered as cells: 5.5e5 x 70 kg = 3.85e7 cells would be 98 % of plan "
        "(5.5e5 cells is 1 % of plan)"
    )


def test_cells_entered_as_cells_per_kg_the_69x_of_the_first_hour() -> None:
    said = unit_mix_up(7e6, "cells/kg", WEIGHT, D1, TOL)
    assert said == (
        "looks like cells entered as cells/kg: 7e6 cells/kg x 70 kg = 4.9e8 cells is 7000 % of "
        "plan; 7e6 cells would be 100 % of plan"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (7e7, "7e6 cells (10x fewer) would be 100 % of plan"),
        (7e5, "7e6 cells (10x more) would be 100 % of plan"),
        (7e8, "(100x fewer)"),
        (7e9, "(1000x fewer)"),
        (7e3, "(1000x more)"),
    ],
)
def test_a_power_of_ten_slip_is_named(value: float, words: str) -> None:
    said = unit_mix_up(value, "cells", WEIGHT, D1, TOL)
    assert said is not None and said.startswith("looks like a power-of-ten slip")
    assert words in said


@pytest.mark.parametrize(
    ("factor", "mix_up"),
    [
        (1.0, False),  # on plan
        (1.2, False),  # at the tolerance: within
        (0.8, False),
        (1.5, False),  # off plan, but no unit explains it: a deviation like any other
        (10 * 1.2, True),  # 10x at the edge of tolerance
        (10 * 1.21, False),  # just past it: 12.1x is no slip by ten
        (10 * 0.8, True),
        (10 * 0.79, False),
        (1e4, False),  # 10^4: beyond the powers looked for
    ],
)
def test_the_boundaries_are_the_dose_tolerance(factor: float, mix_up: bool) -> None:
    assert (unit_mix_up(D1 * factor, "cells", WEIGHT, D1, TOL) is not None) is mix_up


def test_the_weight_factor_is_named_before_a_power_of_ten() -> None:
    # at 100 kg, cells/kg entered as cells is also 100x too few: the unit is the likelier slip
    said = unit_mix_up(1e5, "cells", 100, 1e7, TOL)
    assert said is not None and said.startswith("looks like cells/kg entered as cells")


@given(
    weight=st.floats(0.5, 400),
    share=st.sampled_from([0.1, 0.3, 0.6]),
    error=st.floats(1 - TOL, 1 + TOL),
)
def test_property_every_mix_up_of_a_dose_within_tolerance_is_named(
    weight: float, share: float, error: float
) -> None:
    """Whatever the weight and fraction: the intended dose entered in the other unit, or off by a
    power of ten, is named as a mix-up unless it happens to fall within tolerance itself; the
    intended dose as such is never a mix-up."""
    planned = weight * 1e6 * share
    intended = planned * error
    assert unit_mix_up(intended, "cells", weight, planned, TOL) is None
    slips = [
        (intended / weight, "cells", "cells/kg entered as cells"),
        (intended, "cells/kg", "cells entered as cells/kg"),
        *[(intended * 10.0**k, "cells", "power-of-ten") for k in MIX_UP_POWERS],
        *[(intended / 10.0**k, "cells", "power-of-ten") for k in MIX_UP_POWERS],
    ]
    for value, unit, mistake in slips:
        cells = value * weight if unit == "cells/kg" else value
        said = unit_mix_up(value, unit, weight, planned, TOL)
        if within_tolerance(planned, cells, TOL):
            assert said is None
        else:
            assert said is not None and said.startswith("looks like"), mistake


# -- through the protocol: refused first, a deviation reason is not enough -------------------


def test_refused_naming_the_mistake_and_not_inviting_a_deviation_reason() -> None:
    p = Patient().apheresed()
    exc = p.refused(
        "give_infusion",
        {
            "day": 1,
            "cells": {"value": 7e6, "unit": "cells/kg"},
            "weight": {"value": WEIGHT, "unit": "kg"},
        },
        on=p.next_day(7),
    )
    assert failed_rules(exc) == ["dose_within_tolerance_or_deviation"]
    message = exc.failed[0].message
    assert message.startswith("looks like cells entered as cells/kg: 7e6 cells/kg x 70 kg")
    assert "record a deviation reason to proceed" not in message
    assert "a deviation reason alone does not record a likely unit mix-up" in message


def test_a_deviation_reason_alone_does_not_record_a_likely_mix_up() -> None:
    p = Patient().apheresed()
    exc = p.refused(
        "give_infusion",
        {
            "day": 1,
            "cells": {"value": 1e5, "unit": "cells"},  # 1e5 cells/kg x 70 kg is the plan
            "weight": {"value": WEIGHT, "unit": "kg"},
            "deviation_reason": "as ordered",
        },
        on=p.next_day(7),
    )
    assert exc.failed[0].message.startswith("looks like cells/kg entered as cells")


def test_confirmed_with_a_reason_it_is_recorded_as_a_deviation() -> None:
    p = Patient().apheresed()
    payload = {
        "day": 1,
        "cells": {"value": 7e5, "unit": "cells"},
        "weight": {"value": WEIGHT, "unit": "kg"},
        "confirm_unusual_dose": True,
    }
    # confirmed but without a reason: still a deviation without its reason
    exc = p.refused("give_infusion", payload, on=p.next_day(7))
    assert exc.failed[0].message.endswith("record a deviation reason to proceed")
    prepared = p.infuse(
        1,
        0.1,
        gap=7,
        confirm_unusual_dose=True,
        deviation_reason="only a tenth of the product passed release; infused as planned by PI",
    )
    assert prepared.to_state == "infused_d1"
    assert "-90%" in prepared.outcome["deviations"][0]


def test_confirm_unusual_dose_must_be_a_boolean() -> None:
    p = Patient().apheresed()
    with pytest.raises(ProtocolInputError) as info:
        p.infuse(1, gap=7, confirm_unusual_dose="yes")
    assert info.value.field == "payload.confirm_unusual_dose"


def test_an_ordinary_deviation_still_takes_a_reason() -> None:
    p = Patient().apheresed()
    exc = p.refused(
        "give_infusion",
        {
            "day": 1,
            "cells": {"value": D1 * 1.5, "unit": "cells"},
            "weight": {"value": WEIGHT, "unit": "kg"},
        },
        on=p.next_day(7),
    )
    assert exc.failed[0].message.endswith("record a deviation reason to proceed")
