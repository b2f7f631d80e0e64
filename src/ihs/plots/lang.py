"""Figures for ``lang.json`` (``ihs lang``): per-language accuracy, cross-lingual transfer, lens by language.

Only reads the result dict; one row of panels per model. Language codes and store names come from
users, so they are drawn with math text off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ihs.plots.style import LAYER_LABEL, esc, save_figure  # noqa: E402

_COLOURS = {"en": "black", "zh": "tab:red", "es": "tab:orange", "fr": "tab:blue", "sw": "tab:green",
            "bn": "tab:purple"}


def _colour(g: str, i: int) -> str:
    return _COLOURS.get(g, f"C{i % 10}")


def _axes(nrows: int, ncols: int, width: float = 4.6, height: float = 3.3):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def _style(ax: Any, title: str, ylabel: str, ylim: tuple[float, float] | None = (0.4, 1.02)) -> None:
    ax.set_title(esc(title), fontsize=9)
    ax.set_xlabel(LAYER_LABEL, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def plot_cv(results: list[dict[str, Any]], out: Path, clf: str, caption: str | None,
            formats: Sequence[str]) -> list[Path]:
    """Per-language k-fold accuracy by layer (band: Wilson 95%), one panel per model."""
    fig, axes = _axes(1, len(results))
    for ax, res in zip(axes[0], results, strict=True):
        cv = res["cv"][clf]
        for i, (g, e) in enumerate(cv["groups"].items()):
            if "accuracy" not in e:
                continue
            ax.plot(cv["layers"], e["accuracy"], color=_colour(g, i), lw=1.4, label=esc(g))
            ax.fill_between(cv["layers"], e["ci_low"], e["ci_high"], color=_colour(g, i), alpha=0.12, lw=0)
            if e.get("control_accuracy"):
                ax.plot(cv["layers"], e["control_accuracy"], color=_colour(g, i), lw=0.6, ls=":")
        ax.axhline(0.95, color="0.5", lw=0.6, ls="--")
        _style(ax, f"{res['name']}: {clf} {cv['folds']}-fold CV within each language", "accuracy")
        ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.suptitle("Normal vs malicious, per language (dotted: shuffled-label control; dashed: 0.95)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, "lang_cv", caption, formats)


def plot_transfer(results: list[dict[str, Any]], out: Path, clf: str, caption: str | None,
                  formats: Sequence[str]) -> list[Path]:
    """Two rows: source -> each language, each language -> source; one column per model."""
    fig, axes = _axes(2, len(results))
    for col, res in enumerate(results):
        tr = res["transfer"][clf]
        for row, direction in enumerate(("forward", "reverse")):
            ax = axes[row][col]
            for i, (g, e) in enumerate(tr[direction].items()):
                ax.plot(tr["layers"], e["accuracy"], color=_colour(g, i + 1), lw=1.4, label=esc(g))
                ax.fill_between(tr["layers"], e["ci_low"], e["ci_high"], color=_colour(g, i + 1), alpha=0.12, lw=0)
                if e.get("control_accuracy"):
                    ax.plot(tr["layers"], e["control_accuracy"], color=_colour(g, i + 1), lw=0.6, ls=":")
            ax.axhline(0.95, color="0.5", lw=0.6, ls="--")
            what = (f"train {tr['source']}, test each language" if direction == "forward"
                    else f"train each language, test {tr['source']}")
            _style(ax, f"{res['name']}: {what}", "transfer accuracy", (0.3, 1.02))
            ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.suptitle(f"Cross-lingual transfer of the {clf} probe (dotted: trained on shuffled labels)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, "lang_transfer", caption, formats)


def plot_lens(results: list[dict[str, Any]], out: Path, caption: str | None, formats: Sequence[str]) -> list[Path]:
    """Row 1: negative-token share, malicious minus normal, per language; row 2: share of the malicious
    prompts' top-k tokens written in the prompt's own script."""
    with_lens = [r for r in results if r.get("lens")]
    if not with_lens:
        return []
    fig, axes = _axes(2, len(with_lens))
    for col, res in enumerate(with_lens):
        lens = res["lens"]
        mid = res["middle_layers"]
        for i, (g, e) in enumerate(lens["groups"].items()):
            m, n = e["classes"].get("malicious"), e["classes"].get("normal")
            if not (m and n):
                continue
            diff = [a - b for a, b in zip(m["negative_topk"], n["negative_topk"], strict=True)]
            axes[0][col].plot(lens["layers"], diff, color=_colour(g, i), lw=1.3, label=esc(g))
            want = e.get("expected_script")
            if want:
                own = m["script_share"].get(want, [0.0] * len(lens["layers"]))
                axes[1][col].plot(lens["layers"], own, color=_colour(g, i), lw=1.3, label=esc(f"{g} ({want})"))
        for ax in axes[:, col]:
            ax.axvspan(min(mid), max(mid), color="0.9", zorder=0)
        axes[0][col].axhline(0, color="0.5", lw=0.6)
        _style(axes[0][col], f"{res['name']}: negative token in top-{lens['k']} (malicious - normal)",
               "difference in share of prompts", None)
        _style(axes[1][col], f"{res['name']}: malicious prompts' top-{lens['k']} tokens in own script",
               "share of decoded tokens", (-0.02, 1.02))
        axes[0][col].legend(fontsize=7, ncol=3)
        axes[1][col].legend(fontsize=7, ncol=2)
    fig.suptitle("Logit lens by language (grey band: middle third; ihs emotion lexicon: English words and a few "
                 "Chinese ones)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, "lang_lens", caption, formats)


def plot_refusal(refusal: dict[str, dict[str, Any]], out: Path, caption: str | None,
                 formats: Sequence[str]) -> list[Path]:
    """Refusal rate of malicious prompts per language (bars, Wilson 95%), one group of bars per model;
    hatched: what an English-only phrase list catches."""
    if not refusal:
        return []
    models = list(refusal)
    langs = list(dict.fromkeys(g for r in refusal.values() for g in r["groups"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(langs) * len(models)), 3.4))
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        xs, ys, los, his, eng = [], [], [], [], []
        for i, g in enumerate(langs):
            e = refusal[model]["groups"].get(g, {}).get("malicious")
            if not e:
                continue
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(e["refusal_rate"])
            los.append(e["refusal_rate"] - e["refusal_ci95"][0])
            his.append(e["refusal_ci95"][1] - e["refusal_rate"])
            eng.append(e["refused_english_phrases"] / e["n"])
        ax.bar(xs, ys, width * 0.95, yerr=[los, his], capsize=2, color=f"C{j}", alpha=0.8, label=esc(model))
        ax.bar(xs, eng, width * 0.95, fill=False, hatch="///", edgecolor="0.2", lw=0)
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([esc(g) for g in langs])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("refusal rate, malicious prompts", fontsize=8)
    ax.set_title("Refusal per language (phrase judge, all languages; hatched: English phrases only)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out, "lang_refusal", caption, formats)
