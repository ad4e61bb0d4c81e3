"""The query rules (pure): what each finds, and that running them is idempotent and that a
corrected record closes its query (hypothesis), with the record's queries evolved by the same
code the course's events run (``queries.evolve_query``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cart_course.protocol.queries import RULES_ACTOR, evolve_query, query_id_of
from cart_course.protocol.query_rules import RULES, Entry, findings, reconcile
from cart_course.protocol.record import PatientRecord


def infusion(version: int, day: int = 2, **payload: Any) -> Entry:
    deviations = payload.pop("deviations", [])
    return Entry(
        version=version,
        trigger=f"infuse_d{day}",
        payload={"day": day, "cells": {"value": 2e7, "unit": "cells"}, **payload},
        outcome={"deviations": deviations},
    )


def test_each_rule_finds_what_it_says_and_nothing_else() -> None:
    assert [f.rule for f in findings([infusion(5)])] == ["fraction_unverified"]
    assert findings([infusion(5, product_lot="LOT-1")]) == []
    assert findings([infusion(5, bag_id="B-1", verified_by="rn.b")]) == []
    (f,) = findings([infusion(6, product_lot="L", deviations=["D2 is 40 % above plan"])])
    assert (f.rule, f.version, f.field) == (
        "deviation_without_reason",
        6,
        "payload.deviation_reason",
    )
    assert "40 % above plan" in f.text
    assert (
        findings([infusion(6, product_lot="L", deviations=["x"], deviation_reason="investigator")])
        == []
    )
    assessment = Entry(
        version=9, trigger="assess_response", payload={"assessment": {"marrow_blasts_pct": 3.0}}
    )
    (f,) = findings([assessment])
    assert f.field == "payload.assessment.baseline_marrow_blasts_pct"
    visit = Entry(
        version=12,
        trigger="record_follow_up",
        payload={"visit": "M3"},
        outcome={
            "visit": "M3",
            "in_window": False,
            "window_start": "2026-04-01",
            "window_end": "2026-04-15",
            "days_outside_window": 9,
        },
    )
    (f,) = findings([visit])
    assert (f.rule, f.field) == ("follow_up_out_of_window", "occurred_at") and "9 days" in f.text
    in_window = Entry(
        version=12, trigger="record_follow_up", payload={}, outcome={"in_window": True}
    )
    assert findings([in_window]) == []
    assert {r.id for r in RULES} == {
        "fraction_unverified",
        "deviation_without_reason",
        "response_without_baseline",
        "follow_up_out_of_window",
    }


def _apply(record: PatientRecord, entries: list[Entry], versions: list[int]) -> int:
    """Run the rules as the service does: record what reconcile says; returns the changes."""
    plan = reconcile(findings(entries), record.queries, versions)
    for f in plan.open:
        v = record.version + 1
        evolve_query(
            record, action="open", query_id=query_id_of(v), status="open", text=f.text,
            on_version=f.version, field=f.field, correction=None, rule=f.rule,
            actor=RULES_ACTOR, role="system", reason=None, occurred_at="2026-01-01T00:00:00+00:00",
            recorded_at=f"2026-01-01T00:00:{v % 60:02d}+00:00", version=v,
        )  # fmt: skip
    for qid in plan.close:
        v = record.version + 1
        evolve_query(
            record, action="close", query_id=qid, status="closed", text=None, on_version=None,
            field=None, correction=None, rule=None, actor=RULES_ACTOR, role="system",
            reason="data corrected", occurred_at="2026-01-01T00:00:00+00:00",
            recorded_at="2026-01-01T00:01:00+00:00", version=v,
        )  # fmt: skip
    return len(plan.open) + len(plan.close)


_payload = st.fixed_dictionaries(
    {},
    optional={
        "product_lot": st.just("LOT-1"),
        "bag_id": st.just("B-1"),
        "verified_by": st.just("rn.b"),
        "deviation_reason": st.sampled_from(["investigator's decision", "  "]),
    },
)
_entry = st.one_of(
    st.builds(
        lambda day, p, dev: ("infusion", day, p, dev),
        st.integers(1, 3),
        _payload,
        st.lists(st.just("dose outside tolerance"), max_size=1),
    ),
    st.builds(lambda b: ("assess", b), st.booleans()),
    st.builds(lambda w: ("visit", w), st.booleans()),
)


def _entries(raw: list[Any]) -> list[Entry]:
    out = []
    for i, item in enumerate(raw):
        version = 2 + i
        if item[0] == "infusion":
            _, day, p, dev = item
            out.append(infusion(version, day, deviations=list(dev), **p))
        elif item[0] == "assess":
            baseline = {"baseline_marrow_blasts_pct": 60.0} if item[1] else {}
            out.append(
                Entry(version=version, trigger="assess_response", payload={"assessment": baseline})
            )
        else:
            out.append(
                Entry(
                    version=version,
                    trigger="record_follow_up",
                    payload={},
                    outcome={"in_window": item[1], "visit": "M2"},
                )
            )
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(_entry, min_size=1, max_size=8))
def test_running_the_rules_twice_opens_nothing_new(raw: list[Any]) -> None:
    entries = _entries(raw)
    record = PatientRecord(patient_id="P-1", version=1 + len(entries))
    versions = [e.version for e in entries]
    first = _apply(record, entries, versions)
    assert first == len(findings(entries))
    assert _apply(record, entries, versions) == 0
    # never two unresolved system queries for one rule, event and field
    keys = [
        (q["rule"], q["on_version"], q["field"])
        for q in record.queries.values()
        if q["status"] != "closed"
    ]
    assert len(keys) == len(set(keys)) == len(findings(entries))


@settings(max_examples=150, deadline=None)
@given(st.lists(_entry, min_size=1, max_size=8), st.data())
def test_a_corrected_record_closes_its_query(raw: list[Any], data: st.DataObject) -> None:
    entries = _entries(raw)
    record = PatientRecord(patient_id="P-1", version=1 + len(entries))
    _apply(record, entries, [e.version for e in entries])
    found = findings(entries)
    if not found:
        return
    target = data.draw(st.sampled_from(found))
    broken = next(e for e in entries if e.version == target.version)
    fixed = Entry(
        version=broken.version,
        trigger=broken.trigger,
        payload={
            **broken.payload,
            "product_lot": "LOT-9",
            "deviation_reason": "investigator's decision",
            **(
                {"assessment": {**broken.payload["assessment"], "baseline_marrow_blasts_pct": 55.0}}
                if "assessment" in broken.payload
                else {}
            ),
        },
        outcome={
            **broken.outcome,
            **({"in_window": True} if "in_window" in broken.outcome else {}),
        },
    )
    changes = _apply(record, [fixed], [fixed.version])
    assert changes == sum(1 for f in found if f.version == target.version)
    for q in record.queries.values():
        closed = q["status"] == "closed"
        assert closed == (q["on_version"] == target.version), q
        if closed:
            assert q["closed_by"] == RULES_ACTOR
    # the corrected record stays quiet
    assert _apply(record, [fixed], [fixed.version]) == 0


def test_a_query_a_monitor_closed_is_not_asked_again() -> None:
    entry = infusion(5)
    record = PatientRecord(patient_id="P-1", version=5)
    _apply(record, [entry], [5])
    (qid,) = record.queries
    evolve_query(
        record, action="close", query_id=qid, status="closed", text=None, on_version=None,
        field=None, correction=None, rule=None, actor="cra.kim", role="monitor",
        reason="lot unknown: product from before tracking", occurred_at="2026-01-02T00:00:00+00:00",
        recorded_at="2026-01-02T00:00:00+00:00", version=7,
    )  # fmt: skip
    assert _apply(record, [entry], [5]) == 0
