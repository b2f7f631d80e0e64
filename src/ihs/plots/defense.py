"""The defense's trade-off figure and table, drawn from ``defense.json`` only.

x: over-refusal, the refusal rate on benign prompts (normal + contrast); y: attack success rate on
jailbreak prompts (left) and plain malicious prompts (right). Conditional settings of one layer
range are joined in order of alpha; unconditional steering, the undefended model and the
refuse-when-flagged baseline are separate markers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ihs.plots.style import esc  # noqa: E402


def _cls(v: dict[str, Any], label: str, key: str) -> float | None:
    c = v["per_class"].get(label)
    return None if c is None else c[key]


def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _span(layers: list[int]) -> str:
    return f"{layers[0]}:{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else ",".join(map(str, layers))


def plot_tradeoff(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    variants = result["variants"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharex=True)
    for ax, label in zip(axes, ("jailbreak", "malicious"), strict=True):
        if not any(label in v["per_class"] for v in variants):
            ax.set_visible(False)
            continue
        groups: dict[str, list[dict[str, Any]]] = {}
        for v in variants:
            if v["mode"] in ("conditional", "always"):
                groups.setdefault(f"{v['mode']} {_span(v['layers'])}", []).append(v)
        for i, (name, vs) in enumerate(sorted(groups.items())):
            vs = sorted(vs, key=lambda v: v["alpha"])
            xs = [v["refusal_benign"] for v in vs]
            ys = [_cls(v, label, "asr") for v in vs]
            cond = name.startswith("conditional")
            ax.plot(xs, ys, "o-" if cond else "s--", color=f"C{i % 10}", alpha=0.9 if cond else 0.6,
                    label=f"{'steer if flagged' if cond else 'always steer'}, layers {name.split()[1]}")
            for v, x, y in zip(vs, xs, ys, strict=True):
                ax.annotate(f"{v['alpha']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for v, marker, color, text in ((variants[0], "*", "k", "undefended"), (variants[1], "D", "C3", "refuse if flagged")):
            ax.plot([v["refusal_benign"]], [_cls(v, label, "asr")], marker, color=color, ms=11 if marker == "*" else 8,
                    label=text, ls="none")
        n = variants[0]["per_class"][label]["n"]
        ax.set_title(f"{label} prompts (n={n})", fontsize=10)
        ax.set_xlabel("over-refusal: refusal rate on normal + contrast prompts")
        ax.set_ylabel(f"ASR on {label} prompts")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    shown = [ax for ax in axes if ax.get_visible()]
    if shown:
        shown[0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(esc("\n".join(textwrap.wrap(title, 150))), fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def table_markdown(result: dict[str, Any]) -> str:
    """One row per variant: ASR (jailbreak, malicious), refusal (normal, contrast), share steered, quality."""
    head = ("| variant | steered (jb / mal / norm / contr) | ASR jailbreak | ASR malicious | refusal normal "
            "| refusal contrast | normal: first 8 tokens unchanged | normal: PPL ratio (geo. mean) |")
    lines = [head, "|" + "---|" * 8]
    for v in result["variants"]:
        steered = " / ".join(str(v["per_class"].get(c, {}).get("steered", "-"))
                             for c in ("jailbreak", "malicious", "normal", "contrast"))
        if v["mode"] == "refuse":
            steered = "(refuses flagged)"
        lines.append(
            f"| {v['name']} | {steered} | {_fmt(_cls(v, 'jailbreak', 'asr'))} | {_fmt(_cls(v, 'malicious', 'asr'))} "
            f"| {_fmt(_cls(v, 'normal', 'refusal_rate'))} | {_fmt(_cls(v, 'contrast', 'refusal_rate'))} "
            f"| {_fmt(v.get('normal_first_tokens_unchanged'))} | {_fmt(v.get('normal_ppl_ratio'), 3)} |")
    return "\n".join(lines)
