"""Guarded dry runs of protocol moves, against a bare ``transitions`` trigger in the same run.

Target (issue #2): a guarded dry run of a move costs <= 50 microseconds.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Mapping
from typing import Any

from transitions import Machine

from cart_course.demo import assessment, crs, eligible_screening
from cart_course.protocol.commands import allowed_now, prepare
from cart_course.protocol.eligibility import parse_screening
from cart_course.protocol.machine import Probe, dry_run_by_trigger
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.versions import CURRENT

from .harness import QUICK, Section, per_call_us

TARGET_US = 50.0


class _Probe:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = "a"


def bare_trigger() -> Any:
    """A Machine with model=None, one transition, no conditions: the library's own floor."""
    machine = Machine(
        model=None,
        states=["a", "b"],
        transitions=[{"trigger": "go", "source": "a", "dest": "b"}],
        initial=None,
        auto_transitions=False,
    )
    event = machine.events["go"]

    def trigger() -> bool:
        return bool(event.trigger(_Probe()))

    return trigger


def _d2_facts() -> dict[str, Any]:
    return {
        "day": 2,
        "course_number": 1,
        "weight_kg": 68.4,
        "previous_date": "2026-01-14",
        "infusion_date": "2026-01-15",
        "delivered_before": 6.9e6,
        "fractions_cancelled": False,
        "open_toxicities": [{"id": "CRS-1", "kind": "CRS", "grade": 0}],
        "cells": 2.05e7,
        "dose": {"value": 2.05e7, "unit": "cells"},
        "product_lot": "LOT-1",
    }


def _bedside_facts() -> dict[str, Any]:
    """What ``give_infusion`` of a tracked product's D2 bag adds to the facts (issue 15)."""
    return {
        "product_tracked": True,
        "bags_available": 1,
        "bag_id": "LOT-1-2",
        "bag": {
            "bag_id": "LOT-1-2",
            "lot_id": "LOT-1",
            "collection_id": "G123498654321H",
            "lot_status": "released",
            "lot_course": 1,
            "expires_at": "2027-01-01T00:00:00+00:00",
            "cells": 2.05e7,
            "fraction": 2,
            "infused_version": None,
        },
        "verified_by": "rn.baker",
        "administered_by": "rn.adams",
        "thawed_at": "2026-01-15T09:10:00+00:00",
        "infused_at": "2026-01-15T09:30:00+00:00",
    }


def _infused_d1_with_open_crs() -> PatientRecord:
    """A record after D1 with a CRS grade 1 open (a hold): 8 moves to judge, 6 with rules."""
    record = PatientRecord(patient_id="bench")
    start = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)
    d1 = {
        "day": 1,
        "weight": {"value": 70, "unit": "kg"},
        "cells": {"value": 7e6, "unit": "cells"},
    }
    steps: list[tuple[str, dict[str, Any], int]] = [
        ("screen", {"screening": eligible_screening(random.Random(1))}, 0),
        ("record_apheresis", {"apheresis_contraindication": False}, 1),
        ("give_infusion", d1, 10),
        ("report_toxicity", {"toxicity": crs(1)}, 10),
    ]
    for command, payload, days in steps:
        when = start + dt.timedelta(days=days)
        p = prepare(record, command, payload, when, None, CURRENT)
        p.apply_to(record, occurred_at=when.isoformat(), protocol_version=CURRENT.id)
    return record


class _ThroughTheLibrary:
    """A protocol version whose 'allowed moves now' fires every move of the state through the
    ``transitions`` machine (a hypothetical probe per move, the same facts): the library path
    the direct evaluation is measured against."""

    def __init__(self, version: Any) -> None:
        self.version = version

    def allowed_moves_by(
        self, state: str, facts_of: Callable[[str], Mapping[str, Any]]
    ) -> list[str]:
        machine, params = self.version.machine, self.version.params
        return [
            trigger
            for trigger, event in machine.events.items()
            if state in event.transitions
            and dry_run_by_trigger(
                machine, Probe(state, facts_of(trigger), params, hypothetical=True), trigger
            ).allowed
        ]


def run() -> Section:
    n = 2_000 if QUICK else 20_000
    repeat = 3 if QUICK else 7
    bare = bare_trigger()
    d2 = _d2_facts()
    screening = {
        "screening": parse_screening(eligible_screening(random.Random(1))).to_json(),
        "screening_date": "2026-01-05",
    }
    d2_refused = {**d2, "cells": 4.0e7, "infusion_date": "2026-01-17"}
    d2_bag = {**d2, **_bedside_facts()}
    cont = {"response": "PR", "course_number": 2}
    assess = {"fractions_cancelled": False, "assessment": assessment("PR")}
    v = CURRENT

    def screen() -> bool:
        # a fresh dict per call: the eligibility verdict is not cached between dry runs
        return v.dry_run("candidate", "screen", dict(screening)).allowed

    cases = [
        ("bare transitions trigger (model=None, 1 transition, no conditions)", bare),
        ("infuse_d2 dry run, allowed (6 rules)", lambda: v.dry_run("infused_d1", "infuse_d2", d2)),
        (
            "infuse_d2, the same dry run through dry_run_by_trigger (explicit library path)",
            lambda: dry_run_by_trigger(v.machine, Probe("infused_d1", d2, v.params), "infuse_d2"),
        ),
        (
            "infuse_d2 dry run, refused (rules named and explained)",
            lambda: v.dry_run("infused_d1", "infuse_d2", d2_refused),
        ),
        (
            "infuse_d2 dry run with the bedside check of a tracked product's bag",
            lambda: v.dry_run("infused_d1", "infuse_d2", d2_bag),
        ),
        (
            "continue_treatment dry run (PR, course 2)",
            lambda: v.dry_run("assessed", "continue_treatment", cont),
        ),
        ("screen dry run with eligibility (24 criteria)", screen),
        (
            "assess_response dry run with response classification",
            lambda: v.dry_run("infused_d3", "assess_response", dict(assess)),
        ),
    ]
    results = [(name, per_call_us(fn, n, repeat)) for name, fn in cases]
    base = results[0][1]

    # The whole decision of one command (parse payload, gather facts, dry run, outcome).
    record = PatientRecord(patient_id="bench")
    when = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)
    payload = {"screening": eligible_screening(random.Random(1))}
    prep = per_call_us(lambda: prepare(record, "screen", payload, when, None, v), n // 4, repeat)
    held = _infused_d1_with_open_crs()
    library = _ThroughTheLibrary(v)
    assert allowed_now(held, library) == allowed_now(held, v)  # type: ignore[arg-type]
    assert allowed_now(record, library) == allowed_now(record, v)  # type: ignore[arg-type]
    allowed_pairs: dict[str, list[float]] = {"direct": [], "library": [], "direct held": []}
    allowed_pairs["library held"] = []
    for _ in range(repeat):  # the two paths in turn, so both see the same machine load
        allowed_pairs["direct"].append(per_call_us(lambda: allowed_now(record, v), n // 4, 1))
        allowed_pairs["library"].append(
            per_call_us(lambda: allowed_now(record, library), n // 4, 1)  # type: ignore[arg-type]
        )
        allowed_pairs["direct held"].append(per_call_us(lambda: allowed_now(held, v), n // 4, 1))
        allowed_pairs["library held"].append(
            per_call_us(lambda: allowed_now(held, library), n // 4, 1)  # type: ignore[arg-type]
        )
    allowed, allowed_lib = min(allowed_pairs["direct"]), min(allowed_pairs["library"])
    allowed_held = min(allowed_pairs["direct held"])
    allowed_held_lib = min(allowed_pairs["library held"])
    results += [
        ("prepare(screen): parse payload, gather facts, guard, outcome (whole command)", prep),
        ("allowed moves now (candidate)", allowed),
        ("allowed moves now (candidate), every move fired by `transitions` instead", allowed_lib),
        ("allowed moves now (infused_d1, a CRS hold open: 8 moves, 6 with rules)", allowed_held),
        (
            "allowed moves now (infused_d1, CRS hold), every move fired by `transitions` instead",
            allowed_held_lib,
        ),
    ]

    rows = []
    for name, us in results:
        guarded = "dry run" in name and "reference" not in name
        rows.append(
            {
                "operation": name,
                "us per call": us,
                "x bare trigger": us / base,
                "target <= 50 us": ("met" if us <= TARGET_US else "MISSED") if guarded else "",
            }
        )
    d2_us = results[1][1]
    return Section(
        title="Protocol: guarded dry runs",
        method=(
            f"`bench/bench_protocol.py`: best of {repeat} loops of {n:,} calls (prepare and "
            f"allowed moves: {n // 4:,}), microseconds per call, each next to a bare `transitions` "
            "trigger (`Machine(model=None)`, one transition, no conditions, fired on a trivial "
            "probe) measured in the same run. A guarded dry run builds a throwaway probe holding "
            "the state and the facts and fires the trigger on it through the protocol version's "
            "`transitions` machine (one machine per version, never one per patient); on refusal "
            "it names and explains each failed rule. 'Allowed moves now' evaluates the same "
            "machine's transition table directly, many moves at a time (a test proves it answers "
            "as the library does); the rows 'fired by `transitions` instead' answer the same "
            "question through the library (a hypothetical probe per move of the state, each "
            "trigger fired by the machine, the same facts), the two paths in turn in the same "
            "run (best of each)."
        ),
        rows=rows,
        notes=[
            f"infuse_d2 guarded dry run: {d2_us:.1f} us = {d2_us / base:.1f}x a bare trigger "
            f"({base:.1f} us); target <= {TARGET_US:.0f} us "
            f"{'met' if d2_us <= TARGET_US else 'MISSED'}.",
            f"allowed moves now, direct evaluation vs every move fired by `transitions`: "
            f"{allowed:.1f} vs {allowed_lib:.1f} us (candidate, {allowed_lib / allowed:.1f}x), "
            f"{allowed_held:.1f} vs {allowed_held_lib:.1f} us (CRS hold, "
            f"{allowed_held_lib / allowed_held:.1f}x). Every recorded command and every dry run "
            "of a command is fired by the library; only this hypothetical question (asked after "
            "each command of the command path, by the views and by `GET .../allowed`) uses the "
            "direct evaluation, which tests/unit/test_machine_direct.py proves answers alike.",
        ],
    )
