"""Monitoring commands: ``status``, ``watch`` and ``views follow|rebuild|metrics|watchlist|cohort|
deviations``. Thin: open the views, catch up (or wait), query, render."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import time
from typing import Any

import click

from ..access import METRICS_READERS, VIEWERS, ScopedService, check_visible, narrow
from ..protocol.states import State
from ..sites import DEFAULT_SITE, DEFAULT_SITE_NAME
from ..views import Views, queries
from ..views.metrics import metrics_text
from .common import Context, echo_json, pass_context, patient_id_argument, with_token

STATES = [s.value for s in State]


def _parse_now(value: str | None) -> dt.datetime | dt.date | None:
    """``--now``: a date means that calendar day (overdue when the due date is before it); a
    date-time is an instant (naive: UTC), judged in each row's own UTC offset."""
    if value is None:
        return None
    if len(value) == 10:
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or date-time (e.g. 2026-03-01 or 2026-03-01T08:00Z)",
            param_hint="--now",
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    try:
        moment.astimezone(dt.UTC)
    except OverflowError:
        raise click.BadParameter(
            f"{value!r} is out of range: in UTC it must fall between the years 1 and 9999",
            param_hint="--now",
        ) from None
    return moment


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A number of seconds must be a finite number (FloatRange lets nan and inf through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(
            f"{value} is not a number of seconds: give a finite number", ctx=ctx, param=param
        )
    return value


def _open(ctx: Context, batch_size: int | None = None) -> Views:
    views = ctx.system.views()
    if batch_size is not None:
        views.batch_size = batch_size
    click.get_current_context().call_on_close(views.close)
    return views


def _ready(ctx: Context, wait_for: int | None, timeout: float, catch_up: bool) -> Views:
    """The views for a query: the log pulled into them, or a follower waited for."""
    views = _open(ctx)
    if wait_for is not None:
        views.wait_for(wait_for, timeout, pull=catch_up)
    elif catch_up:
        views.catch_up()
    views.check_not_differing()  # a check found edited rows: refused, naming the patients
    return views


_SHOWN_STREAMS = 10


def _stream_line(s: dict[str, Any]) -> str:
    versions = (
        f"v{s['first_version']}"
        if s["first_version"] == s["last_version"]
        else f"v{s['first_version']}-v{s['last_version']}"
    )
    who = f"patient {s['patient_id']}" if s["patient_id"] else "patient unknown"
    return (
        f"{who} (stream {s['stream_id']}): {versions} skipped ({s['events']} event(s), "
        f"first at position {s['first_position']}): {s['reason']}"
    )


def _warn_skipped(
    views: Views, summary: dict[str, Any] | None = None, ctx: Context | None = None
) -> dict[str, Any]:
    """Tell the monitor (stderr) which events the views skipped: never a silent gap (a
    site-limited token: only its sites' patients' streams)."""
    summary = summary if summary is not None else queries.skipped_summary(views.db)
    scoped = ctx.service if ctx is not None and ctx.sites is not None else None
    if isinstance(scoped, ScopedService):
        streams = [
            s for s in summary["streams"] if s["patient_id"] and scoped.sees(s["patient_id"])
        ]
        summary = {"events": sum(s["events"] for s in streams), "streams": streams}
    if summary["events"]:
        streams = summary["streams"]
        click.echo(
            f"warning: the views skipped {summary['events']} stored event(s) of "
            f"{len(streams)} patient stream(s) that they cannot read or apply; these patients' "
            "rows stop before them (`cart-course views skipped` lists each event):",
            err=True,
        )
        for stream in streams[:_SHOWN_STREAMS]:
            click.echo("  " + _stream_line(stream), err=True)
        if len(streams) > _SHOWN_STREAMS:
            click.echo(f"  ... and {len(streams) - _SHOWN_STREAMS} more stream(s)", err=True)
    return summary


def _fmt_cells(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _board_line(r: dict[str, Any]) -> str:
    due = r["due_on"] or "-"
    if r["overdue"]:
        due += f" OVERDUE {r['days_overdue']}d"
    tox = "-"
    if r["open_toxicities"]:
        tox = f"{r['open_toxicities']} open (max gr {r['max_open_grade']})" + (
            " SEVERE" if r["severe_open"] else ""
        )
    action = r["next_action"] or "-"
    if r["hold"]:
        action = "HOLD: " + action
    dose = f"{_fmt_cells(r['delivered_cells'])}/{_fmt_cells(r['planned_cells'])}"
    line = (
        f"{r['patient_id']:<10} {r.get('site', '-'):<5} {r['state']:<13} {r['course_number']:>2} "
        f"{dose:>19}  {action:<40} {due:<20} {tox}"
    )
    if r.get("product_status"):
        line += f"  product {r['product_status']}"
        if r.get("vein_to_vein_days") is not None:
            line += f", vein-to-vein {r['vein_to_vein_days']}d"
        if r.get("product_waiting_too_long"):
            line += f", WAITING {r['product_waiting_days']}d"
    if r.get("open_queries"):
        line += f"  queries {r['open_queries']} open (oldest {r['oldest_open_query_age_days']:g} d)"
    return line


_BOARD_HEADER = (
    f"{'patient':<10} {'site':<5} {'state':<13} {'c':>2} {'delivered/plan':>19}  "
    f"{'next action':<40} {'due':<20} toxicity"
)


def _site_option(ctx: Context, chosen: tuple[str, ...]) -> frozenset[str] | None:
    """``--site``: known sites (or S00), each checked (a bad one names the known sites)."""
    if not chosen:
        return None
    from ..errors import InvalidCommandError

    store = ctx.system.tokens.sites
    try:
        return frozenset(store.check_known(list(chosen), "--site"))
    except InvalidCommandError as exc:
        raise click.BadParameter(exc.message, param_hint="--site") from None


def _print_site_counts(
    ctx: Context,
    views: Views,
    moment: dt.datetime | dt.date | None,
    sites: frozenset[str] | None,
    as_json: bool,
) -> None:
    counts = queries.site_counts(views.db, moment, sites=sites)
    listed = ctx.system.tokens.sites.list()
    rows: dict[str, dict[str, Any]] = {}
    empty = {
        "patients": 0,
        "overdue_actions": 0,
        "open_queries": None,
        "median_query_age_days": None,
    }
    for s in listed:
        if sites is None or s.id in sites:
            rows[s.id] = {
                "name": s.name,
                "time_zone": s.time_zone,
                "active": s.active,
                **counts.pop(s.id, empty),
            }
    for site_id, row in counts.items():
        rows[site_id] = {
            "name": DEFAULT_SITE_NAME if site_id == DEFAULT_SITE else None,
            "time_zone": None,
            "active": None,
            **row,
        }
    if as_json:
        echo_json({"as_of": queries.as_of(moment), "sites": rows})
        return
    click.echo(
        f"{'site':<6} {'name':<28} {'time zone':<20} {'patients':>8} {'overdue':>8} "
        f"{'open queries':>13} {'median age (d)':>15}"
    )
    for site_id, r in rows.items():
        q = "-" if r["open_queries"] is None else str(r["open_queries"])
        age = "-" if r["median_query_age_days"] is None else f"{r['median_query_age_days']:.1f}"
        name = (r["name"] or "-") + (" (inactive)" if r["active"] is False else "")
        if len(name) > 28 and r["active"] is False:  # the mark stays visible
            name = name[: 28 - len(" (inactive)") - 1] + "~ (inactive)"
        click.echo(
            f"{site_id:<6} {name[:28]:<28} {(r['time_zone'] or '-'):<20} "
            f"{r['patients']:>8} {r['overdue_actions']:>8} {q:>13} {age:>15}"
        )
    click.echo(
        f"overdue as of {queries.as_of(moment)}; open queries: not closed (open, answered, "
        "re-opened), their median age in days"
    )


_wait_options = [
    click.option(
        "--wait-for",
        type=click.IntRange(min=0),
        default=None,
        metavar="POSITION",
        help="Read-your-writes: first wait until the views have processed this notification id.",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        callback=_finite,
        default=5.0,
        show_default=True,
        help="Seconds --wait-for may wait.",
    ),
    click.option(
        "--catch-up/--no-catch-up",
        default=True,
        show_default=True,
        help="Pull new events into the views before answering (--no-catch-up: rely on "
        "`views follow`).",
    ),
]


def wait_options(fn: Any) -> Any:
    for option in reversed(_wait_options):
        fn = option(fn)
    return fn


@click.command()
@click.option("--state", type=click.Choice(STATES), default=None, help="Only patients in STATE.")
@click.option("--overdue", is_flag=True, help="Only patients whose next action is overdue.")
@click.option("--toxicity", is_flag=True, help="Only patients with an open toxicity.")
@click.option(
    "--follow-up-due",
    is_flag=True,
    help="Only patients whose next action is a follow-up visit (with --overdue: past its window).",
)
@click.option(
    "--sae",
    is_flag=True,
    help="Only patients whose next action is an SAE report (with --overdue: past its clock).",
)
@click.option(
    "--ae-grade",
    "ae_grade",
    type=click.IntRange(min=1, max=5),
    default=None,
    metavar="N",
    help="Only patients with an open or recent adverse event (any toxicity episode) of worst "
    f"grade N or more (recent: ended within {queries.AE_RECENT_DAYS} days of --now).",
)
@click.option(
    "--product",
    type=click.Choice(queries.PRODUCT_FILTERS),
    default=None,
    help="Only patients whose cell product is in this status (any: every tracked product).",
)
@click.option(
    "--site",
    "site_filter",
    multiple=True,
    metavar="SITE",
    help="Only the patients of this site (repeat for several; see 'sites list').",
)
@click.option(
    "--sites",
    "per_site",
    is_flag=True,
    help="Per-site counts instead of the board: patients, overdue actions, open data queries "
    "and their median age.",
)
@click.option(
    "--open-queries",
    is_flag=True,
    help="Only patients with a data query that is not closed (open, answered, re-opened).",
)
@click.option("--now", default=None, metavar="WHEN", help="Judge 'overdue' as of WHEN (ISO).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="At most this many rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@wait_options
@with_token(VIEWERS)
@pass_context
def status(
    ctx: Context,
    state: str | None,
    overdue: bool,
    toxicity: bool,
    follow_up_due: bool,
    sae: bool,
    ae_grade: int | None,
    product: str | None,
    site_filter: tuple[str, ...],
    per_site: bool,
    open_queries: bool,
    now: str | None,
    limit: int,
    as_json: bool,
    wait_for: int | None,
    timeout: float,
    catch_up: bool,
) -> None:
    """The board: every patient's state, site, next due action and due date, dose and
    toxicity, the cell product (status, vein-to-vein time, a product waiting too long), and the
    data queries not closed (how many, the oldest one's age)."""
    moment = _parse_now(now)
    # a site-limited token: its sites (another site asked for: refused, as over HTTP)
    sites = narrow(ctx.sites, _site_option(ctx, site_filter))
    views = _ready(ctx, wait_for, timeout, catch_up)
    if per_site:
        _print_site_counts(ctx, views, moment, sites, as_json)
        return
    filters: dict[str, Any] = {
        "state": state,
        "overdue": overdue,
        "toxicity": toxicity,
        "product": product,
        "min_ae_grade": ae_grade,
        "sites": sites,
        "has_open_queries": True if open_queries else None,
    }
    if follow_up_due or sae:  # both: a follow-up visit or an SAE report
        filters["action"] = tuple(
            name
            for name, given in (("record_follow_up", follow_up_due), ("record_sae_report", sae))
            if given
        )
    rows = queries.board(views.db, **filters, now=moment, limit=limit)
    matching = queries.count(views.db, **filters, now=moment)
    lag = views.lag()
    skipped = _warn_skipped(views, ctx=ctx)
    if as_json:
        echo_json(
            {
                "as_of": queries.as_of(moment),
                "views": lag,
                "matching": matching,
                "patients": rows,
                "skipped": skipped,
            }
        )
        return
    click.echo(_BOARD_HEADER)
    for r in rows:
        click.echo(_board_line(r))
    more = f" (first {len(rows)} shown; --limit)" if matching > len(rows) else ""
    gaps = (
        f"; {skipped['events']} unreadable event(s) skipped (see `views skipped`)"
        if skipped["events"]
        else ""
    )
    click.echo(
        f"{matching} patient(s){more}; overdue as of {queries.as_of(moment)}; views at "
        f"position {lag['position']} of {lag['log_position']}{gaps}"
    )


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01, max=86400),
    callback=_finite,
    default=1.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--once", is_flag=True, help="Poll once, print the changes, and exit.")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=None,
    metavar="POSITION",
    help="Print changes after this notification id (default: from now on).",
)
@click.option("--now", default=None, metavar="WHEN", help="Judge 'overdue' as of WHEN (ISO).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per changed row.")
@click.option(
    "--catch-up/--no-catch-up",
    default=True,
    show_default=True,
    help="Pull new events into the views at each poll (--no-catch-up: rely on `views follow`).",
)
@with_token(VIEWERS)
@pass_context
def watch(
    ctx: Context,
    interval: float,
    once: bool,
    since: int | None,
    now: str | None,
    as_json: bool,
    catch_up: bool,
) -> None:
    """Follow the board live: print each patient row as it changes (Ctrl-C to stop)."""
    import json

    moment = _parse_now(now)
    views = _open(ctx)
    views.check_not_differing()
    seen = views.position() if since is None else since
    if since is None and catch_up:
        views.catch_up()
        seen = views.position()
    if not as_json:
        click.echo(
            f"watching from position {seen} (every {interval:g} s)" + (", once" if once else "")
        )
    warned = -1
    while True:
        if catch_up:
            views.catch_up()
        if views.skipped_count() != warned:  # at the start, and whenever more are skipped
            warned = _warn_skipped(views, ctx=ctx)["events"]
        rows = queries.changed_since(views.db, seen, moment, sites=ctx.sites)
        for r in rows:
            if as_json:
                click.echo(json.dumps(r, ensure_ascii=False, default=str))
            else:
                click.echo(f"[{r['position']}] " + _board_line(r))
        if rows:
            seen = max(r["position"] for r in rows)
        sys.stdout.flush()
        if once:
            return
        time.sleep(interval)


@click.group()
def views() -> None:
    """The monitors' read models: keep them up to date, rebuild them, export metrics."""


@views.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01, max=86400),
    callback=_finite,
    default=0.5,
    show_default=True,
    help="Seconds to sleep when up to date.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Notifications per transaction.",
)
@click.option("--until-caught-up", is_flag=True, help="Exit once the views reach the log's end.")
@click.option("--pause-in-batch", type=float, default=0.0, hidden=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: the start, each batch, the end.",
)
@pass_context
def follow(
    ctx: Context,
    interval: float,
    batch_size: int,
    until_caught_up: bool,
    pause_in_batch: float,
    as_json: bool,
) -> None:
    """Keep the views up to date (a follower process); resumes from its position after a restart.

    Each batch of events and the new position are written in one transaction, so a follower
    killed at any moment resumes without missing or repeating an event."""
    views_ = _open(ctx, batch_size)
    if pause_in_batch:  # crash-recovery tests: die inside a transaction
        views_.before_commit = lambda: time.sleep(pause_in_batch)

    def line(text: str, data: dict[str, Any]) -> None:
        click.echo(json.dumps(data) if as_json else text)
        sys.stdout.flush()

    line(
        f"following from position {views_.position()} (log at {views_.log_position()})",
        {"following_from": views_.position(), "log_position": views_.log_position()},
    )

    _warn_skipped(views_)

    def report(n: int, position: int) -> None:
        skipped = views_.last_skipped
        line(
            f"position {position} (+{n}" + (f", {len(skipped)} skipped)" if skipped else ")"),
            {"position": position, "events": n, "skipped": len(skipped)},
        )
        if skipped:
            _warn_skipped(views_)

    def caught_up() -> bool:
        return until_caught_up and views_.position() >= views_.log_position()

    # --until-caught-up on views already caught up: nothing to wait for (never a loop)
    for _ in views_.follow(interval=interval, stop=caught_up, on_batch=report):
        if caught_up():
            break
    if until_caught_up and views_.position() >= views_.log_position():
        line(f"caught up at position {views_.position()}", {"caught_up_at": views_.position()})


@views.command()
@click.option(
    "--verify",
    is_flag=True,
    help="Compare the rebuilt rows with the rows before the rebuild; exit 1 if they differ.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_context
def rebuild(ctx: Context, verify: bool, as_json: bool) -> None:
    """Recompute every view from the whole event log."""
    views_ = _open(ctx)
    before = None
    if verify:
        views_.catch_up()
        before = views_.dump()
    started = time.perf_counter()
    n = views_.rebuild()
    elapsed = time.perf_counter() - started
    skipped = views_.skipped_count()
    outcome: dict[str, Any] = {
        "events": n,
        "seconds": round(elapsed, 3),
        "position": views_.position(),
        "skipped_events": skipped,
    }
    say = (lambda _text: None) if as_json else click.echo
    say(
        f"rebuilt the views from {n} events in {elapsed:.2f} s; position {views_.position()}"
        + (f"; {skipped} event(s) skipped (unreadable)" if skipped else "")
    )
    _warn_skipped(views_)
    diff: list[str] = []
    if before is not None:
        after = views_.dump()
        if n < views_.log_position() - views_.position():  # the log moved meanwhile
            say("note: events were recorded during the rebuild")
        diff = [t for t in before if before[t] != after.get(t)]
        outcome["identical"] = not diff
        outcome["differing_tables"] = diff
        outcome["rows"] = {t: len(rows) for t, rows in after.items()}
    if as_json:
        echo_json(outcome)
    if diff:
        click.echo(f"rows differ from before the rebuild in: {', '.join(diff)}", err=True)
        sys.exit(1)
    if before is not None:
        counts = ", ".join(f"{t} {n_rows}" for t, n_rows in outcome["rows"].items())
        say(f"identical rows before and after ({counts})")


@views.command()
@click.option("--catch-up", is_flag=True, help="Pull new events into the views first.")
@click.option("--now", default=None, metavar="WHEN", help="Judge 'overdue' as of WHEN (ISO).")
@with_token(METRICS_READERS, trial_wide=True)
@pass_context
def metrics(ctx: Context, catch_up: bool, now: str | None) -> None:
    """Prometheus text metrics (what the HTTP API serves at /metrics)."""
    moment = _parse_now(now)
    views_ = _open(ctx)
    if catch_up:
        views_.catch_up()
    click.echo(metrics_text(views_, moment), nl=False)


@views.command()
@click.option("--now", default=None, metavar="WHEN", help="Compute durations as of WHEN (ISO).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@wait_options
@with_token(VIEWERS)
@pass_context
def watchlist(
    ctx: Context,
    now: str | None,
    as_json: bool,
    wait_for: int | None,
    timeout: float,
    catch_up: bool,
) -> None:
    """Open toxicities (CRS, ICANS, ...) with grade, onset, holds and time since last infusion."""
    moment = _parse_now(now)
    views_ = _ready(ctx, wait_for, timeout, catch_up)
    _warn_skipped(views_, ctx=ctx)
    rows = queries.watchlist(views_.db, moment, sites=ctx.sites)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        f"{'patient':<10} {'toxicity':<10} {'kind':<6} {'grade':>5} {'worst':>5}  "
        f"{'onset':<26} {'open h':>7}  {'hold':<4} {'last infusion':<13} days"
    )
    for r in rows:
        click.echo(
            f"{r['patient_id']:<10} {r['toxicity_id']:<10} {r['kind']:<6} {r['grade']:>5} "
            f"{r['worst_grade']:>5}  {r['onset']:<26} {r['open_for_hours']:>7}  "
            f"{'yes' if r['holds_fractions'] else 'no':<4} {r['last_infusion_on'] or '-':<13} "
            f"{'-' if r['days_since_last_infusion'] is None else r['days_since_last_infusion']}"
        )
    click.echo(f"{len(rows)} open toxicit{'y' if len(rows) == 1 else 'ies'}")


@views.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@wait_options
@with_token(VIEWERS)
@pass_context
def cohort(
    ctx: Context, as_json: bool, wait_for: int | None, timeout: float, catch_up: bool
) -> None:
    """Patient counts by state, by last assessed response and by course number."""
    views_ = _ready(ctx, wait_for, timeout, catch_up)
    _warn_skipped(views_, ctx=ctx)
    data = queries.cohort(views_.db, sites=ctx.sites)
    if as_json:
        echo_json(data)
        return
    for dimension, counts in data.items():
        cells = ", ".join(f"{k} {n}" for k, n in counts.items()) or "-"
        click.echo(f"by {dimension}: {cells}")


@views.command()
@click.option(
    "--patient",
    default=None,
    callback=patient_id_argument,
    help="Only this patient's deviations.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@wait_options
@with_token(VIEWERS)
@pass_context
def deviations(
    ctx: Context,
    patient: str | None,
    as_json: bool,
    wait_for: int | None,
    timeout: float,
    catch_up: bool,
) -> None:
    """Protocol deviations recorded so far (documented dose or timing deviations, findings of
    corrections)."""
    if patient is not None:
        check_visible(ctx.service, patient)  # another site's patient: as not on record
    views_ = _ready(ctx, wait_for, timeout, catch_up)
    _warn_skipped(views_, ctx=ctx)
    rows = queries.deviations(views_.db, patient, sites=ctx.sites)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        course = f"course {r['course']} " if r["course"] is not None else ""
        click.echo(
            f"{r['occurred_at'][:16]}  {r['patient_id']:<10} v{r['version']} {r['trigger']:<10} "
            f"{course}{r['deviation']}" + (f" (reason: {r['reason']})" if r["reason"] else "")
        )
    click.echo(f"{len(rows)} deviation(s)")


@views.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@wait_options
@pass_context
def skipped(
    ctx: Context, as_json: bool, wait_for: int | None, timeout: float, catch_up: bool
) -> None:
    """Stored events the views could not read or apply, and skipped (with every later event of
    the same patient): position, stream, patient when known, version and why."""
    views_ = _ready(ctx, wait_for, timeout, catch_up)
    rows = queries.skipped(views_.db)
    if as_json:
        echo_json({"events": rows, "streams": queries.skipped_summary(views_.db)["streams"]})
        return
    for r in rows:
        click.echo(
            f"[{r['position']}] {r['patient_id'] or 'patient unknown':<10} v{r['version']:<4} "
            f"stream {r['stream_id']}  {r['topic'].rsplit(':', 1)[-1]}: {r['reason']}"
        )
    click.echo(f"{len(rows)} skipped event(s)")


def register(cli: click.Group) -> None:
    cli.add_command(status)
    cli.add_command(watch)
    cli.add_command(views)
