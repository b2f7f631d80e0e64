"""Cheap variants of the chosen guard kind, compared by the selection's own criterion on the training split only.

For a guard fitted with ``--kind auto`` on a feature bank: its training split (the card's ``splits.ids.train``),
the selection's leave-group-out folds (key ``auto``), and the chosen kind refitted with other head settings:
the logistic regression's regularisation ``C`` and class or kind balancing (every benign kind and every
malicious kind weighing the same in the fit). The criterion is the selection's (mean of the mean and the worst
group AUROC). No held-out row is read, so a variant chosen here may be reported on the held-out groups.

    nice -n 10 .venv/bin/python benchmarks/guard_variants.py runs/guardgen/smollm2/guard-new \\
        --out benchmarks/results/guard_variants_smollm2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("guard")
    ap.add_argument("--c", default="0.003,0.01,0.03,0.1,0.3,1")
    ap.add_argument("--kinds", default="", help="other kind names to try as well (comma-separated)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    import ihs.guard.heads as heads
    from ihs.guard import Guard
    from ihs.guard.bank import FeatureBank
    from ihs.guard.fit_pooled import usable_rows
    from ihs.guard.grouping import kind_of
    from ihs.guard.heads import Recipe, parse_kind
    from ihs.guard.select import evaluate_recipe, grouped_folds
    from ihs.io import write_json

    guard = Guard.load(args.guard)
    card = guard.card
    bank = FeatureBank.load(card["data"]["bank"])
    rows, y = usable_rows(bank.records, card["data"]["benign_labels"], card["data"]["malicious_labels"])
    recs = [bank.records[i] for i in rows]
    feats = bank.features.subset(rows)
    train_ids = set(card["splits"]["ids"]["train"])
    tr = np.asarray([i for i, r in enumerate(recs) if str(r["id"]) in train_ids])
    recs_tr, y_tr, feats_tr = [recs[i] for i in tr], y[tr], feats.subset(tr)
    opts = card["selection"]["options"]
    folds = grouped_folds(recs_tr, y_tr, opts["key"], opts["folds"], pool_fraction=opts["pool_fraction"],
                          seed=opts["seed"])
    kinds = np.asarray([kind_of(r) + (":m" if v else ":b") for r, v in zip(recs_tr, y_tr, strict=True)])
    num_layers = int(card["model"]["num_layers"])
    recipes = [Recipe.from_dict(card["kind"])] + [parse_kind(k, num_layers) for k in args.kinds.split(",") if k.strip()]

    original = heads._raw_fit
    current: dict = {}

    def weighted_fit(head: str, X: np.ndarray, yy: np.ndarray, seed: int) -> dict:
        if head != "logreg" or not current:
            return original(head, X, yy, seed)
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        Z = (X - scaler.mean_) / scale
        w = None
        if current.get("balance") == "kind":  # rows of the fit are identified by their design rows' order
            k = current["kinds_fit"]
            names, inv, counts = np.unique(k, return_inverse=True, return_counts=True)
            w = (len(k) / (len(names) * counts))[inv]
        est = LogisticRegression(C=current.get("C", 1.0), max_iter=3000,
                                 class_weight="balanced" if current.get("balance") == "class" else None)
        est.fit(Z, yy, sample_weight=w)
        return {"mean": scaler.mean_, "scale": scale, "coef": est.coef_.reshape(-1), "intercept": est.intercept_}

    heads._raw_fit = weighted_fit
    import ihs.guard.select as select

    orig_fit_head = select.fit_head

    def fit_head_tracking(kind, X, yy, **kw):  # the kinds of the rows being fitted, for kind balancing
        if current.get("balance") == "kind":
            train_rows = current["fold_train"].pop(0)
            current["kinds_fit"] = kinds[train_rows]
        return orig_fit_head(kind, X, yy, **kw)

    select.fit_head = fit_head_tracking
    results = []
    for recipe in recipes:
        for c in [float(v) for v in args.c.split(",")]:
            for balance in ("none", "class", "kind"):
                current.clear()
                current.update(C=c, balance=balance,
                               fold_train=[f.train for f in folds if y_tr[f.train].any() and not y_tr[f.train].all()])
                m = evaluate_recipe(feats_tr, y_tr, folds, recipe, seed=opts["seed"], min_group=opts["min_group"])
                m.update(C=c, balance=balance)
                results.append(m)
                print(f"{recipe.name:34s} C={c:<6g} balance={balance:5s} criterion {m['criterion']:.4f} "
                      f"mean {m['mean']:.4f} worst {m['worst']:.4f} ({m['worst_group']})", flush=True)
    best = max(results, key=lambda m: m["criterion"])
    write_json(Path(args.out), {"guard": args.guard, "chosen_kind": card["kind"]["name"], "n_train": int(len(tr)),
                                "folds": len(folds), "results": results, "best": best})
    print(json.dumps(best))


if __name__ == "__main__":
    main()
