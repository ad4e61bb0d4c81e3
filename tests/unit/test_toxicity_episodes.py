"""Toxicity episodes keep their identity: an assigned id never names an episode on record, a
report names only an open episode of its kind, a correction shows in the episode it corrects,
and an episode cannot resolve before it began. Also: a move out of sequence is refused as such
before its payload is read against the record (D3 in cells/kg before D1)."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from cart_course.contract import parse_command
from cart_course.demo import crs, eligible_screening, icans
from cart_course.errors import InvalidCommandError
from cart_course.protocol.commands import MoveRefusedError, prepare
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.record import PatientRecord, evolve
from cart_course.protocol.versions import CURRENT
from cart_course.service import CommandResult, CourseService

T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
CLINICIAN = {"id": "dr.lee", "role": "clinician", "name": "Dr. K. Lee"}
FEBRILE_NEUTROPENIA = {
    "kind": "other",
    "term": "febrile neutropenia",
    "grade": 3,
    "scale": "CTCAE",
    "scale_version": "5.0",
}

# ------------------------------------------------------------------------------------------
# The pure core: prepare decides, evolve assigns
# ------------------------------------------------------------------------------------------


class Patient:
    def __init__(self) -> None:
        self.record = PatientRecord(patient_id="P-tox")
        self.t = T0

    def do(
        self, command: str, payload: dict[str, Any], *, hours: float = 1, reason: str | None = None
    ) -> dict[str, Any]:
        self.t += dt.timedelta(hours=hours)
        p = prepare(self.record, command, payload, self.t, reason, CURRENT)
        self.record_move(p.trigger, p.to_state, p.facts, p.outcome)
        return p.outcome

    def record_move(
        self, trigger: str, to_state: str, facts: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        evolve(
            self.record,
            trigger=trigger,
            to_state=to_state,
            facts=facts,
            outcome=outcome,
            occurred_at=self.t.isoformat(),
            version=self.record.version + 1,
            protocol_version=CURRENT.id,
        )

    def on_d1(self) -> Patient:
        self.do("screen", {"screening": eligible_screening(random.Random(5))})
        self.do("record_apheresis", {"apheresis_contraindication": False}, hours=48)
        self.do(
            "give_infusion",
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
            hours=24 * 7,
        )
        return self

    def legacy_report(self, tox_id: str, report: dict[str, Any]) -> None:
        """A report recorded under an explicit new id, as histories written before such ids were
        refused may hold (the service accepted any id then)."""
        self.t += dt.timedelta(hours=1)
        facts = {"toxicity": report, "toxicity_id": tox_id}
        outcome = {
            "toxicity_id": tox_id,
            "kind": report["kind"],
            "term": None,
            "grade": 1,
            "scale": "ASTCT",
            "scale_version": "2019",
            "severe": False,
            "opens_hold": True,
        }
        self.record_move("report_toxicity", self.record.state, facts, outcome)


def test_a_new_report_never_takes_the_id_of_a_resolved_episode() -> None:
    p = Patient().on_d1()
    p.legacy_report("CRS-2", crs(1))
    p.do("resolve_toxicity", {"toxicity_id": "CRS-2"})
    resolved = p.record.toxicities["CRS-2"].resolved_at
    out = p.do("report_toxicity", {"toxicity": crs(2)})
    assert out["toxicity_id"] == "CRS-3"  # count + 1 would be CRS-2: the resolved episode
    assert p.record.toxicities["CRS-2"].resolved_at == resolved  # kept, not overwritten
    assert p.record.toxicities["CRS-2"].grade == 1
    assert p.record.toxicities["CRS-3"].open
    assert sorted(p.record.toxicities) == ["CRS-2", "CRS-3"]


def test_a_report_without_an_id_never_merges_into_an_open_episode() -> None:
    p = Patient().on_d1()
    p.legacy_report("CRS-2", crs(1))
    first = p.do("report_toxicity", {"toxicity": crs(2)})
    second = p.do("report_toxicity", {"toxicity": crs(3)})
    assert (first["toxicity_id"], second["toxicity_id"]) == ("CRS-3", "CRS-4")
    assert p.record.toxicities["CRS-2"].grade == 1  # the open episode was not updated
    assert len(p.record.open_toxicities()) == 3
    assert p.do("report_toxicity", {"toxicity": icans(1)})["toxicity_id"] == "ICANS-1"


def test_a_toxicity_id_not_on_record_is_refused_naming_the_open_episodes() -> None:
    p = Patient().on_d1()
    p.do("report_toxicity", {"toxicity": crs(2)})
    before = p.record.to_json()
    with pytest.raises(ProtocolInputError) as info:
        p.do("report_toxicity", {"toxicity": crs(1), "toxicity_id": "CRS-7"})
    assert info.value.field == "payload.toxicity_id"
    message = info.value.message
    assert "no toxicity episode 'CRS-7' is on record" in message
    assert "open episodes: CRS-1 (CRS grade 2)" in message
    assert "leave toxicity_id out (it is assigned: CRS-2)" in message
    assert p.record.to_json() == before


def test_a_resolved_episode_is_closed_and_an_update_keeps_the_kind() -> None:
    p = Patient().on_d1()
    p.do("report_toxicity", {"toxicity": crs(1)})
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"})
    with pytest.raises(ProtocolInputError) as info:
        p.do("report_toxicity", {"toxicity": crs(2), "toxicity_id": "CRS-1"})
    assert "a resolved episode is closed and cannot be updated" in info.value.message
    assert "leave toxicity_id out (it is assigned: CRS-2)" in info.value.message
    p.do("report_toxicity", {"toxicity": crs(1)})
    with pytest.raises(ProtocolInputError) as info:
        p.do("report_toxicity", {"toxicity": icans(1), "toxicity_id": "CRS-2"})
    assert "'CRS-2' is CRS, not ICANS" in info.value.message
    # the update of an open episode of its kind: same episode, latest grade
    assert p.do("report_toxicity", {"toxicity": crs(2), "toxicity_id": "CRS-2"})["grade"] == 2
    assert p.record.toxicities["CRS-2"].grade == 2


def test_a_toxicity_cannot_resolve_before_its_onset() -> None:
    p = Patient().on_d1()
    p.do("report_toxicity", {"toxicity": crs(1)}, hours=10)
    onset = p.record.toxicities["CRS-1"].onset
    before = p.record.to_json()
    with pytest.raises(ProtocolInputError) as info:
        p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, hours=-3)
    assert info.value.field == "payload.toxicity_id"
    assert f"began at {onset}" in info.value.message
    assert f"resolved at {p.t.isoformat()}, before it began" in info.value.message
    assert p.record.to_json() == before
    p.t = dt.datetime.fromisoformat(onset)  # resolving at the onset itself is possible
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"}, hours=0)
    assert p.record.toxicities["CRS-1"].resolved_at == onset


@pytest.mark.parametrize("day", [2, 3])
def test_a_fraction_in_cells_per_kg_before_d1_is_refused_as_out_of_sequence(day: int) -> None:
    p = Patient()
    p.do("screen", {"screening": eligible_screening(random.Random(5))})
    p.do("record_apheresis", {"apheresis_contraindication": False}, hours=48)
    payload = {"day": day, "cells": {"value": 6e5, "unit": "cells/kg"}}
    with pytest.raises(MoveRefusedError) as info:
        p.do("give_infusion", payload, hours=24)
    assert [f.rule for f in info.value.failed] == ["permitted_sequence"]
    assert f"infuse_d{day} is not allowed in state apheresed" in str(info.value)
    assert "infuse_d1" in info.value.allowed


# ------------------------------------------------------------------------------------------
# Through the service: reports and corrections as a caller sends them
# ------------------------------------------------------------------------------------------


@pytest.fixture
def svc(memory_service: CourseService) -> CourseService:
    """The suite's in-memory service (tests/conftest.py)."""
    return memory_service


class Course:
    def __init__(self, service: CourseService, pid: str) -> None:
        self.service, self.pid, self.t, self.n = service, pid, T0, 0

    def do(
        self,
        command: str,
        payload: dict[str, Any],
        *,
        hours: float = 1,
        reason: str | None = None,
    ) -> CommandResult:
        self.t += dt.timedelta(hours=hours)
        self.n += 1
        return self.service.execute(
            parse_command(
                {
                    "command": command,
                    "patient_id": self.pid,
                    "occurred_at": self.t.isoformat(),
                    "actor": CLINICIAN,
                    "reason": reason,
                    "idempotency_key": f"{self.pid}-{self.n}",
                    "payload": payload,
                }
            )
        )

    def on_d1(self) -> Course:
        self.do("screen", {"screening": eligible_screening(random.Random(5))})
        self.do("record_apheresis", {"apheresis_contraindication": False}, hours=48)
        d1 = {
            "day": 1,
            "cells": {"value": 7e6, "unit": "cells"},
            "weight": {"value": 70, "unit": "kg"},
        }
        # version 4; a fraction without its bedside check opens a data query (the rules, on by
        # default): the course's version after D1 is what ``version`` says
        self.do("give_infusion", d1, hours=24 * 7)
        return self

    @property
    def version(self) -> int:
        return self.service.record(self.pid).version

    def toxicity(self, tox_id: str) -> dict[str, Any]:
        found = [t for t in self.service.summary(self.pid)["toxicities"] if t["id"] == tox_id]
        assert len(found) == 1
        return found[0]


def test_an_explicit_new_toxicity_id_is_refused_and_nothing_is_recorded(
    svc: CourseService,
) -> None:
    p = Course(svc, "T-1").on_d1()
    before = p.version
    with pytest.raises(InvalidCommandError) as info:
        p.do("report_toxicity", {"toxicity": crs(1), "toxicity_id": "CRS-2"})
    assert info.value.field == "payload.toxicity_id"
    assert "open episodes: none" in info.value.message
    assert p.version == before
    assert p.do("report_toxicity", {"toxicity": crs(1)}).outcome["toxicity_id"] == "CRS-1"
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"})
    assert p.do("report_toxicity", {"toxicity": crs(2)}).outcome["toxicity_id"] == "CRS-2"
    assert p.toxicity("CRS-1")["resolved_at"] is not None  # the resolved episode is kept


def test_a_corrected_report_shows_its_term_grade_and_onset_in_the_episode(
    svc: CourseService,
) -> None:
    p = Course(svc, "T-2").on_d1()
    report = p.do("report_toxicity", {"toxicity": FEBRILE_NEUTROPENIA}, hours=6).version
    onset = (p.t - dt.timedelta(hours=2)).isoformat()
    corrected = {**FEBRILE_NEUTROPENIA, "term": "neutropenia", "grade": 2}
    done = p.do(
        "correct",
        {"corrects": report, "changes": {"toxicity": corrected, "occurred_at": onset}},
        reason="neutropenia without fever, noticed two hours earlier",
    )
    tox = p.toxicity("other-1")
    assert (tox["term"], tox["grade"], tox["worst_grade"]) == ("neutropenia", 2, 2)
    assert (tox["severe"], tox["onset"]) == (False, onset)
    assert done.outcome["toxicity_id"] == "other-1"  # the episode it corrects, not a new id
    assert done.outcome["term"] == tox["term"]
    assert svc.record("T-2").toxicities["other-1"].report["term"] == "neutropenia"


def test_a_correction_cannot_change_the_kind_of_an_episode(svc: CourseService) -> None:
    p = Course(svc, "T-3").on_d1()
    report = p.do("report_toxicity", {"toxicity": crs(2)}, hours=10).version  # CRS-1
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {"corrects": report, "changes": {"toxicity": icans(2)}},
            reason="it was ICANS, not CRS",
        )
    assert info.value.field == "payload.changes.toxicity"
    assert "cannot change its kind to ICANS" in info.value.message
    assert "report the ICANS as a new episode" in info.value.message
    assert p.version == report
    assert p.toxicity("CRS-1")["kind"] == "CRS"


def test_correcting_an_earlier_report_keeps_the_latest_grade_and_rederives_the_worst(
    svc: CourseService,
) -> None:
    p = Course(svc, "T-4").on_d1()
    first = p.do("report_toxicity", {"toxicity": crs(3)}, hours=10).version  # CRS-1 grade 3
    p.do("report_toxicity", {"toxicity": crs(1), "toxicity_id": "CRS-1"})  # grade 1
    assert (p.toxicity("CRS-1")["worst_grade"], p.toxicity("CRS-1")["severe"]) == (3, True)
    done = p.do(
        "correct",
        {"corrects": first, "changes": {"toxicity": crs(2)}},
        reason="the vasopressor was for a line flush",
    )
    assert (done.outcome["toxicity_id"], done.outcome["grade"]) == ("CRS-1", 2)
    tox = p.toxicity("CRS-1")
    assert tox["grade"] == 1  # still the latest report's grade
    assert (tox["worst_grade"], tox["severe"]) == (2, False)


def test_a_report_of_a_resolved_episode_can_be_corrected_but_not_after_its_resolution(
    svc: CourseService,
) -> None:
    p = Course(svc, "T-5").on_d1()
    first = p.do("report_toxicity", {"toxicity": crs(1)}, hours=10).version
    second = p.do("report_toxicity", {"toxicity": crs(2), "toxicity_id": "CRS-1"}).version
    p.do("resolve_toxicity", {"toxicity_id": "CRS-1"})
    p.do("correct", {"corrects": second, "changes": {"toxicity": crs(1)}}, reason="re-graded")
    tox = p.toxicity("CRS-1")
    assert (tox["grade"], tox["worst_grade"], tox["open"]) == (1, 1, False)
    later = (p.t + dt.timedelta(days=2)).isoformat()
    with pytest.raises(InvalidCommandError) as info:
        p.do("correct", {"corrects": first, "changes": {"occurred_at": later}}, reason="typo")
    assert info.value.field == "payload.changes.occurred_at"
    assert "after its resolution" in info.value.message
    with pytest.raises(InvalidCommandError) as info:
        p.do(
            "correct",
            {"corrects": second, "changes": {"toxicity_id": "CRS-9"}},
            reason="wrong episode",
        )
    assert "cannot move it to another episode" in info.value.message
