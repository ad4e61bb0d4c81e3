"""``cart-course report cohort``: the printable cohort report (every cohort figure with its
table) written as one self-contained HTML file. Thin: read the records, draw, write."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..access import VIEWERS
from ..figures import model, read
from ..figures.report import cohort_report
from ..protocol.states import State
from .common import Context, echo_json, pass_context, with_token

STATES = [s.value for s in State]


@click.group()
def report() -> None:
    """Printable reports: the cohort's figures (swimmer plot, responses, CRS/ICANS grades,
    vein-to-vein time)."""


@report.command()
@click.option(
    "--out",
    default="var/cohort.html",
    show_default=True,
    metavar="FILE",
    help="Where to write the HTML (its folder is made); - for stdout.",
)
@click.option(
    "--sort",
    type=click.Choice(model.SORTS),
    default="time_on_study",
    show_default=True,
    help="The swimmer plot's order (time on study: longest first).",
)
@click.option("--state", type=click.Choice(STATES), default=None, help="Only patients in STATE.")
@click.option("--toxicity", is_flag=True, help="Only patients with an open toxicity.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@with_token(VIEWERS, trial_wide=True)
@pass_context
def cohort(
    ctx: Context, out: str, sort: str, state: str | None, toxicity: bool, as_json: bool
) -> None:
    """The printable cohort report: a swimmer plot (one bar per infused patient from D1, with
    fractions, CRS/ICANS by grade, responses, relapse, death), responses by course, maximum
    CRS and ICANS grade, vein-to-vein time; each figure followed by its table. One HTML file,
    nothing loaded from elsewhere; print it from a browser."""
    records, as_of = read.cohort_as_of(ctx.log)
    chosen = model.select(records, state=state, toxicity=toxicity)
    selection = model.describe(
        [*([f"state {state}"] if state else []), *(["open toxicity only"] if toxicity else [])]
    )
    html = cohort_report(chosen, as_of=as_of, selection=selection, sort=sort)
    if out == "-":
        sys.stdout.write(html)
        return
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    infused = sum(1 for r in chosen if model.first_d1(r) is not None)
    if as_json:
        echo_json({"written": str(target), "patients": len(chosen), "infused": infused})
    else:
        click.echo(
            f"wrote the cohort report of {len(chosen)} patients ({infused} infused) to {target}"
        )


def register(cli: click.Group) -> None:
    cli.add_command(report)
