"""``cart-course audit checkpoint | prove | check-proof`` and ``audit verify --checkpoint``:
the signed ledger (``cart_course.ledger``) on the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ..audit.log import require_readable
from ..keys import KeyFormatError, PublicKey, read_public_keys, read_signing_key
from ..ledger.checkpoint import CheckpointFormatError
from ..ledger.core import LedgerError, LedgerReport, check_proof, issue, prove, verify_checkpoint
from ..ledger.store import LedgerStore
from ..ledger.views import compare_views, views_problems
from .audit import audit
from .common import Context, echo_json, pass_context, patient_id_argument


def _read(path: str, option: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise click.BadParameter(f"cannot read {path!r}: {reason}", param_hint=option) from None


def public_keys(ctx: Context | None, paths: Sequence[str]) -> list[PublicKey]:
    """The keys given with --public-key; without any, the service's own (its signing key)."""
    try:
        if paths:
            return read_public_keys(paths)
        key = ctx.settings.signing_key if ctx is not None else None
        return [read_signing_key(key).public_key] if key else []
    except KeyFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-key") from None


def _store(ctx: Context) -> tuple[LedgerStore, bool]:
    """The ledger's tables (the service's own when it has them; else opened, to be closed)."""
    ledger = ctx.service.ledger
    if ledger is not None:
        return ledger.store, False
    return LedgerStore.open(ctx.settings.store), True


def check_ledger(
    ctx: Context, checkpoint_path: str | None, key_paths: Sequence[str]
) -> LedgerReport | None:
    """``verify --checkpoint``: today's log against the checkpoint held (None: none given)."""
    if checkpoint_path is None:
        return None
    text = _read(checkpoint_path, "--checkpoint")
    keys = public_keys(ctx, key_paths)
    app = ctx.service.log
    require_readable(app)
    store, opened = _store(ctx)
    try:
        report = verify_checkpoint(app, store, text, keys)
    except CheckpointFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    finally:
        if opened:
            store.close()
    report.problems.extend(views_problems(app, ctx.settings.store))
    return report


def ledger_json(ctx: Context, report: LedgerReport | None) -> dict[str, Any]:
    return {"ledger": report.to_json() if report is not None else _summary(ctx)}


def _summary(ctx: Context) -> dict[str, Any]:
    store, opened = _store(ctx)
    try:
        latest = store.latest()
    finally:
        if opened:
            store.close()
    return {
        "signing_key": ctx.service.ledger is not None,
        "latest_checkpoint": None
        if latest is None
        else {"size": latest.size, "issued_at": latest.issued_at},
    }


def ledger_lines(ctx: Context, report: LedgerReport | None) -> Iterator[str]:
    if report is None:
        summary = _summary(ctx)
        latest = summary["latest_checkpoint"]
        if latest is None:
            yield (
                "signed checkpoints: none: nothing is signed"
                + ("" if summary["signing_key"] else " (no CART_COURSE_SIGNING_KEY)")
            )
        else:
            yield (
                f"signed checkpoints: the latest covers {latest['size']} events "
                f"({latest['issued_at']}); check one you hold with --checkpoint FILE"
            )
        return
    cp = report.checkpoint
    yield (
        f"checkpoint of {cp.issued_at} ({cp.origin}, signed by {report.signer.name} "
        f"{report.signer.id_hex}): {cp.size} events"
    )
    if report.ok:
        yield (
            f"  the log holds those {cp.size} events unchanged and extends them to "
            f"{report.tree_size} (consistency proof verified, {len(report.consistency)} "
            f"hashes); {report.stored_checkpoints} stored checkpoint(s) agree"
        )
    for p in report.problems:
        yield f"  {p}"


@click.command("checkpoint")
@click.option("--out", default="-", metavar="FILE", help="Write the checkpoint to FILE.")
@pass_context
def checkpoint_cmd(ctx: Context, out: str) -> None:
    """Sign the log as it stands now (a checkpoint: size, root hash, time) with the service's
    key and print it; keep it outside the database (see docs/audit.md)."""
    ledger = ctx.service.ledger
    if ledger is None:
        raise click.UsageError(
            "no signing key: set CART_COURSE_SIGNING_KEY to the private key file "
            "(make one with: cart-course keys generate --out DIR)"
        )
    require_readable(ctx.service.log)
    checkpoint = issue(ctx.service.log, ledger.store, ledger.key, origin=ledger.origin)
    text = checkpoint.text()
    if out == "-":
        click.echo(text, nl=False)
    else:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(
                f"cannot write {out!r}: {exc.strerror}", param_hint="--out"
            ) from None
    click.echo(
        f"checkpoint: {checkpoint.size} events up to notification {checkpoint.up_to}, "
        f"signed by {ledger.key.name} {ledger.key.id.hex()}",
        err=True,
    )


@click.command("prove")
@click.argument("patient_id", callback=patient_id_argument)
@click.argument("version", type=click.IntRange(min=1))
@click.option(
    "--checkpoint",
    "checkpoint_path",
    metavar="FILE",
    help="Prove against this checkpoint (default: the latest issued).",
)
@pass_context
def prove_cmd(ctx: Context, patient_id: str, version: int, checkpoint_path: str | None) -> None:
    """Print an inclusion proof (JSON) of PATIENT_ID's event VERSION in a checkpointed tree;
    an auditor checks it offline with `cart-course audit check-proof`."""
    text = _read(checkpoint_path, "--checkpoint") if checkpoint_path else None
    app = ctx.service.log
    require_readable(app)
    store, opened = _store(ctx)
    try:
        proof = prove(app, store, str(app.stream_id(patient_id)), version, checkpoint_text=text)
    except CheckpointFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    except LedgerError as exc:
        click.echo(f"error: {patient_id} {exc}", err=True)
        sys.exit(1)
    finally:
        if opened:
            store.close()
    proof["patient_id"] = patient_id
    echo_json(proof)


@click.command("check-proof")
@click.argument("proof_path", metavar="PROOF")
@click.option(
    "--checkpoint",
    "checkpoint_path",
    metavar="FILE",
    help="The checkpoint you hold (default: the one the proof names; its signature is checked "
    "either way).",
)
@click.option(
    "--public-key", "key_paths", multiple=True, required=True, metavar="FILE", help="Public key."
)
def check_proof_cmd(proof_path: str, checkpoint_path: str | None, key_paths: Sequence[str]) -> None:
    """Check an inclusion proof of `audit prove` offline: the event it carries is leaf N of the
    tree whose root the checkpoint signs. Reads no store. Exits 1 when it does not verify."""
    try:
        proof = json.loads(_read(proof_path, "PROOF"))
    except ValueError:
        raise click.BadParameter("not JSON", param_hint="PROOF") from None
    if not isinstance(proof, dict):
        raise click.BadParameter("not an inclusion proof", param_hint="PROOF")
    text = (
        _read(checkpoint_path, "--checkpoint") if checkpoint_path else str(proof.get("checkpoint"))
    )
    keys = public_keys(None, key_paths)
    try:
        checkpoint, index = check_proof(proof, text, keys)
    except CheckpointFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--checkpoint") from None
    except LedgerError as exc:
        click.echo(f"proof: FAILED: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"proof: OK: {proof.get('patient_id', proof.get('stream_id'))} v{proof.get('version')} "
        f"is leaf {index} of the {checkpoint.size}-event tree signed at {checkpoint.issued_at}"
    )


@click.command("verify")
@pass_context
def views_verify_cmd(ctx: Context) -> None:
    """Compare the read models (view_* tables) with the log replayed to their position; name
    every patient whose rows differ, with the tables and columns. Exits 1 when any differ."""
    app = ctx.service.log
    require_readable(app)
    position, problems = compare_views(app, ctx.settings.store)
    if position is None:
        click.echo("views: nothing to compare (no stored views: built in memory, or never built)")
        return
    click.echo(
        f"views: {'OK' if not problems else 'DIFFER'}: compared with the log replayed to "
        f"position {position}"
    )
    for p in problems:
        click.echo(f"  {p}")
    if problems:
        sys.exit(1)


def register(cli: click.Group) -> None:
    for command in (checkpoint_cmd, prove_cmd, check_proof_cmd):
        audit.add_command(command)
    views = cli.commands.get("views")
    if isinstance(views, click.Group):
        views.add_command(views_verify_cmd)
