"""One patient's record moved only through ``commands.prepare`` (decides) and
``Prepared.apply_to`` (assigns), as the service does: what the unit tests of commands share."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from cart_course.demo import assessment, eligible_screening
from cart_course.protocol.commands import MoveRefusedError, Prepared, prepare
from cart_course.protocol.errors import ProtocolInputError
from cart_course.protocol.record import PatientRecord
from cart_course.protocol.versions import CURRENT, ProtocolVersion

WEIGHT = 70.0
#: The cells of D1, D2 and D3 for a 70 kg patient.
PLAN = (7e6, 2.1e7, 4.2e7)

E = TypeVar("E", bound=Exception)


def recorded_move(
    record: PatientRecord,
    command: str,
    payload: dict[str, Any] | None,
    at: dt.datetime,
    reason: str | None = None,
    version: ProtocolVersion = CURRENT,
) -> Prepared:
    """The move prepared and applied to ``record`` at ``at`` under ``version``."""
    p = prepare(record, command, payload or {}, at, reason, version)
    p.apply_to(record, occurred_at=at.isoformat(), protocol_version=version.id, reason=reason)
    return p


def unrecorded(record: PatientRecord, error: type[E], move: Callable[[], object]) -> E:
    """The error ``move`` raises, ``record`` unchanged (nothing recorded)."""
    before = record.to_json()
    with pytest.raises(error) as info:
        move()
    assert record.to_json() == before  # nothing recorded
    return info.value


def failed_rules(exc: MoveRefusedError) -> list[str]:
    return [f.rule for f in exc.failed]


class Patient:
    """One patient's record under a protocol version, a move a day at 09:00 UTC."""

    def __init__(self, version: ProtocolVersion = CURRENT) -> None:
        self.version = version
        self.record = PatientRecord(patient_id="P-001")
        self.day = dt.date(2026, 1, 5)

    def do(
        self,
        command: str,
        payload: dict[str, Any] | None = None,
        *,
        reason: str | None = None,
        on: dt.date | None = None,
    ) -> Prepared:
        when = on or self.day
        occurred = dt.datetime.combine(when, dt.time(9), tzinfo=dt.UTC)
        p = recorded_move(self.record, command, payload, occurred, reason, self.version)
        self.day = when
        return p

    def refused(
        self, command: str, payload: dict[str, Any] | None = None, **kw: Any
    ) -> MoveRefusedError:
        return unrecorded(self.record, MoveRefusedError, lambda: self.do(command, payload, **kw))

    def invalid(
        self, command: str, payload: dict[str, Any] | None = None, **kw: Any
    ) -> ProtocolInputError:
        return unrecorded(self.record, ProtocolInputError, lambda: self.do(command, payload, **kw))

    def next_day(self, n: int = 1) -> dt.date:
        return self.day + dt.timedelta(days=n)

    # -- shortcuts ---------------------------------------------------------------------------
    def screened(self) -> Patient:
        self.do("screen", {"screening": eligible_screening(random.Random(5))})
        return self

    def apheresed(self) -> Patient:
        self.screened()
        self.do("record_apheresis", {"apheresis_contraindication": False}, on=self.next_day(2))
        return self

    def fraction(self, day: int, factor: float = 1.0, **extra: Any) -> dict[str, Any]:
        """``give_infusion``'s payload: the planned cells (times ``factor``), D1 with the weight."""
        payload: dict[str, Any] = {
            "day": day,
            "cells": {"value": PLAN[day - 1] * factor, "unit": "cells"},
        }
        if day == 1:
            payload["weight"] = {"value": WEIGHT, "unit": "kg"}
        payload.update(extra)
        return payload

    def infuse(self, day: int, factor: float = 1.0, *, gap: int = 1, **extra: Any) -> Prepared:
        return self.do("give_infusion", self.fraction(day, factor, **extra), on=self.next_day(gap))

    def course(self) -> Patient:
        self.infuse(1, gap=7)
        self.infuse(2)
        self.infuse(3)
        return self

    def assessed(self, response: str, **kw: Any) -> Prepared:
        return self.do(
            "assess_response", {"assessment": assessment(response)}, on=self.next_day(25), **kw
        )
