"""The guard: a calibrated probe on a model's hidden states, used as a harmful-request detector.

The paper's first claim (intermediate layers already separate malicious from normal prompts) makes a
cheap detector: run the model only up to the layer it needs, read the state there, apply a probe.
``Guard`` is that detector as an object. Its *kind* (:class:`ihs.guard.heads.Recipe`) says what it
reads and how it decides:

- today's kind (card version 1, still the default from activation stores): the last token's state
  at one layer, a linear probe (``logreg``, ``svm``, ``diffmean``) and a Platt sigmoid folded into
  one vector and one bias, ``p = sigmoid(state . weight + bias)``;
- the stronger kinds (card version 2): states pooled over the prompt's positions (last, mean, max,
  exponential moving average) at one or several layers (concatenated or averaged), the model's own
  refusal margin as extra features, and a linear or a small MLP head (:mod:`ihs.guard.features`,
  :mod:`ihs.guard.heads`).

A prompt is called malicious when ``p > threshold`` (compared on the logit scale). Scoring prompts
runs the blocks only up to the deepest layer the guard reads (early exit); ``score_states`` (one
layer's last-token states, pure numpy) works for today's kind, ``decision_features`` for every kind.
``save``/``load`` write and read the weights (safetensors) and a JSON card that names the model;
``load`` with a model, ``attach`` and the server refuse any other model.

Layer numbering is the store's: index 0 is the embedding output, index l the output of decoder
block l (so a guard reading layer l runs blocks 1..l and stops).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from scipy.special import expit
from threadpoolctl import threadpool_limits

import ihs
from ihs.analysis.probes import make_classifier
from ihs.errors import DataError, IhsError, ModelError
from ihs.guard.features import REFUSAL, Features, FeatureSpec
from ihs.guard.heads import Head, Recipe, platt
from ihs.guard.linear import BENIGN_LABELS as BENIGN_LABELS
from ihs.guard.linear import MALICIOUS_LABELS as MALICIOUS_LABELS
from ihs.guard.linear import PROBES as PROBES
from ihs.guard.linear import label_array, linear_parts, oof_decision, quiet_fit
from ihs.guard.metrics import auroc as auroc
from ihs.guard.metrics import calibrate_by_kind
from ihs.guard.metrics import calibrate_threshold as calibrate_threshold
from ihs.guard.metrics import tpr_at_fpr as tpr_at_fpr
from ihs.io import write_json
from ihs.models.loading import model_ref

CARD = "guard.json"
WEIGHTS = "guard.safetensors"
CARD_VERSION = 2
LAYER_CONVENTION = "0 = embedding output, l = output of decoder block l (before the final norm)"


def _as_numpy(states: Any) -> np.ndarray:
    if hasattr(states, "detach"):  # a torch tensor
        states = states.detach().to("cpu").float().numpy()
    return np.asarray(states, dtype=np.float64)


@dataclass
class Guard:
    """A calibrated probe on a model's hidden states (see the module docstring for the kinds).

    ``layer`` is the deepest layer the guard reads (where the forward pass stops); ``recipe`` its kind
    (default: today's, the last-token state at ``layer`` with a linear probe); ``head`` the fitted head
    (linear heads also come folded as ``weight`` and ``bias``: ``logit = x . weight + bias``); ``spec``
    the feature settings (EMA half-life, first pooled position, refusal token ids). ``model`` holds the
    model's name, reference (how to load it again), identity and fingerprint, dtype, formatting (chat,
    system prompt, max length), num_layers and hidden_size.
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
    recipe: Recipe | None = None
    head: Head | None = field(default=None, repr=False)
    spec: FeatureSpec | None = None

    def __post_init__(self) -> None:
        if self.threshold_logit is None:
            t = min(max(float(self.threshold), 1e-300), 1 - 1e-16)
            self.threshold_logit = float(np.log(t) - np.log1p(-t))
        if self.recipe is None:
            self.recipe = Recipe(layers=(int(self.layer),), pooling="last", head=self.classifier)
        self.layer = self.recipe.deepest
        self.classifier = self.recipe.head
        if self.head is not None and self.recipe.linear:
            self.weight, self.bias = self.head.folded()
        if self.spec is None:
            self.spec = FeatureSpec()
        self.weight = np.asarray(self.weight, dtype=np.float64)

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
    def kind(self) -> str:
        """The guard's kind as a short name, e.g. ``last@17/logreg`` or ``mean@12+16/mlp+refusal``."""
        return self.recipe.name

    @property
    def hidden_size(self) -> int:
        if self.recipe.legacy:
            return int(self.weight.shape[0])
        if self.model.get("hidden_size"):
            return int(self.model["hidden_size"])
        width = self.head.width if self.head is not None else int(self.weight.shape[0])
        k = len(self.recipe.layers)
        width -= k if self.recipe.refusal else 0
        return width // k if self.recipe.combine == "concat" else width

    def feature_spec(self) -> FeatureSpec:
        """What one forward pass must compute for this guard."""
        needs = self.recipe.needs()
        return FeatureSpec(pooled={k: v for k, v in needs.items() if k != REFUSAL},
                           refusal_layers=needs.get(REFUSAL, []), ema_halflife=self.spec.ema_halflife,
                           pool_start=self.spec.pool_start, refusal_ids=list(self.spec.refusal_ids),
                           compliance_ids=list(self.spec.compliance_ids))

    # -- scoring without a model ------------------------------------------------------------
    def decision_design(self, X: np.ndarray) -> np.ndarray:
        """Logits for design rows of the guard's kind (:meth:`ihs.guard.heads.Recipe.design`)."""
        if self.recipe.linear:
            return np.asarray(X, dtype=np.float64) @ self.weight + self.bias
        return self.head.logit(X)

    def decision_features(self, feats: Features) -> np.ndarray:
        """Logits for prompts' features (:class:`ihs.guard.features.Features` holding what the kind reads)."""
        X = self.recipe.design(feats)
        want = self.head.width if self.head is not None else self.weight.shape[0]
        if X.shape[1] != want:
            raise IhsError(f"features give rows of width {X.shape[1]}; this guard ({self.kind}) expects {want}")
        return self.decision_design(X)

    def decision_states(self, states: Any) -> np.ndarray:
        """Logits (before the sigmoid) for last-token states at ``layer`` of shape (n, d) or (d,) (today's kind), or
        for :class:`~ihs.guard.features.Features` (any kind)."""
        if isinstance(states, Features):
            return self.decision_features(states)
        if not self.recipe.legacy:
            raise IhsError(f"this guard ({self.kind}) reads more than one layer's last-token state; score prompts "
                           "(guard.score) or features (guard.decision_features)")
        X = _as_numpy(states)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.hidden_size:
            raise IhsError(f"states must have shape (n, {self.hidden_size}), got {tuple(X.shape)}")
        return X @ self.weight + self.bias

    def score_states(self, states: Any) -> np.ndarray:
        """P(malicious) for last-token states at ``self.layer``, shape (n, d) -> (n,) (or for Features). Pure numpy."""
        return expit(self.decision_states(states))

    def verdict_states(self, states: Any) -> np.ndarray:
        """True where called malicious (p > threshold, compared on the logit scale so that probabilities that
        round to 1.0 still keep their order)."""
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
        """Fit today's kind on one layer's last-token states ``X`` (n, d) with labels ``y`` (1/True/"malicious").

        The Platt sigmoid is fitted on ``folds``-fold out-of-fold decision values. The threshold is
        calibrated on ``calibration`` (benign states, (m, d)) for ``target_fpr``; without it the
        threshold is 0.5 and the card says it is uncalibrated. ``model``: a ``LoadedModel`` or a
        dict as in ``Guard.model``.
        """
        if classifier not in PROBES:
            raise IhsError(f"unknown guard probe {classifier!r}; choose from {', '.join(PROBES)}")
        X = _as_numpy(X)
        yb = label_array(y)
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
        a, c = platt(oof, yb)
        with threadpool_limits(limits=1, user_api="blas"):
            pipe = quiet_fit(make_classifier(classifier, "cv", seed), X, yb)
        mean, scale, coef, intercept = linear_parts(pipe)
        weight = a * coef / scale
        bias = a * (intercept - float((mean / scale) @ coef)) + c
        info = model_info(model) if model is not None else {}
        guard = cls(layer=int(layer), threshold=0.5, threshold_logit=0.0, weight=weight, bias=float(bias),
                    classifier=classifier, target_fpr=float(target_fpr), model=info,
                    parts={"mean": mean, "scale": scale, "coef": coef,
                           "intercept": np.array([intercept]), "platt": np.array([a, c])})
        guard.card = {"calibrated": False, "n_train": {"benign": int(counts[0]), "malicious": int(counts[1])},
                      "oof_train": {"auroc": auroc(yb, oof), "tpr_at_1pct_fpr": tpr_at_fpr(yb, oof, 0.01)}}
        if calibration is not None:
            guard.calibrate(calibration, target_fpr)
        return guard

    def calibrate(self, benign: Any, target_fpr: float | None = None, kinds: Sequence[Any] | None = None) -> float:
        """Set the threshold from benign prompts' states (today's kind) or features (any kind) for ``target_fpr``;
        returns the realised FPR on them.

        With ``kinds`` (one per benign prompt: a dataset, a category), the threshold meets the target on every
        kind at once (the highest of the per-kind thresholds) and the card records the realised FPR per kind.
        """
        return self.calibrate_logits(self.decision_states(benign), target_fpr, kinds)

    def calibrate_logits(self, scores: np.ndarray, target_fpr: float | None = None,
                         kinds: Sequence[Any] | None = None) -> float:
        """:meth:`calibrate` from the guard's logits on benign prompts."""
        if target_fpr is not None:
            self.target_fpr = float(target_fpr)
        scores = np.asarray(scores, dtype=np.float64)
        if kinds is not None:
            self.threshold_logit, per_kind = calibrate_by_kind(scores, kinds, self.target_fpr)
            self.card["calibration_by_kind"] = per_kind
        else:
            self.threshold_logit = calibrate_threshold(scores, self.target_fpr)
            self.card.pop("calibration_by_kind", None)
        self.threshold = float(expit(self.threshold_logit))
        realised = float(np.mean(scores > self.threshold_logit))
        self.card.update({"calibrated": True, "n_calibration": int(len(scores)), "calibration_fpr": realised})
        return realised

    # -- persistence ------------------------------------------------------------------------
    def to_card(self) -> dict[str, Any]:
        card = dict(self.card)
        num_layers = self.model.get("num_layers")
        card.update({
            "format": "ihs-guard", "card_version": CARD_VERSION, "ihs_version": ihs.__version__,
            "layer": self.layer, "layer_convention": LAYER_CONVENTION, "classifier": self.classifier,
            "kind": {**self.recipe.to_dict(), "name": self.kind},
            "features": {"ema_halflife": self.spec.ema_halflife, "pool_start": self.spec.pool_start,
                         "refusal_ids": list(self.spec.refusal_ids), "compliance_ids": list(self.spec.compliance_ids)},
            "cost": {"deepest_layer": self.layer, "num_layers": num_layers,
                     "blocks_share": self.layer / num_layers if num_layers else None},
            "threshold": self.threshold, "threshold_logit": self.threshold_logit, "target_fpr": self.target_fpr,
            "bias": self.bias,
            "rule": "p = sigmoid(logit); malicious when p > threshold (compared as logit > threshold_logit); "
                    + ("logit = state . weight + bias" if self.recipe.linear else "logit from the MLP head"),
            "model": self.model,
        })
        return card

    def save(self, directory: str | Path) -> Path:
        """Write ``guard.safetensors`` (weights and head) and ``guard.json`` (the card) into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": np.ascontiguousarray(self.weight, dtype=np.float64),
                   "bias": np.array([self.bias], dtype=np.float64)}
        tensors.update({f"parts.{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in self.parts.items()})
        if self.head is not None:
            tensors.update(self.head.tensors())
        save_file(tensors, str(out / WEIGHTS), metadata={"format": "ihs-guard", "layer": str(self.layer),
                                                          "kind": self.kind})
        write_json(out / CARD, self.to_card(), indent=2)
        return out

    @classmethod
    def load(cls, directory: str | Path, lm: Any = None) -> Guard:
        """Read a guard (any kind); with ``lm``, check that it is the model the card names (else ``IhsError``)."""
        d = Path(directory)
        if not (d / CARD).is_file() or not (d / WEIGHTS).is_file():
            raise IhsError(f"{d} is not a guard directory (needs {CARD} and {WEIGHTS}; make one with `ihs guard fit`)")
        try:
            card = json.loads((d / CARD).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IhsError(f"{d / CARD} is unreadable: {exc}") from exc
        try:
            tensors = load_file(str(d / WEIGHTS))
            missing = [k for k in ("weight", "bias") if k not in tensors]
            if missing:
                raise ValueError(f"no {' or '.join(missing)} tensor")
        except (OSError, ValueError, SafetensorError) as exc:
            raise IhsError(f"{d / WEIGHTS} is damaged or truncated ({exc}); fit the guard again with ihs guard fit") from exc
        if not isinstance(card, dict) or card.get("format") != "ihs-guard":
            raise IhsError(f"{d / CARD} is not an ihs guard card")
        if int(card.get("card_version", 1)) > CARD_VERSION:
            raise IhsError(f"{d / CARD} has card version {card['card_version']}, newer than this ihs reads "
                           f"({CARD_VERSION}); upgrade ihs")
        kind = card.get("kind")
        recipe = Recipe.from_dict(kind) if kind else Recipe(layers=(int(card["layer"]),),
                                                              head=card.get("classifier", "logreg"))
        if recipe.deepest != int(card["layer"]):
            raise IhsError(f"{d / CARD}: the kind reads layers {list(recipe.layers)} but the card says layer {card['layer']}")
        feats = card.get("features") or {}
        spec = FeatureSpec(ema_halflife=float(feats.get("ema_halflife", 8.0)), pool_start=int(feats.get("pool_start", 0)),
                           refusal_ids=list(feats.get("refusal_ids") or []),
                           compliance_ids=list(feats.get("compliance_ids") or []))
        if recipe.refusal and (not spec.refusal_ids or not spec.compliance_ids):
            raise IhsError(f"{d / CARD}: a guard with refusal features needs its refusal token ids")
        head = Head.from_tensors(recipe.head, tensors) if "head.mean" in tensors else None
        if head is None and not recipe.linear:
            raise IhsError(f"{d / WEIGHTS} holds no weights for the {recipe.head} head of this guard")
        parts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("parts.")}
        guard = cls(layer=recipe.deepest, threshold=float(card["threshold"]), weight=tensors["weight"],
                    bias=float(tensors["bias"][0]), classifier=recipe.head,
                    target_fpr=float(card.get("target_fpr", 0.01)), model=card.get("model", {}), parts=parts,
                    card=card, threshold_logit=card.get("threshold_logit"), recipe=recipe, head=head, spec=spec)
        guard._check_shapes(d)
        if lm is not None:
            guard.attach(lm)
        return guard

    def _check_shapes(self, where: Path) -> None:
        num_layers = self.model.get("num_layers")
        if num_layers is not None and self.layer > int(num_layers):
            raise IhsError(f"{where}: the guard reads layer {self.layer}, its model has layers 0..{num_layers}")
        hidden = self.model.get("hidden_size")
        if hidden:
            want = self.recipe.width(int(hidden))
            got = self.head.width if self.head is not None else int(self.weight.shape[0])
            if got != want:
                raise IhsError(f"{where}: weights of width {got} do not fit the kind {self.kind} on hidden size "
                               f"{hidden} (expected {want})")

    # -- the model --------------------------------------------------------------------------
    def check_model(self, lm: Any) -> None:
        """Raise ``IhsError`` unless ``lm`` is the model this guard was fitted on (and reads it the same way)."""
        want = self.fingerprint
        got = lm.fingerprint()
        if want is not None and got != want:
            raise IhsError(f"this guard was fitted on model {self.model_name!r} (fingerprint {want}); "
                           f"the model given is {lm.name!r} (fingerprint {got})")
        if lm.hidden_size != self.hidden_size:
            raise IhsError(f"guard expects hidden size {self.hidden_size}, model {lm.name!r} has {lm.hidden_size}")
        if self.layer > lm.num_layers:
            raise IhsError(f"guard reads layer {self.layer}, model {lm.name!r} has only {lm.num_layers} blocks")
        if self.recipe.pooling != "last":
            from ihs.guard.features import template_prefix

            chat = bool(self.model.get("chat", False))
            start = template_prefix(lm.tokenizer, chat, self.model.get("system_prompt"))
            if start != self.spec.pool_start:
                raise IhsError(f"guard pools from position {self.spec.pool_start}; the tokenizer of {lm.name!r} opens "
                               f"prompts with {start} shared tokens (another tokenizer or template)")
        if self.recipe.refusal:
            vocab = int(lm.anatomy.unembed.weight.shape[0])
            ids = [*self.spec.refusal_ids, *self.spec.compliance_ids]
            if max(ids) >= vocab:
                raise IhsError(f"guard's refusal tokens reach id {max(ids)}; model {lm.name!r} has {vocab} tokens")

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

    def features(self, prompts: Sequence[str], batch_size: int = 32, max_batch_tokens: int = 4096,
                 progress: Callable[[int], None] | None = None) -> Features:
        """What this guard reads for each prompt, with the forward pass stopped at ``self.layer``."""
        return self.features_ids([f.ids for f in self.format(prompts)], batch_size, max_batch_tokens, progress)

    def features_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32, max_batch_tokens: int = 4096,
                     progress: Callable[[int], None] | None = None) -> Features:
        from ihs.guard.features import extract_features

        return extract_features(self._need_lm(), ids, self.feature_spec(), batch_size=batch_size,
                                max_batch_tokens=max_batch_tokens, progress=progress)

    def decision_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 32, max_batch_tokens: int = 4096,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Logits for formatted token ids (early exit at ``self.layer``)."""
        if self.recipe.legacy:
            from ihs.guard.early_exit import states_at_layer_batched

            return self.decision_states(states_at_layer_batched(self._need_lm(), ids, self.layer, batch_size,
                                                                max_batch_tokens, progress))
        return self.decision_features(self.features_ids(ids, batch_size, max_batch_tokens, progress))

    def score(self, prompts: Sequence[str] | str, batch_size: int = 32, max_batch_tokens: int = 4096,
              progress: Callable[[int], None] | None = None) -> ScoreResult:
        """Probabilities and verdicts for prompts, running the model only up to ``self.layer``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            return ScoreResult(np.zeros(0), np.zeros(0, dtype=bool), self.threshold)
        d = self.decision_ids([f.ids for f in self.format(prompts)], batch_size, max_batch_tokens, progress)
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
