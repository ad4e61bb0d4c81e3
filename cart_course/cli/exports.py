"""``cart-course export``: CDISC ODM with the audit trail, SDTM datasets with define.xml, checks.

Exit codes: 0 done (``check``: no error finding); 1 ``check`` found errors; 2 bad input (a
cut-off before the first event or in the future, an output directory that is not empty without
``--force``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from ..access import AUDITORS
from ..contract import parse_time
from ..exports import source
from ..exports.checks import check_dir
from ..exports.odm import write_odm
from ..exports.sdtm import build
from ..exports.write import FORMATS, prepare_dir, write_datasets
from .common import Context, echo_json, pass_context, with_token

AS_OF_HELP = (
    "Data cut-off: the export as the database stood at this record time (RFC 3339 with an "
    "offset); default: every event recorded."
)


@click.group("export")
def export() -> None:
    """CDISC exports at any data cut-off: odm, sdtm, check."""


def _as_of(value: str | None) -> dt.datetime | None:
    return parse_time(value, "--as-of") if value else None


@export.command("odm")
@click.option("--out", required=True, metavar="FILE", help="The ODM XML file to write.")
@click.option("--as-of", "as_of", metavar="RECORD_TIME", help=AS_OF_HELP)
@click.option("--force", is_flag=True, help="Replace FILE when it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@with_token(AUDITORS)
@pass_context
def odm(ctx: Context, out: str, as_of: str | None, force: bool, as_json: bool) -> None:
    """ODM 1.3.2 ClinicalData: every value with its AuditRecord, corrections as updates,
    e-signatures as Signatures, and a MetaDataVersion describing it."""
    path = Path(out)
    if path.exists() and not force:
        raise source.ExportInputError("--out", f"{path} exists: give --force to replace it")
    cut = source.read(ctx.log, _as_of(as_of))
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        write_odm(cut, fh)
    tmp.replace(path)
    summary = {
        "file": str(path),
        "cutoff": cut.cutoff,
        "subjects": cut.subject_count,
        "events": cut.event_count,
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"wrote {path}: {cut.subject_count} subjects, {cut.event_count} events, "
            f"cut-off {cut.cutoff}",
            err=True,
        )


@export.command("sdtm")
@click.option("--out", required=True, metavar="DIR", help="The directory to write into.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="xpt", show_default=True)
@click.option("--as-of", "as_of", metavar="RECORD_TIME", help=AS_OF_HELP)
@click.option("--force", is_flag=True, help="Write into DIR even when it is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@with_token(AUDITORS)
@pass_context
def sdtm(ctx: Context, out: str, fmt: str, as_of: str | None, force: bool, as_json: bool) -> None:
    """SDTMIG 3.4 datasets (DM IE PR EX AE FA RS DS and SUPP--) with define.xml 2.1 and
    define.html; the export's own notes (transliterations) in export-findings.json."""
    cut = source.read(ctx.log, _as_of(as_of))
    target = Path(out)
    prepare_dir(target, force)
    data = build(cut)
    written = write_datasets(data, target, fmt)
    counts = {name: len(rows) for name, rows in data.rows.items()}
    if as_json:
        echo_json(
            {
                "directory": str(target),
                "cutoff": cut.cutoff,
                "format": fmt,
                "records": counts,
                "files": [p.name for p in written],
                "findings": [f.to_json() for f in data.findings],
            }
        )
        return
    click.echo(
        f"wrote {len(counts)} datasets to {target} (cut-off {cut.cutoff}): "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
        err=True,
    )
    for finding in data.findings:
        click.echo(f"  {finding.line()}", err=True)


@export.command("check")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Every finding as JSON.")
def check(directory: Path, as_json: bool) -> None:
    """Our conformance checks of an SDTM export (required variables, controlled terminology,
    names, labels, values, --SEQ, ISO 8601, --DY, DM, define.xml XSD, Dataset-JSON): each
    finding on a line; exit 1 when one is an error."""
    findings = check_dir(directory)
    errors = [f for f in findings if f.level == "error"]
    if as_json:
        click.echo(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f.line())
        click.echo(
            f"{len(findings)} findings ({len(errors)} errors) in {directory}",
            err=True,
        )
    if errors:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(export)
