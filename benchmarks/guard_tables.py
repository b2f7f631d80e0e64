"""Summary tables for docs/GUARD.md from the eval.json files that scripts/make_guard_results.sh writes.

    .venv/bin/python benchmarks/guard_tables.py runs/guard > benchmarks/results/guard_tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = [("smollm2", "smollm2-135m-instruct"), ("qwen", "qwen2.5-coder-0.5b-instruct"), ("gemma", "gemma-3-270m")]


def f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def load(root: Path, short: str, fit: str) -> dict | None:
    p = root / f"eval-{short}-{fit}" / "eval.json"
    return json.loads(p.read_text()) if p.exists() else None


def main(root: Path) -> None:
    print("### Detection: held-out and cross-dataset\n")
    print("| model | fit on | test on | layer / L | probe | n mal/ben | AUROC | TPR@1%FPR | TPR / FPR at guard threshold "
          "| accuracy | BoW AUROC | BoW TPR@1%FPR | BoW TPR / FPR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for short, name in MODELS:
        for fit in ("builtin", "paper", "both"):
            ev = load(root, short, fit)
            if not ev:
                continue
            card = json.loads((root / f"{short}-{fit}" / "guard.json").read_text())
            fit = "built-in + paper" if fit == "both" else fit
            L = card["model"]["num_layers"]
            for s in ev["sets"]:
                g, b = s["guard"]["overall"], s.get("bow", {}).get("overall", {})
                test = s["name"].split("-", 1)[1]
                test = test.replace(" (held-out)", ", held-out split") if "held-out" in test else test + ", all rows"
                print(f"| {name} | {fit} | {test} | {ev['layer']} / {L} | {ev['classifier']} | "
                      f"{g['n_malicious']}/{g['n_benign']} | {f(g['auroc'])} | {f(g['tpr_at_1pct_fpr'])} | "
                      f"{f(g['tpr'])} / {f(g['fpr'])} | {f(g['accuracy'])} | {f(b.get('auroc'))} | "
                      f"{f(b.get('tpr_at_1pct_fpr'))} | {f(b.get('tpr'))} / {f(b.get('fpr'))} |")
    print("\n### By label: guard fitted on the paper's files, tested on every built-in set\n")
    print("| model | label | n | guard flagged | BoW flagged | guard AUROC vs all benign |")
    print("|---|---|---|---|---|---|")
    for short, name in MODELS:
        ev = load(root, short, "paper")
        if not ev:
            continue
        s = next(x for x in ev["sets"] if "builtin" in x["name"])
        for lab, m in s["guard"]["by_label"].items():
            bm = s.get("bow", {}).get("by_label", {}).get(lab, {})
            rate = m.get("tpr", m.get("fpr")) if "auroc" in m else m.get("fpr")
            brate = bm.get("tpr", bm.get("fpr")) if "auroc" in bm else bm.get("fpr")
            n = m.get("n_malicious") if "auroc" in m else m.get("n_benign")
            print(f"| {name} | {lab} | {n} | {f(rate)} | {f(brate)} | {f(m.get('auroc'))} |")
    print("\n### By jailbreak family: guard fitted on the paper's files (normal vs malicious only), tested on built-in "
          "jailbreaks; share flagged at the guard's threshold (AUROC against all built-in benign prompts)\n")
    fams: dict[str, dict[str, str]] = {}
    for short, name in MODELS:
        ev = load(root, short, "paper")
        if not ev:
            continue
        s = next(x for x in ev["sets"] if "builtin" in x["name"])
        for fam, m in s["guard"]["by_family"].items():
            bm = s.get("bow", {}).get("by_family", {}).get(fam, {})
            fams.setdefault(fam, {})[name] = f"{f(m['tpr'])} ({f(m['auroc'])})"
            fams[fam]["n"] = str(m["n_malicious"])
            fams[fam].setdefault("bow", f(bm.get("tpr")))
    names = [n for _, n in MODELS]
    print("| family | n | " + " | ".join(names) + " | bag-of-words (text only, same for every model) |")
    print("|---" * (3 + len(names)) + "|")
    for fam, row in sorted(fams.items()):
        print(f"| {fam} | {row.get('n')} | " + " | ".join(row.get(n, "-") for n in names) + f" | {row.get('bow', '-')} |")
    print("\n### Guard vs the model's own refusal, on the same built-in prompts (the generation sample of the guard benchmark)\n")
    print("| model | label | n | refused (model) | flagged (guard fitted on paper files) | flagged (guard fitted on built-in, "
          "held-out prompts only): guard / model refused (n) |")
    print("|---|---|---|---|---|---|")
    for short, name in MODELS:
        ev = load(root, short, "paper")
        evb = load(root, short, "builtin")
        if not ev or "refusal" not in ev:
            print(f"| {name} | - | - | no generations (base model, not generated for) | - | - |")
            continue
        s = next(x for x in ev["sets"] if "builtin" in x["name"])
        same = s.get("same_prompts")
        sb = next((x for x in (evb or {}).get("sets", []) if "held-out" in x["name"]), {}).get("same_prompts")
        for lab in ("normal", "contrast", "malicious", "jailbreak"):
            rm = same["refusal"]["by_label"].get(lab, {})
            gm = same["guard"]["by_label"].get(lab, {})
            n = rm.get("n_malicious") if "auroc" in rm else rm.get("n_benign")
            rr = rm.get("tpr") if "auroc" in rm else rm.get("fpr")
            gr = gm.get("tpr") if "auroc" in gm else gm.get("fpr")
            extra = "-"
            if sb and lab in sb["guard"]["by_label"]:
                m = sb["guard"]["by_label"][lab]
                rf = sb["refusal"]["by_label"][lab]
                extra = (f"{f(m.get('tpr') if 'auroc' in m else m.get('fpr'))} / "
                         f"{f(rf.get('tpr') if 'auroc' in rf else rf.get('fpr'))} (n={m.get('n_malicious') or m.get('n_benign')})")
            print(f"| {name} | {lab} | {n} | {f(rr)} | {f(gr)} | {extra} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/guard"))
