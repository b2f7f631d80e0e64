"""The weak classifiers behind the probes: definitions, intervals, layer-wise fitting and parallelism.

``make_classifier`` builds one of :data:`CLASSIFIERS` in the paper's settings or ours;
:class:`LayerwiseProbe` fits one per layer; :func:`parallel` spreads layers over worker processes
with one BLAS thread each. The cross-validated analysis that uses them is :mod:`ihs.analysis.probes`.
"""


from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from ihs.errors import IhsError
from ihs.stats import wilson_interval  # noqa: F401  (the analysis modules take it from here)

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


def one_blas_thread(func: Callable[..., Any]) -> Callable[..., Any]:
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
    check_mode(mode)
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


def check_mode(mode: str) -> None:
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


def decision_scores(est: Any, X: np.ndarray) -> np.ndarray:
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


def auroc(y: np.ndarray, scores: np.ndarray, k: int) -> float:
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


def bootstrap_interval(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded).

    >>> lo, hi = bootstrap_interval([0.1, 0.2, 0.3, 0.4], seed=0)
    >>> 0.1 <= lo <= 0.25 <= hi <= 0.4
    True
    """
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """t-interval over folds, clipped to [0, 1] (rough: folds share training data)."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), float(a.mean())
    half = float(stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return max(0.0, float(a.mean()) - half), min(1.0, float(a.mean()) + half)


# -- per-layer estimator (scikit-learn style) ------------------------------------------------


def check_hidden(H: np.ndarray) -> np.ndarray:
    H = np.asarray(H)
    if H.ndim != 3:
        raise IhsError(f"hidden states must have shape (N, L+1, d), got {H.shape}")
    return H


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers + 1))
    out = sorted(set(int(v) for v in layers))
    bad = [v for v in out if not 0 <= v <= num_layers]
    if bad or not out:
        raise IhsError(f"layer {bad[0] if bad else '(none)'} out of range: this store has layers 0..{num_layers}")
    return out


@one_blas_thread
def quiet_fit(est: Any, X: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def parallel(func: Callable[..., Any], args: Iterable[tuple], n_jobs: int,
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


@one_blas_thread
def fit_score(clf: str, mode: str, seed: int, X: np.ndarray, y: np.ndarray,
               Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = quiet_fit(make_classifier(clf, mode, seed), X, y)
    return est.predict(Xt), decision_scores(est, Xt)


