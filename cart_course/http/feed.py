"""The event feed: every recorded event in log order, by position (the notification id)."""

from __future__ import annotations

import json
import threading
from typing import Any
from uuid import UUID

from ..access import base_service, sites_of
from ..audit.log import require_readable
from ..course import RECORDED_ID, PatientCourse
from ..eventlog import REGISTERED_TOPIC
from ..service import CourseService

__all__ = ["REGISTERED_TOPIC", "PatientIndex", "event_json", "last_position", "read_feed"]
#: ``RECORDED_ID``: kept by events read from a migrated store (``cart_course.streamids``), not a
#: field of the event.
_HIDDEN = ("originator_id", "originator_version", "timestamp", RECORDED_ID)


def plain(data: Any) -> Any:
    """JSON-ready copy (datetimes and other objects as strings)."""
    return json.loads(json.dumps(data, default=str))


def event_json(event: Any, patient_id: str | None, position: int | None = None) -> dict[str, Any]:
    """One event as the API shows it: what, when (record and clinical time), who, why.

    ``position`` (the event's place in the whole log) is there when it is known: the feed has
    it, a patient's history (read from the patient's stream) does not, and leaves it out."""
    fields = {k: v for k, v in vars(event).items() if k not in _HIDDEN}
    data: dict[str, Any] = {} if position is None else {"position": position}
    data |= {
        "patient_id": patient_id,
        "version": event.originator_version,
        "type": type(event).__name__,
        "recorded_at": event.timestamp.isoformat(),
        **fields,
    }
    return plain(data)  # type: ignore[no-any-return]


class PatientIndex:
    """Maps stream ids back to patient ids (learned from the registrations in the log)."""

    def __init__(self, service: CourseService) -> None:
        self.service = service
        self._names: dict[UUID, str] = {}
        self._scanned = 0
        self._lock = threading.Lock()

    def learn(self, originator_id: UUID, patient_id: str) -> None:
        self._names[originator_id] = patient_id

    def name(self, originator_id: UUID) -> str | None:
        found = self._names.get(originator_id)
        if found is not None:
            return found
        with self._lock:
            log = self.service.log
            for page in log.registrations(self._scanned, page=1000):
                for n in page:
                    event: Any = log.to_event(n)
                    self._names[event.originator_id] = event.patient_id
                self._scanned = page[-1].id
        return self._names.get(originator_id)


def last_position(service: CourseService) -> int:
    return base_service(service).log.max_notification_id()


def read_feed(
    service: CourseService, index: PatientIndex, after: int, limit: int
) -> list[dict[str, Any]]:
    return read_feed_page(service, index, after, limit)[0]


def read_feed_page(
    service: CourseService, index: PatientIndex, after: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of the feed, and the position read up to (go on after it). A site-limited token's
    service (``access.ScopedService``) gets only its sites' patients' events: the others are
    read past, never shown (so the page may hold fewer than ``limit`` events)."""
    sites = sites_of(service)
    log = base_service(service).log
    items = []
    scanned = after
    for n in log.notifications(after, limit):
        scanned = n.id
        try:
            event: Any = log.to_event(n)
        except Exception:
            require_readable(log)  # a wrong or missing key: CipherKeyError (503), not a 500
            raise
        if isinstance(event, PatientCourse.Registered):
            index.learn(event.originator_id, event.patient_id)
        patient_id = index.name(event.originator_id)
        if sites is not None and (patient_id is None or not service.sees(patient_id)):  # type: ignore[attr-defined]
            continue
        items.append(event_json(event, patient_id, n.id))
    return items, scanned
