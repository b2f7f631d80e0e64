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


# -- several runs side by side (scripts/align_claims.py) ---------------------------------------------------------

_COMPARE = (("asr_jailbreak", "ASR, held-out jailbreaks"), ("asr_malicious", "ASR, held-out malicious"),
            ("over_refusal", "over-refusal (contrast)"), ("perplexity", "perplexity, benign answers"),
            ("neg_peak_malicious", "peak negative share, malicious"), ("tkic_top1_malicious", "TKIC top-1, malicious"),
            ("acc_L4", "probe accuracy at L/4"), ("first_95", "first layer >= 0.95"))


def compare_figure(runs: dict[str, list[dict[str, Any]]], out: str | Path, caption: str | None = None) -> list[Path]:
    """``align_compare.png``: each measure over training steps, one line per run.

    ``runs`` maps a run name to its rows, each a dict with ``step`` and the keys of ``_COMPARE`` (None: missing).
    """
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.2))
    for ax, (key, title) in zip(axes.flat, _COMPARE, strict=True):
        for name, rows in runs.items():
            ax.plot([r["step"] for r in rows], [_nan(r.get(key)) for r in rows], "o-", ms=3, label=esc(name))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("alignment runs at equal steps and data, measured on held-out goals", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out), "align_compare", caption)


def claim2_figure(runs: dict[str, list[dict[str, Any]]], out: str | Path, caption: str | None = None) -> list[Path]:
    """``align_claim2.png``: negative-emotion share of malicious input per layer (x) and step (y), one panel per run.

    Rows need ``step``, ``layers`` and ``neg_malicious`` (one share per layer).
    """
    import numpy as np

    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.4), squeeze=False)
    image = None
    for ax, (name, rows) in zip(axes[0], runs.items(), strict=True):
        grid = np.array([[_nan(v) for v in r["neg_malicious"]] for r in rows])
        layers = rows[0]["layers"]
        image = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="Reds", origin="lower",
                          extent=(layers[0] - 0.5, layers[-1] + 0.5, -0.5, len(rows) - 0.5))
        ax.set_yticks(range(len(rows)), [str(r["step"]) for r in rows], fontsize=7)
        ax.set_title(esc(name), fontsize=9)
        ax.set_xlabel(LAYER_LABEL, fontsize=7)
        ax.set_ylabel("training step", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share with a negative token in the top-5")
    fig.suptitle("logit lens: malicious held-out inputs with a negative-emotion token in the top-5", fontsize=10)
    return save_figure(fig, Path(out), "align_claim2", caption)


def claim4_figure(points: list[dict[str, Any]], stat: dict[str, Any], out: str | Path,
                  caption: str | None = None) -> list[Path]:
    """``align_claim4.png``: TKIC top-1 on malicious input against 1 - ASR, one marker per checkpoint or model.

    ``points``: dicts with ``name``, ``group`` (run name or ``zoo``), ``tkic`` and ``harmless``; ``stat``:
    Spearman's rho with ``ci95`` and ``n``, written in the title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    markers = iter("osD^vP*X")
    for group, members in groups.items():
        ax.scatter([p["tkic"] for p in members], [p["harmless"] for p in members], marker=next(markers, "o"),
                   label=esc(group), s=36, alpha=0.85)
        for p in members:
            ax.annotate(esc(p.get("label", "")), (p["tkic"], p["harmless"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    ax.set_xlabel("TKIC top-1 on malicious input (middle third of depth)")
    ax.set_ylabel("1 - ASR on malicious input")
    ax.set_ylim(-0.05, 1.05)
    lo, hi = stat.get("ci95", [float("nan")] * 2)
    ax.set_title(f"Spearman rho {stat.get('rho', float('nan')):.2f} [{lo:.2f}, {hi:.2f}], n = {stat.get('n')}",
                 fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, Path(out), "align_claim4", caption)
