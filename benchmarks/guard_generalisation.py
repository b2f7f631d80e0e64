"""Tables of the guard's generalisation (docs/GUARD.md) from what scripts/make_guard_generalisation.sh writes.

    .venv/bin/python benchmarks/guard_generalisation.py runs/guardgen > benchmarks/results/guard_generalisation.md
    .venv/bin/python benchmarks/guard_generalisation.py --summary runs/guardgen      # the short tables of GUARD.md

Per model: the guards fitted (kind, deepest layer, calibration per benign kind); the leave-one-group-out table
per key, worst group first, for the new guard, today's recipe on the new sets and on the old four sets, and
bag-of-words, with the random goal-level folds beside it; rates per kind at each guard's fitted threshold on
prompts none of them saw (the new guard's held-out split of the built-in sets, the paper's files, the
multilingual translations); the goals of docs/GUARD.md checked; the cost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = [("smollm2", "smollm2-135m-instruct"), ("qwen", "qwen2.5-coder-0.5b-instruct"), ("gemma", "gemma-3-270m")]
GUARDS = [("new", "new guard"), ("old", "old recipe"), ("old4", "old recipe, old sets")]
METHODS = ["guard", "old recipe", "old recipe, old sets", "bag-of-words"]
SHOW = {"guard": "new guard"}
KEYS = ["family", "category:malicious", "benign-kind", "reformulation", "dataset"]


def f(v, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def cell(m: dict | None) -> str:
    if not m:
        return "- | - | -"
    if "skipped" in m:
        return "skipped | | "
    return f"{f(m.get('auroc'))} | {f(m.get('tpr_at_1pct_fpr'))} | {f(m.get('tpr'))} / {f(m.get('fpr'))}"


def guards_table(root: Path, short: str) -> list[str]:
    out = ["| guard | kind | stops after layer / L | selection (leave-group-out CV on the training split): mean / "
           "worst group AUROC | threshold p > | realised FPR per benign kind on the calibration split |",
           "|---|---|---|---|---|---|"]
    for g, label in GUARDS:
        card = load(root / short / f"guard-{g}" / "guard.json")
        if not card:
            continue
        sel = card.get("selection") or {}
        cm = sel.get("chosen_metrics")
        cv = (f"{f(cm['mean'])} / {f(cm['worst'])} ({cm['worst_group']})" if cm else
              f"random-fold CV AUROC {f((sel.get('chosen') or {}).get('cv_auroc'))}")
        per = card.get("calibration_by_kind") or {}
        cal = ", ".join(f"{k} {f(v['fpr'])} (n={v['n']})" for k, v in per.items()) or \
            f"all benign {f(card.get('calibration_fpr'))} (n={card.get('n_calibration')})"
        sets = (card.get("data") or {}).get("sets")
        name = label + (f" ({', '.join(sets)})" if sets else "")
        out.append(f"| {name} | `{card['kind']['name']}` | {card['layer']} / {card['model']['num_layers']} | {cv} | "
                   f"{card['threshold']:.4g} | {cal} |")
    return out


def holdout_tables(res: dict, top: int | None = None) -> list[str]:
    out = []
    for key in KEYS + [k for k in res.get("keys", {}) if k not in KEYS]:
        r = res.get("keys", {}).get(key)
        if not r:
            continue
        methods = [m for m in METHODS if m in r["methods"]] + [m for m in r["methods"] if m not in METHODS]
        head = " | ".join(f"{SHOW.get(m, m)}: AUROC | TPR@1%FPR | TPR / FPR" for m in methods)
        out += ["", f"Leave-one-`{key}`-out ({len(r['groups'])} groups; threshold for {r['target_fpr']:.0%} FPR set "
                f"on each training side; groups under {r.get('min_group', 2)} prompts not held out: "
                f"{', '.join(r.get('too_small') or {}) or 'none'}):", "",
                f"| held-out group | classes | held (moved) | {head} |", "|---|---|---|" + "---|---|---|" * len(methods)]
        groups = r["groups"]
        order = sorted(groups, key=lambda g: ((groups[g].get("guard") or {}).get("auroc") is None,
                                               (groups[g].get("guard") or {}).get("auroc") or 0.0))
        for g in order[:top]:
            e = groups[g]
            out.append(f"| {g} | {','.join(e.get('held_classes', []))} | {e['n_held']} ({e['n_moved']}) | "
                       + " | ".join(cell(e.get(m)) for m in methods) + " |")
        if top is not None and len(order) > top:
            out.append(f"| ... {len(order) - top} more groups in eval.json | | | " + " | ".join("| |" for _ in methods)
                       + " |")
        out.append("| **summary** | | | " + " | ".join(summary_cell(r["summary"].get(m)) for m in methods) + " |")
    rnd = res.get("random")
    if rnd:
        methods = [m for m in METHODS if m in rnd["methods"]]
        out += ["", "Random goal-level folds (in distribution, the old kind of table):", "",
                "| fold | " + " | ".join(f"{SHOW.get(m, m)}: AUROC | TPR@1%FPR | TPR / FPR" for m in methods) + " |",
                "|---|" + "---|---|---|" * len(methods)]
        for g, e in rnd["groups"].items():
            out.append(f"| {g} | " + " | ".join(cell(e.get(m)) for m in methods) + " |")
        out.append("| **summary** | " + " | ".join(summary_cell(rnd["summary"].get(m)) for m in methods) + " |")
    return out


def summary_cell(s: dict | None) -> str:
    if not s:
        return "- | | "
    return (f"worst {f(s['worst_auroc'])}, mean {f(s['mean_auroc'])} | | min TPR {f(s['min_tpr'])} / "
            f"max FPR {f(s['max_fpr'])}")


def kind_rates(root: Path, short: str) -> tuple[list[str], dict]:
    """Rates per kind at each guard's threshold, on the new guard's held-out split and the evaluation banks."""
    evals = {g: load(root / short / f"eval-{g}" / "eval.json") for g, _ in GUARDS}
    new_ids = set(((load(root / short / "guard-new" / "guard.json") or {}).get("splits") or {}).get("ids", {})
                  .get("test", []))
    out = ["| set | kind | n | " + " | ".join(f"{label}: TPR or FPR" for _, label in GUARDS) + " | bag-of-words |",
           "|---|---|---|" + "---|" * (len(GUARDS) + 1)]
    worst = {"fpr": {}, "tpr": {}}
    base = evals.get("new")
    if not base:
        return out, worst
    for s_index, s in enumerate(base["sets"]):
        for level in ("kind", "subkind"):
            for k, m in (s["guard"].get("by_kind") or {}).get(level, {}).items():
                if level == "subkind" and ":" not in k:
                    continue
                rate = "fpr" if m.get("cls") == "benign" else "tpr"
                vals = []
                for g, _ in GUARDS:
                    ev = evals.get(g)
                    other = ev["sets"][s_index]["guard"]["by_kind"][level].get(k) if ev else None
                    vals.append(f(other.get(rate)) if other else "-")
                bow = ((s.get("bow") or {}).get("by_kind") or {}).get(level, {}).get(k) or {}
                out.append(f"| {s['name']} | {k} | {m['n']} | " + " | ".join(vals) + f" | {f(bow.get(rate))} |")
                if level == "kind" or rate == "tpr":
                    worst[rate][f"{s['name']}: {k}"] = m.get(rate)
    del new_ids
    return out, worst


def goals(res: dict | None, worst: dict) -> list[str]:
    out = []
    if res:
        w = [(k, r["summary"]["guard"]) for k, r in res.get("keys", {}).items()]
        lo = min(w, key=lambda kv: kv[1]["worst_auroc"] if kv[1]["worst_auroc"] is not None else 9)
        out.append(f"- worst held-out group AUROC >= 0.95: **{f(lo[1]['worst_auroc'])}** ({lo[0]}: "
                   f"{lo[1]['worst_group']}) -> {'met' if (lo[1]['worst_auroc'] or 0) >= 0.95 else 'not met'}")
    fpr = {k: v for k, v in worst["fpr"].items() if v is not None}
    tpr = {k: v for k, v in worst["tpr"].items() if v is not None}
    if fpr:
        k = max(fpr, key=fpr.get)
        out.append(f"- FPR <= 2% on every benign kind at the fitted threshold: highest **{f(fpr[k])}** ({k}) -> "
                   f"{'met' if fpr[k] <= 0.02 else 'not met'}; over 2%: "
                   + (", ".join(f"{n} {f(v)}" for n, v in sorted(fpr.items(), key=lambda kv: -kv[1]) if v > 0.02)
                      or "none"))
    if tpr:
        k = min(tpr, key=tpr.get)
        out.append(f"- TPR >= 0.8 on every malicious kind: lowest **{f(tpr[k])}** ({k}) -> "
                   f"{'met' if tpr[k] >= 0.8 else 'not met'}; under 0.8: "
                   + (", ".join(f"{n} {f(v)}" for n, v in sorted(tpr.items(), key=lambda kv: kv[1]) if v < 0.8)
                      or "none"))
    return out


def cost_lines(short: str) -> list[str]:
    c = load(Path("benchmarks/results") / f"guard_cost_{short}.json")
    if not c:
        return []
    out = [f"Cost ({c['prompts']} prompts, {c['mean_tokens']:.0f} tokens each on average, batch {c['batch_size']}, "
           f"{c['threads']} torch threads, medians of {c['repeats']} interleaved repeats; 1-minute load average "
           f"{c['load_average_during'][1]:.1f}-{c['load_average_during'][0]:.1f} during the run):", "",
           "| guard | kind | blocks run / L | CPU time / full pass (model + LM head) | CPU time / backbone | "
           "wall time / full pass | `guard score` prompts/s | full pass prompts/s |", "|---|---|---|---|---|---|---|---|"]
    for name, g in c["guards"].items():
        out.append(f"| {name} | `{g['kind']}` | {g['deepest_layer']} / {c['num_layers']} | "
                   f"{f(g['cpu_share_of_full'], 2)} | {f(g['cpu_share_of_backbone'], 2)} | {f(g['wall_share_of_full'], 2)} | "
                   f"{f(g['score_prompts_per_second'], 2)} | {f(g['full_prompts_per_second'], 2)} |")
    return out


# -- the short tables of docs/GUARD.md (--summary) ----------------------------------------------------------------

KEY_LABEL = {"family": "jailbreak / wrapper family", "category:malicious": "malicious category",
             "benign-kind": "benign kind", "reformulation": "reformulation", "dataset": "dataset (training set)"}
#: (set, kind) rows of the per-kind rate table: benign kinds (FPR) then malicious kinds (TPR)
RATE_ROWS = [("bank-train (held-out)", "normal"), ("bank-train (held-out)", "contrast"),
             ("bank-train (held-out)", "alarming"), ("bank-train (held-out)", "wrapped"),
             ("bank-train (held-out)", "buried (benign)"), ("bank-paper", "normal_prompt"),
             ("bank-multi", "multilingual (benign)"),
             ("bank-train (held-out)", "malicious"), ("bank-train (held-out)", "jailbreak"),
             ("bank-train (held-out)", "reformulated"), ("bank-train (held-out)", "reformulated:past_tense"),
             ("bank-train (held-out)", "reformulated:future_tense"), ("bank-train (held-out)", "buried (malicious)"),
             ("bank-paper", "malicious_prompt"), ("bank-multi", "multilingual (malicious)")]
SET_LABEL = {"bank-train (held-out)": "built-in, held-out goals", "bank-paper": "paper's files",
             "bank-multi": "multilingual (zh, es, fr, sw, bn)"}


def _worst(s: dict | None) -> str:
    if not s or s.get("worst_auroc") is None:
        return "-"
    return f"{f(s['worst_auroc'])} / {f(s['mean_auroc'])}"


def summary_key_table(root: Path) -> list[str]:
    """Per model and key: worst / mean group AUROC of each method, keys worst first, random folds beside."""
    out = ["| model | held out, one group at a time | groups | new guard: worst group | new guard: worst / mean AUROC | "
           "old recipe, new sets: worst / mean | old recipe, old sets: worst / mean | bag-of-words: worst / mean |",
           "|---|---|---|---|---|---|---|---|"]
    for short, name in MODELS:
        res = (load(root / short / "holdout" / "eval.json") or {}).get("holdout")
        if not res:
            continue
        rows = []
        for key, r in res["keys"].items():
            sm = r["summary"]
            g = sm["guard"]
            rows.append((g["worst_auroc"] if g["worst_auroc"] is not None else 9,
                         f"| {name} | {KEY_LABEL.get(key, key)} | {g['n_groups']} | {g['worst_group']} | "
                         f"**{_worst(g)}** | {_worst(sm.get('old recipe'))} | {_worst(sm.get('old recipe, old sets'))} | "
                         f"{_worst(sm.get('bag-of-words'))} |"))
        out += [line for _, line in sorted(rows)]
        rnd = res.get("random")
        if rnd:
            sm = rnd["summary"]
            out.append(f"| {name} | *random goal-level folds (in distribution)* | {sm['guard']['n_groups']} | | "
                       f"{_worst(sm['guard'])} | {_worst(sm.get('old recipe'))} | "
                       f"{_worst(sm.get('old recipe, old sets'))} | {_worst(sm.get('bag-of-words'))} |")
    return out


def summary_worst_groups(root: Path, top: int = 6) -> list[str]:
    """The ``top`` held-out groups where the new guard does worst, per model, over every key."""
    out = ["| model | group (key) | held prompts | new guard: AUROC | TPR / FPR at its threshold | old recipe, new sets: "
           "AUROC | old recipe, old sets: AUROC | bag-of-words: AUROC |", "|---|---|---|---|---|---|---|---|"]
    for short, name in MODELS:
        res = (load(root / short / "holdout" / "eval.json") or {}).get("holdout")
        if not res:
            continue
        entries = []
        for key, r in res["keys"].items():
            for g, e in r["groups"].items():
                m = e.get("guard") or {}
                if m.get("auroc") is not None:
                    entries.append((m["auroc"], key, g, e))
        for auc, key, g, e in sorted(entries, key=lambda t: t[0])[:top]:
            m = e["guard"]
            others = " | ".join(f((e.get(k) or {}).get("auroc")) for k in ("old recipe", "old recipe, old sets",
                                                                             "bag-of-words"))
            out.append(f"| {name} | {g} ({key}) | {e['n_held']} | {f(auc)} | {f(m.get('tpr'))} / {f(m.get('fpr'))} | "
                       f"{others} |")
    return out


def summary_nested(root: Path) -> list[str]:
    """The kind chosen inside every training side against the kind chosen once, where that run exists."""
    out = ["| model | held out | groups | kind chosen once (on the guard's training split): worst / mean | kind chosen "
           "again inside every training side: worst / mean |", "|---|---|---|---|---|"]
    have = False
    for short, name in MODELS:
        res = (load(root / short / "holdout-nested" / "eval.json") or {}).get("holdout")
        if not res:
            continue
        nested = next((m for m in res["methods"] if m.startswith("new guard (kind chosen")), None)
        for key, r in res["keys"].items():
            sm = r["summary"]
            have = True
            out.append(f"| {name} | {KEY_LABEL.get(key, key)} | {sm['guard']['n_groups']} | {_worst(sm['guard'])} | "
                       f"{_worst(sm.get(nested)) if nested else '-'} |")
    return out if have else []


def summary_rates(root: Path) -> list[str]:
    """TPR (malicious kinds) and FPR (benign kinds) at each guard's fitted threshold, new guard (old recipe) [n]."""
    names = [(short, name) for short, name in MODELS if (root / short / "eval-new" / "eval.json").is_file()]
    out = ["| prompts (never seen by any guard) | kind | rate | " + " | ".join(
        f"{name}: new guard (old recipe, new sets) [n]" for _, name in names) + " |", "|---|---|---|" + "---|" * len(names)]
    for set_name, kind in RATE_ROWS:
        cells, rate_name = [], None
        for short, _ in names:
            vals = []
            for g in ("new", "old"):
                ev = load(root / short / f"eval-{g}" / "eval.json") or {"sets": []}
                s = next((x for x in ev["sets"] if x["name"] == set_name), None)
                bk = ((s or {}).get("guard") or {}).get("by_kind") or {}
                m = (bk.get("kind") or {}).get(kind) or (bk.get("subkind") or {}).get(kind)
                vals.append(m)
            new, old = vals
            if not new:
                cells.append("-")
                continue
            rate_name = "fpr" if new.get("cls") == "benign" else "tpr"
            cells.append(f"{f(new.get(rate_name))} ({f((old or {}).get(rate_name))}) [{new['n']}]")
        if rate_name:
            goal = "FPR (goal <= 0.02)" if rate_name == "fpr" else "TPR (goal >= 0.8)"
            out.append(f"| {SET_LABEL.get(set_name, set_name)} | {kind} | {goal} | " + " | ".join(cells) + " |")
    return out


def summary_sets(root: Path) -> list[str]:
    """Per model and evaluation set: AUROC, TPR at 1% FPR on the set's own benign prompts, TPR / FPR at the fitted
    threshold, for every guard and bag-of-words."""
    out = ["| model | prompts (never seen by any guard) | n | " + " | ".join(
        f"{label}: AUROC, TPR@1%FPR, TPR / FPR" for _, label in GUARDS) + " | bag-of-words: AUROC, TPR / FPR |",
        "|---|---|---|" + "---|" * (len(GUARDS) + 1)]
    for short, name in MODELS:
        evals = {g: load(root / short / f"eval-{g}" / "eval.json") for g, _ in GUARDS}
        if not evals.get("new"):
            continue
        for i, s in enumerate(evals["new"]["sets"]):
            cells = []
            for g, _ in GUARDS:
                o = ((evals.get(g) or {"sets": [{}] * (i + 1)})["sets"][i].get("guard") or {}).get("overall") or {}
                cells.append(f"{f(o.get('auroc'))}, {f(o.get('tpr_at_1pct_fpr'))}, {f(o.get('tpr'))} / {f(o.get('fpr'))}")
            b = (s.get("bow") or {}).get("overall") or {}
            o = s["guard"]["overall"]
            n = f"{o.get('n_malicious', '?')} / {o.get('n_benign', '?')}"
            out.append(f"| {name} | {SET_LABEL.get(s['name'], s['name'])} | {n} | " + " | ".join(cells)
                       + f" | {f(b.get('auroc'))}, {f(b.get('tpr'))} / {f(b.get('fpr'))} |")
    return out


def summary_cost() -> list[str]:
    out = ["| model | guard | kind | blocks run / L | CPU time / full pass | wall time / full pass | `guard score` "
           "prompts/s | full pass prompts/s | load average during |", "|---|---|---|---|---|---|---|---|---|"]
    for short, name in MODELS:
        c = load(Path("benchmarks/results") / f"guard_cost_{short}.json")
        if not c:
            continue
        for g_name, g in c["guards"].items():
            out.append(f"| {name} | {g_name} | `{g['kind']}` | {g['deepest_layer']} / {c['num_layers']} | "
                       f"{f(g['cpu_share_of_full'], 2)} | {f(g['wall_share_of_full'], 2)} | "
                       f"{f(g['score_prompts_per_second'], 2)} | {f(g['full_prompts_per_second'], 2)} | "
                       f"{c['load_average_during'][1]:.1f}-{c['load_average_during'][0]:.1f} |")
    return out


def summary(root: Path) -> None:
    """The short tables docs/GUARD.md shows (the full ones are in benchmarks/results/guard_generalisation.md)."""
    for title, note, lines in [
        ("Leave-one-group-out, per key, worst key first",
         "Worst and mean AUROC over the held-out groups of each key (each group scored by a guard fitted without "
         "it and without its goals), beside the random goal-level folds of the same prompts (in distribution).",
         summary_key_table(root)),
        ("The new guard's worst held-out groups",
         "Over every key; TPR and FPR at the threshold set on the training side (a single-class group has one of "
         "the two).", summary_worst_groups(root)),
        ("Kind chosen once, or again inside every training side", "", summary_nested(root)),
        ("Whole evaluation sets",
         "The built-in prompts of the new guard's held-out goals (no guard trained or calibrated on them), the "
         "paper's two files and the multilingual translations (evaluation only). TPR@1%FPR puts the threshold at "
         "1% FPR on the set's own benign prompts (an oracle); TPR / FPR use the threshold fixed at fit time.",
         summary_sets(root)),
        ("Rates per kind at the fitted threshold",
         "FPR for benign kinds, TPR for malicious kinds: new guard (today's recipe on the same sets) [prompts].",
         summary_rates(root)),
        ("Cost", "", summary_cost())]:
        if lines:
            print(f"### {title}\n")
            if note:
                print(note + "\n")
            print("\n".join(lines))
            print()


def main(root: Path, top: int | None) -> None:
    for short, name in MODELS:
        if not (root / short).is_dir():
            continue
        print(f"## {name}\n")
        print("\n".join(guards_table(root, short)))
        res = (load(root / short / "holdout" / "eval.json") or {}).get("holdout")
        if res:
            print("\n".join(holdout_tables(res, top)))
        nested = (load(root / short / "holdout-nested" / "eval.json") or {}).get("holdout")
        if nested:
            print("\nThe same with the kind chosen again inside every training side (`--nested`; the guard's kind "
                  "chosen once beside it):")
            print("\n".join(holdout_tables(nested, top)))
        rates, worst = kind_rates(root, short)
        print("\nRates per kind at each guard's own threshold, on prompts it never saw (TPR for malicious kinds, FPR "
              "for benign ones):\n")
        print("\n".join(rates))
        print("\nGoals (new guard):\n")
        print("\n".join(goals(res, worst)))
        print()
        print("\n".join(cost_lines(short)))
        print()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tops = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--top=")]
    if "--summary" in sys.argv[1:]:
        summary(Path(args[0] if args else "runs/guardgen"))
    else:
        main(Path(args[0] if args else "runs/guardgen"), tops[0] if tops else None)
