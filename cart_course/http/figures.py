"""The cohort's figures over HTTP: SVG drawn server-side (``cart_course.figures``), the printable
cohort report, and the dashboard's Cohort page (``static/cohort.html`` + ``cohort.js``).

Roles: the cohort figures and the report are the monitors' views (clinician, monitor, auditor,
as ``/v1/board``); a patient's toxicity timeline is read like the patient (``/v1/patients/{id}``).
Each SVG carries its own ``<title>``/``<desc>`` and no style or script, so the dashboard inlines it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from litestar import Response, get
from litestar.params import FromQuery, QueryParameter

from ..access import base_service
from ..errors import InvalidCommandError
from ..figures import model, read, render
from ..figures.report import CSS_HASH as REPORT_CSS_HASH
from ..figures.report import REPORT_CSP, cohort_report
from ..protocol.states import State as CourseState
from .auth import READERS, VIEWERS
from .common import PatientId, Svc
from .params import MAX_BOARD_PAGE, integer_query, state_query
from .problems import problem_responses

SVG = "image/svg+xml"
STATES = tuple(s.value for s in CourseState)
#: An SVG's own policy (opened on its own in a tab): nothing runs, nothing is loaded.
SVG_CSP = "default-src 'none'; style-src 'none'; frame-ancestors 'self'; base-uri 'none'"
#: The cohort figures cover the whole trial: a site-limited token is refused them (403).
VIEWS = {"roles": VIEWERS, "trial_wide": True}
#: The Cohort page: its own script and style sheets, the API; and the cohort report's inline
#: style sheet (by hash), as the report it opens (a document of its own, from a blob: URL)
#: keeps this page's policy.
COHORT_CSP = (
    "default-src 'none'; script-src 'self'; "
    f"style-src 'self' {REPORT_CSS_HASH}; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

StateFilter = Annotated[str | None, state_query()]
Sort = Annotated[
    str,
    QueryParameter(
        description="The bars' order: time_on_study (longest first), patient_id, or d1 (enrolment)",
        schema_extra={"one_of": None, "type": "string", "enum": list(model.SORTS)},
    ),
]


def _svg(text: str) -> Response[str]:
    return Response(text, media_type=SVG, headers={"Content-Security-Policy": SVG_CSP})


def _records(service: Any, state: str | None, toxicity: bool) -> tuple[list[Any], str]:
    if state is not None and state not in STATES:
        raise InvalidCommandError(
            "query.state", f"{state!r} is not a state; states: {', '.join(STATES)}"
        )
    records, as_of = read.cohort_as_of(service.log)
    return model.select(records, state=state, toxicity=toxicity), as_of


def _selection(state: str | None, toxicity: bool) -> str:
    return model.describe(
        [*([f"state {state}"] if state else []), *(["open toxicity only"] if toxicity else [])]
    )


def _cohort_svg(
    service: Any,
    name: str,
    state: str | None,
    toxicity: bool,
    draw: Callable[[list[Any], str], str],
) -> Response[str]:
    """A cohort figure of the selected records (``draw``: the records and the selection in
    words -> the SVG), drawn once per log position and selection (``read.drawn``)."""

    def drawn() -> str:
        records, _ = _records(service, state, toxicity)
        return draw(records, _selection(state, toxicity))

    return _svg(read.drawn(service.log, (name, state, toxicity), drawn))


def _sort(sort: str) -> str:
    if sort not in model.SORTS:
        raise InvalidCommandError(
            "query.sort", f"{sort!r} is not an order of the bars; orders: {', '.join(model.SORTS)}"
        )
    return sort


@get(
    "/v1/cohort/figures/swimmer.svg",
    opt=VIEWS,
    sync_to_thread=True,
    media_type=SVG,
    responses=problem_responses(),
    summary="Swimmer plot: one bar per infused patient from D1, with fractions, CRS/ICANS by "
    "grade, responses, relapse and death (SVG)",
    tags=["figures"],
)
def swimmer_svg(
    service: Svc,
    sort: Sort = "time_on_study",
    state_filter: StateFilter = None,
    toxicity: FromQuery[bool] = False,
    offset: Annotated[int, integer_query(0, MAX_BOARD_PAGE)] = 0,
    limit: Annotated[int | None, integer_query(1, MAX_BOARD_PAGE)] = None,
) -> Response[str]:
    """``offset``/``limit`` take a page of the sorted bars (a 1,000-patient plot is drawn whole
    otherwise: its height grows with the patients)."""
    order = _sort(sort)

    def draw() -> str:
        records, _ = _records(service, state_filter, toxicity)
        figure = model.swimmer(records, sort=order, offset=offset, limit=limit)
        return render.swimmer_svg(figure, selection=_selection(state_filter, toxicity))

    key = ("swimmer", order, state_filter, toxicity, offset, limit)
    return _svg(read.drawn(service.log, key, draw))


@get(
    "/v1/cohort/figures/best-response.svg",
    opt=VIEWS,
    sync_to_thread=True,
    media_type=SVG,
    responses=problem_responses(),
    summary="Responses (CR, CRi, PR, NR) by course (SVG)",
    tags=["figures"],
)
def best_response_svg(
    service: Svc, state_filter: StateFilter = None, toxicity: FromQuery[bool] = False
) -> Response[str]:
    return _cohort_svg(
        service,
        "best-response",
        state_filter,
        toxicity,
        lambda records, selection: render.counts_svg(
            model.best_response(records), "fig-best-response", selection=selection
        ),
    )


@get(
    "/v1/cohort/figures/max-grade.svg",
    opt=VIEWS,
    sync_to_thread=True,
    media_type=SVG,
    responses=problem_responses(),
    summary="Maximum CRS and ICANS grade per infused patient (SVG)",
    tags=["figures"],
)
def max_grade_svg(
    service: Svc, state_filter: StateFilter = None, toxicity: FromQuery[bool] = False
) -> Response[str]:
    return _cohort_svg(
        service,
        "max-grade",
        state_filter,
        toxicity,
        lambda records, selection: render.counts_svg(
            model.max_grades(records), "fig-max-grade", selection=selection
        ),
    )


@get(
    "/v1/cohort/figures/vein-to-vein.svg",
    opt=VIEWS,
    sync_to_thread=True,
    media_type=SVG,
    responses=problem_responses(),
    summary="Vein-to-vein time (apheresis to D1) of the patients whose product is tracked (SVG)",
    tags=["figures"],
)
def vein_to_vein_svg(
    service: Svc, state_filter: StateFilter = None, toxicity: FromQuery[bool] = False
) -> Response[str]:
    return _cohort_svg(
        service,
        "vein-to-vein",
        state_filter,
        toxicity,
        lambda records, selection: render.vein_to_vein_svg(
            model.vein_to_vein(records), selection=selection
        ),
    )


@get(
    "/v1/patients/{patient_id:str}/figures/toxicity.svg",
    opt={"roles": READERS},
    sync_to_thread=True,
    media_type=SVG,
    responses=problem_responses(404),
    summary="The patient's CRS and ICANS grade by day since D1, fractions marked (SVG)",
    tags=["figures"],
)
def toxicity_svg(service: Svc, patient_id: PatientId) -> Response[str]:
    service.record(patient_id)  # another site's patient (a site-limited token): not found
    record = read.patient_record(base_service(service).log, patient_id)
    return _svg(render.toxicity_svg(model.toxicity_timeline(record)))


@get(
    "/v1/cohort/report.html",
    opt=VIEWS,
    sync_to_thread=True,
    media_type="text/html",
    responses=problem_responses(),
    summary="The printable cohort report: every cohort figure with its table",
    tags=["figures"],
)
def report_html(
    service: Svc,
    sort: Sort = "time_on_study",
    state_filter: StateFilter = None,
    toxicity: FromQuery[bool] = False,
) -> Response[str]:
    order = _sort(sort)

    def draw() -> str:
        records, as_of = _records(service, state_filter, toxicity)
        return cohort_report(
            records, as_of=as_of, selection=_selection(state_filter, toxicity), sort=order
        )

    html = read.drawn(service.log, ("report", order, state_filter, toxicity), draw)
    return Response(html, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})


@get("/cohort", include_in_schema=False, media_type="text/html")
async def cohort_page() -> Response[bytes]:
    """The dashboard's Cohort page (public, like the dashboard: the data need a token)."""
    from .ops import STATIC

    return Response(
        (STATIC / "cohort.html").read_bytes(),
        media_type="text/html",
        headers={"Content-Security-Policy": COHORT_CSP},
    )


ROUTES: list[Any] = [
    swimmer_svg,
    best_response_svg,
    max_grade_svg,
    vein_to_vein_svg,
    toxicity_svg,
    report_html,
    cohort_page,
]
