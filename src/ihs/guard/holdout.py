"""Leave-one-group-out evaluation of guards: the protocol of :mod:`ihs.analysis.groups`, with the guard's threshold.

Each *method* (a guard kind with fixed settings, today's recipe, the bag-of-words baseline, or a guard
whose kind is chosen again inside every training side) is fitted with one group held out and scored on
it, under the same splits:

- a group and every goal it touches leave the training side (goals never split); with the ``pool``
  policy a fixed pool of goals never trains, and a single-class group is scored with the pool's rows of
  the class it lacks, so every group gets an AUROC;
- a seeded ``calib_fraction`` of the training goals is set aside (the same rows for every method), the
  method is fitted on the rest and its threshold set on the set-aside benign rows for ``target_fpr``:
  on every benign kind at once (``by_kind``, the guard's rule) or on all of them together (today's);
- per group: rows, AUROC, TPR at 1% FPR on the scored rows' own benign rows (an oracle), TPR and FPR at
  the training side's threshold.

:func:`random_folds_eval` runs the same methods on random goal-level folds: the in-distribution table
a random split gives, beside which the held-out table shows what a shortcut costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ihs.analysis.group_splits import ScorerFactory, goal_components, random_splits, stratified_components
from ihs.errors import IhsError
from ihs.guard.features import Features
from ihs.guard.grouping import binary_y, check_groups, group_of, kind_of, subkind_of
from ihs.guard.heads import Recipe, fit_head
from ihs.guard.metrics import calibrate_by_kind, calibrate_threshold, set_metrics
from ihs.progress import progress_bar

POLICIES = ("pool", "own")


@dataclass
class Method:
    """A way to fit a detector on training rows: ``factory(train_rows, y_train) -> score(rows)``."""

    name: str
    factory: ScorerFactory
    by_kind: bool = True
    allowed: np.ndarray | None = None  # rows it may fit and calibrate on (a guard fitted on some sets only)


def recipe_method(feats: Features, recipe: Recipe, name: str | None = None, seed: int = 0) -> Method:
    """A guard of a fixed kind: its head refitted on every training side."""
    def fit(train: np.ndarray, y_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        head = fit_head(recipe.head, recipe.design(feats, train), np.asarray(y_train).astype(int), seed=seed,
                        calibrate=False)
        return lambda rows: head.logit(recipe.design(feats, rows))

    return Method(name or recipe.name, fit, True)


def legacy_method(feats: Features, layer: int, classifier: str = "logreg", seed: int = 0,
                  name: str = "old guard") -> Method:
    """Today's recipe at a fixed layer and probe: last token, linear probe, one threshold over all benign rows."""
    from sklearn.base import clone

    from ihs.analysis.probes import make_classifier
    from ihs.guard.linear import quiet_fit

    proto = make_classifier(classifier, "cv", seed)

    def fit(train: np.ndarray, y_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        est = quiet_fit(clone(proto), feats.take("last", [layer], train)[:, 0], np.asarray(y_train).astype(int))
        return lambda rows: np.asarray(est.decision_function(feats.take("last", [layer], rows)[:, 0]), dtype=np.float64)

    return Method(name, fit, False)


def bow_method(texts: Sequence[str], by_kind: bool = True, name: str = "bag-of-words") -> Method:
    """The bag-of-words baseline (unigram+bigram presence, logistic regression) on the prompts' texts."""
    from ihs.analysis.groups import bow_scorer

    return Method(name, bow_scorer(texts), by_kind)


def nested_method(feats: Features, records: Sequence[Any], y: np.ndarray, options: Any,
                  name: str = "new guard (kind chosen per split)") -> Method:
    """A guard whose kind is chosen by :func:`ihs.guard.select.select_recipe` on each training side only."""
    from ihs.guard.select import select_recipe

    def fit(train: np.ndarray, y_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        chosen = select_recipe(feats.subset(train), [records[i] for i in train], np.asarray(y)[train], options)
        recipe = Recipe.from_dict(chosen["chosen"])
        return recipe_method(feats, recipe, seed=options.seed).factory(train, y_train)

    return Method(name, fit, True)


# -- splits --------------------------------------------------------------------------------------


def holdout_splits(records: Sequence[Any], y: np.ndarray, values: np.ndarray, *, benign: str = "pool",
                   pool_fraction: float = 0.2, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray,
                                                                              dict]]:
    """(group, train, test, evaluate, info) per group of ``values`` (see :mod:`ihs.analysis.groups`)."""
    if benign not in POLICIES:
        raise IhsError(f"unknown benign policy {benign!r}; use one of {', '.join(POLICIES)}")
    comp = goal_components(records)
    rng = np.random.default_rng(seed)
    pool_comps = (stratified_components(comp, y, np.arange(len(y)), pool_fraction, rng, leave=1)
                  if benign == "pool" else np.empty(0, dtype=np.int64))
    in_pool = np.isin(comp, pool_comps)
    out = []
    for name in sorted({str(v) for v in values if v is not None}):
        held = np.flatnonzero(values == name)
        in_test = np.isin(comp, np.unique(comp[held])) | in_pool
        lacking = [c for c in (False, True) if not (y[held] == c).any()]
        extra = np.flatnonzero(in_pool & np.isin(y, lacking) & (values != name))
        moved = int(np.sum(in_test & ~in_pool & (values != name)))
        info = {"n_held": int(len(held)), "n_moved": moved, "n_pool": int(np.sum(in_pool & (values != name))),
                "held_classes": sorted({"malicious" if v else "benign" for v in y[held]})}
        out.append((name, np.flatnonzero(~in_test), np.flatnonzero(in_test), np.union1d(held, extra), info))
    return out


def _threshold(scores: np.ndarray, kinds: np.ndarray, by_kind: bool, target_fpr: float) -> float:
    if by_kind:
        return calibrate_by_kind(scores, kinds, target_fpr)[0]
    return calibrate_threshold(scores, target_fpr)


def run_splits(splits: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict]], methods: Sequence[Method],
               y: np.ndarray, records: Sequence[Any], *, calib_fraction: float = 0.25, target_fpr: float = 0.01,
               seed: int = 0, progress: bool = True, description: str = "held-out groups") -> dict[str, Any]:
    """Fit every method on each split's training side, threshold on its calibration part, score its group."""
    y = np.asarray(y).astype(bool)
    comp = goal_components(records)
    kinds = np.asarray([kind_of(r) for r in records], dtype=object)
    groups: dict[str, dict[str, Any]] = {}
    with progress_bar(description, total=len(splits) * len(methods), unit="fits", enabled=progress) as advance:
        for n, (name, train, _test, evaluate, info) in enumerate(splits):
            rng = np.random.default_rng([seed, n])
            cal_comps = stratified_components(comp, y, train, calib_fraction, rng, min_each=0, leave=1)
            is_cal = np.isin(comp[train], cal_comps)
            fit, cal = train[~is_cal], train[is_cal]
            entry = dict(info, n_train=int(len(fit)), n_calibration=int((~y[cal]).sum()))
            for m in methods:
                advance(1)
                fit_m, cal_m = (fit, cal) if m.allowed is None else (fit[m.allowed[fit]], cal[m.allowed[cal]])
                if y[fit_m].all() or not y[fit_m].any() or not (~y[cal_m]).any():
                    entry[m.name] = {"skipped": "the training side lacks a class (its goals all sit in the group)"}
                    continue
                with threadpool_limits(limits=1, user_api="blas"):
                    score = m.factory(fit_m, y[fit_m])
                    cal_benign = cal_m[~y[cal_m]]
                    thr = _threshold(np.asarray(score(cal_benign)), kinds[cal_benign], m.by_kind, target_fpr)
                    entry[m.name] = set_metrics(y[evaluate], np.asarray(score(evaluate)), thr)
            groups[name] = entry
    return {"groups": groups, "summary": summarise(groups, [m.name for m in methods])}


def summarise(groups: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per method: groups scored, worst and mean AUROC (and which group), lowest TPR, highest FPR."""
    out = {}
    for m in names:
        done = {g: e[m] for g, e in groups.items() if m in e and "skipped" not in e[m]}

        def pick(metric: str, fn: Callable, done: dict = done) -> tuple[str | None, float | None]:
            vals = {g: v[metric] for g, v in done.items() if v.get(metric) is not None}
            if not vals:
                return None, None
            g = fn(vals, key=vals.get)
            return g, vals[g]

        worst_g, worst = pick("auroc", min)
        tpr_g, tpr = pick("tpr", min)
        fpr_g, fpr = pick("fpr", max)
        aucs = [v["auroc"] for v in done.values() if v.get("auroc") is not None]
        out[m] = {"n_groups": len(done), "n_skipped": sum(1 for e in groups.values() if "skipped" in e.get(m, {})),
                  "worst_auroc": worst, "worst_group": worst_g, "mean_auroc": float(np.mean(aucs)) if aucs else None,
                  "min_tpr": tpr, "min_tpr_group": tpr_g, "max_fpr": fpr, "max_fpr_group": fpr_g}
    return out


def holdout_eval(records: Sequence[Any], key: str, methods: Sequence[Method], *, benign: str = "pool",
                 pool_fraction: float = 0.2, calib_fraction: float = 0.25, target_fpr: float = 0.01, seed: int = 0,
                 min_group: int = 2, progress: bool = True) -> dict[str, Any]:
    """Leave-one-group-out over ``key`` (see :mod:`ihs.guard.grouping` for keys) for every method.

    A group of one prompt is an error; with ``min_group`` above 2, groups of fewer prompts are not held out
    (their rows train in every split) and are listed under ``too_small``.
    """
    y = binary_y(records)
    if y.all() or not y.any():
        raise IhsError(f"leave-group-out needs benign and malicious prompts; got {int((~y).sum())} benign, "
                       f"{int(y.sum())} malicious")
    values = group_of(records, key, y)
    small: dict[str, int] = {}
    if min_group > 2:  # groups too small to read a rate from stay ungrouped (free to train), listed in the result
        names, counts = np.unique(np.asarray([v for v in values if v is not None], dtype=str), return_counts=True)
        small = {str(n): int(c) for n, c in zip(names, counts, strict=True) if c < min_group}
        values = np.asarray([None if v is not None and str(v) in small else v for v in values], dtype=object)
        if small and all(v is None for v in values):
            raise IhsError(f"every group of key {key!r} has fewer than {min_group} prompts (--min-group)")
    check_groups(values, key)
    splits = holdout_splits(records, y, values, benign=benign, pool_fraction=pool_fraction, seed=seed)
    res = run_splits(splits, methods, y, records, calib_fraction=calib_fraction, target_fpr=target_fpr, seed=seed,
                     progress=progress, description=f"leave-{key}-out")
    return {"protocol": "leave-one-group-out", "key": key, "benign_policy": benign, "pool_fraction": pool_fraction,
            "calib_fraction": calib_fraction, "target_fpr": target_fpr, "seed": seed, "min_group": min_group,
            "too_small": small, "methods": [m.name for m in methods], **res}


def random_folds_eval(records: Sequence[Any], methods: Sequence[Method], *, folds: int = 5,
                      calib_fraction: float = 0.25, target_fpr: float = 0.01, seed: int = 0,
                      progress: bool = True) -> dict[str, Any]:
    """The same methods on random goal-level folds (the in-distribution comparison)."""
    y = binary_y(records)
    splits = [(f"fold{f}", tr, te, te, {"n_held": int(len(te))})
              for f, (tr, te) in enumerate(random_splits(records, y=y, folds=folds, seed=seed))]
    res = run_splits(splits, methods, y, records, calib_fraction=calib_fraction, target_fpr=target_fpr, seed=seed,
                     progress=progress, description="random folds")
    return {"protocol": "random goal-level folds", "folds": folds, "target_fpr": target_fpr, "seed": seed,
            "methods": [m.name for m in methods], **res}


def by_kind(records: Sequence[Any], y: np.ndarray, scores: np.ndarray, threshold: float,
            fine: bool = True) -> dict[str, Any]:
    """Metrics per kind (and per sub-kind with ``fine``) of scored rows: a single-class kind is scored against
    every row of the other class (its AUROC) and reports its own TPR (malicious) or FPR (benign)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {}
    for label, fn in (("kind", kind_of), ("subkind", subkind_of)):
        if label == "subkind" and not fine:
            continue
        names = np.asarray([fn(r) for r in records], dtype=object)
        table = {}
        for name in sorted(set(names.tolist())):
            m = names == name
            for cls in (True, False):
                rows = m & (y == cls)
                if not rows.any():
                    continue
                sel = rows | (y != cls)
                key = name if (m & (y != cls)).sum() == 0 else f"{name} ({'malicious' if cls else 'benign'})"
                table[key] = set_metrics(y[sel], s[sel], threshold)
                table[key].update(n=int(rows.sum()), cls="malicious" if cls else "benign")
        out[label] = table
    return out


def layerwise_holdout(records: Sequence[dict[str, Any]], hidden: np.ndarray, key: str, layers: Sequence[int], *,
                      classifier: str = "logreg", benign: str = "pool", target_fpr: float = 0.01, seed: int = 0,
                      progress: bool = True) -> dict[str, Any]:
    """Leave-one-group-out of a linear probe on the last-token state of each layer (and bag-of-words once).

    Returns per layer the summary (worst and mean group AUROC, lowest TPR, highest FPR), the layer whose worst
    group AUROC is highest, and the full group table at that layer beside bag-of-words. Rows whose label is
    neither benign nor malicious are left out.
    """
    from ihs.guard.grouping import with_class_labels
    from ihs.guard.linear import BENIGN_LABELS, MALICIOUS_LABELS

    recs = with_class_labels(records)
    known = set(BENIGN_LABELS) | set(MALICIOUS_LABELS)
    rows = np.asarray([i for i, r in enumerate(recs) if str(r["label"]) in known], dtype=np.int64)
    recs = [recs[i] for i in rows]
    feats = Features({"last": np.asarray(hidden)[rows]}, {"last": list(range(np.asarray(hidden).shape[1]))})
    methods = [legacy_method(feats, int(v), classifier, seed=seed, name=f"layer {v}") for v in layers]
    methods.append(bow_method([r["text"] for r in recs], by_kind=False))
    for m in methods[:-1]:
        m.by_kind = False
    res = holdout_eval(recs, key, methods, benign=benign, target_fpr=target_fpr, seed=seed, progress=progress)
    per_layer = {int(v): res["summary"][f"layer {v}"] for v in layers}
    scored = {v: s for v, s in per_layer.items() if s.get("worst_auroc") is not None}
    best = max(scored, key=lambda v: (scored[v]["worst_auroc"], scored[v]["mean_auroc"])) if scored else None
    keep = [f"layer {best}", "bag-of-words"] if best is not None else ["bag-of-words"]
    groups = {g: {k: v for k, v in e.items() if k in keep or not isinstance(v, dict)} for g, e in res["groups"].items()}
    return {"key": key, "classifier": classifier, "benign_policy": benign, "target_fpr": target_fpr, "n": len(recs),
            "per_layer": per_layer, "best_layer": best, "bow": res["summary"]["bag-of-words"],
            "groups": groups, "methods": keep, "summary": {k: res["summary"][k] for k in keep}}
