"""The figure models drawn as self-contained SVG with matplotlib (its SVG backend; no pyplot).

Each SVG has a ``<title>`` and a ``<desc>`` (``role="img"``, ``aria-labelledby``), its text
as text (``svg.fonttype = none``: an accessibility checker and a screen reader read it), and is
byte-for-byte deterministic: no date or version in its metadata, a fixed hash salt per figure
(so that the ids of several figures inlined in one page differ), the bundled DejaVu Sans metrics.
Nothing is loaded from anywhere: no script, no external font or image.

Colours meet WCAG AA for graphics (3:1 against the white background and the bars) and nothing is
told by colour alone: each grade has its own marker shape (1 circle, 2 square, 3 triangle,
4 diamond, 5 pentagon), CRS markers are filled and ICANS markers hollow (and drawn above and
below the bar's middle), responses are written as letters, bars of counts carry hatches and
their numbers.
"""

from __future__ import annotations

import io
import re
import threading
from html import escape
from typing import Any, Final

from .model import NOT_ASSESSED, Counts, Swimmer, ToxicityTimeline, VeinToVein

#: Marker shape of each grade (the same in every figure and legend).
GRADE_MARKERS: Final = {0: "_", 1: "o", 2: "s", 3: "^", 4: "D", 5: "p"}
INK: Final = "#1d2733"
BAR_FILL: Final = "#dde4ec"
BAR_EDGE: Final = "#5b6b7c"
#: Kind -> colour (each >= 4.5:1 on white, >= 3:1 on the bar fill).
COLOURS: Final = {
    "fraction": INK,
    "CRS": "#b0420a",
    "ICANS": "#5b2a86",
    "CR": "#1b6e32",
    "CRi": "#1f6f66",
    "PR": "#1f5fa8",
    "NR": "#9b1c1c",
    NOT_ASSESSED: "#5f6773",
    "relapse": "#9b1c1c",
    "death": INK,
    "ongoing": INK,
}
HATCHES: Final = {
    "CR": "",
    "CRi": "//",
    "PR": "..",
    "NR": "xx",
    NOT_ASSESSED: "--",
    "CRS": "",
    "ICANS": "//",
}
#: What the swimmer's rows measure (inches): the bar's height and its row (a 1,000-patient plot
#: grows to the rows it needs; the routes can page it).
ROW_IN: Final = 0.22
ROW_IN_MANY: Final = 0.15

_LOCK = threading.Lock()  # matplotlib's rcParams are global: one figure drawn at a time


def _rc(name: str) -> Any:  # matplotlib types rcParams keys as Literal names
    return {
        "svg.fonttype": "none",
        "svg.hashsalt": f"cart-course-{name}",
        "svg.id": name,
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.edgecolor": INK,
        "axes.labelcolor": INK,
        "text.color": INK,
        "xtick.color": INK,
        "ytick.color": INK,
        "hatch.linewidth": 0.8,
        "path.simplify": False,
    }


def _svg(fig: Any, name: str, title: str, desc: str) -> str:
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.StringIO()
    fig.savefig(
        buf,
        format="svg",
        metadata={"Date": None, "Creator": "cart-course"},
        facecolor="white",
    )
    return _accessible(buf.getvalue(), name, title, desc)


_OPEN = re.compile(r"<svg\b[^>]*>")
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_STYLE_SHEET = re.compile(r"\s*<defs>\s*<style[^>]*>(.*?)</style>\s*</defs>", re.S)
_STYLE_ATTR = re.compile(r' style="([^"]*)"')
_REFERENCE = re.compile(r'(?:href="|url\()#([^")]+)')
_ID = re.compile(r' id="([^"]*)"')
#: The font the figures were measured with, then what a browser without it uses.
FONT_FAMILY: Final = "'DejaVu Sans', 'Bitstream Vera Sans', Verdana, sans-serif"


def _attributes(match: re.Match[str]) -> str:
    return _presentation(match.group(1))


def _presentation(style: str) -> str:
    """``fill: #fff; stroke: none`` as presentation attributes (`` fill="#fff" ...``): a page's
    Content-Security-Policy without 'unsafe-inline' styles keeps them."""
    out = []
    for part in style.split(";"):
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip()
        if not name:
            continue
        if name == "font-family":
            value = FONT_FAMILY
        out.append(f' {name}="{escape(value)}"')
    return "".join(out)


def _accessible(svg: str, name: str, title: str, desc: str) -> str:
    """The SVG as pages inline it: no XML prolog, no metadata, no style sheet or style
    attribute (presentation attributes instead, which a strict Content-Security-Policy allows),
    named for assistive technology: ``role="img"``, ``<title>`` and ``<desc>`` first."""
    svg = svg[svg.index("<svg") :]
    svg = _METADATA.sub("", svg, count=1)
    sheet = _STYLE_SHEET.search(svg)
    root_extra = ""
    if sheet is not None:  # matplotlib's one rule: *{stroke-linejoin: round; stroke-linecap: butt}
        rule = sheet.group(1)
        body = rule[rule.index("{") + 1 : rule.rindex("}")]
        root_extra = _presentation(body)
        svg = svg[: sheet.start()] + svg[sheet.end() :]
    svg = _STYLE_ATTR.sub(_attributes, svg)
    # matplotlib's structural ids (figure_1, axes_1, text_3 ...) would repeat in a page showing
    # several figures: only the ids something refers to are kept (their hash salt makes them
    # unique per figure)
    used = set(_REFERENCE.findall(svg))
    svg = _ID.sub(lambda m: m.group(0) if m.group(1) in used else "", svg)
    head = _OPEN.match(svg)
    assert head is not None
    tag = head.group(0)
    labelled = (
        tag[:-1].replace(f' id="{name}"', "")
        + f'{root_extra} id="{name}" role="img" aria-labelledby="{name}-title {name}-desc">'
    )
    return (
        labelled
        + f'\n <title id="{name}-title">{escape(title)}</title>'
        + f'\n <desc id="{name}-desc">{escape(desc)}</desc>'
        + svg[len(tag) :]
    )


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=72)


def _legend_handle(
    kind: str, grade: int | None = None, label: str = "", category: str | None = None
) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", label=label, **_marker_style(kind, grade, category))


def _marker_style(
    kind: str, grade: int | None = None, category: str | None = None
) -> dict[str, Any]:
    if kind in ("CRS", "ICANS"):
        colour = COLOURS[kind]
        filled = kind == "CRS"
        return {
            "marker": GRADE_MARKERS.get(grade or 0, "o"),
            "markersize": 7,
            "markerfacecolor": colour if filled else "white",
            "markeredgecolor": colour,
            "markeredgewidth": 1.6,
        }
    if kind == "fraction":
        return {"marker": "|", "markersize": 9, "markeredgewidth": 1.6, "color": INK}
    if kind == "response":
        text = category or ""
        return {
            "marker": f"$\\mathrm{{{text}}}$",
            "markersize": 6 + 4 * len(text),
            "color": COLOURS.get(text, INK),
            "markeredgewidth": 0.3,
        }
    if kind == "relapse":
        return {"marker": "*", "markersize": 10, "color": COLOURS["relapse"]}
    if kind == "death":
        return {"marker": "X", "markersize": 8, "color": INK, "markeredgecolor": "white"}
    return {"marker": ">", "markersize": 7, "color": INK}  # ongoing


#: Where in its row each kind is drawn (rows are 1 unit apart; the bar is 0.5 high).
_ROW_OFFSET: Final = {"CRS": -0.3, "ICANS": 0.3}


# ----------------------------------------------------------------------------------------------
# swimmer
# ----------------------------------------------------------------------------------------------


def swimmer_svg(model: Swimmer, *, selection: str = "all patients") -> str:
    n = len(model.bars)
    row = ROW_IN if n <= 60 else ROW_IN_MANY
    top, bottom = (1.6 if n <= 40 else 1.85), 0.65  # a tall plot repeats the axis on top
    scale = row / ROW_IN
    height = top + bottom + max(n, 1) * row
    width = 11.0
    name = "fig-swimmer"
    title = "Swimmer plot: time on study from D1"
    first = model.offset + 1
    shown = (
        f"patients {first}-{model.offset + n} of {model.total}"
        if n < model.total
        else f"{n} infused patients"
    )
    desc = (
        f"{shown} ({selection}), one bar each from D1 (day 0) to the last clinical time on record "
        f"or death, sorted by {model.sort.replace('_', ' ')}; {model.not_infused} patients without "
        "a D1 are not shown. Markers: fractions (vertical ticks), CRS (filled) and ICANS (hollow) "
        "by grade (circle 1, square 2, triangle 3, diamond 4, pentagon 5), responses as letters, "
        "relapse (star), death (cross), still on study (arrow). The table of the report lists "
        "each patient's markers by day."
    )
    with _LOCK:
        import matplotlib as mpl

        with mpl.rc_context(_rc(name)):
            fig = _figure(width, height)
            ax = fig.add_axes(
                (1.1 / width, bottom / height, 1 - 1.5 / width, (height - top - bottom) / height)
            )
            if n == 0:
                ax.text(
                    0.5,
                    0.5,
                    "No infused patient in this selection",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_yticks([])
            ends = [b.end_day for b in model.bars]
            starts = [min([0.0, *(m.day for m in b.markers)]) for b in model.bars]
            ys = list(range(n))
            # one collection of bars and one text per patient (not a patch and a tick each:
            # matplotlib's ticks cost ~10 ms apiece, too much for a 1,000-patient plot)
            from matplotlib.collections import PolyCollection

            ax.add_collection(
                PolyCollection(
                    [
                        [(s, y - 0.25), (e, y - 0.25), (e, y + 0.25), (s, y + 0.25)]
                        for s, e, y in zip(starts, ends, ys, strict=True)
                    ],
                    facecolors=BAR_FILL,
                    edgecolors=BAR_EDGE,
                    linewidths=0.6,
                    zorder=1,
                )
            )
            ax.set_xlim(min([-1.0, *starts]), max([10.0, *ends]) * 1.04 + 1)
            groups: dict[tuple[str, int | None, str | None], tuple[list[float], list[float]]] = {}
            for y, b in enumerate(model.bars):
                for m in b.markers:
                    key = (m.kind, m.grade, m.category)
                    xs, yv = groups.setdefault(key, ([], []))
                    xs.append(m.day)
                    yv.append(y + _ROW_OFFSET.get(m.kind, 0.0))
            for (kind, grade, category), (xs, yv) in sorted(
                groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2] or "")
            ):
                style = _marker_style(kind, grade, category)
                style["markersize"] = style["markersize"] * scale  # smaller in narrower rows
                ax.plot(xs, yv, linestyle="none", zorder=3, **style)
            ax.set_ylim(n - 0.4, -0.6)
            ax.set_yticks([])
            rows = ax.get_yaxis_transform()  # x: the axes' width, y: the rows
            size = 8 if n <= 60 else 6
            for y, b in enumerate(model.bars):
                ax.text(
                    -0.008, y, b.patient_id, transform=rows, ha="right", va="center", fontsize=size
                )
            ax.set_xlabel("days since D1 (D1 = day 0)")
            ax.grid(axis="x", color="#c9d1da", linewidth=0.5, zorder=0)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            # the axis repeated at the top of a tall plot
            if n > 40:
                ax.tick_params(axis="x", top=True, labeltop=True)
            fig.text(0.1 / width, 1 - 0.3 / height, title, fontsize=12, fontweight="bold")
            fig.text(
                0.1 / width,
                1 - 0.5 / height,
                f"{shown}; {selection}; sorted by {model.sort.replace('_', ' ')}; "
                f"{model.not_infused} without a D1 not shown",
                fontsize=8,
            )
            handles = [  # three columns of five (a legend fills its columns first)
                _legend_handle("fraction", label="fraction (D1, D2, D3)"),
                _legend_handle("response", label="response: CR, CRi, PR, NR", category="CR"),
                _legend_handle("relapse", label="relapse"),
                _legend_handle("death", label="death"),
                _legend_handle("ongoing", label="still on study (last contact)"),
                *(_legend_handle("CRS", g, f"CRS grade {g} (filled)") for g in range(1, 6)),
                *(_legend_handle("ICANS", g, f"ICANS grade {g} (hollow)") for g in range(1, 6)),
            ]
            fig.legend(
                handles=handles,
                loc="upper left",
                ncol=3,
                fontsize=7.5,
                frameon=False,
                bbox_to_anchor=(1.0 / width, 1 - 0.55 / height),
                handletextpad=0.3,
                columnspacing=1.0,
            )
            return _svg(fig, name, title, desc)


# ----------------------------------------------------------------------------------------------
# grouped counts
# ----------------------------------------------------------------------------------------------


def counts_svg(model: Counts, name: str, *, selection: str = "all patients") -> str:
    groups = len(model.groups)
    width, height = 7.5, 4.2
    parts = [
        f"{g}: " + ", ".join(f"{s.name} {s.counts[i]}" for s in model.series)
        for i, g in enumerate(model.groups)
    ]
    desc = f"{model.title} ({model.patients} patients; {selection}; {model.note}). " + (
        "; ".join(parts) if parts else "Nothing to count yet."
    )
    with _LOCK:
        import matplotlib as mpl

        with mpl.rc_context(_rc(name)):
            fig = _figure(width, height)
            ax = fig.add_axes((0.09, 0.14, 0.66, 0.72))
            k = len(model.series)
            w = 0.8 / max(k, 1)
            for j, s in enumerate(model.series):
                xs = [i - 0.4 + w * (j + 0.5) for i in range(groups)]
                bars = ax.bar(
                    xs,
                    s.counts,
                    width=w * 0.92,
                    label=s.name,
                    color=COLOURS.get(s.name, INK),
                    hatch=HATCHES.get(s.name, ""),
                    edgecolor="white",
                    linewidth=0.6,
                    zorder=2,
                )
                ax.bar_label(
                    bars, labels=[str(c) if c else "" for c in s.counts], fontsize=7.5, padding=1.5
                )
            ax.set_xticks(range(groups), list(model.groups))
            ax.set_xlabel(model.x_label)
            ax.set_ylabel("patients")
            ax.yaxis.get_major_locator().set_params(integer=True)
            top = max([max(s.counts, default=0) for s in model.series] + [1])
            ax.set_ylim(0, top * 1.15 + 0.5)
            ax.grid(axis="y", color="#c9d1da", linewidth=0.5, zorder=0)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            if groups == 0:
                ax.text(
                    0.5,
                    0.5,
                    "Nothing to count yet",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
            fig.text(0.01, 0.95, model.title, fontsize=12, fontweight="bold")
            fig.text(0.01, 0.905, f"{model.patients} patients; {selection}", fontsize=8)
            return _svg(fig, name, model.title, desc)


# ----------------------------------------------------------------------------------------------
# vein to vein
# ----------------------------------------------------------------------------------------------


def vein_to_vein_svg(model: VeinToVein, *, selection: str = "all patients") -> str:
    name = "fig-vein-to-vein"
    title = "Vein-to-vein time: apheresis to infusion"
    width, height = 7.5, 3.4
    values = [d for _, d in model.values]
    median = model.median
    if values:
        summary = f"{len(values)} patients with a tracked product: median {median:g} days, " + (
            f"range {min(values)}-{max(values)} days"
            if min(values) != max(values)
            else f"all {min(values)} days"
        )
    else:
        summary = "no infused patient's product is tracked from its collection yet"
    desc = (
        f"Days from the apheresis of the infused product's collection to D1 ({selection}): "
        f"{summary}; {model.without_chain} infused patients without a product chain are not "
        "shown. Each dot is a patient (dots of the same day are stacked)."
    )
    with _LOCK:
        import matplotlib as mpl

        with mpl.rc_context(_rc(name)):
            fig = _figure(width, height)
            ax = fig.add_axes((0.08, 0.2, 0.88, 0.58))
            stack: dict[int, int] = {}
            xs, ys = [], []
            for d in values:
                stack[d] = stack.get(d, 0) + 1
                xs.append(d)
                ys.append(stack[d])
            ax.plot(
                xs,
                ys,
                linestyle="none",
                marker="o",
                markersize=7,
                color=COLOURS["PR"],
                markeredgecolor="white",
                zorder=3,
            )
            if median is not None:
                ax.axvline(median, color=INK, linestyle="--", linewidth=1, zorder=2)
                ax.annotate(
                    f"median {median:g} d",
                    (median, max(ys) + 0.6),
                    ha="left",
                    fontsize=8,
                    xytext=(4, 0),
                    textcoords="offset points",
                )
                lo, hi = min(values), max(values)
                ax.set_xlim(min(0, lo - 1), hi + max(3, (hi - lo) * 0.1))
                ax.set_ylim(0, max(ys) + 1.5)
            else:
                ax.text(
                    0.5,
                    0.5,
                    "No infused product tracked from its collection yet",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_xlim(0, 30)
                ax.set_ylim(0, 2)
            ax.set_xlabel("days from apheresis to D1")
            ax.set_ylabel("patients")
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.grid(axis="x", color="#c9d1da", linewidth=0.5, zorder=0)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            fig.text(0.01, 0.92, title, fontsize=12, fontweight="bold")
            fig.text(0.01, 0.85, f"{summary}; {selection}", fontsize=8)
            return _svg(fig, name, title, desc)


# ----------------------------------------------------------------------------------------------
# one patient: toxicity timeline
# ----------------------------------------------------------------------------------------------


def toxicity_svg(model: ToxicityTimeline) -> str:
    name = "fig-toxicity"
    title = f"CRS and ICANS grade by day since D1: patient {model.patient_id}"
    width, height = 8.0, 3.6
    if model.d1 is None:
        desc = f"Patient {model.patient_id} has no D1 on record: nothing to draw yet."
    else:
        said = "; ".join(f"day {m.clinical_day}: {m.label}" for m in model.reports)
        desc = (
            f"D1 given {model.d1[:10]}; fractions on days "
            + ", ".join(f"{m.day:.1f} ({m.label})" for m in model.fractions)
            + ". "
            + (said if said else "No CRS or ICANS reported.")
            + " CRS is the solid line with filled markers, ICANS the dashed line with hollow ones;"
            " the marker's shape is the grade."
        )
    with _LOCK:
        import matplotlib as mpl

        with mpl.rc_context(_rc(name)):
            fig = _figure(width, height)
            ax = fig.add_axes((0.1, 0.16, 0.7, 0.66))
            # the weeks of CRS and ICANS, not the months of follow-up after them
            seen = [m.day for m in (*model.reports, *model.fractions)]
            end = max(14.0, max(seen, default=0.0) + 7.0)
            for f in model.fractions:
                ax.axvline(f.day, color="#5f6773", linestyle=":", linewidth=1, zorder=1)
                ax.annotate(
                    f.label, (f.day, 5.35), ha="center", fontsize=7.5, annotation_clip=False
                )
            for kind, style in (("CRS", "-"), ("ICANS", "--")):
                steps = model.steps.get(kind, ())
                if not steps:
                    continue
                xs = [s.day for s in steps] + [end]
                ys = [s.grade for s in steps] + [steps[-1].grade]
                ax.step(
                    xs,
                    ys,
                    where="post",
                    color=COLOURS[kind],
                    linestyle=style,
                    linewidth=1.8,
                    label=f"{kind} grade",
                    zorder=2,
                )
            for m in model.reports:
                ax.plot(
                    [m.day],
                    [m.grade or 0],
                    linestyle="none",
                    zorder=3,
                    **_marker_style(m.kind, m.grade),
                )
            ax.set_ylim(-0.3, 5.2)
            ax.set_yticks(range(6), ["0 none", "1", "2", "3", "4", "5 death"])
            ax.set_xlim(
                min(-0.5, *(m.day for m in model.reports)) if model.reports else -0.5, end + 0.5
            )
            ax.set_xlabel("days since D1 (D1 = day 0)")
            ax.set_ylabel("grade (ASTCT)")
            ax.grid(color="#c9d1da", linewidth=0.5, zorder=0)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            handles = [
                *(_legend_handle("CRS", g, f"CRS {g}") for g in range(1, 6)),
                *(_legend_handle("ICANS", g, f"ICANS {g}") for g in range(1, 6)),
            ]
            from matplotlib.lines import Line2D

            handles = [
                Line2D([], [], color=COLOURS["CRS"], linewidth=1.8, label="CRS"),
                Line2D(
                    [], [], color=COLOURS["ICANS"], linewidth=1.8, linestyle="--", label="ICANS"
                ),
                *handles,
                Line2D([], [], color="#5f6773", linestyle=":", label="fraction"),
            ]
            ax.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.05),
                frameon=False,
                fontsize=7.5,
                ncol=1,
            )
            if model.d1 is None:
                ax.text(
                    0.5,
                    0.5,
                    "No D1 on record yet",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            fig.text(0.01, 0.93, title, fontsize=11, fontweight="bold")
            return _svg(fig, name, title, desc)
