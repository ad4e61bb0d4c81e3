"""The printable cohort report: every cohort figure inline (SVG), each followed by its table.

Self-contained (one inline style sheet, the figures' SVG; no script, nothing loaded) and
deterministic: what it says depends on the records and the ``as_of`` line the caller gives.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from html import escape

from ..protocol.record import PatientRecord
from . import model, render

CSS = """
body{font:12px/1.45 system-ui,'DejaVu Sans',sans-serif;margin:1.5em 2em;color:#1d2733;background:#fff}
h1{font-size:20px;margin:0 0 .3em}h2{font-size:15px;border-bottom:1px solid #5f6773;margin:1.8em 0 .6em}
nav ol{margin:.3em 0 1em;padding-left:1.4em}a{color:#1f5fa8}
figure{margin:0}figure svg{max-width:100%;height:auto}
figcaption{font-size:11px;color:#3d4652;margin:.3em 0 .8em;max-width:60em}
table{border-collapse:collapse;width:100%;font-size:11px}
td,th{border:1px solid #b8c0ca;padding:2px 5px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right}
.meta{color:#3d4652}
@media print{body{margin:0;font-size:10px}nav{display:none}
section{break-before:page}section:first-of-type{break-before:auto}
h2{break-after:avoid}figure{break-inside:avoid}tr{break-inside:avoid}
thead{display:table-header-group}a{color:inherit;text-decoration:none}}
"""

#: The report's Content-Security-Policy: its one inline style sheet (by hash), the figures'
#: SVG (presentation attributes, no style), nothing else.
CSS_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode() + "'"
REPORT_CSP = (
    f"default-src 'none'; style-src {CSS_HASH}; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    out = [f'<table><caption class="meta">{escape(caption)}</caption><thead><tr>']
    out += [f'<th scope="col">{escape(h)}</th>' for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            num = cell.replace(".", "", 1).isdigit()
            tag = 'th scope="row"' if i == 0 else ('td class="num"' if num else "td")
            cells.append(f"<{tag}>{escape(cell)}</{tag.split()[0]}>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _section(anchor: str, heading: str, svg: str, caption: str, table: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{escape(heading)}</h2>'
        f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>{table}</section>"
    )


def cohort_report(
    records: Sequence[PatientRecord],
    *,
    as_of: str,
    selection: str = "all patients",
    sort: str = "time_on_study",
) -> str:
    """The report's HTML. ``as_of``: what the data are as of (e.g. the log position)."""
    swim = model.swimmer(records, sort=sort)
    best = model.best_response(records)
    grades = model.max_grades(records)
    v2v = model.vein_to_vein(records)
    sections = [
        _section(
            "swimmer",
            "Swimmer plot",
            render.swimmer_svg(swim, selection=selection),
            f"One bar per infused patient ({swim.total}) from D1 (day 0) to the last clinical "
            f"time on record, or death; sorted by {sort.replace('_', ' ')}. "
            f"{swim.not_infused} patients without a D1 are not shown. Days in the table are "
            "calendar days after D1.",
            _table(*swim.table(), "Each patient's markers by day since D1"),
        ),
        _section(
            "best-response",
            "Best response by course",
            render.counts_svg(best, "fig-best-response", selection=selection),
            f"{best.patients} patients; {best.note}.",
            _table(*best.table(), "Patients by response, per course"),
        ),
        _section(
            "max-grade",
            "Maximum CRS and ICANS grade",
            render.counts_svg(grades, "fig-max-grade", selection=selection),
            f"{grades.patients} patients; {grades.note}.",
            _table(*grades.table(), "Patients by maximum grade"),
        ),
        _section(
            "vein-to-vein",
            "Vein-to-vein time",
            render.vein_to_vein_svg(v2v, selection=selection),
            "Days from the apheresis of the infused product's collection to D1, for patients "
            f"whose product is tracked from its collection ({len(v2v.values)}); "
            f"{v2v.without_chain} infused patients without a product chain are not counted.",
            _table(*v2v.table(), "Vein-to-vein time per patient"),
        ),
    ]
    contents = "".join(
        f'<li><a href="#{a}">{escape(t)}</a></li>'
        for a, t in (
            ("swimmer", "Swimmer plot"),
            ("best-response", "Best response by course"),
            ("max-grade", "Maximum CRS and ICANS grade"),
            ("vein-to-vein", "Vein-to-vein time"),
        )
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Cohort report — cart-course</title><style>{CSS}</style></head><body>"
        "<header><h1>Cohort report: CD19 CAR-T for R/R B-ALL (NCT03599375)</h1>"
        f'<p class="meta">{len(records)} patients on record in the selection ({escape(selection)}); '
        f"data as of {escape(as_of)}. Drawn from the event log.</p></header>"
        f'<nav aria-label="contents"><ol>{contents}</ol></nav><main>'
        + "".join(sections)
        + "</main></body></html>"
    )
