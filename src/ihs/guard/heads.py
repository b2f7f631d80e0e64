"""A guard's kind: what it reads (layers, pooling, how layers combine, the refusal margin) and its head.

A :class:`Recipe` names one kind of guard. Its :meth:`Recipe.design` turns :class:`ihs.guard.features.Features`
into one row per prompt: the pooled states at the recipe's layers, concatenated (``concat``) or averaged
(``mean``), followed by the refusal margin at those layers when ``refusal`` is on. A head maps a design
row to a logit toward malicious:

- linear heads (``logreg``, ``svm``, ``diffmean`` on standardised rows) fold scaler, probe and Platt
  sigmoid into one weight vector and one bias: ``logit = x . w + b``;
- ``mlp``: standardise, one hidden ReLU layer, one output unit, then the Platt sigmoid:
  ``logit = a * (relu(z @ W1 + b1) @ w2 + b2) + c`` with ``z`` the standardised row.

Every head's Platt slope and offset are fitted on out-of-fold logits (folds grouped by goal when
groups are given), so probabilities are not the training fit's. Heads score with numpy only and are
stored as plain arrays (safetensors), never as pickles.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ihs.errors import IhsError
from ihs.guard.features import POOLINGS, REFUSAL, Features

LINEAR_HEADS: tuple[str, ...] = ("logreg", "svm", "diffmean")
HEADS: tuple[str, ...] = (*LINEAR_HEADS, "mlp")
COMBINES: tuple[str, ...] = ("concat", "mean")
MLP_HIDDEN = 64


@dataclass(frozen=True)
class Recipe:
    """One kind of guard: ``pooling`` at ``layers``, combined by ``combine``, refusal margin or not, ``head``."""

    layers: tuple[int, ...]
    pooling: str = "last"
    combine: str = "concat"
    head: str = "logreg"
    refusal: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted({int(v) for v in self.layers})))
        if not self.layers:
            raise IhsError("a guard reads at least one layer")
        if self.pooling not in POOLINGS:
            raise IhsError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if self.combine not in COMBINES:
            raise IhsError(f"unknown layer combination {self.combine!r}; choose from {', '.join(COMBINES)}")
        if self.head not in HEADS:
            raise IhsError(f"unknown guard head {self.head!r}; choose from {', '.join(HEADS)}")
        if len(self.layers) == 1 and self.combine != "concat":
            object.__setattr__(self, "combine", "concat")

    @property
    def deepest(self) -> int:
        return max(self.layers)

    @property
    def linear(self) -> bool:
        return self.head in LINEAR_HEADS

    @property
    def legacy(self) -> bool:
        """Today's kind: one layer's last-token state and a linear head (``score_states`` works on it)."""
        return len(self.layers) == 1 and self.pooling == "last" and self.linear and not self.refusal

    @property
    def name(self) -> str:
        layers = "+".join(str(v) for v in self.layers)
        combine = "/mean" if self.combine == "mean" and len(self.layers) > 1 else ""
        return f"{self.pooling}@{layers}{combine}/{self.head}" + ("+refusal" if self.refusal else "")

    def width(self, hidden_size: int) -> int:
        """Length of a design row for states of ``hidden_size``."""
        k = len(self.layers)
        return (hidden_size * (k if self.combine == "concat" else 1)) + (k if self.refusal else 0)

    def needs(self) -> dict[str, list[int]]:
        """Feature kind -> layers this recipe reads."""
        out = {self.pooling: list(self.layers)}
        if self.refusal:
            out[REFUSAL] = list(self.layers)
        return out

    def design(self, feats: Features, rows: Any = None) -> np.ndarray:
        """One row per prompt (float64): pooled states at the layers, concatenated or averaged, then the margins."""
        X = feats.take(self.pooling, self.layers, rows)
        X = X.mean(axis=1) if self.combine == "mean" else X.reshape(len(X), -1)
        if self.refusal:
            X = np.hstack([X, feats.take(REFUSAL, self.layers, rows)])
        return X

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        try:
            return cls(layers=tuple(d["layers"]), pooling=d.get("pooling", "last"), combine=d.get("combine", "concat"),
                       head=d.get("head", "logreg"), refusal=bool(d.get("refusal", False)))
        except (KeyError, TypeError) as exc:
            raise IhsError(f"the guard card's kind is unreadable: {exc}") from exc


def parse_kind(name: str, num_layers: int) -> Recipe:
    """A :class:`Recipe` from its name: ``POOLING@LAYERS[/mean]/HEAD[+refusal]``, layers joined by ``+``, each in
    the layer grammar (``mean@12+16/mlp+refusal``, ``last@L/2/logreg``, ``ema@0.4+0.5/mean/logreg``)."""
    from ihs.layers import parse_layers

    text = name.strip()
    refusal = text.endswith("+refusal")
    text = text.removesuffix("+refusal")
    pooling, at, rest = text.partition("@")
    layer_part, _, tail = rest.rpartition("/")
    combine = "concat"
    if layer_part.endswith("/mean"):
        layer_part, combine = layer_part.removesuffix("/mean"), "mean"
    if not at or not layer_part or not tail:
        raise IhsError(f"cannot read the guard kind {name!r}; write POOLING@LAYERS[/mean]/HEAD[+refusal], "
                       "e.g. mean@12+16/mlp+refusal")
    layers = sorted({v for part in layer_part.split("+") for v in parse_layers(part.strip(), num_layers)})
    return Recipe(layers=tuple(layers), pooling=pooling.strip(), combine=combine, head=tail.strip(), refusal=refusal)


# -- heads ---------------------------------------------------------------------------------------------


def _quiet(fn: Any, *args: Any) -> Any:
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args)


def _estimator(head: str, seed: int) -> Any:
    if head == "logreg":
        return LogisticRegression(C=1.0, max_iter=2000)
    if head == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=0.1, max_iter=5000)
    if head == "diffmean":
        from ihs.analysis.classifiers import DiffMeanProbe

        return DiffMeanProbe()
    if head == "mlp":
        return MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), alpha=1e-2, learning_rate_init=1e-3, max_iter=200,
                             random_state=seed)
    raise IhsError(f"unknown guard head {head!r}; choose from {', '.join(HEADS)}")


def _raw_fit(head: str, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Fit scaler + head on (X, y); the head's arrays before Platt scaling."""
    scaler = StandardScaler().fit(X)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    Z = (X - scaler.mean_) / scale
    est = _quiet(_estimator(head, seed).fit, Z, y)
    parts = {"mean": scaler.mean_.astype(np.float64), "scale": scale.astype(np.float64)}
    if head == "mlp":
        parts.update(W1=est.coefs_[0], b1=est.intercepts_[0], w2=est.coefs_[1].reshape(-1),
                     b2=np.asarray(est.intercepts_[1]).reshape(1))
    elif head == "diffmean":
        parts.update(coef=np.asarray(est.direction_, dtype=np.float64), intercept=np.array([-float(est.threshold_)]))
    else:
        parts.update(coef=np.asarray(est.coef_, dtype=np.float64).reshape(-1),
                     intercept=np.asarray(est.intercept_, dtype=np.float64).reshape(1))
    return {k: np.asarray(v, dtype=np.float64) for k, v in parts.items()}


def raw_logit(head: str, parts: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The head's logit before Platt scaling, numpy only."""
    Z = (np.asarray(X, dtype=np.float64) - parts["mean"]) / parts["scale"]
    if head == "mlp":
        return np.maximum(Z @ parts["W1"] + parts["b1"], 0.0) @ parts["w2"] + float(parts["b2"][0])
    return Z @ parts["coef"] + float(parts["intercept"][0])


def out_of_fold(head: str, X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
                groups: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold raw logits of ``head`` (folds grouped when ``groups`` gives enough groups of each class)."""
    y = np.asarray(y).astype(np.int64)
    k = int(min(folds, np.bincount(y, minlength=2).min()))
    if k < 2:
        return np.full(len(y), np.nan)
    use_groups = groups is not None and min(len(np.unique(groups[y == c])) for c in (0, 1)) >= k
    splitter = (StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed) if use_groups
                else StratifiedKFold(n_splits=k, shuffle=True, random_state=seed))
    out = np.full(len(y), np.nan)
    for tr, te in splitter.split(X, y, groups if use_groups else None):
        if len(np.unique(y[tr])) < 2:
            continue
        out[te] = raw_logit(head, _raw_fit(head, X[tr], y[tr], seed), X[te])
    return out


def platt(decision: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and offset of a sigmoid fitted to decision values (Platt scaling); (1, 0) when it cannot be fitted."""
    ok = np.isfinite(decision)
    if ok.sum() < 4 or len(np.unique(y[ok])) < 2:
        return 1.0, 0.0
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(decision[ok, None], y[ok])
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


@dataclass
class Head:
    """A fitted head: ``kind`` (a name of :data:`HEADS`), its arrays, the Platt slope and offset."""

    kind: str
    parts: dict[str, np.ndarray]
    a: float = 1.0
    c: float = 0.0

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Calibrated logit toward malicious for design rows ``X`` (n, D)."""
        return self.a * raw_logit(self.kind, self.parts, X) + self.c

    @property
    def width(self) -> int:
        return int(self.parts["mean"].shape[0])

    def folded(self) -> tuple[np.ndarray, float]:
        """(weight, bias) of a linear head folded with its scaler and Platt sigmoid: ``logit = x . w + b``."""
        if self.kind not in LINEAR_HEADS:
            raise IhsError(f"a {self.kind} head does not fold into one weight vector")
        p = self.parts
        weight = self.a * p["coef"] / p["scale"]
        bias = self.a * (float(p["intercept"][0]) - float((p["mean"] / p["scale"]) @ p["coef"])) + self.c
        return weight, float(bias)

    def tensors(self) -> dict[str, np.ndarray]:
        out = {f"head.{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in self.parts.items()}
        out["head.platt"] = np.array([self.a, self.c], dtype=np.float64)
        return out

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict[str, np.ndarray]) -> Head:
        parts = {k.split(".", 1)[1]: np.asarray(v, dtype=np.float64) for k, v in tensors.items()
                 if k.startswith("head.") and k != "head.platt"}
        need = ("mean", "scale", "W1", "b1", "w2", "b2") if kind == "mlp" else ("mean", "scale", "coef", "intercept")
        missing = [k for k in need if k not in parts]
        if missing:
            raise IhsError(f"the guard's weights lack head.{missing[0]} for a {kind} head")
        platt_ab = tensors.get("head.platt", np.array([1.0, 0.0]))
        return cls(kind, parts, float(platt_ab[0]), float(platt_ab[1]))


def fit_head(kind: str, X: np.ndarray, y: Sequence[int], *, folds: int = 5, seed: int = 0,
             groups: np.ndarray | None = None, calibrate: bool = True) -> Head:
    """Fit ``kind`` on design rows ``X`` and labels ``y`` (1 = malicious), with Platt scaling on out-of-fold logits."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise IhsError(f"X must be (n, D) with one label per row; got {X.shape} and {len(y)} labels")
    if len(np.unique(y)) < 2:
        raise IhsError("a guard head needs benign and malicious rows")
    head = Head(kind, _raw_fit(kind, X, y, seed))
    if calibrate:
        head.a, head.c = platt(out_of_fold(kind, X, y, folds=folds, seed=seed, groups=groups), y)
    return head
