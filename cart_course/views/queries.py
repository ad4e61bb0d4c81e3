"""Questions the monitors ask, answered from the view tables (never by replaying patients).

Overdue is computed at query time: a row is overdue when its due date is before ``today``
(the date of ``now``, UTC). A held fraction has no due date (the hold decides), so it is
never overdue; the watchlist shows it instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .projection import BOARD_COLUMNS
from .store import ViewDB

_BOARD_SELECT = "SELECT " + ", ".join(BOARD_COLUMNS) + " FROM view_board"


def today_of(now: dt.datetime | None) -> dt.date:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()


def _board_dict(row: tuple[Any, ...], today: dt.date) -> dict[str, Any]:
    data = dict(zip(BOARD_COLUMNS, row, strict=True))
    due = data["due_on"]
    days = (today - dt.date.fromisoformat(due)).days if due else None
    data["overdue"] = days is not None and days > 0
    data["days_overdue"] = days if days is not None and days > 0 else 0
    for flag in ("hold", "severe_open"):
        data[flag] = bool(data[flag])
    return data


def board(
    db: ViewDB,
    *,
    state: str | None = None,
    overdue: bool = False,
    toxicity: bool = False,
    now: dt.datetime | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Board rows, by patient id (``overdue``: most overdue first); filters combine (AND).
    ``after`` pages by patient id."""
    today = today_of(now)
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if overdue:
        where.append("due_on < ?")
        params.append(today.isoformat())
    if toxicity:
        where.append("open_toxicities > 0")
    if after is not None:
        where.append("patient_id > ?")
        params.append(after)
    sql = _BOARD_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY due_on, patient_id" if overdue else " ORDER BY patient_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_board_dict(r, today) for r in db.fetchall(sql, params)]


def count(
    db: ViewDB,
    *,
    state: str | None = None,
    overdue: bool = False,
    toxicity: bool = False,
    now: dt.datetime | None = None,
) -> int:
    if not overdue and not toxicity:  # the cohort view keeps these counts
        if state is None:
            row = db.fetchone(
                "SELECT COALESCE(SUM(patients), 0) FROM view_cohort WHERE dimension = 'state'"
            )
        else:
            row = db.fetchone(
                "SELECT patients FROM view_cohort WHERE dimension = 'state' AND key = ?", [state]
            )
        return int(row[0]) if row else 0
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if overdue:
        where.append("due_on < ?")
        params.append(today_of(now).isoformat())
    if toxicity:
        where.append("open_toxicities > 0")
    sql = "SELECT COUNT(*) FROM view_board" + (" WHERE " + " AND ".join(where) if where else "")
    row = db.fetchone(sql, params)
    return int(row[0]) if row else 0


def changed_since(
    db: ViewDB, position: int, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Board rows changed by notifications after ``position`` (what ``watch`` prints)."""
    rows = db.fetchall(
        _BOARD_SELECT + " WHERE position > ? ORDER BY position, patient_id", [position]
    )
    today = today_of(now)
    return [_board_dict(r, today) for r in rows]


def patient(db: ViewDB, patient_id: str, now: dt.datetime | None = None) -> dict[str, Any] | None:
    row = db.fetchone(_BOARD_SELECT + " WHERE patient_id = ?", [patient_id])
    return None if row is None else _board_dict(row, today_of(now))


def watchlist(db: ViewDB, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Open toxicities (CRS, ICANS, others) with grade, onset, hold, and time since the last
    infusion, worst grade first; then patients on hold without an open toxicity row (none
    expected, listed for safety)."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    rows = db.fetchall(
        "SELECT t.patient_id, t.toxicity_id, t.kind, t.term, t.grade, t.worst_grade, t.scale, "
        "t.course_number, t.onset, t.severe, t.opens_hold, b.state, b.hold, b.last_infusion_on "
        "FROM view_toxicity t JOIN view_board b ON b.patient_id = t.patient_id "
        "WHERE t.is_open = 1 ORDER BY t.grade DESC, t.onset, t.patient_id",
    )
    out = []
    for (
        pid,
        tid,
        kind,
        term,
        grade,
        worst,
        scale,
        course,
        onset,
        severe,
        opens_hold,
        state,
        hold,
        last_inf,
    ) in rows:
        onset_at = dt.datetime.fromisoformat(onset)
        if onset_at.tzinfo is None:
            onset_at = onset_at.replace(tzinfo=dt.UTC)
        days_since = (
            (moment.date() - dt.date.fromisoformat(last_inf[:10])).days if last_inf else None
        )
        out.append(
            {
                "patient_id": pid,
                "toxicity_id": tid,
                "kind": kind,
                "term": term,
                "grade": grade,
                "worst_grade": worst,
                "scale": scale,
                "course_number": course,
                "onset": onset,
                "open_for_hours": round((moment - onset_at).total_seconds() / 3600, 1),
                "severe": bool(severe),
                "holds_fractions": bool(opens_hold),
                "state": state,
                "patient_on_hold": bool(hold),
                "last_infusion_on": last_inf,
                "days_since_last_infusion": days_since,
            }
        )
    return out


def cohort(db: ViewDB) -> dict[str, dict[str, int]]:
    """Patients by state, by (last assessed) response and by course number."""
    out: dict[str, dict[str, int]] = {"state": {}, "response": {}, "course": {}}
    for dimension, key, n in db.fetchall(
        "SELECT dimension, key, patients FROM view_cohort ORDER BY dimension, key"
    ):
        out.setdefault(dimension, {})[key] = int(n)
    return out


def deviations(db: ViewDB, patient_id: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT patient_id, seq, version, trigger, course, deviation, reason, occurred_at "
        "FROM view_deviation"
    )
    params: list[Any] = []
    if patient_id is not None:
        sql += " WHERE patient_id = ?"
        params.append(patient_id)
    sql += " ORDER BY occurred_at, patient_id, seq"
    keys = (
        "patient_id",
        "seq",
        "version",
        "trigger",
        "course",
        "deviation",
        "reason",
        "occurred_at",
    )
    return [dict(zip(keys, r, strict=True)) for r in db.fetchall(sql, params)]


def overdue_count(db: ViewDB, now: dt.datetime | None = None) -> int:
    return count(db, overdue=True, now=now)


def severe_open(db: ViewDB) -> dict[str, int]:
    """Open severe toxicities by kind."""
    return {
        str(kind): int(n)
        for kind, n in db.fetchall(
            "SELECT kind, COUNT(*) FROM view_toxicity WHERE is_open = 1 AND severe = 1 "
            "GROUP BY kind ORDER BY kind"
        )
    }


def count_hold(db: ViewDB) -> int:
    row = db.fetchone("SELECT COUNT(*) FROM view_board WHERE hold = 1")
    return int(row[0]) if row else 0
