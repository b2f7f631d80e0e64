"""The adversarial-training figure, drawn from a rounds summary (``attack.json``) only.

``attack_rounds.png``, three panels over rounds (round 0 is the base model, shared by both arms):
held-out ASR with Wilson 95% intervals per arm, with the base model's defenses (steer if flagged,
refuse when flagged) as markers at round 0; over-refusal on contrast and wrapped benign prompts;
the middle-layer negative share of complied and refused attacks and of the benign prompts the model
refused, with bootstrap 95% intervals.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ihs.plots.style import esc, save_figure  # noqa: E402

ARM_STYLE = {"targeted": ("C0", "o-"), "random": ("C1", "s--")}


def _series(data: dict[str, Any], arm: str) -> list[tuple[int, dict[str, Any]]]:
    base = [(0, data["base"]["eval"])] if data.get("base") else []
    return base + [(r["round"], r["eval"]) for r in data.get("arms", {}).get(arm, [])]


def _band(ax: Any, xs: list[float], values: list[dict[str, Any]], fmt: str, color: str, label: str,
          value: str = "rate", **style: Any) -> None:
    ys = [v[value] for v in values]
    lo = [v[value] - v["ci95"][0] if v[value] is not None else 0 for v in values]
    hi = [v["ci95"][1] - v[value] if v[value] is not None else 0 for v in values]
    ys = [float("nan") if y is None else y for y in ys]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt=fmt, color=color, capsize=3, ms=5, label=label, **style)


def rounds_figure(data: dict[str, Any], out: str | Path, caption: str | None = None) -> list[Path]:
    """Write ``out/attack_rounds.png`` for a rounds summary (see the module docstring)."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    arms = [a for a in ARM_STYLE if data.get("arms", {}).get(a)]
    for j, arm in enumerate(arms):
        color, fmt = ARM_STYLE[arm]
        pts = _series(data, arm)
        xs = [k + (j - 0.5) * 0.08 for k, _ in pts]
        _band(ax1, xs, [ev["asr"] for _, ev in pts], fmt, color, f"{arm} arm")
        for kind, style in (("contrast", {}), ("wrapped", {"mfc": "white", "alpha": 0.55})):
            _band(ax2, xs, [ev["over_refusal"][kind] for _, ev in pts], fmt, color, f"{arm}, {kind}", **style)
        for kind, shade, name in (("refused", "C3", "refused attacks"), ("complied", "C2", "complied attacks"),
                                  ("benign_refused", "0.45", "refused benign")):
            vals = [ev["mid_negative"].get(kind) or {"n": 0} for _, ev in pts]
            keep = [(x, v) for x, v in zip(xs, vals, strict=True) if v["n"]]
            if keep:
                _band(ax3, [x for x, _ in keep], [v for _, v in keep], fmt, shade, f"{name}, {arm}", value="mean")
    if data.get("base"):
        defense = (data["base"].get("defense") or {}).get("variants", {})
        for name, marker, color, x in (("steer_if_flagged", "^", "C4", -0.3), ("refuse_when_flagged", "D", "C3", -0.2)):
            if name in defense:
                v = defense[name]
                ax1.plot([x], [v["asr"]["rate"]], marker, color=color, ms=8, ls="none",
                         label=f"base + {name.replace('_', ' ')}")
                ax2.plot([x], [v["over_refusal_contrast"]["rate"]], marker, color=color, ms=8, ls="none",
                         label=f"base + {name.replace('_', ' ')}, contrast")
    rounds = sorted({k for arm in arms for k, _ in _series(data, arm)} | {0})
    for ax, title, ylabel in ((ax1, "held-out attacks", "ASR (Wilson 95%)"),
                              (ax2, "benign prompts", "over-refusal (Wilson 95%)"),
                              (ax3, "middle-layer negative share", "share of middle layers with a negative\ntoken in the lens top-k (bootstrap 95%)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round (0 = base model)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle(esc(f"adversarial rounds: {data.get('model', '')}"), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out), "attack_rounds", caption and textwrap.fill(caption, 170))
