"""What every export reads: the log at a data cut-off, each moved event as known at that cut-off.

A cut-off is a record time: the export holds exactly the events recorded at or before it, so
the export of a cut-off equals the export of a store that held only those events (the record
time of a stored event never changes). Corrections recorded by the cut-off are applied to the
event they correct (:class:`Entry`); the ODM export also shows the values they replaced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import attrs

from ..audit.log import CORRECTED, MOVED, SIGNED, LoggedEvent, streams
from ..errors import InvalidCommandError
from ..eventlog import EventLog

#: The trial (ClinicalTrials.gov id): STUDYID of every dataset, the ODM Study OID.
STUDY_ID = "NCT03599375"
STUDY_NAME = "CD19 CAR-T for relapsed/refractory B-ALL"


class ExportInputError(InvalidCommandError):
    """A cut-off or an output the export refuses (exit 2, HTTP 422)."""


@attrs.define
class Entry:
    """A moved event as known at the cut-off: its facts, outcome and clinical time after the
    corrections recorded by then (``corrections``, oldest first), and its signatures."""

    event: LoggedEvent
    facts: dict[str, Any]
    outcome: dict[str, Any]
    occurred_at: str | None
    corrections: list[LoggedEvent] = attrs.Factory(list)
    signatures: list[LoggedEvent] = attrs.Factory(list)

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def version(self) -> int:
        return self.event.version


@attrs.frozen
class Subject:
    patient_id: str
    events: list[LoggedEvent]
    entries: list[Entry]


@attrs.frozen
class Cut:
    """The log at a cut-off: ``cutoff`` is the as-of given, or the record time of the newest
    event included (so the export of a store equals its export at its last record time).
    :meth:`subjects` reads the log again at each call, a page of streams at a time (an export
    never holds the whole log in memory), and keeps only what was recorded by the cut-off, so
    events recorded while an export runs are never in it."""

    log: EventLog
    as_of: dt.datetime | None
    cutoff: str
    event_count: int
    subject_count: int

    @property
    def bound(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.cutoff)

    def subjects(self) -> Iterator[Subject]:
        bound = self.bound
        for pid, events in streams(self.log):
            kept = [e for e in events if e.recorded_time <= bound]
            if kept:
                yield Subject(pid, kept, entries(kept))


def entries(events: list[LoggedEvent]) -> list[Entry]:
    by_version: dict[int, Entry] = {}
    out: list[Entry] = []
    for e in events:
        if e.kind == MOVED:
            entry = Entry(
                event=e,
                facts=dict(e.get("facts") or {}),
                outcome=dict(e.get("outcome") or {}),
                occurred_at=e.occurred_at,
            )
            by_version[e.version] = entry
            out.append(entry)
        elif e.kind == CORRECTED:
            target = by_version.get(int(e.get("corrects") or 0))
            if target is None:
                continue
            facts = dict(e.get("facts") or {})
            redated = facts.pop("_occurred_at", None)
            target.facts = facts
            if e.get("outcome"):
                target.outcome = dict(e.get("outcome"))
            if isinstance(redated, str):
                target.occurred_at = redated
            target.corrections.append(e)
        elif e.kind == SIGNED:
            target = by_version.get(int(e.get("signs_version") or 0))
            if target is not None:
                target.signatures.append(e)
    return out


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def read(
    log: EventLog,
    as_of: dt.datetime | None = None,
    *,
    now: dt.datetime | None = None,
    field: str = "--as-of",
) -> Cut:
    """Every patient's events recorded at or before ``as_of`` (every event when None).

    Refuses (:class:`ExportInputError`) an empty store, a cut-off in the future and one before
    the first event was recorded: both would export something that was never the database."""
    now = now or dt.datetime.now(dt.UTC)
    if as_of is not None and as_of > now:
        raise ExportInputError(
            field, f"{as_of.isoformat()} is in the future (now {now.isoformat()})"
        )
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    count = subjects = 0
    for _pid, events in streams(log):
        if events and (first is None or events[0].recorded_time < first):
            first = events[0].recorded_time
        kept = events if as_of is None else [e for e in events if e.recorded_time <= as_of]
        if not kept:
            continue
        count += len(kept)
        subjects += 1
        newest = kept[-1].recorded_time
        if last is None or newest > last:
            last = newest
    if first is None:
        raise ExportInputError(field, "the store holds no events: there is nothing to export")
    if as_of is not None and as_of < first:
        raise ExportInputError(
            field,
            f"{as_of.isoformat()} is before the first event was recorded "
            f"({first.isoformat()}): the database held nothing then",
        )
    assert last is not None
    cutoff = (as_of or last).astimezone(dt.UTC).isoformat()
    return Cut(log, as_of, cutoff, count, subjects)
