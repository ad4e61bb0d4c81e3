"""Streaming exports: JSON Lines of the full log and the CSV timeline, one patient or all.

Both are generators: one patient's stream is in memory at a time, whatever the size of the log.
Patients come in registration order, each patient's events in version order.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from ..eventlog import EventLog
from .history import COLUMNS, csv_row, product_ids, timeline
from .log import streams


def jsonl(log: EventLog, patient_id: str | None = None) -> Iterator[str]:
    """One JSON object per stored event: identity, record time, hash chain, and every field."""
    for pid, events in streams(log, patient_id):
        for e in events:
            line: dict[str, Any] = {
                "patient_id": pid,
                "stream_id": e.stream,
                "version": e.version,
                "event": e.type,
                "recorded_at": e.recorded_at,
                "hash": e.hash,
                "fields": e.data,
            }
            product = product_ids(e)
            if product:
                line["product"] = product
            yield json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def csv_timeline(log: EventLog, patient_id: str | None = None) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    yield buffer.getvalue()
    for pid, events in streams(log, patient_id):
        for row in timeline(pid, events):
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(csv_row(row))
            yield buffer.getvalue()
