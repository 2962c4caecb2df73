"""Charts drawn on the server as SVG geometry: no script, no library, nothing fetched.

Each function turns figures (exact micros) into shapes in a fixed view box; the template
draws them, each with a ``<title>`` (the browser's tooltip) holding the exact figure in
credits and micros. Scales are integers over the largest figure, so the drawing never does
arithmetic on money beyond a ratio for the pixel position.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from creditwallet.core import limits
from creditwallet.core.units import format_credits

WIDTH = 720
HEIGHT = 220
PLOT_LEFT = 70
PLOT_RIGHT = 710
PLOT_TOP = 10
PLOT_BOTTOM = 190
OTHER = "other agents"


def amount_text(micros: int) -> str:
    return f"{format_credits(micros)} credits ({micros} micros)"


@dataclasses.dataclass(frozen=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    series: int
    title: str


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    title: str


@dataclasses.dataclass(frozen=True)
class Tick:
    position: int
    label: str


@dataclasses.dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    points: list[Point]
    path: str
    legend: list[tuple[int, str]]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    empty: bool
    width: int = WIDTH
    height: int = HEIGHT


def _y(value: int, low: int, high: int) -> int:
    span = high - low or 1
    return PLOT_BOTTOM - (value - low) * (PLOT_BOTTOM - PLOT_TOP) // span


def _slot(days: list[dt.date]) -> int:
    return (PLOT_RIGHT - PLOT_LEFT) // max(len(days), 1)


def _x_ticks(days: list[dt.date]) -> list[Tick]:
    slot = _slot(days)
    step = max(1, len(days) // 6)
    return [
        Tick(PLOT_LEFT + i * slot + slot // 2, day.strftime("%m-%d"))
        for i, day in enumerate(days)
        if i % step == 0
    ]


def _y_ticks(low: int, high: int) -> list[Tick]:
    return [Tick(_y(v, low, high), format_credits(v)) for v in (low, (low + high) // 2, high)]


def line(title: str, days: list[dt.date], values: list[int]) -> Chart:
    """One value per day (a balance), as a line with a dot per day."""
    low, high = min([0, *values]), max([0, *values])
    slot = _slot(days)
    points = [
        Point(PLOT_LEFT + i * slot + slot // 2, _y(v, low, high), f"{day}: {amount_text(v)}")
        for i, (day, v) in enumerate(zip(days, values, strict=True))
    ]
    path = " ".join(f"{'M' if i == 0 else 'L'}{p.x},{p.y}" for i, p in enumerate(points))
    return Chart(
        title,
        [],
        points,
        path,
        [],
        _x_ticks(days),
        _y_ticks(low, high),
        empty=not any(values),
    )


def stacked(
    title: str,
    days: list[dt.date],
    series: dict[str, list[int]],
    series_max: int = limits.CONSOLE_CHART_AGENTS_MAX,
) -> Chart:
    """Non-negative values per day and series, stacked; beyond ``series_max`` series, the
    smallest are summed as one "other agents" series."""
    ranked = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    shown = ranked[: series_max - 1] if len(ranked) > series_max else ranked
    rest = ranked[len(shown) :]
    if rest:
        shown = [*shown, (OTHER, [sum(col) for col in zip(*(v for _, v in rest), strict=True)])]
    totals = [sum(v[i] for _, v in shown) for i in range(len(days))]
    high = max([0, *totals])
    slot = _slot(days)
    bars = []
    for i, day in enumerate(days):
        base = 0
        for number, (name, values) in enumerate(shown):
            value = values[i]
            if value <= 0:
                continue
            top, bottom = _y(base + value, 0, high), _y(base, 0, high)
            bars.append(
                Bar(
                    PLOT_LEFT + i * slot + 1,
                    top,
                    max(slot - 2, 1),
                    max(bottom - top, 1),
                    number,
                    f"{day} {name}: {amount_text(value)}",
                )
            )
            base += value
    return Chart(
        title,
        bars,
        [],
        "",
        [(number, name) for number, (name, _) in enumerate(shown)],
        _x_ticks(days),
        _y_ticks(0, high),
        empty=not bars,
    )


def grouped(title: str, days: list[dt.date], series: dict[str, list[int]]) -> Chart:
    """Non-negative values per day for a few named series, side by side in each day's slot."""
    names = list(series)
    high = max([0, *(v for values in series.values() for v in values)])
    slot = _slot(days)
    width = max((slot - 2) // max(len(names), 1), 1)
    bars = []
    for i, day in enumerate(days):
        for number, name in enumerate(names):
            value = series[name][i]
            if value <= 0:
                continue
            top = _y(value, 0, high)
            bars.append(
                Bar(
                    PLOT_LEFT + i * slot + 1 + number * width,
                    top,
                    width,
                    max(PLOT_BOTTOM - top, 1),
                    number,
                    f"{day} {name}: {amount_text(value)}",
                )
            )
    return Chart(
        title,
        bars,
        [],
        "",
        list(enumerate(names)),
        _x_ticks(days),
        _y_ticks(0, high),
        empty=not bars,
    )
