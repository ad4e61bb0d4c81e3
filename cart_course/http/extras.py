"""Routes over the audit (``cart_course.audit``) and the read models (``cart_course.views``).

Audit routes are for auditors and every read of them is written to the audit-access log. View
routes catch the read models up with the log before answering (pull; read-your-writes within this
process); ``wait_for`` lets a writer ask for its own position.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import threading
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlencode

import attrs
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from ..access import base_service, check_visible, narrow, sites_of
from ..contract import MAX_VERSION, parse_patient_id, parse_time
from ..errors import InvalidCommandError
from ..protocol.sites import SITE_ID_PATTERN
from ..protocol.states import State as CourseState
from ..protocol.versions import get_version
from ..service import CourseService
from ..sites import parse_site_id
from .auth import AUDITORS, VIEWERS
from .common import PatientId
from .params import (
    MAX_BOARD_PAGE,
    board_sort_query,
    contains_query,
    integer_query,
    patient_id_query,
    position_query,
    protocol_query,
    state_query,
    time_query,
)
from .problems import problem_responses
from .security import REPORT_CSP

Svc = NamedDependency[CourseService]
AUDIT = {"roles": AUDITORS, "audit": True}
STATES = tuple(s.value for s in CourseState)


def _time(value: str | None, field: str) -> dt.datetime | None:
    return None if value is None else parse_time(value, field)


#: A record time the audit is judged as of (issue 17: the queries open then).
AuditAsOf = Annotated[
    str | None,
    time_query(
        "Judge the record as the system knew it at this record time (RFC 3339): only the "
        "events recorded by then, and the data queries open then (default: now)"
    ),
]


def _cut(events: list[Any], as_of: str | None) -> list[Any]:
    """``events`` recorded at or before ``as_of`` (every one when None)."""
    when = _time(as_of, "query.as_of")
    return events if when is None else [e for e in events if e.recorded_time <= when]


def _protocol(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return get_version(value)
    except Exception as exc:
        raise InvalidCommandError("query.protocol", str(exc)) from None


# -- audit ---------------------------------------------------------------------------------------


@get(
    "/v1/patients/{patient_id:str}/as-of",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="The patient as of a version, a record time, or a clinical time",
    tags=["audit"],
)
def get_as_of(
    service: Svc,
    patient_id: PatientId,
    version: Annotated[int | None, integer_query(1, MAX_VERSION)] = None,
    recorded_at: Annotated[str | None, time_query("what the system knew then")] = None,
    occurred_at: Annotated[str | None, time_query("what had happened by then")] = None,
) -> dict[str, Any]:
    from ..audit import as_of, patient_events

    given = [
        n
        for n, v in (
            ("version", version),
            ("recorded_at", recorded_at),
            ("occurred_at", occurred_at),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise InvalidCommandError("query", "give exactly one of version, recorded_at, occurred_at")
    events = patient_events(service.log, parse_patient_id(patient_id))
    return as_of(
        patient_id,
        events,
        version=version,
        recorded_at=_time(recorded_at, "query.recorded_at"),
        occurred_at=_time(occurred_at, "query.occurred_at"),
    )


@get(
    "/v1/patients/{patient_id:str}/conformance",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="Re-run the patient's history through the protocol's guards",
    tags=["audit"],
)
def get_patient_conformance(
    service: Svc,
    patient_id: PatientId,
    protocol: Annotated[str | None, protocol_query()] = None,
    as_of: AuditAsOf = None,
) -> dict[str, Any]:
    from ..audit import check_history, patient_events

    events = _cut(patient_events(service.log, parse_patient_id(patient_id)), as_of)
    return check_history(patient_id, events, protocol=_protocol(protocol)).to_json()


@get(
    "/v1/audit/conformance",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(),
    summary="Conformance of every patient's history",
    tags=["audit"],
)
def get_conformance(
    service: Svc,
    protocol: Annotated[str | None, protocol_query()] = None,
    as_of: AuditAsOf = None,
) -> dict[str, Any]:
    from ..audit import Conformance, check_history, streams

    result = Conformance()
    version = _protocol(protocol)
    _time(as_of, "query.as_of")  # a bad time: 422 before the log is read
    for pid, events in streams(service.log):
        kept = _cut(events, as_of)
        if kept:  # registered after the cut-off: not yet a patient then
            check_history(pid, kept, protocol=version, result=result)
    return result.to_json()


@get(
    "/v1/audit/verify",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(),
    summary="Tamper evidence: every stream's hash chain and the log digest",
    tags=["audit"],
)
def get_verify(service: Svc) -> dict[str, Any]:
    from ..audit import verify

    return verify(service.log).to_json()


def _check_patient(service: CourseService, patient_id: str | None) -> None:
    """Before a streamed export starts: the key reads the store (a 503 now, not a 200 whose
    body breaks off), and the patient is on record (a 404; another site's: as not on record)."""
    from ..audit.log import require_readable

    require_readable(base_service(service).log)
    if patient_id is not None and sites_of(service) is not None:
        check_visible(service, parse_patient_id(patient_id, "query.patient_id"))
    elif patient_id is not None:
        from ..audit import patient_events

        patient_events(service.log, parse_patient_id(patient_id, "query.patient_id"))


@get(
    "/v1/exports/events.jsonl",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(404),
    media_type="application/x-ndjson",
    summary="The full log as JSON Lines (streamed; one patient or all)",
    tags=["exports"],
)
def export_jsonl(
    service: Svc, patient_id: Annotated[str | None, patient_id_query()] = None
) -> Stream:
    from ..audit.exports import jsonl

    _check_patient(service, patient_id)
    return Stream(jsonl(service.log, patient_id), media_type="application/x-ndjson")


@get(
    "/v1/exports/timeline.csv",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(404),
    media_type="text/csv",
    summary="The timeline as CSV (streamed; one patient or all)",
    tags=["exports"],
)
def export_csv(
    service: Svc, patient_id: Annotated[str | None, patient_id_query()] = None
) -> Stream:
    from ..audit.exports import csv_timeline

    _check_patient(service, patient_id)
    return Stream(csv_timeline(service.log, patient_id), media_type="text/csv")


@get(
    "/v1/patients/{patient_id:str}/fhir",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="A FHIR R4 Bundle: ResearchSubject and Provenance per event",
    tags=["exports"],
)
def export_fhir(service: Svc, patient_id: PatientId) -> dict[str, Any]:
    from ..audit import patient_events
    from ..audit.fhir import bundle

    return bundle(patient_id, patient_events(service.log, parse_patient_id(patient_id)))


@get(
    "/v1/patients/{patient_id:str}/report.html",
    opt=AUDIT,
    sync_to_thread=True,
    responses=problem_responses(404),
    media_type="text/html",
    summary="The printable audit report of one patient",
    tags=["exports"],
)
def export_report(service: Svc, patient_id: PatientId, as_of: AuditAsOf = None) -> Response[str]:
    from ..audit import check_history, check_stream, patient_events
    from ..audit.report import html_report

    events = patient_events(service.log, parse_patient_id(patient_id))
    kept = _cut(events, as_of)
    if not kept:
        raise InvalidCommandError(
            "query.as_of",
            f"{as_of} is before patient {patient_id} was registered "
            f"({events[0].recorded_at}): give a time at or after it",
        )
    html = html_report(
        patient_id,
        kept,
        findings=check_history(patient_id, kept).findings,
        problems=check_stream(patient_id, kept),
        as_of=None if as_of is None else _time(as_of, "query.as_of"),
    )
    return Response(html, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})


AUDIT_ROUTES = [
    get_as_of,
    get_patient_conformance,
    get_conformance,
    get_verify,
    export_jsonl,
    export_csv,
    export_fhir,
    export_report,
]


# -- views ---------------------------------------------------------------------------------------


class ViewsAccess:
    """One process's read models; queries run under a lock after catching up with the log."""

    def __init__(self, service: CourseService, store: Any) -> None:
        from ..views import Views

        self.views = Views(service.log, store)
        self.lock = threading.Lock()

    def fresh(self, wait_for: int | None = None, *, check: bool = True) -> Any:
        if wait_for is not None:
            last = self.views.log_position()
            if wait_for > last:
                raise InvalidCommandError(
                    "query.wait_for", f"position {wait_for} is beyond the log's last ({last})"
                )
            self.views.wait_for(wait_for, timeout=5.0)
        self.views.catch_up()
        if check:  # a check found edited rows: 503 naming the patients
            self.views.check_not_differing()
        return self.views.db

    def close(self) -> None:
        self.views.close()


_OPENING = threading.Lock()


def views_of(state: State) -> ViewsAccess:
    """This process's read models, opened on first use (and again after a shutdown)."""
    with _OPENING:
        if state.views is None:
            state.views = ViewsAccess(state.service, state.store)
        access: ViewsAccess = state.views
        return access


def _views(request: Request[Any, Any, Any]) -> ViewsAccess:
    return views_of(request.app.state)


WaitFor = Annotated[int | None, position_query("Answer once the views reached this position")]
SiteFilter = Annotated[
    str | None,
    QueryParameter(
        max_length=16,
        pattern=SITE_ID_PATTERN,
        description="Only the patients of this site (issue 17; see GET /v1/sites); a "
        "site-limited token: one of its sites (another is 403); a site the trial does not "
        "define: 422; a site without patients: none",
    ),
]


def view_sites(request: Request[Any, Any, Any], service: Any, site: str | None) -> Any:
    """The sites a view is limited to: the token's (a site-limited token), narrowed to ``site``
    when one is asked (another site than the token's: 403; an unknown site: 422). None: all."""
    if site is None:
        return sites_of(service)
    site = parse_site_id(site, "query.site")
    scope = narrow(sites_of(service), [site])  # another site than the token's: 403
    if sites_of(service) is None:  # (a site-limited token knows its sites: it learns no other)
        request.app.state.tokens.sites.check_known([site], "query.site")
    return scope  # a known site without patients: an empty answer


#: The board's filter parameters, shared by the board and its CSV (one declaration each).
HoldFilter = Annotated[bool, QueryParameter(description="Fractions held for toxicity")]
AwaitingFilter = Annotated[bool, QueryParameter(description="A response assessment is due")]
SaeFilter = Annotated[bool, QueryParameter(description="An SAE report is due")]
FollowUpFilter = Annotated[bool, QueryParameter(description="A follow-up visit is due")]
MinAeGrade = Annotated[
    int | None,
    integer_query(
        1,
        5,
        "Only patients with an open or recent adverse event (any toxicity episode) whose "
        "worst grade is at least this (recent: ended within 30 days)",
    ),
]
HasOpenQueries = Annotated[
    bool | None,
    QueryParameter(
        description="true: only patients with a data query not closed; false: only patients without"
    ),
]
ContainsFilter = Annotated[str | None, contains_query()]
BoardSort = Annotated[str | None, board_sort_query()]


@attrs.frozen(kw_only=True)
class BoardFilter:
    """The board's filters and order, as the board and its CSV read them from the query."""

    state: str | None = None
    overdue: bool = False
    toxicity: bool = False
    hold: bool = False
    awaiting: bool = False
    sae: bool = False
    follow_up_due: bool = False
    min_ae_grade: int | None = None
    has_open_queries: bool | None = None
    contains: str | None = None
    sort: str | None = None

    @property
    def action(self) -> tuple[str, ...] | None:
        """The next actions asked for (both: a follow-up visit or an SAE report)."""
        wanted = tuple(
            name
            for name, given in (
                ("record_follow_up", self.follow_up_due),
                ("record_sae_report", self.sae),
            )
            if given
        )
        return wanted or None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> BoardFilter:
        """The filters of a board handler's parameters (its ``locals()`` before anything else;
        ``state_filter`` is the state), checked."""
        f = cls(
            state=params["state_filter"],
            **{a.name: params[a.name] for a in attrs.fields(cls) if a.name != "state"},
        )
        f.check()
        return f

    def check(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise InvalidCommandError(
                "query.state", f"{self.state!r} is not a state; states: {', '.join(STATES)}"
            )
        from ..views.queries import BOARD_SORTS

        if self.sort is not None and self.sort.removeprefix("-") not in BOARD_SORTS:
            raise InvalidCommandError(
                "query.sort",
                f"{self.sort!r} is not a sort of the board; sorts: {', '.join(BOARD_SORTS)} "
                "('-' in front for descending)",
            )


def _board_rows(
    request: Request[Any, Any, Any],
    f: BoardFilter,
    *,
    limit: int | None = None,
    after: str | tuple[str, str] | None = None,
    wait_for: int | None = None,
    sites: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    from ..protocol import labels
    from ..views import queries

    access = _views(request)
    with access.lock:
        db = access.fresh(wait_for)
        try:
            rows = queries.board(
                db,
                state=f.state,
                overdue=f.overdue,
                toxicity=f.toxicity,
                hold=f.hold,
                awaiting=f.awaiting,
                action=f.action,
                min_ae_grade=f.min_ae_grade,
                has_open_queries=f.has_open_queries,
                contains=f.contains,
                limit=None if f.sort else limit,
                after=after,
                sites=sites,
            )
        except queries.UnknownPageStart as exc:
            raise InvalidCommandError(
                "query.after",
                f"{exc}; go on with the cursor of the previous page's Link rel=next",
            ) from None
    if f.sort:
        rows = queries.sort_board(rows, f.sort)[:limit]
    for row in rows:
        row["state_label"] = labels.state_label(row["state"])
        row["next_action_label"] = labels.next_action_label(row["next_action"])
        row["delivered_cells_per_kg"] = _per_kg(row)
    return rows


def _per_kg(row: dict[str, Any]) -> float | None:
    """Cells delivered per kg: the plan is the protocol's cells/kg times the course's weight
    (``dosing.course_plan``), so the weight is the plan over the protocol's cells/kg."""
    planned, delivered = row.get("planned_cells"), row.get("delivered_cells")
    if not planned or delivered is None:
        return None
    try:
        per_kg = get_version(str(row.get("protocol_version"))).params.cells_per_kg
    except Exception:
        return None
    return float(delivered) * per_kg / float(planned)


@get(
    "/v1/board",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(504),
    summary="The board: state, next due action, doses, toxicity per patient",
    tags=["views"],
)
def get_board(
    request: Request[Any, Any, Any],
    service: Svc,
    state_filter: Annotated[str | None, state_query()] = None,
    site: SiteFilter = None,
    overdue: FromQuery[bool] = False,
    toxicity: FromQuery[bool] = False,
    hold: HoldFilter = False,
    awaiting: AwaitingFilter = False,
    sae: SaeFilter = False,
    contains: ContainsFilter = None,
    sort: BoardSort = None,
    follow_up_due: FollowUpFilter = False,
    min_ae_grade: MinAeGrade = None,
    has_open_queries: HasOpenQueries = None,
    limit: Annotated[int | None, integer_query(1, MAX_BOARD_PAGE)] = None,
    after: Annotated[
        str | None,
        QueryParameter(
            max_length=200,
            description="Where the previous page ended: its Link rel=next carries it (by "
            "patient id: the last patient id; overdue: a cursor, or the last patient id); "
            "not with sort",
        ),
    ] = None,
    wait_for: WaitFor = None,
) -> Response[list[dict[str, Any]]]:
    """A full page (``limit`` rows) carries ``Link: <...>; rel="next"``, the next page's URL
    (without ``sort``: a sorted board is one page, its first ``limit`` rows)."""
    from ..views import queries

    f = BoardFilter.of(locals())
    if sort is not None and after is not None:
        raise InvalidCommandError(
            "query.after", "pages follow the board's own order: leave out sort to page with after"
        )
    sites = view_sites(request, service, site)
    start: str | tuple[str, str] | None = after
    if after is not None and after.startswith(CURSOR_MARK):
        start = _read_cursor(after)
    rows = _board_rows(request, f, limit=limit, after=start, wait_for=wait_for, sites=sites)
    headers = {}
    if limit is not None and len(rows) == limit and sort is None:
        last = rows[-1]
        mark = _cursor(queries.overdue_key(last)) if overdue else str(last["patient_id"])
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
        query.append(("after", mark))
        headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return Response(rows, headers=headers)


#: The board's CSV: its columns, in order (the board's words for state and next action).
BOARD_CSV_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "site",
    "state",
    "state_label",
    "course_number",
    "next_action_label",
    "due_on",
    "overdue",
    "days_overdue",
    "planned_cells",
    "delivered_cells",
    "percent_of_plan",
    "open_toxicities",
    "max_open_grade",
    "hold",
    "response",
    "last_occurred_at",
)


def board_csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(BOARD_CSV_COLUMNS)
    for row in rows:
        planned, delivered = row.get("planned_cells"), row.get("delivered_cells")
        share = round(100 * delivered / planned) if planned and delivered is not None else None
        values = {**row, "percent_of_plan": share}
        writer.writerow([_csv_value(values.get(c)) for c in BOARD_CSV_COLUMNS])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


@get(
    "/v1/board.csv",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(504),
    media_type="text/csv",
    summary="The board as CSV, with the board's filters and order",
    tags=["views"],
)
def get_board_csv(
    request: Request[Any, Any, Any],
    service: Svc,
    state_filter: Annotated[str | None, state_query()] = None,
    site: SiteFilter = None,
    overdue: FromQuery[bool] = False,
    toxicity: FromQuery[bool] = False,
    hold: HoldFilter = False,
    awaiting: AwaitingFilter = False,
    sae: SaeFilter = False,
    follow_up_due: FollowUpFilter = False,
    min_ae_grade: MinAeGrade = None,
    has_open_queries: HasOpenQueries = None,
    contains: ContainsFilter = None,
    sort: BoardSort = None,
) -> Response[str]:
    f = BoardFilter.of(locals())
    rows = _board_rows(request, f, sites=view_sites(request, service, site))
    return Response(
        board_csv_text(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="board.csv"'},
    )


#: The first character of an overdue-board cursor (never in a patient id).
CURSOR_MARK = "~"


def _cursor(key: tuple[str, str]) -> str:
    """An overdue-board cursor: where a page ended, opaque to clients (they pass it back)."""
    raw = "\x1f".join(key).encode()
    return CURSOR_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(text: str) -> tuple[str, str]:
    body = text[len(CURSOR_MARK) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        sort_key, patient_id = raw.split("\x1f")
    except ValueError:
        raise InvalidCommandError(
            "query.after",
            "is not a cursor of this board: pass back the after= of a Link rel=next "
            "unchanged, or a patient id",
        ) from None
    return sort_key, patient_id


@get(
    "/v1/watchlist",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(504),
    summary="Open CRS/ICANS with grade and onset, holds, time since the last infusion",
    tags=["views"],
)
def get_watchlist(
    request: Request[Any, Any, Any], service: Svc, site: SiteFilter = None, wait_for: WaitFor = None
) -> list[dict[str, Any]]:
    from ..views import queries

    sites = view_sites(request, service, site)
    access = _views(request)
    with access.lock:
        return queries.watchlist(access.fresh(wait_for), sites=sites)


@get(
    "/v1/counts",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(504),
    summary="Cohort counts by state, response and course number",
    tags=["views"],
)
def get_counts(
    request: Request[Any, Any, Any], service: Svc, site: SiteFilter = None, wait_for: WaitFor = None
) -> dict[str, Any]:
    """Also ``attention``: what needs action now (overdue, open toxicity, fractions held, a
    response assessment due, an SAE report due), each a filter of the board."""
    from ..views import queries

    sites = view_sites(request, service, site)
    access = _views(request)
    with access.lock:
        db = access.fresh(wait_for)
        out: dict[str, Any] = queries.cohort(db, sites=sites)
        out["attention"] = queries.attention(db, sites=sites)
        return out


@get(
    "/v1/counts/sites",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(504),
    summary="Per site: patients, overdue next actions, open data queries and their median age",
    tags=["views"],
)
def get_site_counts(
    request: Request[Any, Any, Any], service: Svc, wait_for: WaitFor = None
) -> dict[str, Any]:
    """Every site of the trial (a site-limited token: its sites), with the patients recorded
    before sites under S00: ``open_queries`` counts the data queries not closed,
    ``median_query_age_days`` their median age (null when the site has none)."""
    from ..views import queries

    scope = sites_of(service)
    access = _views(request)
    with access.lock:
        counts = queries.site_counts(access.fresh(wait_for), sites=scope)
    store = request.app.state.tokens.sites
    out: dict[str, Any] = {}
    for s in store.list():
        if scope is None or s.id in scope:
            out[s.id] = {
                "name": s.name,
                "time_zone": s.time_zone,
                "active": s.active,
                **counts.pop(s.id, _EMPTY_SITE),
            }
    for site_id, row in counts.items():  # S00, or a site no longer in the table
        out[site_id] = {"name": None, "time_zone": None, "active": None, **row}
    return out


_EMPTY_SITE = {
    "patients": 0,
    "overdue_actions": 0,
    "open_queries": 0,
    "median_query_age_days": None,
}


@get(
    "/v1/deviations",
    opt={"roles": VIEWERS},
    sync_to_thread=True,
    responses=problem_responses(404, 504),
    summary="Protocol deviations (one patient or all)",
    tags=["views"],
)
def get_deviations(
    request: Request[Any, Any, Any],
    service: Svc,
    patient_id: Annotated[str | None, patient_id_query()] = None,
    site: SiteFilter = None,
    wait_for: WaitFor = None,
) -> list[dict[str, Any]]:
    from ..views import queries

    _check_patient(service, patient_id)  # an unknown patient is 404, as on the exports
    sites = view_sites(request, service, site)
    access = _views(request)
    with access.lock:
        return queries.deviations(access.fresh(wait_for), patient_id, sites=sites)


VIEW_ROUTES = [get_board, get_board_csv, get_watchlist, get_counts, get_site_counts, get_deviations]


def views_metrics(state: State) -> str:
    if state.get("store") is None:
        return ""
    access = views_of(state)
    from ..views.metrics import metrics_text

    with access.lock:
        access.fresh(check=False)  # the metrics stay up (cart_course_views_differing says it)
        text: str = metrics_text(access.views)
        return text


def routes(state: State) -> list[Any]:
    from .cdisc import ROUTES as CDISC_ROUTES  # CDISC exports (issue 19)

    out: list[Any] = [*AUDIT_ROUTES, *CDISC_ROUTES]
    if state.get("store") is not None:
        out += VIEW_ROUTES
    return out
