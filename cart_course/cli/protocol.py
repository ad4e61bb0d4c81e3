"""``cart-course protocol``: the protocol as code, shown and applied to one input.

Thin: parse the input, call the pure protocol functions, render. No store is opened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from ..bootstrap import configured_protocol
from ..protocol import catalog, diagram
from ..protocol.eligibility import evaluate_eligibility, parse_screening
from ..protocol.errors import ProtocolInputError
from ..protocol.machine import RULES, TRANSITIONS
from ..protocol.registry import REGISTRY, Registry
from ..protocol.response import (
    RESPONSES,
    check_clinician_response,
    classify_response,
    parse_response_assessment,
)
from ..protocol.states import TERMINAL, State
from ..protocol.toxicity import GRADING_SCALES, ToxicityGrade, grade_toxicity, parse_toxicity_report
from ..protocol.versions import CURRENT, VERSIONS, ProtocolVersion, UnknownProtocolVersionError
from ..protocol.versions import get_version as _get_version
from .common import Context, echo_json, read_json_input

_VERSION_HELP = (
    "Protocol version (default: the one new moves are recorded under: cart-course --protocol, "
    f"else CART_COURSE_PROTOCOL_VERSION, else {CURRENT.id})."
)


def _version(version_id: str | None) -> ProtocolVersion:
    if version_id is None:
        context = click.get_current_context(silent=True)
        found = context.find_object(Context) if context is not None else None
        return configured_protocol(found.protocol if found is not None else None)
    try:
        return _get_version(version_id)
    except UnknownProtocolVersionError as exc:
        raise ProtocolInputError(
            "--version", f"{exc.version!r} is not a protocol version; known: {', '.join(VERSIONS)}"
        ) from None


def _input(source: str, what: str) -> Mapping[str, Any]:
    """The JSON object in INPUT (a file, or - for stdin); errors are one line naming INPUT."""
    try:
        data = read_json_input(source)
    except click.BadParameter as exc:
        raise ProtocolInputError("INPUT", exc.message) from None
    return _object(data, what)


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProtocolInputError("INPUT", f"must be a JSON object ({what})")
    return data


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@contextlib.contextmanager
def json_errors(as_json: bool) -> Iterator[None]:
    """With ``--json``, an error is also printed on stdout as the contract's rejection body
    (``{"error": ..., "message": ..., "field": ..., "problems": [...]}``), besides the one line
    on stderr; the exit status is the same either way. ``cli.main`` prints that body for every
    command (printing it here too wrote it twice), so this only marks the commands that take
    ``--json``."""
    yield


def commands_document(registry: Registry = REGISTRY) -> dict[str, Any]:
    """``protocol commands --json``: every command of ``registry`` with its summary, payload keys
    and payload schema, reason policy, moves and the rules they check, event and what may be
    corrected; the payload schemas' shared definitions once, under ``$defs``."""
    from ..schemas import command_schema, schema_defs

    commands = []
    for described in catalog.describe_commands(registry):
        schema = command_schema(described["name"], registry)
        commands.append({**described, "payload_schema": schema["properties"]["payload"]})
    return {"commands": commands, "$defs": schema_defs(registry)}


def describe(version: ProtocolVersion) -> dict[str, Any]:
    """The protocol as data: version, states, moves with their rules, parameters."""
    moves = []
    for t in TRANSITIONS:
        sources = _names(t["source"])
        dest = str(t["dest"])
        conditions = [
            {"rule": name, "holds": True, "requires": RULES[name].requires}
            for name in t.get("conditions", [])
        ] + [
            {"rule": name, "holds": False, "requires": RULES[name].requires}
            for name in t.get("unless", [])
        ]
        moves.append(
            {
                "trigger": str(t["trigger"]),
                "source": sources,
                "dest": "(unchanged)" if dest == "=" else dest,
                "conditions": conditions,
                "reason_required": str(t["trigger"]) in REGISTRY.reason_required,
            }
        )
    return {
        **version.to_json(),
        "states": [{"name": s.value, "terminal": s in TERMINAL} for s in State],
        "moves": moves,
        "rules": {name: r.requires for name, r in RULES.items()},
        "versions": list(VERSIONS),
    }


@click.group()
def protocol() -> None:
    """The trial protocol as code: show it, draw it, apply one rule set to an input."""


@protocol.command()
@click.option("--version", "version_id", metavar="V", default=None, help=_VERSION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show(version_id: str | None, as_json: bool) -> None:
    """The protocol version: states, moves (with the rules each requires) and parameters."""
    version = _version(version_id)
    data = describe(version)
    if as_json:
        echo_json(data)
        return
    click.echo(f"Protocol version {version.id}: {version.title} (effective {version.effective})")
    click.echo(f"Known versions: {', '.join(data['versions'])}")
    click.echo("\nStates:")
    for s in data["states"]:
        click.echo(f"  {s['name']}{'  (terminal)' if s['terminal'] else ''}")
    click.echo("\nMoves:")
    for m in data["moves"]:
        reason = "  (reason required)" if m["reason_required"] else ""
        click.echo(f"  {m['trigger']}: {', '.join(m['source'])} -> {m['dest']}{reason}")
        for c in m["conditions"]:
            mark = "when" if c["holds"] else "unless"
            click.echo(f"      {mark} {c['rule']}: {c['requires']}")
    click.echo("\nParameters:")
    for key, value in data["parameters"].items():
        click.echo(f"  {key} = {value}")


@protocol.command("diagram")
@click.option("--version", "version_id", metavar="V", default=None, help=_VERSION_HELP)
@click.option(
    "--write",
    "write",
    metavar="PATH",
    default=None,
    help="Write the whole Markdown page (diagram and legend) to PATH, e.g. docs/state-machine.md.",
)
def diagram_cmd(version_id: str | None, write: str | None) -> None:
    """The state machine as a Mermaid stateDiagram-v2, generated from the machine."""
    version = _version(version_id)
    if write is None:
        click.echo(diagram.mermaid(version), nl=False)
        return
    try:
        Path(write).write_text(diagram.markdown(version), encoding="utf-8")
    except OSError as exc:
        raise ProtocolInputError("--write", f"cannot write {write!r}: {exc.strerror}") from None
    click.echo(f"wrote {write}")


def _today() -> str:
    return dt.date.today().isoformat()


def _screening_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ProtocolInputError("--date", f"{value!r} is not a date; use YYYY-MM-DD") from None


@protocol.command()
@click.argument("source", metavar="INPUT")
@click.option(
    "--date", "date", default=None, metavar="YYYY-MM-DD", help="Screening date (default: today)."
)
@click.option("--version", "version_id", metavar="V", default=None, help=_VERSION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def eligibility(source: str, date: str | None, version_id: str | None, as_json: bool) -> None:
    """Eligibility of one screening (INPUT: a JSON file, or - for stdin), criterion by criterion.

    INPUT is the screening object, or {"screening": {...}} as in a screen command's payload.
    Exit status 0: eligible; 1: not eligible; 2: the input is not a screening (with or without
    --json).
    """
    with json_errors(as_json):
        version = _version(version_id)
        day = _screening_date(date or _today())
        data = _input(source, "the screening values")
        if set(data) == {"screening"}:
            data = _object(data["screening"], "the screening values")
        result = evaluate_eligibility(parse_screening(data), day, version.params)
    if as_json:
        verdict = result.to_json()
        # the failed criteria's ids, named as in a screening's outcome (``failed_criteria``)
        verdict = {
            ("failed_criteria" if key == "failed" else key): value for key, value in verdict.items()
        }
        echo_json({"protocol_version": version.id, **verdict})
    else:
        verdict_line = "ELIGIBLE" if result.eligible else "NOT ELIGIBLE"
        click.echo(f"{verdict_line} on {day.isoformat()} (protocol {version.id})")
        for c in result.criteria:
            mark = "ok  " if c.passed else "FAIL"
            click.echo(f"  {mark} {c.kind.value:9} {c.id:30} {c.status.value:14} {c.value_text}")
            if not c.passed:
                click.echo(f"       needs {c.threshold}: {c.explanation}")
    if not result.eligible:
        sys.exit(1)


def _report(data: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """A full report ({"kind": ...}) or bare observations of ``kind``."""
    if "kind" in data:
        if data["kind"] != kind:
            raise ProtocolInputError(
                "kind",
                f"is {data['kind']!r}; this command grades {kind} (use protocol "
                f"{'icans' if kind == 'CRS' else 'crs'} for the other)",
            )
        return data
    return {"kind": kind, "observations": dict(data)}


def _render_grade(grade: ToxicityGrade, version: ProtocolVersion, as_json: bool) -> None:
    p = version.params
    severe = grade.is_severe(p)
    hold = grade.opens_hold(p)
    if as_json:
        echo_json(
            {
                "protocol_version": version.id,
                **grade.to_json(),
                "severe": severe,
                "opens_hold": hold,
            }
        )
        return
    click.echo(f"{grade.kind} grade {grade.grade} ({grade.scale} {grade.scale_version})")
    for reason in grade.reasons:
        click.echo(f"  - {reason}")
    click.echo(
        f"  severe (grade >= {p.severe_grade}): {'yes' if severe else 'no'}; "
        f"holds the remaining fractions: {'yes' if hold else 'no'} (protocol {version.id})"
    )


@protocol.command()
@click.argument("source", metavar="INPUT")
@click.option(
    "--scale",
    type=click.Choice(GRADING_SCALES),
    default=None,
    help="Grade the observations under this scale (default ASTCT 2019; CTCAE v5 also).",
)
@click.option("--version", "version_id", metavar="V", default=None, help=_VERSION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the grade as JSON.")
def crs(source: str, scale: str | None, version_id: str | None, as_json: bool) -> None:
    """CRS grade from observations (INPUT: JSON file or -): bare observations or a full report."""
    version = _version(version_id)
    data = _report(_input(source, "CRS observations or a report"), "CRS")
    grade = grade_toxicity(parse_toxicity_report(data), scale)
    _render_grade(grade, version, as_json)


@protocol.command()
@click.argument("source", metavar="INPUT")
@click.option("--version", "version_id", metavar="V", default=None, help=_VERSION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the grade as JSON.")
def icans(source: str, version_id: str | None, as_json: bool) -> None:
    """ICANS grade (ASTCT 2019) from observations (INPUT: JSON file or -)."""
    version = _version(version_id)
    data = _report(_input(source, "ICANS observations or a report"), "ICANS")
    grade = grade_toxicity(parse_toxicity_report(data))
    _render_grade(grade, version, as_json)


@protocol.command()
@click.argument("source", metavar="INPUT")
@click.option(
    "--clinician",
    type=click.Choice(RESPONSES),
    default=None,
    help="The clinician's response, checked against the computed one.",
)
@click.option("--reason", default=None, help="Why the clinician's response differs.")
@click.option("--version", "version_id", metavar="V", default=None, help=_VERSION_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the classification as JSON.")
def response(
    source: str,
    clinician: str | None,
    reason: str | None,
    version_id: str | None,
    as_json: bool,
) -> None:
    """Response (CR, CRi, PR, NR) from an assessment (INPUT: JSON file or -).

    INPUT is the assessment object, or {"assessment": {...}} as in assess_response's payload.
    """
    version = _version(version_id)
    data = _input(source, "a response assessment")
    if set(data) == {"assessment"}:
        data = _object(data["assessment"], "a response assessment")
    result = classify_response(parse_response_assessment(data), version.params)
    if clinician is None:
        result.raise_if_not_evaluable()  # names the missing values (exit 2)
    problems = check_clinician_response(result, clinician, reason)
    if as_json:
        echo_json(
            {
                "protocol_version": version.id,
                **result.to_json(),
                "clinician_response": clinician,
                "clinician_problems": problems,
            }
        )
    else:
        category = result.category or "not evaluable"
        progression = {True: "yes", False: "no", None: "not evaluable"}[result.progression]
        click.echo(
            f"{category} (MRD {result.mrd_status}; progression: {progression}; {result.criteria})"
        )
        for text in result.reasons:
            click.echo(f"  - {text}")
    if problems:
        raise ProtocolInputError("--reason", "; ".join(problems))


@protocol.command("commands")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (with payload schemas).")
@click.option(
    "--markdown", "as_markdown", is_flag=True, help="Print the command tables of the docs."
)
@click.option(
    "--write",
    "write",
    metavar="PATH",
    default=None,
    help="Regenerate the command tables in PATH (docs/commands.md) between their markers.",
)
def commands_cmd(as_json: bool, as_markdown: bool, write: str | None) -> None:
    """Every command of the contract: what it records, its payload, whether a reason is required,
    the moves it makes and the rules they check, the event it records, what may be corrected."""
    with json_errors(as_json):
        if write is not None:
            try:
                path = Path(write)
                path.write_text(
                    catalog.update_commands_doc(path.read_text(encoding="utf-8")),
                    encoding="utf-8",
                )
            except OSError as exc:
                raise ProtocolInputError(
                    "--write", f"cannot write {write!r}: {exc.strerror}"
                ) from None
            except ValueError as exc:
                raise ProtocolInputError("--write", str(exc)) from None
            click.echo(f"wrote {write}")
            return
    if as_json:
        echo_json(commands_document())
        return
    if as_markdown:
        click.echo(catalog.commands_markdown(), nl=False)
        return
    for d in catalog.describe_commands():
        reason = {"always": "  (reason required)", "when the rules say so": ""}.get(d["reason"], "")
        click.echo(f"{d['name']}: {d['summary']}{reason}")
        payload = d["payload"]
        keys = [*payload["required"], *(f"[{k}]" for k in payload["optional"])]
        click.echo(f"    payload: {', '.join(keys) or 'none'}; records {d['event']}")
        for m in d["moves"]:
            holds = [r["rule"] for r in m["rules"] if r["holds"]]
            fails = [r["rule"] for r in m["rules"] if not r["holds"]]
            when = (f" when {' and '.join(holds)}" if holds else "") + (
                f" unless {' or '.join(fails)}" if fails else ""
            )
            click.echo(f"    {m['trigger']}: {', '.join(m['source'])} -> {m['dest']}{when}")
        if d["reason"] == "when the rules say so":
            click.echo("    reason: when the rules say so")
        if d["correctable"]:
            click.echo(f"    correctable: {', '.join(d['correctable'])}")


def register(cli: click.Group) -> None:
    cli.add_command(protocol)
