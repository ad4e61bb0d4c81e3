"""Random command sequences through the pure core (``commands.prepare`` + ``record.evolve``).

Hypothesis drives any order of commands, most of which the protocol refuses; every accepted move
is recorded and the invariants of the trial are checked after each step.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cart_course.demo import assessment, crs, eligible_screening, icans
from cart_course.protocol.commands import MoveRefusedError, prepare
from cart_course.protocol.dosing import not_above_plan, within_tolerance
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.record import PatientRecord, evolve
from cart_course.protocol.states import INFUSION_TRIGGERS, TERMINAL
from cart_course.protocol.versions import CURRENT

P = CURRENT.params
#: Who records every move (the first verifier of an infusion's bedside check).
ACTOR = "rn.adams"
TERMINAL_NAMES = {s.value for s in TERMINAL}
REASONS = st.sampled_from([None, "clinical decision with the patient"])
FACTORS = st.sampled_from([1.0, 1.0, 1.0, 0.8, 1.2, 0.79, 1.21, 2.0, 0.5])
GAPS = st.sampled_from([1, 1, 1, 0, 2, 5])


def roundtrip(data: Any) -> Any:
    return json.loads(json.dumps(data))


COMMAND_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "screen": st.fixed_dictionaries(dict(eligible=st.booleans(), again=st.booleans(), gap=GAPS)),
    "apheresis": st.fixed_dictionaries(
        dict(contraindication=st.booleans(), gap=GAPS, tracked=st.booleans())
    ),
    "manufacture": st.fixed_dictionaries(dict(lot=st.integers(0, 3))),
    "release": st.fixed_dictionaries(
        dict(
            lot=st.integers(0, 3),
            decision=st.sampled_from(["released", "released", "rejected"]),
            failed_test=st.booleans(),
            exception=st.booleans(),
            gap=GAPS,
        )
    ),
    "repeat_apheresis": st.fixed_dictionaries(dict(reason=REASONS, gap=GAPS)),
    "infuse": st.fixed_dictionaries(
        dict(
            day=st.sampled_from([1, 2, 3]),
            factor=FACTORS,
            gap=GAPS,
            deviation=st.sampled_from([None, None, "documented: product release delayed"]),
            per_kg=st.booleans(),
            bag=st.sampled_from([None, "right", "right", "right", "other", "any"]),
            same_verifier=st.sampled_from([False, False, False, True]),
            thawed=st.sampled_from([10, 10, 10, 45]),
        )
    ),
    "report_toxicity": st.fixed_dictionaries(
        dict(
            kind=st.sampled_from(["CRS", "ICANS", "other"]),
            grade=st.integers(1, 3),
            update=st.sampled_from([None, None, 0, 1, 2]),
        )
    ),
    "resolve_toxicity": st.fixed_dictionaries(dict(which=st.integers(0, 3))),
    "cancel": st.fixed_dictionaries(dict(reason=REASONS)),
    "assess": st.fixed_dictionaries(
        dict(
            response=st.sampled_from(["CR", "CRi", "PR", "PR", "NR"]),
            clinician=st.sampled_from([None, None, "CR", "PR"]),
            reason=REASONS,
        )
    ),
    "decide": st.fixed_dictionaries(
        dict(
            command=st.sampled_from(
                ["continue_treatment", "cease", "discontinue", "withdraw", "record_death"]
            ),
            reason=REASONS,
            weight=st.sampled_from([1, 1, 1, 1, 1, 1, 1, 1, 1, 0]),
        )
    ),
    # after the course (issue 16)
    "follow_up": st.fixed_dictionaries(
        dict(
            visit=st.integers(0, 30),
            relapse=st.sampled_from([None, None, "positive", "negative"]),
            gap=st.sampled_from([1, 7, 30, 60]),
        )
    ),
    "missed_visit": st.fixed_dictionaries(
        dict(visit=st.integers(0, 30), gap=st.sampled_from([1, 30, 90]))
    ),
    "adverse_event": st.fixed_dictionaries(
        dict(
            grade=st.integers(1, 5),
            seriousness=st.sampled_from([[], ["hospitalisation"], ["life_threatening"]]),
            expected=st.booleans(),
            attribution=st.sampled_from(["unrelated", "possible", "definite", "bogus"]),
            aware_hours=st.sampled_from([-1, 0, 2, 30]),
            update=st.sampled_from([None, None, 0, 1]),
        )
    ),
    "sae_report": st.fixed_dictionaries(
        dict(
            which=st.integers(0, 3),
            report=st.sampled_from(["initial", "initial", "expedited", "follow_up"]),
            hours=st.sampled_from([-2, 1, 23, 25, 24 * 8, 24 * 16]),
        )
    ),
    "death_cause": st.fixed_dictionaries(
        dict(
            category=st.sampled_from(["adverse_event", "disease_progression", "infection"]),
            which=st.integers(0, 3),
            weight=st.sampled_from([1, 1, 1, 0]),
        )
    ),
}
#: The moves after the end of treatment (issue 16): none changes the state.
AFTER_COURSE = ("record_follow_up", "record_missed_visit", "record_sae_report")


class ProtocolCourse(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.record = PatientRecord(patient_id="P-stateful")
        self.moves: list[dict[str, Any]] = []
        self.today = dt.date(2026, 1, 5)
        self.weight = 62.5
        self.snapshot: PatientRecord | None = None
        self.opened: list[str] = []  # ids of the episodes opened (reports without toxicity_id)

    # -- driving ---------------------------------------------------------------------------
    def attempt(
        self,
        command: str,
        payload: dict[str, Any],
        reason: str | None = None,
        gap: int = 0,
        hours: int = 0,
    ) -> None:
        when = self.today + dt.timedelta(days=gap)
        occurred = dt.datetime.combine(when, dt.time(10), tzinfo=dt.UTC) + dt.timedelta(hours=hours)
        when = occurred.date()
        self.at = occurred
        try:
            p = prepare(self.record, command, payload, occurred, reason, CURRENT, actor=ACTOR)
        except (MoveRefusedError, ProtocolInputError):
            return
        move = {
            "trigger": p.trigger,
            "to_state": p.to_state,
            "facts": p.facts,
            "outcome": p.outcome,
            "occurred_at": occurred.isoformat(),
            "version": len(self.moves) + 1,
            "protocol_version": CURRENT.id,
            "reason": reason,
        }
        self.check_move(p.from_state, move, payload)
        event(f"accepted {p.trigger} -> {p.to_state}")
        if p.trigger == "continue_treatment":
            course = self.record.course
            response = course.response if course else None
            event(f"another course decided after {response} in course {self.record.course_number}")
        if p.outcome.get("deviations"):
            event("infusion recorded with a deviation")
        evolve(self.record, **move)
        if p.trigger == "report_toxicity" and "toxicity_id" not in payload:
            self.opened.append(p.outcome["toxicity_id"])
        stored = roundtrip(move)  # what an event store gives back
        self.moves.append(stored)
        if self.snapshot is not None:
            evolve(self.snapshot, **roundtrip(stored))
        self.today = when

    def check_move(self, from_state: str, move: dict[str, Any], payload: dict[str, Any]) -> None:
        trigger = move["trigger"]
        if trigger == "report_toxicity":
            tox_id = move["outcome"]["toxicity_id"]
            existing = self.record.toxicities.get(tox_id)
            if "toxicity_id" in payload:  # an update: of an open episode of its kind only
                assert existing is not None and existing.open
                assert existing.kind == move["outcome"]["kind"]
                event("an open episode updated")
            else:  # a new episode: its id names no episode on record, open or resolved
                assert existing is None, f"{tox_id} was assigned again"
        if trigger == "resolve_toxicity":
            episode = self.record.toxicities[move["facts"]["toxicity_id"]]
            onset = dt.datetime.fromisoformat(episode.onset)
            assert dt.datetime.fromisoformat(move["occurred_at"]) >= onset
        if trigger in INFUSION_TRIGGERS and self.record.collections:
            # the product is tracked: no infusion without a released bag of this patient, ever
            facts = move["facts"]
            bag = self.record.bags.get(facts.get("bag_id"))
            assert bag is not None, "an infusion of a tracked product without a bag of its own"
            lot = self.record.lots[bag["lot_id"]]
            assert lot["status"] == "released"
            assert bag["infused_version"] is None, "a bag infused twice"
            assert bag["fraction"] == move["outcome"]["day"]
            assert lot["course_number"] == move["outcome"]["course_number"]
            assert facts["verified_by"] != ACTOR
            thawed = dt.datetime.fromisoformat(facts["thawed_at"])
            given = dt.datetime.fromisoformat(move["occurred_at"])
            assert dt.timedelta(0) <= given - thawed <= dt.timedelta(minutes=P.thaw_limit_minutes)
            event("a tracked product's bag infused after a bedside check")
        if trigger == "release_product":
            failed = [t for t in move["facts"]["tests"] if not t["passed"]]
            if failed and move["facts"]["decision"] == "released":
                assert move["facts"]["exception_reason"].strip()
                event("an out-of-specification release with its exception")
        if trigger == "repeat_apheresis":
            assert list(self.record.lots.values())[-1]["status"] == "rejected"
            event("a new apheresis after a failed manufacture")
        if trigger in INFUSION_TRIGGERS:
            assert from_state not in TERMINAL_NAMES, "infusion after a terminal state"
            assert all(m["to_state"] not in TERMINAL_NAMES for m in self.moves)
            day = move["outcome"]["day"]
            course = self.record.course
            given = [f.day for f in course.fractions] if course and day != 1 else []
            assert given == list(range(1, day)), f"D{day} after fractions {given}"
            if not move["facts"].get("deviation_reason"):
                out = move["outcome"]
                assert within_tolerance(out["planned_cells"], out["cells"], P.dose_tolerance)
                total = (
                    out["planned_total_cells"]
                    if day == 1
                    else (course.planned_total if course else None)
                )
                assert total is not None
                assert not_above_plan(total, out["delivered_course_total"], P.dose_tolerance)
                assert out["deviations"] == []
            else:
                assert move["facts"]["deviation_reason"].strip()
        if trigger == "continue_treatment":
            course = self.record.course
            assert course is not None
            if course.response == "PR":
                assert self.record.course_number < P.max_courses_on_pr, "fourth course on PR"

    # -- commands ----------------------------------------------------------------------------
    def screen(self, eligible: bool, again: bool, gap: int) -> None:
        data = eligible_screening(random.Random(7))
        if not eligible:
            data["lvef_pct"] = 45
        self.attempt("rescreen" if again else "screen", {"screening": data}, gap=gap)

    def apheresis(self, contraindication: bool, gap: int, tracked: bool = False) -> None:
        payload: dict[str, Any] = {"apheresis_contraindication": contraindication}
        if tracked:
            payload["din"] = "G1234 98 654321 H"
        self.attempt("record_apheresis", payload, gap=gap)

    def manufacture(self, lot: int) -> None:
        self.attempt("start_manufacture", {"lot_id": f"LOT-{lot}"}, gap=1)

    def release(
        self, lot: int, decision: str, failed_test: bool, exception: bool, gap: int
    ) -> None:
        lot_id = f"LOT-{lot}"
        payload: dict[str, Any] = {
            "lot_id": lot_id,
            "decision": decision,
            "tests": [{"name": "viability", "result": "80 %", "passed": not failed_test}],
            "released_by": "qp.novak",
            "manufactured_on": self.today.isoformat(),
        }
        if decision == "released":
            payload["expires_at"] = f"{self.today.year + 1}-01-01T00:00:00+00:00"
            payload["bags"] = [
                {
                    "bag_id": f"{lot_id}-{d}",
                    "cells": self.weight * P.cells_per_kg * f,
                    "fraction": d,
                }
                for d, f in zip((1, 2, 3), P.fractions, strict=True)
            ]
        if exception:
            payload["exception_reason"] = "no other product; investigator and QP accept"
        self.attempt("release_product", payload, gap=gap)

    def repeat_apheresis(self, reason: str | None, gap: int) -> None:
        payload = {
            "apheresis_contraindication": False,
            "collection_id": f"COL-{len(self.record.collections) + 1}",
        }
        self.attempt("repeat_apheresis", payload, reason, gap=gap)

    def right_bag(self, day: int) -> str | None:
        number = len(self.record.courses) + (1 if day == 1 else 0)
        for bag in self.record.bags.values():
            lot = self.record.lots[bag["lot_id"]]
            if (
                bag["fraction"] == day
                and bag["infused_version"] is None
                and lot["status"] == "released"
                and lot["course_number"] == number
            ):
                return str(bag["bag_id"])
        return None

    def infuse(
        self,
        day: int,
        factor: float,
        gap: int,
        deviation: str | None,
        per_kg: bool,
        bag: str | None = "right",
        same_verifier: bool = False,
        thawed: int = 10,
    ) -> None:
        per_kg_dose = P.cells_per_kg * P.fractions[day - 1] * factor
        cells = (
            {"value": per_kg_dose, "unit": "cells/kg"}
            if per_kg
            else {"value": per_kg_dose * self.weight, "unit": "cells"}
        )
        payload: dict[str, Any] = {"day": day, "cells": cells}
        if day == 1:
            payload["weight"] = {"value": self.weight, "unit": "kg"}
        if deviation:
            payload["deviation_reason"] = deviation
        named = {
            None: None,
            "right": self.right_bag(day),
            "other": "LOT-OF-ANOTHER-PATIENT-1",
            "any": next(iter(self.record.bags), None),
        }[bag]
        if named is not None:
            when = dt.datetime.combine(self.today + dt.timedelta(days=gap), dt.time(10))
            payload["bag_id"] = named
            payload["verified_by"] = ACTOR if same_verifier else "rn.baker"
            payload["thawed_at"] = (
                when.replace(tzinfo=dt.UTC) - dt.timedelta(minutes=thawed)
            ).isoformat()
        self.attempt("give_infusion", payload, gap=gap)

    def report_toxicity(self, kind: str, grade: int, update: int | None = None) -> None:
        if kind == "CRS":
            report = crs(grade)
        elif kind == "ICANS":
            report = icans(grade)
        else:
            report = {
                "kind": "other",
                "term": "febrile neutropenia",
                "grade": grade,
                "scale": "CTCAE",
                "scale_version": "5.0",
            }
        payload: dict[str, Any] = {"toxicity": report}
        if update is not None:  # name an episode on record (open or not, of any kind)
            ids = sorted(self.record.toxicities) or ["CRS-1"]
            payload["toxicity_id"] = ids[update % len(ids)]
        self.attempt("report_toxicity", payload)

    def resolve_toxicity(self, which: int) -> None:
        ids = sorted(self.record.toxicities) or ["CRS-1"]
        self.attempt("resolve_toxicity", {"toxicity_id": ids[which % len(ids)]})

    def cancel(self, reason: str | None) -> None:
        self.attempt("cancel_remaining_fractions", {}, reason)

    def assess(self, response: str, clinician: str | None, reason: str | None) -> None:
        payload: dict[str, Any] = {"assessment": assessment(response)}
        if clinician:
            payload["clinician_response"] = clinician
        self.attempt("assess_response", payload, reason, gap=25)

    def decide(self, command: str, reason: str | None, weight: int) -> None:
        if command in ("withdraw", "record_death") and weight:
            return  # keep endings rare so that long courses are explored
        self.attempt(command, {}, reason, gap=1)

    # -- after the course (issue 16) -----------------------------------------------------------
    def follow_up(self, visit: int, relapse: str | None, gap: int) -> None:
        names = [v[0] for v in P.follow_up_schedule]
        status: dict[str, Any] = {"status": "remission"}
        if relapse:
            status = {"status": "relapse", "cd19": relapse}
        self.attempt(
            "record_follow_up",
            {"visit": names[visit % len(names)], "disease_status": status},
            gap=gap,
        )

    def missed_visit(self, visit: int, gap: int) -> None:
        names = [v[0] for v in P.follow_up_schedule]
        payload = {"visit": names[visit % len(names)], "missed_reason": "no answer"}
        self.attempt("record_missed_visit", payload, gap=gap)

    def adverse_event(
        self,
        grade: int,
        seriousness: list[str],
        expected: bool,
        attribution: str,
        aware_hours: int,
        update: int | None,
    ) -> None:
        occurred = dt.datetime.combine(self.today, dt.time(10), tzinfo=dt.UTC)
        payload: dict[str, Any] = {
            "toxicity": {
                "kind": "other",
                "term": "sepsis",
                "grade": grade,
                "scale": "CTCAE",
                "scale_version": "5.0",
            },
            "adverse_event": {
                "attribution": attribution,
                "seriousness": seriousness,
                "expected": expected,
                "aware_at": (occurred + dt.timedelta(hours=aware_hours)).isoformat(),
            },
        }
        if update is not None:
            ids = sorted(t for t in self.record.toxicities if t.startswith("other")) or ["other-1"]
            payload["toxicity_id"] = ids[update % len(ids)]
        self.attempt("report_toxicity", payload)

    def sae_report(self, which: int, report: str, hours: int) -> None:
        ids = sorted(self.record.sae_cases) or ["other-1"]
        case = self.record.sae_cases.get(ids[which % len(ids)])
        base = dt.datetime.combine(self.today, dt.time(10), tzinfo=dt.UTC)
        if case is not None:  # sent some hours after the site became aware
            base = dt.datetime.fromisoformat(case["aware_at"])
        sent = base + dt.timedelta(hours=hours)
        payload = {"case_id": ids[which % len(ids)], "report": report, "sent_to": "sponsor"}
        gap = (sent.date() - self.today).days
        self.attempt("record_sae_report", payload, gap=gap, hours=sent.hour - 10)

    def death_cause(self, category: str, which: int, weight: int) -> None:
        if weight:
            return  # keep endings rare
        cause: dict[str, Any] = {"category": category}
        if category == "adverse_event":
            ids = sorted(self.record.toxicities) or ["CRS-1"]
            cause["toxicity_id"] = ids[which % len(ids)]
        self.attempt("record_death", {"cause_of_death": cause}, gap=1)

    @rule(
        factor=FACTORS,
        gap=GAPS,
        deviation=st.sampled_from([None, None, "documented: product release delayed"]),
        response=st.sampled_from(["CR", "PR", "PR", "NR"]),
        reason=REASONS,
        decision=st.sampled_from(["continue_treatment", "continue_treatment", "cease"]),
    )
    def next_step(
        self,
        factor: float,
        gap: int,
        deviation: str | None,
        response: str,
        reason: str | None,
        decision: str,
    ) -> None:
        """The protocol's usual next step from here, with random doses, days and decisions."""
        state = self.record.state
        if state == "candidate":
            self.screen(eligible=True, again=False, gap=1)
        elif state == "screen_failed":
            self.screen(eligible=True, again=True, gap=gap)
        elif state == "screened":
            self.apheresis(contraindication=False, gap=gap, tracked=decision == "cease")
        elif (
            state in ("apheresed", "continued")
            and self.record.collections
            and not (self.right_bag(1))
        ):
            lots = list(self.record.lots.values())
            number = len(self.record.courses) + 1
            mine = [lot for lot in lots if lot["course_number"] == number]
            if lots and lots[-1]["status"] == "rejected":
                self.repeat_apheresis(reason="the lot failed release", gap=gap)
            if not mine or mine[-1]["status"] == "rejected":
                self.manufacture(lot=len(lots))
            else:
                self.release(
                    lot=len(lots) - 1,
                    decision="rejected" if factor in (0.5, 0.79) else "released",
                    failed_test=factor == 2.0,
                    exception=reason is not None,
                    gap=gap,
                )
        elif state in ("apheresed", "continued", "infused_d1", "infused_d2"):
            course = self.record.course
            cancelled = state != "apheresed" and course is not None and course.cancelled
            open_ids = [t.id for t in self.record.open_toxicities()]
            if open_ids:
                self.attempt("resolve_toxicity", {"toxicity_id": open_ids[0]})
            elif cancelled:
                self.assess(response=response, clinician=None, reason=None)
            else:
                day = {"apheresed": 1, "continued": 1, "infused_d1": 2, "infused_d2": 3}[state]
                self.infuse(day=day, factor=factor, gap=gap, deviation=deviation, per_kg=False)
        elif state == "infused_d3":
            self.assess(response=response, clinician=None, reason=None)
        elif state == "assessed":
            self.attempt(decision, {}, reason, gap=1)

    @rule(data=st.data())
    def any_command(self, data: st.DataObject) -> None:
        """Any command with any arguments: mostly refused; accepted ones must keep the laws."""
        name = data.draw(st.sampled_from(sorted(COMMAND_ARGS)))
        getattr(self, name)(**data.draw(COMMAND_ARGS[name]))

    @rule()
    def take_snapshot(self) -> None:
        self.snapshot = PatientRecord.from_json(roundtrip(self.record.to_json()))

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def fractions_are_in_order_within_each_course(self) -> None:
        for course in self.record.courses:
            assert [f.day for f in course.fractions] == list(range(1, len(course.fractions) + 1))

    @invariant()
    def no_fourth_course_decided_on_pr(self) -> None:
        for course in self.record.courses:
            if course.decision == "continued" and course.response == "PR":
                assert course.number < P.max_courses_on_pr

    @invariant()
    def nothing_happens_after_a_terminal_state_but_follow_up(self) -> None:
        """After the end of treatment only follow-up: toxicities, and from ceased or discontinued
        a death or a withdrawal of consent, once (withdrawn and died are final)."""
        ended: str | None = None
        for move in self.moves:
            if ended is not None and move["trigger"] in AFTER_COURSE:
                assert move["to_state"] == ended  # visits and safety reports: no state change
            elif ended is not None:
                assert ended in ("ceased", "discontinued"), move
                assert move["trigger"] in (
                    "report_toxicity",
                    "resolve_toxicity",
                    "withdraw",
                    "record_death",
                )
                assert move["to_state"] in TERMINAL_NAMES
            if move["to_state"] in TERMINAL_NAMES:
                ended = move["to_state"]

    @invariant()
    def follow_up_is_after_d1_and_before_death_and_never_reopens_treatment(self) -> None:
        d1 = [m for m in self.moves if m["trigger"] == "infuse_d1"]
        died = [m for m in self.moves if m["trigger"] == "record_death"]
        for move in self.moves:
            if move["trigger"] in ("record_follow_up", "record_missed_visit"):
                when = dt.datetime.fromisoformat(move["occurred_at"])
                assert d1 and when >= dt.datetime.fromisoformat(d1[-1]["occurred_at"])
                if died:
                    assert when <= dt.datetime.fromisoformat(died[0]["occurred_at"])
                event(f"accepted {move['trigger']}")
        relapsed = [i for i, m in enumerate(self.moves) if m["outcome"].get("relapse")]
        if relapsed:
            event("a relapse recorded")
            after = self.moves[relapsed[0] :]
            assert not any(m["trigger"] in INFUSION_TRIGGERS for m in after)

    @invariant()
    def safety_clocks_are_judged_by_their_due_time(self) -> None:
        for case in self.record.sae_cases.values():
            aware = dt.datetime.fromisoformat(case["aware_at"])
            for clock in case["clocks"]:
                if clock["due_at"] is not None:
                    assert dt.datetime.fromisoformat(clock["due_at"]) > aware
                if clock["sent_at"] is None:
                    continue
                sent = dt.datetime.fromisoformat(clock["sent_at"])
                assert sent >= aware, "a report sent before awareness"
                if clock["due_at"] is None:
                    assert clock["late"] is False
                else:
                    late = sent > dt.datetime.fromisoformat(clock["due_at"])
                    assert clock["late"] is late
                    event(f"an SAE report sent {'late' if late else 'on time'}")

    @invariant()
    def a_death_from_an_episode_makes_it_grade_5_and_closes_it(self) -> None:
        for tox in self.record.toxicities.values():
            if tox.fatal:
                assert tox.grade == 5 and tox.worst_grade == 5 and not tox.open
                assert tox.ae is not None and tox.ae["outcome"] == "fatal"
                event("an episode closed at grade 5 by a death")
        assert set(self.record.open_ids) == {
            t.id for t in self.record.toxicities.values() if t.open
        }

    @invariant()
    def overdose_only_with_deviation(self) -> None:
        for course in self.record.courses:
            for f in course.fractions:
                if not within_tolerance(f.planned_cells, f.cells, P.dose_tolerance):
                    assert f.deviations
                    assert any(d["version"] == f.version for d in self.record.deviations)

    @invariant()
    def every_new_report_is_an_episode_of_its_own(self) -> None:
        """A report without a toxicity_id opens an episode under an id never used before; no
        episode is overwritten or lost."""
        assert len(set(self.opened)) == len(self.opened)
        assert set(self.opened) <= set(self.record.toxicities)

    @invariant()
    def replay_and_snapshot_equal_the_live_record(self) -> None:
        replayed = PatientRecord(patient_id="P-stateful")
        for move in self.moves:
            evolve(replayed, **roundtrip(move))
        assert replayed == self.record
        restored = PatientRecord.from_json(roundtrip(self.record.to_json()))
        assert restored == self.record
        if self.snapshot is not None:
            assert self.snapshot == self.record


ProtocolCourse.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProtocolCourse = ProtocolCourse.TestCase
