"""The stronger guard's recipe: split by goal, kind chosen by leave-group-out CV, threshold held on every benign kind.

``fit_pooled_guard(bank, options)`` on a :class:`ihs.guard.bank.FeatureBank` (the model has run once):

1. rows whose label is benign or malicious are kept, texts de-duplicated (a text under both kinds of label
   is dropped);
2. goals never split (:func:`ihs.analysis.group_splits.goal_components`: a prompt, its jailbreak and
   benign wrappings, reformulations, buried and translated versions): ``test_frac`` of the goals of each
   class is held out, then ``calib_frac`` of the remaining benign goals is the calibration split;
3. the kind (layers, pooling, combination, head, refusal margin) is chosen by
   :func:`ihs.guard.select.select_recipe` on the training split only (leave-group-out folds), or given;
4. the head is fitted on the training split (Platt scaling on out-of-fold logits, folds grouped by goal);
5. the threshold is the highest of the per-kind thresholds on the calibration split's benign prompts, so
   every benign kind (normal, contrast, wrapped, alarming, buried, a user file ...) meets ``target_fpr``
   there; the card records the realised rate per kind;
6. the held-out test split is scored overall and per kind and sub-kind (``card["test"]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ihs.analysis.group_splits import goal_components, stratified_components
from ihs.data.validate import dedupe_key
from ihs.errors import DataError, IhsError
from ihs.guard.bank import FeatureBank
from ihs.guard.features import FeatureSpec
from ihs.guard.grouping import kind_of
from ihs.guard.guard import Guard
from ihs.guard.heads import Recipe, fit_head
from ihs.guard.holdout import by_kind
from ihs.guard.linear import BENIGN_LABELS, MALICIOUS_LABELS
from ihs.guard.metrics import set_metrics
from ihs.guard.select import SelectOptions, select_recipe


@dataclass
class PooledFitOptions:
    """Splits, the kind search (``select``) or a fixed ``recipe``, calibration.

    ``legacy``: today's recipe on the same split: the last token's state at one layer, layer and linear probe
    by grouped random-fold CV (``legacy_layers``, ``legacy_classifiers``, earliest layer within ``tolerance``),
    one threshold over all calibration benign prompts. ``sets``: fit and calibrate on the rows of these sets
    only (the split is still drawn over every row, so the test split is the same as for a guard of all sets).
    """

    select: SelectOptions = field(default_factory=SelectOptions)
    recipe: Recipe | None = None
    legacy: bool = False
    legacy_layers: Sequence[int] | None = None
    legacy_classifiers: Sequence[str] = ("logreg", "svm", "diffmean")
    tolerance: float = 0.005
    sets: Sequence[str] | None = None
    target_fpr: float = 0.01
    test_frac: float = 0.2
    calib_frac: float = 0.25
    folds: int = 5
    seed: int = 0
    benign: Sequence[str] = BENIGN_LABELS
    malicious: Sequence[str] = MALICIOUS_LABELS


def usable_rows(records: Sequence[dict[str, Any]], benign: Sequence[str],
                malicious: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, y) of the records with a benign or malicious label, de-duplicated on text (first copy
    kept; a text under both kinds of label dropped)."""
    labels = [str(r["label"]) for r in records]
    keep = [i for i, lab in enumerate(labels) if lab in benign or lab in malicious]
    seen: dict[str, bool] = {}
    conflict: set[str] = set()
    for i in keep:
        key, is_mal = dedupe_key(records[i]["text"]), labels[i] in malicious
        if key in seen and seen[key] != is_mal:
            conflict.add(key)
        seen.setdefault(key, is_mal)
    rows, used = [], set()
    for i in keep:
        key = dedupe_key(records[i]["text"])
        if key not in conflict and key not in used:
            used.add(key)
            rows.append(i)
    rows_arr = np.asarray(rows, dtype=np.int64)
    y = np.asarray([labels[i] in malicious for i in rows_arr], dtype=bool)
    return rows_arr, y


def goal_split(records: Sequence[Any], y: np.ndarray, test_frac: float, calib_frac: float,
               seed: int) -> dict[str, np.ndarray]:
    """Train / calibration (benign only) / test row indices; no goal sits on two sides."""
    if not (0 <= test_frac < 1 and 0 < calib_frac < 1):
        raise IhsError(f"fractions must be in [0, 1): test {test_frac}, calibration {calib_frac}")
    comp = goal_components(records)
    rng = np.random.default_rng(seed)
    everything = np.arange(len(y))
    test_comps = (stratified_components(comp, y, everything, test_frac, rng, min_each=1, leave=2)
                  if test_frac > 0 else np.empty(0, dtype=np.int64))
    in_test = np.isin(comp, test_comps)
    rest = np.flatnonzero(~in_test)
    benign_only = rest[~np.isin(comp[rest], np.unique(comp[rest][y[rest]]))]
    cal_comps = stratified_components(comp, y, benign_only, calib_frac, rng, min_each=1, leave=1)
    in_cal = np.isin(comp, cal_comps) & ~in_test
    return {"train": np.flatnonzero(~in_test & ~in_cal), "calibration": np.flatnonzero(in_cal),
            "test": np.flatnonzero(in_test)}


def _guard_spec(bank: FeatureBank, recipe: Recipe) -> FeatureSpec:
    spec = bank.spec
    return FeatureSpec(pooled={recipe.pooling: list(recipe.layers)},
                       refusal_layers=list(recipe.layers) if recipe.refusal else [],
                       ema_halflife=spec.ema_halflife, pool_start=spec.pool_start,
                       refusal_ids=list(spec.refusal_ids) if recipe.refusal else [],
                       compliance_ids=list(spec.compliance_ids) if recipe.refusal else [])


def _fit_legacy(feats: Any, y: np.ndarray, tr: np.ndarray, cal: np.ndarray, comp: np.ndarray, bank: FeatureBank,
                options: PooledFitOptions, progress: Callable[[int], None] | None) -> Guard:
    """Today's recipe (``ihs.guard.fit``'s layer and probe choice, ``Guard.fit_states``) on the given split."""
    from ihs.guard.fit import select_layer

    layers = list(options.legacy_layers) if options.legacy_layers is not None else feats.layers["last"]
    H = feats.arrays["last"][tr]
    pos = {v: i for i, v in enumerate(feats.layers["last"])}
    missing = [v for v in layers if v not in pos]
    if missing:
        raise IhsError(f"the features hold no last-token state at layer {missing[0]}")
    Hl = H[:, [pos[v] for v in layers]]
    selection = select_layer(Hl, y[tr].astype(int), comp[tr], list(range(len(layers))),
                             list(options.legacy_classifiers), options.folds, options.seed, options.tolerance, progress)
    chosen = selection["chosen"]
    if chosen is None:
        raise DataError("cross-validation gave no usable AUROC at any layer")
    chosen["layer"] = layers[chosen["layer"]]
    selection["layers"] = layers
    layer = chosen["layer"]
    X = feats.take("last", [layer], tr)[:, 0]
    guard = Guard.fit_states(X, y[tr].astype(int), layer=layer, classifier=chosen["classifier"],
                             calibration=feats.take("last", [layer], cal)[:, 0], target_fpr=options.target_fpr,
                             model=dict(bank.model), folds=options.folds, seed=options.seed, groups=comp[tr])
    guard.card["selection"] = selection
    return guard


def fit_pooled_guard(bank: FeatureBank, options: PooledFitOptions | None = None,
                     progress: Callable[[int], None] | None = None) -> Guard:
    """The whole recipe on a feature bank (see the module docstring); returns the calibrated guard."""
    options = options or PooledFitOptions()
    t0 = time.perf_counter()
    rows, y = usable_rows(bank.records, options.benign, options.malicious)
    if len(rows) == 0 or y.all() or not y.any():
        raise DataError(f"need benign and malicious prompts; got {int((~y).sum())} benign, {int(y.sum())} malicious")
    recs = [bank.records[i] for i in rows]
    feats = bank.features.subset(rows)
    split = goal_split(recs, y, options.test_frac, options.calib_frac, options.seed)
    if options.sets:
        allowed = np.asarray([kind_of(r) in set(options.sets) for r in recs], dtype=bool)
        split = {"train": split["train"][allowed[split["train"]]],
                 "calibration": split["calibration"][allowed[split["calibration"]]], "test": split["test"]}
    tr, cal, te = split["train"], split["calibration"], split["test"]
    if min(int(y[tr].sum()), int((~y[tr]).sum())) < options.folds:
        raise DataError(f"too few training prompts: {int((~y[tr]).sum())} benign, {int(y[tr].sum())} malicious")
    selection = None
    if options.legacy:
        recipe = None
    elif options.recipe is None:
        selection = select_recipe(feats.subset(tr), [recs[i] for i in tr], y[tr], options.select, progress)
        recipe = Recipe.from_dict(selection["chosen"])
    else:
        recipe = options.recipe
        missing = [k for k, ls in recipe.needs().items() if not feats.has(k, ls)]
        if missing:
            raise IhsError(f"the features hold no {missing[0]} at layers {list(recipe.layers)}")
    comp = goal_components(recs)
    if options.legacy:
        guard = _fit_legacy(feats, y, tr, cal, comp, bank, options, progress)
        recipe, selection = guard.recipe, guard.card.pop("selection")
    else:
        head = fit_head(recipe.head, recipe.design(feats, tr), y[tr].astype(int), folds=options.folds,
                        seed=options.seed, groups=comp[tr])
        guard = Guard(layer=recipe.deepest, threshold=0.5, threshold_logit=0.0, weight=np.zeros(0), bias=0.0,
                      target_fpr=options.target_fpr, model=dict(bank.model), recipe=recipe, head=head,
                      spec=_guard_spec(bank, recipe))
        guard.calibrate(feats.subset(cal), options.target_fpr, kinds=[kind_of(recs[i]) for i in cal])
    test: dict[str, Any] = {}
    if len(te):
        d = guard.decision_features(feats.subset(te))
        test = {"overall": set_metrics(y[te], d, guard.threshold_logit),
                **by_kind([recs[i] for i in te], y[te], d, guard.threshold_logit)}

    def counts(idx: np.ndarray) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in idx:
            k = kind_of(recs[i]) + (" (malicious)" if y[i] else "")
            out[k] = out.get(k, 0) + 1
        return out

    guard.card.update({
        "warnings": [], "recipe": "last-token, one layer, linear probe (today's)" if options.legacy else "pooled",
        "data": {**bank.info, "benign_labels": list(options.benign), "malicious_labels": list(options.malicious),
                 "n_rows": len(bank.records), "n_used": int(len(rows)), "bank": bank.info.get("path")},
        "splits": {"seed": options.seed, "test_frac": options.test_frac, "calib_frac": options.calib_frac,
                   "grouping": "goal components (a goal with its jailbreaks, wrappings, reformulations, buried and "
                               "translated versions)",
                   "counts": {k: counts(v) for k, v in split.items()},
                   "ids": {k: [str(recs[i]["id"]) for i in v] for k, v in split.items()}},
        "selection": selection, "test": test, "fit_seconds": time.perf_counter() - t0,
    })
    return guard
