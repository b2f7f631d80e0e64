"""A probe on one layer's last-token state, calibrated to a target false-positive rate: the guard.

The paper's first claim (early layers already separate malicious from normal prompts) makes a
cheap detector: run the model only up to that layer, read the last-token state, apply a linear
probe. ``Guard`` is that detector as an object:

- ``Guard.fit_states(X, y, layer=...)``: the low-level constructor from one layer's states;
- ``ihs.guard.fit.fit_guard(hidden, records, model_info)``: the whole recipe on an (N, L+1, d)
  array: held-out test split, benign calibration split, layer and probe chosen by cross-validation
  on the training split only, threshold calibrated for the target false-positive rate on the
  calibration split;
- ``score_states`` (pure numpy, no model), ``score(prompts)`` (early-exit forward pass, see
  ``ihs.guard.early_exit``), ``save``/``load`` (probe weights in safetensors + a JSON card).

Every probe is linear on standardised states (``logreg``, ``svm``, ``diffmean`` from
``ihs.analysis.probes``), followed by a Platt sigmoid fitted on out-of-fold decision values, so the
whole guard folds into one weight vector and one bias: ``p = sigmoid(x . w + b)``. A prompt is
called malicious when ``p > threshold``.

Layer numbering is the store's: index 0 is the embedding output, index l the output of decoder
block l (so scoring at layer l runs blocks 1..l and stops).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.special import expit
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

import ihs
from ihs.analysis.probes import make_classifier
from ihs.errors import DataError, IhsError, ModelError
from ihs.io import write_json
from ihs.models.loading import model_ref

CARD = "guard.json"
WEIGHTS = "guard.safetensors"
CARD_VERSION = 1
PROBES: tuple[str, ...] = ("logreg", "svm", "diffmean")
BENIGN_LABELS: tuple[str, ...] = ("normal", "contrast", "benign", "harmless")
MALICIOUS_LABELS: tuple[str, ...] = ("malicious", "jailbreak", "harmful")
LAYER_CONVENTION = "0 = embedding output, l = output of decoder block l (before the final norm)"


# -- metrics ----------------------------------------------------------------------------------


def calibrate_threshold(benign_scores: Sequence[float], target_fpr: float) -> float:
    """The lowest threshold t with share(benign_scores > t) <= target_fpr.

    With n benign scores at most floor(target_fpr * n) of them lie strictly above t, so the rule
    ``p > t`` meets the target on these scores exactly (ties included).
    """
    s = np.sort(np.asarray(benign_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise DataError("no benign prompts to calibrate the threshold on")
    if not 0.0 <= target_fpr < 1.0:
        raise IhsError(f"target FPR must be in [0, 1), got {target_fpr}")
    allowed = int(np.floor(target_fpr * len(s) + 1e-9))
    return float(s[allowed])


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """TPR at the threshold calibrated on this set's own benign scores for ``fpr`` (NaN without both classes)."""
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        return float("nan")
    t = calibrate_threshold(scores[~y], fpr)
    return float(np.mean(scores[y] > t))


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, scores))


# -- the guard --------------------------------------------------------------------------------


def _linear_parts(pipeline: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
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


def _quiet_fit(est: Any, X: np.ndarray, y: np.ndarray) -> Any:
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
            est = _quiet_fit(clone(proto), X[tr], y[tr])
            out[te] = est.decision_function(X[te])
    return out


def _platt(decision: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and offset of a sigmoid fitted to decision values (Platt scaling)."""
    ok = np.isfinite(decision)
    if ok.sum() < 4 or len(np.unique(y[ok])) < 2:
        return 1.0, 0.0
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(decision[ok, None], y[ok])
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _binary(y: Sequence[Any]) -> np.ndarray:
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


def _as_numpy(states: Any) -> np.ndarray:
    if hasattr(states, "detach"):  # a torch tensor
        states = states.detach().to("cpu").float().numpy()
    return np.asarray(states, dtype=np.float64)


@dataclass
class Guard:
    """A calibrated linear probe on the last-token state at ``layer``.

    ``weight`` and ``bias`` are the folded probe (scaler, linear classifier and Platt sigmoid):
    ``p(malicious) = sigmoid(state . weight + bias)``; the unfolded parts are kept for inspection.
    ``model`` holds the model's name, reference (how to load it again), identity and fingerprint,
    dtype, formatting (chat, system prompt, max length), num_layers and hidden_size.
    """

    layer: int
    threshold: float
    weight: np.ndarray
    bias: float
    classifier: str = "logreg"
    target_fpr: float = 0.01
    model: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    threshold_logit: float | None = None
    lm: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.threshold_logit is None:
            t = min(max(float(self.threshold), 1e-300), 1 - 1e-16)
            self.threshold_logit = float(np.log(t) - np.log1p(-t))

    # -- identity ---------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "unknown"))

    @property
    def model_identity(self) -> dict[str, Any]:
        return dict(self.model.get("identity", {}))

    @property
    def fingerprint(self) -> str | None:
        return self.model.get("fingerprint")

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0])

    # -- scoring without a model ------------------------------------------------------------
    def decision_states(self, states: Any) -> np.ndarray:
        """Logits (before the sigmoid) for last-token states of shape (n, d) or (d,)."""
        X = _as_numpy(states)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.hidden_size:
            raise IhsError(f"states must have shape (n, {self.hidden_size}), got {tuple(X.shape)}")
        return X @ self.weight + self.bias

    def score_states(self, states: Any) -> np.ndarray:
        """P(malicious) for last-token states at ``self.layer``, shape (n, d) -> (n,). Pure and cheap."""
        return expit(self.decision_states(states))

    def verdict_states(self, states: Any) -> np.ndarray:
        """True where the state is called malicious (p > threshold, compared on the logit scale so that
        probabilities that round to 1.0 still keep their order)."""
        return self.decision_states(states) > self.threshold_logit

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def fit_states(
        cls,
        X: Any,
        y: Sequence[Any],
        *,
        layer: int,
        classifier: str = "logreg",
        calibration: Any | None = None,
        target_fpr: float = 0.01,
        model: dict[str, Any] | Any | None = None,
        folds: int = 5,
        seed: int = 0,
        groups: Sequence[Any] | None = None,
    ) -> Guard:
        """Fit a guard on one layer's states ``X`` (n, d) with labels ``y`` (1/True/"malicious" = malicious).

        The Platt sigmoid is fitted on ``folds``-fold out-of-fold decision values. The threshold is
        calibrated on ``calibration`` (benign states, (m, d)) for ``target_fpr``; without it the
        threshold is 0.5 and the card says it is uncalibrated. ``model``: a ``LoadedModel`` or a
        dict as in ``Guard.model``.
        """
        if classifier not in PROBES:
            raise IhsError(f"unknown guard probe {classifier!r}; choose from {', '.join(PROBES)}")
        X = _as_numpy(X)
        yb = _binary(y)
        if X.ndim != 2 or len(X) != len(yb):
            raise DataError(f"X must have shape (n, d) with one label per row; got {X.shape} and {len(yb)} labels")
        counts = np.bincount(yb, minlength=2)
        if counts.min() < 2:
            raise DataError(f"need at least 2 benign and 2 malicious prompts to fit a guard, got {counts.tolist()}")
        k = int(min(folds, counts.min()))
        g = None if groups is None else np.asarray(groups)
        if g is not None and len(np.unique(g[yb == 1])) < k:
            g = None
        oof = oof_decision(X, yb, classifier, max(k, 2), seed, g)
        a, c = _platt(oof, yb)
        with threadpool_limits(limits=1, user_api="blas"):
            pipe = _quiet_fit(make_classifier(classifier, "cv", seed), X, yb)
        mean, scale, coef, intercept = _linear_parts(pipe)
        weight = a * coef / scale
        bias = a * (intercept - float((mean / scale) @ coef)) + c
        info = model_info(model) if model is not None else {}
        guard = cls(layer=int(layer), threshold=0.5, threshold_logit=0.0, weight=weight, bias=float(bias), classifier=classifier,
                    target_fpr=float(target_fpr), model=info,
                    parts={"mean": mean, "scale": scale, "coef": coef,
                           "intercept": np.array([intercept]), "platt": np.array([a, c])})
        guard.card = {"calibrated": False, "n_train": {"benign": int(counts[0]), "malicious": int(counts[1])},
                      "oof_train": {"auroc": auroc(yb, oof), "tpr_at_1pct_fpr": tpr_at_fpr(yb, oof, 0.01)}}
        if calibration is not None:
            guard.calibrate(calibration, target_fpr)
        return guard

    def calibrate(self, benign_states: Any, target_fpr: float | None = None) -> float:
        """Set the threshold from benign states for ``target_fpr``; returns the realised FPR on them."""
        if target_fpr is not None:
            self.target_fpr = float(target_fpr)
        scores = self.decision_states(benign_states)
        self.threshold_logit = calibrate_threshold(scores, self.target_fpr)
        self.threshold = float(expit(self.threshold_logit))
        realised = float(np.mean(scores > self.threshold_logit))
        self.card.update({"calibrated": True, "n_calibration": int(len(scores)), "calibration_fpr": realised})
        return realised

    # -- persistence ------------------------------------------------------------------------
    def to_card(self) -> dict[str, Any]:
        card = dict(self.card)
        card.update({
            "format": "ihs-guard", "card_version": CARD_VERSION, "ihs_version": ihs.__version__,
            "layer": self.layer, "layer_convention": LAYER_CONVENTION, "classifier": self.classifier,
            "threshold": self.threshold, "threshold_logit": self.threshold_logit, "target_fpr": self.target_fpr,
            "bias": self.bias,
            "rule": "p = sigmoid(state . weight + bias); malicious when p > threshold "
                    "(compared as state . weight + bias > threshold_logit)",
            "model": self.model,
        })
        return card

    def save(self, directory: str | Path) -> Path:
        """Write ``guard.safetensors`` (weight and the unfolded parts) and ``guard.json`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": np.ascontiguousarray(self.weight, dtype=np.float64),
                   "bias": np.array([self.bias], dtype=np.float64)}
        tensors.update({f"parts.{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in self.parts.items()})
        save_file(tensors, str(out / WEIGHTS), metadata={"format": "ihs-guard", "layer": str(self.layer)})
        write_json(out / CARD, self.to_card(), indent=2)
        return out

    @classmethod
    def load(cls, directory: str | Path, lm: Any = None) -> Guard:
        """Read a guard; with ``lm``, check that it is the model the card names (else ``IhsError``)."""
        d = Path(directory)
        if not (d / CARD).is_file() or not (d / WEIGHTS).is_file():
            raise IhsError(f"{d} is not a guard directory (needs {CARD} and {WEIGHTS}; make one with `ihs guard fit`)")
        try:
            card = json.loads((d / CARD).read_text(encoding="utf-8"))
            tensors = load_file(str(d / WEIGHTS))
        except (OSError, ValueError) as exc:
            raise IhsError(f"guard {d} is unreadable: {exc}") from exc
        if card.get("format") != "ihs-guard":
            raise IhsError(f"{d / CARD} is not an ihs guard card")
        parts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("parts.")}
        guard = cls(layer=int(card["layer"]), threshold=float(card["threshold"]), weight=tensors["weight"],
                    bias=float(tensors["bias"][0]), classifier=card.get("classifier", "logreg"),
                    target_fpr=float(card.get("target_fpr", 0.01)), model=card.get("model", {}), parts=parts,
                    card=card, threshold_logit=card.get("threshold_logit"))
        if lm is not None:
            guard.attach(lm)
        return guard

    # -- the model --------------------------------------------------------------------------
    def check_model(self, lm: Any) -> None:
        """Raise ``IhsError`` unless ``lm`` is the model this guard was fitted on."""
        want = self.fingerprint
        got = lm.fingerprint()
        if want is not None and got != want:
            raise IhsError(f"this guard was fitted on model {self.model_name!r} (fingerprint {want}); "
                           f"the model given is {lm.name!r} (fingerprint {got})")
        if lm.hidden_size != self.hidden_size:
            raise IhsError(f"guard expects hidden size {self.hidden_size}, model {lm.name!r} has {lm.hidden_size}")
        if self.layer > lm.num_layers:
            raise IhsError(f"guard reads layer {self.layer}, model {lm.name!r} has only {lm.num_layers} blocks")

    def attach(self, lm: Any) -> Guard:
        self.check_model(lm)
        self.lm = lm
        return self

    def load_model(self, device: str | None = None) -> Guard:
        """Load the model the card names (zoo name, folder, GGUF file or hub id) and attach it."""
        from ihs.models.loading import load_model

        ref = self.model.get("ref")
        if not ref:
            raise ModelError("the guard card names no loadable model; pass the model explicitly")
        self.attach(load_model(ref, dtype=self.model.get("dtype") or "float32", device=device))
        return self

    def _need_lm(self) -> Any:
        if self.lm is None:
            raise IhsError("this guard has no model attached; use Guard.load(dir, lm=...) or guard.load_model()")
        return self.lm

    # -- scoring prompts (early exit) -------------------------------------------------------
    def format(self, prompts: Sequence[str]) -> list[Any]:
        """Each prompt formatted and tokenized exactly as for the guard's training states."""
        from ihs.formatting import format_prompt

        lm = self._need_lm()
        chat = bool(self.model.get("chat", False))
        max_length = int(self.model.get("max_length") or lm.max_length)
        return [format_prompt(lm.tokenizer, p, chat, self.model.get("system_prompt"), max_length, True)
                for p in prompts]

    def states(self, prompts: Sequence[str], batch_size: int = 32, max_batch_tokens: int = 4096,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Last-token states at ``self.layer`` (n, d), with the forward pass stopped there."""
        from ihs.guard.early_exit import states_at_layer_batched

        formatted = self.format(prompts)
        return states_at_layer_batched(self._need_lm(), [f.ids for f in formatted], self.layer,
                                       batch_size, max_batch_tokens, progress)

    def score(self, prompts: Sequence[str] | str, batch_size: int = 32, max_batch_tokens: int = 4096,
              progress: Callable[[int], None] | None = None) -> ScoreResult:
        """Probabilities and verdicts for prompts, running the model only up to ``self.layer``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            return ScoreResult(np.zeros(0), np.zeros(0, dtype=bool), self.threshold)
        d = self.decision_states(self.states(prompts, batch_size, max_batch_tokens, progress))
        return ScoreResult(expit(d), d > self.threshold_logit, self.threshold)

    def predict_proba(self, prompts: Sequence[str]) -> np.ndarray:
        """sklearn-style (n, 2): columns benign, malicious."""
        p = self.score(prompts).probability
        return np.stack([1 - p, p], axis=1)

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        return self.score(prompts).malicious.astype(np.int64)


@dataclass
class ScoreResult:
    """``probability`` of malicious per prompt and the ``malicious`` verdict (p > threshold)."""

    probability: np.ndarray
    malicious: np.ndarray
    threshold: float

    def __len__(self) -> int:
        return len(self.probability)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"probability": float(p), "malicious": bool(m)} for p, m in zip(self.probability, self.malicious,
                                                                                 strict=True)]


def model_info(model: Any, chat: bool | None = None, system_prompt: str | None = None,
               max_length: int | None = None) -> dict[str, Any]:
    """The card's model block from a ``LoadedModel``, a store manifest, or a ready dict."""
    if isinstance(model, dict) and "model" in model and "num_layers" in model:  # a store manifest
        m = dict(model["model"])
        identity = {k: v for k, v in m.items() if k not in ("name", "fingerprint", "dtype")}
        return {"name": m.get("name") or m.get("id"), "ref": model_ref(identity, m.get("name", "")),
                "identity": identity, "fingerprint": m.get("fingerprint"), "dtype": m.get("dtype", "float32"),
                "chat": bool(model.get("chat")), "system_prompt": model.get("system_prompt"),
                "max_length": model.get("max_length"), "num_layers": model.get("num_layers"),
                "hidden_size": model.get("hidden_size")}
    if isinstance(model, dict):
        return dict(model)
    from ihs.formatting import uses_chat

    return {"name": model.name, "ref": model_ref(model.identity, model.name), "identity": dict(model.identity),
            "fingerprint": model.fingerprint(), "dtype": str(model.dtype).replace("torch.", ""),
            "chat": uses_chat(model.tokenizer, chat), "system_prompt": system_prompt,
            "max_length": max_length or model.max_length, "num_layers": model.num_layers,
            "hidden_size": model.hidden_size}
