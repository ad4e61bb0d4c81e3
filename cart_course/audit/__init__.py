"""Audit: history replay, as-of views, conformance replay, tamper evidence, exports.

Reads the stored log directly (never the aggregate or its snapshots); see ``docs/audit.md``.
"""

from .asof import as_of
from .conformance import Conformance, Finding, check_history
from .integrity import Problem, VerifyReport, check_stream, seal, verify
from .log import LoggedEvent, patient_events, replay, streams

__all__ = [
    "Conformance",
    "Finding",
    "LoggedEvent",
    "Problem",
    "VerifyReport",
    "as_of",
    "check_history",
    "check_stream",
    "patient_events",
    "replay",
    "seal",
    "streams",
    "verify",
]
