"""The Litestar application, assembled from the route modules (each one parses, calls the
service, renders):

- ``commands``: ``POST /v1/commands`` and ``POST /v1/patients/{id}/commands/{command}``;
- ``patients``: patients, moves, history, the event feed and stream, the protocol;
- ``extras``: the audit routes and exports (auditors) and the read models (board, watchlist,
  counts, deviations);
- ``admin``: tokens and the audit-access log;
- ``ops``: health, readiness, metrics and the dashboard;
- ``openapi``: the document and its page.

Errors are RFC 9457 problem details (``problems.py``); roles per route are in each handler's
``opt`` (``auth.py``); ``middleware.py`` counts requests, writes the audit-access log and answers
``HEAD``; ``security.py`` adds the security headers.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Router
from litestar.config.compression import CompressionConfig
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.static_files import create_static_files_router

from ..bootstrap import Settings, build_service
from ..service import CourseService
from ..storage import StoreSettings
from ..tokens import TokenStore, open_token_store
from . import admin, checkpoint_routes, commands, extras, ops, patients, sites_routes
from . import figures as figure_routes
from . import product as product_routes
from . import queries as query_routes
from .auth import token_guard
from .common import BEARER, DEPENDENCIES, JSONRequest, check_query
from .feed import PatientIndex
from .middleware import head_as_get, observe
from .openapi import openapi_config
from .problems import EXCEPTION_HANDLERS, MAX_BODY_BYTES
from .security import security_headers

#: Compression applies to the board (JSON and CSV) only: every other path is excluded (``/``,
#: the dashboard's page, is smaller than the minimum size).
BOARD_ONLY = r"^/(?!v1/board(\.csv)?$).+"

ROUTES: list[Any] = [
    commands.post_command,
    commands.post_patient_command,
    patients.list_patients,
    patients.get_patient,
    patients.get_moves,
    patients.get_history,
    patients.get_events,
    patients.stream_events,
    patients.get_protocol,
    patients.get_labels,
    patients.get_me,
    admin.list_tokens,
    admin.add_token,
    admin.revoke_token,
    admin.get_access_log,
    ops.health,
    ops.ready,
    ops.metrics,
    ops.dashboard,
    *product_routes.ROUTES,
    *figure_routes.ROUTES,  # the cohort's figures, its printable report and the Cohort page
    *sites_routes.ROUTES,
]


def create_app(
    service: CourseService,
    tokens: TokenStore,
    *,
    store: StoreSettings | None = None,
    store_display: str = "",
    on_shutdown: list[Any] | None = None,
) -> Litestar:
    """The HTTP application over ``service``; ``tokens`` maps bearer tokens to actors."""
    # screen and transfer_site check the trial's sites (issue 17), kept with the tokens
    if service.sites is not tokens.sites:
        close_sites = getattr(service.sites, "close", None)
        if close_sites is not None:
            close_sites()
        service.sites = tokens.sites
    state = State(
        {
            "service": service,
            "tokens": tokens,
            "index": PatientIndex(service),
            "store": store,
            "views": None,
            "store_display": store_display or (store.display if store else ""),
            "last_write": 0.0,
        }
    )
    state.metrics = ops.Metrics(state)
    extra_routes = [*extras.routes(state), *checkpoint_routes.ROUTES, *query_routes.routes(state)]

    def close_views() -> None:
        if state.views is not None:
            state.views.close()
            state.views = None

    static = create_static_files_router(
        path="/static", directories=[ops.STATIC], include_in_schema=False, opt={}
    )
    public: list[Any] = [ops.health, ops.ready, ops.dashboard, static]
    protected = Router(
        path="/",
        route_handlers=[h for h in [*ROUTES, *extra_routes] if h not in public],
        security=BEARER,
    )
    app = Litestar(
        route_handlers=[protected, *public],
        dependencies=DEPENDENCIES,
        guards=[token_guard],
        before_request=check_query,
        middleware=[observe],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=JSONRequest,
        request_max_body_size=MAX_BODY_BYTES,
        state=state,
        on_shutdown=[close_views, *(on_shutdown or [])],
        openapi_config=openapi_config(),
        # the board of a large cohort (about 1 KB a patient in JSON) is gzipped for clients that
        # accept it; nothing else is (streams, exports and the rest stay as they are)
        compression_config=CompressionConfig(backend="gzip", minimum_size=4096, exclude=BOARD_ONLY),
        debug=False,
    )
    app.asgi_handler = security_headers(head_as_get(app.asgi_handler))
    return app


def create_app_from_env() -> Litestar:
    """The app for ``cart-course serve`` (uvicorn factory; one per worker process)."""
    settings = Settings.from_env()
    service = build_service(settings)
    tokens = open_token_store(settings.store)

    def close() -> None:
        service.close()
        tokens.close()

    return create_app(service, tokens, store=settings.store, on_shutdown=[close])


def route_table(app: Litestar) -> list[tuple[str, str, tuple[str, ...] | None]]:
    """(method, path, roles) of every route; roles None means public."""
    table = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(getattr(handler, "http_methods", ())):
                if method in ("HEAD", "OPTIONS"):
                    continue
                table.append((method, route.path, handler.opt.get("roles")))
    return table


__all__ = ["NotFoundException", "create_app", "create_app_from_env", "route_table"]
