"""Figures of an alignment run's tracked measures over training steps (``align_track.json`` rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ihs.plots.style import LAYER_LABEL, esc, plt, save_figure


def _steps(rows: list[dict[str, Any]]) -> list[int]:
    return [r["step"] for r in rows]


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _probe_figure(data: dict[str, Any], out: Path, caption: str | None) -> list[Path]:
    rows = data["rows"]
    steps = _steps(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    acc = [_nan(r["probe"]["acc_L4"]) for r in rows]
    lo = [_nan(r["probe"]["acc_L4_ci"][0]) for r in rows]
    hi = [_nan(r["probe"]["acc_L4_ci"][1]) for r in rows]
    ax1.plot(steps, acc, "o-", label=f"accuracy at L/4 (layer {rows[0]['probe']['layer_L4']})")
    ax1.fill_between(steps, lo, hi, alpha=0.2)
    ax1.plot(steps, [_nan(r["probe"]["control_L4"]) for r in rows], "s--", color="0.5", label="shuffled-label control")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("normal vs malicious accuracy")
    ax1.set_ylim(0.3, 1.02)
    ax1.legend(fontsize=8)
    ax2.plot(steps, [_nan(r["probe"]["first_95"]) for r in rows], "o-")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("first layer with accuracy >= 0.95")
    fig.suptitle(esc(f"probe ({rows[0]['probe']['classifier']}) on held-out goals"), fontsize=10)
    return save_figure(fig, out, "align_probe", caption)


def _lens_figure(data: dict[str, Any], out: Path, caption: str | None) -> list[Path]:
    rows = data["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(rows):
        color = cmap(i / max(len(rows) - 1, 1))
        layers = r["lens"]["layers"]
        for ax, label in zip(axes, ("malicious", "normal"), strict=True):
            share = r["lens"]["share"]["negative"].get(label)
            if share is not None:
                ax.plot(layers, [_nan(v) for v in share], color=color, label=f"step {r['step']}")
    for ax, label in zip(axes, ("malicious", "normal"), strict=True):
        ax.set_title(f"{label} input", fontsize=9)
        ax.set_xlabel(LAYER_LABEL, fontsize=8)
    axes[0].set_ylabel("share of inputs with a negative\nemotion token in the lens top-k")
    axes[0].legend(fontsize=7)
    fig.suptitle("logit lens: negative-emotion share per layer over training", fontsize=10)
    return save_figure(fig, out, "align_lens", caption)


def _behaviour_figure(data: dict[str, Any], out: Path, caption: str | None) -> list[Path]:
    rows = data["rows"]
    steps = _steps(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    series = {"ASR malicious": [r["generate"]["asr"].get("malicious") for r in rows],
              "ASR jailbreak": [r["generate"]["asr"].get("jailbreak") for r in rows],
              "over-refusal (contrast)": [r["generate"]["refusal"].get("contrast") for r in rows],
              "refusal normal": [r["generate"]["refusal"].get("normal") for r in rows],
              "TKIC top-1 malicious": [r["lens"]["tkic_top1"].get("malicious") for r in rows]}
    for name, values in series.items():
        ax1.plot(steps, [_nan(v) for v in values], "o-", label=name)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("rate")
    ax1.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=7)
    ppl = [_nan((r.get("perplexity") or {}).get("perplexity")) for r in rows]
    ax2.plot(steps, ppl, "o-")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("perplexity of benign reference answers")
    fig.suptitle("behaviour on held-out goals over training", fontsize=10)
    return save_figure(fig, out, "align_behaviour", caption)


def track_figures(data: dict[str, Any], out: str | Path) -> list[Path]:
    """Write align_probe.png, align_lens.png and align_behaviour.png for a tracked run into ``out``."""
    out = Path(out)
    caption = data.get("command")
    return _probe_figure(data, out, caption) + _lens_figure(data, out, caption) + _behaviour_figure(data, out, caption)
