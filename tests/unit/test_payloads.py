"""Typed payloads at the edge (issue 13, item 2).

- The fast path (one ``msgspec.convert`` into the payload's Struct) and the field-by-field path
  agree on every input: the same value, or the same error with the same problems.
- One error names every invalid field; the first is the headline (``field``, ``message``).
- ``to_json`` stays byte for byte what the previous release wrote (events are hash-chained).
- The JSON Schema derived from each Struct accepts what the hand-written schema accepts.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_eligibility import screenings

from cart_course.demo import assessment, crs, eligible_screening, icans
from cart_course.protocol import dosing, eligibility, response, toxicity
from cart_course.protocol.errors import FieldProblem, ProtocolInputError
from cart_course.protocol.payloads import PAYLOAD_TYPES, convert
from cart_course.schemas import DEFS

Parse = Callable[[Any], Any]

PARSERS: dict[str, Parse] = {
    "screening": eligibility.parse_screening,
    "toxicity": toxicity.parse_toxicity_report,
    "assessment": response.parse_response_assessment,
    "weight": dosing.parse_weight,
    "cells": lambda d: dosing.parse_cell_dose(d, 70.0),
    "cells_without_weight": lambda d: dosing.parse_cell_dose(d, None),
}


def _outcome(parse: Parse, data: Any) -> Any:
    try:
        return ("ok", parse(data))
    except ProtocolInputError as exc:
        return ("error", type(exc), exc.problems, str(exc))


# --------------------------------------------------------------------------------------------
# Examples: valid payloads, and the same with one or two parts changed.


def _toxicity_examples() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [crs(g) for g in range(4)] + [icans(g) for g in (1, 2, 3)]
    out += [
        {
            "kind": "CRS",
            "term": "  CRS after D1 ",
            "observations": {
                "temperature": {"value": 101.3, "unit": "F"},
                "fever_attributable_to_other_cause": True,
                "antipyretics_given": True,
                "anticytokine_given": False,
                "hypotension": True,
                "vasopressors": 0,
                "vasopressin": True,
                "oxygen": {"device": "high_flow_nasal_cannula", "flow_l_min": 30, "fio2_pct": 45},
                "death_due_to_crs": False,
            },
        },
        {
            "kind": "ICANS",
            "observations": {
                "age_years": 12.5,
                "ice_score": None,
                "ice_items": {
                    "orientation": 0,
                    "naming": 0,
                    "command": 0,
                    "writing": 0,
                    "attention": 0,
                },
                "consciousness": "stupor_or_coma",
                "seizure": "life_threatening_or_repetitive",
                "motor": "deep_focal_weakness",
                "raised_icp": "focal_local_edema",
                "attributable_to_other_cause": ["seizure", "ice"],
            },
        },
        {
            "kind": "ICANS",
            "observations": {
                "age_years": 40,
                "ice_items": {
                    "orientation": 3,
                    "naming": 2,
                    "command": 1,
                    "writing": 0,
                    "attention": 1,
                },
                "ice_score": 7,
                "consciousness": "none",
                "awake_with_global_aphasia": True,
            },
        },
        {
            "kind": "other",
            "term": "febrile neutropenia",
            "grade": 3,
            "scale": "CTCAE",
            "scale_version": "5.0",
        },
        {"kind": "CRS", "grade": 2, "scale": "ASTCT", "scale_version": "2019", "term": None},
        {"kind": "ICANS", "grade": 1, "scale": "CTCAE", "scale_version": "4.03"},
    ]
    return out


def _assessment_examples() -> list[dict[str, Any]]:
    out = [assessment(r) for r in ("CR", "CRi", "PR", "NR")]
    out += [
        {"marrow_blasts_pct": 3},
        {
            "marrow_blasts_pct": 0,
            "baseline_marrow_blasts_pct": 40,
            "circulating_blasts_pct": 0,
            "circulating_blasts_present": False,
            "anc": {"value": 1500, "unit": "/uL"},
            "platelets": {"value": 99000, "unit": "/uL"},
            "extramedullary_disease": "present",
            "cns_status": "CNS3",
            "baseline_extramedullary_disease": "none",
            "mrd": {"value": 0.005, "unit": "%", "method": "NGS", "sensitivity": 1e-6},
            "criteria": "harmonised B-ALL (NCCN/CIBMTR)",
        },
        {"marrow_blasts_pct": 7.5, "criteria": None, "mrd": None, "anc": None},
    ]
    return out


EXAMPLES: dict[str, list[Any]] = {
    "screening": [eligible_screening(random.Random(i)) for i in range(5)]
    + [{}, {"kps": 90, "informed_consent_signed": True, "informed_consent_date": "2025-01-02"}],
    "toxicity": _toxicity_examples(),
    "assessment": _assessment_examples(),
    "weight": [
        {"value": 70, "unit": "kg"},
        {"value": 61250.5, "unit": "g"},
        {"value": 154.3, "unit": "lb"},
    ],
    "cells": [{"value": 7e6, "unit": "cells"}, {"value": 1e5, "unit": "cells/kg"}],
}
EXAMPLES["cells_without_weight"] = EXAMPLES["cells"]

ODD = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            -0.0,
            1,
            3,
            12,
            38.5,
            101.0,
            1e5,
            1e13,
            10**400,
            -1,
            float("nan"),
            float("inf"),
            "",
            " ",
            "none",
            "C",
            "kg",
            "cells/kg",
            "/uL",
            "%",
            "mg/dL",
            "stupor_or_coma",
            "low_flow_nasal_cannula",
            "CTCAE",
            "2019",
            "2025-01-02",
            "2025-02-30",
            [],
            ["ice"],
            ["bad"],
            {},
            {"value": 1},
        ]
    ),
    st.integers(-5, 200),
    st.floats(-10, 500),
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def changed(draw: st.DrawFn, name: str) -> Any:
    """An example with up to three parts replaced, removed, or a key added."""
    data = copy.deepcopy(draw(st.sampled_from(EXAMPLES[name])))
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "set", "drop", "add"]))
        if action == "set":
            parent[path[-1]] = copy.deepcopy(draw(ODD))
        elif action == "drop":
            del parent[path[-1]]
        else:
            key = draw(st.sampled_from(["extra", "value", "unit", "kind", "grade"]))
            parent[key] = copy.deepcopy(draw(ODD))
    return data


@pytest.mark.parametrize("name", list(PARSERS))
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_fast_and_checked_paths_agree(name: str, data: st.DataObject) -> None:
    """A plain dict takes the fast path (msgspec); the same values in a read-only mapping are
    checked field by field: the same value, or the same error naming the same problems."""
    raw = data.draw(changed(name))
    parse = PARSERS[name]
    assert _outcome(parse, raw) == _outcome(parse, MappingProxyType(raw))


FAST_PATHS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "screening": (PAYLOAD_TYPES["screening"], eligibility._screening_of),
    "toxicity": (PAYLOAD_TYPES["toxicity"], toxicity._report_of),
    "assessment": (PAYLOAD_TYPES["assessment"], response._assessment_of),
}


@pytest.mark.parametrize("name", list(FAST_PATHS))
def test_every_valid_example_takes_the_fast_path(name: str) -> None:
    """The agreement above is not trivial: a valid example is decoded by msgspec alone."""
    type_, of = FAST_PATHS[name]
    for raw in EXAMPLES[name]:
        payload = convert(raw, type_)
        assert payload is not None, raw
        assert of(payload) == PARSERS[name](MappingProxyType(raw))


@settings(max_examples=200, deadline=None)
@given(screenings())
def test_fast_and_checked_paths_agree_on_valid_screenings(raw: dict[str, Any]) -> None:
    fast = eligibility.parse_screening(raw)
    assert fast == eligibility.parse_screening(MappingProxyType(raw))


# --------------------------------------------------------------------------------------------
# Every invalid field at once


def test_screening_names_every_invalid_field_the_first_as_headline() -> None:
    raw = {
        **eligible_screening(random.Random(1)),
        "kps": 200,
        "hiv": "no",
        "creatinine": {"value": 1.0, "unit": "mg"},
        "colour": "blue",
    }
    with pytest.raises(ProtocolInputError) as caught:
        eligibility.parse_screening(raw)
    exc = caught.value
    assert (exc.field, exc.message) == (
        "kps",
        "200 is outside 0-100; give the Karnofsky performance status, 0-100",
    )
    assert [p.field for p in exc.problems] == [
        "kps",
        "creatinine.unit",
        "creatinine.uln",
        "hiv",
        "colour",
    ]
    assert exc.problems[1].message == "unit \"mg\" is not allowed; use 'mg/dL' or 'umol/L'"
    assert exc.problems[2].message == (
        "is required: the site's upper limit of normal for creatinine"
    )
    assert str(exc).startswith(f"kps: {exc.message} (and 4 more: creatinine.unit: unit")


def test_lab_value_names_value_and_unit_problems_and_a_missing_field_is_required() -> None:
    with pytest.raises(ProtocolInputError) as caught:
        eligibility.parse_screening({"hemoglobin": {"value": -1}})
    assert caught.value.problems == (
        FieldProblem("hemoglobin.value", "-1 is below 0.0; give the hemoglobin value, 0 or more"),
        FieldProblem("hemoglobin.unit", "is required: the unit, 'g/L' or 'g/dL'"),
    )


def test_toxicity_report_names_every_invalid_observation() -> None:
    raw = {
        "kind": "CRS",
        "observations": {
            "temperature": {"value": 38.5, "unit": "K"},
            "hypotension": "yes",
            "vasopressors": 11,
            "oxygen": {"device": "tent"},
            "colour": 1,
        },
    }
    with pytest.raises(ProtocolInputError) as caught:
        toxicity.parse_toxicity_report(raw)
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "observations.colour",
        "observations.temperature.unit",
        "observations.hypotension",
        "observations.vasopressors",
        "observations.oxygen.device",
    ]
    assert caught.value.field == "observations.colour"


def test_toxicity_explicit_grade_names_each_missing_part_as_required() -> None:
    with pytest.raises(ProtocolInputError) as caught:
        toxicity.parse_toxicity_report({"kind": "other", "grade": 7})
    assert caught.value.problems == (
        FieldProblem(
            "term", "is required for kind 'other' (e.g. 'febrile neutropenia', CTCAE term)"
        ),
        FieldProblem("scale", "is required for an explicit grade (grade, scale and scale_version)"),
        FieldProblem(
            "scale_version", "is required for an explicit grade (grade, scale and scale_version)"
        ),
        FieldProblem(
            "grade",
            "grade 7 is not allowed; an entered grade is a whole number 1 to 5 (no toxicity is "
            "not reported)",
        ),
    )


def test_response_assessment_names_every_invalid_field() -> None:
    raw = {
        "marrow_blasts_pct": 120,
        "anc": {"value": 500, "unit": "10^9/L"},
        "mrd": {"value": 0.1, "unit": "ppm", "method": "flow"},
        "cns_status": "CNS4",
    }
    with pytest.raises(ProtocolInputError) as caught:
        response.parse_response_assessment(raw)
    assert [p.field for p in caught.value.problems] == [
        "marrow_blasts_pct",
        "cns_status",
        "anc.value",
        "mrd.unit",
        "mrd.sensitivity",
    ]
    assert "give a number between 0 and 100" in caught.value.message


def test_weight_names_unit_and_value() -> None:
    with pytest.raises(ProtocolInputError) as caught:
        dosing.parse_weight({"value": "70", "unit": "stone"})
    assert [p.field for p in caught.value.problems] == ["weight.unit", "weight.value"]


def test_a_nested_payload_keeps_every_problem_under_its_path() -> None:
    exc = ProtocolInputError("kps", "a", others=[FieldProblem("hiv", "b")])
    moved = exc.under("payload.screening")
    assert moved.problems == (
        FieldProblem("payload.screening.kps", "a"),
        FieldProblem("payload.screening.hiv", "b"),
    )
    assert str(ProtocolInputError("x", "y")) == "x: y"


# --------------------------------------------------------------------------------------------
# to_json: byte for byte what the previous release wrote


def _old_lab(v: Any) -> dict[str, Any]:
    if isinstance(v, eligibility.LabWithUln):
        return {"value": v.value, "unit": v.unit, "uln": v.uln, "uln_unit": v.uln_unit}
    return {"value": v.value, "unit": v.unit}


def _old_temperature(t: Any) -> dict[str, Any]:
    return {"value": t.value, "unit": t.unit}


def _old_oxygen(o: Any) -> dict[str, Any]:
    return {"device": o.device, "flow_l_min": o.flow_l_min, "fio2_pct": o.fio2_pct}


def _old_crs(o: Any) -> dict[str, Any]:
    return {
        "temperature": _old_temperature(o.temperature),
        "fever_attributable_to_other_cause": o.fever_attributable_to_other_cause,
        "antipyretics_given": o.antipyretics_given,
        "anticytokine_given": o.anticytokine_given,
        "hypotension": o.hypotension,
        "vasopressors": o.vasopressors,
        "vasopressin": o.vasopressin,
        "oxygen": _old_oxygen(o.oxygen),
        "death_due_to_crs": o.death_due_to_crs,
    }


def _old_ice_items(i: Any) -> dict[str, Any]:
    return {
        "orientation": i.orientation,
        "naming": i.naming,
        "command": i.command,
        "writing": i.writing,
        "attention": i.attention,
    }


def _old_icans(o: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"age_years": o.age_years, "ice_score": o.ice_score}
    if o.ice_items is not None:
        data["ice_items"] = _old_ice_items(o.ice_items)
    data.update(
        consciousness=o.consciousness,
        seizure=o.seizure,
        motor=o.motor,
        raised_icp=o.raised_icp,
        awake_with_global_aphasia=o.awake_with_global_aphasia,
        attributable_to_other_cause=list(o.attributable_to_other_cause),
    )
    return data


def _old_report(r: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": r.kind, "term": r.term}
    if r.observations is not None:
        obs = r.observations
        data["observations"] = (
            _old_crs(obs) if isinstance(obs, toxicity.CrsObservations) else _old_icans(obs)
        )
    else:
        data.update(grade=r.grade, scale=r.scale, scale_version=r.scale_version)
    return data


def _old_grade(g: Any) -> dict[str, Any]:
    return {
        "kind": g.kind,
        "term": g.term,
        "grade": g.grade,
        "scale": g.scale,
        "scale_version": g.scale_version,
        "derived": g.derived,
        "reasons": list(g.reasons),
    }


def _old_count(c: Any) -> dict[str, Any] | None:
    return None if c is None else {"value": c.value, "unit": c.unit}


def _old_assessment(a: Any) -> dict[str, Any]:
    m = a.mrd
    return {
        "marrow_blasts_pct": a.marrow_blasts_pct,
        "baseline_marrow_blasts_pct": a.baseline_marrow_blasts_pct,
        "circulating_blasts_present": a.circulating_blasts_present,
        "circulating_blasts_pct": a.circulating_blasts_pct,
        "anc": _old_count(a.anc),
        "platelets": _old_count(a.platelets),
        "extramedullary_disease": a.extramedullary_disease,
        "cns_status": a.cns_status,
        "baseline_extramedullary_disease": a.baseline_extramedullary_disease,
        "mrd": None
        if m is None
        else {"value": m.value, "unit": m.unit, "method": m.method, "sensitivity": m.sensitivity},
        "criteria": a.criteria,
    }


def _old_plan(p: Any) -> dict[str, Any]:
    return {
        "weight_kg": p.weight_kg,
        "cells_per_kg": p.cells_per_kg,
        "total_cells": p.total_cells,
        "fraction_cells": list(p.fraction_cells),
        "counted_quantity": p.counted_quantity,
    }


def _same_bytes(new: dict[str, Any], old: dict[str, Any]) -> None:
    assert json.dumps(new) == json.dumps(old)
    assert json.dumps(new, sort_keys=True, separators=(",", ":")) == json.dumps(
        old, sort_keys=True, separators=(",", ":")
    )
    assert [type(v) for v in new.values()] == [type(v) for v in old.values()]


@settings(max_examples=300, deadline=None)
@given(screenings())
def test_screening_labs_json_is_unchanged(raw: dict[str, Any]) -> None:
    data = eligibility.parse_screening(raw)
    for key in ("creatinine", "alt", "ast", "bilirubin", "hemoglobin"):
        lab = getattr(data, key)
        if lab is not None:
            _same_bytes(lab.to_json(), _old_lab(lab))


@settings(max_examples=400, deadline=None)
@given(raw=changed("toxicity"))
def test_toxicity_json_is_unchanged(raw: dict[str, Any]) -> None:
    try:
        report = toxicity.parse_toxicity_report(raw)
    except ProtocolInputError:
        return
    _same_bytes(report.to_json(), _old_report(report))
    obs = report.observations
    if isinstance(obs, toxicity.CrsObservations):
        _same_bytes(obs.temperature.to_json(), _old_temperature(obs.temperature))
        _same_bytes(obs.oxygen.to_json(), _old_oxygen(obs.oxygen))
        for scale in ("ASTCT", "CTCAE"):
            try:
                grade = toxicity.grade_toxicity(report, scale)
            except ProtocolInputError:
                continue
            _same_bytes(grade.to_json(), _old_grade(grade))
    elif isinstance(obs, toxicity.IcansObservations) and obs.ice_items is not None:
        _same_bytes(obs.ice_items.to_json(), _old_ice_items(obs.ice_items))
    if obs is None or isinstance(obs, toxicity.IcansObservations):
        try:
            grade = toxicity.grade_toxicity(report)
        except ProtocolInputError:
            return
        _same_bytes(grade.to_json(), _old_grade(grade))


@settings(max_examples=400, deadline=None)
@given(raw=changed("assessment"))
def test_assessment_json_is_unchanged(raw: dict[str, Any]) -> None:
    try:
        a = response.parse_response_assessment(raw)
    except ProtocolInputError:
        return
    _same_bytes(a.to_json(), _old_assessment(a))
    for count in (a.anc, a.platelets):
        if count is not None:
            _same_bytes(count.to_json(), _old_count(count) or {})


@settings(max_examples=100, deadline=None)
@given(st.floats(0.5, 400))
def test_course_plan_json_is_unchanged(weight: float) -> None:
    plan = dosing.plan_course(weight)
    _same_bytes(plan.to_json(), _old_plan(plan))


# --------------------------------------------------------------------------------------------
# JSON Schema from the Structs vs the hand-written schemas.py


def _hand_written(name: str) -> dict[str, Any]:
    return {**DEFS[name], "$defs": DEFS}


def _derived(name: str) -> dict[str, Any]:
    return msgspec.json.schema(PAYLOAD_TYPES[name])


def _accepted(schema: dict[str, Any], data: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(data)


@pytest.mark.parametrize("name", list(PAYLOAD_TYPES))
def test_the_derived_schema_is_valid_json_schema(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(_derived(name))


#: Payload type -> the examples' key (crs/icans observations come from toxicity reports).
_EXAMPLE_OF = {
    "screening": "screening",
    "toxicity": "toxicity",
    "assessment": "assessment",
    "weight": "weight",
    "cells": "cells",
}


@pytest.mark.parametrize("name", list(_EXAMPLE_OF))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_derived_schema_accepts_what_the_hand_written_one_accepts(
    name: str, data: st.DataObject
) -> None:
    """For a payload the parser accepts: accepted by schemas.py => accepted by the Struct's
    schema. (The gap found: none on these examples; the derived schema is the stricter where
    the Struct is: ``kps`` as a whole number, the lab units by lab.)"""
    raw = json.loads(json.dumps(data.draw(changed(_EXAMPLE_OF[name])), allow_nan=True))
    if _outcome(PARSERS[name], raw)[0] != "ok":
        return
    if _accepted(_hand_written(name), raw):
        assert _accepted(_derived(name), raw), raw


@pytest.mark.parametrize(
    ("name", "kind"), [("crs_observations", "CRS"), ("icans_observations", "ICANS")]
)
def test_the_derived_observation_schemas_accept_the_examples(name: str, kind: str) -> None:
    for raw in EXAMPLES["toxicity"]:
        obs = raw.get("observations")
        if raw["kind"] == kind and obs is not None:
            assert _accepted(_hand_written(name), obs)
            assert _accepted(_derived(name), obs)


@pytest.mark.parametrize(
    ("name", "raw", "field"),
    [
        (
            "screening",
            {"bilirubin": MappingProxyType({"value": 1, "unit": "mg/dL", "x": 1})},
            "bilirubin.x",
        ),
        (
            "toxicity",
            {
                "kind": "CRS",
                "observations": {
                    "temperature": {"value": 38.5, "unit": "C"},
                    "hypotension": False,
                    "oxygen": MappingProxyType({"device": "none", "x": 1}),
                },
            },
            "observations.oxygen.x",
        ),
        (
            "toxicity",
            {"kind": "CRS", "observations": MappingProxyType({**crs(1)["observations"], "x": 1})},
            "observations.x",
        ),
        (
            "assessment",
            {
                "marrow_blasts_pct": 3,
                "anc": MappingProxyType({"value": 1, "unit": "10^9/L", "x": 1}),
            },
            "anc.x",
        ),
    ],
)
def test_unknown_keys_of_a_nested_read_only_mapping_are_refused(
    name: str, raw: dict[str, Any], field: str
) -> None:
    """msgspec does not refuse unknown keys of a mapping that is not a dict: such a payload is
    checked field by field."""
    with pytest.raises(ProtocolInputError) as caught:
        PARSERS[name](raw)
    assert caught.value.field == field
