"""``serve`` (the HTTP service and dashboard, via uvicorn) and ``tokens add|list|revoke``."""

from __future__ import annotations

import click

from ..bootstrap import export_store, operator_name
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
@click.argument("role", type=click.Choice(ROLES))
@click.option("--name", default=None, help="The person's or service's printed name.")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tokens_add(ctx: Context, actor: str, role: str, name: str | None, as_json: bool) -> None:
    """Issue a token for ACTOR in ROLE; the token is printed once (only its hash is kept)."""
    info, token = ctx.system.tokens.add(actor, role, name=name, created_by=operator_name())
    if as_json:
        echo_json({"token": token, "info": info.to_json()})
        return
    click.echo(token)
    click.echo(f"token {info.id} for {info.actor} ({info.role}); keep it secret", err=True)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tokens_list(ctx: Context, as_json: bool) -> None:
    """Every token: id, actor, role, created, revoked (never the token itself)."""
    infos = ctx.system.tokens.list()
    if as_json:
        echo_json([i.to_json() for i in infos])
        return
    click.echo(f"{'id':<13} {'actor':<20} {'role':<10} {'created (UTC)':<27} revoked")
    for i in infos:
        click.echo(
            f"{i.id:<13} {i.actor:<20} {i.role:<10} {i.created_at[:26]:<27} {i.revoked_at or '-'}"
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


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(tokens)
