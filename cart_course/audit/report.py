"""A printable HTML audit report for one patient: self-contained (inline CSS and SVG, no CDN)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from html import escape
from typing import Any

from ..protocol.labels import DONE_LABELS, TOXICITY_LABELS, cells_text, state_label
from ..protocol.record import PatientRecord, opened_clinical
from .conformance import Finding
from .history import compact, timeline
from .integrity import Problem
from .log import MOVED, LoggedEvent, replay

CSS = """
body{font:12px/1.4 system-ui,sans-serif;margin:2em;color:#111}
h1{font-size:18px}h2{font-size:14px;border-bottom:1px solid #999;margin-top:1.6em}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #bbb;padding:3px 5px;
vertical-align:top;text-align:left}th{background:#eee}.ok{color:#060}.bad{color:#a00;font-weight:bold}
.small{font-size:10px;color:#444;word-break:break-all}
dl{margin:0}dt{display:inline;color:#444}dd{display:inline;margin:0}.move{font-size:10px;color:#444}dl dl{margin-left:1.5em}
@media print{body{margin:0}h2{page-break-after:avoid}tr{page-break-inside:avoid}}
"""


def _cell(value: Any) -> str:
    return escape(compact(value, 300)) if not isinstance(value, str) else escape(value)


def _words(key: str) -> str:
    return key.replace("_", " ")


def readable(value: Any, *, depth: int = 0) -> str:
    """A recorded value in full, one "key: value" line per entered field, nested values in
    parentheses (never truncated: an auditor reads what was entered); a value with its unit
    reads as "3.8 g/L", a lab value with its limit as "50 U/L (upper limit 40 U/L)"."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if {"value", "unit"} <= set(value) and set(value) <= {"value", "unit", "uln", "uln_unit"}:
            text = f"{value['value']} {value['unit']}"
            if "uln" in value:
                text += f" (upper limit {value['uln']} {value.get('uln_unit') or ''})".rstrip()
            return escape(text.replace(" )", ")"))
        items = [
            (escape(_words(str(k))), readable(v, depth=depth + 1))
            for k, v in value.items()
            if v is not None and v != [] and v != {}
        ]
        if depth < 2:  # two levels as lines (a screening's labs), deeper ones in parentheses
            lines = "".join(f"<div><dt>{k}:</dt> <dd>{v}</dd></div>" for k, v in items)
            return f"<dl>{lines}</dl>" if items else ""
        return "(" + "; ".join(f"{k}: {v}" for k, v in items) + ")"
    if isinstance(value, list):
        return ", ".join(readable(v, depth=2) for v in value)
    return escape(str(value))


def _when(text: str | None) -> str:
    """An ISO time as "2026-09-26 16:19:00 +00:00" (as recorded, its offset kept)."""
    if not text:
        return ""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return escape(text)
    offset = t.strftime("%z")
    zone = " UTC" if offset in ("+0000", "") else f" {offset[:3]}:{offset[3:]}"
    return escape(t.strftime("%Y-%m-%d %H:%M:%S") + zone)


def path_svg(events: Iterable[LoggedEvent]) -> str:
    """The path taken through the state diagram: one box per state, arrows labelled by move."""
    steps: list[tuple[str, str]] = [("candidate", "")]
    for e in events:
        if e.kind == MOVED and e.get("to_state") != e.get("from_state"):
            trigger = str(e.get("trigger"))
            steps.append(
                (str(e.get("to_state")), f"v{e.version} {DONE_LABELS.get(trigger, trigger)}")
            )
    box_w, box_h, gap = 240, 26, 34
    height = len(steps) * (box_h + gap)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="420" height="{height}" '
        'role="img" aria-label="path through the state diagram">'
    ]
    for i, (state, label) in enumerate(steps):
        y = i * (box_h + gap)
        if i:
            parts.append(
                f'<line x1="40" y1="{y - gap}" x2="40" y2="{y - 4}" stroke="#333"/>'
                f'<polygon points="35,{y - 9} 45,{y - 9} 40,{y - 1}" fill="#333"/>'
                f'<text x="50" y="{y - gap / 2 + 4}" font-size="11">{escape(label)}</text>'
            )
        parts.append(
            f'<rect x="0" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="#f4f4ff" '
            f'stroke="#335"/><text x="10" y="{y + 17}" font-size="12">{escape(state_label(state))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _site_text(record: PatientRecord) -> str:
    """The patient's site, and each transfer (from, to, version, clinical time, reason)."""
    text = f"Site <b>{escape(record.site)}</b>"
    moves = [
        f"transferred from {escape(t['from_site'])} to {escape(t['to_site'])} at "
        f"v{t['version']} ({_when(t.get('occurred_at'))}: {escape(t.get('reason') or '')})"
        for t in record.site_transfers
    ]
    return text + ("; " + "; ".join(moves) if moves else "") + ". "


def html_report(
    patient_id: str,
    events: list[LoggedEvent],
    *,
    findings: list[Finding],
    problems: list[Problem],
    generated_at: dt.datetime | None = None,
    as_of: dt.datetime | None = None,
) -> str:
    """The report of ``events`` (cut at ``as_of``, a record time, when given: it says so)."""
    record = replay(patient_id, events)
    rows = list(timeline(patient_id, events))
    now = (generated_at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    cut = (
        ""
        if as_of is None
        else f", as of {as_of.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC (what was recorded by then)"
    )
    out: list[str] = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Audit report {escape(patient_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Audit report: patient {escape(patient_id)}</h1>",
        f"<p>Generated {escape(now)} from {len(events)} events (v1..v{events[-1].version}){cut}. "
        f"Current state <b>{escape(state_label(record.state))}</b>, course {record.course_number}. "
        f"{_site_text(record)}"
        "Record times in UTC; clinical times as entered, with their UTC offset. "
        f"Head hash <span class='small'>{escape(events[-1].hash)}</span></p>",
        "<h2>Integrity</h2>",
    ]
    if problems:
        out.append(
            "<ul>" + "".join(f"<li class='bad'>{escape(str(p))}</li>" for p in problems) + "</ul>"
        )
    else:
        out.append(
            "<p class='ok'>Hash chain intact from the genesis hash to the head; every "
            "signature's hash matches the event it signs.</p>"
        )
    out.append("<h2>Path through the state diagram</h2>")
    out.append(path_svg(events))
    out.append(
        "<h2>Courses and doses</h2><table><tr><th>Course</th><th>Weight (kg)</th>"
        "<th>Planned cells</th><th>Fractions (day, date: delivered cells, % of plan; exact "
        "count)</th><th>Response</th><th>Decision</th></tr>"
    )
    for c in record.courses:
        fractions = "<br>".join(
            f"D{f.day}, {escape(f.given_on)}: {escape(cells_text(f.cells))} cells, "
            f"{round(100 * f.cells / f.planned_cells) if f.planned_cells else '-'} % of "
            f"{escape(cells_text(f.planned_cells))} planned ({f.cells:,.0f})"
            for f in c.fractions
        )
        if c.cancelled:
            fractions += f"<br>remaining fractions cancelled: {escape(c.cancel_reason or '')}"
        out.append(
            f"<tr><td>{c.number}</td><td>{c.weight_kg}</td>"
            f"<td>{escape(cells_text(c.planned_total))}</td><td>{fractions}</td>"
            f"<td>{escape(c.response or '')}</td>"
            f"<td>{escape(state_label(c.decision) if c.decision else '')}</td></tr>"
        )
    out.append(
        "</table><h2>Toxicities</h2><table><tr><th>Id</th><th>Kind</th><th>Term</th><th>Grade "
        "(worst)</th><th>Scale</th><th>Onset</th><th>Resolved</th></tr>"
    )
    for t in record.toxicities.values():
        out.append(
            f"<tr><td>{escape(t.id)}</td><td>{escape(TOXICITY_LABELS.get(t.kind, t.kind))}</td>"
            f"<td>{escape(t.term or '')}</td><td>{t.grade} ({t.worst_grade})"
            f"</td><td>{escape(t.scale)} {escape(t.scale_version)}</td><td>{_when(t.onset)}</td>"
            f"<td>{_when(t.resolved_at) if t.resolved_at else 'open'}</td></tr>"
        )
    out.append("</table><h2>Signatures</h2>")
    signed = [r for r in rows if r["event"] == "MilestoneSigned"]
    if signed:
        out.append(
            "<table><tr><th>v</th><th>Printed name</th><th>Meaning</th><th>Milestone</th>"
            "<th>Signed (UTC)</th><th>Signs</th><th>Notes</th></tr>"
        )
        for r in signed:
            out.append(
                f"<tr><td>{r['version']}</td><td>{_cell(r['printed_name'])}</td>"
                f"<td>{_cell(r['meaning'])}</td><td>{_cell(r['milestone'])}</td>"
                f"<td>{_cell(r['recorded_at'])}</td><td>v{r['signs_version']}<br>"
                f"<span class='small'>{_cell(r['signed_hash'])}</span></td>"
                f"<td>{'<br>'.join(escape(n) for n in r['notes'])}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>No signatures.</p>")
    out.append("<h2>Deviations</h2>")
    if record.deviations:
        out.append("<table><tr><th>v</th><th>Course</th><th>Deviation</th><th>Reason</th></tr>")
        for d in record.deviations:
            out.append(
                f"<tr><td>{d['version']}</td><td>{d.get('course') or ''}</td>"
                f"<td>{_cell(d['deviation'])}</td><td>{_cell(d.get('reason') or '')}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>No deviations recorded.</p>")
    out.append("<h2>Data queries open at the time of the report</h2>")
    pending = [q for q in record.queries.values() if q["status"] != "closed"]
    if pending:
        out.append(
            "<table><tr><th>Query</th><th>Status</th><th>On</th><th>Opened by (at)</th>"
            "<th>Question</th><th>Last answer</th></tr>"
        )
        for q in pending:
            on = f"v{q['on_version']} {q.get('field') or ''}" if q.get("on_version") else "patient"
            who = (q.get("rule") and f"{q['opened_by']} ({q['rule']})") or q["opened_by"]
            out.append(
                f"<tr><td>{escape(q['id'])}</td><td>{escape(q['status'])}</td>"
                f"<td>{escape(on)}</td><td>{_cell(who)}<br>{_cell(opened_clinical(q) or '')}"
                f"<br>recorded {_cell(q['opened_at'])}</td>"
                f"<td>{_cell(q.get('text') or '')}</td><td>{_cell(q.get('answer') or '')}</td></tr>"
            )
        out.append("</table>")
    else:
        closed = len(record.queries)
        out.append(
            f"<p class='ok'>No open data queries ({closed} closed).</p>"
            if closed
            else "<p>No data queries.</p>"
        )
    out.append("<h2>Conformance to the protocol</h2>")
    if findings:
        out.append(
            "<table><tr><th>v</th><th>Move</th><th>Check</th><th>Rules</th><th>Finding</th></tr>"
        )
        for f in findings:
            out.append(
                f"<tr><td>{f.version}</td><td>{escape(f.move)}</td><td>{escape(f.check)}</td>"
                f"<td>{escape(', '.join(f.rules))}</td><td>{escape(f.message)}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p class='ok'>Every move passes the guards of its protocol version.</p>")
    out.append(
        "<h2>Timeline</h2><table><tr><th>v</th><th>Recorded (UTC)</th><th>Occurred</th>"
        "<th>Actor (role)</th><th>Event</th><th>Reason</th><th>Entered / notes</th></tr>"
    )
    for r in rows:
        move = str(r["move"] or "")
        what = escape(DONE_LABELS.get(move, move))
        if r["from_state"] and r["from_state"] != r["to_state"]:
            what += (
                f"<br><span class='move'>{escape(state_label(r['from_state']))} &rarr; "
                f"{escape(state_label(r['to_state']))}</span>"
            )
        entered = r["payload"] or r["changes"]
        details = [readable(entered)] if entered else []
        details += [escape(n) for n in [*r["deviations"], *r["notes"]]]
        out.append(
            f"<tr><td>{r['version']}</td><td>{_when(r['recorded_at'])}</td>"
            f"<td>{_when(r['occurred_at'])}</td><td>{_cell(r['actor'])} ({_cell(r['role'])})</td>"
            f"<td>{what}<br><span class='move'>{escape(str(r['event']))}</span></td>"
            f"<td>{_cell(r['reason'] or '')}</td><td>{'<br>'.join(details)}</td></tr>"
        )
    out.append("</table></body></html>\n")
    return "".join(out)
