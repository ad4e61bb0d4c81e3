"""A synthetic cohort: realistic command sequences for N patients, reproducible from a seed.

Every path of the protocol appears: screen failures (and rescreens), toxicity holds, CRS of several
grades, ICANS, PR with extra courses, NR (ceased or restarted), withdrawals, a death, corrections
and documented deviations. The commands are contract envelopes; ``cart-course demo`` records them
through the service (or writes them as JSON Lines).
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from collections.abc import Iterator
from typing import Any

SCENARIOS: tuple[tuple[str, int], ...] = (
    ("complete_response", 26),
    ("crs_hold", 12),
    ("severe_crs", 9),
    ("partial_response_courses", 10),
    ("no_response_ceased", 5),
    ("no_response_restarted", 4),
    ("screen_failure", 6),
    ("rescreened", 3),
    ("icans", 6),
    ("withdrawn", 4),
    ("death", 2),
    ("corrected_dose", 6),
    ("late_fraction_deviation", 7),
)
#: Issue 20: a child with ICANS graded by the CAPD, and a D2 held by the pre-infusion gate for
#: fever then given the next day. They are the cohort's last two patients (from
#: ``ISSUE_20_MIN_COHORT`` patients on), drawn from a random generator of their own: the
#: scenarios and commands of every other patient of a seed stay what they were before.
ISSUE_20_SCENARIOS: tuple[str, ...] = ("child_icans_capd", "gate_held_d2")
ISSUE_20_MIN_COHORT = len(SCENARIOS) + len(ISSUE_20_SCENARIOS)
SERVICE = {"id": "demo.site-01.emr", "role": "service"}
CLINICIAN = {"id": "dr.demo", "role": "clinician", "name": "Dr. A. Demo"}
#: The manufacturing site's system (start of manufacture, release decisions).
MANUFACTURER = {"id": "demo.cell-lab.qa", "role": "service"}
#: The nurse who gives a tracked product's bag (the first bedside verifier); the second is named.
NURSE = {"id": "rn.demo", "role": "clinician", "name": "R. Demo, RN"}
SECOND_VERIFIER = "rn.second"
#: Tracked products (issue 15): the product of every third complete-response patient (the 2nd,
#: 5th, 8th ...) is tracked from its collection to the bedside; the first of them has a failed manufacture and a second
#: apheresis, the second an out-of-specification release with its documented exception.
TRACKED_EVERY = 3
START = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
#: The demo trial's sites (issue 17), in three time zones: patient ``i`` is screened at
#: ``DEMO_SITES[(i - 1) % 3]``. The last, Tokyo, is the site behind with its data entry (the
#: live demo holds back its last :data:`BEHIND_DAYS` days of events). One patient in ten with an
#: apheresis is transferred to the next site before the infusions (``transfer_site``).
DEMO_SITES: tuple[tuple[str, str, str], ...] = (
    ("S01", "Paris University Hospital", "Europe/Paris"),
    ("S02", "New York Cancer Center", "America/New_York"),
    ("S03", "Tokyo Medical Center", "Asia/Tokyo"),
)
BEHIND_SITE = "S03"
BEHIND_DAYS = 12
TRANSFER_EVERY = 10


def eligible_screening(rng: random.Random) -> dict[str, Any]:
    return {
        "diagnosis_rr_b_all": True,
        "failed_standard_lines": rng.choice([1, 2, 3]),
        "effective_standard_option": False,
        "cd19_expressed": True,
        "kps": rng.choice([90, 100]),
        "life_expectancy_months": rng.choice([6, 12]),
        "lvef_pct": rng.choice([55, 60, 65]),
        "ecg_obvious_abnormality": False,
        "spo2_room_air_pct": rng.choice([95, 97, 99]),
        "creatinine": {"value": round(rng.uniform(0.6, 1.1), 2), "unit": "mg/dL", "uln": 1.2},
        "alt": {"value": rng.randint(10, 60), "unit": "U/L", "uln": 40},
        "ast": {"value": rng.randint(10, 60), "unit": "U/L", "uln": 40},
        "bilirubin": rng.choice(
            [
                {"value": round(rng.uniform(0.3, 1.5), 1), "unit": "mg/dL"},
                {"value": 12.0, "unit": "umol/L"},
            ]
        ),
        "hemoglobin": rng.choice([{"value": 95, "unit": "g/L"}, {"value": 10.2, "unit": "g/dL"}]),
        "apheresis_contraindication": False,
        "informed_consent_signed": True,
        "other_primary_malignancy": False,
        "severe_uncontrolled_disease": False,
        "uncontrolled_active_infection": False,
        "hiv": False,
        "hbv": False,
        "hcv": False,
        "pregnant": False,
        "nursing": False,
        "last_systemic_glucocorticoid": None,
    }


def crs(grade: int) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "temperature": {"value": 38.4 + 0.3 * grade, "unit": "C"},
        "hypotension": grade >= 2,
        "oxygen": {"device": "none"},
    }
    if grade >= 3:
        obs["vasopressors"] = 1 if grade == 3 else 2
    if grade == 2:
        obs["oxygen"] = {"device": "low_flow_nasal_cannula", "flow_l_min": 2}
    return {"kind": "CRS", "observations": obs}


def icans(grade: int) -> dict[str, Any]:
    ice = {1: 8, 2: 5, 3: 2}[grade]
    consciousness = {1: "wakes_spontaneously", 2: "wakes_to_voice", 3: "wakes_to_touch"}[grade]
    return {
        "kind": "ICANS",
        "observations": {"age_years": 34, "ice_score": ice, "consciousness": consciousness},
    }


def assessment(response: str) -> dict[str, Any]:
    blasts = {"CR": 2.0, "CRi": 1.5, "PR": 18.0, "NR": 55.0}[response]
    anc = 0.6 if response == "CRi" else 1.8
    return {
        "marrow_blasts_pct": blasts,
        "baseline_marrow_blasts_pct": 62.0,
        "circulating_blasts_present": response == "NR",
        "anc": {"value": anc, "unit": "10^9/L"},
        "platelets": {"value": 140, "unit": "10^9/L"},
        "extramedullary_disease": "none",
        "mrd": {
            "value": 0.00002 if response == "CR" else 0.01,
            "unit": "fraction",
            "method": "flow",
            "sensitivity": 1e-5,
        },
    }


class _Patient:
    """Builds one patient's commands in clinical order."""

    def __init__(self, pid: str, start: dt.datetime, rng: random.Random) -> None:
        self.pid = pid
        self.t = start
        self.rng = rng
        self.n = 0
        self.version = 0
        self.commands: list[dict[str, Any]] = []
        self.weight = round(rng.uniform(38, 95), 1)

    def at(self, days: float = 0, hours: float = 0) -> dt.datetime:
        self.t = self.t + dt.timedelta(days=days, hours=hours)
        return self.t

    def cmd(
        self,
        command: str,
        payload: dict[str, Any] | None = None,
        *,
        reason: str | None = None,
        actor: dict[str, Any] | None = None,
        days: float = 0,
        hours: float = 1,
    ) -> dict[str, Any]:
        self.n += 1
        envelope = {
            "command": command,
            "patient_id": self.pid,
            "occurred_at": self.at(days, hours).isoformat(),
            "actor": actor or SERVICE,
            "reason": reason,
            "idempotency_key": f"demo:{self.pid}:{self.n}",
            "payload": payload or {},
        }
        self.commands.append(envelope)
        # The stream's versions: the first screening also registers the patient (version 1).
        self.version += 2 if self.version == 0 else 1
        return envelope

    def screen(self, screening: dict[str, Any] | None = None, command: str = "screen") -> None:
        self.cmd(command, {"screening": screening or eligible_screening(self.rng)}, actor=CLINICIAN)

    def apheresis(self, tracked: bool = False) -> None:
        payload: dict[str, Any] = {"apheresis_contraindication": False}
        if tracked:
            payload["collection_id"] = f"COL-{self.pid}-1"
        else:
            payload["product_id"] = f"LOT-{self.pid}"
        self.cmd("record_apheresis", payload, days=3)

    def tracked_course(self, kind: str) -> None:
        """A tracked product from the lot to three bedside-checked fractions (``kind``:
        ``normal``, ``failed`` -- a failed manufacture, then a second apheresis -- or ``oos``, an
        out-of-specification release with its exception). The random draws are the same as
        :meth:`course`'s (one per fraction), so the rest of the cohort does not change."""
        # lot and bag ids that do not spell the patient's id (a bag is read at the bedside)
        code = zlib.crc32(self.pid.encode()) % 100000
        lot = f"LOT-{code:05d}-A"
        self.cmd("start_manufacture", {"lot_id": lot}, actor=MANUFACTURER, days=1)
        passed = {"name": "sterility", "result": "no growth", "passed": True}
        if kind == "failed":
            failed = {"name": "viability", "result": "42 %", "passed": False}
            self.release(lot, [passed, failed], decision="rejected", days=9)
            self.cmd(
                "repeat_apheresis",
                {"apheresis_contraindication": False, "collection_id": f"COL-{self.pid}-2"},
                reason=f"{lot} failed release (viability 42 %): a second collection",
                days=1,
            )
            lot = f"LOT-{code:05d}-B"
            self.cmd("start_manufacture", {"lot_id": lot}, actor=MANUFACTURER, days=1)
        factors = [self.rng.uniform(0.92, 1.08) for _ in range(3)]
        labels = [
            float(f"{self.weight * 1e6 * share * f:.4g}")
            for share, f in zip((0.10, 0.30, 0.60), factors, strict=True)
        ]
        tests = [passed, {"name": "CAR expression", "result": "41 %", "passed": True}]
        exception = None
        if kind == "oos":
            tests.append({"name": "viability", "result": "67 %", "passed": False})
            exception = "viability 67 % against 70 %: no other product; investigator and QP accept"
        bags = [
            {"bag_id": f"{lot}-{day}", "cells": cells, "fraction": day}
            for day, cells in zip((1, 2, 3), labels, strict=True)
        ]
        self.release(lot, tests, bags=bags, exception=exception, days=10)
        for day in (1, 2, 3):
            self.bedside(day, f"{lot}-{day}", days=3 if day == 1 else 1)

    def release(
        self,
        lot: str,
        tests: list[dict[str, Any]],
        *,
        decision: str = "released",
        bags: list[dict[str, Any]] | None = None,
        exception: str | None = None,
        days: float = 10,
    ) -> None:
        payload: dict[str, Any] = {
            "lot_id": lot,
            "decision": decision,
            "tests": tests,
            "released_by": "qp.demo",
            "manufactured_on": (self.t + dt.timedelta(days=days - 1)).date().isoformat(),
        }
        if decision == "released":
            payload["expires_at"] = (self.t + dt.timedelta(days=days + 365)).isoformat()
            payload["bags"] = bags or []
        if exception:
            payload["exception_reason"] = exception
        self.cmd("release_product", payload, actor=MANUFACTURER, days=days)

    def bedside(self, day: int, bag: str, *, days: float = 1) -> None:
        given = self.t + dt.timedelta(days=days)
        payload: dict[str, Any] = {
            "day": day,
            "bag_id": bag,
            "verified_by": SECOND_VERIFIER,
            "thawed_at": (given - dt.timedelta(minutes=20)).isoformat(),
        }
        if day == 1:
            payload["weight"] = {"value": self.weight, "unit": "kg"}
        self.cmd("give_infusion", payload, actor=NURSE, days=days, hours=0)

    def infusion(
        self,
        day: int,
        *,
        factor: float | None = None,
        days: float = 1,
        deviation: str | None = None,
    ) -> None:
        share = (0.10, 0.30, 0.60)[day - 1]
        factor = factor if factor is not None else self.rng.uniform(0.92, 1.08)
        payload: dict[str, Any] = {
            "day": day,
            "cells": {"value": float(f"{self.weight * 1e6 * share * factor:.4g}"), "unit": "cells"},
            "product_lot": f"LOT-{self.pid}",
        }
        if day == 1:
            payload["weight"] = {"value": self.weight, "unit": "kg"}
        if deviation:
            payload["deviation_reason"] = deviation
        self.cmd("give_infusion", payload, days=days, hours=0)

    def course(self, *, first_gap: float = 14) -> None:
        self.infusion(1, days=first_gap)
        self.infusion(2)
        self.infusion(3)

    def assess(self, response: str, days: float = 26) -> None:
        self.cmd(
            "assess_response", {"assessment": assessment(response)}, actor=CLINICIAN, days=days
        )

    def toxicity(
        self, report: dict[str, Any], hours: float = 8, toxicity_id: str | None = None
    ) -> None:
        payload: dict[str, Any] = {"toxicity": report}
        if toxicity_id:
            payload["toxicity_id"] = toxicity_id
        self.cmd("report_toxicity", payload, actor=CLINICIAN, hours=hours)

    def resolve(self, toxicity_id: str, hours: float = 10) -> None:
        self.cmd("resolve_toxicity", {"toxicity_id": toxicity_id}, actor=CLINICIAN, hours=hours)


def patient_commands(
    pid: str, scenario: str, start: dt.datetime, rng: random.Random, tracked: str | None = None
) -> list[dict[str, Any]]:
    """``tracked``: the patient's product is tracked (complete response only): ``normal``,
    ``failed`` or ``oos`` (see :meth:`_Patient.tracked_course`)."""
    p = _Patient(pid, start, rng)
    _course(p, scenario, rng, tracked)
    _after_course(p, scenario)
    return p.commands


def _course(p: _Patient, scenario: str, rng: random.Random, tracked: str | None = None) -> None:
    if scenario in ("screen_failure", "rescreened"):
        bad = eligible_screening(rng)
        bad["kps"] = 70
        p.screen(bad)
        if scenario == "screen_failure":
            return
        p.at(days=21)
        p.screen(command="rescreen")
    else:
        p.screen()
    tracked = tracked if scenario == "complete_response" else None
    p.apheresis(tracked=tracked is not None)
    if scenario == "withdrawn":
        p.cmd(
            "withdraw", reason="patient withdrew consent before infusion", actor=CLINICIAN, days=5
        )
        return
    if scenario == "crs_hold":
        p.infusion(1, days=14)
        d1 = p.t
        p.toxicity(crs(1), hours=4)  # fever within hours of D1: D2 is held
        p.resolve("CRS-1", hours=8)
        p.t = d1
        p.infusion(2)
        p.infusion(3)
        p.assess(rng.choice(["CR", "CRi"]))
        p.cmd(
            "cease",
            reason="CR after the first course; no further treatment by patient's wish",
            actor=CLINICIAN,
            days=1,
        )
        return
    if scenario in ("severe_crs", "death"):
        p.infusion(1, days=14)
        p.infusion(2)
        p.toxicity(crs(3 if scenario == "severe_crs" else 4), hours=10)
        p.cmd(
            "cancel_remaining_fractions",
            reason="CRS grade >= 3 after D2: D3 withheld",
            actor=CLINICIAN,
            hours=1,
        )
        if scenario == "death":
            p.cmd("record_death", {"cause": "cytokine release syndrome"}, actor=CLINICIAN, days=2)
            return
        p.cmd(
            "discontinue",
            reason="severe cytokine release syndrome (grade 3)",
            actor=CLINICIAN,
            hours=2,
        )
        p.resolve("CRS-1", hours=72)
        return
    if scenario == "icans":
        p.course()
        p.toxicity(icans(2), hours=20)
        p.resolve("ICANS-1", hours=48)
        p.assess("CR")
        p.cmd("cease", reason="CR; treatment complete", actor=CLINICIAN, days=1)
        return
    if scenario == "partial_response_courses":
        for number in range(3):
            p.course(first_gap=14 if number == 0 else 7)
            p.assess("PR")
            if number < 2:
                p.cmd("continue_treatment", actor=CLINICIAN, days=1)
        p.cmd("cease", actor=CLINICIAN, days=1)
        return
    if scenario == "no_response_ceased":
        p.course()
        p.assess("NR")
        p.cmd("cease", reason="no response after the first course", actor=CLINICIAN, days=1)
        return
    if scenario == "no_response_restarted":
        p.course()
        p.assess("NR")
        p.cmd(
            "continue_treatment",
            reason="restart by clinical assessment and patient's wish",
            actor=CLINICIAN,
            days=1,
        )
        p.course(first_gap=7)
        p.assess("CR")
        p.cmd("cease", reason="CR after the second course", actor=CLINICIAN, days=1)
        return
    if scenario == "corrected_dose":
        p.infusion(1, days=14)
        p.infusion(2)
        d2_version = p.version
        p.infusion(3)
        p.cmd(
            "correct",
            {
                "corrects": d2_version,
                "changes": {
                    "cells": {"value": float(f"{p.weight * 1e6 * 0.3:.4g}"), "unit": "cells"}
                },
            },
            reason="D2 cell count transcribed from the wrong bag label; corrected from the pharmacy record",
            actor=CLINICIAN,
            hours=3,
        )
        p.assess("CR")
        p.cmd("cease", reason="CR after the first course", actor=CLINICIAN, days=1)
        return
    if scenario in _ISSUE_20:
        _ISSUE_20[scenario](p, rng)
        return
    if scenario == "late_fraction_deviation":
        p.infusion(1, days=14)
        p.infusion(2)
        p.infusion(3, days=2, deviation="D3 delayed one day: product release pending QC")
        p.assess("CRi")
        p.cmd("cease", reason="CRi; patient prefers no further treatment", actor=CLINICIAN, days=1)
        return
    # complete_response
    if tracked is not None:
        p.tracked_course(tracked)
    else:
        p.course()
    p.assess(rng.choice(["CR", "CR", "CRi"]))
    if rng.random() < 0.5:
        p.cmd(
            "sign",
            {
                "milestone": "response_assessment",
                "signs_version": p.version,
                "meaning": "approval",
                "printed_name": CLINICIAN["name"],  # the signer's registered name
            },
            actor=CLINICIAN,
            hours=2,
        )
    p.cmd(
        "cease",
        reason="CR after the first course; patient and investigator decide to stop",
        actor=CLINICIAN,
        days=1,
    )


# -- issue 20: children and the bedside (CAPD; the pre-infusion gate) ----------------------------


def pre_infusion(temperature_c: float = 37.1, spo2: int = 97) -> dict[str, Any]:
    """The observations the pre-infusion gate reads (``give_infusion``'s ``pre_infusion``)."""
    return {
        "highest_temperature": {"value": temperature_c, "unit": "C"},
        "spo2_room_air_pct": spo2,
        "vasopressors": False,
        "uncontrolled_active_infection": False,
    }


def icans_capd(capd: int, consciousness: str, age_years: float) -> dict[str, Any]:
    """ICANS of a child under 12, scored with the CAPD (ASTCT 2019)."""
    return {
        "kind": "ICANS",
        "observations": {
            "age_years": age_years,
            "capd_score": capd,
            "consciousness": consciousness,
        },
    }


def _child_icans_capd(p: _Patient, rng: random.Random) -> None:
    """A child (a child's weight) with ICANS after D3, scored with the CAPD: CAPD 11 (grade 3),
    re-graded the next day (CAPD 6, wakes to voice: grade 2), then resolved."""
    p.weight = round(rng.uniform(18, 35), 1)
    age = rng.choice([6, 7.5, 9, 10.5])
    p.course()
    p.toxicity(icans_capd(11, "wakes_to_voice", age), hours=18)
    p.toxicity(icans_capd(6, "wakes_to_voice", age), hours=24, toxicity_id="ICANS-1")
    p.resolve("ICANS-1", hours=48)
    p.assess("CR")
    p.cmd("cease", reason="CR; treatment complete", actor=CLINICIAN, days=1)


def _gate_held_d2(p: _Patient, rng: random.Random) -> None:
    """D1, then D2 held by the pre-infusion gate for fever the next morning (no CRS episode: the
    fever is graded as nothing yet), and given the day after, afebrile (a day late, the fever
    still within 48 h: a documented deviation), D3 once the fever is older than 48 h."""
    p.infusion(1, days=14)
    p.cmd(
        "assess_pre_infusion",
        {"day": 2, "pre_infusion": pre_infusion(38.6)},
        actor=NURSE,
        days=1,
        hours=-1,
    )
    # D2 the next day: the fever is within the 48 h before it, so D2 is given with a reason
    p.infusion(2, days=1, deviation="D2 held one day by the pre-infusion gate (fever 38.6 C)")
    p.commands[-1]["payload"]["pre_infusion"] = pre_infusion(37.2)
    # D3 the day after, an hour later: the fever is then more than 48 h old
    p.infusion(3, days=1 + 1 / 24)
    p.commands[-1]["payload"]["pre_infusion"] = pre_infusion(36.9)
    p.assess(rng.choice(["CR", "CRi"]))
    p.cmd("cease", reason="CR after the first course", actor=CLINICIAN, days=1)


_ISSUE_20 = {"child_icans_capd": _child_icans_capd, "gate_held_d2": _gate_held_d2}


# -- after the course (issue 16): follow-up visits, adverse events, SAE reports, deaths -----------

#: The commands of the follow-up after the course (not later than the cohort's last move).
_VISITS_AND_REPORTS = frozenset({"record_follow_up", "record_missed_visit", "record_sae_report"})
#: The visits the demo records after the end of treatment (days after D1: inside each window).
_DEMO_VISITS: tuple[tuple[str, int], ...] = (("D28", 31), ("M2", 61), ("M3", 92), ("M6", 184))


def _d1_time(p: _Patient) -> dt.datetime | None:
    d1 = [c for c in p.commands if c["command"] == "give_infusion" and c["payload"]["day"] == 1]
    return dt.datetime.fromisoformat(d1[-1]["occurred_at"]) if d1 else None


def _extra(p: _Patient, command: str, at: dt.datetime, payload: dict[str, Any]) -> None:
    """A command at a clinical time of its own (a visit, a report), not moving the path's clock."""
    p.n += 1
    p.commands.append(
        {
            "command": command,
            "patient_id": p.pid,
            "occurred_at": at.isoformat(),
            "actor": CLINICIAN,
            "reason": None,
            "idempotency_key": f"demo:{p.pid}:{p.n}",
            "payload": payload,
        }
    )
    p.version += 1


def _after_course(p: _Patient, scenario: str) -> None:
    """The demo's life after the course, drawn from nothing random (the cohort of a seed stays
    what it was before): the death from CRS closes its episode at grade 5 and its SAE report is
    sent late; an IEC-HS SUSAR after severe CRS; follow-up visits for the ceased and discontinued
    (one patient in four stops coming after M2, so visits fall due and overdue), a CD19-negative
    relapse after ICANS, a missed visit after no response."""
    d1 = _d1_time(p)
    commands = {c["command"] for c in p.commands}
    if d1 is None:
        return
    if scenario == "death":
        death = next(c for c in p.commands if c["command"] == "record_death")
        died = dt.datetime.fromisoformat(death["occurred_at"])
        aware = died + dt.timedelta(hours=1)
        death["payload"] = {
            "cause": "cytokine release syndrome",
            "cause_of_death": {
                "category": "adverse_event",
                "toxicity_id": "CRS-1",
                "related": "definite",
            },
            "aware_at": aware.isoformat(),
        }
        _extra(
            p,
            "record_sae_report",
            aware + dt.timedelta(hours=30),  # 6 hours after its 24-hour clock: a late report
            {
                "case_id": "CRS-1",
                "report": "initial",
                "sent_to": "sponsor pharmacovigilance",
                "reference": f"SAE-{p.pid}",
            },
        )
        return
    if not commands & {"cease", "discontinue"} or commands & {"withdraw", "record_death"}:
        return
    if scenario == "severe_crs":
        onset = d1 + dt.timedelta(days=9)
        aware = onset + dt.timedelta(hours=2)
        _extra(
            p,
            "report_toxicity",
            onset,
            {
                "toxicity": {
                    "kind": "other",
                    "term": "IEC-HS",
                    "grade": 3,
                    "scale": "CTCAE",
                    "scale_version": "5.0",
                },
                "adverse_event": {
                    "attribution": "probable",
                    "seriousness": ["hospitalisation", "important_medical_event"],
                    "expected": False,
                    "outcome": "recovering",
                    "aware_at": aware.isoformat(),
                },
            },
        )
        for report, hours in (("initial", 20), ("expedited", 24 * 6)):
            _extra(
                p,
                "record_sae_report",
                aware + dt.timedelta(hours=hours),
                {"case_id": "other-1", "report": report, "sent_to": "sponsor pharmacovigilance"},
            )
    stops_after_m2 = int(p.pid.rsplit("-", 1)[1]) % 4 == 1
    last = max(dt.datetime.fromisoformat(c["occurred_at"]) for c in p.commands)
    for visit, day in _DEMO_VISITS:
        # on its target day, or the day after the end of treatment (still inside its window)
        at = max(d1 + dt.timedelta(days=day, hours=1), last + dt.timedelta(days=1))
        if scenario == "no_response_ceased" and visit == "M2":
            _extra(
                p,
                "record_missed_visit",
                at,
                {"visit": visit, "missed_reason": "patient unreachable"},
            )
            continue
        status: dict[str, Any] = {"status": "remission"}
        if scenario == "no_response_ceased":
            status = {"status": "relapse", "cd19": "positive", "marrow_blasts_pct": 40}
        elif scenario == "icans" and visit == "M3":
            status = {"status": "relapse", "cd19": "negative", "marrow_blasts_pct": 22}
        _extra(
            p,
            "record_follow_up",
            at,
            {
                "visit": visit,
                "disease_status": status,
                "vital_status": "alive",
                "b_cell_aplasia": status["status"] == "remission",
                "igg": {"value": 3.8, "unit": "g/L"},
                "ig_replacement": True,
            },
        )
        if stops_after_m2 and visit == "M2":
            break


def pick_scenarios(n: int, rng: random.Random) -> list[str]:
    names = [name for name, _ in SCENARIOS]
    weights = [w for _, w in SCENARIOS]
    chosen = rng.choices(names, weights=weights, k=n)
    # Every path at least once when the cohort is big enough to hold them.
    if n >= len(names):
        for i, name in enumerate(names):
            if name not in chosen:
                chosen[i] = name
    return chosen


def cohort(
    n: int,
    seed: int = 1,
    *,
    start: dt.datetime = START,
    prefix: str = "P",
    until: dt.datetime | None = None,
    spacing: dt.timedelta | None = None,
    sites: bool = False,
) -> Iterator[dict[str, Any]]:
    """The commands for ``n`` patients, in clinical-time order across the cohort.

    ``sites`` (issue 17): spread the patients over :data:`DEMO_SITES` (the store must define
    them: :func:`ensure_demo_sites`), with a few transfers; without it no site is named (a
    single-site trial: every patient in the default site).

    With ``until``, only what had happened by then: each patient's path is cut at that time, so
    the cohort is in progress (fractions due, assessments pending, toxicities open).
    """
    rng = random.Random(seed)
    scenarios = pick_scenarios(n, rng)
    width = max(4, len(str(n)))
    # Enrolment spreads over at most two years; every clinical time stays in the past.
    if spacing is None:
        spacing = min(dt.timedelta(hours=7), dt.timedelta(days=730) / max(n, 1))
    if start == START and spacing * n > dt.timedelta(days=120):
        start = START - spacing * n  # a large cohort enrolled over the two years before START
    commands: list[dict[str, Any]] = []
    responders = 0
    for i, scenario in enumerate(scenarios):
        pid = f"{prefix}-{i + 1:0{width}d}"
        first = start + spacing * i
        extra = i - (n - len(ISSUE_20_SCENARIOS))
        if n >= ISSUE_20_MIN_COHORT and extra >= 0:  # issue 20's patients, last (see above)
            own = random.Random(f"issue-20:{seed}:{pid}")
            commands.extend(patient_commands(pid, ISSUE_20_SCENARIOS[extra], first, own))
            continue
        tracked = None
        if scenario == "complete_response":
            responders += 1
            if responders % TRACKED_EVERY == 2:
                tracked = (
                    ("failed", "oos")[responders // TRACKED_EVERY]
                    if (responders // TRACKED_EVERY < 2)
                    else "normal"
                )
        commands.extend(patient_commands(pid, scenario, first, rng, tracked))
    # the follow-up after the course (issue 16) runs no later than the cohort's last move: a
    # cohort's clinical times stay in the past wherever its start puts its courses
    horizon = max(
        (
            dt.datetime.fromisoformat(c["occurred_at"])
            for c in commands
            if c["command"] not in _VISITS_AND_REPORTS
        ),
        default=None,
    )
    commands = [
        c
        for c in commands
        if c["command"] not in _VISITS_AND_REPORTS
        or horizon is None
        or dt.datetime.fromisoformat(c["occurred_at"]) <= horizon
    ]
    if until is not None:
        commands = [c for c in commands if dt.datetime.fromisoformat(c["occurred_at"]) <= until]
    if sites:
        commands = _with_sites(commands)
    commands.sort(key=lambda c: c["occurred_at"])
    yield from commands


def demo_site(patient_id: str) -> str:
    """The demo site a patient is screened at (by the patient's number)."""
    number = int(patient_id.rsplit("-", 1)[1])
    return DEMO_SITES[(number - 1) % len(DEMO_SITES)][0]


def _with_sites(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cohort spread over :data:`DEMO_SITES`: each first screening names the patient's
    site, and one patient in :data:`TRANSFER_EVERY` with an apheresis is transferred to the next
    site between the apheresis and the next move (a reasoned ``transfer_site``)."""
    out: list[dict[str, Any]] = []
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for c in commands:
        by_patient.setdefault(c["patient_id"], []).append(c)
    ids = [s[0] for s in DEMO_SITES]
    for pid, own in by_patient.items():
        own = sorted(own, key=lambda c: dt.datetime.fromisoformat(c["occurred_at"]))
        site = demo_site(pid)
        number = int(pid.rsplit("-", 1)[1])
        moved_from: int | None = None  # the version of the transfer: later ones shift by one
        for i, c in enumerate(own):
            if c["command"] == "screen" and i == 0:
                c = {**c, "payload": {**c["payload"], "site": site}}
            if moved_from is not None:
                for key in ("signs_version", "corrects"):
                    named = c["payload"].get(key)
                    if isinstance(named, int) and named >= moved_from:
                        c = {**c, "payload": {**c["payload"], key: named + 1}}
            out.append(c)
            if (
                c["command"] == "record_apheresis"
                and number % TRANSFER_EVERY == 5
                and i + 1 < len(own)
                and not any(o["command"] == "transfer_site" for o in out if o["patient_id"] == pid)
            ):
                here = dt.datetime.fromisoformat(c["occurred_at"])
                then = dt.datetime.fromisoformat(own[i + 1]["occurred_at"])
                to = ids[(ids.index(site) + 1) % len(ids)]
                moved_from = i + 3  # v1 registration, v2 the screening (command 0)
                out.append(
                    {
                        "command": "transfer_site",
                        "patient_id": pid,
                        "occurred_at": (here + (then - here) / 2).isoformat(),
                        "actor": CLINICIAN,
                        "reason": f"referred to {to} for the infusions (nearer the family)",
                        "idempotency_key": f"demo:{pid}:transfer",
                        "payload": {"site": to},
                    }
                )
    return out


def wrong_bag_attempt(commands: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A bedside check the protocol refuses: the last tracked patient's D1 with the first
    tracked patient's D1 bag (None: fewer than two tracked patients). ``cart-course demo``
    sends it just before that D1 (its clinical time) to show the refusal, which never names
    the other patient."""
    firsts = [c for c in commands if c["command"] == "give_infusion" and "bag_id" in c["payload"]]
    firsts = [c for c in firsts if c["payload"]["day"] == 1]
    if len(firsts) < 2 or firsts[0]["patient_id"] == firsts[-1]["patient_id"]:
        return None
    attempt = {
        **firsts[-1],
        "idempotency_key": f"demo:wrong-bag:{firsts[-1]['patient_id']}",
        "payload": {**firsts[-1]["payload"], "bag_id": firsts[0]["payload"]["bag_id"]},
    }
    return attempt


def live_cohort(
    n: int, seed: int, now: dt.datetime, *, sites: bool = False
) -> Iterator[dict[str, Any]]:
    """A trial in progress at ``now``: patients enrolled every two days over the last months,
    each path cut at ``now``; one patient in nine has had nothing recorded for a month (a site
    behind with its data entry), so the monitors see overdue actions too.

    ``sites`` (issue 17): over the three demo sites, and the site behind is
    :data:`BEHIND_SITE`: none of its events of the last :data:`BEHIND_DAYS` days is entered
    yet (its next actions fall overdue on the board; ``status --sites`` shows it)."""
    spacing = dt.timedelta(days=2)
    start = now - spacing * n - dt.timedelta(days=20)
    behind = now - dt.timedelta(days=30)
    site_behind = now - dt.timedelta(days=BEHIND_DAYS)
    seen: set[str] = set()
    for command in cohort(n, seed, start=start, until=now, spacing=spacing, sites=sites):
        pid = command["patient_id"]
        number = int(pid.rsplit("-", 1)[1])
        when = dt.datetime.fromisoformat(command["occurred_at"])
        if sites:
            late = demo_site(pid) == BEHIND_SITE and when > site_behind
        else:
            late = number % 9 == 4 and when > behind
        if late and pid in seen:  # every patient is at least screened
            continue
        seen.add(pid)
        yield command


def ensure_demo_sites(store: Any, by: str | None = "demo") -> None:
    """Define the demo sites in ``store`` (a ``sites.SiteStore``) where they are missing."""
    known = {s.id for s in store.list()}
    for site_id, name, zone in DEMO_SITES:
        if site_id not in known:
            store.add(site_id, name, zone, created_by=by)


# -- data queries (issue 17): monitors ask, sites answer, the query rules at work ------------------

#: The demo's monitor (the site's clinician answers as :data:`CLINICIAN`).
MONITOR = {"id": "cra.demo", "role": "monitor", "name": "M. Demo, CRA"}


#: How many days before ``until`` the demo's queries on a patient begin (each query's age
#: counts from its clinical time): spread over days to weeks, one after another.
_QUERY_DAYS_AGO = (3, 17, 8, 26, 12, 40, 5, 21, 33)  # nine: not in step with the six kinds


def _day_of(when: dt.datetime) -> dt.datetime:
    """The start of ``when``'s day: the demo's query times move by whole days, so the same
    seed writes the same cohort all day."""
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def query_steps(
    commands: list[dict[str, Any]], until: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Data queries on a demo cohort's patients with a D2 (``commands`` in recording order):
    after each such patient's last event (with ``until``: and days to weeks before it, so that
    the queries have the ages a trial's monitors see), a monitor's query on the D2 count that the site
    answers and the monitor closes; one answered and waiting for the monitor; one still open on
    the D1 weight; one closed and re-opened; and, for the query rules, a D2 count corrected
    beyond the dose tolerance without a deviation reason (the rule opens a query) and one
    corrected so and then given its reason (the rule opens and closes it). ``until``: only the
    steps by then. Each step names the versions it refers to as the service will record them."""
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for c in commands:
        by_patient.setdefault(c["patient_id"], []).append(c)
    steps: list[dict[str, Any]] = []
    chosen = 0
    for pid, own in by_patient.items():
        versions = {id(c): i + 2 for i, c in enumerate(own)}  # v1 is the registration
        infusions = {
            c["payload"]["day"]: c
            for c in own
            if c["command"] == "give_infusion" and "cells" in c["payload"]
        }
        if 2 not in infusions or 1 not in infusions:
            continue
        kind = chosen % 6
        chosen += 1
        d1, d2 = versions[id(infusions[1])], versions[id(infusions[2])]
        version = len(own) + 1
        at = dt.datetime.fromisoformat(own[-1]["occurred_at"])
        if until is not None:  # raised days to weeks before ``until`` (never before the last event)
            at = max(at, _day_of(until) - dt.timedelta(days=_QUERY_DAYS_AGO[chosen % 9]))
        n = 0

        def step(
            command: str,
            payload: dict[str, Any],
            actor: dict[str, Any],
            hours: float,
            reason: str | None = None,
            pid: str = pid,
        ) -> None:
            nonlocal version, at, n
            version += 1
            n += 1
            at = at + dt.timedelta(hours=hours)
            steps.append(
                {
                    "command": command,
                    "patient_id": pid,
                    "occurred_at": at.isoformat(),
                    "actor": actor,
                    "reason": reason,
                    "idempotency_key": f"demo:{pid}:query:{n}",
                    "payload": payload,
                }
            )

        if kind in (0, 1, 3):
            step(
                "open_query",
                {
                    "text": "D2 cells: please check the count against the bag label at the source",
                    "on_version": d2,
                    "field": "payload.cells.value",
                },
                MONITOR,
                20,
            )
            qid = f"Q-{version}"
            step(
                "answer_query",
                {"query_id": qid, "text": "checked against the label: the count is right"},
                CLINICIAN,
                30,
            )
            if kind in (0, 3):
                step("close_query", {"query_id": qid}, MONITOR, 6)
            if kind == 3:
                step(
                    "reopen_query",
                    {
                        "query_id": qid,
                        "text": "the label copy in the binder is unreadable: "
                        "please file a legible copy",
                    },
                    MONITOR,
                    48,
                )
        elif kind == 2:
            step(
                "open_query",
                {
                    "text": "D1 weight: the source says a different weight; which was used?",
                    "on_version": d1,
                    "field": "payload.weight.value",
                },
                MONITOR,
                20,
            )
        else:  # 4, 5: the query rules (a deviation without its reason; 5: its reason given)
            cells = float(infusions[2]["payload"]["cells"]["value"]) * 1.6
            step(
                "correct",
                {
                    "corrects": d2,
                    "changes": {"cells": {"value": float(f"{cells:.4g}"), "unit": "cells"}},
                },
                CLINICIAN,
                20,
                reason="D2 count re-read from the pharmacy record",
            )
            if kind == 5:
                step(
                    "correct",
                    {
                        "corrects": d2,
                        "changes": {
                            "deviation_reason": "a second bag was thawed "
                            "and given in full (investigator's decision)"
                        },
                    },
                    CLINICIAN,
                    30,
                    reason="the deviation's reason, as the query rule asked",
                )
    if until is not None:
        steps = [s for s in steps if dt.datetime.fromisoformat(s["occurred_at"]) <= until]
    return steps
