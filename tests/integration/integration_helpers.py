"""Hand-written command envelopes for the integration suite (the contract, as a caller sends it)."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from collections.abc import Callable
from typing import Any

from cart_course.contract import Command, parse_command
from cart_course.demo import assessment, crs, eligible_screening, icans
from cart_course.service import CommandResult, CourseService

T0 = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
SERVICE = {"id": "emr.site-01", "role": "service"}
CLINICIAN = {"id": "dr.lee", "role": "clinician", "name": "Dr. K. Lee"}

__all__ = [
    "CLINICIAN",
    "SERVICE",
    "T0",
    "Course",
    "assessment",
    "crs",
    "envelope",
    "icans",
    "raw_sql",
    "screening",
]

#: A statement (``%s`` placeholders) and its arguments -> the rows.
Sql = Callable[..., list[tuple[Any, ...]]]


def raw_sql(kind: str, url: str) -> Sql:
    """Plain SQL on a store's database behind the application's back (``sqlite`` or
    ``postgres``), a connection a statement: what a DBA or an attacker does."""
    if kind == "sqlite":

        def run(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(url)
            try:
                with conn:
                    return conn.execute(statement.replace("%s", "?"), args).fetchall()
            finally:
                conn.close()

        return run
    import psycopg

    def run_pg(statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(statement, args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    return run_pg


def screening(**changes: Any) -> dict[str, Any]:
    data = eligible_screening(random.Random(7))
    data.update(changes)
    return data


def envelope(
    command: str,
    patient_id: str,
    payload: dict[str, Any] | None = None,
    *,
    at: dt.datetime,
    key: str | None = None,
    reason: str | None = None,
    actor: dict[str, Any] | None = None,
    expected_version: int | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "command": command,
        "patient_id": patient_id,
        "occurred_at": at.isoformat(),
        "actor": actor or CLINICIAN,
        "reason": reason,
        "idempotency_key": key,
        "payload": payload or {},
    }
    if expected_version is not None:
        data["expected_version"] = expected_version
    return data


class Course:
    """One patient's course written step by step through the service, in clinical time."""

    def __init__(self, service: CourseService, patient_id: str, start: dt.datetime = T0) -> None:
        self.service = service
        self.pid = patient_id
        self.t = start
        self.n = 0
        self.weight = 70.0

    def command(
        self,
        command: str,
        payload: dict[str, Any] | None = None,
        *,
        hours: float = 1,
        days: float = 0,
        reason: str | None = None,
        actor: dict[str, Any] | None = None,
        key: str | None = None,
        expected_version: int | None = None,
    ) -> Command:
        self.t += dt.timedelta(days=days, hours=hours)
        self.n += 1
        return parse_command(
            envelope(
                command,
                self.pid,
                payload,
                at=self.t,
                key=key or f"{self.pid}:{self.n}:{command}",
                reason=reason,
                actor=actor,
                expected_version=expected_version,
            )
        )

    def do(self, command: str, payload: dict[str, Any] | None = None, **kw: Any) -> CommandResult:
        return self.service.execute(self.command(command, payload, **kw))

    # -- the usual steps -----------------------------------------------------------------------

    def screen(self, **changes: Any) -> CommandResult:
        return self.do("screen", {"screening": screening(**changes)})

    def apheresis(self) -> CommandResult:
        return self.do(
            "record_apheresis",
            {"apheresis_contraindication": False, "product_id": f"LOT-{self.pid}"},
            days=3,
        )

    def infuse(self, day: int, *, factor: float = 1.0, days: float = 1, **kw: Any) -> CommandResult:
        share = (0.10, 0.30, 0.60)[day - 1]
        payload: dict[str, Any] = {
            "day": day,
            "cells": {"value": self.weight * 1e6 * share * factor, "unit": "cells"},
            "product_lot": f"LOT-{self.pid}",
        }
        if day == 1:
            payload["weight"] = {"value": self.weight, "unit": "kg"}
        payload.update(kw.pop("extra", {}))
        hours = kw.pop("hours", 0)
        return self.do("give_infusion", payload, days=days, hours=hours, **kw)

    def d1_without_lot(self) -> CommandResult:
        """D1 recorded without its bedside check or lot: the rule ``fraction_unverified``
        opens a query on it."""
        return self.do(
            "give_infusion",
            {
                "day": 1,
                "cells": {"value": 7e6, "unit": "cells"},
                "weight": {"value": 70, "unit": "kg"},
            },
            days=14,
        )

    def full_course(self, first_gap: float = 14) -> None:
        self.infuse(1, days=first_gap)
        self.infuse(2)
        self.infuse(3)

    def assess(self, response: str, **kw: Any) -> CommandResult:
        return self.do("assess_response", {"assessment": assessment(response)}, days=26, **kw)
