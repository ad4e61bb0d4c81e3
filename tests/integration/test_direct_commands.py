"""The Python API holds a command built directly (``Command(...)``) to the same contract as one
from ``parse_command``: nothing malformed reaches the store by going around the parser."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration_helpers import envelope, screening

from cart_course.contract import Actor, Command, parse_command
from cart_course.errors import InvalidCommandError
from cart_course.service import CourseService

WHEN = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
CLINICIAN = Actor(id="dr.a", role="clinician")


def _withdraw(**changes: object) -> Command:
    fields: dict[str, object] = {
        "command": "withdraw",
        "patient_id": "P-1",
        "occurred_at": WHEN,
        "actor": CLINICIAN,
        "payload": {},
        "reason": "consent withdrawn",
    }
    fields.update(changes)
    return Command(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"occurred_at": dt.datetime(2026, 1, 5, 9, 0)}, "occurred_at"),  # naive
        ({"patient_id": "bad id!!"}, "patient_id"),
        ({"actor": Actor(id="x", role="god")}, "actor.role"),
        ({"command": "teleport"}, "command"),
        ({"reason": "x\ud800"}, "reason"),
    ],
)
def test_a_direct_command_is_validated(
    memory_service: CourseService, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidCommandError) as info:
        memory_service.execute(_withdraw(**changes))
    assert info.value.field == field
    [result] = memory_service.execute_batch([_withdraw(**changes)])
    assert isinstance(result, InvalidCommandError) and result.field == field


def test_a_batch_keeps_each_result_in_its_place(memory_service: CourseService) -> None:
    screen = parse_command(
        {
            "command": "withdraw",
            "patient_id": "P-2",
            "occurred_at": WHEN.isoformat(),
            "actor": {"id": "dr.a", "role": "clinician"},
            "reason": "r",
        }
    )
    results = memory_service.execute_batch([_withdraw(patient_id="bad id!!"), screen])
    assert isinstance(results[0], InvalidCommandError)
    assert results[1].code == "patient_not_found"  # judged on its own, in its place


def test_a_valid_direct_command_is_recorded(memory_service: CourseService) -> None:
    screen = parse_command(
        envelope("screen", "P-3", {"screening": screening()}, at=WHEN - dt.timedelta(days=1))
    )
    assert memory_service.execute(screen).status == "recorded"
    done = memory_service.execute(_withdraw(patient_id="P-3"))
    assert (done.status, done.to_state) == ("recorded", "withdrawn")
