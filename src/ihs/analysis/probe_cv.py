"""Cross-validation of one layer: the splits (real and shuffled labels), out-of-fold predictions, and the
per-classifier summary over layers (accuracy, interval, AUROC, F1, first layer reaching the target)."""


from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from ihs.analysis.classifiers import (
    NEGATIVE_LABEL,
    PAPER_SEED,
    PAPER_TEST_SIZE,
    TARGET,
    TRANSFER_LABELS,
    auroc,
    check_hidden,
    check_mode,
    decision_scores,
    make_classifier,
    one_blas_thread,
    parallel,
    quiet_fit,
    resolve_layers,
    t_interval,
    wilson_interval,
)
from ihs.data.validate import dedupe_key
from ihs.errors import DataError, IhsError


def plan_splits(y: np.ndarray, mode: str, folds: int, seed: int, control: bool):
    """Train/test index pairs for the real labels and for one fixed shuffle of them."""
    check_mode(mode)
    counts = np.bincount(y)
    if mode == "cv":
        if folds < 2:
            raise IhsError(f"--folds must be at least 2, got {folds}")
        if counts.min() < folds:
            raise DataError(f"too few prompts for {folds}-fold cross-validation: the smallest class has {counts.min()}")

        def make(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            return list(skf.split(np.zeros(len(labels)), labels))
    else:
        if counts.min() < 2:
            raise DataError("too few prompts for a 70/30 split: the smallest class has fewer than 2")

        def make(labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            tr, te = train_test_split(np.arange(len(labels)), test_size=PAPER_TEST_SIZE, random_state=seed)
            return [(tr, te)]

    splits = make(y)
    if not control:
        return splits, None, None
    control_y = np.random.default_rng(seed).permutation(y)
    return splits, control_y, make(control_y)


def cv_predict(X: np.ndarray, y: np.ndarray, splits, proto: Any, k: int):
    """Out-of-split predictions (−1 where never tested) and per-split accuracy and AUROC."""
    pred = np.full(len(y), -1, dtype=np.int64)
    fold_acc, fold_auc, not_converged = [], [], 0
    for tr, te in splits:
        if len(np.unique(y[tr])) < 2:  # a shuffled or tiny split can lose a class
            fold_acc.append(float("nan"))
            fold_auc.append(float("nan"))
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            est = clone(proto).fit(X[tr], y[tr])
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        p = est.predict(X[te])
        pred[te] = p
        fold_acc.append(float(np.mean(p == y[te])))
        fold_auc.append(auroc(y[te], decision_scores(est, X[te]), k))
    return pred, fold_acc, fold_auc, not_converged


@one_blas_thread
def layer_task(X: np.ndarray, y: np.ndarray, splits, control_y, control_splits,
                extra: Mapping[str, np.ndarray], classifier: str, mode: str, seed: int, k: int) -> dict[str, Any]:
    """Everything for one (classifier, layer): split predictions, control, full fit on extra sets."""
    t0 = time.perf_counter()
    proto = make_classifier(classifier, mode, seed)
    pred, fold_acc, fold_auc, nc = cv_predict(X, y, splits, proto, k)
    out: dict[str, Any] = {"pred": pred, "fold_acc": fold_acc, "fold_auc": fold_auc, "not_converged": nc}
    if control_y is not None:
        cpred, cfold, _, cnc = cv_predict(X, control_y, control_splits, proto, k)
        tested = cpred >= 0
        out["control_acc"] = float(np.mean(cpred[tested] == control_y[tested])) if tested.any() else float("nan")
        out["not_converged"] += cnc
    if extra:
        est = quiet_fit(clone(proto), X, y)
        out["extra"] = {name: est.predict(Xe) for name, Xe in extra.items()}
    out["seconds"] = time.perf_counter() - t0
    return out


def summarise_classifier(outs: list[dict[str, Any]], y: np.ndarray, layers: list[int], num_layers: int,
                          k: int, ci: str) -> dict[str, Any]:
    """Per-layer arrays (JSON-ready) from the per-layer task outputs."""
    acc, lo, hi, bal, auc, f1, folds, confusion, control = [], [], [], [], [], [], [], [], []
    for o in outs:
        tested = o["pred"] >= 0
        p, t = o["pred"][tested], y[tested]
        correct = int((p == t).sum())
        a = correct / len(t)
        if ci == "t" and len(o["fold_acc"]) > 1:
            interval = t_interval(o["fold_acc"])
        elif ci in ("wilson", "t"):
            interval = wilson_interval(correct, len(t))
        else:
            raise IhsError(f"unknown interval {ci!r}; choose wilson or t")
        recalls = [float(np.mean(p[t == c] == c)) for c in range(k) if (t == c).any()]
        acc.append(a)
        lo.append(interval[0])
        hi.append(interval[1])
        bal.append(float(np.mean(recalls)))
        auc.append(nanmean(o["fold_auc"]))
        f1.append(float(f1_score(t, p, average="binary" if k == 2 else "macro", pos_label=1, zero_division=0)))
        folds.append([float(v) for v in o["fold_acc"]])
        confusion.append(confusion_matrix(t, p, labels=list(range(k))).tolist())
        control.append(o.get("control_acc"))
    res: dict[str, Any] = {
        "accuracy": acc, "ci_low": lo, "ci_high": hi, "balanced_accuracy": bal, "auroc": auc, "f1": f1,
        "fold_accuracy": folds, "confusion": confusion,
        "n_test": int((outs[0]["pred"] >= 0).sum()) if outs else 0,
        "not_converged_fits": int(sum(o["not_converged"] for o in outs)),
        "seconds": float(sum(o["seconds"] for o in outs)),
    }
    if outs and "control_acc" in outs[0]:
        res["control_accuracy"] = control
        res["selectivity"] = [a - c for a, c in zip(acc, control, strict=True)]
    res.update(first_layer(acc, layers, num_layers, TARGET))
    strict = first_layer(lo, layers, num_layers, TARGET)
    res["first_layer_95_ci"] = strict["first_layer_95"]
    best = int(np.argmax(acc)) if acc else 0
    res["best_layer"] = layers[best] if acc else None
    res["best_accuracy"] = acc[best] if acc else None
    return res


def nanmean(values: Iterable[float]) -> float:
    a = np.asarray(list(values), dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def first_layer(values: Sequence[float], layers: Sequence[int], num_layers: int,
                target: float = TARGET) -> dict[str, Any]:
    """The first layer whose value reaches ``target``, absolute and as a fraction of depth L."""
    for v, layer in zip(values, layers, strict=True):
        if v is not None and v >= target:
            return {"first_layer_95": int(layer), "first_layer_95_depth": layer / num_layers if num_layers else 0.0}
    return {"first_layer_95": None, "first_layer_95_depth": None}


# -- stores ----------------------------------------------------------------------------------


class LayerwiseProbe(BaseEstimator):
    """One probe per layer on hidden states of shape (N, L+1, d), in the style of an sklearn estimator.

    ``fit(H, y)`` fits a fresh ``make_classifier(classifier, mode, seed)`` per selected layer
    (``layers``: indices, default all); ``predict``/``decision_function`` return one row per layer;
    ``score`` returns the per-layer accuracy array (not a scalar, unlike sklearn).
    ``cross_validate(H, y)`` runs the same protocol as ``ihs probe`` on one array.
    """

    def __init__(self, classifier: str = "svm", mode: str = "cv", layers: Sequence[int] | None = None,
                 seed: int = PAPER_SEED, n_jobs: int = 1) -> None:
        self.classifier = classifier
        self.mode = mode
        self.layers = layers
        self.seed = seed
        self.n_jobs = n_jobs

    def _layers(self, H: np.ndarray) -> list[int]:
        return resolve_layers(self.layers, H.shape[1] - 1)

    def fit(self, H: np.ndarray, y: Sequence) -> LayerwiseProbe:
        H = check_hidden(H)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.layers_ = self._layers(H)
        proto = make_classifier(self.classifier, self.mode, self.seed)
        self.estimators_ = parallel(
            quiet_fit, ((clone(proto), np.ascontiguousarray(H[:, layer]), y) for layer in self.layers_), self.n_jobs)
        return self

    def predict(self, H: np.ndarray) -> np.ndarray:
        """Predicted labels, shape (n_layers, N)."""
        H = check_hidden(H)
        return np.stack([est.predict(H[:, layer]) for layer, est in zip(self.layers_, self.estimators_, strict=True)])

    def decision_function(self, H: np.ndarray) -> list[np.ndarray]:
        """Per layer: scores toward ``classes_[1]`` (two classes) or (N, k) (more classes)."""
        H = check_hidden(H)
        return [decision_scores(est, H[:, layer]) for layer, est in zip(self.layers_, self.estimators_, strict=True)]

    def score(self, H: np.ndarray, y: Sequence) -> np.ndarray:
        """Accuracy per layer, shape (n_layers,)."""
        return (self.predict(H) == np.asarray(y)[None, :]).mean(axis=1)

    def cross_validate(self, H: np.ndarray, y: Sequence, folds: int = 5, control: bool = True,
                       ci: str = "wilson") -> dict[str, Any]:
        """Per-layer metrics under this probe's mode (k-fold or the paper's 70/30 split)."""
        H = check_hidden(H)
        y_raw = np.asarray(y)
        classes = list(np.unique(y_raw))
        yi = np.array([classes.index(v) for v in y_raw])
        layers = self._layers(H)
        splits, control_y, control_splits = plan_splits(yi, self.mode, folds, self.seed, control)
        outs = parallel(layer_task, ((np.ascontiguousarray(H[:, layer]), yi, splits, control_y, control_splits, {},
                                        self.classifier, self.mode, self.seed, len(classes)) for layer in layers),
                         self.n_jobs)
        return summarise_classifier(outs, yi, layers, H.shape[1] - 1, len(classes), ci)


def default_classes(labels: Sequence[str]) -> list[str]:
    """Labels to train on: all but the transfer sets (contrast, jailbreak), ``normal`` first."""
    seen = list(dict.fromkeys(str(v) for v in labels))
    trainable = [v for v in seen if v not in TRANSFER_LABELS]
    chosen = trainable if len(trainable) >= 2 else seen
    return sorted(chosen, key=lambda v: (v != NEGATIVE_LABEL, chosen.index(v)))


def dedupe_rows(texts: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Row indices to keep: first copy of each prompt; prompts found under two labels dropped.

    A prompt in two classes has no single true label, and a copy on each side of a split
    would let the probe score by recall rather than by generalisation.
    """
    keys = [dedupe_key(t) for t in texts]
    label_sets: dict[str, set[str]] = {}
    for key, lab in zip(keys, labels, strict=True):
        label_sets.setdefault(key, set()).add(str(lab))
    seen: set[str] = set()
    keep, dups, conflicts = [], 0, 0
    for i, key in enumerate(keys):
        if len(label_sets[key]) > 1:
            conflicts += 1
        elif key in seen:
            dups += 1
        else:
            seen.add(key)
            keep.append(i)
    return np.array(keep, dtype=np.int64), {"rows_in": len(keys), "duplicates_dropped": dups,
                                             "conflicts_dropped": conflicts, "rows_kept": len(keep)}
