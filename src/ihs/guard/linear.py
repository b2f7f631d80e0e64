"""Today's guard recipe: a linear probe from :mod:`ihs.analysis.probes` on one layer's states, its out-of-fold
decision values and labels as 0/1."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from ihs.analysis.probes import make_classifier
from ihs.errors import DataError, IhsError

PROBES: tuple[str, ...] = ("logreg", "svm", "diffmean")
BENIGN_LABELS: tuple[str, ...] = ("normal", "contrast", "benign", "harmless")
MALICIOUS_LABELS: tuple[str, ...] = ("malicious", "jailbreak", "harmful")


def linear_parts(pipeline: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coef, intercept) of a fitted scaler + linear classifier pipeline."""
    scaler = pipeline.named_steps["scale"]
    clf = pipeline.named_steps["clf"]
    if hasattr(clf, "direction_"):
        coef, intercept = np.asarray(clf.direction_, dtype=np.float64), -float(clf.threshold_)
    elif hasattr(clf, "coef_"):
        coef = np.asarray(clf.coef_, dtype=np.float64).reshape(-1)
        intercept = float(np.asarray(clf.intercept_).reshape(-1)[0])
    else:
        raise IhsError(f"{type(clf).__name__} is not a linear probe; the guard needs one of {', '.join(PROBES)}")
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    return np.asarray(scaler.mean_, dtype=np.float64), scale, coef, intercept


def quiet_fit(est: Any, X: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def oof_decision(X: np.ndarray, y: np.ndarray, classifier: str, folds: int, seed: int,
                 groups: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold decision values (toward malicious) of ``classifier`` on (X, y)."""
    splitter = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed) if groups is not None
                else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    out = np.full(len(y), np.nan)
    proto = make_classifier(classifier, "cv", seed)
    with threadpool_limits(limits=1, user_api="blas"):
        for tr, te in splitter.split(X, y, groups):
            if len(np.unique(y[tr])) < 2:
                continue
            est = quiet_fit(clone(proto), X[tr], y[tr])
            out[te] = est.decision_function(X[te])
    return out


def label_array(y: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype.kind in "biu":
        if not np.isin(arr, [0, 1]).all():
            raise DataError("labels must be 0 (benign) / 1 (malicious), booleans, or known label names")
        return arr.astype(np.int64)
    out = []
    for v in arr.tolist():
        if v in MALICIOUS_LABELS:
            out.append(1)
        elif v in BENIGN_LABELS:
            out.append(0)
        else:
            raise DataError(f"label {v!r} is neither benign ({', '.join(BENIGN_LABELS)}) nor malicious "
                            f"({', '.join(MALICIOUS_LABELS)})")
    return np.asarray(out, dtype=np.int64)
