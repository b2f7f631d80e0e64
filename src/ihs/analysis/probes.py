"""Weak-to-Strong Explanation: per-layer probes on the last-token hidden states.

The paper's first claim is that weak classifiers (a linear SVM, a small MLP) separate malicious
from normal prompts with >95% accuracy already in early layers. A high accuracy alone proves
little, so every number here comes with the controls a reviewer asks for:

- **cross-validation on de-duplicated prompts** (``mode="cv"``, the default): stratified k-fold,
  the scaler fitted inside each fold, duplicates removed before splitting (the paper's files hold
  duplicates that otherwise land on both sides of a split);
- **a shuffled-label control** per layer (selectivity = accuracy minus control accuracy);
- **a bag-of-words baseline** on the raw prompt text: if surface words already separate the
  classes, a hidden-state probe doing the same says little about "concepts";
- **the contrast set's false-positive rate**: benign prompts with trigger words;
- **the last-token confound check**: layer 0 (the embedding output) sees only the last token, so
  a layer-0 accuracy far above chance means the classes differ in their final token;
- **transfer**: a normal-vs-malicious probe scoring jailbreak prompts, and a probe trained on one
  store scoring another store of the same model.

``mode="paper"`` reproduces the paper's own protocol (its ``weak2strong.py``): one unstratified
70/30 ``train_test_split(test_size=0.3, random_state=42)`` of the rows as given, ``SVC(kernel="linear")``
on the raw (unscaled) states and ``MLPClassifier`` (100 hidden units, Adam, lr 0.01, alpha 0.01,
300 iterations, ``random_state=42``) on ``StandardScaler``-ed states; no de-duplication.

Results are plain dicts of lists (JSON-ready); figures live in ``ihs.plots.probes``.
Layer index 0 is the embedding output and index i the output of decoder block i.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from ihs.analysis.surface import BagOfWordsBaseline
from ihs.data.validate import dedupe_key
from ihs.errors import DataError, IhsError, StoreError

CLASSIFIERS: tuple[str, ...] = ("svm", "mlp", "logreg", "diffmean")
MODES: tuple[str, ...] = ("cv", "paper")
PAPER_SEED = 42
PAPER_TEST_SIZE = 0.3
CONFOUND_THRESHOLD = 0.6
TARGET = 0.95
#: Labels that are scored by a trained probe rather than trained on, unless named in ``classes``.
TRANSFER_LABELS = ("contrast", "jailbreak")
NEGATIVE_LABEL = "normal"
POSITIVE_LABEL = "malicious"


def _one_blas_thread(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func`` with single-threaded BLAS: probe matrices are small, and multi-threaded BLAS on
    them mostly spins (50x slower on a busy 2-core machine); parallelism comes from layers instead."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


# -- estimators ------------------------------------------------------------------------------


class DiffMeanProbe(ClassifierMixin, BaseEstimator):
    """Difference-of-means direction: project on mu_pos - mu_neg, threshold at the midpoint.

    The simplest linear probe there is: no optimisation, so a high accuracy cannot come from a
    flexible classifier fitting noise. For two classes it is exactly the nearest-class-mean rule;
    with more classes it predicts the nearest class mean (Euclidean), which is the same rule.
    ``direction_`` and ``threshold_`` are set for two classes.
    """

    def fit(self, X: np.ndarray, y: Sequence) -> DiffMeanProbe:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("DiffMeanProbe needs at least two classes")
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        if len(self.classes_) == 2:
            self.direction_ = self.means_[1] - self.means_[0]
            self.threshold_ = float(self.direction_ @ (self.means_[0] + self.means_[1]) / 2)
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Binary: signed projection past the threshold; more classes: minus squared distances."""
        X = np.asarray(X, dtype=np.float64)
        if len(self.classes_) == 2:
            return X @ self.direction_ - self.threshold_
        d2 = (X**2).sum(1)[:, None] - 2 * X @ self.means_.T + (self.means_**2).sum(1)[None, :]
        return -d2

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[scores.argmax(1)]


def make_classifier(name: str, mode: str = "cv", seed: int = PAPER_SEED) -> Pipeline:
    """A fresh, unfitted probe pipeline; the scaler sits inside it so it is fitted per fold.

    ``svm`` is the paper's ``SVC(kernel="linear")`` (C=1) in both modes: on standardised inputs in cv
    mode, on the raw states in paper mode, as the paper's code did. ``LinearSVC`` gives the same
    test predictions on real stores but is up to 10x slower on the shuffled-label control, whose
    labels no hyperplane fits (see ``benchmarks/bench_probes.py``). ``mlp`` has the paper's
    settings in both modes.
    """
    _check_mode(mode)
    if name == "svm":
        if mode == "paper":
            return Pipeline([("clf", SVC(kernel="linear"))])
        clf: Any = SVC(kernel="linear", C=1.0)
    elif name == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(100,), solver="adam", learning_rate_init=0.01, alpha=0.01,
                            max_iter=300, random_state=seed)
    elif name == "logreg":
        clf = LogisticRegression(C=1.0, max_iter=1000)
    elif name == "diffmean":
        clf = DiffMeanProbe()
    else:
        raise IhsError(f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)}")
    return Pipeline([("scale", StandardScaler()), ("clf", clf)])


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise IhsError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def parse_classifiers(spec: str | Sequence[str]) -> list[str]:
    """``"svm,mlp"`` or a list -> validated, de-duplicated names in the order given."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise IhsError(f"no classifier given; choose from {', '.join(CLASSIFIERS)}")
    bad = [n for n in names if n not in CLASSIFIERS]
    if bad:
        raise IhsError(f"unknown classifier {bad[0]!r}; choose from {', '.join(CLASSIFIERS)}")
    return list(dict.fromkeys(names))


def _scores(est: Any, X: np.ndarray) -> np.ndarray:
    """Continuous scores for AUROC: 1-D toward ``classes_[1]`` for two classes, else (n, k)."""
    if hasattr(est, "decision_function"):
        try:
            s = est.decision_function(X)
        except AttributeError:  # a Pipeline whose last step has none
            s = est.predict_proba(X)
    else:
        s = est.predict_proba(X)
    s = np.asarray(s, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    return s


def _auroc(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Binary AUROC, or the macro mean of one-vs-rest AUROCs; NaN when a class is absent."""
    try:
        if k == 2:
            if len(np.unique(y)) < 2:
                return float("nan")
            return float(roc_auc_score(y == 1, scores))
        aucs = [roc_auc_score(y == c, scores[:, c]) for c in range(k) if 0 < (y == c).sum() < len(y)]
        return float(np.mean(aucs)) if aucs else float("nan")
    except ValueError:
        return float("nan")


# -- intervals -------------------------------------------------------------------------------


def wilson_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion: stays in [0, 1] and is not degenerate at 100%."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """t-interval over folds, clipped to [0, 1] (rough: folds share training data)."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), float(a.mean())
    half = float(stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return max(0.0, float(a.mean()) - half), min(1.0, float(a.mean()) + half)


# -- per-layer estimator (scikit-learn style) ------------------------------------------------


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
        return _resolve_layers(self.layers, H.shape[1] - 1)

    def fit(self, H: np.ndarray, y: Sequence) -> LayerwiseProbe:
        H = _check_hidden(H)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.layers_ = self._layers(H)
        proto = make_classifier(self.classifier, self.mode, self.seed)
        self.estimators_ = _parallel(
            _quiet_fit, ((clone(proto), np.ascontiguousarray(H[:, layer]), y) for layer in self.layers_), self.n_jobs)
        return self

    def predict(self, H: np.ndarray) -> np.ndarray:
        """Predicted labels, shape (n_layers, N)."""
        H = _check_hidden(H)
        return np.stack([est.predict(H[:, layer]) for layer, est in zip(self.layers_, self.estimators_, strict=True)])

    def decision_function(self, H: np.ndarray) -> list[np.ndarray]:
        """Per layer: scores toward ``classes_[1]`` (two classes) or (N, k) (more classes)."""
        H = _check_hidden(H)
        return [_scores(est, H[:, layer]) for layer, est in zip(self.layers_, self.estimators_, strict=True)]

    def score(self, H: np.ndarray, y: Sequence) -> np.ndarray:
        """Accuracy per layer, shape (n_layers,)."""
        return (self.predict(H) == np.asarray(y)[None, :]).mean(axis=1)

    def cross_validate(self, H: np.ndarray, y: Sequence, folds: int = 5, control: bool = True,
                       ci: str = "wilson") -> dict[str, Any]:
        """Per-layer metrics under this probe's mode (k-fold or the paper's 70/30 split)."""
        H = _check_hidden(H)
        y_raw = np.asarray(y)
        classes = list(np.unique(y_raw))
        yi = np.array([classes.index(v) for v in y_raw])
        layers = self._layers(H)
        splits, control_y, control_splits = _plan_splits(yi, self.mode, folds, self.seed, control)
        outs = _parallel(_layer_task, ((np.ascontiguousarray(H[:, layer]), yi, splits, control_y, control_splits, {},
                                        self.classifier, self.mode, self.seed, len(classes)) for layer in layers),
                         self.n_jobs)
        return _summarise_classifier(outs, yi, layers, H.shape[1] - 1, len(classes), ci)


def _check_hidden(H: np.ndarray) -> np.ndarray:
    H = np.asarray(H)
    if H.ndim != 3:
        raise IhsError(f"hidden states must have shape (N, L+1, d), got {H.shape}")
    return H


def _resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers + 1))
    out = sorted(set(int(v) for v in layers))
    bad = [v for v in out if not 0 <= v <= num_layers]
    if bad or not out:
        raise IhsError(f"layer {bad[0] if bad else '(none)'} out of range: this store has layers 0..{num_layers}")
    return out


@_one_blas_thread
def _quiet_fit(est: Any, X: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def _parallel(func: Callable[..., Any], args: Iterable[tuple], n_jobs: int,
              advance: Callable[[int], None] | None = None) -> list[Any]:
    """``[func(*a) for a in args]``, in worker processes when ``n_jobs`` > 1, order kept.

    ``func`` is a module-level function and ``args`` a lazy iterable, so each worker receives one
    layer's slice (a few MB) rather than the whole store.
    """
    if n_jobs == 1:
        out = []
        for a in args:
            out.append(func(*a))
            if advance:
                advance(1)
        return out
    from joblib import Parallel, delayed

    results: dict[int, Any] = {}
    gen = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        delayed(_indexed)(func, i, a) for i, a in enumerate(args)
    )
    for i, res in gen:
        results[i] = res
        if advance:
            advance(1)
    return [results[i] for i in range(len(results))]


def _indexed(func: Callable[..., Any], i: int, args: tuple) -> tuple[int, Any]:
    return i, func(*args)


# -- the per-layer work ----------------------------------------------------------------------


def _plan_splits(y: np.ndarray, mode: str, folds: int, seed: int, control: bool):
    """Train/test index pairs for the real labels and for one fixed shuffle of them."""
    _check_mode(mode)
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


def _cv_predict(X: np.ndarray, y: np.ndarray, splits, proto: Any, k: int):
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
        fold_auc.append(_auroc(y[te], _scores(est, X[te]), k))
    return pred, fold_acc, fold_auc, not_converged


@_one_blas_thread
def _layer_task(X: np.ndarray, y: np.ndarray, splits, control_y, control_splits,
                extra: Mapping[str, np.ndarray], classifier: str, mode: str, seed: int, k: int) -> dict[str, Any]:
    """Everything for one (classifier, layer): split predictions, control, full fit on extra sets."""
    t0 = time.perf_counter()
    proto = make_classifier(classifier, mode, seed)
    pred, fold_acc, fold_auc, nc = _cv_predict(X, y, splits, proto, k)
    out: dict[str, Any] = {"pred": pred, "fold_acc": fold_acc, "fold_auc": fold_auc, "not_converged": nc}
    if control_y is not None:
        cpred, cfold, _, cnc = _cv_predict(X, control_y, control_splits, proto, k)
        tested = cpred >= 0
        out["control_acc"] = float(np.mean(cpred[tested] == control_y[tested])) if tested.any() else float("nan")
        out["not_converged"] += cnc
    if extra:
        est = _quiet_fit(clone(proto), X, y)
        out["extra"] = {name: est.predict(Xe) for name, Xe in extra.items()}
    out["seconds"] = time.perf_counter() - t0
    return out


def _summarise_classifier(outs: list[dict[str, Any]], y: np.ndarray, layers: list[int], num_layers: int,
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
        auc.append(_nanmean(o["fold_auc"]))
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


def _nanmean(values: Iterable[float]) -> float:
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


def _ends_with_punct(text: str) -> bool:
    core = text.rstrip().rstrip("\"'”’)]»")
    return bool(core) and core[-1] in ".?"


def probe_store(
    store: Any,
    classifiers: Sequence[str] = ("svm", "mlp", "logreg", "diffmean"),
    mode: str = "cv",
    classes: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = PAPER_SEED,
    control: bool = True,
    bow: bool = True,
    layers: Sequence[int] | None = None,
    n_jobs: int = 1,
    ci: str = "wilson",
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
    by: str | None = "auto",
) -> dict[str, Any]:
    """Probe every layer of one ``ActivationStore``; return the store's section of ``probe.json``.

    ``by`` names a tag (e.g. ``lang``) whose values split the out-of-fold accuracy into groups
    (``result["by"]``); ``"auto"`` uses ``lang`` when the store holds two or more languages.

    ``classes`` (default: every label but contrast and jailbreak, normal first) are the classes the
    probes learn; two classes give binary metrics with the second class as positive. Every other
    label in the store (contrast, jailbreak, ...) is a transfer set: a probe fitted on all training
    rows scores it, and the result is the share predicted as each class per layer.
    ``progress`` is called with 1 after each (classifier, layer) task.
    """
    classifiers = parse_classifiers(classifiers)
    _check_mode(mode)
    labels_all = np.asarray(store.labels, dtype=object)
    present = list(dict.fromkeys(str(v) for v in labels_all))
    classes = list(classes) if classes else default_classes(present)
    missing = [c for c in classes if c not in present]
    if missing:
        raise StoreError(f"class {missing[0]!r} is not in store {name or store.path}; it has: {', '.join(present) or 'none'}")
    if len(classes) < 2:
        raise StoreError(f"store {name or store.path} has only one class ({', '.join(present) or 'none'}); "
                         "a probe needs at least two, e.g. normal and malicious")
    num_layers = store.hidden.shape[1] - 1
    layer_list = _resolve_layers(layers, num_layers)
    texts = store.prompts
    in_classes = np.flatnonzero(np.isin(labels_all, classes))
    if mode == "cv":
        keep, dedupe = dedupe_rows([texts[i] for i in in_classes], labels_all[in_classes])
        rows = in_classes[keep]
    else:
        rows = in_classes
        _, info = dedupe_rows([texts[i] for i in in_classes], labels_all[in_classes])
        dedupe = {"rows_in": len(rows), "duplicates_dropped": 0, "conflicts_dropped": 0, "rows_kept": len(rows),
                  "duplicates_present": info["duplicates_dropped"] + info["conflicts_dropped"]}
    y = np.array([classes.index(str(v)) for v in labels_all[rows]], dtype=np.int64)
    k = len(classes)
    counts = np.bincount(y, minlength=k)
    if counts.min() == 0:
        raise StoreError(f"class {classes[int(counts.argmin())]!r} has no prompts left after de-duplication")
    splits, control_y, control_splits = _plan_splits(y, mode, folds, seed, control)

    # transfer sets: the other labels, without prompts that also occur in the training rows
    train_keys = {dedupe_key(texts[i]) for i in rows}
    extra_rows: dict[str, np.ndarray] = {}
    for lab in present:
        if lab in classes:
            continue
        idx = np.flatnonzero(labels_all == lab)
        kept, seen = [], set()
        for i in idx:
            key = dedupe_key(texts[i])
            if key not in train_keys and key not in seen:
                seen.add(key)
                kept.append(i)
        if kept:
            extra_rows[lab] = np.array(kept, dtype=np.int64)

    hidden = store.hidden
    tasks = [(clf, layer) for clf in classifiers for layer in layer_list]

    args = ((hidden[rows, layer], y, splits, control_y, control_splits,
             {lab: hidden[idx, layer] for lab, idx in extra_rows.items()}, clf, mode, seed, k)
            for clf, layer in tasks)
    t0 = time.perf_counter()
    outs = _parallel(_layer_task, args, n_jobs, progress)
    wall = time.perf_counter() - t0

    result: dict[str, Any] = {
        "name": name or (store.path.name if getattr(store, "path", None) else "store"),
        "path": str(store.path) if getattr(store, "path", None) else None,
        "model": store.manifest.get("model", {}),
        "chat": store.manifest.get("chat"),
        "final_punct": _final_punct_flag(store),
        "num_layers": num_layers,
        "hidden_size": int(hidden.shape[2]),
        "layers": layer_list,
        "depth": [layer / num_layers if num_layers else 0.0 for layer in layer_list],
        "classes": classes,
        "positive": classes[1] if k == 2 else None,
        "n": {c: int(counts[i]) for i, c in enumerate(classes)},
        "chance": float(counts.max() / counts.sum()),
        "dedupe": dedupe,
        "classifiers": {},
        "sets": {},
        "warnings": [],
        "wall_seconds": wall,
    }
    by_clf: dict[str, list[dict[str, Any]]] = {c: [] for c in classifiers}
    for (clf, _), o in zip(tasks, outs, strict=True):
        by_clf[clf].append(o)
    for clf in classifiers:
        result["classifiers"][clf] = _summarise_classifier(by_clf[clf], y, layer_list, num_layers, k, ci)

    for lab, idx in extra_rows.items():
        result["sets"][lab] = _transfer_set(store, idx, lab, classes, classifiers, by_clf, result)
    _convenience_keys(result)
    by_tag = _by_tag(store, rows, by)
    if by_tag:
        result["by"] = by_group(store, rows, y, by_clf, by_tag, layer_list, num_layers)
    if bow:
        result["bow"] = _bow(texts, rows, y, splits, classes, extra_rows, seed)
    result["confound"] = _confound(store, rows, y, classes, result)
    if result["confound"]["warn"]:
        result["warnings"].append(result["confound"]["message"])
    if mode == "paper" and dedupe.get("duplicates_present"):
        result["warnings"].append(
            f"paper mode keeps duplicates as the paper did: {dedupe['duplicates_present']} duplicate rows can sit "
            "on both sides of the split")
    return result


def _by_tag(store: Any, rows: np.ndarray, by: str | None) -> str | None:
    if by is None or by == "":
        return None
    if by == "auto":
        values = {(store.records[i].get("tags") or {}).get("lang") for i in rows} - {None}
        return "lang" if len(values) > 1 else None
    if not any(by in (store.records[i].get("tags") or {}) for i in rows):
        raise StoreError(f"no prompt of the probed classes has a {by!r} tag")
    return by


def by_group(store: Any, rows: np.ndarray, y: np.ndarray, by_clf: dict[str, list[dict[str, Any]]], tag: str,
             layers: list[int], num_layers: int) -> dict[str, Any]:
    """Out-of-fold accuracy per value of ``tag`` (Wilson 95%), per classifier and layer.

    The folds are those of the pooled probe, which trains on every group at once; a prompt and its
    translation (or any other near copy across groups) can sit on both sides of a split, so this is
    the accuracy of one probe for all groups, not of a probe that never saw the group's content.
    """
    values = np.array([str((store.records[i].get("tags") or {}).get(tag)) for i in rows], dtype=object)
    out: dict[str, Any] = {"tag": tag, "groups": {}}
    for g in sorted(set(values), key=lambda v: (v == "None", v)):
        mask = values == g
        entry: dict[str, Any] = {"n": int(mask.sum()), "classifiers": {}}
        for clf, outs in by_clf.items():
            acc, lo, hi = [], [], []
            for o in outs:
                pred = o["pred"][mask]
                tested = pred >= 0
                correct = int((pred[tested] == y[mask][tested]).sum())
                n = int(tested.sum())
                a, b = wilson_interval(correct, n)
                acc.append(correct / n if n else float("nan"))
                lo.append(a)
                hi.append(b)
            res = {"accuracy": acc, "ci_low": lo, "ci_high": hi}
            res.update(first_layer(acc, layers, num_layers, TARGET))
            entry["classifiers"][clf] = res
        out["groups"][g] = entry
    return out


def _final_punct_flag(store: Any) -> bool | None:
    opts = store.manifest.get("data") or store.manifest.get("prepare") or {}
    if isinstance(opts, dict) and "final_punct" in opts:
        return bool(opts["final_punct"])
    tags = [r.get("tags", {}) for r in store.records]
    return True if any(t.get("punct_added") for t in tags) else None


def _transfer_set(store: Any, idx: np.ndarray, label: str, classes: list[str], classifiers: list[str],
                  by_clf: dict[str, list[dict[str, Any]]], result: dict[str, Any]) -> dict[str, Any]:
    """Share of a transfer set predicted as each class, per layer; and per family when tagged."""
    tags = [store.records[i].get("tags", {}) for i in idx]
    families = [t.get("family") for t in tags]
    has_family = any(f is not None for f in families)
    positive = classes.index(POSITIVE_LABEL) if POSITIVE_LABEL in classes else (1 if len(classes) == 2 else None)
    out: dict[str, Any] = {"n": int(len(idx)), "classifiers": {}}
    for clf in classifiers:
        preds = [o["extra"][label] for o in by_clf[clf]]  # per layer, (n,)
        share = {c: [float(np.mean(p == j)) for p in preds] for j, c in enumerate(classes)}
        entry: dict[str, Any] = {"share": share}
        first = result["classifiers"][clf]["first_layer_95"]
        if first is not None:
            pos = result["layers"].index(first)
            entry["at_first_95"] = {c: share[c][pos] for c in classes}
        if has_family and positive is not None:
            fams: dict[str, Any] = {}
            for fam in sorted({f for f in families if f is not None}):
                mask = np.array([f == fam for f in families])
                fams[str(fam)] = {"n": int(mask.sum()),
                                  "share_positive": [float(np.mean(p[mask] == positive)) for p in preds]}
            entry["by_family"] = fams
        out["classifiers"][clf] = entry
    return out


def _convenience_keys(result: dict[str, Any]) -> None:
    """Contrast false-positive rate and jailbreak-called-malicious, straight on each classifier."""
    classes = result["classes"]
    for clf, entry in result["classifiers"].items():
        contrast = result["sets"].get("contrast", {}).get("classifiers", {}).get(clf)
        if contrast and NEGATIVE_LABEL in classes:
            entry["contrast_fpr"] = [1.0 - v for v in contrast["share"][NEGATIVE_LABEL]]
        jail = result["sets"].get("jailbreak", {}).get("classifiers", {}).get(clf)
        if jail and POSITIVE_LABEL in classes:
            entry["jailbreak_called_malicious"] = jail["share"][POSITIVE_LABEL]


def _bow(texts: list[str], rows: np.ndarray, y: np.ndarray, splits, classes: list[str],
         extra_rows: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """The bag-of-words baseline on the raw prompts, on the very same splits as the probes."""
    t = np.asarray([texts[i] for i in rows], dtype=object)
    pred = np.full(len(y), -1, dtype=np.int64)
    for tr, te in splits:
        pred[te] = BagOfWordsBaseline(random_state=seed).fit(t[tr], y[tr]).predict(t[te])
    tested = pred >= 0
    correct = int((pred[tested] == y[tested]).sum())
    lo, hi = wilson_interval(correct, int(tested.sum()))
    out: dict[str, Any] = {"model": "unigram+bigram presence -> logistic regression (ihs.analysis.surface)",
                           "accuracy": correct / int(tested.sum()), "ci_low": lo, "ci_high": hi, "sets": {}}
    if extra_rows:
        full = BagOfWordsBaseline(random_state=seed).fit(t, y)
        for lab, idx in extra_rows.items():
            p = full.predict([texts[i] for i in idx])
            out["sets"][lab] = {c: float(np.mean(p == j)) for j, c in enumerate(classes)}
    if "contrast" in out["sets"] and NEGATIVE_LABEL in classes:
        out["contrast_fpr"] = 1.0 - out["sets"]["contrast"][NEGATIVE_LABEL]
    if "jailbreak" in out["sets"] and POSITIVE_LABEL in classes:
        out["jailbreak_called_malicious"] = out["sets"]["jailbreak"][POSITIVE_LABEL]
    return out


def _confound(store: Any, rows: np.ndarray, y: np.ndarray, classes: list[str], result: dict[str, Any],
              threshold: float = CONFOUND_THRESHOLD) -> dict[str, Any]:
    """Layer 0 sees only the last token: how well does it separate the classes, and why?"""
    texts = store.prompts
    ends = {c: float(np.mean([_ends_with_punct(texts[i]) for i in rows[y == j]])) for j, c in enumerate(classes)}
    layer0 = store.hidden[rows, 0]
    distinct = int(len(np.unique(np.round(layer0, 4), axis=0)))
    out: dict[str, Any] = {"layer0_accuracy": {}, "layer0_balanced_accuracy": {}, "layer0_distinct_states": distinct,
                           "ends_with_punct": ends, "threshold": threshold, "warn": False, "message": None}
    if 0 not in result["layers"]:
        return out
    pos = result["layers"].index(0)
    for clf, entry in result["classifiers"].items():
        out["layer0_accuracy"][clf] = entry["accuracy"][pos]
        out["layer0_balanced_accuracy"][clf] = entry["balanced_accuracy"][pos]
    worst = max(out["layer0_balanced_accuracy"].values())
    spread = max(ends.values()) - min(ends.values())
    if distinct == 1 and spread > 0.5:
        out["warn"] = True
        detail = ", ".join(f"{c} {v:.0%}" for c, v in ends.items())
        out["message"] = (
            "layer 0 cannot show a last-token confound here (every prompt ends in the same template token), "
            f"but the prompts' own endings differ by class (ending in '.' or '?': {detail}) and every later "
            "layer can attend to them. To rule this out, re-extract with `ihs extract --final-punct`.")
    elif worst > threshold:
        out["warn"] = True
        detail = ", ".join(f"{c} {v:.0%}" for c, v in ends.items())
        out["message"] = (
            f"last-token confound: layer 0 (embedding output, sees only the last token) reaches balanced "
            f"accuracy {worst:.2f} > {threshold}; the classes differ in their final token "
            f"(prompts ending in '.' or '?': {detail}). Remedy: re-extract with `ihs extract --final-punct`.")
    return out


def _same_model(a: Any, b: Any) -> bool:
    ma, mb = a.manifest.get("model", {}), b.manifest.get("model", {})
    key = "fingerprint" if ma.get("fingerprint") or mb.get("fingerprint") else "id"
    return (ma.get(key) == mb.get(key) and a.hidden.shape[1:] == b.hidden.shape[1:]
            and a.manifest.get("chat") == b.manifest.get("chat"))


def cross_store_transfer(
    train: Any, test: Any, classes: Sequence[str], classifiers: Sequence[str] = ("svm",), mode: str = "cv",
    seed: int = PAPER_SEED, layers: Sequence[int] | None = None, n_jobs: int = 1,
    train_name: str = "train", test_name: str = "test", progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fit on every de-duplicated row of ``train`` (classes only), score ``test``'s rows of the same
    classes, leaving out test prompts that also occur in ``train``. Both stores must come from one
    model with one formatting, or the hidden states are not comparable."""
    classifiers = parse_classifiers(classifiers)
    if not _same_model(train, test):
        raise StoreError(f"cannot transfer {train_name} -> {test_name}: the stores come from different models "
                         "or formatting")
    classes = list(classes)

    def pick(store: Any, exclude: set[str]) -> tuple[np.ndarray, np.ndarray]:
        lab = np.asarray(store.labels, dtype=object)
        idx = np.flatnonzero(np.isin(lab, classes))
        keep, _ = dedupe_rows([store.prompts[i] for i in idx], lab[idx])
        idx = np.array([i for i in idx[keep] if dedupe_key(store.prompts[i]) not in exclude], dtype=np.int64)
        return idx, np.array([classes.index(str(v)) for v in lab[idx]], dtype=np.int64)

    tr_idx, tr_y = pick(train, set())
    te_idx, te_y = pick(test, {dedupe_key(train.prompts[i]) for i in tr_idx})
    for what, yy in (("training", tr_y), ("test", te_y)):
        if len(np.unique(yy)) < len(classes):
            why = "" if what == "training" else " once prompts that also occur in the training store are left out"
            raise StoreError(f"cannot transfer {train_name} -> {test_name}: the {what} store lacks one of "
                             f"{', '.join(classes)}{why}")
    num_layers = train.hidden.shape[1] - 1
    layer_list = _resolve_layers(layers, num_layers)
    k = len(classes)
    tasks = [(clf, layer) for clf in classifiers for layer in layer_list]

    args = ((clf, mode, seed, train.hidden[tr_idx, layer], tr_y, test.hidden[te_idx, layer]) for clf, layer in tasks)
    outs = _parallel(_fit_score, args, n_jobs, progress)
    res: dict[str, Any] = {"train": train_name, "test": test_name, "classes": classes,
                           "n_train": int(len(tr_idx)), "n_test": int(len(te_idx)), "layers": layer_list,
                           "depth": [layer / num_layers for layer in layer_list], "classifiers": {}}
    for clf in classifiers:
        acc, lo, hi, auc = [], [], [], []
        for (c, _), (pred, score) in zip(tasks, outs, strict=True):
            if c != clf:
                continue
            correct = int((pred == te_y).sum())
            a, b = wilson_interval(correct, len(te_y))
            acc.append(correct / len(te_y))
            lo.append(a)
            hi.append(b)
            auc.append(_auroc(te_y, score, k))
        entry = {"accuracy": acc, "ci_low": lo, "ci_high": hi, "auroc": auc}
        entry.update(first_layer(acc, layer_list, num_layers))
        res["classifiers"][clf] = entry
    return res


@_one_blas_thread
def _fit_score(clf: str, mode: str, seed: int, X: np.ndarray, y: np.ndarray,
               Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = _quiet_fit(make_classifier(clf, mode, seed), X, y)
    return est.predict(Xt), _scores(est, Xt)


def probe_stores(
    stores: Mapping[str, Any],
    classifiers: Sequence[str] = ("svm", "mlp", "logreg", "diffmean"),
    mode: str = "cv",
    classes: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = PAPER_SEED,
    control: bool = True,
    bow: bool = True,
    cross: bool = True,
    layers: Sequence[int] | None = None,
    n_jobs: int = 1,
    ci: str = "wilson",
    progress: Callable[[int], None] | None = None,
    by: str | None = "auto",
) -> dict[str, Any]:
    """Probe several stores (e.g. a base and an aligned model, or one model on two prompt sets).

    With ``cross``, every ordered pair of stores from the same model and formatting also gets a
    cross-dataset transfer (train on one, test on the other). Returns the whole ``probe.json``.
    """
    import ihs

    classifiers = parse_classifiers(classifiers)
    _check_mode(mode)
    if not stores:
        raise IhsError("no store given")
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "analysis": "probe", "ihs_version": ihs.__version__, "mode": mode, "classifiers": classifiers,
        "folds": folds if mode == "cv" else None, "test_size": PAPER_TEST_SIZE if mode == "paper" else None,
        "seed": seed, "target": TARGET, "ci": f"{ci} 95%" + (" (pooled out-of-fold predictions)" if ci == "wilson" else
                                                             " (over folds)"),
        "layer_convention": "0 = embedding output, i = output of decoder block i (before the final norm)",
        "stores": [], "cross_transfer": [], "warnings": [],
    }
    for name, store in stores.items():
        out["stores"].append(probe_store(store, classifiers, mode, classes, folds, seed, control, bow, layers,
                                         n_jobs, ci, name, progress, by))
    if cross and len(stores) > 1:
        names = list(stores)
        for a in names:
            for b in names:
                if a == b or not _same_model(stores[a], stores[b]):
                    continue
                ca = next(s for s in out["stores"] if s["name"] == a)["classes"]
                cb = next(s for s in out["stores"] if s["name"] == b)["classes"]
                if ca != cb:
                    continue
                try:
                    out["cross_transfer"].append(cross_store_transfer(
                        stores[a], stores[b], ca, classifiers, mode, seed, layers, n_jobs, a, b, progress))
                except StoreError as exc:  # e.g. the same prompts twice: nothing left to test on
                    out["warnings"].append(f"skipped: {exc}")
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def count_tasks(stores: Mapping[str, Any], classifiers: Sequence[str], layers: Sequence[int] | None,
                cross: bool) -> int:
    """Number of (classifier, layer) tasks ``probe_stores`` will report to ``progress``."""
    n = 0
    for store in stores.values():
        n += len(classifiers) * len(_resolve_layers(layers, store.hidden.shape[1] - 1))
    if cross:
        for a in stores:
            for b in stores:
                if a != b and _same_model(stores[a], stores[b]):
                    n += len(classifiers) * len(_resolve_layers(layers, stores[a].hidden.shape[1] - 1))
    return n
