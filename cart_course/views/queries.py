"""Questions the monitors ask, answered from the view tables (never by replaying patients).

Overdue is computed at query time, on the calendar the due date was counted in: a due date is
the local date of a clinical time as entered (its UTC offset) plus a number of days, exactly as
the protocol's schedule rule counts, so a row is overdue once its due day has ended in that
offset (``overdue_from``, a UTC instant kept on the row). ``now`` is that instant (default: the
clock); a ``datetime.date`` instead means that calendar day, whatever the offset (overdue when
the due date is before it). A held fraction has no due date (the hold decides), so it is never
overdue; the watchlist shows it instead.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Collection
from typing import Any

from ..protocol.labels import next_action_label
from ..protocol.parameters import DEFAULT_PARAMETERS
from ..protocol.states import State as CourseState
from ..protocol.versions import UnknownProtocolVersionError, get_version
from .projection import BOARD_COLUMNS, DUE_COUNTS, KEPT_COUNTS, NEXT_KINDS
from .store import ViewDB

_BOARD_SELECT = "SELECT " + ", ".join(BOARD_COLUMNS) + " FROM view_board"


#: When "overdue" is judged: an instant (naive: UTC), a calendar day, or None for the clock.
Moment = dt.datetime | dt.date | None


def _instant(now: dt.datetime | None) -> dt.datetime:
    """``now`` in UTC (naive taken as UTC; None: the clock)."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now.astimezone(dt.UTC)


def today_of(now: Moment) -> dt.date:
    """The UTC date of ``now`` (a day given as such: that day)."""
    if isinstance(now, dt.date) and not isinstance(now, dt.datetime):
        return now
    return _instant(now).date()


def as_of(now: Moment) -> str:
    """What "overdue" was judged against, as shown to the monitor."""
    if isinstance(now, dt.date) and not isinstance(now, dt.datetime):
        return now.isoformat()
    if now is None:
        return _instant(None).isoformat(timespec="seconds")
    return (now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)).isoformat()


class _Cutoff:
    """The SQL test and order of "overdue" as of a moment, and each row's days overdue."""

    __slots__ = ("column", "day", "param", "utc", "where")

    def __init__(self, now: Moment) -> None:
        if isinstance(now, dt.date) and not isinstance(now, dt.datetime):
            self.day: dt.date | None = now
            self.utc: dt.datetime | None = None
            self.where, self.param = "due_on < ?", now.isoformat()
            self.column = "due_on"
        else:
            self.day = None
            self.utc = _instant(now).replace(tzinfo=None)
            # ``overdue_from`` has one fixed width (``projection.overdue_from``): compare as text
            self.where = "overdue_from <= ?"
            self.param = self.utc.isoformat(timespec="microseconds")
            self.column = "overdue_from"

    @property
    def order(self) -> str:
        """Most overdue first: the earliest due first, then by patient id (a total order)."""
        return f"{self.column}, patient_id"

    def days_overdue(self, due_on: str | None, overdue_from: str | None) -> int:
        if not due_on:
            return 0
        due = dt.date.fromisoformat(due_on)
        if self.day is not None:
            return max(0, (self.day - due).days)
        assert self.utc is not None
        if overdue_from is None:  # no instant (a calendar overflow): judged in UTC
            return max(0, (self.utc.date() - due).days)
        # the row's UTC offset: the end of its due day, local minus UTC
        offset = (
            dt.datetime.combine(due, dt.time(0))
            + dt.timedelta(days=1)
            - dt.datetime.fromisoformat(overdue_from)
        )
        try:
            local = (self.utc + offset).date()
        except OverflowError:
            return 0
        return max(0, (local - due).days)


def _board_dict(row: tuple[Any, ...], cutoff: _Cutoff) -> dict[str, Any]:
    data = dict(zip(BOARD_COLUMNS, row, strict=True))
    days = cutoff.days_overdue(data["due_on"], data["overdue_from"])
    data["overdue"] = days > 0
    data["days_overdue"] = days
    for flag in ("hold", "severe_open"):
        data[flag] = bool(data[flag])
    _product_wait(data, cutoff)
    return data


def _product_wait(data: dict[str, Any], cutoff: _Cutoff) -> None:
    """A tracked product not yet infused: days since its collection, and whether that is longer
    than the protocol's ``product_wait_alert_days`` (flagged on the board)."""
    waiting = None
    collected = data.get("product_collected_on")
    if collected and data.get("product_status") not in (None, "infused"):
        today = cutoff.utc.date() if cutoff.utc is not None else cutoff.day
        if today is not None:
            waiting = max(0, (today - dt.date.fromisoformat(collected)).days)
    data["product_waiting_days"] = waiting
    try:
        limit = get_version(str(data.get("protocol_version"))).params.product_wait_alert_days
    except UnknownProtocolVersionError:
        limit = DEFAULT_PARAMETERS.product_wait_alert_days
    data["product_waiting_too_long"] = waiting is not None and waiting > limit


#: Where a page of the overdue board ends: (the row's sort key, its patient id).
OverdueKey = tuple[str, str]


class UnknownPageStart(ValueError):
    """``after`` names a patient that has no place in the overdue order (no due date)."""


def overdue_key(row: dict[str, Any], now: Moment = None) -> OverdueKey:
    """The place of ``row`` (a board row of :func:`board`) in the overdue order: what
    ``after`` takes to go on after it (an instant ``now`` or None: the row's ``overdue_from``;
    a day: its ``due_on``)."""
    return (str(row[_Cutoff(now).column]), str(row["patient_id"]))


#: The board's next actions after the course (issue 16), by the command they name: a follow-up
#: visit (``record_follow_up (M3, window ...)``) or a safety report (``record_sae_report (...)``),
#: and the board's ``next_kind`` of each (indexed with ``overdue_from``). A patient counts under
#: its next action: the one due first.
ACTION_KINDS: dict[str, str] = {"record_follow_up": "follow_up", "record_sae_report": "sae_report"}
ACTIONS: tuple[str, ...] = tuple(ACTION_KINDS)
_ACTION_WHERE = "next_kind = ?"

#: ``status --ae-grade N``: an adverse event (any toxicity episode: CRS and ICANS are adverse
#: events of those terms) is *open* while no resolution is on record (``resolve_toxicity``, or a
#: death attributed to it, which closes it at grade 5), and *recent* when it ended at most this
#: many days before the moment judged (``--now``). An assumption of the monitors (the trial text
#: sets none); documented in docs/monitoring.md.
AE_RECENT_DAYS = 30
#: The grades an AE filter takes (CTCAE v5.0, ASTCT: 1-5).
AE_GRADES = (1, 2, 3, 4, 5)


def _action_pattern(action: str) -> str:
    """The ``next_kind`` of ``action`` (a command name of :data:`ACTIONS`)."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    return ACTION_KINDS[action]


#: A next-action filter: one command of :data:`ACTIONS`, or several (any of them).
Action = str | tuple[str, ...]


def _kinds(action: Action) -> list[str]:
    names = (action,) if isinstance(action, str) else tuple(dict.fromkeys(action))
    if not names:
        raise ValueError(f"no action given; actions: {', '.join(ACTIONS)}")
    return [_action_pattern(name) for name in names]


def _action_filter(action: Action | None, where: list[str], params: list[Any]) -> None:
    if action is None:
        return
    kinds = _kinds(action)
    where.append(
        _ACTION_WHERE if len(kinds) == 1 else f"next_kind IN ({', '.join('?' * len(kinds))})"
    )
    params += kinds


def _ae_grade_filter(
    min_grade: int | None, now: Moment, where: list[str], params: list[Any]
) -> None:
    """Patients with an open or recent adverse event whose worst grade is ``min_grade`` or more."""
    if min_grade is None:
        return
    if min_grade not in AE_GRADES:
        raise ValueError(f"an AE grade is one of 1-5, not {min_grade!r}")
    # the open ones from the board's own column, the recent ones from the episodes ended since
    # the cutoff: two index ranges
    where.append(
        "(open_ae_grade >= ? OR patient_id IN (SELECT patient_id FROM view_toxicity "
        "WHERE resolved_utc >= ? AND worst_grade >= ?))"
    )
    params += [min_grade, recent_since(now), min_grade]


def recent_since(now: Moment) -> str:
    """The earliest end of an AE still counted as recent as of ``now`` (a UTC instant, naive
    ISO with microseconds; a day given as ``now``: from its start, UTC)."""
    if isinstance(now, dt.date) and not isinstance(now, dt.datetime):
        now = dt.datetime.combine(now, dt.time(0), tzinfo=dt.UTC)
    since = _instant(now).replace(tzinfo=None) - dt.timedelta(days=AE_RECENT_DAYS)
    return since.isoformat(timespec="microseconds")


def board(
    db: ViewDB,
    *,
    state: str | None = None,
    overdue: bool = False,
    toxicity: bool = False,
    now: Moment = None,
    limit: int | None = None,
    after: str | OverdueKey | None = None,
    action: Action | None = None,
    product: str | None = None,
    hold: bool = False,
    awaiting: bool = False,
    contains: str | None = None,
    min_ae_grade: int | None = None,
    sites: Sites = None,
    has_open_queries: bool | None = None,
) -> list[dict[str, Any]]:
    """Board rows, by patient id (``overdue``: most overdue first); filters combine (AND):
    ``hold`` fractions held for toxicity, ``awaiting`` a response assessment due, ``contains``
    a patient id containing the text (case-insensitive).

    ``after`` pages on the order of the rows (a keyset): the rows that come after it, so that
    pages taken one after the other give every matching row once, in order. By patient id:
    the last patient id of the previous page. Overdue: its :func:`overdue_key` (the place of the
    last row), or its patient id, whose place is then looked up (:class:`UnknownPageStart` when
    it has no due date); the key is the safer one, as a row that changed between two pages moves.
    """
    cutoff = _Cutoff(now)
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if overdue:
        where.append(cutoff.where)
        params.append(cutoff.param)
    if toxicity:
        where.append("open_toxicities > 0")
    _action_filter(action, where, params)
    _product_filter(product, where, params)
    _more_filters(where, params, hold=hold, awaiting=awaiting, contains=contains)
    _ae_grade_filter(min_ae_grade, now, where, params)
    _site_filter(sites, where, params)
    _queries_filter(has_open_queries, where)
    if after is not None and not overdue:
        where.append("patient_id > ?")
        params.append(after if isinstance(after, str) else after[1])
    elif after is not None:
        if isinstance(after, str):
            row = db.fetchone(
                f"SELECT {cutoff.column} FROM view_board WHERE patient_id = ?", [after]
            )
            if row is None or row[0] is None:
                raise UnknownPageStart(
                    f"patient {after!r} has no place in the overdue order (no due date)"
                )
            after = (str(row[0]), after)
        where.append(f"({cutoff.column} > ? OR ({cutoff.column} = ? AND patient_id > ?))")
        params += [after[0], after[0], after[1]]
    sql = _BOARD_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {cutoff.order}" if overdue else " ORDER BY patient_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return with_query_summary(db, [_board_dict(r, cutoff) for r in db.fetchall(sql, params)], now)


def count(
    db: ViewDB,
    *,
    state: str | None = None,
    overdue: bool = False,
    toxicity: bool = False,
    now: Moment = None,
    action: Action | None = None,
    product: str | None = None,
    min_ae_grade: int | None = None,
    sites: Sites = None,
    has_open_queries: bool | None = None,
) -> int:
    if (
        (sites is not None and state is None and not overdue and not toxicity)
        and action is None
        and product is None
        and min_ae_grade is None
        and has_open_queries is None
    ):  # the cohort view keeps each site's count
        chosen = sorted(set(sites))
        if not chosen:
            return 0
        row = db.fetchone(
            "SELECT COALESCE(SUM(patients), 0) FROM view_cohort WHERE dimension = 'site' "
            f"AND key IN ({', '.join('?' * len(chosen))})",
            chosen,
        )
        return int(row[0]) if row else 0
    if (
        not overdue
        and not toxicity
        and action is None
        and product is None
        and min_ae_grade is None
        and sites is None
        and has_open_queries is None
    ):  # the cohort view keeps these counts
        if state is None:
            row = db.fetchone(
                "SELECT COALESCE(SUM(patients), 0) FROM view_cohort WHERE dimension = 'state'"
            )
        else:
            row = db.fetchone(
                "SELECT patients FROM view_cohort WHERE dimension = 'state' AND key = ?", [state]
            )
        return int(row[0]) if row else 0
    if (
        state is None
        and not toxicity
        and product is None
        and min_ae_grade is None
        and sites is None
        and has_open_queries is None
    ):
        return _kept_count(db, overdue, now, action)
    if (
        has_open_queries
        and not overdue
        and not toxicity
        and action is None
        and product is None
        and min_ae_grade is None
        and sites is None
    ):
        # the patients with a query not closed, from the partial index alone
        sql = "SELECT COUNT(DISTINCT patient_id) FROM view_query WHERE status <> 'closed'"
        if state is not None:
            sql += " AND patient_id IN (SELECT patient_id FROM view_board WHERE state = ?)"
        row = db.fetchone(sql, [state] if state is not None else [])
        return int(row[0]) if row else 0
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if overdue:
        cutoff = _Cutoff(now)
        where.append(cutoff.where)
        params.append(cutoff.param)
    if toxicity:
        where.append("open_toxicities > 0")
    _action_filter(action, where, params)
    _product_filter(product, where, params)
    _ae_grade_filter(min_ae_grade, now, where, params)
    _site_filter(sites, where, params)
    _queries_filter(has_open_queries, where)
    sql = "SELECT COUNT(*) FROM view_board" + (" WHERE " + " AND ".join(where) if where else "")
    row = db.fetchone(sql, params)
    return int(row[0]) if row else 0


#: The board's next action when a response assessment is due (``projection.next_due``).
AWAITING_ASSESSMENT = "assess_response"


def _more_filters(
    where: list[str], params: list[Any], *, hold: bool, awaiting: bool, contains: str | None
) -> None:
    if hold:
        where.append("hold = 1")
    if awaiting:
        where.append("next_action = ?")
        params.append(AWAITING_ASSESSMENT)
    if contains:
        escaped = contains.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
        where.append("LOWER(patient_id) LIKE ? ESCAPE '!'")
        params.append(f"%{escaped}%")


def attention(db: ViewDB, now: Moment = None, sites: Sites = None) -> dict[str, int]:
    """What needs action now, counted: overdue, open toxicity, fractions held, a response
    assessment due, an SAE report due (the board's summary cards; each is a board filter), in
    ``sites`` when given (a site-limited token's)."""

    def n(sql: str, params: list[Any] | None = None) -> int:
        where, args = [sql], list(params or [])
        _site_filter(sites, where, args)
        row = db.fetchone("SELECT COUNT(*) FROM view_board WHERE " + " AND ".join(where), args)
        return int(row[0]) if row else 0

    cutoff = _Cutoff(now)
    return {
        "overdue": n(cutoff.where, [cutoff.param]),
        "open_toxicity": n("open_toxicities > 0"),
        "hold": n("hold = 1"),
        "awaiting_assessment": n("next_action = ?", [AWAITING_ASSESSMENT]),
        "sae_report_due": n(_ACTION_WHERE, [_action_pattern("record_sae_report")]),
    }


#: States sort in the protocol's order (screening first, the ends last), not alphabetically.
_STATE_ORDER: dict[str, int] = {s.value: i for i, s in enumerate(CourseState)}


def _text_key(value: Any) -> tuple[int, str]:
    """Empty values last, whatever the direction."""
    return (1, "") if value in (None, "") else (0, str(value).lower())


def _number_key(value: Any) -> tuple[int, float]:
    return (1, 0.0) if value is None else (0, float(value))


def _dose_share(row: dict[str, Any]) -> float | None:
    delivered, planned = row.get("delivered_cells"), row.get("planned_cells")
    return None if delivered is None or not planned else float(delivered) / float(planned)


def attention_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """ "Needs attention" first: overdue (most days first), an SAE report due, severe open
    toxicity, fractions held, open toxicity (worst grade first), a response assessment or a
    decision due; then the earliest due date, then the patient id."""
    action = str(row.get("next_action") or "")
    return (
        -int(row.get("days_overdue") or 0),
        not action.startswith("record_sae_report"),
        not row.get("severe_open"),
        not row.get("hold"),
        -int(row.get("max_open_grade") or 0),
        not (action == AWAITING_ASSESSMENT or action.startswith("decide")),
        _text_key(row.get("due_on")),
        str(row["patient_id"]),
    )


#: The board's sort keys (``sort=KEY`` ascending, ``sort=-KEY`` descending; empty values last).
BOARD_SORTS: dict[str, Any] = {
    "attention": attention_key,
    "patient": lambda r: str(r["patient_id"]),
    "site": lambda r: _text_key(r.get("site")),
    "state": lambda r: _number_key(_STATE_ORDER.get(str(r.get("state")))),
    "course": lambda r: _number_key(r.get("course_number")),
    "next_action": lambda r: _text_key(next_action_label(r.get("next_action"))),  # as shown
    "due": lambda r: _text_key(r.get("due_on")),
    "dose": lambda r: _number_key(_dose_share(r)),
    "toxicity": lambda r: _number_key(
        None
        if not r.get("open_toxicities")
        else 100 * (r.get("max_open_grade") or 0) + int(r["open_toxicities"])
    ),
    "response": lambda r: _text_key(r.get("response")),
    "last_event": lambda r: _text_key(r.get("last_occurred_at")),
}


def sort_board(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """``rows`` in the order ``sort`` names (a key of :data:`BOARD_SORTS`, ``-`` in front for
    descending); ties by patient id, empty values last in both directions."""
    descending = sort.startswith("-")
    name = sort[1:] if descending else sort
    if name not in BOARD_SORTS:
        raise ValueError(f"sort {sort!r} is not one of {', '.join(BOARD_SORTS)} (- for descending)")
    key = BOARD_SORTS[name]
    out = sorted(rows, key=lambda r: str(r["patient_id"]))  # ties: by patient id (stable sorts)
    if not descending:
        return sorted(out, key=key)
    present = [r for r in out if not _is_empty(key(r))]
    empty = [r for r in out if _is_empty(key(r))]
    return sorted(present, key=key, reverse=True) + empty


def _is_empty(key: Any) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and key[0] == 1


def _kept_count(db: ViewDB, overdue: bool, now: Moment, action: Action | None) -> int:
    """The patients whose next action is ``action``'s kind (any kind: None), overdue as of
    ``now`` or not, from the kept counts (``projection.KEPT_COUNTS``, ``DUE_COUNTS``) instead
    of counting every matching row.

    Overdue as of an instant on calendar day ``c`` (UTC): a row due before ``c - 1`` is overdue
    whatever its UTC offset (``overdue_from`` is at most 14 h after the end of its due day in
    UTC, and an SAE report's due instant is within its local date's +/-14 h), and a row due
    after ``c + 1`` is not; the rows due on ``c - 1 .. c + 1`` are judged one by one on
    ``overdue_from`` (an index range). A calendar day (``now`` a date): the rows due before it.
    """
    kinds = _kinds(action) if action is not None else list(NEXT_KINDS)
    marks = ", ".join("?" * len(kinds))
    if not overdue:
        row = db.fetchone(
            "SELECT COALESCE(SUM(patients), 0) FROM view_cohort "
            f"WHERE dimension = ? AND key IN ({marks})",
            [KEPT_COUNTS, *kinds],
        )
        return int(row[0]) if row else 0
    dims = [DUE_COUNTS + k for k in kinds]
    cutoff = _Cutoff(now)
    if cutoff.day is not None:  # due before that calendar day
        row = db.fetchone(
            "SELECT COALESCE(SUM(patients), 0) FROM view_cohort "
            f"WHERE dimension IN ({marks}) AND key < ?",
            [*dims, cutoff.day.isoformat()],
        )
        return int(row[0]) if row else 0
    assert cutoff.utc is not None
    day = cutoff.utc.date()
    try:
        first, last = day - dt.timedelta(days=1), day + dt.timedelta(days=1)
    except OverflowError:  # at the calendar's ends: count the rows
        return _row_count(db, cutoff, action)
    row = db.fetchone(
        "SELECT COALESCE(SUM(patients), 0) FROM view_cohort "
        f"WHERE dimension IN ({marks}) AND key < ?",
        [*dims, first.isoformat()],
    )
    counted = int(row[0]) if row else 0
    # an index-only range per kind (SQLite is told which index: without statistics it would
    # take the one on overdue_from and read every overdue row; PostgreSQL has its statistics)
    hint = " INDEXED BY view_board_kind_due" if db.kind == "sqlite" else ""
    band = db.fetchone(
        f"SELECT COUNT(*) FROM view_board{hint} WHERE next_kind IN ({marks}) "
        "AND due_on >= ? AND due_on <= ? AND overdue_from <= ?",
        [*kinds, first.isoformat(), last.isoformat(), cutoff.param],
    )
    return counted + (int(band[0]) if band else 0)


def _row_count(db: ViewDB, cutoff: _Cutoff, action: Action | None) -> int:
    where = [cutoff.where]
    params: list[Any] = [cutoff.param]
    _action_filter(action, where, params)
    row = db.fetchone("SELECT COUNT(*) FROM view_board WHERE " + " AND ".join(where), params)
    return int(row[0]) if row else 0


#: ``status --product``: a product status, or ``any`` (every patient whose product is tracked).
PRODUCT_FILTERS = ("any", "collected", "in_manufacture", "released", "failed", "infused")


#: The sites a query is limited to (issue 17): None for every site.
Sites = Collection[str] | None


def _site_filter(sites: Sites, where: list[str], params: list[Any], column: str = "site") -> None:
    """Only the rows of ``sites`` (an empty collection: no row)."""
    if sites is None:
        return
    chosen = sorted(set(sites))
    if not chosen:
        where.append("1 = 0")
        return
    if len(chosen) == 1:
        where.append(f"{column} = ?")
    else:
        where.append(f"{column} IN ({', '.join('?' * len(chosen))})")
    params.extend(chosen)


def _product_filter(product: str | None, where: list[str], params: list[Any]) -> None:
    if product is None:
        return
    if product == "any":
        where.append("product_status IS NOT NULL")
    else:
        where.append("product_status = ?")
        params.append(product)


# -- data queries (issue 17) ---------------------------------------------------------------------

#: The patients with a query that is not closed (open, answered or re-opened).
_OPEN_QUERY_PATIENTS = "SELECT patient_id FROM view_query WHERE status <> 'closed'"
QUERY_STATUSES = ("open", "answered", "reopened", "closed")
QUERY_KEYS = (
    "patient_id",
    "query_id",
    "status",
    "on_version",
    "field",
    "rule",
    "text",
    "opened_by",
    "opened_at",
    "opened_occurred_at",
    "updated_at",
    "answer",
    "opened_utc",
)


def _queries_filter(has_open_queries: bool | None, where: list[str]) -> None:
    if has_open_queries is None:
        return
    # one probe of the partial index ``view_query_open`` per board row
    where.append(
        ("" if has_open_queries else "NOT ")
        + "EXISTS (SELECT 1 FROM view_query q WHERE q.patient_id = view_board.patient_id "
        "AND q.status <> 'closed')"
    )


def _age_days(opened_at: str | None, now: Moment) -> float | None:
    """Days from ``opened_at`` (a query's clinical opening time; naive: UTC) to ``now``."""
    if opened_at is None:
        return None
    if isinstance(now, dt.date) and not isinstance(now, dt.datetime):
        now = dt.datetime.combine(now, dt.time(0), tzinfo=dt.UTC)
    opened = dt.datetime.fromisoformat(opened_at)
    if opened.tzinfo is None:
        opened = opened.replace(tzinfo=dt.UTC)
    return round(max(0.0, (_instant(now) - opened).total_seconds()) / 86400, 2)


def _aware(utc: str | None) -> str | None:
    """A view's UTC instant (naive ISO) as ISO with its offset, ``+00:00``."""
    if utc is None:
        return None
    return dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC).isoformat()


def query_summary(
    db: ViewDB, patient_ids: list[str] | None = None, now: Moment = None
) -> dict[str, dict[str, Any]]:
    """Per patient with a query that is not closed: how many (``open_queries``), when the oldest
    was opened in clinical time (UTC) and its age in days (as of ``now``). ``patient_ids``:
    only these patients. The per-patient figures a per-site aggregation groups."""
    sql = "SELECT patient_id, COUNT(*), MIN(opened_utc) FROM view_query WHERE status <> 'closed'"
    rows: list[tuple[Any, ...]] = []
    if patient_ids is None:
        rows = db.fetchall(sql + " GROUP BY patient_id")
    else:
        for i in range(0, len(patient_ids), 500):
            chunk = patient_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows += db.fetchall(sql + f" AND patient_id IN ({marks}) GROUP BY patient_id", chunk)
    return {
        str(pid): {
            "open_queries": int(n),
            "oldest_open_query_at": _aware(oldest),
            "oldest_open_query_age_days": _age_days(oldest, now),
        }
        for pid, n, oldest in rows
    }


def with_query_summary(
    db: ViewDB, rows: list[dict[str, Any]], now: Moment = None
) -> list[dict[str, Any]]:
    """Board rows with each patient's open queries and the oldest one's age (0 / None)."""
    if not rows:
        return rows
    ids = [str(r["patient_id"]) for r in rows]
    found = query_summary(db, ids if len(ids) <= 2000 else None, now)
    for r in rows:
        summary = found.get(str(r["patient_id"]))
        r["open_queries"] = summary["open_queries"] if summary else 0
        r["oldest_open_query_at"] = summary["oldest_open_query_at"] if summary else None
        r["oldest_open_query_age_days"] = summary["oldest_open_query_age_days"] if summary else None
    return rows


def query_counts(db: ViewDB) -> dict[str, int]:
    """How many data queries are in each status (every status, 0 when none)."""
    found = {
        str(status): int(n)
        for status, n in db.fetchall("SELECT status, COUNT(*) FROM view_query GROUP BY status")
    }
    return {status: found.get(status, 0) for status in QUERY_STATUSES}


def query_list(
    db: ViewDB,
    *,
    status: str | None = None,
    patient_id: str | None = None,
    unresolved: bool = False,
    limit: int | None = None,
    now: Moment = None,
    sites: Sites = None,
) -> list[dict[str, Any]]:
    """Data queries, oldest first (in clinical time; each query's ``age_days`` counts from its
    clinical opening time, ``opened_occurred_at``; ``opened_at`` is its record time): by status (``open``, ``answered``, ``reopened``,
    ``closed``), by patient, or every query not closed (``unresolved``); only the patients of
    ``sites`` when given (a site-limited token's)."""
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        if status not in QUERY_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(QUERY_STATUSES)}")
        where.append("status = ?")
        params.append(status)
    if unresolved:
        where.append("status <> 'closed'")
    if patient_id is not None:
        where.append("patient_id = ?")
        params.append(patient_id)
    if sites is not None:
        inner: list[str] = []
        _site_filter(sites, inner, params)
        where.append(f"patient_id IN (SELECT patient_id FROM view_board WHERE {inner[0]})")
    sql = f"SELECT {', '.join(QUERY_KEYS)} FROM view_query"
    sql += (
        " WHERE " + " AND ".join(where) if where else ""
    ) + " ORDER BY opened_utc, patient_id, query_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    out = []
    for row in db.fetchall(sql, params):
        data = dict(zip(QUERY_KEYS, row, strict=True))
        utc = data.pop("opened_utc")
        data["age_days"] = _age_days(utc, now) if data["status"] != "closed" else None
        data["awaiting"] = (
            "site"
            if data["status"] in ("open", "reopened")
            else ("monitor" if data["status"] == "answered" else None)
        )
        out.append(data)
    return out


def changed_since(
    db: ViewDB, position: int, now: Moment = None, sites: Sites = None
) -> list[dict[str, Any]]:
    """Board rows changed by notifications after ``position`` (what ``watch`` prints; ``sites``:
    of those sites' patients only)."""
    where, params = ["position > ?"], [position]
    _site_filter(sites, where, params)
    rows = db.fetchall(
        _BOARD_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY position, patient_id", params
    )
    cutoff = _Cutoff(now)
    return [_board_dict(r, cutoff) for r in rows]


def patient(db: ViewDB, patient_id: str, now: Moment = None) -> dict[str, Any] | None:
    row = db.fetchone(_BOARD_SELECT + " WHERE patient_id = ?", [patient_id])
    return None if row is None else with_query_summary(db, [_board_dict(row, _Cutoff(now))], now)[0]


def watchlist(db: ViewDB, now: Moment = None, sites: Sites = None) -> list[dict[str, Any]]:
    """Open toxicities (CRS, ICANS, others) with grade, onset, hold, and time since the last
    infusion, worst grade first; then patients on hold without an open toxicity row (none
    expected, listed for safety). A day given as ``now``: its start, UTC."""
    if isinstance(now, dt.date) and not isinstance(now, dt.datetime):
        now = dt.datetime.combine(now, dt.time(0), tzinfo=dt.UTC)
    moment = _instant(now)
    where = ["t.is_open = 1"]
    params: list[Any] = []
    _site_filter(sites, where, params, "b.site")
    rows = db.fetchall(
        "SELECT t.patient_id, t.toxicity_id, t.kind, t.term, t.grade, t.worst_grade, t.scale, "
        "t.course_number, t.onset, t.severe, t.opens_hold, b.state, b.hold, b.last_infusion_on "
        "FROM view_toxicity t JOIN view_board b ON b.patient_id = t.patient_id "
        f"WHERE {' AND '.join(where)} ORDER BY t.grade DESC, t.onset, t.patient_id",
        params,
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


def cohort(db: ViewDB, sites: Sites = None) -> dict[str, dict[str, int]]:
    """Patients by state, by (last assessed) response and by course number (``sites``: of
    those sites' patients only, counted from the board)."""
    if sites is not None:
        return _cohort_of_sites(db, sites)
    out: dict[str, dict[str, int]] = {"state": {}, "response": {}, "course": {}}
    for dimension, key, n in db.fetchall(
        "SELECT dimension, key, patients FROM view_cohort WHERE dimension <> ? AND "
        "dimension NOT LIKE ? ORDER BY dimension, key",
        [KEPT_COUNTS, DUE_COUNTS + "%"],
    ):
        out.setdefault(dimension, {})[key] = int(n)
    row = db.fetchone("SELECT COALESCE(SUM(manufacturing_failures), 0) FROM view_board")
    failures = int(row[0]) if row else 0
    if failures or "product" in out:
        out["manufacturing_failures"] = {"lots": failures}
    return out


def _cohort_of_sites(db: ViewDB, sites: Collection[str]) -> dict[str, dict[str, int]]:
    """:func:`cohort`'s cells (``projection.cohort_keys``) for the patients of ``sites``."""
    where: list[str] = []
    params: list[Any] = []
    _site_filter(sites, where, params)
    cond = " WHERE " + " AND ".join(where)
    out: dict[str, dict[str, int]] = {"state": {}, "response": {}, "course": {}}
    columns = {
        "state": "state",
        "response": "COALESCE(response, 'not assessed')",
        "course": "course_number",
        "product": "product_status",
        "site": "site",
    }
    for dimension, column in columns.items():
        for key, n in db.fetchall(
            f"SELECT {column}, COUNT(*) FROM view_board{cond} GROUP BY {column} ORDER BY 1",
            params,
        ):
            if key is not None:
                out.setdefault(dimension, {})[str(key)] = int(n)
    row = db.fetchone(
        f"SELECT COALESCE(SUM(manufacturing_failures), 0) FROM view_board{cond}", params
    )
    failures = int(row[0]) if row else 0
    if failures or "product" in out:
        out["manufacturing_failures"] = {"lots": failures}
    return out


def open_queries_by_site(db: ViewDB, now: Moment = None) -> dict[str, tuple[int, float | None]]:
    """Per site: (data queries not closed, median age of those queries in days, as of ``now``).
    A site without any: absent (its counts say 0 queries, no median)."""
    rows = db.fetchall(
        "SELECT b.site, q.opened_utc FROM view_query q JOIN view_board b "
        "ON b.patient_id = q.patient_id WHERE q.status <> 'closed'"
    )
    ages: dict[str, list[float]] = {}
    for site, opened_at in rows:
        age = _age_days(opened_at, now)
        ages.setdefault(str(site), [])
        if age is not None:
            ages[str(site)].append(age)
    counts: dict[str, int] = {}
    for site, _ in rows:
        counts[str(site)] = counts.get(str(site), 0) + 1
    return {
        site: (counts[site], statistics.median(values) if values else None)
        for site, values in ages.items()
    }


def site_counts(db: ViewDB, now: Moment = None, sites: Sites = None) -> dict[str, dict[str, Any]]:
    """Per site (issue 17): patients, overdue next actions, data queries not closed and their
    median age in days (None when the site has none: :func:`open_queries_by_site`)."""
    cutoff = _Cutoff(now)
    where: list[str] = []
    params: list[Any] = [cutoff.param]
    _site_filter(sites, where, params)
    rows = db.fetchall(
        f"SELECT site, COUNT(*), SUM(CASE WHEN {cutoff.where} THEN 1 ELSE 0 END) "
        "FROM view_board"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY site ORDER BY site",
        params,
    )
    queries = open_queries_by_site(db, now)
    out: dict[str, dict[str, Any]] = {}
    for site, patients, overdue in rows:
        open_q = queries.get(str(site))
        out[str(site)] = {
            "patients": int(patients),
            "overdue_actions": int(overdue or 0),
            "open_queries": open_q[0] if open_q else 0,
            "median_query_age_days": open_q[1] if open_q else None,
        }
    return out


def deviations(
    db: ViewDB, patient_id: str | None = None, sites: Sites = None
) -> list[dict[str, Any]]:
    sql = (
        "SELECT patient_id, seq, version, trigger, course, deviation, reason, occurred_at "
        "FROM view_deviation"
    )
    params: list[Any] = []
    where: list[str] = []
    if patient_id is not None:
        where.append("patient_id = ?")
        params.append(patient_id)
    if sites is not None:
        inner: list[str] = []
        _site_filter(sites, inner, params)
        where.append(f"patient_id IN (SELECT patient_id FROM view_board WHERE {inner[0]})")
    if where:
        sql += " WHERE " + " AND ".join(where)
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


def overdue_count(db: ViewDB, now: Moment = None) -> int:
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


def skipped(db: ViewDB, limit: int | None = None) -> list[dict[str, Any]]:
    """Events the views could not read or apply and skipped, by position (see
    ``runner.Views``): each with its stream, patient (when known), version and why."""
    sql = "SELECT position, stream_id, patient_id, version, topic, reason FROM view_skipped"
    sql += " ORDER BY position"
    params: list[Any] = []
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    keys = ("position", "stream_id", "patient_id", "version", "topic", "reason")
    return [dict(zip(keys, r, strict=True)) for r in db.fetchall(sql, params)]


def skipped_summary(db: ViewDB) -> dict[str, Any]:
    """How many events the views skipped, and per stream: patient, versions, first reason."""
    rows = db.fetchall(
        "SELECT stream_id, MAX(patient_id), COUNT(*), MIN(version), MAX(version), "
        "MIN(position) FROM view_skipped GROUP BY stream_id ORDER BY MIN(position)"
    )
    streams = []
    total = 0
    for sid, pid, n, first, last, position in rows:
        reason = db.fetchone("SELECT reason FROM view_skipped WHERE position = ?", [position])
        total += int(n)
        streams.append(
            {
                "stream_id": sid,
                "patient_id": pid,
                "events": int(n),
                "first_version": first,
                "last_version": last,
                "first_position": int(position),
                "reason": reason[0] if reason else None,
            }
        )
    return {"events": total, "streams": streams}


def count_hold(db: ViewDB) -> int:
    row = db.fetchone("SELECT COUNT(*) FROM view_board WHERE hold = 1")
    return int(row[0]) if row else 0
