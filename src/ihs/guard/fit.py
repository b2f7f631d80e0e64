"""The guard's whole recipe: prompts split by goal, layer and probe chosen by cross-validation, threshold calibrated.

``fit_guard(hidden, records, model_info)`` on an (N, L+1, d) array of last-token states: a held-out
test split, a benign calibration split, layer and probe chosen by cross-validated AUROC on the
training split only, the threshold calibrated for the target false-positive rate on the calibration
split, and the test split's metrics on the card. Splits are group-aware: a jailbreak prompt goes with
its goal (``tags.goal_id``), so a goal and its wrapped versions never sit on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ihs.data.validate import dedupe_key
from ihs.errors import DataError, IhsError
from ihs.guard.guard import (
    BENIGN_LABELS,
    MALICIOUS_LABELS,
    PROBES,
    Guard,
    auroc,
    oof_decision,
    tpr_at_fpr,
)


@dataclass
class FitOptions:
    """How ``fit_guard`` splits, selects and calibrates.

    ``test_frac`` of the prompt groups is held out for evaluation; ``calib_frac`` of the remaining
    benign groups is the calibration split; the rest trains. Candidate layers (default all) and
    probes are compared by ``folds``-fold cross-validated AUROC on the training split; the earliest
    layer within ``tolerance`` of the best AUROC wins (an earlier layer is a cheaper guard).
    """

    layers: Sequence[int] | None = None
    classifiers: Sequence[str] = PROBES
    folds: int = 5
    target_fpr: float = 0.01
    test_frac: float = 0.2
    calib_frac: float = 0.25
    tolerance: float = 0.005
    seed: int = 0
    benign: Sequence[str] | None = None
    malicious: Sequence[str] | None = None


def group_keys(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """Split groups: a jailbreak prompt goes with its goal (``tags.goal_id``), so a goal and its wrapped
    versions never sit on both sides of a split; everything else is its own (de-duplicated) group."""
    keys = []
    for r in records:
        goal = (r.get("tags") or {}).get("goal_id")
        keys.append(str(goal) if goal else str(r.get("id") or dedupe_key(r["text"])))
    return np.asarray(keys, dtype=object)


def resolve_labels(labels: Sequence[str], benign: Sequence[str] | None,
                   malicious: Sequence[str] | None) -> tuple[list[str], list[str]]:
    present = list(dict.fromkeys(str(v) for v in labels))
    b = list(benign) if benign else [v for v in present if v in BENIGN_LABELS]
    m = list(malicious) if malicious else [v for v in present if v in MALICIOUS_LABELS]
    for name, chosen in (("benign", b), ("malicious", m)):
        missing = [v for v in chosen if v not in present]
        if missing:
            raise DataError(f"{name} label {missing[0]!r} is not in the data (labels: {', '.join(present)})")
    if not b or not m:
        raise DataError(f"need benign and malicious prompts; labels in the data: {', '.join(present)} "
                        "(name them with --benign / --malicious)")
    overlap = set(b) & set(m)
    if overlap:
        raise DataError(f"label {sorted(overlap)[0]!r} cannot be both benign and malicious")
    return b, m


def split_rows(records: Sequence[dict[str, Any]], y: np.ndarray, test_frac: float, calib_frac: float,
               seed: int) -> dict[str, np.ndarray]:
    """Group-aware, label-stratified split into train / calibration (benign only) / test row indices."""
    if not (0 <= test_frac < 1 and 0 < calib_frac < 1):
        raise IhsError(f"fractions must be in [0, 1): test {test_frac}, calibration {calib_frac}")
    rng = np.random.default_rng(seed)
    labels = np.asarray([r["label"] for r in records], dtype=object)
    groups = group_keys(records)
    # a group's label for stratification: its first row's label
    first: dict[str, str] = {}
    for g, lab in zip(groups, labels, strict=True):
        first.setdefault(g, lab)
    test_groups: set[str] = set()
    calib_groups: set[str] = set()
    for lab in sorted(set(first.values())):
        gs = sorted(g for g, v in first.items() if v == lab)
        rng.shuffle(gs)
        n_test = int(round(test_frac * len(gs)))
        test_groups.update(gs[:n_test])
        rest = gs[n_test:]
        if y[labels == lab][0] == 0:
            n_cal = int(round(calib_frac * len(rest)))
            calib_groups.update(rest[:n_cal])
    in_test = np.array([g in test_groups for g in groups])
    in_cal = np.array([g in calib_groups for g in groups]) & ~in_test & (y == 0)
    train = ~in_test & ~in_cal
    return {"train": np.flatnonzero(train), "calibration": np.flatnonzero(in_cal), "test": np.flatnonzero(in_test)}


def select_layer(H: np.ndarray, y: np.ndarray, groups: np.ndarray, layers: Sequence[int],
                 classifiers: Sequence[str], folds: int, seed: int, tolerance: float,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Cross-validated AUROC and TPR at 1% FPR for each (classifier, layer) on the training rows only."""
    res: dict[str, Any] = {"layers": list(layers), "folds": folds, "classifiers": {}}
    use_groups = len(np.unique(groups[y == 1])) >= folds and len(np.unique(groups[y == 0])) >= folds
    for clf in classifiers:
        auc, tpr, acc = [], [], []
        for layer in layers:
            d = oof_decision(np.ascontiguousarray(H[:, layer], dtype=np.float64), y, clf, folds, seed,
                              groups if use_groups else None)
            ok = np.isfinite(d)
            auc.append(auroc(y[ok], d[ok]))
            tpr.append(tpr_at_fpr(y[ok], d[ok], 0.01))
            acc.append(float(np.mean((d[ok] > 0) == y[ok].astype(bool))))
            if progress:
                progress(1)
        res["classifiers"][clf] = {"auroc": auc, "tpr_at_1pct_fpr": tpr, "accuracy": acc}
    best = max(np.nanmax(v["auroc"]) for v in res["classifiers"].values())
    chosen = None
    for i, layer in enumerate(layers):
        cands = [(v["auroc"][i], v["tpr_at_1pct_fpr"][i], c) for c, v in res["classifiers"].items()
                 if np.isfinite(v["auroc"][i]) and v["auroc"][i] >= best - tolerance]
        if cands:
            a, t, c = max(cands, key=lambda z: (z[0], np.nan_to_num(z[1])))
            chosen = {"layer": int(layer), "classifier": c, "cv_auroc": float(a), "cv_tpr_at_1pct_fpr": float(t)}
            break
    res.update({"best_cv_auroc": float(best), "tolerance": tolerance, "grouped_folds": bool(use_groups),
                "chosen": chosen})
    return res


def fit_guard(
    hidden: np.ndarray,
    records: Sequence[dict[str, Any]],
    model: dict[str, Any] | Any,
    options: FitOptions | None = None,
    progress: Callable[[int], None] | None = None,
    data_info: dict[str, Any] | None = None,
) -> Guard:
    """The whole recipe on (N, L+1, d) states and their records (id, text, label, tags)."""
    options = options or FitOptions()
    t0 = time.perf_counter()
    hidden = np.asarray(hidden)
    if hidden.ndim != 3 or hidden.shape[0] != len(records):
        raise DataError(f"hidden must be (N, L+1, d) with one record per row, got {hidden.shape} for {len(records)}")
    labels = np.asarray([str(r["label"]) for r in records], dtype=object)
    benign, malicious = resolve_labels(labels, options.benign, options.malicious)
    keep = np.flatnonzero(np.isin(labels, benign + malicious))
    # de-duplicate on text (first copy kept); a text under both a benign and a malicious label is dropped
    seen: dict[str, int] = {}
    conflict: set[str] = set()
    for i in keep:
        key = dedupe_key(records[i]["text"])
        is_mal = labels[i] in malicious
        if key in seen and seen[key] != is_mal:
            conflict.add(key)
        seen.setdefault(key, is_mal)
    rows, used = [], set()
    for i in keep:
        key = dedupe_key(records[i]["text"])
        if key in conflict or key in used:
            continue
        used.add(key)
        rows.append(i)
    rows = np.asarray(rows, dtype=np.int64)
    recs = [records[i] for i in rows]
    y = np.isin(labels[rows], malicious).astype(np.int64)
    split = split_rows(recs, y, options.test_frac, options.calib_frac, options.seed)
    tr, cal, te = split["train"], split["calibration"], split["test"]
    if len(cal) == 0:
        raise DataError("no benign prompts left for the calibration split; give more benign data")
    counts = np.bincount(y[tr], minlength=2)
    if counts.min() < options.folds:
        raise DataError(f"too few training prompts for {options.folds}-fold cross-validation: "
                        f"{counts[0]} benign, {counts[1]} malicious")
    num_layers = hidden.shape[1] - 1
    layers = sorted(set(int(v) for v in options.layers)) if options.layers is not None else list(range(num_layers + 1))
    bad = [v for v in layers if not 0 <= v <= num_layers]
    if bad or not layers:
        raise IhsError(f"layer {bad[0] if bad else '(none)'} out of range: the states have layers 0..{num_layers}")
    for c in options.classifiers:
        if c not in PROBES:
            raise IhsError(f"unknown guard probe {c!r}; choose from {', '.join(PROBES)}")
    H_tr = hidden[rows[tr]]
    groups = group_keys(recs)
    selection = select_layer(H_tr, y[tr], groups[tr], layers, list(options.classifiers), options.folds,
                             options.seed, options.tolerance, progress)
    chosen = selection["chosen"]
    if chosen is None:
        raise DataError("cross-validation gave no usable AUROC at any layer")
    layer = chosen["layer"]
    guard = Guard.fit_states(H_tr[:, layer], y[tr], layer=layer, classifier=chosen["classifier"],
                             calibration=hidden[rows[cal], layer], target_fpr=options.target_fpr, model=model,
                             folds=options.folds, seed=options.seed, groups=groups[tr])
    test_metrics: dict[str, Any] = {}
    if len(te):
        p = guard.score_states(hidden[rows[te], layer])
        v = guard.verdict_states(hidden[rows[te], layer])
        yt = y[te]
        test_metrics = {"n": {"benign": int((yt == 0).sum()), "malicious": int((yt == 1).sum())},
                        "auroc": auroc(yt, p), "tpr_at_1pct_fpr": tpr_at_fpr(yt, p, 0.01),
                        "tpr_at_threshold": float(np.mean(v[yt == 1])) if (yt == 1).any() else None,
                        "fpr_at_threshold": float(np.mean(v[yt == 0])) if (yt == 0).any() else None,
                        "accuracy": float(np.mean(v == yt.astype(bool)))}

    def ids(idx: np.ndarray) -> list[str]:
        return [str(recs[i]["id"]) for i in idx]

    def by_label(idx: np.ndarray) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in idx:
            out[str(recs[i]["label"])] = out.get(str(recs[i]["label"]), 0) + 1
        return out

    warns = []
    if layer == 0:
        warns.append("layer 0 (the embedding output) sees only the last token: the classes differ in their final "
                     "token, a confound of the prompt sets rather than a reading of the request; check transfer with "
                     "`ihs guard eval --store OTHER`, or refit with --layers 1-L")
    elif chosen["cv_auroc"] > 0.999 and layer <= max(1, num_layers // 12):
        warns.append(f"near-perfect CV AUROC already at layer {layer}: the prompt sets may be separable by surface "
                     "cues; check transfer to another dataset with `ihs guard eval --store OTHER`")
    guard.card.update({
        "warnings": warns,
        "data": {**(data_info or {}), "benign_labels": benign, "malicious_labels": malicious,
                 "n_rows": int(len(hidden)), "n_used": int(len(rows)), "n_dropped_duplicates": int(len(keep) - len(rows))},
        "splits": {"seed": options.seed, "test_frac": options.test_frac, "calib_frac": options.calib_frac,
                   "grouping": "jailbreak prompts grouped with their goal (tags.goal_id)",
                   "counts": {k: by_label(v) for k, v in split.items()},
                   "ids": {k: ids(v) for k, v in split.items()}},
        "selection": selection,
        "test": test_metrics,
        "fit_seconds": time.perf_counter() - t0,
    })
    return guard
