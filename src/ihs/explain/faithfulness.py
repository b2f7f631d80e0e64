"""Are the attributions faithful? Deletion and insertion curves, and the randomised-weights check.

**Deletion / insertion** (:func:`perturbation_curves`). For each prompt, the user's tokens are
ranked by an order and the target is re-scored with the top-k of them removed (deletion) or with only
the top-k kept (insertion), for k at fractions 0, 1/steps, ..., 1 of the user's tokens. "Removed"
means replaced by the attribution's baseline embedding (``mode="replace"``, the default, so positions
stay) or dropped from the sequence (``mode="drop"``). The chat template is never touched. Orders:

- ``attribution``: the attribution scores, highest first;
- ``random``: random orders (the mean curve over ``random_orders`` seeded permutations);
- ``bow``: a bag-of-words saliency: each token gets the weight of the words it belongs to in a
  unigram+bigram logistic regression (``ihs.analysis.surface.BagOfWordsBaseline``) fitted on
  training prompts (a bigram's weight is split between its two words).

Tokens are ranked in the direction the user's tokens move the target: when their scores sum to a
positive number (by completeness, f(x) > f(x')) the highest scores go first, otherwise the lowest, and
the bag-of-words order follows the same sign. Areas under the curves (trapezoid over the fraction of
user tokens) are given in the target's units and normalised per prompt, ``(v - v_empty) / (v_full -
v_empty)``, which runs from 1 (all user tokens) to 0 (none) whichever way the target moves: a faithful
order makes the normalised deletion curve fall faster (lower area) and the insertion curve rise faster
(higher area) than random order.

**Randomised weights** (:func:`randomisation_check`, after Adebayo et al.'s sanity checks): the
decoder blocks' matrices are re-initialised (seeded normal, the config's ``initializer_range``;
embeddings, norms and the unembedding kept so the targets still apply), attributions are recomputed
and compared with the original ones by Spearman rank correlation over the attributed tokens. An
attribution method that explains the model must change when the model is destroyed; the model's
weights are restored afterwards.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from ihs.analysis.surface import BagOfWordsBaseline
from ihs.errors import IhsError
from ihs.explain.attribution import (
    AttributionOptions,
    AttributionResult,
    attribute_tokens,
    baseline_vector,
    input_rows,
)
from ihs.explain.targets import build_prefix, check_target, common_prefix, score_rows
from ihs.explain.tokens import PromptTokens, prompt_text, tokenize_prompts
from ihs.io import write_json
from ihs.progress import progress_bar

MODES: tuple[str, ...] = ("replace", "drop")


# -- bag-of-words saliency ---------------------------------------------------------------------


class BowSaliency:
    """Per-token weights from a bag-of-words logistic regression (toward its positive class)."""

    def __init__(self, model: BagOfWordsBaseline, n_train: int = 0, excluded: int = 0) -> None:
        self.model = model
        self.n_train = n_train
        self.excluded = excluded
        vec = model.pipeline_.named_steps["vec"]
        coef = model.pipeline_.named_steps["clf"].coef_
        if coef.shape[0] != 1:
            raise IhsError("the bag-of-words saliency needs a binary classifier")
        self._weights = {str(name): float(w) for name, w in zip(vec.get_feature_names_out(), coef[0], strict=True)}
        self._pattern = re.compile(vec.token_pattern)
        self._lower = bool(vec.lowercase)

    @classmethod
    def fit(cls, texts: Sequence[Any], labels: Sequence[Any], *, exclude: Sequence[Any] = (),
            seed: int = 0) -> BowSaliency:
        """Fit on training prompts; texts also in ``exclude`` (the prompts being explained) are left out,
        so the saliency never saw them. Labels: 1/True or "malicious" for the positive class."""
        raw = [prompt_text(t) for t in texts]
        if len(raw) != len(labels):
            raise IhsError(f"{len(raw)} training texts but {len(labels)} labels")
        held = {" ".join(prompt_text(t).split()).casefold() for t in exclude}
        keep = [i for i, t in enumerate(raw) if " ".join(t.split()).casefold() not in held]
        y = np.asarray([1 if (v is True or v == 1 or v == "malicious") else 0 for v in labels])
        y = y[keep]
        if len(np.unique(y)) < 2:
            raise IhsError("the bag-of-words saliency needs training prompts of both classes")
        model = BagOfWordsBaseline(random_state=seed).fit([raw[i] for i in keep], y)
        return cls(model, n_train=len(keep), excluded=len(raw) - len(keep))

    def word_weights(self, text: str) -> list[tuple[int, int, float]]:
        """(start, end, weight) for each word of ``text`` as the vectorizer splits it."""
        words = [(m.start(), m.end(), m.group(0).lower() if self._lower else m.group(0))
                 for m in self._pattern.finditer(text)]
        weights = [self._weights.get(w, 0.0) for _, _, w in words]
        for i in range(len(words) - 1):
            bigram = self._weights.get(f"{words[i][2]} {words[i + 1][2]}", 0.0)
            weights[i] += bigram / 2
            weights[i + 1] += bigram / 2
        return [(s, e, w) for (s, e, _), w in zip(words, weights, strict=True)]

    def token_scores(self, pt: PromptTokens) -> np.ndarray:
        """One weight per token: the sum over the words its characters overlap; 0 for template tokens."""
        out = np.zeros(len(pt), dtype=np.float64)
        base = pt.user_span[0] - pt.shift
        for start, end, w in self.word_weights(pt.prompt):
            lo, hi = base + start, base + end
            for i, (s, e) in enumerate(pt.offsets):
                if pt.user[i] and s < hi and e > lo:
                    out[i] += w
        return out


# -- deletion and insertion --------------------------------------------------------------------


@dataclass(frozen=True)
class FaithfulnessOptions:
    """``steps``: the fraction grid has steps + 1 points; ``mode``: replace or drop removed tokens."""

    steps: int = 10
    mode: str = "replace"
    random_orders: int = 5
    seed: int = 0
    batch_size: int = 32
    max_batch_tokens: int = 4096
    progress: bool = True

    def validate(self) -> None:
        """Raise ``IhsError`` on a bad option."""
        if self.mode not in MODES:
            raise IhsError(f"unknown removal mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.steps < 1 or self.random_orders < 1:
            raise IhsError("steps and random_orders must be at least 1")


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.trapezoid(y, x)) if len(x) > 1 else float("nan")


def signed_area(item: dict[str, Any], curve: str, order: str) -> float:
    """Area under ``direction * (value - empty)`` over the fraction of user tokens, in the target's units.

    Unlike the normalised area it does not divide by ``full - empty``, so prompts whose user tokens barely
    move the target (the baseline scores almost like the prompt) weigh little instead of exploding: the mean
    over prompts stays finite. Deletion: lower is better; insertion: higher is better.
    """
    y = np.asarray(item[curve][order], dtype=np.float64)
    return _auc(np.asarray(item["fractions"], dtype=np.float64), item["direction"] * (y - item["empty"]))


@dataclass
class FaithfulnessResult:
    """Per-prompt deletion and insertion curves per order, with their areas."""

    orders: list[str]
    items: list[dict[str, Any]]
    target: dict[str, Any]
    options: dict[str, Any]
    bow: dict[str, Any] | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Mean areas per curve and order (raw, normalised with their median, and signed in the target's
        units: :func:`signed_area`), and the share of prompts whose attribution order beats random order on
        the normalised areas (prompts where removing every user token leaves the target unchanged are left
        out)."""
        out: dict[str, Any] = {"prompts": len(self.items)}
        for curve in ("deletion", "insertion"):
            per: dict[str, Any] = {}
            for order in self.orders:
                raw = [it["auc"][curve][order] for it in self.items if order in it["auc"][curve]]
                norm = [it["auc_normalised"][curve][order] for it in self.items
                        if order in it["auc_normalised"][curve]]
                signed = [signed_area(it, curve, order) for it in self.items if order in it[curve]]
                per[order] = {"auc": float(np.nanmean(raw)) if raw else None,
                              "auc_normalised": float(np.nanmean(norm)) if norm and np.isfinite(norm).any() else None,
                              "auc_normalised_median": (float(np.nanmedian(norm)) if norm and np.isfinite(norm).any()
                                                        else None),
                              "auc_signed": float(np.nanmean(signed)) if signed else None}
            out[curve] = per
        better: dict[str, list[bool]] = {"deletion": [], "insertion": []}
        for it in self.items:
            norm = it["auc_normalised"]
            if it["n_user"] == 0 or not np.isfinite(norm["deletion"].get("attribution", np.nan)):
                continue
            better["deletion"].append(norm["deletion"]["attribution"] < norm["deletion"]["random"])
            better["insertion"].append(norm["insertion"]["attribution"] > norm["insertion"]["random"])
        out["attribution_beats_random"] = {k: float(np.mean(v)) if v else None for k, v in better.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"format": "ihs-explain-faithfulness", "orders": self.orders, "target": self.target,
                "options": self.options, "bow": self.bow, "seconds": self.seconds, "summary": self.summary(),
                "items": self.items}

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        write_json(path, self.to_dict())
        return Path(path)


class _RowBank:
    """The perturbed inputs of one prompt, each kept once (orders share their end points)."""

    def __init__(self, rows: list[torch.Tensor], x: torch.Tensor, vec: torch.Tensor, mode: str) -> None:
        self.rows, self.x, self.vec, self.mode = rows, x, vec, mode
        self.cache: dict[tuple[int, ...], int] = {}

    def __call__(self, removed: frozenset[int]) -> int:
        key = tuple(sorted(removed))
        if key not in self.cache:
            if self.mode == "replace":
                r = self.x.clone()
                if key:
                    r[list(key)] = self.vec.to(r.dtype)
            else:
                r = self.x[[i for i in range(self.x.shape[0]) if i not in removed]]
            self.cache[key] = len(self.rows)
            self.rows.append(r)
        return self.cache[key]


def _grid(n: int, steps: int) -> list[int]:
    return sorted({int(round(f * n)) for f in np.linspace(0.0, 1.0, steps + 1)})


def perturbation_curves(
    lm: Any,
    attributions: AttributionResult,
    target: Any,
    *,
    bow: BowSaliency | None = None,
    options: FaithfulnessOptions | None = None,
) -> FaithfulnessResult:
    """Deletion and insertion curves of ``target`` for the attribution order, random orders and (given
    ``bow``) the bag-of-words order; ``attributions`` must have been computed for ``target``."""
    options = options or FaithfulnessOptions()
    options.validate()
    check_target(lm, target)
    started = time.perf_counter()
    aopts = attributions.options
    pts = tokenize_prompts(lm, [it.prompt for it in attributions.items], chat=aopts.get("chat"),
                           system_prompt=aopts.get("system_prompt"))
    for pt, it in zip(pts, attributions.items, strict=True):
        if list(pt.ids) != list(it.token_ids):
            raise IhsError("the attributions were computed with other tokens than this model gives now; "
                           "recompute them with this model and formatting")
    vec = baseline_vector(lm, aopts.get("baseline", "mean"))
    xs = input_rows(lm, pts)
    rng = np.random.default_rng(options.seed)
    orders = ["attribution", "random"] + (["bow"] if bow is not None else [])
    n = common_prefix(pts, limit_to_user=True)
    prefix = build_prefix(lm, pts[0].ids[:n]) if n else None
    # The end points first: which way removing the user's tokens moves the target sets the ranking sign.
    ends: list[torch.Tensor] = []
    for pt, x in zip(pts, xs, strict=True):
        _RowBank(ends, x, vec, options.mode)(frozenset(pt.user_positions))
    empty_values = score_rows(lm, target, ends, batch_size=options.batch_size,
                              max_batch_tokens=options.max_batch_tokens, prefix=prefix)
    full_values = score_rows(lm, target, xs, batch_size=options.batch_size,
                             max_batch_tokens=options.max_batch_tokens, prefix=prefix)
    rows: list[torch.Tensor] = []
    plans = []
    for pt, it, x, full, empty in zip(pts, attributions.items, xs, full_values, empty_values, strict=True):
        user = pt.user_positions
        scores = np.asarray(it.scores, dtype=np.float64)
        # Highest scores first when the user's tokens raise the target, lowest first when they lower it.
        sign = 1.0 if full >= empty else -1.0
        ranked: dict[str, list[list[int]]] = {
            "attribution": [sorted(user, key=lambda i: (-sign * scores[i], i))],
            "random": [list(rng.permutation(user)) for _ in range(options.random_orders)],
        }
        if bow is not None:
            weights = bow.token_scores(pt)
            tie = rng.permutation(len(pt))
            ranked["bow"] = [sorted(user, key=lambda i: (-sign * weights[i], tie[i]))]
        ks = _grid(len(user), options.steps)
        row_for = _RowBank(rows, x, vec, options.mode)
        # the end points are known: mark them so they are not scored twice
        row_for.cache[()] = -1
        row_for.cache[tuple(sorted(user))] = -2
        plan: dict[str, Any] = {"ks": ks, "n_user": len(user), "direction": sign, "deletion": {}, "insertion": {},
                                "full": float(full), "empty": float(empty)}
        for order, perms in ranked.items():
            plan["deletion"][order] = [[row_for(frozenset(p[:k])) for k in ks] for p in perms]
            plan["insertion"][order] = [[row_for(frozenset(p[k:])) for k in ks] for p in perms]
        plans.append(plan)
    scored = np.empty(len(rows))
    chunk = max(options.batch_size * 8, 1)
    with progress_bar("perturbations", total=len(rows), unit="rows", enabled=options.progress) as advance:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            scored[start:start + len(part)] = score_rows(lm, target, part, batch_size=options.batch_size,
                                                         max_batch_tokens=options.max_batch_tokens, prefix=prefix)
            advance(len(part))
    items = []
    for it, plan in zip(attributions.items, plans, strict=True):
        x = np.asarray(plan["ks"], dtype=np.float64) / max(plan["n_user"], 1)
        full, empty = plan["full"], plan["empty"]
        values = np.concatenate([scored, [empty, full]])  # row -2 is the empty input, -1 the full one
        span = full - empty
        entry: dict[str, Any] = {"prompt": it.prompt, "n_user": plan["n_user"], "direction": plan["direction"],
                                 "fractions": x.tolist(),
                                 "full": full, "empty": empty, "deletion": {}, "insertion": {},
                                 "auc": {"deletion": {}, "insertion": {}},
                                 "auc_normalised": {"deletion": {}, "insertion": {}}}
        for curve in ("deletion", "insertion"):
            for order, idx in plan[curve].items():
                y = values[np.asarray(idx)].mean(0)
                entry[curve][order] = y.tolist()
                entry["auc"][curve][order] = _auc(x, y)
                entry["auc_normalised"][curve][order] = (_auc(x, (y - empty) / span) if abs(span) > 1e-6
                                                         else float("nan"))
        items.append(entry)
    bow_info = None if bow is None else {"n_train": bow.n_train, "excluded_explained": bow.excluded,
                                         "model": "unigram+bigram presence -> logistic regression"}
    return FaithfulnessResult(orders=orders, items=items, target=target.describe(), options=asdict(options),
                              bow=bow_info, seconds=time.perf_counter() - started)


# -- randomised weights ------------------------------------------------------------------------


@contextmanager
def randomised_blocks(lm: Any, *, seed: int = 0, std: float | None = None) -> Iterator[Any]:
    """Re-initialise the matrices of every decoder block in place (seeded normal), restore them afterwards.

    Vectors (norm scales, biases), the embeddings, the final norm and the unembedding are kept.
    """
    params = [(name, p) for name, p in lm.anatomy.blocks.named_parameters() if p.dim() >= 2]
    if any(p.device.type == "meta" for _, p in params):
        raise IhsError("the randomised-weights check needs every block's weights in memory (no offloading)")
    sd = float(std if std is not None else getattr(lm.model.config, "initializer_range", 0.02) or 0.02)
    saved = [p.detach().clone() for _, p in params]
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for _, p in params:
                p.copy_((torch.randn(p.shape, generator=gen) * sd).to(p.device, p.dtype))
        yield lm
    finally:
        with torch.no_grad():
            for (_, p), old in zip(params, saved, strict=True):
                p.copy_(old)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


@dataclass
class SanityResult:
    """Rank correlation between attributions on the trained and on the randomised model, per prompt."""

    spearman: list[float]
    spearman_abs: list[float]
    target: dict[str, Any]
    options: dict[str, Any]
    seed: int
    original: AttributionResult | None = field(default=None, repr=False)
    randomised: AttributionResult | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """Mean correlations (NaN-free prompts only)."""
        s, a = np.asarray(self.spearman, float), np.asarray(self.spearman_abs, float)
        return {"prompts": len(s), "mean_spearman": float(np.nanmean(s)) if np.isfinite(s).any() else None,
                "mean_spearman_abs": float(np.nanmean(a)) if np.isfinite(a).any() else None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the two attribution results)."""
        return {"format": "ihs-explain-sanity", "check": "randomised decoder-block weights",
                "spearman": self.spearman, "spearman_abs": self.spearman_abs, "summary": self.summary(),
                "target": self.target, "options": self.options, "seed": self.seed}

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        write_json(path, self.to_dict())
        return Path(path)


def randomisation_check(
    lm: Any,
    prompts: Sequence[Any],
    target: Any,
    *,
    options: AttributionOptions | None = None,
    seed: int = 0,
    original: AttributionResult | None = None,
) -> SanityResult:
    """Attributions of ``target`` on the trained model and with randomised blocks, compared per prompt
    by Spearman correlation over the attributed tokens (the user's, or all with ``scope="all"``)."""
    options = options or AttributionOptions()
    pts = tokenize_prompts(lm, prompts, chat=options.chat, system_prompt=options.system_prompt)
    first = original if original is not None else attribute_tokens(lm, pts, target, options=options)
    with randomised_blocks(lm, seed=seed):
        second = attribute_tokens(lm, pts, target, options=options)
    rho, rho_abs = [], []
    for pt, a, b in zip(pts, first.items, second.items, strict=True):
        idx = pt.user_positions if options.scope == "user" else list(range(len(pt)))
        sa, sb = np.asarray(a.scores)[idx], np.asarray(b.scores)[idx]
        rho.append(_spearman(sa, sb))
        rho_abs.append(_spearman(np.abs(sa), np.abs(sb)))
    return SanityResult(spearman=rho, spearman_abs=rho_abs, target=target.describe(), options=asdict(options),
                        seed=seed, original=first, randomised=second)
