"""As-of views: the record at a version, as the system knew it at a record time, or as it stood
at a clinical time (as known now, corrections included)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..protocol.queries import UNRESOLVED, query_view
from .log import CORRECTED, MOVED, QUERIED, REGISTERED, SIGNED, LoggedEvent, Replayer


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def select(
    events: list[LoggedEvent],
    *,
    version: int | None = None,
    recorded_at: dt.datetime | None = None,
    occurred_at: dt.datetime | None = None,
) -> list[LoggedEvent]:
    """The events that make up the view (exactly one of the three bounds is given)."""
    if version is not None:
        return [e for e in events if e.version <= version]
    if recorded_at is not None:
        return [e for e in events if e.recorded_time <= recorded_at]
    assert occurred_at is not None
    # Clinical time of each move as known now: the latest correction may have re-dated it.
    when: dict[int, dt.datetime] = {}
    for e in events:
        if e.kind == MOVED and e.occurred_at:
            when[e.version] = _time(e.occurred_at)
        elif e.kind == CORRECTED:
            redated = (e.get("facts") or {}).get("_occurred_at")
            if isinstance(redated, str) and int(e.get("corrects")) in when:
                when[int(e.get("corrects"))] = _time(redated)
    included = {v for v, t in when.items() if t <= occurred_at}
    chosen = []
    for e in events:
        if (
            e.kind == REGISTERED
            or (e.kind == MOVED and e.version in included)
            or (e.kind == CORRECTED and int(e.get("corrects")) in included)
            or (
                e.kind == SIGNED
                and int(e.get("signs_version")) in included
                and e.occurred_at is not None
                and _time(e.occurred_at) <= occurred_at
            )
            or (
                e.kind == QUERIED
                and e.occurred_at is not None
                and _time(e.occurred_at) <= occurred_at
            )
        ):
            chosen.append(e)
    return chosen


def as_of(
    patient_id: str,
    events: list[LoggedEvent],
    *,
    version: int | None = None,
    recorded_at: dt.datetime | None = None,
    occurred_at: dt.datetime | None = None,
) -> dict[str, Any]:
    chosen = select(events, version=version, recorded_at=recorded_at, occurred_at=occurred_at)
    replayer = Replayer(patient_id)
    for e in chosen:
        replayer.apply(e)
    bound: dict[str, Any]
    if version is not None:
        bound = {"version": version}
    elif recorded_at is not None:
        bound = {"recorded_at": recorded_at.isoformat()}
    else:
        assert occurred_at is not None
        bound = {"occurred_at": occurred_at.isoformat()}
    latest = events[-1].version if events else 0
    included = [e.version for e in chosen]
    queries = replayer.record.queries
    return {
        **(
            {
                "open_queries": [
                    query_view(q, patient_id) for q in queries.values() if q["status"] in UNRESOLVED
                ]
            }
            if queries
            else {}
        ),
        "patient_id": patient_id,
        "as_of": bound,
        "events_included": len(chosen),
        "versions_included": included,
        "versions_excluded": [e.version for e in events if e.version not in set(included)],
        "latest_version": latest,
        "record": replayer.record.summary() if len(chosen) > 1 else None,
    }
