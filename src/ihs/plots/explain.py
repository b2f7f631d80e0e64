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


def guard_page(rows: Sequence[dict[str, Any]], *, guard_name: str = "guard") -> str:
    """The page ``ihs guard score --explain`` writes: per prompt its verdict and token heat map (all escaped)."""
    blocks = []
    for r in rows:
        e = r["explanation"]
        meta = (f"{'MALICIOUS' if e['malicious'] else 'ok'} | logit {_fmt(e['logit'])} (threshold "
                f"{_fmt(e['threshold_logit'])}, baseline {_fmt(e['baseline_logit'])}) | relative completeness gap "
                f"{_fmt(e['relative_gap'])} | {r.get('label', '')}")
        blocks.append(f'<div class="meta">{html.escape(meta, quote=True)}</div><div class="ihs-heat">'
                      f"{token_heatmap_html(e['tokens'], e['scores'], user=e['user'])}</div>")
    title = f"ihs guard score --explain: {guard_name}"
    lead = ("Integrated gradients of the guard's logit on the input embeddings: red tokens push toward "
            "malicious, blue toward benign; grey tokens are the chat template.")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(lead)}</p>"
            f"{''.join(blocks)}</body></html>")


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


# -- worked examples and the zoo summary -----------------------------------------------------------------


def _story_table(story: dict[str, Any]) -> str:
    """Layer-by-layer numbers of one story as an HTML table (every few layers)."""
    layers = story["layers"]
    att = story.get("attention") or {}
    span = att.get("span_share")
    user = att.get("user_share")
    keep = sorted(set(range(0, len(layers), max(1, len(layers) // 10))) | {len(layers) - 1})
    head = "<tr><th>layer</th><th>position (0 normal, 1 malicious)</th><th>lens refusal margin</th>" \
           "<th>attention on user tokens</th><th>attention on the request</th></tr>"
    rows = []
    for i in keep:
        a_user = _fmt(user[i - 1]) if user and i >= 1 else "-"
        a_span = _fmt(span[i - 1]) if span and i >= 1 else "-"
        rows.append(f"<tr><td>{layers[i]}</td><td>{_fmt(story['malicious_position'][i], 2)}</td>"
                    f"<td>{_fmt(story['refusal_margin'][i], 2)}</td><td>{a_user}</td><td>{a_span}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def examples_page(data: dict[str, Any]) -> str:
    """The worked-examples page: per example the guard's verdict, the model's answer, heat maps of the guard's
    logit and of the refusal margin, and the layer-by-layer story (every prompt token and answer escaped)."""
    parts = []
    for ex in data["examples"]:
        g = ex["guard"]
        verdict = (f"guard {g['kind']}: p = {_fmt(g['probability'])} (threshold {_fmt(g['threshold'])}), "
                   f"{'FLAGGED' if g['flagged'] else 'not flagged'}")
        answer = (f"model's answer ({'refused' if ex['refused'] else 'complied'}, phrase judge): {ex['answer']!r}"
                  if ex.get("answer") is not None else "")
        ga, ra = ex["guard_attribution"], ex["refusal_attribution"]
        g_note = ("guard logit, integrated gradients (red: toward malicious); relative completeness gap "
                  + _fmt(ga["relative_gap"]))
        r_note = ("refusal margin, integrated gradients (red: toward refusal); relative completeness gap "
                  + _fmt(ra["relative_gap"]))
        parts.append(
            f"<h2>{html.escape(ex['kind'])}</h2><p class=\"meta\">{html.escape(verdict)}</p>"
            + (f'<p class="meta">{html.escape(answer)}</p>' if answer else "")
            + f'<p class="meta">{html.escape(g_note)}</p>'
            + f'<div class="ihs-heat">{token_heatmap_html(ga["tokens"], ga["scores"], user=ga["user"])}</div>'
            + f'<p class="meta">{html.escape(r_note)}</p>'
            + f'<div class="ihs-heat">{token_heatmap_html(ra["tokens"], ra["scores"], user=ra["user"])}</div>'
            + f"<p>{html.escape(ex.get('story_text') or '')}</p>{_story_table(ex['story'])}")
    cmd = html.escape(data.get("command", ""))
    title = f"ihs explain: worked examples ({data.get('model', '')})"
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class=\"meta\"><code>{cmd}</code></p>"
            f"{''.join(parts)}</body></html>")


def plot_stories(data: dict[str, Any], out: str | Path, *, caption: str | None = None,
                 formats: Sequence[str] = ("png",)) -> list[Path]:
    """The worked examples' stories by layer: position on the malicious-vs-normal axis, lens refusal margin,
    the last token's attention on the request."""
    examples = data.get("examples") or []
    if not examples:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    cmap = plt.get_cmap("tab10")
    for k, ex in enumerate(examples):
        s = ex["story"]
        color = cmap(k % 10)
        pos = np.asarray([np.nan if v is None else v for v in s["malicious_position"]], dtype=float)
        axes[0].plot(s["layers"], pos, color=color, label=esc(ex["kind"]))
        axes[1].plot(s["layers"], s["refusal_margin"], color=color)
        span = (s.get("attention") or {}).get("span_share")
        if span:
            axes[2].plot(s["attention"]["layers"], span, color=color)
            axes[2].axhline(s["attention"]["span_fraction"], color=color, linestyle=":", linewidth=0.8)
    axes[0].set_title("position: 0 = normal mean, 1 = malicious mean", fontsize=9)
    axes[1].set_title("refusal margin through the logit lens", fontsize=9)
    axes[2].set_title("last token's attention on the request (dotted: its share of positions)", fontsize=9)
    for ax in axes:
        ax.set_xlabel(LAYER_LABEL, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.5, color="#999", linewidth=0.5)
    axes[1].axhline(0, color="#999", linewidth=0.5)
    axes[0].legend(fontsize=7)
    return save_figure(fig, Path(out), "explain_examples", caption, formats)


def _signed_curve(items: Sequence[dict[str, Any]], curve: str, order: str) -> np.ndarray | None:
    """Mean over prompts of direction * (value - empty) on the common grid, in the target's units."""
    ys = [np.interp(GRID, it["fractions"], it["direction"] * (np.asarray(it[curve][order]) - it["empty"]))
          for it in items if order in it[curve] and len(it["fractions"]) > 1]
    return np.mean(ys, axis=0) if ys else None


def plot_zoo_faithfulness(runs: dict[str, dict[str, list[dict[str, Any]]]], out: str | Path, *,
                          caption: str | None = None, formats: Sequence[str] = ("png",)) -> list[Path]:
    """One row per model, deletion and insertion columns: the mean signed curve (probe logit minus its value
    with every user token removed, signed so the full prompt is above 0) of each method's attribution order
    (integrated gradients, gradient x input) against random and bag-of-words orders.

    ``runs``: model -> method -> the faithfulness items of every explained prompt (the first method's random
    and bag-of-words curves are drawn; the methods explain the same prompts).
    """
    models = list(runs)
    if not models:
        return []
    fig, axes = plt.subplots(len(models), 2, figsize=(9, 2.9 * len(models)), squeeze=False)
    styles = {"ig": "#c0392b", "gxi": "#8e44ad"}
    for row, model in zip(axes, models, strict=True):
        for ax, curve in zip(row, ("deletion", "insertion"), strict=True):
            baseline_items = next(iter(runs[model].values()), [])
            for order in ("random", "bow"):
                y = _signed_curve(baseline_items, curve, order)
                if y is not None:
                    ax.plot(GRID, y, color=ORDER_COLORS[order], linestyle="--", label=order)
            for method, items in runs[model].items():
                y = _signed_curve(items, curve, "attribution")
                if y is not None:
                    ax.plot(GRID, y, color=styles.get(method, "#333"), label=f"{method} ({len(items)} prompts)")
            ax.axhline(0, color="#999", linewidth=0.5)
            ax.set_title(f"{esc(model)}: {curve} ({'lower' if curve == 'deletion' else 'higher'} is better)",
                         fontsize=9)
            ax.set_xlabel(f"share of user tokens {'removed' if curve == 'deletion' else 'restored'}", fontsize=8)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("signed probe logit - empty", fontsize=8)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(out), "explain_zoo_faithfulness", caption, formats)


def plot_zoo_cosines(cosines: dict[str, dict[str, Any]], out: str | Path, *, caption: str | None = None,
                     formats: Sequence[str] = ("png",)) -> list[Path]:
    """One panel per model: cosine by relative depth of the malicious-vs-normal direction with the emotion and
    two harm concept directions and with the refusal direction, and the shuffled-concept controls' 95% |cos|."""
    models = list(cosines)
    if not models:
        return []
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.5), squeeze=False)
    names = {"negative_emotion": "#2471a3", "positive_emotion": "#27ae60", "weapons": "#c0392b", "cyber": "#d68910"}
    for ax, model in zip(axes[0], models, strict=True):
        cos = cosines[model]
        layers = np.asarray(cos["layers"], dtype=float)
        depth = layers / max(layers.max(), 1)
        per = cos["controls"].get("malicious_vs_normal", {})
        for name, color in names.items():
            if name not in per:
                continue
            y = np.asarray([np.nan if v is None else v for v in per[name]["cosine"]], dtype=float)
            ax.plot(depth, y, color=color, label=name.replace("_", " "))
            if "shuffled" in per[name]:
                q = np.asarray([np.nan if v is None else v for v in per[name]["shuffled"]["q95_abs"]], dtype=float)
                ax.plot(depth, q, color=color, linestyle=":", linewidth=0.8)
        if "refusal" in cos["names"]:
            i, j = cos["names"].index("malicious_vs_normal"), cos["names"].index("refusal")
            y = [np.nan if r[i][j] is None else r[i][j] for r in cos["cosines"]]
            ax.plot(depth, y, color="black", linewidth=1.6, label="refusal direction")
        ax.axhline(0, color="#999", linewidth=0.5)
        ax.set_title(f"{esc(model)}: cosine with malicious - normal", fontsize=9)
        ax.set_xlabel("depth (layer / L)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cosine (dotted: shuffled-concept 95% |cos|)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, Path(out), "explain_zoo_cosines", caption, formats)
