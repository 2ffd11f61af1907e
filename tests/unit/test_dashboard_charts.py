"""The dashboard's SVG charts: exact figures in every label, escaped provider text, accessible markup, bounded."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from fractions import Fraction

import pytest

from modelmarket.core.errors import InvariantViolated
from modelmarket.dashboard import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(chart: charts.Chart) -> ET.Element:
    """The chart's SVG as XML (it must be well formed: escaped text, closed elements)."""
    return ET.fromstring(str(chart.svg))


def titles(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}title")]


def heights(root: ET.Element) -> list[float]:
    return [float(r.attrib["height"]) for r in root.iter(f"{SVG}rect")]


def test_stacked_columns_label_exact_amounts_and_put_the_same_figures_in_the_table() -> None:
    days = ["2026-03-01", "2026-03-02", "2026-03-03"]
    values = {
        ("2026-03-01", "digits"): Fraction(1, 1000),
        ("2026-03-01", "speech"): Fraction(7, 60),  # no finite decimal: written as a fraction, never rounded
        ("2026-03-03", "digits"): Fraction(3, 10**9),
    }
    chart = charts.stacked_columns("cost-day", "Cost per day (USD)", "USD", days, ["digits", "speech"], values)
    root = parse(chart)
    bars = titles(root)[1:]
    assert "2026-03-01, digits: 0.001 USD" in bars
    assert "2026-03-01, speech: 7/60 USD" in bars
    assert "2026-03-03, digits: 0.000000003 USD" in bars
    assert chart.columns == ("Day", "digits", "speech", "Total")
    assert chart.rows == (
        ("2026-03-01", "0.001", "7/60", "353/3000"),
        ("2026-03-02", "0", "0", "0"),
        ("2026-03-03", "0.000000003", "0", "0.000000003"),
    )
    # No float ever reaches the text: the axis' top is the largest column total, exactly.
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert "353/3000 USD" in texts
    assert not any(re.search(r"\de[-+]?\d", t) for t in [*texts, *bars])
    assert [(cls, name) for cls, name in chart.legend] == [("chart-s0", "digits"), ("chart-s1", "speech")]
    assert not chart.empty


def test_column_heights_are_in_proportion_and_a_zero_draws_no_bar() -> None:
    values = {("a", "m"): Fraction(1), ("b", "m"): Fraction(1, 2), ("c", "m"): Fraction(0)}
    chart = charts.stacked_columns("iu", "IU per day", "IU", ["a", "b", "c"], ["m"], values)
    h = heights(parse(chart))
    assert len(h) == 2
    assert h[0] == pytest.approx(2 * h[1], abs=0.02)
    assert chart.columns == ("Day", "IU") and chart.rows == (("a", "1"), ("b", "0.5"), ("c", "0"))
    assert chart.legend == ()


def test_decimal_figures_keep_their_written_places() -> None:
    chart = charts.ranked_bars("share", "Share per model", "USD", [("b", Decimal("0.10")), ("a", Decimal("0.05"))])
    root = parse(chart)
    assert chart.rows == (("b", "0.10"), ("a", "0.05"))
    values = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "chart-value"]
    assert values == ["0.10 USD", "0.05 USD"]
    h_b, h_a = (float(r.attrib["width"]) for r in root.iter(f"{SVG}rect"))
    assert h_b == pytest.approx(2 * h_a, abs=0.02)


def test_provider_text_is_escaped_in_the_svg_and_kept_whole_in_titles_and_table() -> None:
    evil = '<script>alert("x")</script>&"quoted"' + "-long" * 10
    chart = charts.stacked_columns("c", "t <b>", "IU", ["d1"], [evil, "ok"], {("d1", evil): Fraction(1)})
    svg = str(chart.svg)
    assert "<script>" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg
    root = parse(chart)  # well formed despite the quotes and ampersands
    assert f"d1, {evil}: 1 IU" in titles(root)
    assert titles(root)[0] == "t <b>"
    assert chart.columns[1] == evil
    bars = charts.ranked_bars("r", "per model", "USD", [(evil, Fraction(2))])
    root = parse(bars)
    label = next(t for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "chart-label")
    assert (label.text or "").endswith("\u2026") and len(label.text or "") == charts.LABEL_MAX_CHARS
    assert evil in titles(root)


def test_charts_are_accessible_images_with_a_title_and_a_description() -> None:
    chart = charts.stacked_columns("usage-iu-day", "IU per day", "IU", ["d"], ["m"], {("d", "m"): Fraction(3)})
    root = parse(chart)
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-labelledby"] == "usage-iu-day-title usage-iu-day-desc"
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert title is not None and title.attrib["id"] == "usage-iu-day-title" and title.text == "IU per day"
    assert desc is not None and "table" in (desc.text or "")
    assert "style=" not in str(chart.svg)  # colours are classes: the dashboard's CSP refuses style attributes


def test_an_empty_period_says_so_instead_of_drawing() -> None:
    chart = charts.stacked_columns("e", "IU per day", "IU", ["d1", "d2"], [], {})
    assert chart.empty
    root = parse(chart)
    assert heights(root) == []
    assert any(t.text == "nothing in this period" for t in root.iter(f"{SVG}text"))
    assert charts.ranked_bars("f", "per model", "USD", []).empty


def test_series_past_the_bound_are_summed_exactly_into_one() -> None:
    series = [f"m{i:02d}" for i in range(12)]
    values = {("d", s): Fraction(i + 1, 3) for i, s in enumerate(series)}
    chart = charts.stacked_columns("many", "IU per day", "IU", ["d"], series, values)
    names = [name for _, name in chart.legend]
    assert len(names) == charts.MAX_SERIES
    assert names[-1] == "other (5)"
    assert names[: charts.MAX_SERIES - 1] == [f"m{i:02d}" for i in range(11, 4, -1)]  # the largest kept apart
    row = dict(zip(chart.columns, chart.rows[0], strict=True))
    assert row["other (5)"] == charts.amount_text(sum((Fraction(i + 1, 3) for i in range(5)), Fraction(0)))
    assert row["Total"] == "26"  # (1 + ... + 12) / 3, nothing lost in the folding
    assert {r.attrib["class"] for r in parse(chart).iter(f"{SVG}rect")} == {f"chart-s{k}" for k in range(8)}


def test_bars_past_the_bound_are_summed_into_a_last_bar() -> None:
    items = [(f"model-{i:02d}", Decimal(100 - i)) for i in range(25)]
    chart = charts.ranked_bars("top", "Cost per model", "USD", items)
    assert len(chart.rows) == charts.MAX_BARS
    assert chart.rows[-1] == ("6 others", str(sum(100 - i for i in range(19, 25))))
    assert len(list(parse(chart).iter(f"{SVG}rect"))) == charts.MAX_BARS


def test_too_many_columns_negative_figures_and_bad_ids_are_refused() -> None:
    days = [f"d{i}" for i in range(charts.MAX_CATEGORIES + 1)]
    with pytest.raises(InvariantViolated, match="columns"):
        charts.stacked_columns("x", "t", "IU", days, ["m"], {})
    with pytest.raises(InvariantViolated, match="negative"):
        charts.ranked_bars("x", "t", "USD", [("m", Decimal("-1"))])
    with pytest.raises(InvariantViolated, match="chart id"):
        charts.ranked_bars('x" onload="1', "t", "USD", [])


def test_tick_labels_are_bounded_for_a_long_period() -> None:
    days = [f"2026-01-{i:02d}" for i in range(1, 32)] + [f"2026-02-{i:02d}" for i in range(1, 29)]
    chart = charts.stacked_columns("long", "IU", "IU", days, ["m"], {}, tick=lambda d: d[5:])
    ticks = [t.text for t in parse(chart).iter(f"{SVG}text") if t.attrib.get("text-anchor") == "middle"]
    ticks = [t for t in ticks if t and t[:2] in ("01", "02")]
    assert 1 < len(ticks) <= charts.TICK_LABELS_MAX
    assert ticks[0] == "01-01"


def test_a_series_with_nothing_drawn_keeps_the_others_colours_and_leaves_the_legend() -> None:
    values = {("d", "b"): Fraction(1), ("d", "c"): Fraction(2)}
    chart = charts.stacked_columns("eur", "Cost per day (EUR)", "EUR", ["d"], ["a", "b", "c"], values)
    assert chart.legend == (("chart-s1", "b"), ("chart-s2", "c"))  # b and c as coloured in every other chart
    assert {r.attrib["class"] for r in parse(chart).iter(f"{SVG}rect")} == {"chart-s1", "chart-s2"}
