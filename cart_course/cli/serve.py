"""``serve`` (the HTTP service and dashboard, via uvicorn) and ``tokens add|list|revoke``."""

from __future__ import annotations

import click

from ..bootstrap import export_store, operator_name
from ..sites import DEFAULT_SITE, DEFAULT_SITE_NAME
from ..tokens import ROLES, issue_demo_tokens, only_demo_tokens, retire_well_known_tokens
from .common import Context, echo_json, pass_context


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes (use PostgreSQL for more than one in production).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="On an empty store record a demo cohort; issue the demo tokens and print how to log in.",
)
@click.option("--log-level", default="warning", show_default=True)
@pass_context
def serve(ctx: Context, host: str, port: int, workers: int, demo: bool, log_level: str) -> None:
    """Serve the HTTP API (OpenAPI at /schema) and the monitors' dashboard (at /)."""
    import uvicorn

    settings = ctx.settings
    for info in retire_well_known_tokens(ctx.system.tokens):
        click.echo(
            f"revoked the well-known demo token {info.id} of {info.actor} (public knowledge)"
        )
    if demo:
        from .course import record_demo

        empty = next(iter(ctx.service.patient_ids()), None) is None
        if empty:
            click.echo("empty store: recording a demo cohort of 40 patients, in progress today ...")
            counts = record_demo(ctx, 40, seed=1, live=True)
            click.echo(f"{counts['recorded']} events recorded")
        click.echo("")
        click.echo(f"  dashboard: http://{host}:{port}/   (API docs: http://{host}:{port}/schema)")
        if empty or only_demo_tokens(ctx.system.tokens):
            demo_tokens = issue_demo_tokens(ctx.system.tokens)
            click.echo(
                "  log in with one of these demo tokens, fresh for this run (local demo only):"
            )
            for role, (actor, token) in demo_tokens.items():
                click.echo(f"    {role:<10} {token:<46} (actor {actor})")
            example = demo_tokens["monitor"][1]
            click.echo(
                f"  e.g. curl -H 'Authorization: Bearer {example}' http://{host}:{port}/v1/patients"
            )
        else:
            click.echo(
                "  this store holds data and tokens that no demo run issued: no demo tokens issued"
                " (issue tokens with 'cart-course tokens add ACTOR ROLE')"
            )
        click.echo("")
    ctx.close()  # each worker builds its own system
    export_store(settings)
    click.echo(
        f"serving {settings.store.display} on http://{host}:{port} ({workers} worker(s)), "
        f"protocol {settings.protocol_id}"
    )
    uvicorn.run(
        "cart_course.bootstrap:http_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


@click.group()
def tokens() -> None:
    """API tokens: each maps to an actor and a role (stored hashed beside the events)."""


@tokens.command("add")
@click.argument("actor")
@click.argument("role", type=click.Choice(ROLES), required=False)
@click.option(
    "--role", "role_option", type=click.Choice(ROLES), default=None, help="ROLE, as an option."
)
@click.option("--name", default=None, help="The person's or service's printed name.")
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="SITE",
    help="Limit the token to this site (repeat for several; see 'sites list'); without it the "
    "token is trial-wide. Service, clinician and monitor tokens only.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tokens_add(
    ctx: Context,
    actor: str,
    role: str | None,
    role_option: str | None,
    name: str | None,
    sites: tuple[str, ...],
    as_json: bool,
) -> None:
    """Issue a token for ACTOR in ROLE (or --role ROLE); the token is printed once (only its
    hash is kept). With --site, it sees and writes only those sites' patients."""
    if role is not None and role_option is not None and role != role_option:
        raise click.UsageError("ROLE and --role differ: give one")
    role = role or role_option
    if role is None:
        raise click.UsageError("ROLE is required (an argument or --role)")
    info, token = ctx.system.tokens.add(
        actor, role, name=name, created_by=operator_name(), sites=sites
    )
    if as_json:
        echo_json({"token": token, "info": info.to_json()})
        return
    click.echo(token)
    scope = f"sites {', '.join(info.sites)}" if info.sites else "trial-wide"
    click.echo(f"token {info.id} for {info.actor} ({info.role}, {scope}); keep it secret", err=True)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tokens_list(ctx: Context, as_json: bool) -> None:
    """Every token: id, actor, role, created, revoked (never the token itself)."""
    infos = ctx.system.tokens.list()
    if as_json:
        echo_json([i.to_json() for i in infos])
        return
    click.echo(f"{'id':<13} {'actor':<20} {'role':<10} {'scope':<12} {'created (UTC)':<27} revoked")
    for i in infos:
        click.echo(
            f"{i.id:<13} {i.actor:<20} {i.role:<10} {i.scope:<12} {i.created_at[:26]:<27} "
            f"{i.revoked_at or '-'}"
        )


@tokens.command("revoke")
@click.argument("token_id")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tokens_revoke(ctx: Context, token_id: str, as_json: bool) -> None:
    """Revoke the token TOKEN_ID (see 'tokens list'); it stops working at once."""
    info = ctx.system.tokens.revoke(token_id, revoked_by=operator_name())
    if as_json:
        echo_json(info.to_json())
        return
    click.echo(f"token {info.id} of {info.actor} ({info.role}) revoked at {info.revoked_at}")


@click.group()
def sites() -> None:
    """The trial's sites (issue 17): id, name, IANA time zone, active. Stored beside the tokens;
    patients recorded before sites are in S00 "Unassigned (before sites)"."""


@sites.command("add")
@click.argument("site_id", metavar="ID")
@click.argument("name")
@click.argument("time_zone", metavar="TIME_ZONE")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def sites_add(ctx: Context, site_id: str, name: str, time_zone: str, as_json: bool) -> None:
    """Add the site ID (e.g. S01) named NAME in TIME_ZONE (IANA, e.g. Europe/Paris)."""
    site = ctx.system.tokens.sites.add(site_id, name, time_zone, created_by=operator_name())
    if as_json:
        echo_json(site.to_json())
        return
    click.echo(f"site {site.label()} added")


@sites.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def sites_list(ctx: Context, as_json: bool) -> None:
    """Every site, active or not, with who added (and deactivated) it and when."""
    listed = ctx.system.tokens.sites.list()
    if as_json:
        echo_json([s.to_json() for s in listed])
        return
    click.echo(f"{'id':<8} {'name':<32} {'time zone':<22} {'active':<7} added (UTC), by")
    for s in listed:
        active = "yes" if s.active else "no"
        line = f"{s.id:<8} {s.name[:32]:<32} {s.time_zone:<22} {active:<7} "
        line += f"{s.created_at[:19]} {s.created_by or '-'}"
        if s.deactivated_at:
            line += f"; deactivated {s.deactivated_at[:19]} by {s.deactivated_by or '-'}"
        click.echo(line)
    click.echo(f"(patients recorded before sites: {DEFAULT_SITE} {DEFAULT_SITE_NAME!r})")


@sites.command("deactivate")
@click.argument("site_id", metavar="ID")
@click.option("--reason", default=None, help="Why the site closes (kept with the change).")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def sites_deactivate(ctx: Context, site_id: str, reason: str | None, as_json: bool) -> None:
    """Close the site ID to new patients and transfers in; its patients and tokens stay."""
    site = ctx.system.tokens.sites.deactivate(site_id, by=operator_name(), reason=reason)
    if as_json:
        echo_json(site.to_json())
        return
    click.echo(f"site {site.id} deactivated at {site.deactivated_at}")


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(tokens)
    cli.add_command(sites)
