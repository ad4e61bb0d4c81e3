"""Notifications -> domain events, with a fast path for the store's plain JSON.

The decoder lives with the log's read interface (:class:`cart_course.eventlog.EventDecoder`,
given by ``EventLog.decoder()``); this name stays for the views' readers.
"""

from __future__ import annotations

from ..eventlog import EventDecoder

__all__ = ["EventDecoder"]
