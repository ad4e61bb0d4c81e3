"""``cart-course audit``: timeline, as-of views, conformance replay, tamper evidence, exports.

Exit codes: 0 when clean; 1 when ``verify`` finds tampering or ``conformance`` finds a
non-conforming step (or the store does not decrypt with this key, or a stored row cannot be read:
one line naming the patient and version); 2 for bad input (an incomplete seal file included).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import click

from ..access import AUDITORS
from ..audit import exports
from ..audit.asof import as_of
from ..audit.conformance import Conformance, check_history
from ..audit.fhir import bundle
from ..audit.history import COLUMNS, csv_row, render_table, timeline
from ..audit.integrity import SealFormatError, check_stream, seal, verify
from ..audit.log import patient_events, require_readable, streams
from ..audit.report import html_report
from ..contract import parse_time
from ..protocol.versions import VERSIONS, ProtocolVersion, UnknownProtocolVersionError, get_version
from .common import Context, echo_json, pass_context, patient_id_argument, with_token


@click.group()
def audit() -> None:
    """Audit the record: history, as-of, conformance, verify, seal, export."""


def _write(chunks: Iterable[str], out: str) -> None:
    if out == "-":
        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return
    with open(out, "w", encoding="utf-8", newline="") as fh:
        for chunk in chunks:
            fh.write(chunk)


@audit.command()
@click.argument("patient_id", callback=patient_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Every event as a JSON array.")
@click.option("--csv", "as_csv", is_flag=True, help="Every event as CSV (one row per event).")
@with_token(AUDITORS)
@pass_context
def history(ctx: Context, patient_id: str, as_json: bool, as_csv: bool) -> None:
    """Every event of PATIENT_ID in order: version, record time (UTC), clinical time, actor and
    role, reason, the move, the facts, corrections and signatures."""
    if as_json and as_csv:
        raise click.BadParameter("give --json or --csv, not both")
    events = patient_events(ctx.log, patient_id)
    rows = timeline(patient_id, events)
    if as_json:
        echo_json(list(rows))
    elif as_csv:
        _write(exports.csv_timeline(ctx.log, patient_id), "-")
    else:
        for line in render_table(rows):
            click.echo(line)


@audit.command("as-of")
@click.argument("patient_id", callback=patient_id_argument)
@click.option("--version", "version", type=click.IntRange(min=1), help="Events up to this version.")
@click.option("--recorded-at", help="What the system knew at this record time (ISO, with offset).")
@click.option("--occurred-at", help="What had happened by this clinical time, as known now.")
@click.option("--json", "as_json", is_flag=True, help="The whole view as JSON.")
@with_token(AUDITORS)
@pass_context
def as_of_cmd(
    ctx: Context,
    patient_id: str,
    version: int | None,
    recorded_at: str | None,
    occurred_at: str | None,
    as_json: bool,
) -> None:
    """PATIENT_ID's state, course, doses and toxicities at a point of the history."""
    given = [x for x in (version, recorded_at, occurred_at) if x is not None]
    if len(given) != 1:
        raise click.BadParameter(
            "give exactly one of --version N, --recorded-at TIME, --occurred-at TIME"
        )
    events = patient_events(ctx.log, patient_id)
    view = as_of(
        patient_id,
        events,
        version=version,
        recorded_at=parse_time(recorded_at, "--recorded-at") if recorded_at else None,
        occurred_at=parse_time(occurred_at, "--occurred-at") if occurred_at else None,
    )
    if as_json:
        echo_json(view)
        return
    bound = ", ".join(f"{k} {v}" for k, v in view["as_of"].items())
    click.echo(
        f"{patient_id} as of {bound}: {view['events_included']} of {len(events)} events "
        f"(latest version {view['latest_version']})"
    )
    if view["versions_excluded"]:
        click.echo("  not included: " + ", ".join(f"v{v}" for v in view["versions_excluded"]))
    record = view["record"]
    if record is None:
        click.echo("  nothing recorded yet at that point")
        return
    click.echo(f"  state: {record['state']}   course: {record['course_number']}")
    for c in record["courses"]:
        doses = ", ".join(
            f"D{f['day']} {f['delivered_cells']:.4g} cells on {f['given_on']}"
            for f in c["fractions"]
        )
        extra = f"; response {c['response']}" if c["response"] else ""
        click.echo(f"  course {c['number']}: {doses or 'no fraction yet'}{extra}")
    for t in record["toxicities"]:
        status = "open" if t["open"] else f"resolved {t['resolved_at']}"
        click.echo(f"  toxicity {t['id']}: grade {t['grade']} ({t['scale']}), {status}")
    for s in record["signatures"]:
        click.echo(
            f"  signed v{s['signs_version']} {s['milestone']} ({s['meaning']}) by {s['printed_name']}"
        )


def _protocol(value: str | None) -> ProtocolVersion | None:
    if value is None:
        return None
    try:
        return get_version(value)
    except UnknownProtocolVersionError:
        raise click.BadParameter(
            f"unknown protocol version {value!r}; known: {', '.join(VERSIONS)}",
            param_hint="--protocol",
        ) from None


@audit.command()
@click.argument("patient_id", required=False, callback=patient_id_argument)
@click.option(
    "--protocol",
    "protocol_id",
    help="Judge every step by this protocol version "
    "(default: the version each event was recorded under).",
)
@click.option(
    "--regrade",
    type=click.Choice(["ASTCT", "CTCAE"]),
    help="Re-grade every recorded toxicity observation under this scale.",
)
@click.option(
    "--as-of",
    "as_of",
    metavar="WHEN",
    help="Judge the record as the system knew it at this record time (RFC 3339): only the "
    "events recorded by then, and the data queries open then.",
)
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
@with_token(AUDITORS)
@pass_context
def conformance(
    ctx: Context,
    patient_id: str | None,
    protocol_id: str | None,
    regrade: str | None,
    as_of: str | None,
    as_json: bool,
) -> None:
    """Re-run each history (one patient, or all) through the protocol's guards; list every step
    the guards refuse, with the failed rules. Exits 1 when a step does not conform."""
    protocol = _protocol(protocol_id)
    when = parse_time(as_of, "--as-of") if as_of else None
    result = Conformance()
    for pid, events in streams(ctx.log, patient_id):
        kept = events if when is None else [e for e in events if e.recorded_time <= when]
        if kept:  # registered after the cut-off: not yet a patient then
            check_history(pid, kept, protocol=protocol, regrade=regrade, result=result)
    if as_json:
        echo_json(result.to_json())
    else:
        judged = f"protocol {protocol.id}" if protocol else "the protocol version of each event"
        click.echo(
            f"conformance under {judged}: {result.patients} patient(s), {result.moves} moves, "
            f"{len(result.findings)} finding(s)"
        )
        for f in result.findings:
            click.echo(f"  {f}")
        if result.notes:
            click.echo(f"no product recorded: {len(result.notes)} infusion(s) name no bag")
        if result.open_queries:
            then = f"as of {as_of}" if as_of else "now"
            click.echo(f"open data queries {then}: {len(result.open_queries)}")
            for q in result.open_queries:
                on = (
                    f" on v{q['on_version']} {q['field'] or ''}".rstrip() if q["on_version"] else ""
                )
                click.echo(
                    f"  {q['patient_id']} {q['query_id']} {q['status']}{on} "
                    f"(opened by {q['opened_by']} at {q.get('opened_occurred_at') or q['opened_at']}"
                    f", recorded {q['opened_at']}): {q['text']}"
                )
        if regrade:
            click.echo(f"re-graded under {regrade}: {len(result.regrades)} toxicity report(s)")
            for r in result.regrades:
                click.echo(f"  {r}")
    if result.findings:
        sys.exit(1)


@audit.command("product")
@click.argument("product_id")
@click.option("--json", "as_json", is_flag=True, help="The chain of custody as JSON.")
@with_token(AUDITORS, path_arg="product_id")
@pass_context
def product_chain(ctx: Context, product_id: str, as_json: bool) -> None:
    """The chain of custody of a collection (ISBT 128 DIN or site id), a lot or a bag: every
    step, who, when, under which release decision. Exits 1 when PRODUCT_ID is not on record."""
    from ..audit.product import chain_of_custody, render

    chain = chain_of_custody(product_id, streams(ctx.log))
    if chain is None:
        click.echo(f"no collection, lot or bag {product_id!r} is on record", err=True)
        sys.exit(1)
    if as_json:
        echo_json(chain)
    else:
        for line in render(chain):
            click.echo(line)


def _open_seal(path: str | None) -> IO[str] | None:
    if path is None:
        return None
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path!r}: {exc.strerror}", param_hint="--seal"
        ) from None


@audit.command("verify")
@click.option(
    "--seal",
    "seal_path",
    metavar="FILE",
    help="Also compare with a seal written by "
    "`audit seal` (detects deletion of the last events of a stream).",
)
@click.option(
    "--up-to",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Check the log as it stood at notification N (reproduces the digest printed then).",
)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option(
    "--checkpoint",
    "checkpoint_path",
    metavar="FILE",
    help="Also prove that the log holds this signed checkpoint's events unchanged and extends "
    "them (`audit checkpoint`; see docs/audit.md).",
)
@click.option(
    "--public-key",
    "key_paths",
    multiple=True,
    metavar="FILE",
    help="Public key(s) checkpoints are signed with (default: the service's own).",
)
@with_token(AUDITORS, trial_wide=True)
@pass_context
def verify_cmd(
    ctx: Context,
    seal_path: str | None,
    up_to: int | None,
    as_json: bool,
    checkpoint_path: str | None = None,
    key_paths: tuple[str, ...] = (),
) -> None:
    """Recompute every stream's hash chain and the log digest, replay every stream and compare
    each stored snapshot with it; name the first broken event. Exits 1 when anything was
    altered."""
    from .ledger import check_ledger, ledger_json, ledger_lines

    fh = _open_seal(seal_path)
    try:
        report = verify(ctx.log, fh, up_to=up_to)
    except SealFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--seal") from None
    finally:
        if fh is not None:
            fh.close()
    ledger = check_ledger(ctx, checkpoint_path, key_paths)
    if as_json:
        echo_json(report.to_json() | ledger_json(ctx, ledger))
    else:
        status = "OK" if report.ok else "TAMPERED"
        click.echo(
            f"verify: {status}: {report.streams} streams, {report.events} events "
            f"({report.rows} rows in the store), {report.snapshots} snapshot"
            f"{'' if report.snapshots == 1 else 's'} checked"
            + (
                f", {report.older_snapshots} taken under older replay rules (not used, not "
                "compared)"
                if report.older_snapshots
                else ""
            )
        )
        click.echo(f"verified the log up to notification {report.up_to}")
        click.echo(f"log digest: {report.log_digest}")
        if report.sealed is not None:
            click.echo(
                f"seal of {report.sealed.get('sealed_at')}: {report.sealed.get('streams')} streams, "
                f"{report.sealed.get('events')} events, digest {report.sealed.get('log_digest')}"
            )
        for p in report.problems:
            click.echo(f"  {p}")
        for line in ledger_lines(ctx, ledger):
            click.echo(line)
    if not report.ok or (ledger is not None and not ledger.ok):
        sys.exit(1)


@audit.command("seal")
@click.argument("out", metavar="FILE")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the seal's summary as JSON (with FILE -, the seal is on stdout already).",
)
@with_token(AUDITORS, trial_wide=True)
@pass_context
def seal_cmd(ctx: Context, out: str, as_json: bool) -> None:
    """Write every stream's head hash and the log digest to FILE (keep it outside the database)."""
    require_readable(ctx.log)  # before FILE is opened (and an earlier seal overwritten)
    if out == "-":
        report = seal(ctx.log, sys.stdout)
    else:
        try:
            with open(out, "w", encoding="utf-8") as fh:
                report = seal(ctx.log, fh)
        except OSError as exc:
            raise click.BadParameter(f"cannot write {out!r}: {exc.strerror}") from None
    if as_json and out != "-":  # to stdout, the seal is JSON Lines already (summary last)
        echo_json({**report.to_json(), "seal_file": out})
        return
    click.echo(
        f"sealed {report.streams} streams, {report.events} events up to notification "
        f"{report.up_to}; log digest {report.log_digest}",
        err=out == "-",
    )
    for p in report.problems:
        click.echo(f"  warning: sealed a broken stream: {p}", err=True)


@audit.command("export")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["jsonl", "csv", "fhir", "html"]))
@click.option(
    "--patient",
    "patient_id",
    callback=patient_id_argument,
    help="One patient (default: every patient).",
)
@click.option(
    "--out",
    default="-",
    metavar="PATH",
    help="File to write (default stdout); for "
    "html of every patient, a directory (one file per patient).",
)
@with_token(AUDITORS)
@pass_context
def export(ctx: Context, fmt: str, patient_id: str | None, out: str) -> None:
    """Stream the log: jsonl (every event), csv (the timeline), fhir (an R4 Bundle per patient;
    one per line for every patient), html (a printable audit report per patient)."""
    log = ctx.log
    if fmt == "jsonl":
        _write(exports.jsonl(log, patient_id), out)
    elif fmt == "csv":
        _write(exports.csv_timeline(log, patient_id), out)
    elif fmt == "fhir":
        if patient_id is not None:
            data = bundle(patient_id, patient_events(log, patient_id))
            _write([json.dumps(data, indent=2, ensure_ascii=False) + "\n"], out)
        else:
            _write(
                (
                    json.dumps(bundle(pid, events), ensure_ascii=False, separators=(",", ":"))
                    + "\n"
                    for pid, events in streams(log)
                ),
                out,
            )
    else:
        if patient_id is None and out == "-":
            raise click.BadParameter(
                "html for every patient needs --out DIRECTORY", param_hint="--out"
            )
        if patient_id is not None:
            _write([_html(patient_id, patient_events(log, patient_id))], out)
            return
        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        count = 0
        for pid, events in streams(log):
            (target / f"{pid}.html").write_text(_html(pid, events), encoding="utf-8")
            count += 1
        click.echo(f"wrote {count} reports to {target}", err=True)


def _html(patient_id: str, events: list) -> str:  # type: ignore[type-arg]
    findings = check_history(patient_id, events).findings
    return html_report(
        patient_id, events, findings=findings, problems=check_stream(patient_id, events)
    )


_ = COLUMNS, csv_row  # re-exported for callers composing their own CSV


def register(cli: click.Group) -> None:
    cli.add_command(audit)
