"""Figure for docs/GUARD.md: early-exit time as a fraction of the full backbone pass, by layer, per model.

    .venv/bin/python benchmarks/plot_guard_early_exit.py benchmarks/results/guard_early_exit_*.json \
        --out docs/figures/guard_early_exit.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for path in args.results:
        r = json.load(open(path))
        L = r["num_layers"]
        pts = sorted((int(k), v) for k, v in r["fraction_of_full_backbone"].items())
        line, = ax.plot([k / L for k, _ in pts], [v for _, v in pts], marker="o", label=f"{r['model']} (L={L})")
        if r.get("guard_layer") is not None:
            g = r["guard_layer"]
            ax.scatter([g / L], [r["fraction_of_full_backbone"][str(g)]], s=140, facecolors="none",
                       edgecolors=line.get_color(), linewidths=2)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="proportional to depth")
    ax.set_xlabel("stop after layer index l, as l / L (0 = embedding output, L = last block)")
    ax.set_ylabel("time / full backbone pass")
    ax.set_title("Early-exit cost (circled: the guard's chosen layer)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=130)
    print(args.out)


if __name__ == "__main__":
    main()
