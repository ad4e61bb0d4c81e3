"""The figures drawn as SVG: self-contained, named for assistive technology, deterministic,
readable without colour (a shape per grade) and with WCAG AA contrast."""

from __future__ import annotations

import re

import pytest

from cart_course.figures import model, render
from cart_course.figures.model import Bar, Counts, Marker, Series, Swimmer


def _bar(pid: str, end: float, *, died: bool = False) -> Bar:
    markers = [
        Marker(kind="fraction", day=float(d), clinical_day=d, label=f"D{d + 1}") for d in range(3)
    ]
    markers.append(Marker(kind="CRS", day=3.0, clinical_day=3, label="CRS grade 2", grade=2))
    markers.append(Marker(kind="ICANS", day=5.0, clinical_day=5, label="ICANS grade 1", grade=1))
    markers.append(
        Marker(kind="response", day=28.0, clinical_day=28, label="CR", category="CR", course=1)
    )
    markers.append(
        Marker(kind="death" if died else "ongoing", day=end, clinical_day=int(end), label="end")
    )
    return Bar(
        patient_id=pid,
        d1="2026-01-05T08:00:00+00:00",
        end_day=end,
        end_clinical_day=int(end),
        ongoing=not died,
        state="died" if died else "ceased",
        markers=tuple(markers),
    )


def _swimmer(n: int) -> Swimmer:
    bars = tuple(_bar(f"P-{i:04d}", 30.0 + i, died=i % 7 == 0) for i in range(n))
    return Swimmer(bars=bars, sort="time_on_study", not_infused=2, total=n)


COUNTS = Counts(
    title="Maximum CRS and ICANS grade per patient",
    x_label="maximum grade",
    groups=("0 (none)", "1", "2"),
    series=(Series(name="CRS", counts=(3, 2, 1)), Series(name="ICANS", counts=(5, 1, 0))),
    patients=6,
)


def _ids(svg: str) -> set[str]:
    return set(re.findall(r' id="([^"]+)"', svg))


def test_an_svg_names_itself_and_loads_nothing() -> None:
    svg = render.swimmer_svg(_swimmer(5))
    assert svg.startswith("<svg ") and 'role="img"' in svg
    assert 'aria-labelledby="fig-swimmer-title fig-swimmer-desc"' in svg
    title = re.search(r'<title id="fig-swimmer-title">([^<]+)</title>', svg)
    desc = re.search(r'<desc id="fig-swimmer-desc">([^<]+)</desc>', svg)
    assert title and "Swimmer plot" in title.group(1)
    assert (
        desc
        and "5 infused patients" in desc.group(1)
        and "2 patients without a D1" in desc.group(1)
    )
    # nothing runs, nothing is fetched, no style a strict Content-Security-Policy would block
    assert "<script" not in svg and "<style" not in svg and " style=" not in svg
    assert "<metadata" not in svg and "<?xml" not in svg
    urls = set(re.findall(r"https?://[^\"' )]+", svg))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    # the text is text (a screen reader and an accessibility checker read it)
    assert ">P-0003</text>" in svg and ">days since D1 (D1 = day 0)</text>" in svg


def test_figures_are_deterministic_and_their_ids_never_clash_in_one_page() -> None:
    a, b = render.swimmer_svg(_swimmer(4)), render.swimmer_svg(_swimmer(4))
    assert a == b
    assert render.counts_svg(COUNTS, "fig-max-grade") == render.counts_svg(COUNTS, "fig-max-grade")
    other = render.counts_svg(COUNTS, "fig-max-grade")
    assert _ids(a) & _ids(other) == set()
    refs = set(re.findall(r'(?:href="|url\()#([^")]+)', a))
    assert refs <= _ids(a)  # every reference still resolves


def test_the_swimmer_grows_with_its_patients() -> None:
    def height(svg: str) -> float:
        m = re.search(r'height="([0-9.]+)pt"', svg)
        assert m
        return float(m.group(1))

    small, large = render.swimmer_svg(_swimmer(10)), render.swimmer_svg(_swimmer(200))
    assert height(large) > 8 * height(small) / 2
    assert large.count(">P-0199</text>") == 1  # every patient is named


def test_grades_differ_by_shape_and_syndromes_by_fill_not_only_by_colour() -> None:
    shapes = [render.GRADE_MARKERS[g] for g in range(1, 6)]
    assert len(set(shapes)) == 5
    crs = render._marker_style("CRS", 2)
    icans = render._marker_style("ICANS", 2)
    assert crs["marker"] == icans["marker"] == "s"
    assert crs["markerfacecolor"] != "white" and icans["markerfacecolor"] == "white"
    assert len({render.HATCHES[k] for k in ("CR", "CRi", "PR", "NR", model.NOT_ASSESSED)}) == 5


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("kind", sorted(render.COLOURS))
def test_marker_and_legend_colours_meet_wcag_aa(kind: str) -> None:
    colour = render.COLOURS[kind]
    assert _contrast(colour, "#ffffff") >= 4.5  # as text would need (legend, labels)
    assert _contrast(colour, render.BAR_FILL) >= 3.0  # graphics on the bars (WCAG 1.4.11)


def test_the_toxicity_timeline_of_a_patient_never_infused_says_so() -> None:
    empty = model.ToxicityTimeline(
        patient_id="P-9", d1=None, steps={}, reports=(), fractions=(), end_day=0
    )
    svg = render.toxicity_svg(empty)
    assert "has no D1 on record" in svg and ">No D1 on record yet</text>" in svg
