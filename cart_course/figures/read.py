"""The figures' read side: patients' records rebuilt from the log (``service.log``), a page of
streams at a time, with the audit's replay (the event classes' own ``evolve_record``: the
records cannot drift from the application's)."""

from __future__ import annotations

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


def cohort_as_of(log: EventLog) -> tuple[list[PatientRecord], str]:
    """Every patient's record, and what they are as of: the log's position when the read began
    (every event at or below it is in the records) and the latest clinical time on record."""
    from .model import last_clinical_time

    position = log.max_notification_id()
    records = cohort_records(log)
    last = last_clinical_time(records)
    return records, f"log position {position}" + (f", last clinical time {last}" if last else "")
