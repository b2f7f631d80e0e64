"""Figures for generation, grafting and jailbreak analysis; they only read the saved result dicts.

* :func:`plot_graft`: ASR by grafted layer with its 95% band, the no-graft baseline and the real
  jailbreak ASR as horizontal lines; with a reverse graft, a second panel of the refusal rate of
  benign targets by layer.
* :func:`plot_refusal`: refusal rate per class and per jailbreak family.
* :func:`plot_jailbreak`: per layer, the negative / positive lens shares and the probe's
  "malicious" share for normal, malicious, and refused vs complied jailbreak inputs; and the
  middle-layer negative share of refused vs complied jailbreak inputs.

Labels come from users and prompt sets, so they are drawn with math text escaped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ihs.plots.style import esc, save_figure  # noqa: E402

LAYER_LABEL = "grafted layer (0 = embedding output, i = output of block i)"


def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path.parent, path.stem, formats=(path.suffix.lstrip(".") or "png",))[0]


def _panel(ax: Any, sweep: dict[str, Any], metric: str, title: str, reference_label: str | None) -> None:
    layers = [e["layer"] for e in sweep["layers"]]
    values = [e[metric] for e in sweep["layers"]]
    ci = "asr_ci95" if metric == "asr" else "refusal_ci95"
    lo = [e[ci][0] for e in sweep["layers"]]
    hi = [e[ci][1] for e in sweep["layers"]]
    donor = "one donor per target" if sweep.get("per_pair") else f"mean of {sweep['n_donors']} donors"
    ax.plot(layers, values, "o-", color="C3", label=f"grafted, {donor} (n={sweep['n_targets']} targets)")
    ax.fill_between(layers, lo, hi, color="C3", alpha=0.15, lw=0)
    ax.axhline(sweep["baseline"][metric], color="0.3", ls="--", label=f"no graft: {sweep['baseline'][metric]:.2f}")
    ref = sweep.get("reference")
    if ref and reference_label:
        ax.axhline(ref[metric], color="C0", ls=":", lw=2,
                   label=f"{esc(reference_label)} (n={ref['n']}): {ref[metric]:.2f}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(LAYER_LABEL)
    ax.set_ylabel("attack success rate (1 - refusal rate)" if metric == "asr" else "refusal rate")
    ax.set_title(esc(title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_graft(result: dict[str, Any], path: str | Path) -> Path:
    """ASR by grafted layer (forward graft) and, when present, refusal by layer (reverse graft)."""
    reverse = result.get("reverse")
    fig, axes = plt.subplots(1, 2 if reverse else 1, figsize=(12 if reverse else 6.5, 4.2), squeeze=False)
    model = result.get("model", "")
    fwd = result["forward"]
    donors = "+".join(fwd["donor_labels"])
    targets = "+".join(fwd["target_labels"])
    _panel(axes[0, 0], fwd, "asr", f"{model}: {donors} state grafted into {targets} prompts", "real jailbreaks")
    if reverse:
        _panel(axes[0, 1], reverse, "refusal_rate",
               f"reverse: {'+'.join(reverse['donor_labels'])} state into {'+'.join(reverse['target_labels'])} prompts",
               None)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_refusal(summary: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Horizontal bars: refusal rate (95% Wilson interval) per class, then per jailbreak family."""
    items = [(label, v) for label, v in summary["per_class"].items()]
    items += [(f"  {fam}", v) for fam, v in sorted(summary["per_family"].items(), key=lambda kv: kv[1]["refusal_rate"])]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(items) + 1.2))
    ys = list(range(len(items)))[::-1]
    for y, (name, v) in zip(ys, items, strict=True):
        is_family = name.startswith("  ")
        rate = v["refusal_rate"]
        lo, hi = v["refusal_ci95"]
        ax.barh(y, rate, color="C1" if is_family else "C0", alpha=0.8)
        ax.plot([lo, hi], [y, y], color="0.2", lw=1)
        ax.text(min(max(rate, hi) + 0.01, 0.88), y, f"{rate:.2f} (n={v['n']})", va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([esc(n) for n, _ in items], fontsize=8)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("refusal rate (bars: classes in blue, jailbreak families in orange; lines: 95% CI)")
    ax.set_title(esc(title), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_jailbreak(analysis: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Three panels: probe 'malicious' share, lens negative share by layer, middle-layer negative share."""
    groups = analysis["groups"]
    names = [n for n in groups if not n.endswith("(all)") and groups[n]["n"]]
    names = [n for n in names if "malicious" not in n or n == "malicious"]
    layers = analysis["layers"]
    lo, hi = analysis["middle"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, name in enumerate(names):
        g = groups[name]
        axes[0].plot(layers, g["predicted_malicious_by_layer"], "-", color=f"C{i}", label=f"{esc(name)} (n={g['n']})")
        axes[1].plot(layers, g["negative_by_layer"], "-", color=f"C{i}", label=f"{esc(name)} negative")
        axes[1].plot(layers, g["positive_by_layer"], ":", color=f"C{i}", alpha=0.7)
    axes[0].axvline(analysis["early_layer"], color="0.5", ls="--", lw=1)
    axes[0].set_title("probe (normal vs malicious) applied per layer", fontsize=10)
    axes[0].set_ylabel("share predicted malicious")
    axes[1].axvspan(lo, hi, color="0.85", alpha=0.5, lw=0)
    axes[1].set_title("logit-lens top-k holds a negative (solid) / positive (dotted) token", fontsize=10)
    axes[1].set_ylabel("share of inputs")
    for ax in axes[:2]:
        ax.set_xlabel("layer (0 = embedding output, i = output of block i)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    bars = [n for n in groups if groups[n]["n"] and not n.endswith("(all)")]
    means = [groups[n]["mid_negative_share"]["mean"] for n in bars]
    errs = [[m - (groups[n]["mid_negative_share"]["ci95"][0] or m) for n, m in zip(bars, means, strict=True)],
            [(groups[n]["mid_negative_share"]["ci95"][1] or m) - m for n, m in zip(bars, means, strict=True)]]
    axes[2].bar(range(len(bars)), means, yerr=errs, color=[f"C{i % 10}" for i in range(len(bars))], alpha=0.8, capsize=3)
    axes[2].set_xticks(range(len(bars)))
    axes[2].set_xticklabels([f"{esc(n)}\n(n={groups[n]['n']})" for n in bars], fontsize=7, rotation=20)
    axes[2].set_ylabel(f"middle-layer negative share (layers {lo}..{hi})")
    axes[2].set_title("mean share of middle layers with a negative top-k token (95% CI)", fontsize=10)
    axes[2].grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(esc(title), fontsize=11)
    fig.tight_layout()
    return _save(fig, Path(path))
