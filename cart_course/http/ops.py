"""Operations: ``/health`` and ``/ready`` (public, for load balancers), ``/metrics`` (Prometheus,
built with ``prometheus_client``) and the monitors' dashboard at ``/``.

Each app has its own :class:`Metrics` (a ``CollectorRegistry``): the request counter and timing
summary of this process, the store in use, the log position and the views' metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import prometheus_client
from litestar import Request, Response, get
from litestar.datastructures import State
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..errors import StoreError
from .auth import METRICS_READERS
from .common import Svc, Tok
from .feed import last_position
from .problems import problem_responses
from .security import DASHBOARD_CSP

STATIC = Path(__file__).resolve().parent / "static"
#: The exposition format served at ``/metrics`` (``prometheus_client.generate_latest``).
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"
log = logging.getLogger("cart_course.http")

# One sample per series: no ``*_created`` companion series (process-wide prometheus_client switch).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


@attrs.define(kw_only=True)
class Health:
    status: str
    version: str


@attrs.define(kw_only=True)
class Ready:
    """Only whether the store answers: where it is and how much it holds is for ``/metrics``."""

    status: str


# -- metrics -------------------------------------------------------------------------------------

#: The ``status`` label of a request whose client went away before its answer started (or
#: while the server was failing it because of that): not a server error, so no 5xx alert fires.
CLIENT_CLOSED = "client_closed"
#: The ``route`` label of a request no route matched.
UNMATCHED = "(unmatched)"


class _StoreCollector(Collector):
    """The store in use, the log position and the views' metrics, read when scraped."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        from .extras import views_metrics

        info = GaugeMetricFamily(
            "cart_course_store_info",
            "The event store this server uses (always 1).",
            labels=["store"],
        )
        info.add_metric([str(self.state.store_display)], 1)
        yield info
        views = views_metrics(self.state)
        families = list(text_string_to_metric_families(views)) if views else []
        if not any(f.name == "cart_course_log_position" for f in families):
            position = GaugeMetricFamily(
                "cart_course_log_position", "Last notification id in the event log."
            )
            position.add_metric([], last_position(self.state.service))
            yield position
        yield from families


class Metrics:
    """This app's metrics registry: requests by method, route and status, and their time."""

    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = prometheus_client.Counter(
            "cart_course_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = prometheus_client.Summary(
            "cart_course_http_request_seconds",
            "Time spent serving requests by route.",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(state))

    def observe(self, method: str, route: str, status: str, seconds: float) -> None:
        self.requests.labels(method, route, status).inc()
        self.seconds.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


# -- routes --------------------------------------------------------------------------------------


@get("/health", summary="The process is up (also HEAD)", tags=["operations"])
async def health() -> Health:
    return Health(status="ok", version=__version__)


@get(
    "/ready",
    sync_to_thread=True,
    summary="The store answers (also HEAD); public, for load balancers: ready or not, no more",
    tags=["operations"],
    responses={503: problem_responses()[503]},
)
def ready(service: Svc, tokens: Tok) -> Ready:
    try:
        last_position(service)
        tokens.ping()
    except Exception as exc:
        # the error's text may name the store (a path, a host): the log has it, not the answer
        log.warning("not ready: the store does not answer: %s: %s", type(exc).__name__, exc)
        raise StoreError(
            f"the store does not answer ({type(exc).__name__}); the server log has the details"
        ) from None
    mismatch = service.log.settings_mismatch()  # one row: read with this server's cipher key?
    if mismatch is not None:
        log.warning("not ready: %s", mismatch)
        raise StoreError(
            "the store's events do not read with this server's settings (cipher key or "
            "compression); the server log has the details"
        )
    return Ready(status="ready")


@get(
    "/metrics",
    opt={"roles": METRICS_READERS, "trial_wide": True},
    sync_to_thread=True,
    responses=problem_responses(),
    media_type=METRICS_MEDIA_TYPE,
    summary="Prometheus metrics",
    tags=["operations"],
)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    m: Metrics = request.app.state.metrics
    return Response(m.exposition(), media_type=METRICS_MEDIA_TYPE)


@get("/", include_in_schema=False, media_type="text/html")
async def dashboard() -> Response[bytes]:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html",
        headers={"Content-Security-Policy": DASHBOARD_CSP},
    )
