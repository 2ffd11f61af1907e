"""Charts drawn on the server as inline SVG: no script, no style attribute (colours are CSS classes of
``static/pages.css``), a bounded number of bars.

Every figure a chart prints is exact: an amount given as a ``Decimal`` is printed as that decimal, a ``Fraction``
as its exact text (``0.05``, or ``7/60`` when it has no finite decimal expansion), and sums are exact. Only the
geometry (bar heights and widths) is scaled through floats. Every label comes from data (model names are a
provider's text) and is escaped. Each chart carries a ``<title>`` and ``<desc>`` for assistive technology, a
``<title>`` per bar, and the same figures as a data table (``Chart.columns`` and ``Chart.rows``) that the page shows
beside it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from markupsafe import Markup, escape

from modelmarket.core.errors import ensure
from modelmarket.core.money import EXACT, decimal_text, exact_text

Amount = Decimal | Fraction
"""An exact figure: a Decimal (printed as is) or a Fraction (printed by ``exact_text``)."""

MAX_CATEGORIES = 92
"""Most columns of a chart over time (days): a quarter."""
MAX_SERIES = 8
"""Series drawn apart in a stacked chart (one colour each); the others are summed into one "other" series."""
MAX_BARS = 20
"""Bars of a ranked chart (per model); the others are summed into one last bar."""
LABEL_MAX_CHARS = 28
"""Characters of a label drawn in the SVG (the bar's own <title> and the table hold it whole)."""
TICK_LABELS_MAX = 16
"""Most category labels under a chart over time (every k-th category is labelled)."""

WIDTH = 720
COLUMN_HEIGHT = 260
BAR_ROW_HEIGHT = 24
_ID_RE = re.compile(r"[a-z][a-z0-9-]{0,40}")


@dataclass(frozen=True, slots=True)
class Chart:
    """An SVG chart and the table of the figures it draws."""

    id: str
    title: str
    svg: Markup
    legend: tuple[tuple[str, str], ...]
    """(CSS class, series name) of each colour; empty for a single-series chart."""
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    empty: bool
    """Nothing to draw (every figure is zero, or there are none)."""


def amount_text(value: Amount) -> str:
    """An exact figure as text: a Decimal as written (``0.10``), a Fraction by ``exact_text``."""
    return decimal_text(value) if isinstance(value, Decimal) else exact_text(value)


def _add(a: Amount, b: Amount) -> Amount:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return EXACT.add(a, b)
    return Fraction(a) + Fraction(b)


def _total(values: Sequence[Amount]) -> Amount:
    out: Amount = Decimal(0) if values and all(isinstance(v, Decimal) for v in values) else Fraction(0)
    for v in values:
        out = _add(out, v)
    return out


def _short(label: str, limit: int = LABEL_MAX_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _text_width(texts: Sequence[str], least: float) -> float:
    """Room for the longest of ``texts`` (about 7 units a character at the charts' type size), within a third of
    the chart: exact figures are written whole, never cut."""
    return min(max(least, 7.0 * max((len(t) for t in texts), default=0)), WIDTH / 3)


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _ratio(part: Amount, whole: Amount) -> float:
    """``part / whole`` for drawing (exact division first, then one conversion to float)."""
    return float(Fraction(part) / Fraction(whole)) if whole else 0.0


def _check(chart_id: str, values: Sequence[Amount]) -> None:
    ensure(_ID_RE.fullmatch(chart_id) is not None, f"chart id {chart_id!r} is not a short lowercase id")
    ensure(all(v >= 0 for v in values), f"chart {chart_id}: a figure is negative")


def _svg_open(chart_id: str, title: str, desc: str, height: int) -> str:
    return (
        f'<svg class="chart" id="{chart_id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>'
    )


def _fold_series(
    series: Sequence[str], values: Mapping[tuple[str, str], Amount], categories: Sequence[str]
) -> tuple[list[str], dict[tuple[str, str], Amount]]:
    """The ``MAX_SERIES - 1`` largest series kept apart and the rest summed into "other (N)", when there are more
    than ``MAX_SERIES``; else the series as given."""
    if len(series) <= MAX_SERIES:
        return list(series), dict(values)
    totals = {s: _total([values.get((c, s), Fraction(0)) for c in categories]) for s in series}
    ranked = sorted(series, key=lambda s: (-Fraction(totals[s]), s))
    kept, rest = ranked[: MAX_SERIES - 1], ranked[MAX_SERIES - 1 :]
    other = f"other ({len(rest)})"
    while other in kept:
        other += " "
    folded = {(c, s): v for (c, s), v in values.items() if s in kept}
    for c in categories:
        parts = [values[(c, s)] for s in rest if (c, s) in values]
        if parts:
            folded[(c, other)] = _total(parts)
    return [*kept, other], folded


def stacked_columns(
    chart_id: str,
    title: str,
    unit: str,
    categories: Sequence[str],
    series: Sequence[str],
    values: Mapping[tuple[str, str], Amount],
    *,
    category_label: str = "Day",
    tick: Callable[[str], str] = lambda c: c,
) -> Chart:
    """One column per category (a day), stacked by series (a model): ``values[(category, series)]``, a missing
    pair being zero. At most ``MAX_CATEGORIES`` categories; series past ``MAX_SERIES`` are summed into one."""
    ensure(len(categories) <= MAX_CATEGORIES, f"chart {chart_id}: {len(categories)} columns (at most {MAX_CATEGORIES})")
    _check(chart_id, list(values.values()))
    names, folded = _fold_series(series, values, categories)
    column_totals = [_total([folded.get((c, s), Fraction(0)) for s in names]) for c in categories]
    top = max((Fraction(t) for t in column_totals), default=Fraction(0))
    columns = (category_label, *names, "Total") if len(names) > 1 else (category_label, unit)
    rows = tuple(
        (c, *(amount_text(folded.get((c, s), Fraction(0))) for s in names), amount_text(t))
        if len(names) > 1
        else (c, amount_text(t))
        for c, t in zip(categories, column_totals, strict=True)
    )
    desc = f"{title}: {len(categories)} columns"
    desc += f", each stacked by {len(names)} series" if len(names) > 1 else ""
    desc += "; the table beside the chart holds every figure."
    svg = [_svg_open(chart_id, title, desc, COLUMN_HEIGHT)]
    axis_texts = [f"{exact_text(top * share)} {unit}" for share in (Fraction(1, 2), Fraction(1))]
    left, right, top_px, bottom = _text_width(axis_texts, 48.0) + 8, 10.0, 14.0, 36.0
    plot_w, plot_h = WIDTH - left - right, COLUMN_HEIGHT - top_px - bottom
    base = top_px + plot_h
    svg.append(_y_axis(top, unit, left, right, top_px, plot_h))
    if top == 0:
        svg.append(f'<text class="chart-empty" x="{_num(left + plot_w / 2)}" y="{_num(top_px + plot_h / 2)}" ')
        svg.append('text-anchor="middle">nothing in this period</text>')
    slot = plot_w / max(len(categories), 1)
    bar_w = max(slot * 0.72, 1.0)
    every = max(1, math.ceil(len(categories) / TICK_LABELS_MAX))
    for i, c in enumerate(categories):
        x = left + i * slot + (slot - bar_w) / 2
        y = base
        for k, s in enumerate(names):
            v = folded.get((c, s), Fraction(0))
            if not v:
                continue
            h = _ratio(v, top) * plot_h
            y -= h
            label = f"{c}, {s}: {amount_text(v)} {unit}" if len(names) > 1 else f"{c}: {amount_text(v)} {unit}"
            svg.append(
                f'<rect class="chart-s{k}" x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" height="{_num(h)}">'
                f"<title>{escape(label)}</title></rect>"
            )
        if i % every == 0:
            svg.append(
                f'<text class="chart-tick" x="{_num(x + bar_w / 2)}" y="{_num(base + 16)}" text-anchor="middle">'
                f"{escape(_short(tick(c), 12))}</text>"
            )
    svg.append("</svg>")
    # Colours follow the series' order, so the same series list gives a model one colour in every chart; the
    # legend names only the series drawn here.
    drawn = [any(folded.get((c, s)) for c in categories) for s in names]
    legend = tuple((f"chart-s{k}", s) for k, s in enumerate(names) if drawn[k]) if len(names) > 1 else ()
    return Chart(chart_id, title, Markup("".join(svg)), legend, columns, rows, top == 0)


def _y_axis(top: Fraction, unit: str, left: float, right: float, top_px: float, plot_h: float) -> str:
    """The baseline, and gridlines at half and all of ``top`` labelled with their exact figures."""
    out = []
    for share in (Fraction(0), Fraction(1, 2), Fraction(1)):
        if share and not top:
            continue
        y = top_px + plot_h * (1 - float(share))
        label = f"{exact_text(top * share)} {unit}" if top else f"0 {unit}"
        line_class = "chart-axis" if share == 0 else "chart-grid"
        out.append(
            f'<line class="{line_class}" x1="{_num(left)}" y1="{_num(y)}" x2="{_num(WIDTH - right)}" y2="{_num(y)}"/>'
            f'<text class="chart-tick" x="{_num(left - 6)}" y="{_num(y + 4)}" text-anchor="end">'
            f"{escape(label)}</text>"
        )
    return "".join(out)


def ranked_bars(
    chart_id: str,
    title: str,
    unit: str,
    items: Sequence[tuple[str, Amount]],
    *,
    item_label: str = "Model",
) -> Chart:
    """One horizontal bar per item (label, figure), in the order given, each with its exact figure written at
    its end. Past ``MAX_BARS`` items the rest are summed into one last bar, "N others"."""
    _check(chart_id, [v for _, v in items])
    shown = list(items)
    if len(shown) > MAX_BARS:
        rest = shown[MAX_BARS - 1 :]
        shown = [*shown[: MAX_BARS - 1], (f"{len(rest)} others", _total([v for _, v in rest]))]
    top = max((Fraction(v) for _, v in shown), default=Fraction(0))
    texts = [f"{amount_text(v)} {unit}" for _, v in shown]
    label_w, value_w, pad = 200.0, _text_width(texts, 60.0) + 8, 8.0
    height = int(2 * pad + max(len(shown), 1) * BAR_ROW_HEIGHT)
    desc = f"{title}: {len(shown)} bars; the table beside the chart holds every figure."
    svg = [_svg_open(chart_id, title, desc, height)]
    plot_w = WIDTH - label_w - value_w
    if not shown:
        svg.append(f'<text class="chart-empty" x="{WIDTH // 2}" y="{_num(pad + 16)}" text-anchor="middle">')
        svg.append("nothing in this period</text>")
    for i, ((label, v), text) in enumerate(zip(shown, texts, strict=True)):
        y = pad + i * BAR_ROW_HEIGHT
        w = _ratio(v, top) * plot_w
        svg.append(
            f'<text class="chart-label" x="{_num(label_w - 6)}" y="{_num(y + 16)}" text-anchor="end">'
            f"{escape(_short(label))}<title>{escape(label)}</title></text>"
        )
        if w > 0:
            svg.append(
                f'<rect class="chart-s0" x="{_num(label_w)}" y="{_num(y + 4)}" width="{_num(max(w, 1.0))}" '
                f'height="{BAR_ROW_HEIGHT - 8}"><title>{escape(f"{label}: {text}")}</title></rect>'
            )
        svg.append(
            f'<text class="chart-value" x="{_num(label_w + max(w, 0.0) + 6)}" y="{_num(y + 16)}">{escape(text)}</text>'
        )
    svg.append("</svg>")
    rows = tuple((label, amount_text(v)) for label, v in shown)
    return Chart(chart_id, title, Markup("".join(svg)), (), (item_label, unit), rows, top == 0)
