"""The moves allowed now, and the screening payload, answered fast -- and alike.

``allowed_now`` evaluates the machine's table directly, move by move, with each move's facts built
once per kind of move; ``parse_screening`` takes plain numbers within their bounds without calling
their parsers, and ``ScreeningData.to_json`` reads every value at once. These tests prove the
answers are the library's and the parsers' own: the moves the ``transitions`` machine itself lets
through on a hypothetical dry run, and the value (or the error message) of each key's parser.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import random
from typing import Any

import attrs
import pytest

from cart_course.contract import parse_command
from cart_course.demo import cohort, eligible_screening
from cart_course.protocol.commands import allowed_now, context_facts
from cart_course.protocol.eligibility import (
    _PARSERS,
    NEVER,
    SCREENING_KEYS,
    LabValue,
    LabWithUln,
    ScreeningData,
    parse_screening,
)
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.machine import Probe, dry_run_by_trigger
from cart_course.protocol.parameters import DEFAULT_PARAMETERS
from cart_course.protocol.record import PatientRecord, Toxicity
from cart_course.protocol.states import State
from cart_course.protocol.versions import CURRENT, ProtocolVersion, make_version

STATES = [s.value for s in State]
#: An amendment with other thresholds (holds, severity, courses on PR): the same machine table.
AMENDED = make_version(
    "test-amended",
    "other thresholds",
    "2030-01-01",
    attrs.evolve(
        DEFAULT_PARAMETERS,
        hold_crs_grade=2,
        hold_other_grade=2,
        severe_grade=2,
        max_courses_on_pr=2,
    ),
)


def _library_allowed(record: PatientRecord, version: ProtocolVersion) -> list[str]:
    """Every move of the state fired by ``transitions`` on a hypothetical probe of its facts."""
    return [
        trigger
        for trigger, event in version.machine.events.items()
        if record.state in event.transitions
        and dry_run_by_trigger(
            version.machine,
            Probe(record.state, context_facts(record, trigger), version.params, hypothetical=True),
            trigger,
        ).allowed
    ]


def _cohort_records(n: int, seed: int) -> list[PatientRecord]:
    from cart_course.service import CourseService
    from cart_course.storage import open_application, parse_store_url

    service = CourseService(open_application(parse_store_url("memory:")))
    records = []
    for raw in cohort(n, seed):
        service.execute(parse_command(raw))
        records.append(copy.deepcopy(service.record(raw["patient_id"])))
    return records


def _variants(record: PatientRecord, rng: random.Random) -> list[PatientRecord]:
    """The record in other states, with toxicities open or resolved at any grade, fractions
    cancelled or not, any response, weight known or not, consent on file or not."""
    out = [record]
    for _ in range(3):
        v = copy.deepcopy(record)
        v.state = rng.choice(STATES)
        if v.courses:
            course = v.courses[-1]
            course.cancelled = rng.random() < 0.5
            course.response = rng.choice(["CR", "CRi", "PR", "NR", None])
            course.weight_kg = rng.choice([course.weight_kg, None, 70.0])
        for _ in range(rng.randint(0, 2)):
            n = len(v.toxicities) + 1
            v.toxicities[f"t{n}"] = Toxicity(
                id=f"t{n}",
                kind=rng.choice(["CRS", "ICANS", "other"]),
                term=None,
                grade=rng.randint(0, 5),
                scale="ASTCT",
                scale_version="2019",
                course_number=rng.choice([len(v.courses), max(len(v.courses) - 1, 0)]),
                onset="2026-01-01",
                report={},
                worst_grade=rng.randint(0, 5),
                resolved_at=rng.choice([None, "2026-01-03"]),
            )
        v._reindex()
        v.consent_on_file = rng.random() < 0.7
        out.append(v)
    return out


def test_allowed_now_is_the_library_answer_for_every_state_along_a_cohort() -> None:
    rng = random.Random(23)
    records = [v for r in _cohort_records(25, 17) for v in _variants(r, rng)]
    seen_states = {r.state for r in records}
    assert seen_states == set(STATES)  # every state is asked, including terminal ones
    versions = [CURRENT, AMENDED]
    answers: set[tuple[str, ...]] = set()
    for record in records:
        for version in versions:
            expected = _library_allowed(record, version)
            assert allowed_now(record, version) == expected, (record.state, version.id)
            answers.add(tuple(expected))
    # the answers differ with the facts: the test can fail in many ways
    assert len(answers) > 20


def test_a_hold_blocks_the_next_fraction_until_resolved() -> None:
    record = next(r for r in _cohort_records(20, 3) if r.state == "infused_d1" and not r.open_ids)
    assert "infuse_d2" in allowed_now(record, CURRENT)
    held = copy.deepcopy(record)
    held.toxicities["CRS-9"] = Toxicity(
        id="CRS-9",
        kind="CRS",
        term=None,
        grade=DEFAULT_PARAMETERS.hold_crs_grade,
        scale="ASTCT",
        scale_version="2019",
        course_number=held.course_number,
        onset="2026-01-01",
        report={},
        worst_grade=DEFAULT_PARAMETERS.hold_crs_grade,
    )
    held._reindex()
    moves = allowed_now(held, CURRENT)
    assert "infuse_d2" not in moves and "resolve_toxicity" in moves
    assert moves == _library_allowed(held, CURRENT)


def test_context_facts_are_a_new_dict_per_call() -> None:
    """Facts are recorded with the event: sharing them between moves is ``allowed_now``'s own
    business, never a caller's."""
    record = _cohort_records(3, 1)[-1]
    for trigger in CURRENT.machine.events:
        first, second = context_facts(record, trigger), context_facts(record, trigger)
        assert first == second and first is not second


# ------------------------------------------------------------------------------------------------
# Screening payload: plain numbers taken as their parsers would take them
# ------------------------------------------------------------------------------------------------

NUMBERS: list[Any] = [
    0,
    1,
    3,
    80,
    81,
    100,
    101,
    -1,
    10**30,
    0.0,
    -0.0,
    0.5,
    3.0,
    50.0,
    99.99,
    100.0,
    100.5,
    -0.1,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    None,
    "80",
]
NUMERIC_KEYS = [
    "failed_standard_lines",
    "kps",
    "life_expectancy_months",
    "lvef_pct",
    "spo2_room_air_pct",
]


def _outcome(run: Any) -> tuple[Any, ...]:
    try:
        value = run()
    except ProtocolInputError as exc:
        return ("error", exc.field, exc.message)
    return ("ok", type(value), repr(value))


@pytest.mark.parametrize("key", NUMERIC_KEYS)
@pytest.mark.parametrize("value", NUMBERS, ids=repr)
def test_a_plain_number_parses_as_its_parser_says(key: str, value: Any) -> None:
    parsed = _outcome(lambda: getattr(parse_screening({key: value}), key))
    assert parsed == _outcome(lambda: _PARSERS[key](key, value))


def test_numbers_keep_how_they_were_written() -> None:
    data = parse_screening({"kps": 90, "lvef_pct": 55.0, "life_expectancy_months": 6})
    assert data.to_json() == {"kps": 90, "life_expectancy_months": 6, "lvef_pct": 55.0}
    assert json.dumps(data.to_json()) == (
        '{"kps": 90, "life_expectancy_months": 6, "lvef_pct": 55.0}'
    )


def _reference_to_json(data: ScreeningData) -> dict[str, Any]:
    """The normalized form as specified: catalogue order, absent keys left out."""
    out: dict[str, Any] = {}
    for key in SCREENING_KEYS:
        v = getattr(data, key)
        if v is None:
            continue
        if key == "last_systemic_glucocorticoid":
            out[key] = None if v == NEVER else v.isoformat()
        elif isinstance(v, LabValue | LabWithUln):
            out[key] = v.to_json()
        elif isinstance(v, dt.date):
            out[key] = v.isoformat()
        else:
            out[key] = v
    return out


def test_to_json_is_the_normalized_form_in_catalogue_order() -> None:
    rng = random.Random(5)
    for _ in range(200):
        raw = eligible_screening(rng)
        keys = list(raw)
        rng.shuffle(keys)
        raw = {k: raw[k] for k in keys if rng.random() < 0.8}
        raw["last_systemic_glucocorticoid"] = rng.choice([None, "none", "2024-12-01"])
        if raw.get("informed_consent_signed") is True and rng.random() < 0.5:
            raw["informed_consent_date"] = "2025-01-02"
        data = parse_screening(raw)
        out = data.to_json()
        assert out == _reference_to_json(data)
        assert list(out) == list(_reference_to_json(data))
        assert json.dumps(out) == json.dumps(_reference_to_json(data))
        assert parse_screening(out) == data
