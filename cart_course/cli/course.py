"""Course commands: record, ingest, show, patients, demo, run."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click

from ..access import COMMANDERS, READERS, parse_as
from ..contract import parse_command
from ..demo import cohort, ensure_demo_sites, live_cohort, query_steps, wrong_bag_attempt
from ..errors import CartCourseError
from ..ingest import (
    AUTO_MAX_WORKERS,
    AUTO_MIN_LINES,
    BATCH,
    MAX_WORKERS,
    WORKERS_PER_CPU,
    Ingest,
    max_workers,
    numbered_lines,
)
from ..protocol.query_rules import RULES as QUERY_RULES
from ..protocol.registry import REGISTRY
from ..storage import DEFAULT_DB, new_cipher_key
from .common import (
    Context,
    echo_json,
    pass_context,
    patient_id_argument,
    read_json_input,
    with_token,
)


def _record_epilog(example: str = "record_apheresis") -> str:
    """``record --help``'s end: an example envelope and the commands, from the registry."""
    envelope = json.dumps(REGISTRY[example].examples[0], indent=2, ensure_ascii=False)
    width = max(len(d.name) for d in REGISTRY)
    commands = [
        f"  {d.name:{width}}  {d.summary}" + ("  [reason required]" if d.reason == "always" else "")
        for d in REGISTRY
    ]
    # "\b": click keeps the paragraph's lines as they are (no re-wrapping)
    return (
        "\b\nExample envelope (a file, the JSON itself, or - for stdin):\n"
        + envelope
        + "\n\n\b\nCommands (the payload of each: cart-course protocol commands; its JSON "
        "Schema: protocol commands --json):\n" + "\n".join(commands)
    )


@click.command(epilog=_record_epilog())
@click.argument("source", default="-")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@with_token(COMMANDERS)
@pass_context
def record(ctx: Context, source: str, as_json: bool) -> None:
    """Record one command (JSON envelope) from SOURCE: the JSON itself, a file, or - for stdin.

    With --json, a rejection is also printed on stdout as its JSON body (the error code, the
    failed rules and the moves allowed now, as over HTTP), besides the one line on stderr.
    With a token (--token-file, CART_COURSE_TOKEN) the command is recorded as the token's
    actor (the envelope's actor is dropped), as over HTTP."""
    data = read_json_input(source)
    command = parse_command(data) if ctx.token is None else parse_as(data, ctx.token)
    result = ctx.service.execute(command).to_json()
    if as_json:
        echo_json(result)
        return
    verb = "recorded" if result["status"] == "recorded" else "already recorded (idempotent retry)"
    click.echo(
        f"{result['patient_id']}: {result['event']} {verb} as version {result['version']}; "
        f"state {result['from_state'] or '-'} -> {result['to_state']}"
    )
    for text in result["deviations"]:
        click.echo(f"  deviation: {text}")
    outcome = result.get("outcome") or {}
    if outcome.get("eligible") is False and outcome.get("failed_criteria"):
        failed = outcome["failed_criteria"]
        click.echo(f"  not eligible: {len(failed)} criteria not met: {', '.join(failed)}")
    if result["allowed_moves"]:
        click.echo(f"  allowed now: {', '.join(result['allowed_moves'])}")


def ingest_stream(
    ctx: Context,
    lines: Iterable[tuple[int, str]],
    *,
    batch_size: int,
    report: TextIO,
    progress: Any = None,
    workers: int | None = 1,
    errors_format: str = "text",
) -> Counter[str]:
    """Record numbered JSON lines in batched transactions; report each rejected line (in line
    order): ``line N: code: message``, or with ``errors_format="jsonl"`` one JSON object per
    line (``{"line": N, "error": ..., "message": ..., ...}``: the rejection body of the
    contract). ``workers``: 1 in this process (the context's service), None for auto, N
    processes."""

    def write(number: int, text: str, body: dict[str, Any]) -> None:
        if errors_format == "jsonl":
            report.write(json.dumps({"line": number, **body}, ensure_ascii=False) + "\n")
        else:
            report.write(f"line {number}: {text}\n")

    engine = Ingest(
        settings=ctx.settings,
        report=write,
        progress=None if progress is None else progress.update,
        workers=workers,
        batch_size=batch_size,
        service=lambda: ctx.service,
        token=ctx.token,
    )
    return engine.run(lines)


def _workers_option(value: str) -> int | None:
    if value == "auto":
        return None
    limit = max_workers()
    text = value.strip()
    if text.isdigit() and len(text) > 6:  # a number, but far too many (int() of it: no need)
        text = "1000000"
    try:
        n = int(text) if text.isascii() else 0
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(
            f"{value[:20]!r} is not a number of workers: a whole number from 1 to {limit}, or auto",
            param_hint="--workers",
        )
    if n > limit:
        raise click.BadParameter(
            f"{value[:20]!r} is too many workers: at most {limit} here ({WORKERS_PER_CPU} per CPU, never "
            f"more than {MAX_WORKERS}), or auto",
            param_hint="--workers",
        )
    return n


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--batch-size",
    default=BATCH,
    show_default=True,
    type=click.IntRange(min=1),
    help="Commands per transaction (at most).",
)
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    metavar="N|auto",
    help=f"Worker processes recording at once, each for its own share of the patients. auto: "
    f"the CPUs available, at most {AUTO_MAX_WORKERS}; 1 for the memory: store or an input "
    f"under {AUTO_MIN_LINES} lines. 1: record in this process. At most {WORKERS_PER_CPU} per "
    f"CPU and never more than {MAX_WORKERS}.",
)
@click.option(
    "--errors",
    "errors_to",
    type=click.File("w", encoding="utf-8", lazy=False),
    default="-",
    help="Where the per-line error report goes (default: stderr). Opened before anything is "
    "recorded.",
)
@click.option(
    "--errors-format",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="The error report: 'line N: code: message' lines, or JSON Lines, one rejection body "
    "per rejected line with its number (error, message, field, problems, failed_rules, "
    "allowed_moves).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@with_token(COMMANDERS)
@pass_context
def ingest(
    ctx: Context,
    file: str,
    batch_size: int,
    workers: str,
    errors_to: TextIO,
    errors_format: str,
    as_json: bool,
) -> None:
    """Record many commands from a JSON Lines FILE (one envelope per line).

    Commands are saved in batched transactions; a rejected line is reported with its line number
    (in line order) and does not stop the others. Running the same file again records nothing
    new. With several workers, each patient's lines go to one worker in file order. With a
    token (--token-file, CART_COURSE_TOKEN) every line is recorded as the token's actor, in
    this process (no workers), and a site-limited token's lines for another site's patient are
    rejected as for a patient not on record.
    """
    n_workers = _workers_option(workers)
    report: TextIO = (
        sys.stderr
        if errors_to is sys.stdout or getattr(errors_to, "name", "") == "<stdout>"
        else errors_to
    )
    started = time.perf_counter()
    # Bytes: each line is decoded by itself, so one line that is not UTF-8 is one rejected line.
    with _open_binary(file) as fh:
        total = None
        if file != "-":
            with open(file, "rb") as count_fh:
                total = sum(1 for line in count_fh if line.strip())
        tty = sys.stderr.isatty()
        if not tty:  # no bar, only the label, as a line of its own
            click.echo("ingesting", err=True)
        with click.progressbar(
            length=total or 0,
            label="ingesting",
            file=sys.stderr,
            show_pos=True,
            show_eta=True,
            hidden=not tty,
        ) as bar:
            counts = ingest_stream(
                ctx,
                numbered_lines(fh),
                batch_size=batch_size,
                report=report,
                progress=bar if total and tty else None,
                workers=n_workers,
                errors_format=errors_format,
            )
    elapsed = time.perf_counter() - started
    summary = {
        "lines": counts["lines"],
        "recorded": counts["recorded"],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
        "seconds": round(elapsed, 3),
        "commands_per_second": round(counts["lines"] / elapsed, 1) if elapsed else None,
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"{summary['lines']} lines: {summary['recorded']} recorded, {summary['duplicates']} "
            f"already recorded, {summary['rejected']} rejected in {summary['seconds']} s"
        )
    if counts["rejected"]:
        sys.exit(1)


@contextlib.contextmanager
def _open_binary(file: str) -> Iterator[BinaryIO]:
    if file == "-":
        yield sys.stdin.buffer
        return
    with open(file, "rb") as fh:
        yield fh


def _fmt_cells(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@click.command()
@click.argument("patient_id", callback=patient_id_argument)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@with_token(READERS)
@pass_context
def show(ctx: Context, patient_id: str, as_json: bool) -> None:
    """A patient's state, course, doses, toxicities and the moves allowed now."""
    data = ctx.service.summary(patient_id)
    if as_json:
        echo_json(data)
        return
    click.echo(
        f"patient {data['patient_id']}  state {data['state']}  version {data['version']}  "
        f"protocol {data['protocol_version']}"
    )
    click.echo(f"site {data['site']}")
    for moved in data.get("site_transfers", []):
        click.echo(
            f"  transferred from {moved['from_site']} to {moved['to_site']} at "
            f"{moved['occurred_at']} (v{moved['version']}): {moved['reason']}"
        )
    for course in data["courses"]:
        click.echo(
            f"course {course['number']}: weight {course['weight_kg']} kg, planned "
            f"{_fmt_cells(course['planned_total_cells'])} cells, delivered "
            f"{_fmt_cells(course['delivered_cells'])}"
            + (" (remaining fractions cancelled)" if course["cancelled"] else "")
            + (f", response {course['response']}" if course["response"] else "")
            + (f", decision {course['decision']}" if course["decision"] else "")
        )
        for f in course["fractions"]:
            line = (
                f"  D{f['day']} {f['given_on']}: {_fmt_cells(f['delivered_cells'])} of "
                f"{_fmt_cells(f['planned_cells'])} planned"
            )
            click.echo(
                line + ("  DEVIATION: " + "; ".join(f["deviations"]) if f["deviations"] else "")
            )
    for tox in data["toxicities"]:
        status = "open" if tox["open"] else f"resolved {tox['resolved_at']}"
        click.echo(
            f"toxicity {tox['id']}: {tox['kind']} grade {tox['grade']} (worst {tox['worst_grade']}, "
            f"{tox['scale']} {tox['scale_version']}), onset {tox['onset']}, {status}"
            + (", HOLD" if tox["open"] and tox["opens_hold"] else "")
        )
    held = data.get("pre_infusion_hold")  # the pre-infusion gate (issue 20)
    if held:
        click.echo(
            f"D{held['day']} HELD by the pre-infusion assessment of {held['occurred_at']}: "
            + "; ".join(held["failed"])
            + " (re-assess before it)"
        )
    for corr in data["corrections"]:
        click.echo(
            f"correction v{corr['version']} of v{corr['corrects']}: {corr['changes']} ({corr['reason']})"
        )
    for sig in data["signatures"]:
        click.echo(
            f"signed v{sig['signs_version']} ({sig['milestone']}, {sig['meaning']}) by "
            f"{sig['printed_name']} at {sig['signed_at']}"
        )
    product = data.get("product")
    if product:
        click.echo(
            f"product {product['status']}: collection(s) "
            + ", ".join(c["id"] for c in product["collections"])
            + "; lot(s) "
            + (", ".join(f"{lot['lot_id']} {lot['status']}" for lot in product["lots"]) or "none")
            + (
                f"; vein-to-vein {product['vein_to_vein_days']} days"
                if product["vein_to_vein_days"] is not None
                else ""
            )
        )
    click.echo("allowed now: " + (", ".join(data["allowed_moves"]) or "nothing (terminal)"))


def _patients_table(rows: list[dict[str, Any]]) -> None:
    click.echo(
        f"{'patient':<12} {'state':<14} {'course':>6} {'version':>7} {'open tox':>8}  last event (clinical)"
    )
    for r in rows:
        course, version, tox = (
            "-" if r[k] is None else r[k] for k in ("course_number", "version", "open_toxicities")
        )
        click.echo(
            f"{r['patient_id']:<12} {r['state']:<14} {course:>6} {version:>7} "
            f"{tox:>8}  {r['last_occurred_at'] or '-'}"
        )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@with_token(READERS)
@pass_context
def patients(ctx: Context, as_json: bool) -> None:
    """All patients with their state."""
    rows = ctx.service.patients()
    if as_json:
        echo_json(rows)
    else:
        _patients_table(rows)
    unreadable = [r for r in rows if "error" in r]
    for r in unreadable:
        click.echo(f"error: {r['error']}", err=True)
    if unreadable:
        sys.exit(1)


def record_demo(ctx: Context, n: int, seed: int, *, live: bool = False) -> Counter[str]:
    """Record a demo cohort; ``live``: enrolled over the last weeks and in progress today. The
    cohort has data queries (``demo.query_steps``), and the query rules run while it is
    recorded (the demo shows them opening and closing queries)."""
    service = ctx.service
    rules = service.query_rules
    service.query_rules = QUERY_RULES
    try:
        return _record_demo(ctx, n, seed, live=live)
    finally:
        service.query_rules = rules


def _with_queries(commands: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    return sorted([*commands, *query_steps(commands, now)], key=lambda c: str(c["occurred_at"]))


def _record_demo(ctx: Context, n: int, seed: int, *, live: bool = False) -> Counter[str]:
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    ensure_demo_sites(ctx.system.tokens.sites)  # three sites in three time zones (issue 17)
    if live:
        commands = _with_queries(list(live_cohort(n, seed, now, sites=True)), now)
        lines = ((i, json.dumps(c)) for i, c in enumerate(commands, start=1))
        return ingest_stream(ctx, lines, batch_size=BATCH, report=sys.stderr)
    everything = _with_queries(list(cohort(n, seed, sites=True)), now)
    attempt = wrong_bag_attempt(everything)
    cut = everything.index(attempt_of(everything, attempt)) if attempt else len(everything)
    numbered = list(enumerate((json.dumps(c) for c in everything), start=1))
    counts = ingest_stream(ctx, iter(numbered[:cut]), batch_size=BATCH, report=sys.stderr)
    if attempt is not None:  # the bedside check refuses another patient's bag
        try:
            ctx.service.execute(parse_command(attempt))
        except CartCourseError as exc:
            click.echo(
                f"a wrong-bag attempt for {attempt['patient_id']} was refused: {exc}", err=True
            )
    counts += ingest_stream(ctx, iter(numbered[cut:]), batch_size=BATCH, report=sys.stderr)
    return counts


def attempt_of(commands: list[dict[str, Any]], attempt: dict[str, Any]) -> dict[str, Any]:
    """The recorded command a wrong-bag attempt stands in front of (its patient's D1)."""
    return next(
        c
        for c in commands
        if c["patient_id"] == attempt["patient_id"]
        and c["command"] == "give_infusion"
        and c["payload"].get("day") == 1
    )


def jsonl_target(name: str) -> str:
    """Where ``demo --jsonl NAME`` writes: a bare file name under ``var/`` (the directory of the
    default store, made when missing), a path with a directory as given, ``-`` stdout."""
    if name == "-" or "/" in name or os.sep in name:  # ./cohort.jsonl is a path: honoured
        return name
    var = Path(DEFAULT_DB).parent
    var.mkdir(parents=True, exist_ok=True)
    return str(var / name)


@click.command()
@click.option(
    "--patients", "n", default=40, show_default=True, help="Number of synthetic patients."
)
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same cohort).")
@click.option(
    "--jsonl",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Write the commands as JSON Lines instead of recording them: a bare file name goes "
    "under var/ (next to the default store), a path with a directory is used as given, - is "
    "stdout.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_context
def demo(ctx: Context, n: int, seed: int, jsonl: str | None, as_json: bool) -> None:
    """A synthetic cohort: screen failures, holds, CRS of several grades, PR with extra courses, NR,
    withdrawals, a death, corrections and deviations, all written through the service."""
    if n < 1:
        raise click.BadParameter("must be at least 1", param_hint="--patients")
    if jsonl is not None:
        target = jsonl_target(jsonl)
        count = 0
        with click.open_file(target, "w", encoding="utf-8") as out:
            for command in _with_queries(list(cohort(n, seed)), dt.datetime.now(dt.UTC)):
                out.write(json.dumps(command, ensure_ascii=False) + "\n")
                count += 1
        if as_json:
            echo_json({"patients": n, "commands": count, "file": target})
            return
        click.echo(f"wrote {count} commands for {n} patients to {target}", err=True)
        return
    counts = record_demo(ctx, n, seed)
    if as_json:
        echo_json(
            {
                "patients": n,
                "recorded": counts["recorded"],
                "duplicates": counts["duplicate"],
                "rejected": counts["rejected"],
            }
        )
        return
    click.echo(
        f"demo cohort of {n} patients: {counts['recorded']} events recorded, "
        f"{counts['duplicate']} already recorded, {counts['rejected']} rejected"
    )


@click.command()
@click.option(
    "--patients",
    "n",
    default=40,
    show_default=True,
    help="Demo cohort size when the store is empty.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the store and patients as JSON.")
@pass_context
def run(ctx: Context, n: int, as_json: bool) -> None:
    """The main job: on an empty store record a demo cohort, then print every patient's state."""
    settings = ctx.settings
    say = (lambda _text: None) if as_json else click.echo
    say(f"store: {settings.store.display}")
    recorded = 0
    if next(iter(ctx.service.patient_ids()), None) is None:
        say(f"empty store: recording a demo cohort of {n} patients ...")
        recorded = record_demo(ctx, n, seed=1)["recorded"]
        say(f"{recorded} events recorded")
    rows = ctx.service.patients()
    if as_json:
        echo_json({"store": settings.store.display, "recorded": recorded, "patients": rows})
        return
    _patients_table(rows)


@click.command("new-key")
@click.option("--json", "as_json", is_flag=True, help='Print {"key": ...}.')
def new_key(as_json: bool) -> None:
    """Print a new random AES-256 key (base64) for CART_COURSE_CIPHER_KEY. Keep it in a secret
    store: events encrypted with it cannot be read without it (see docs/operations.md)."""
    key = new_cipher_key()
    if as_json:
        echo_json({"key": key})
        return
    click.echo(key)


def register(cli: click.Group) -> None:
    for command in (record, ingest, show, patients, demo, run, new_key):
        cli.add_command(command)
