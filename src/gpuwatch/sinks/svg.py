"""Small inline-SVG charts for the HTML report: stacked areas, lines and bars.

Hand-built rather than a plotting library: three chart kinds need a few
hundred lines, the report stays one dependency-free file that opens from disk,
and nothing runs at view time (no script, no fonts, no network).
Every chart is an ``<svg>`` with ``data-plot`` naming it and a ``<title>``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

W, H = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 36
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#9c755f", "#bab0ac")


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical mark at ``x`` (a checkpoint save) with a hover label."""

    x: float
    label: str


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering lo..hi (1, 2 or 5 times a power of ten apart)."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(count, 1)
    if not sys.float_info.min <= raw < sys.float_info.max / 10:  # (no round step divides it)
        return [lo, hi]
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    slack = step * 1e-9  # (float steps: a tick at an end is in)
    return [t for i in range(int((hi - first) / step + 1e-9) + 1)
            if lo - slack <= (t := first + i * step) <= hi + slack]


@dataclass(frozen=True)
class Axis:
    """The x axis: how a value reads (``fmt``), its label, and its unit in data values
    (ticks fall on round numbers of it: minutes of a run counted in seconds)."""

    fmt: Callable[[float], str]
    label: str
    unit: float = 1.0


def _unit_at(v: float) -> float:
    """A span to draw a single value over: 1, or wider where adding 1 to ``v`` would
    change nothing (a float past 2**53: a step time of 1e17 s)."""
    return max(1.0, abs(v) * 1e-6)


class _Frame:
    """Maps data to pixels and draws the axes."""

    def __init__(self, xs: Sequence[float], y_hi: float, y_lo: float = 0.0) -> None:
        self.x_lo, self.x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if self.x_hi <= self.x_lo:
            self.x_hi = self.x_lo + _unit_at(self.x_lo)
        self.y_lo, self.y_hi = y_lo, y_hi if y_hi > y_lo else y_lo + _unit_at(y_lo)

    def x(self, v: float) -> float:
        return LEFT + (v - self.x_lo) / (self.x_hi - self.x_lo) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y_lo) / (self.y_hi - self.y_lo) * (H - TOP - BOTTOM)

    def axes(self, axis: Axis, fmt_y: Callable[[float], str]) -> list[str]:
        out = [f'<line class="axis" x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" '
               f'y2="{H - BOTTOM}"/>',
               f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}"/>']
        for v in nice_ticks(self.y_lo, self.y_hi):
            y = self.y(v)
            out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" '
                       f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                       f'text-anchor="end">{escape(fmt_y(v))}</text>')
        for tick in nice_ticks(self.x_lo / axis.unit, self.x_hi / axis.unit, 6):
            v = tick * axis.unit
            if not axis.fmt(v):
                continue
            x = self.x(v)
            out.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 16}" '
                       f'text-anchor="middle">{escape(axis.fmt(v))}</text>')
        out.append(f'<text class="tick" x="{(LEFT + W - RIGHT) / 2}" y="{H - 4}" '
                   f'text-anchor="middle">{escape(axis.label)}</text>')
        return out


def _svg(name: str, title: str, body: list[str]) -> str:
    return (f'<svg data-plot="{escape(name)}" role="img" viewBox="0 0 {W} {H}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def legend(names: Sequence[str], colors: Sequence[str] = PALETTE) -> str:
    """An HTML legend for a chart's series."""
    items = "".join(f'<span><i style="background:{colors[i % len(colors)]}"></i>'
                    f"{escape(n)}</span>" for i, n in enumerate(names))
    return f'<div class="legend">{items}</div>'


def _markers(frame: _Frame, markers: Sequence[Marker]) -> list[str]:
    out = []
    for m in markers:
        x = frame.x(m.x)
        out.append(f'<line class="marker" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" '
                   f'y2="{H - BOTTOM}"><title>{escape(m.label)}</title></line>')
    return out


def stacked_area(name: str, title: str, xs: Sequence[float],
                 series: Mapping[str, Sequence[float]], *, x_axis: Axis,
                 fmt_y: Callable[[float], str], markers: Sequence[Marker] = ()) -> str:
    """Series stacked bottom-up in dict order over ``xs`` (ascending)."""
    top = [sum(vals) for vals in zip(*series.values(), strict=True)] if series else []
    frame = _Frame(xs, max(top, default=1.0) * 1.05)
    body = frame.axes(x_axis, fmt_y)
    base = [0.0] * len(xs)
    for i, (label, vals) in enumerate(series.items()):
        upper = [b + v for b, v in zip(base, vals, strict=True)]
        if any(v > 0 for v in vals):
            pts = [f"{frame.x(x):.1f},{frame.y(u):.1f}" for x, u in zip(xs, upper, strict=True)]
            pts += [f"{frame.x(x):.1f},{frame.y(b):.1f}"
                    for x, b in zip(reversed(xs), reversed(base), strict=True)]
            body.append(f'<polygon data-series="{escape(label)}" fill="{PALETTE[i % 9]}" '
                        f'fill-opacity="0.85" points="{" ".join(pts)}">'
                        f"<title>{escape(label)}</title></polygon>")
        base = upper
    body += _markers(frame, markers)
    return _svg(name, title, body)


def lines(name: str, title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
          *, x_axis: Axis, fmt_y: Callable[[float], str], y_max: float | None = None,
          limit: tuple[float, str] | None = None, markers: Sequence[Marker] = ()) -> str:
    """One polyline per series of (xs, ys); ``limit`` draws a dashed (value, label) line.
    NaN values break a line."""
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [y for _, ys in series.values() for y in ys if y == y]
    hi = y_max if y_max is not None else max([*ys_all, limit[0] if limit else 0.0],
                                              default=1.0) * 1.08
    frame = _Frame(xs_all, hi)
    body = frame.axes(x_axis, fmt_y)
    if limit is not None:
        y = frame.y(limit[0])
        body.append(f'<line class="limit" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" '
                    f'y2="{y:.1f}"><title>{escape(limit[1])}</title></line>'
                    f'<text class="tick" x="{W - RIGHT - 4}" y="{y - 4:.1f}" '
                    f'text-anchor="end">{escape(limit[1])}</text>')
    for i, (label, (xs, ys)) in enumerate(series.items()):
        runs: list[list[str]] = [[]]
        for x, v in zip(xs, ys, strict=True):
            if v == v:
                runs[-1].append(f"{frame.x(x):.1f},{frame.y(v):.1f}")
            elif runs[-1]:
                runs.append([])
        for run in (r for r in runs if r):
            body.append(f'<polyline data-series="{escape(label)}" fill="none" '
                        f'stroke="{PALETTE[i % 9]}" stroke-width="1.8" points="{" ".join(run)}">'
                        f"<title>{escape(label)}</title></polyline>")
    body += _markers(frame, markers)
    return _svg(name, title, body)


def bars(name: str, title: str, values: dict[str, float], *, fmt_y: Callable[[float], str],
         x_label: str) -> str:
    """One bar per label, left to right."""
    n = max(len(values), 1)
    frame = _Frame([-0.5, n - 0.5], max(values.values(), default=0.0) * 1.1 or 1.0)
    body = frame.axes(Axis(lambda v: "", x_label), fmt_y)
    width = (W - LEFT - RIGHT) / n * 0.7
    for i, (label, v) in enumerate(values.items()):
        x = frame.x(i) - width / 2
        y = frame.y(v)
        body.append(f'<rect data-series="{escape(label)}" x="{x:.1f}" y="{y:.1f}" '
                    f'width="{width:.1f}" height="{frame.y(0) - y:.1f}" fill="{PALETTE[0]}">'
                    f"<title>{escape(label)}: {escape(fmt_y(v))}</title></rect>"
                    f'<text class="tick" x="{frame.x(i):.1f}" y="{H - BOTTOM + 16}" '
                    f'text-anchor="middle">{escape(label)}</text>')
    return _svg(name, title, body)
