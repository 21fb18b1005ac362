"""Charts drawn on the server as SVG: no script, no inline style (the dashboard's
CSP allows neither), colours as SVG presentation attributes.

Each chart is ``<svg class="chart" role="img" aria-label=...>`` with a
``<title>``, labelled axes, a legend, and a ``<title>`` on every bar and point
so that a pointer (or a screen reader walking the SVG) gets the exact numbers.
The output is well-formed XML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 480, 240
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 38, 42
FONT = 13
PALETTE = ("#2456c9", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#6b7280")


@dataclass(frozen=True)
class Series:
    """One named sequence of values (None: no value there, e.g. no runs that day)."""

    name: str
    values: Sequence[float | None]
    colour: str | None = None


def _number(value: float) -> str:
    """A tick or tooltip number: whole numbers without a decimal point."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _frame(aria_label: str, title: str, labels: Sequence[str], top: float, y_label: str,
           x_label: str, legend: Sequence[tuple[str, str]]) -> list[str]:
    """The svg element's start, its title, axes, ticks, labels and legend."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' aria-label="{escape(aria_label)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
        f'<g class="axes" stroke="#9aa3b2" stroke-width="1">'
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/></g>',
    ]
    ticks = [f'<g class="ticks" fill="#5a6375" font-size="{FONT}">']
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h - fraction * plot_h
        ticks.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(top * fraction)}</text>')
        if fraction:
            ticks.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e3e6eb"/>')
    count = len(labels)
    if count:
        shown = sorted({0, count // 2, count - 1}) if count > 3 else range(count)
        for index in shown:
            # The first and last labels end at the plot's edges, so they are never cut off.
            if count > 1 and index == 0:
                x, anchor = float(LEFT), "start"
            elif count > 1 and index == count - 1:
                x, anchor = float(LEFT + plot_w), "end"
            else:
                x, anchor = LEFT + (index + 0.5) * plot_w / count, "middle"
            ticks.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 17}" text-anchor="{anchor}">'
                         f"{escape(labels[index])}</text>")
    ticks.append("</g>")
    parts.extend(ticks)
    parts.append(f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle"'
                 f' fill="#5a6375" font-size="{FONT}">{escape(x_label)}</text>')
    parts.append(f'<text class="axis-label" x="4" y="{TOP - 7}" fill="#5a6375" font-size="{FONT}">'
                 f"{escape(y_label)}</text>")
    x = 6.0
    items = [f'<g class="legend" font-size="{FONT}" fill="#1d2330">']
    for name, colour in legend:
        items.append(f'<rect x="{x:.0f}" y="{TOP - 37}" width="10" height="10" fill="{escape(colour)}"/>'
                     f'<text x="{x + 14:.0f}" y="{TOP - 28}">{escape(name)}</text>')
        x += 24 + 7.5 * len(name)
    items.append("</g>")
    parts.extend(items)
    return parts


def _colours(series: Sequence[Series]) -> list[str]:
    return [s.colour or PALETTE[index % len(PALETTE)] for index, s in enumerate(series)]


def line_chart(labels: Sequence[str], series: Sequence[Series], *, title: str, aria_label: str,
               y_label: str, x_label: str) -> Markup:
    """A line per series over ``labels`` (one point per label; None leaves a gap)."""
    top = _nice_max(max((v for s in series for v in s.values if v is not None), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    colours = _colours(series)
    parts = _frame(aria_label, title, labels, top, y_label, x_label,
                   [(s.name, c) for s, c in zip(series, colours)])
    count = len(labels)
    for index, (one, colour) in enumerate(zip(series, colours)):
        points: list[tuple[float, float, str, float]] = []
        for position, value in enumerate(one.values):
            if value is None:
                continue
            x = LEFT + (position + 0.5) * plot_w / max(count, 1)
            y = TOP + plot_h - (value / top) * plot_h
            points.append((x, y, labels[position], value))
        parts.append(f'<g class="series series-{index}" data-series="{escape(one.name)}">')
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{escape(colour)}" stroke-width="2"/>')
        for x, y, label, value in points:
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{escape(colour)}">'
                         f"<title>{escape(one.name)}, {escape(label)}: {_number(value)}</title></circle>")
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(labels: Sequence[str], series: Sequence[Series], *, title: str, aria_label: str,
                 y_label: str, x_label: str) -> Markup:
    """A bar per label, stacked from the series' values (None counts as 0); a
    ``<rect class="bar">`` per non-zero part."""
    totals = [sum((s.values[i] or 0) for s in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    colours = _colours(series)
    parts = _frame(aria_label, title, labels, top, y_label, x_label,
                   [(s.name, c) for s, c in zip(series, colours)])
    slot = plot_w / max(len(labels), 1)
    bar_w = max(slot * 0.7, 1.0)
    parts.append('<g class="bars">')
    for position, label in enumerate(labels):
        x = LEFT + position * slot + (slot - bar_w) / 2
        base = 0.0
        parts.append(f'<g class="stack" data-label="{escape(label)}" data-total="{_number(totals[position])}">')
        for one, colour in zip(series, colours):
            value = one.values[position] or 0
            if value <= 0:
                continue
            height = value / top * plot_h
            y = TOP + plot_h - (base + value) / top * plot_h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{height:.1f}"'
                         f' fill="{escape(colour)}"><title>{escape(label)}, {escape(one.name)}:'
                         f" {_number(value)}</title></rect>")
            base += value
        parts.append("</g>")
    parts.append("</g></svg>")
    return Markup("".join(parts))
