"""Notifications -> domain events, with a fast path for the store's plain JSON.

The application's mapper (``to_domain_event``) decodes every JSON object through the
transcoder's ``object_hook``; the views read every event of the log, so they take a shorter way
when it gives the very same event: a store without cipher or compressor, the application's
mapper and transcoder (``storage.CourseMapper`` / ``CourseTranscoder``, or the library's own),
an event class without upcasting, and a state that is either a course event's canonical bytes
(``storage.CourseMapper``: plain JSON) or the library's layout whose only transcoded value is the
record time (``timestamp``). Anything else (an encrypted or compressed store, a payload holding
another transcoded type, a state the fast parser refuses) goes through the mapper, unchanged.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from eventsourcing.persistence import JSONTranscoder, Mapper
from eventsourcing.utils import resolve_topic

from ..storage import (
    CANONICAL_MARK,
    CourseMapper,
    CourseTranscoder,
    from_canonical_state,
    is_canonical_state,
)

_loads: Callable[[bytes], Any] = msgspec.json.decode

_TYPE_KEY = b'"_type_"'


class EventDecoder:
    """Decode a notification (a stored event) as the application's mapper would."""

    def __init__(self, mapper: Any) -> None:
        self._mapper: Callable[[Any], Any] = mapper.to_domain_event
        self.fast = (
            type(mapper) in (Mapper, CourseMapper)
            and mapper.cipher is None
            and mapper.compressor is None
            and type(mapper.transcoder) in (JSONTranscoder, CourseTranscoder)
        )
        #: topic -> event class, or None when the class upcasts (the mapper decodes those).
        self._classes: dict[str, type[Any] | None] = {}

    def __call__(self, note: Any) -> Any:
        if self.fast:
            event = self._fast(note)
            if event is not None:
                return event
        return self._mapper(note)

    def _fast(self, note: Any) -> Any:
        state = note.state
        if type(state) is not bytes:
            return None
        canonical = CANONICAL_MARK in state
        if not canonical and state.count(_TYPE_KEY) != 1:
            return None
        oid = note.originator_id
        if type(oid) is not uuid.UUID:
            return None
        topic = note.topic
        try:
            cls = self._classes[topic]
        except KeyError:
            resolved: type[Any] = resolve_topic(topic)
            cls = self._classes[topic] = (
                resolved if getattr(resolved, "class_version", 1) == 1 else None
            )
        if cls is None:
            return None
        try:
            data = _loads(state)
        except ValueError:  # the mapper reports it properly
            return None
        if type(data) is not dict or "class_version" in data:
            return None
        if canonical and is_canonical_state(data):
            from_canonical_state(data)
        elif state.count(_TYPE_KEY) != 1:
            return None
        else:
            stamp = data.get("timestamp")
            if type(stamp) is not dict or len(stamp) != 2 or stamp.get("_type_") != "datetime_iso":
                return None
            data["timestamp"] = dt.datetime.fromisoformat(stamp["_data_"])
        data["originator_id"] = oid
        data["originator_version"] = note.originator_version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", data)
        return event
