"""The read models against the log: which patients' view rows differ from a replay.

The views (``view_*`` tables) hold nothing the events do not, so anyone who can write the
database can edit them and the board shows it. This rebuilds the views in memory from the log up
to the stored views' position and names each patient whose rows differ (and the columns).
An encrypted store keeps its views in memory only (nothing stored to compare).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..audit.integrity import Problem
from ..eventlog import EventLog
from ..storage import StoreSettings, parse_store_url

#: The view tables keyed by patient (their first column is the patient id).
PATIENT_TABLES = ("view_board", "view_toxicity", "view_deviation", "view_query")


def views_problems(app: EventLog, store: StoreSettings) -> list[Problem]:
    """The patients whose stored view rows differ from the log replayed (none: equal, or no
    stored views to compare)."""
    return compare_views(app, store)[1]


def compare_views(app: EventLog, store: StoreSettings) -> tuple[int | None, list[Problem]]:
    """(the views' position, the differences); position None when there are no stored views
    to compare (the in-process store, an encrypted store, views never built)."""
    if store.kind == "memory" or app.cipher is not None:
        return None, []
    from ..views.runner import Views
    from ..views.store import ViewDB

    stored = ViewDB.open(store)
    try:
        position = stored.tracking()[0]
        if position == 0:
            return None, []
        held = stored.dump()
        columns = {
            table: [d[0] for d in stored.conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
            for table in PATIENT_TABLES
        }
    finally:
        stored.close()
    fresh = Views(app, store, db=ViewDB.open(parse_store_url("memory:")))
    try:
        while fresh.position() < position:
            if fresh.process_batch(min(fresh.batch_size, position - fresh.position())) == 0:
                break
        replayed = fresh.dump()
    finally:
        fresh.close()
    differs: dict[str, set[str]] = defaultdict(set)
    for table in PATIENT_TABLES:
        mine = _by_patient(held.get(table, []))
        theirs = _by_patient(replayed.get(table, []))
        for pid in sorted(set(mine) | set(theirs)):
            a, b = mine.get(pid, []), theirs.get(pid, [])
            if a == b:
                continue
            if len(a) != len(b):
                differs[pid].add(f"{table} ({len(a)} rows, the log gives {len(b)})")
                continue
            names = columns[table]
            cols = sorted(
                {
                    names[k]
                    for ra, rb in zip(a, b, strict=True)
                    for k in range(len(ra))
                    if ra[k] != rb[k]
                }
            )
            differs[pid].add(f"{table} ({', '.join(cols)})")
    problems = [
        Problem(
            patient_id=pid,
            version=None,
            check="views",
            message="the read model differs from the log replayed to the views' position "
            f"{position} in: {'; '.join(sorted(where))} (a view row was edited in the database; "
            "`cart-course views rebuild` restores it)",
        )
        for pid, where in sorted(differs.items())
    ]
    if held.get("view_cohort") != replayed.get("view_cohort") and not problems:
        problems.append(
            Problem(
                patient_id="(views)",
                version=None,
                check="views",
                message="view_cohort differs from the log replayed: edited in the database",
            )
        )
    # What a check found is kept with the views: the board refuses them until they are rebuilt
    # (a clean check clears it).
    marks = ViewDB.open(store)
    try:
        marks.mark_differing(
            [(pid, "; ".join(sorted(where))) for pid, where in sorted(differs.items())]
            or ([("(views)", "view_cohort")] if problems else [])
        )
    finally:
        marks.close()
    return position, problems


def _by_patient(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        out[str(row[0])].append(tuple(row))
    return out
