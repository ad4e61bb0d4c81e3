"""The figures' read side: patients' records rebuilt from the log (``service.log``), a page of
streams at a time, with the audit's replay (the event classes' own ``evolve_record``: the
records cannot drift from the application's)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..audit.log import patient_events, replay, streams
from ..contract import parse_patient_id
from ..eventlog import EventLog
from ..protocol.record import PatientRecord


def cohort_records(log: EventLog) -> list[PatientRecord]:
    """Every registered patient's record as of now, in registration order."""
    return [replay(pid, events) for pid, events in streams(log)]


def patient_record(log: EventLog, patient_id: str) -> PatientRecord:
    """One patient's record (``PatientNotFoundError`` when the log has none)."""
    pid = parse_patient_id(patient_id)
    return replay(pid, patient_events(log, pid))


#: Per log, the records last read and the position they were read at: the figures of one page
#: (four SVGs) and every request until the next event share one read of the log.
_CACHE: weakref.WeakKeyDictionary[EventLog, tuple[int, list[PatientRecord], str]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.Lock()


def cohort_as_of(log: EventLog) -> tuple[list[PatientRecord], str]:
    """Every patient's record, and what they are as of: the log's position when the read began
    (every event at or below it is in the records) and the latest clinical time on record.

    Read again only when the log has moved since the last read (the records are not changed by
    their readers: the figures only read them)."""
    from .model import last_clinical_time

    with _CACHE_LOCK:
        position = log.max_notification_id()
        cached = _CACHE.get(log)
        if cached is not None and cached[0] == position:
            return cached[1], cached[2]
        records = cohort_records(log)
        last = last_clinical_time(records)
        as_of = f"log position {position}" + (f", last clinical time {last}" if last else "")
        _CACHE[log] = (position, records, as_of)
        return records, as_of


#: Per log, the figures drawn at one position (by figure and parameters): the same request
#: answers again without drawing until the log moves. A few dozen at most per position.
_DRAWN: weakref.WeakKeyDictionary[EventLog, tuple[int, dict[tuple[Any, ...], str]]] = (
    weakref.WeakKeyDictionary()
)
_DRAWN_MAX = 32


def drawn(log: EventLog, key: tuple[Any, ...], draw: Callable[[], str]) -> str:
    """``draw()``, or what it gave for ``key`` at the log's current position."""
    position = log.max_notification_id()
    with _CACHE_LOCK:
        held = _DRAWN.get(log)
        if held is not None and held[0] == position and key in held[1]:
            return held[1][key]
    text = draw()
    with _CACHE_LOCK:
        held = _DRAWN.get(log)
        if held is None or held[0] != position:
            held = (position, {})
            _DRAWN[log] = held
        if len(held[1]) < _DRAWN_MAX:
            held[1][key] = text
    return text
