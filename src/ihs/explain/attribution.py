"""Token attribution: which input tokens move a target (probe logit, refusal margin, lens logit).

Two methods, both on the input embeddings (the output of the model's own embedding layer):

- **integrated gradients** (``method="ig"``): ``(x - x') * sum_s w_s grad f(x' + a_s (x - x'))``,
  summed over the embedding dimension, one score per token. The nodes ``a_s`` and weights ``w_s``
  come from captum's approximation rules (``gausslegendre`` by default; ``riemann_middle``,
  ``riemann_trapezoid``, ``riemann_left``, ``riemann_right``). Interpolation rows of several prompts
  share one forward/backward pass: prompts of similar length are grouped, right-padded (the last
  real token never sees the padding after it), and the (prompt, step) rows are cut into passes of at
  most ``max_batch_tokens`` padded tokens.
- **gradient x input** (``method="grad_x_input"``): ``(x - x') * grad f(x)``, the one-step version;
  with the zero baseline it is the textbook ``x * grad f(x)``.

The **baseline** ``x'`` keeps the chat template and replaces the tokens in ``scope`` ("user": the
user's prompt tokens, default; "all": every token) by the zero vector (``baseline="zero"``), the pad
token's embedding (``"pad"``) or a given token id's embedding. Out-of-scope tokens are identical in
``x`` and ``x'``, so their score is exactly 0.

**Completeness**: integrated gradients satisfy ``sum_t score_t = f(x) - f(x')`` up to the quadrature
error; every prompt reports ``gap = sum_t score_t - (f(x) - f(x'))`` and the gap relative to
``|f(x) - f(x')|``. Gradient x input is not complete; its gap says how far from it it is.

Scores are in the target's units: a positive score pushes the target up (toward "malicious" for a
probe logit, toward refusal for the refusal margin).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ihs.errors import IhsError
from ihs.explain.targets import (
    build_prefix,
    check_target,
    common_prefix,
    embed_ids,
    length_batches,
    pad_rows,
    score_rows,
    target_values,
)
from ihs.explain.tokens import PromptTokens, tokenize_prompts
from ihs.io import read_json, write_json
from ihs.prefix_cache import SharedPrefix
from ihs.progress import progress_bar

METHODS: tuple[str, ...] = ("ig", "grad_x_input")
INTEGRATION: tuple[str, ...] = ("gausslegendre", "riemann_middle", "riemann_trapezoid", "riemann_left",
                                "riemann_right")
SCOPES: tuple[str, ...] = ("user", "all")
BASELINES: tuple[str, ...] = ("pad", "mean", "zero")


@dataclass(frozen=True)
class AttributionOptions:
    """How to attribute.

    ``steps``: quadrature nodes for integrated gradients; ``batch_size``: prompts grouped together;
    ``max_batch_tokens``: padded tokens (rows x width) per forward/backward pass, which bounds memory;
    ``share_prefix``: with ``scope="user"``, run the template's opening that all prompts share once and
    reuse its key/value cache in every pass (it does not depend on the user's tokens);
    ``chat``/``system_prompt``: formatting, as in extraction (``None``: the tokenizer's template if any).
    """

    method: str = "ig"
    steps: int = 32
    integration: str = "gausslegendre"
    baseline: str | int = "mean"
    scope: str = "user"
    batch_size: int = 8
    max_batch_tokens: int = 2048
    share_prefix: bool = True
    chat: bool | None = None
    system_prompt: str | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ``IhsError`` on a bad option."""
        if self.method not in METHODS:
            raise IhsError(f"unknown attribution method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.integration not in INTEGRATION:
            raise IhsError(f"unknown integration rule {self.integration!r}; choose from {', '.join(INTEGRATION)}")
        if self.scope not in SCOPES:
            raise IhsError(f"unknown baseline scope {self.scope!r}; choose from {', '.join(SCOPES)}")
        if not isinstance(self.baseline, int) and self.baseline not in BASELINES:
            raise IhsError(f"unknown baseline {self.baseline!r}; use {', '.join(BASELINES)} or a token id")
        if self.steps < 1:
            raise IhsError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise IhsError("batch_size and max_batch_tokens must be positive")


@dataclass
class TokenAttribution:
    """One prompt's attribution: a score per token, the target at the input and at the baseline, the gap."""

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    user: list[bool]
    scores: list[float]
    target: float
    baseline_target: float
    gap: float
    relative_gap: float
    truncated: bool = False

    def top(self, k: int = 5, *, user_only: bool = True) -> list[dict[str, Any]]:
        """The ``k`` highest-scoring tokens (position, token, score), user tokens only by default."""
        idx = [i for i in range(len(self.scores)) if self.user[i] or not user_only]
        idx.sort(key=lambda i: -self.scores[i])
        return [{"position": i, "token": self.tokens[i], "score": self.scores[i]} for i in idx[:k]]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, JSON-ready."""
        return asdict(self)


@dataclass
class AttributionResult:
    """Attributions for a list of prompts, with the target, options and model they were computed with."""

    method: str
    target: dict[str, Any]
    options: dict[str, Any]
    model: dict[str, Any]
    items: list[TokenAttribution]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Sizes, speed and completeness over all prompts."""
        rel = np.array([it.relative_gap for it in self.items], dtype=np.float64)
        gaps = np.abs([it.gap for it in self.items])
        return {"prompts": len(self.items), "seconds": self.seconds,
                "prompts_per_second": len(self.items) / self.seconds if self.seconds > 0 else None,
                "max_abs_gap": float(gaps.max()) if len(gaps) else None,
                "median_relative_gap": float(np.median(rel)) if len(rel) else None,
                "max_relative_gap": float(rel.max()) if len(rel) else None}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, JSON-ready (``ihs.io.write_json`` writes it)."""
        return {"format": "ihs-explain-attribution", "method": self.method, "target": self.target,
                "options": self.options, "model": self.model, "seconds": self.seconds,
                "summary": self.summary(), "extra": self.extra, "items": [it.to_dict() for it in self.items]}

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON."""
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> AttributionResult:
        """Read a result written by :meth:`save`."""
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != "ihs-explain-attribution":
            raise IhsError(f"{path} is not an ihs attribution result")
        items = [TokenAttribution(**{k: (float("nan") if v is None and k in ("gap", "relative_gap") else v)
                                     for k, v in it.items()}) for it in data["items"]]
        return cls(method=data["method"], target=data["target"], options=data["options"], model=data["model"],
                   items=items, seconds=float(data.get("seconds") or 0.0), extra=data.get("extra") or {})


def model_info(lm: Any) -> dict[str, Any]:
    """Name and identity of a loaded model, for result files."""
    return {"name": getattr(lm, "name", "unknown"), "identity": dict(getattr(lm, "identity", {}) or {}),
            "num_layers": lm.num_layers}


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes in [0, 1], weights summing to 1) of captum's approximation ``rule`` with ``steps`` points."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters(rule)
    return np.asarray(alphas(steps), dtype=np.float64), np.asarray(step_sizes(steps), dtype=np.float64)


def baseline_vector(lm: Any, baseline: str | int) -> torch.Tensor:
    """The embedding that stands for a removed token: the pad token's, the vocabulary's mean, zeros, or a token
    id's embedding (each as the model's embedding layer outputs it, scaling included)."""
    emb = lm.model.get_input_embeddings()
    if baseline == "zero":
        return torch.zeros(emb.weight.shape[1], dtype=emb.weight.dtype, device=lm.input_device)
    if baseline == "mean":
        with torch.no_grad():
            ids = torch.arange(emb.weight.shape[0], device=lm.input_device)
            total = sum(emb(chunk).float().sum(0) for chunk in ids.split(8192))
            return (total / emb.weight.shape[0]).to(emb.weight.dtype)
    token = lm.tokenizer.pad_token_id if baseline == "pad" else baseline
    if not isinstance(token, int) or not 0 <= token < emb.weight.shape[0]:
        raise IhsError(f"baseline token {token!r} is not in the vocabulary")
    with torch.no_grad():
        return emb(torch.tensor([token], device=lm.input_device))[0].detach()


def input_rows(lm: Any, pts: Sequence[PromptTokens]) -> list[torch.Tensor]:
    """Each prompt's input embeddings (T_i, d), detached."""
    with torch.no_grad():
        out = []
        for batch in length_batches([len(p) for p in pts], batch_size=64, max_batch_tokens=1 << 16):
            emb = embed_ids(lm, [pts[i].ids for i in batch])
            for j, i in enumerate(batch):
                out.append((i, emb[j, : len(pts[i])].detach()))
    out.sort(key=lambda x: x[0])
    return [r for _, r in out]


def _scope_mask(pt: PromptTokens, scope: str) -> torch.Tensor:
    return torch.tensor(pt.user if scope == "user" else [True] * len(pt), dtype=torch.bool)


def baseline_rows(lm: Any, pts: Sequence[PromptTokens], rows: Sequence[torch.Tensor], *, baseline: str | int,
                  scope: str) -> list[torch.Tensor]:
    """The baseline input of each prompt: in-scope tokens replaced by the baseline embedding."""
    vec = baseline_vector(lm, baseline)
    out = []
    for pt, x in zip(pts, rows, strict=True):
        xb = x.clone()
        xb[_scope_mask(pt, scope).to(x.device)] = vec.to(x.dtype)
        out.append(xb)
    return out


def _group_attributions(lm: Any, target: Any, xs: list[torch.Tensor], bs: list[torch.Tensor],
                        alphas: np.ndarray, weights: np.ndarray, max_batch_tokens: int,
                        prefix: SharedPrefix | None) -> list[np.ndarray]:
    """Integrated gradients for one group of prompts: every (prompt, node) row, in passes of bounded size."""
    x, mask, last = pad_rows(xs)
    xb, _, _ = pad_rows(bs)
    delta = x - xb
    n, width = x.shape[0], x.shape[1]
    a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    w = torch.as_tensor(weights, dtype=torch.float32, device=x.device)
    pairs = [(b, s) for b in range(n) for s in range(len(alphas))]
    per_pass = max(1, max_batch_tokens // width)
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for start in range(0, len(pairs), per_pass):
        chunk = pairs[start:start + per_pass]
        bi = torch.tensor([p[0] for p in chunk], device=x.device)
        si = torch.tensor([p[1] for p in chunk], device=x.device)
        rows = (xb[bi] + a[si, None, None] * delta[bi]).detach().requires_grad_(True)
        values = target_values(lm, target, rows, mask[bi], last[bi], prefix)
        (grad,) = torch.autograd.grad(values.sum(), rows)
        acc.index_add_(0, bi, grad.float() * w[si, None, None])
    scores = (delta.float() * acc).sum(-1)
    return [scores[b, : xs[b].shape[0]].detach().cpu().double().numpy() for b in range(n)]


def _group_grad_x_input(lm: Any, target: Any, xs: list[torch.Tensor], bs: list[torch.Tensor],
                        max_batch_tokens: int, prefix: SharedPrefix | None) -> list[np.ndarray]:
    x, mask, last = pad_rows(xs)
    xb, _, _ = pad_rows(bs)
    per_pass = max(1, max_batch_tokens // x.shape[1])
    out: list[np.ndarray] = []
    for start in range(0, x.shape[0], per_pass):
        sl = slice(start, start + per_pass)
        rows = x[sl].detach().requires_grad_(True)
        values = target_values(lm, target, rows, mask[sl], last[sl], prefix)
        (grad,) = torch.autograd.grad(values.sum(), rows)
        scores = ((x[sl] - xb[sl]).float() * grad.float()).sum(-1)
        out.extend(scores[j, : xs[start + j].shape[0]].detach().cpu().double().numpy()
                   for j in range(scores.shape[0]))
    return out


def attribution_scores(lm: Any, pts: Sequence[PromptTokens], target: Any, *,
                       options: AttributionOptions) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-prompt score arrays, f(x) and f(x') for tokenized prompts (the engine behind :func:`attribute`)."""
    options.validate()
    check_target(lm, target)
    xs = input_rows(lm, pts)
    bs = baseline_rows(lm, pts, xs, baseline=options.baseline, scope=options.scope)
    n = common_prefix(pts, limit_to_user=True) if options.share_prefix and options.scope == "user" else 0
    prefix = build_prefix(lm, pts[0].ids[:n]) if n else None
    n = prefix.length if prefix is not None else 0
    fx = score_rows(lm, target, xs, max_batch_tokens=options.max_batch_tokens, prefix=prefix)
    fb = score_rows(lm, target, bs, max_batch_tokens=options.max_batch_tokens, prefix=prefix)
    alphas, weights = quadrature(options.integration, options.steps)
    scores: list[np.ndarray | None] = [None] * len(pts)
    groups = length_batches([len(p) - n for p in pts], batch_size=options.batch_size,
                            max_batch_tokens=max(options.max_batch_tokens, 1))
    was_training = lm.model.training
    lm.model.eval()
    try:
        with torch.enable_grad(), progress_bar("attributing", total=len(pts), enabled=options.progress) as advance:
            for group in groups:
                gx, gb = [xs[i][n:] for i in group], [bs[i][n:] for i in group]
                if options.method == "ig":
                    got = _group_attributions(lm, target, gx, gb, alphas, weights, options.max_batch_tokens, prefix)
                else:
                    got = _group_grad_x_input(lm, target, gx, gb, options.max_batch_tokens, prefix)
                for i, s in zip(group, got, strict=True):
                    scores[i] = np.concatenate([np.zeros(n), s])
                advance(len(group))
    finally:
        lm.model.train(was_training)
    return [s for s in scores if s is not None], fx, fb


def attribute_tokens(lm: Any, pts: Sequence[PromptTokens], target: Any, *,
                     options: AttributionOptions | None = None) -> AttributionResult:
    """Attribute ``target`` to the tokens of already tokenized prompts (see :func:`attribute`)."""
    options = options or AttributionOptions()
    started = time.perf_counter()
    scores, fx, fb = attribution_scores(lm, pts, target, options=options)
    seconds = time.perf_counter() - started
    items = []
    for pt, s, a, b in zip(pts, scores, fx, fb, strict=True):
        diff = float(a - b)
        gap = float(s.sum() - diff)
        items.append(TokenAttribution(prompt=pt.prompt, tokens=list(pt.tokens), token_ids=list(pt.ids),
                                      user=list(pt.user), scores=[float(v) for v in s], target=float(a),
                                      baseline_target=float(b), gap=gap,
                                      relative_gap=abs(gap) / max(abs(diff), 1e-12), truncated=pt.truncated))
    opts = asdict(options)
    return AttributionResult(method=options.method, target=target.describe(), options=opts, model=model_info(lm),
                             items=items, seconds=seconds)


def attribute(lm: Any, prompts: Sequence[Any], target: Any, *,
              options: AttributionOptions | None = None) -> AttributionResult:
    """Token attributions of ``target`` for each prompt (strings, records or dicts with ``text``).

    Returns per prompt the tokens as the model sees them, which are the user's (the rest is chat
    template), one score per token, the target at the input and at the baseline, and the
    completeness gap.
    """
    options = options or AttributionOptions()
    options.validate()
    if not prompts:
        raise IhsError("no prompts to explain")
    pts = tokenize_prompts(lm, prompts, chat=options.chat, system_prompt=options.system_prompt)
    return attribute_tokens(lm, pts, target, options=options)
