"""Figures of the logit-lens analyses: the Top-K Intermediate Consistency heatmap and the emotion trajectory.

Token text comes from the model's vocabulary and the prompts are adversarial by nature, so text is
drawn literally: mathtext is switched off on every text object (``parse_math=False``; otherwise
"$x$" would be typeset and a malformed "$\\frac$" would crash the figure), control characters and
edge spaces are made visible, and characters no installed font can draw are written as ``\\uXXXX``.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

EMOTION_COLORS = {"negative": "#c0392b", "positive": "#1e8449", "neutral": "#1f5fa8", None: "#222222"}
CLASS_COLORS = {"normal": "#1e8449", "malicious": "#c0392b", "jailbreak": "#8e44ad", "contrast": "#d68910"}
_FALLBACK_CLASS_COLORS = ["#2c3e50", "#16a085", "#7f8c8d", "#e67e22"]
CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Droid Sans Fallback", "Source Han Sans SC", "SimHei", "Microsoft YaHei", "PingFang SC", "Arial Unicode MS"]
LAYER_AXIS = "layer (0 = embedding output, i = output of block i)"
#: Unicode categories drawn as \\uXXXX: other spaces, separators, control, format, private, unassigned.
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cs", "Cn"})
_SHARE_CMAP = LinearSegmentedColormap.from_list("share", ["#ffffff", "#f3e3b5", "#e0b85c"])


def _literal_text(func):
    """Run a plotting function with mathtext and TeX off for every text object it creates."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        fonts_log = logging.getLogger("matplotlib.font_manager")
        level = fonts_log.level
        fonts_log.setLevel(logging.ERROR)  # a CJK fallback font without bold face is not worth a warning
        try:
            with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
                return func(*args, **kwargs)
        finally:
            fonts_log.setLevel(level)

    return wrapper


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[list[str], frozenset[int]]:
    """Font families to use (DejaVu Sans plus any installed CJK font) and the code points they cover."""
    from matplotlib import font_manager, ft2font

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    families = ["DejaVu Sans"] + [name for name in CJK_FONTS if name in installed]
    covered: set[int] = set()
    for name in families:
        try:
            path = installed.get(name) or font_manager.findfont(name, fallback_to_default=True)
            covered.update(ft2font.FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):
            continue
    return families, frozenset(covered)


def display_token(text: str | None, max_chars: int = 12) -> str:
    """How a decoded token is written in a figure: literal, with invisible parts made visible.

    Edge spaces become "␣", newlines "\\n", tabs "\\t"; other invisible characters (no-break and
    zero-width spaces, control and format characters) and characters no installed font can draw
    "\\uXXXX"; an empty token "∅", a missing one "·"; long tokens are cut with "…".
    """
    if text is None:
        return "·"
    if text == "":
        return "∅"
    _, covered = _fonts()
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch != " " and (unicodedata.category(ch) in _INVISIBLE or ord(ch) not in covered):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    shown = "".join(out)
    stripped = shown.strip(" ")
    lead = len(shown) - len(shown.lstrip(" "))
    trail = len(shown) - len(shown.rstrip(" "))
    shown = "␣" * lead + stripped + "␣" * trail if stripped else "␣" * len(shown)
    if len(shown) > max_chars:
        shown = shown[: max_chars - 1] + "…"
    return shown


@dataclass
class HeatmapPanel:
    """One class's TKIC lists over a layer range: rank down (k rows), layers across."""

    label: str
    layers: list[int]
    texts: list[list[str | None]]  # [rank][layer column]
    shares: np.ndarray  # (k, n_layers)
    emotions: list[list[str | None]]  # [rank][layer column]
    n: int


@_literal_text
def plot_consistency_heatmap(panels: Sequence[HeatmapPanel], path: str | Path, title: str = "") -> Path:
    """The paper-style TKIC heatmap (see :func:`draw_consistency_heatmap`), saved as a PNG."""
    fig = draw_consistency_heatmap(panels, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


@_literal_text
def draw_consistency_heatmap(panels: Sequence[HeatmapPanel], title: str = ""):
    """The paper-style TKIC heatmap as a Figure: one panel per class, layers across, rank down,
    cell colour = share of inputs (count / N), the token written in the cell, coloured by emotion."""
    families, _ = _fonts()
    n_cols = max(len(p.layers) for p in panels)
    k = max(p.shares.shape[0] for p in panels)
    fig_w = 1.6 + 0.82 * n_cols
    fig_h = 1.1 + len(panels) * (0.45 + 0.36 * k)
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, fig_h), squeeze=False)
    image = None
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(panel.shares, cmap=_SHARE_CMAP, vmin=0, vmax=1, aspect="auto")
        for r in range(panel.shares.shape[0]):
            for c in range(panel.shares.shape[1]):
                emotion = panel.emotions[r][c]
                ax.text(c, r, display_token(panel.texts[r][c], max_chars=11), ha="center", va="center", fontsize=7,
                        color=EMOTION_COLORS.get(emotion, "#222222"), fontweight="bold" if emotion else "normal",
                        parse_math=False, usetex=False, family=families)
        ax.set_xticks(range(len(panel.layers)), [str(x) for x in panel.layers], fontsize=7)
        ax.set_yticks(range(panel.shares.shape[0]), [str(r + 1) for r in range(panel.shares.shape[0])], fontsize=7)
        ax.set_ylabel("rank", fontsize=8)
        ax.set_title(f"{panel.label} (N = {panel.n})", fontsize=9, loc="left", parse_math=False)
        ax.set_xticks(np.arange(-0.5, len(panel.layers), 1), minor=True)
        ax.set_yticks(np.arange(-0.5, panel.shares.shape[0], 1), minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    axes[-1, 0].set_xlabel(LAYER_AXIS, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False, x=0.01, ha="left")
    handles = [Patch(color=EMOTION_COLORS[e], label=f"{e} token") for e in ("negative", "positive", "neutral")]
    handles.append(Patch(color=EMOTION_COLORS[None], label="no emotion class"))
    fig.legend(handles=handles, loc="lower center", fontsize=7, ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.035, 0.93, 0.97 if title else 1))
    if image is not None:
        cax = fig.add_axes((0.945, 0.1, 0.012, 0.75))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label("share of inputs (count / N)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig


def _class_color(label: str, index: int) -> str:
    return CLASS_COLORS.get(label, _FALLBACK_CLASS_COLORS[index % len(_FALLBACK_CLASS_COLORS)])


@_literal_text
def plot_emotion_trajectory(
    series: dict[str, dict[str, Sequence[float]]],
    layers: Sequence[int],
    path: str | Path,
    title: str = "",
    layer_range: tuple[int, int] | None = None,
    dashed: dict[str, dict[str, Sequence[float]]] | None = None,
    solid_name: str = "logit lens",
    dashed_name: str = "tuned lens",
    top: str = "top-k",
) -> Path:
    """Negative and positive shares across layers, one line per class (two panels).

    ``series[label][emotion]`` gives one share per entry of ``layers``. ``dashed`` (same shape)
    is drawn dashed on the same axes, e.g. the tuned lens beside the logit lens.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, emotion in zip(axes, ("negative", "positive"), strict=True):
        if layer_range is not None:
            ax.axvspan(layer_range[0] - 0.5, layer_range[1] + 0.5, color="#eeeeee", zorder=0,
                       label=f"TKIC layer range {layer_range[0]}-{layer_range[1]}")
        for i, (label, by_emotion) in enumerate(series.items()):
            color = _class_color(label, i)
            ax.plot(layers, by_emotion[emotion], color=color, lw=1.8, marker="o", ms=2.5,
                    label=f"{label} ({solid_name})" if dashed else label)
            if dashed and label in dashed:
                ax.plot(layers, dashed[label][emotion], color=color, lw=1.4, ls="--", label=f"{label} ({dashed_name})")
        ax.set_title(f"{emotion} token in {top}", fontsize=10, parse_math=False)
        ax.set_xlabel(LAYER_AXIS, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of inputs", fontsize=9)
    handles, names = axes[1].get_legend_handles_labels()
    ncol = min(len(names), 4)
    rows = -(-len(names) // ncol) if names else 0
    fig.legend(handles, names, loc="lower center", ncol=max(1, ncol), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.01, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


@_literal_text
def plot_kl_by_layer(kl: dict[str, Sequence[float]], layers: Sequence[int], path: str | Path, title: str = "") -> Path:
    """KL(final || lens at layer l) per layer, one line per lens (log scale).

    The last layer is left out: its KL to itself is 0 for every lens, which a log axis cannot show.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, values in kl.items():
        ax.plot(list(layers)[:-1], list(values)[:-1], marker="o", ms=3, label=name)
    ax.set_yscale("log")
    # plain numbers: the default log labels are mathtext, which is switched off here
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(LAYER_AXIS, fontsize=8)
    ax.set_ylabel("KL(final layer || lens) [nats]", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9, parse_math=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# -- the figures of one lens.json entry ----------------------------------------------------------------------

_EMOTIONS = ("negative", "positive", "neutral")


def heatmap_panels(result: dict[str, Any], layer_range: tuple[int, int],
                   classes: Sequence[str] | None = None) -> list[HeatmapPanel]:
    """One :class:`HeatmapPanel` per class (``classes``: which, in order; None: all) of one lens's result."""
    lo, hi = layer_range
    panels = []
    for label in classes or list(result["consistency"]):
        entry = result["consistency"].get(label)
        if entry is None:
            continue
        cols = [i for i, layer in enumerate(entry["layers"]) if lo <= layer <= hi]
        if not cols or not entry["n"]:
            continue
        k = len(entry["tokens"][0])
        panels.append(HeatmapPanel(
            label=label,
            layers=[entry["layers"][c] for c in cols],
            texts=[[entry["text"][c][r] for c in cols] for r in range(k)],
            shares=np.array([[entry["shares"][c][r] for c in cols] for r in range(k)], dtype=float),
            emotions=[[entry["emotion"][c][r] for c in cols] for r in range(k)],
            n=entry["n"],
        ))
    return panels


def trajectory_series(result: dict[str, Any], top: str = "topk",
                      classes: Sequence[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Emotion shares per class and layer of one lens's result, for :func:`plot_emotion_trajectory`."""
    table = result["association"]["classes"]
    return {label: {e: table[label][top][e]["share"] for e in _EMOTIONS}
            for label in (classes or list(table)) if label in table and table[label]["n"]}


def lens_figures(entry: dict[str, Any], out: str | Path, classes: Sequence[str] | None = None) -> list[Path]:
    """The figures of one model entry of ``lens.json`` into ``out``: ``lens_<store>_heatmap.png`` and
    ``lens_<store>_trajectory.png``, and with a tuned lens ``lens_<store>_tuned_{heatmap,trajectory,kl}.png``."""
    out = Path(out)
    name = entry["store_name"]
    model = entry["model"].get("name") or entry["model"].get("id") or name
    logit = entry["lenses"]["logit"]
    layer_range = tuple(logit["layer_range"])
    lo, hi = heat_range = tuple(entry.get("heatmap_layers") or layer_range)
    k = entry["k"]
    written = []
    panels = heatmap_panels(logit, heat_range, classes)
    if panels:
        written.append(plot_consistency_heatmap(panels, out / f"lens_{name}_heatmap.png",
                                                f"{model}: logit-lens top-{k} consistency, layers {lo}-{hi}"))
    tuned = entry["lenses"].get("tuned")
    layers = logit["association"]["layers"]
    written.append(plot_emotion_trajectory(
        trajectory_series(logit, classes=classes), layers, out / f"lens_{name}_trajectory.png",
        f"{model}: emotion tokens in the logit-lens top-{k} per layer", layer_range=layer_range, top=f"top-{k}"))
    if tuned:
        written.append(plot_emotion_trajectory(
            trajectory_series(logit, classes=classes), layers, out / f"lens_{name}_tuned_trajectory.png",
            f"{model}: emotion tokens in the top-{k} per layer, logit vs tuned lens", layer_range=layer_range,
            dashed=trajectory_series(tuned, classes=classes), top=f"top-{k}"))
        panels = heatmap_panels(tuned, heat_range, classes)
        if panels:
            written.append(plot_consistency_heatmap(panels, out / f"lens_{name}_tuned_heatmap.png",
                                                    f"{model}: tuned-lens top-{k} consistency, layers {lo}-{hi}"))
        kl = entry["tuned_lens"]["store_kl"]
        written.append(plot_kl_by_layer({"logit lens": kl["logit"], "tuned lens": kl["tuned"]}, layers,
                                        out / f"lens_{name}_tuned_kl.png",
                                        f"{model}: KL to the final layer, store's last positions"))
    return written
