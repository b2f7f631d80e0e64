"""Interactive inline SVG charts for the report: hover a point for its value, tick boxes to show series.

Every point has a tooltip (``data-tip``, read by the report's script, and an SVG ``<title>`` for
browsers without script); series carry ``data-<dim>`` attributes that the toggles show and hide.
All text (series names, labels, titles) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ihs.report.html import esc

CLASS_COLORS = {"normal": "#1e8449", "malicious": "#c0392b", "jailbreak": "#8e44ad", "contrast": "#d68910"}
FALLBACK_COLORS = ["#2c3e50", "#16a085", "#7f8c8d", "#e67e22", "#2d5fa8", "#b03a8c"]
EMOTION_STYLE = {"negative": "", "positive": "6 4", "neutral": "2 3"}
EMOTION_SWATCH = {"negative": "", "positive": "dash", "neutral": "dot"}
CLF_COLORS = {"svm": "#2d5fa8", "mlp": "#c0392b", "logreg": "#1e8449", "diffmean": "#8e44ad"}
LAYER_AXIS = "layer (0 = embedding output, i = output of block i)"

Toggle = tuple[str, str, Sequence[tuple[str, str, str, bool]]]


def color(label: str, order: Sequence[str]) -> str:
    """The colour of a class: fixed for the four standard classes, from a palette for the rest."""
    if label in CLASS_COLORS:
        return CLASS_COLORS[label]
    others = [x for x in order if x not in CLASS_COLORS]
    return FALLBACK_COLORS[others.index(label) % len(FALLBACK_COLORS)] if label in others else "#555"


def class_order(labels: Any) -> list[str]:
    """Classes in the report's order: normal, malicious, jailbreak, contrast, then the rest as given."""
    labels = list(labels)
    first = [x for x in ("normal", "malicious", "jailbreak", "contrast") if x in labels]
    return first + [x for x in labels if x not in first]


def swatch(colour: str, style: str = "") -> str:
    """A short line in ``colour`` for a legend or toggle (``style``: '', dash or dot)."""
    return f'<span class="sw {esc(style)}" style="border-top-color:{esc(colour)}"></span>'


def data_attrs(attrs: dict[str, str]) -> str:
    return "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in attrs.items())


def segments(xs: Sequence[Any], *ys: Sequence[Any]) -> list[list[tuple]]:
    """Runs of consecutive points where every y value is present."""
    segs: list[list[tuple]] = []
    cur: list[tuple] = []
    for i, x in enumerate(xs):
        vals = [y[i] for y in ys]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
            if cur:
                segs.append(cur)
            cur = []
            continue
        cur.append((x, *vals))
    if cur:
        segs.append(cur)
    return segs


@dataclass
class _Frame:
    """The chart's plotting area and its scales."""

    left: int
    top: int
    pw: int
    ph: int
    x0: float
    x1: float
    y_min: float
    y_max: float
    y_percent: bool

    def sx(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        y = min(max(y, self.y_min), self.y_max)
        return self.top + (1 - (y - self.y_min) / (self.y_max - self.y_min)) * self.ph

    def fy(self, y: float) -> str:
        return f"{100 * y:.1f}%" if self.y_percent else f"{y:.3f}"


def _frame(series: Sequence[dict[str, Any]], width: int, height: int, title: str, y_min: float, y_max: float,
           y_percent: bool) -> _Frame:
    left, right, top, bottom = 58, 18, 14 + (16 if title else 0), 42
    xs = [x for s in series for x in s["x"]] or [0, 1]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    return _Frame(left, top, width - left - right, height - top - bottom, x0, x1, y_min, y_max, y_percent)


def _axes(f: _Frame, x_label: str, y_label: str, height: int) -> list[str]:
    parts = []
    for i in range(5):
        v = f.y_min + (f.y_max - f.y_min) * i / 4
        y = f.sy(v)
        parts.append(f'<line class="grid" x1="{f.left}" x2="{f.left + f.pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = f"{100 * v:.0f}%" if f.y_percent else f"{v:.2f}"
        parts.append(f'<text x="{f.left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    span = f.x1 - f.x0
    step = next((n for n in (1, 2, 3, 5, 10, 20, 25, 50, 100, 200, 500) if span / n <= 12), math.ceil(span / 12))
    first_tick = math.ceil(f.x0)
    bottom = f.top + f.ph
    for t in range(first_tick, int(math.floor(f.x1)) + 1):
        if (t - first_tick) % step:
            continue
        x = f.sx(t)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{t}</text>')
    parts.append(f'<line class="axis" x1="{f.left}" x2="{f.left + f.pw}" y1="{bottom}" y2="{bottom}"/>')
    parts.append(f'<line class="axis" x1="{f.left}" x2="{f.left}" y1="{f.top}" y2="{bottom}"/>')
    parts.append(f'<text x="{f.left + f.pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {f.top + f.ph / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{esc(y_label)}</text>')
    return parts


def _hline(f: _Frame, h: dict[str, Any]) -> str:
    y = f.sy(h["y"])
    dash = h.get("dash", "5 4")
    tip = f"{h['label']}: {f.fy(h['y'])}"
    x2 = f.left + f.pw
    return (f'<g data-series="1"{data_attrs(h.get("attrs", {}))} data-tip="{esc(tip)}">'
            f'<line x1="{f.left}" x2="{x2}" y1="{y:.1f}" y2="{y:.1f}" stroke="{esc(h.get("color", "#555"))}" '
            f'stroke-width="2" stroke-dasharray="{esc(dash)}"/>'
            f'<line x1="{f.left}" x2="{x2}" y1="{y:.1f}" y2="{y:.1f}" stroke="transparent" stroke-width="9"/>'
            f"</g>")


def _series(f: _Frame, s: dict[str, Any], x_name: str) -> str:
    colour = esc(s.get("color", "#333"))
    parts = [f'<g data-series="1"{data_attrs(s.get("attrs", {}))}>']
    if s.get("lo") is not None and s.get("hi") is not None:
        for seg in segments(s["x"], s["lo"], s["hi"]):
            upper = " ".join(f"{f.sx(x):.1f},{f.sy(h):.1f}" for x, _, h in seg)
            lower = " ".join(f"{f.sx(x):.1f},{f.sy(lo):.1f}" for x, lo, _ in reversed(seg))
            parts.append(f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.12" stroke="none"/>')
    for seg in segments(s["x"], s["y"]):
        d = " ".join(f"{'M' if i == 0 else 'L'}{f.sx(x):.1f},{f.sy(y):.1f}" for i, (x, y) in enumerate(seg))
        dash = f' stroke-dasharray="{esc(s["dash"])}"' if s.get("dash") else ""
        parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
    for x, y in zip(s["x"], s["y"], strict=True):
        if y is None:
            continue
        tip = f"{s['name']}\n{x_name} {x}: {f.fy(y)}"
        parts.append(f'<circle class="pt" cx="{f.sx(x):.1f}" cy="{f.sy(y):.1f}" r="3.2" fill="{colour}" '
                     f'data-tip="{esc(tip)}"><title>{esc(tip)}</title></circle>')
    parts.append("</g>")
    return "".join(parts)


def _controls(toggles: Sequence[Toggle], legend: Sequence[tuple[str, str, str]]) -> list[str]:
    controls = []
    for dim, caption, options in toggles:
        boxes = "".join(
            f'<label><input type="checkbox" data-dim="{esc(dim)}" value="{esc(value)}"{" checked" if checked else ""}>'
            f"{sw}{esc(label)}</label>" for value, label, sw, checked in options)
        controls.append(f'<div class="toggles"><span class="dim">{esc(caption)}:</span>{boxes}</div>')
    if legend:
        items = "".join(f"<label>{swatch(colour, style)}{esc(label)}</label>" for label, colour, style in legend)
        controls.append(f'<div class="toggles">{items}</div>')
    return controls


def line_chart(
    series: Sequence[dict[str, Any]],
    *,
    x_label: str,
    y_label: str,
    y_min: float = 0.0,
    y_max: float = 1.0,
    y_percent: bool = False,
    hlines: Sequence[dict[str, Any]] = (),
    shade: tuple[float, float] | None = None,
    shade_label: str = "",
    toggles: Sequence[Toggle] = (),
    legend: Sequence[tuple[str, str, str]] = (),
    title: str = "",
    width: int = 720,
    height: int = 300,
    figure_id: str = "",
) -> str:
    """A line chart as inline SVG: every point has a hover tooltip (``data-tip``), series carry
    ``data-<dim>`` attributes that the toggles (checkboxes) show and hide.

    ``series``: dicts with ``name``, ``x``, ``y`` (None breaks the line), ``color``, optional
    ``dash`` (SVG dasharray), ``lo``/``hi`` (a band), ``attrs`` ({dim: value}).
    ``hlines``: dicts with ``y``, ``label``, optional ``color``, ``dash``, ``attrs``.
    ``toggles``: (dim, caption, [(value, label, swatch_html, checked)]); ``legend``: (label, colour, style).
    """
    f = _frame(series, width, height, title, y_min, y_max, y_percent)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title or y_label)}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    if title:
        parts.append(f'<text x="{f.left}" y="14" font-weight="600">{esc(title)}</text>')
    if shade is not None:
        a, b = f.sx(max(shade[0] - 0.5, f.x0)), f.sx(min(shade[1] + 0.5, f.x1))
        parts.append(f'<rect class="shade" x="{a:.1f}" y="{f.top}" width="{max(b - a, 1):.1f}" height="{f.ph}">'
                     f"<title>{esc(shade_label)}</title></rect>")
    parts += _axes(f, x_label, y_label, height)
    parts += [_hline(f, h) for h in hlines]
    x_name = x_label.split(" (")[0]
    parts += [_series(f, s, x_name) for s in series]
    parts.append("</svg>")
    fid = f' id="{esc(figure_id)}"' if figure_id else ""
    data_toggles = " data-toggles" if toggles else ""
    return f'<div class="ifig"{fid}{data_toggles}>{"".join(_controls(toggles, legend))}{"".join(parts)}</div>'

