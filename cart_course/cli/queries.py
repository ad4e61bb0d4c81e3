"""Data queries (issue 17): ``queries list``, ``queries show``, ``queries run-rules``. Opening,
answering, closing and re-opening a query are commands of the contract (``cart-course record``
with ``open_query``, ``answer_query``, ``close_query``, ``reopen_query``). Thin: read the views
or the service, render."""

from __future__ import annotations

from typing import Any

import click

from ..access import READERS, VIEWERS, narrow
from ..views import queries as view_queries
from .common import Context, echo_json, pass_context, patient_id_argument, with_token
from .views import _parse_now, _ready, _site_option, wait_options

#: ``--status``: a query's status, or ``unresolved`` (every query not closed).
STATUS_CHOICES = (*view_queries.QUERY_STATUSES, "unresolved")


def _line(q: dict[str, Any]) -> str:
    on = (
        f"v{q['on_version']}" + (f" {q['field']}" if q.get("field") else "")
        if q.get("on_version")
        else "the patient"
    )
    opened = q.get("opened_occurred_at") or q.get("opened_at")
    age = f", opened {str(opened)[:10]}" if opened else ""
    age += f", {q['age_days']:g} d old" if q.get("age_days") is not None else ""
    by = q["opened_by"] + (f" [{q['rule']}]" if q.get("rule") else "")
    line = f"{q['patient_id']:<10} {q['query_id']:<7} {q['status']:<9} on {on} (by {by}{age}): "
    line += q.get("text") or ""
    if q.get("answer"):
        line += f"\n{'':<18} answer: {q['answer']}"
    return line


@click.group()
def queries() -> None:
    """Data queries between monitors and sites: list them, show a patient's, run the rules."""


@queries.command("list")
@click.option(
    "--status",
    type=click.Choice(STATUS_CHOICES),
    default=None,
    help="Only queries in this status (unresolved: every query not closed).",
)
@click.option(
    "--patient",
    "patient_id",
    default=None,
    callback=patient_id_argument,
    help="Only this patient's queries.",
)
@click.option(
    "--site",
    "site_filter",
    multiple=True,
    metavar="SITE",
    help="Only the queries of this site's patients (repeat for several; see 'sites list').",
)
@click.option("--now", default=None, metavar="WHEN", help="Ages as of WHEN (ISO).")
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@wait_options
@with_token(VIEWERS)
@pass_context
def list_queries(
    ctx: Context,
    status: str | None,
    patient_id: str | None,
    site_filter: tuple[str, ...],
    now: str | None,
    limit: int,
    as_json: bool,
    wait_for: int | None,
    timeout: float,
    catch_up: bool,
) -> None:
    """The data queries, oldest first, with their status, what they are about and their age."""
    moment = _parse_now(now)
    sites = narrow(ctx.sites, _site_option(ctx, site_filter))
    if patient_id is not None:
        ctx.service.record(patient_id)  # a patient not on record (or another site's): said
    views = _ready(ctx, wait_for, timeout, catch_up)
    rows = view_queries.query_list(
        views.db,
        status=None if status in (None, "unresolved") else status,
        unresolved=status == "unresolved",
        patient_id=patient_id,
        limit=limit,
        now=moment,
        sites=sites,
    )
    if as_json:
        echo_json({"as_of": view_queries.as_of(moment), "queries": rows})
        return
    for q in rows:
        click.echo(_line(q))
    pending = sum(1 for q in rows if q["status"] != "closed")
    click.echo(
        f"{len(rows)} query(ies), {pending} not closed; ages as of {view_queries.as_of(moment)}"
    )


@queries.command("show")
@click.argument("patient_id", callback=patient_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@with_token(READERS)
@pass_context
def show_queries(ctx: Context, patient_id: str, as_json: bool) -> None:
    """One patient's queries with every step (who, when, what), from the patient's record."""
    found = ctx.service.queries(patient_id)
    if as_json:
        echo_json(found)
        return
    for q in found:
        click.echo(_line({**q, "age_days": None}))
        for step in q["history"]:
            extra = f": {step['text']}" if step.get("text") else ""
            if step.get("reason"):
                extra += f" (reason: {step['reason']})"
            if step.get("correction") is not None:
                extra += f" (correction v{step['correction']})"
            click.echo(
                f"    v{step['version']} {step['action']:<7} -> {step['status']:<9} by "
                f"{step['by']} ({step['role']}) at {step.get('occurred_at') or step['at']} "
                f"(recorded {step['at']}){extra}"
            )
    if not found:
        click.echo(f"{patient_id}: no data queries")


@queries.command("run-rules")
@click.argument("patient_id", required=False, callback=patient_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@pass_context
def run_rules(ctx: Context, patient_id: str | None, as_json: bool) -> None:
    """Run the query rules over one patient's record, or every patient's: open a system query
    for each new finding, close the system queries whose data were corrected. Running them
    again records nothing new."""
    service = ctx.service
    ids = [patient_id] if patient_id is not None else list(service.patient_ids())
    changed = [
        {"patient_id": pid, **change} for pid in ids for change in service.run_query_rules(pid)
    ]
    if as_json:
        echo_json({"patients": len(ids), "changed": changed})
        return
    for c in changed:
        click.echo(
            f"{c['patient_id']} {c['query_id']} {c['status']} [{c['rule']}] on v{c['on_version']} "
            f"{c['field']}"
        )
    opened = sum(1 for c in changed if c["status"] == "open")
    click.echo(f"{len(ids)} patient(s): {opened} query(ies) opened, {len(changed) - opened} closed")


def register(cli: click.Group) -> None:
    cli.add_command(queries)
