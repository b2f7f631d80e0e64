"""Figures and the token heat map page of ``ihs explain``: faithfulness curves, cosines by layer.

The heat map page is self-contained HTML (inline CSS, no scripts); every prompt token and every tag is
escaped, since prompts are adversarial by nature.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ihs.explain import token_heatmap_html  # noqa: E402
from ihs.plots.style import LAYER_LABEL, esc, save_figure  # noqa: E402

ORDER_COLORS = {"attribution": "#c0392b", "random": "#7f8c8d", "bow": "#d68910"}
GRID = np.linspace(0.0, 1.0, 21)
CSS = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;color:#222}"
       ".ihs-tok{white-space:pre-wrap;border-radius:2px}.ihs-template{color:#999}"
       ".ihs-heat{font-family:ui-monospace,monospace;font-size:.9em;line-height:1.7;border:1px solid #ddd;"
       "padding:.4em;margin:.2em 0 1em}.meta{color:#555;font-size:.9em}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def heatmap_block(item: dict[str, Any], *, max_tokens: int = 400) -> str:
    """One prompt's heat map with its class, target values and shares (all escaped)."""
    tokens, scores, user = item["tokens"], item["scores"], item["user"]
    if len(tokens) > max_tokens:  # keep the end: the user's prompt and the generation prompt sit there
        tokens, scores, user = tokens[-max_tokens:], scores[-max_tokens:], user[-max_tokens:]
    meta = (f"class {item['label']} | target {_fmt(item['target'])} (baseline {_fmt(item['baseline_target'])}) | "
            f"completeness gap {_fmt(item['gap'])} | share on alarming words {_fmt(item.get('alarm_share'))} | "
            f"on marked span {_fmt(item.get('marked_share'))}")
    return (f'<div class="meta">{html.escape(meta, quote=True)}</div>'
            f'<div class="ihs-heat">{token_heatmap_html(tokens, scores, user=user)}</div>')


def shares_table(shares: dict[str, Any]) -> str:
    """The attribution-share table as HTML (class names escaped)."""
    rows = []
    for label, e in shares.items():
        cells = [html.escape(str(label)), str(e["n"])]
        for kind in ("alarm", "marked"):
            cells += [f"{_fmt(e[kind]['share'])} ({e[kind]['prompts']})", _fmt(e[kind]["uniform"])]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("<tr><th>class</th><th>n</th><th>share on alarming words (prompts)</th><th>uniform</th>"
            "<th>share on marked span (prompts)</th><th>uniform</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def heatmap_page(data: dict[str, Any]) -> str:
    """The whole explain.html page."""
    target = data["target"]
    title = f"ihs explain: {target.get('name', target.get('kind'))} at layer {target.get('layer')}"
    blocks = "".join(heatmap_block(it) for it in data["items"])
    cmd = f'<p class="meta"><code>{html.escape(data["command"])}</code></p>' if data.get("command") else ""
    lead = ("Red tokens push the target up (toward malicious, refusal or the emotion word), blue ones down; "
            "grey tokens are the chat template (their score is 0 by construction).")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{cmd}<p>{html.escape(lead)}</p>"
            f"{shares_table(data['shares'])}{blocks}</body></html>")


def _mean_curve(items: Sequence[dict[str, Any]], curve: str, order: str) -> np.ndarray | None:
    ys = []
    for it in items:
        y = it[curve].get(order)
        span = it["full"] - it["empty"]
        if y is None or abs(span) < 1e-6 or len(it["fractions"]) < 2:
            continue
        ys.append(np.interp(GRID, it["fractions"], (np.asarray(y) - it["empty"]) / span))
    return np.mean(ys, axis=0) if ys else None


def plot_faithfulness(data: dict[str, Any], out: Path, *, caption: str | None = None,
                      formats: Sequence[str] = ("png",)) -> list[Path]:
    """Mean normalised deletion and insertion curves per order (0: all user tokens removed, 1: none)."""
    faith = data.get("faithfulness")
    if not faith or not faith.get("items"):
        return []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, curve in zip(axes, ("deletion", "insertion"), strict=True):
        for order in faith["orders"]:
            y = _mean_curve(faith["items"], curve, order)
            if y is not None:
                ax.plot(GRID, y, color=ORDER_COLORS.get(order, "#333"), label=order)
        ax.set_title(f"{curve} ({'lower' if curve == 'deletion' else 'higher'} area is better)")
        ax.set_xlabel(f"share of user tokens {'removed' if curve == 'deletion' else 'restored'}")
        ax.set_ylabel("target, normalised (0: none, 1: full)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, out, "explain_faithfulness", caption, formats)


def plot_cosines(data: dict[str, Any], out: Path, *, caption: str | None = None,
                 formats: Sequence[str] = ("png",)) -> list[Path]:
    """Per layer: cosine of each concept direction with the malicious-vs-normal and refusal directions, and
    the 95% quantile of |cosine| of the random controls."""
    cos = data.get("cosines")
    if not cos or not cos.get("controls"):
        return []
    anchors = list(cos["controls"])
    fig, axes = plt.subplots(1, len(anchors), figsize=(4.6 * len(anchors), 3.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, anchor in zip(axes[0], anchors, strict=True):
        for k, (name, entry) in enumerate(cos["controls"][anchor].items()):
            y = np.asarray([np.nan if v is None else v for v in entry["cosine"]], dtype=float)
            ax.plot(cos["layers"], y, color=cmap(k % 10), label=esc(name))
            if "random" in entry:
                q = np.asarray([np.nan if v is None else v for v in entry["random"]["q95_abs"]], dtype=float)
                ax.plot(cos["layers"], q, color=cmap(k % 10), linestyle=":", linewidth=0.8)
        if anchor == "malicious_vs_normal" and "refusal" in cos["names"]:
            i, j = cos["names"].index("malicious_vs_normal"), cos["names"].index("refusal")
            y = [np.nan if row[i][j] is None else row[i][j] for row in cos["cosines"]]
            ax.plot(cos["layers"], y, color="black", linewidth=2, label="refusal direction")
        ax.set_title(f"cosine with the {anchor.replace('_', ' ')} direction", fontsize=9)
        ax.set_xlabel(LAYER_LABEL, fontsize=8)
        ax.axhline(0, color="#999", linewidth=0.5)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cosine (dotted: random-control 95% |cos|)")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, out, "explain_cosines", caption, formats)


def plot_all(data: dict[str, Any], out: str | Path, *, caption: str | None = None,
             formats: Sequence[str] = ("png",)) -> list[Path]:
    """Every explain figure that the data allows."""
    out = Path(out)
    return (plot_faithfulness(data, out, caption=caption, formats=formats)
            + plot_cosines(data, out, caption=caption, formats=formats))
