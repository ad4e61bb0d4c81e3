"""``cart-course store``: the store's stream ids (keyed on an encrypted store), a patient's
stream id and access-log pseudonym for an operator holding the key, and the migration of an
encrypted store written with uuid5 stream ids (see docs/operations.md, "Stream ids")."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import CipherKeyError
from .common import Context, echo_json, pass_context, patient_id_argument


@click.group()
def store() -> None:
    """The store's stream ids: keyed on an encrypted store (see docs/operations.md)."""


def _ids(ctx: Context) -> Any:
    return ctx.log.stream_ids


@store.command("ids")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def ids_cmd(ctx: Context, as_json: bool) -> None:
    """Which stream ids the store uses (uuid5, keyed, keyed since a migration), and whether the
    configured key is the store's (exit 1 when it is not)."""
    ids = _ids(ctx)
    info = ids.describe()
    problem = ctx.log.settings_mismatch()  # the marker's key check, then the first event
    info["key_fits"] = problem is None
    if problem is not None:
        info["problem"] = problem
    if as_json:
        echo_json(info)
    else:
        scheme = info["scheme"]
        line = f"stream ids: {scheme}"
        if scheme == "uuid5" and ctx.settings.cipher_key:
            line += " (written before keyed ids: run 'cart-course store migrate-stream-ids')"
        elif scheme == "uuid5" and problem is None:
            line += " (a plain store: its events hold the patient ids in clear anyway)"
        if "migrated_up_to" in info:
            line += (
                f", migrated {info['migrated_at']} ({info['migrated_streams']} streams, "
                f"notifications up to {info['migrated_up_to']} recorded under uuid5 ids)"
            )
        click.echo(line)
        if problem is not None:
            click.echo(f"error: {problem}", err=True)
    if problem is not None:
        sys.exit(1)


@store.command("lookup")
@click.argument("patient_id", callback=patient_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def lookup_cmd(ctx: Context, patient_id: str, as_json: bool) -> None:
    """PATIENT_ID's stream id and audit-access-log pseudonym in this store (needs the store's
    key on an encrypted store): what to look for in the database or the access log."""
    ids = _ids(ctx)
    problem = ctx.log.settings_mismatch()
    if problem is not None:
        raise CipherKeyError(
            f"cannot look {patient_id} up: the stored events do not decrypt with this key "
            f"({problem}). CART_COURSE_CIPHER_KEY must be the store's key"
        )
    out = {
        "patient_id": patient_id,
        "stream_id": str(ids.stream_id(patient_id)),
        "access_log_pseudonym": ids.pseudonym(patient_id),
        "scheme": ids.scheme,
    }
    if as_json:
        echo_json(out)
    else:
        click.echo(f"stream id: {out['stream_id']} ({ids.scheme})")
        click.echo(f"access log: {out['access_log_pseudonym']}")


@store.command("migrate-stream-ids")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_context
def migrate_cmd(ctx: Context, as_json: bool) -> None:
    """Re-key an encrypted store's uuid5 stream ids in place. Stop every writer first (the
    server, ingest). No recorded byte changes: hashes, chains, e-signatures, seals and signed
    checkpoints keep verifying; the report shows the log digest and the Merkle root of the whole
    log before and after (equal). Back the store up first."""
    from ..bootstrap import System
    from ..rekey import check_migrated, migrate_stream_ids

    settings = ctx.settings
    if not settings.cipher_key:
        raise CipherKeyError(
            "cannot migrate: CART_COURSE_CIPHER_KEY is not set (only an encrypted store keys "
            "its stream ids)"
        )
    done = migrate_stream_ids(ctx.service, settings.cipher_key)
    ctx.close()
    reopened = System(settings)
    try:
        report = check_migrated(reopened.log, done)
    finally:
        reopened.close()
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(
            f"migrated: {report.streams} streams ({report.events} events, {report.snapshots} "
            f"snapshots, {report.leaves} ledger leaves, {report.access_log_rows} access-log "
            f"rows); notifications up to {report.migrated_up_to} were recorded under uuid5 ids"
        )
        click.echo(f"log digest:  before {report.log_digest_before}")
        click.echo(f"             after  {report.log_digest_after}")
        click.echo(f"merkle root: before {report.merkle_root_before}")
        click.echo(f"             after  {report.merkle_root_after}")
        click.echo(
            "unchanged: every recorded event, hash and signed checkpoint is as it was"
            if report.unchanged
            else "CHANGED: the evidence differs; restore the backup and report this"
        )
    if not report.unchanged:
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(store)
