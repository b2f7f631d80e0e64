"""The per-round tables of docs/ADVERSARIAL.md, read from a rounds summary (``ihs attack rounds`` writes it).

    .venv/bin/python scripts/adversarial_tables.py benchmarks/results/adversarial_smollm2.json

Prints Markdown: held-out ASR and over-refusal per arm and round (rate (k/n) [Wilson 95%]), refuse-when-flagged
and the guard, the middle-layer association (complied vs refused attacks), budget and wall time, and the
defenses of the base model when the summary holds them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rate(x: dict | None) -> str:
    if not x:
        return "n/a"
    lo, hi = x["ci95"]
    return f"{x['rate']:.2f} ({x['k']}/{x['n']}) [{lo:.2f}, {hi:.2f}]"


def auc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def rows(summary: dict) -> list[tuple[str, int, dict, dict]]:
    """(arm, round, round record, its eval) for the base model and every round of every arm."""
    out = [("base", 0, summary["base"], summary["base"]["eval"])]
    for arm, records in summary["arms"].items():
        out += [(arm, r["round"], r, r["eval"]) for r in records]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    table = rows(summary)
    print("| arm | round | held-out ASR | ASR, no mutation | ASR, held-out mutation | over-refusal contrast | "
          "over-refusal wrapped | perplexity |\n|---|---|---|---|---|---|---|---|")
    for arm, k, _, ev in table:
        print(f"| {arm} | {k} | {rate(ev['asr'])} | {rate(ev.get('asr_plain'))} | {rate(ev.get('asr_mutated'))} | "
              f"{rate(ev['over_refusal']['contrast'])} | {rate(ev['over_refusal']['wrapped'])} | "
              f"{(ev.get('perplexity') or {}).get('value', float('nan')):.2f} |")
    print("\n| arm | round | ASR, refuse-when-flagged | over-refusal contrast | over-refusal wrapped | guard AUROC, "
          "held-out families | bag-of-words AUROC, same prompts | early probe calls malicious |\n"
          "|---|---|---|---|---|---|---|---|")
    for arm, k, _, ev in table:
        f = ev["flagged"]
        print(f"| {arm} | {k} | {rate(f['asr'])} | {rate(f['over_refusal_contrast'])} | "
              f"{rate(f['over_refusal_wrapped'])} | {auc(ev['guard_auroc_heldout'])} | {auc(ev.get('bow_auroc_heldout'))} | "
              f"{rate(ev['early_recognised'])} |")
    print("\n| arm | round | middle-layer negative share, complied attacks | refused attacks | benign | refused benign | "
          "answered benign |\n|---|---|---|---|---|---|---|")
    for arm, k, _, ev in table:
        m = ev["mid_negative"]
        cells = [m.get(c) or {"mean": None, "n": 0} for c in ("complied", "refused", "benign", "benign_refused",
                                                              "benign_answered")]
        print(f"| {arm} | {k} | " + " | ".join(("-" if c["mean"] is None else f"{c['mean']:.3f}") + f" (n={c['n']})"
                                               for c in cells) + " |")
    print("\n| arm | round | attacks scored | added | look-alikes | training rows | final loss | attack s | train s | "
          "evaluation s | total s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, k, r, _ in table[1:]:
        s = r["seconds"]
        print(f"| {arm} | {k} | {r['attacks_scored']} | {r['attacks_added']} | {r['lookalikes_added']} | "
              f"{r['training_rows']} | {r['final_loss']} | {s['attack']:.0f} | {s['train']:.0f} | {s['eval']:.0f} | "
              f"{s['total']:.0f} |")
    defense = summary.get("defense") or summary["base"].get("defense")
    if defense:
        print(f"\nDefenses of the base model on the same held-out prompts (steering at layers {defense['layers']}, "
              f"alpha {defense['alpha']}; guard at layer {defense['guard_layer']}, out-of-fold AUROC "
              f"{defense['guard_oof_auroc']:.2f}):\n")
        print("| variant | held-out ASR | over-refusal contrast | over-refusal wrapped | attacks flagged |\n"
              "|---|---|---|---|---|")
        for name, v in defense["variants"].items():
            print(f"| {name} | {rate(v['asr'])} | {rate(v['over_refusal_contrast'])} | "
                  f"{rate(v['over_refusal_wrapped'])} | {rate(v['flagged_attacks'])} |")


if __name__ == "__main__":
    main()
