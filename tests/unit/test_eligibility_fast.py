"""Screening values parse the same on the fast path (a plain JSON object) as on the checked one."""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.demo import eligible_screening
from cart_course.protocol.eligibility import parse_screening
from cart_course.protocol.errors import ProtocolInputError

NUMBERS = st.one_of(
    st.integers(-5, 200),
    st.integers(-(10**400), 10**400),  # beyond a float: refused, never an OverflowError
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, -1, 1.2, True, False, None, "1.2", [1]]),
)
ODD_UNITS = st.sampled_from(["mg/dL", "umol/L", "U/L", "g/L", "g/dL", "mg", 3, None])
#: A valid lab object per key; the test changes some of its fields (or adds one): values out of
#: their plausible range (plausibility.LAB_RANGES) must be refused alike on both paths.
VALID = {
    "creatinine": {"value": 0.9, "unit": "mg/dL", "uln": 106, "uln_unit": "umol/L"},
    "alt": {"value": 40, "unit": "U/L", "uln": 40},
    "ast": {"value": 51, "unit": "U/L", "uln": 40, "uln_unit": "U/L"},
    "bilirubin": {"value": 8, "unit": "umol/L"},
    "hemoglobin": {"value": 95, "unit": "g/L"},
}
CHANGES = st.dictionaries(
    st.sampled_from(["value", "unit", "uln", "uln_unit", "extra"]),
    st.one_of(NUMBERS, ODD_UNITS),
    max_size=2,
)
DROPS = st.sets(st.sampled_from(["value", "unit", "uln", "uln_unit"]), max_size=1)
LAB_KEYS = list(VALID)
BOOL_KEYS = ["hiv", "pregnant", "informed_consent_signed", "diagnosis_rr_b_all"]


def _parse(data: dict[str, Any]) -> Any:
    try:
        return ("ok", parse_screening(data))
    except ProtocolInputError as exc:
        return ("error", exc.field, exc.message)


@settings(max_examples=1500, deadline=None)
@given(
    key=st.sampled_from(LAB_KEYS),
    changes=CHANGES,
    drops=DROPS,
    flag_key=st.sampled_from(BOOL_KEYS),
    flag=st.one_of(st.booleans(), st.none(), st.sampled_from([0, 1, "true"])),
)
def test_plain_objects_parse_as_checked_mappings(
    key: str, changes: dict[str, Any], drops: set[str], flag_key: str, flag: Any
) -> None:
    """A plain dict takes the fast path; the same values in a read-only mapping take the checked
    path (every field validated in turn): same value, or the same error on the same field."""
    lab = {k: v for k, v in {**VALID[key], **changes}.items() if k not in drops}
    base = eligible_screening(random.Random(2))
    base.pop("informed_consent_date", None)
    fast = {**base, key: dict(lab), flag_key: flag}
    checked = {**base, key: MappingProxyType(dict(lab)), flag_key: flag}
    assert _parse(fast) == _parse(checked)


def test_the_normalized_screening_reads_back_the_same() -> None:
    for seed in range(50):
        parsed = parse_screening(eligible_screening(random.Random(seed)))
        assert parse_screening(parsed.to_json()) == parsed
