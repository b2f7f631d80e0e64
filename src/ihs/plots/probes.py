"""Figures for ``probe.json``: accuracy by layer (one panel per classifier), transfer, confusion.

Plotting only reads the result dict written by ``ihs.analysis.probes``; nothing is computed here,
so a figure can be redrawn from a saved ``probe.json`` without refitting anything.
Store names and class labels come from users: they are drawn with math text off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ihs.plots.style import DEPTH_LABEL, LAYER_LABEL, esc, save_figure  # noqa: E402,F401

FORMATS = ("png", "svg")


def _normalise(stores: list[dict[str, Any]]) -> bool:
    """Depth axis (layer / L) only when the stores differ in depth; else plain layer indices."""
    return len({e["num_layers"] for e in stores}) > 1


def _layer_axis(ax: Any, normalised: bool) -> None:
    ax.set_xlabel(DEPTH_LABEL if normalised else LAYER_LABEL, fontsize=8)
    if not normalised:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _x(entry: dict[str, Any], normalised: bool) -> list[float]:
    return entry["depth"] if normalised else entry["layers"]


def _panels(n: int, width: float = 5.0, height: float = 3.8):
    """One panel per classifier, at most two per row; returns the figure and the n axes in order."""
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.5), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def plot_accuracy(result: dict[str, Any], out: str | Path, stem: str = "probe_accuracy", caption: str | None = None,
                  normalised: bool | None = None, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Accuracy by layer, one panel per classifier, one colour per store: the paper's figure plus
    the 95% interval (band), the shuffled-label control (dashed), the bag-of-words baseline (flat
    dotted line) and the 0.95 target. Several stores are put on one depth axis (layer / L)."""
    stores = result["stores"]
    classifiers = result["classifiers"]
    normalised = _normalise(stores) if normalised is None else normalised
    fig, axes = _panels(len(classifiers))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    folds = result.get("folds")
    ylabel = f"accuracy ({folds}-fold CV)" if result.get("mode") == "cv" else "accuracy (70/30 split)"
    for ax, clf in zip(axes, classifiers, strict=True):
        for i, entry in enumerate(stores):
            c = colours[i % len(colours)]
            res = entry["classifiers"].get(clf)
            if res is None:
                continue
            x = _x(entry, normalised)
            ax.plot(x, res["accuracy"], color=c, lw=1.8, marker="o", ms=2.5, label=esc(entry["name"]))
            ax.fill_between(x, res["ci_low"], res["ci_high"], color=c, alpha=0.18, lw=0)
            if res.get("control_accuracy") is not None:
                ax.plot(x, res["control_accuracy"], color=c, lw=1, ls="--", alpha=0.8,
                        label="shuffled-label control" if i == 0 else None)
            bow = entry.get("bow")
            if bow:
                ax.axhline(bow["accuracy"], color=c, lw=1, ls=":", label="bag-of-words baseline" if i == 0 else None)
        ax.axhline(result.get("target", 0.95), color="0.5", lw=0.8, ls="-.", label="0.95")
        ax.set_ylim(0.3, 1.02)
        _layer_axis(ax, normalised)
        ax.set_ylabel(ylabel)
        ax.set_title(clf)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    mode = "stratified k-fold on de-duplicated prompts" if result.get("mode") == "cv" else "paper protocol (70/30 split)"
    fig.suptitle(f"Weak-to-strong probes: accuracy by layer ({mode}); band = {result.get('ci', '95% CI')}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out), stem, caption, formats)


def plot_transfer(result: dict[str, Any], out: str | Path, stem: str = "probe_transfer", caption: str | None = None,
                  normalised: bool | None = None, formats: Sequence[str] = FORMATS) -> list[Path] | None:
    """Per classifier: share of jailbreak prompts called malicious (solid) and of contrast prompts
    called malicious, i.e. the false-positive rate (dashed); and a second row with cross-dataset
    transfer accuracy (train on one store, test on another) when there is any. None if nothing to draw."""
    stores = result["stores"]
    classifiers = result["classifiers"]
    cross = result.get("cross_transfer") or []
    has_sets = any(e.get("sets") for e in stores)
    if not has_sets and not cross:
        return None
    normalised = _normalise(stores) if normalised is None else normalised
    rows = int(has_sets) + int(bool(cross))
    k = len(classifiers)
    fig, flat = _panels(k * rows)
    axes = [flat[i * k:(i + 1) * k] for i in range(rows)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    r = 0
    if has_sets:
        for ax, clf in zip(axes[r], classifiers, strict=True):
            for i, entry in enumerate(stores):
                res = entry["classifiers"].get(clf, {})
                c = colours[i % len(colours)]
                x = _x(entry, normalised)
                if res.get("jailbreak_called_malicious") is not None:
                    ax.plot(x, res["jailbreak_called_malicious"], color=c, lw=1.8,
                            label=f"{esc(entry['name'])}: jailbreak called malicious")
                if res.get("contrast_fpr") is not None:
                    ax.plot(x, res["contrast_fpr"], color=c, lw=1.2, ls="--",
                            label=f"{esc(entry['name'])}: contrast called malicious (FPR)")
                for lab, s in entry.get("sets", {}).items():
                    if lab in ("jailbreak", "contrast"):
                        continue
                    share = s["classifiers"].get(clf, {}).get("share", {})
                    pos = entry.get("positive")
                    if pos in share:
                        ax.plot(x, share[pos], color=c, lw=1, ls="-.", label=f"{esc(entry['name'])}: {esc(lab)} "
                                f"called {esc(pos)}")
            ax.set_ylim(-0.02, 1.02)
            _layer_axis(ax, normalised)
            ax.set_ylabel("share called malicious")
            ax.set_title(f"{clf}: probe trained on normal vs malicious", fontsize=9)
            ax.grid(alpha=0.3)
        axes[r][0].legend(fontsize=6, loc="best")
        r += 1
    if cross:
        for ax, clf in zip(axes[r], classifiers, strict=True):
            for i, t in enumerate(cross):
                res = t["classifiers"].get(clf)
                if res is None:
                    continue
                c = colours[i % len(colours)]
                x = t["depth"] if normalised else t["layers"]
                ax.plot(x, res["accuracy"], color=c, lw=1.6, label=f"{esc(t['train'])} -> {esc(t['test'])}")
                ax.fill_between(x, res["ci_low"], res["ci_high"], color=c, alpha=0.15, lw=0)
            ax.axhline(result.get("target", 0.95), color="0.5", lw=0.8, ls="-.")
            ax.set_ylim(0.3, 1.02)
            _layer_axis(ax, normalised)
            ax.set_ylabel("accuracy on the other store")
            ax.set_title(f"{clf}: cross-dataset transfer", fontsize=9)
            ax.grid(alpha=0.3)
        axes[r][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, Path(out), stem, caption, formats)


def plot_confusion(result: dict[str, Any], out: str | Path, stem: str = "probe_confusion", caption: str | None = None,
                   classifier: str | None = None, layers: Sequence[int] | None = None,
                   formats: Sequence[str] = FORMATS) -> list[Path] | None:
    """Row-normalised confusion matrices at a few layers for stores with more than two classes."""
    multi = [e for e in result["stores"] if len(e["classes"]) > 2]
    if not multi:
        return None
    clf = classifier or result["classifiers"][0]
    fig, axes = None, None
    picks_all = []
    for entry in multi:
        ls = entry["layers"]
        res = entry["classifiers"][clf]
        wanted = list(layers) if layers else sorted({ls[0], res.get("first_layer_95") or ls[len(ls) // 4],
                                                      ls[len(ls) // 2], ls[-1]})
        picks_all.append([v for v in wanted if v in ls])
    cols = max(len(p) for p in picks_all)
    fig, axes = plt.subplots(len(multi), cols, figsize=(3.2 * cols, 3.0 * len(multi) + 0.5), squeeze=False)
    for row, (entry, picks) in enumerate(zip(multi, picks_all, strict=True)):
        res = entry["classifiers"][clf]
        names = [esc(c) for c in entry["classes"]]
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(picks):
                ax.axis("off")
                continue
            layer = picks[col]
            cm = res["confusion"][entry["layers"].index(layer)]
            norm = [[v / max(1, sum(r)) for v in r] for r in cm]
            ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
            for i, r in enumerate(cm):
                for j, v in enumerate(r):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                            color="white" if norm[i][j] > 0.5 else "black")
            ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_title(f"{esc(entry['name'])}, layer {layer}", fontsize=8)
            if col == 0:
                ax.set_ylabel("true")
            ax.set_xlabel("predicted", fontsize=7)
    fig.suptitle(f"{clf}: confusion matrices (pooled out-of-fold predictions)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out), stem, caption, formats)


def plot_all(result: dict[str, Any], out: str | Path, caption: str | None = None,
             formats: Sequence[str] = FORMATS) -> list[Path]:
    """Every figure that applies to this result; returns the files written."""
    paths = plot_accuracy(result, out, caption=caption, formats=formats)
    for fn in (plot_transfer, plot_confusion):
        more = fn(result, out, caption=caption, formats=formats)
        if more:
            paths.extend(more)
    return paths
