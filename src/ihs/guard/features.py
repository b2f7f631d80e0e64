"""What a guard reads from the model: pooled states at chosen layers and the model's own refusal margin.

A guard of today's kind reads one vector, the last prompt token's state at one layer. The stronger
kinds read more, still in one forward pass that stops at the deepest layer they need (early exit):

- **pooling** over the prompt's positions at a layer: ``last`` (the last token), ``mean``, ``max``
  (per coordinate), ``ema`` (an exponential moving average running from the first prompt position
  to the last, with a half-life of ``ema_halflife`` tokens, so the end weighs most). Pooled
  positions run from ``pool_start`` to the prompt's last token: ``pool_start`` is the length of the
  opening that every formatted prompt shares (BOS and, for chat models, the template up to the
  user's text). Those positions hold the same states for every prompt (the model is causal), so they
  would only add a length cue, and the first one is the attention sink with its very large norm.
- **the refusal margin** at a layer: the logit lens at the last token (final norm, then the
  unembedding rows of a few refusal and compliance openings), log-sum-exp over the refusal
  openings' first tokens minus log-sum-exp over the compliance openings'. It is the direction the
  model itself reads out when it starts to refuse, and it is not fitted to any label.

:func:`extract_features` computes them with the hook engine (:mod:`ihs.hooks`): a ``read`` edit
per layer pools the batch's states in place, so no full-sequence activations are kept.
:class:`Features` holds the arrays (``"last"``, ``"mean"``, ``"max"``, ``"ema"``: (n, layers, d);
``"refusal"``: (n, layers)) with the layers of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ihs.batching import plan_batches
from ihs.errors import IhsError
from ihs.hooks import Edit, run_with_hooks

POOLINGS: tuple[str, ...] = ("last", "mean", "max", "ema")
REFUSAL = "refusal"
REFUSAL_OPENINGS: tuple[str, ...] = ("Sorry", "I'm sorry", "Unfortunately", "I cannot", "I can't", "As an AI")
COMPLIANCE_OPENINGS: tuple[str, ...] = ("Sure", "Certainly", "Here", "Of course", "Absolutely", "Yes")


@dataclass
class FeatureSpec:
    """Which features one forward pass computes.

    ``pooled``: pooling -> layers (store convention: 0 = embedding output, i = output of block i);
    ``refusal_layers``: layers whose last-token refusal margin is read (needs ``refusal_ids`` and
    ``compliance_ids``, token ids of the openings' first tokens).
    """

    pooled: dict[str, list[int]] = field(default_factory=dict)
    refusal_layers: list[int] = field(default_factory=list)
    ema_halflife: float = 8.0
    pool_start: int = 0
    refusal_ids: list[int] = field(default_factory=list)
    compliance_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pooled = {p: sorted({int(v) for v in ls}) for p, ls in self.pooled.items() if ls}
        self.refusal_layers = sorted({int(v) for v in self.refusal_layers})
        bad = [p for p in self.pooled if p not in POOLINGS]
        if bad:
            raise IhsError(f"unknown pooling {bad[0]!r}; choose from {', '.join(POOLINGS)}")
        if self.ema_halflife <= 0:
            raise IhsError(f"the EMA half-life must be positive, got {self.ema_halflife}")
        if self.pool_start < 0:
            raise IhsError(f"pool_start must be non-negative, got {self.pool_start}")
        if self.refusal_layers and (not self.refusal_ids or not self.compliance_ids):
            raise IhsError("refusal features need refusal and compliance token ids")

    @property
    def layers(self) -> list[int]:
        """Every layer read, sorted."""
        return sorted({v for ls in self.pooled.values() for v in ls} | set(self.refusal_layers))

    @property
    def deepest(self) -> int:
        """The deepest layer read: the forward pass stops there."""
        if not self.layers:
            raise IhsError("a feature spec reads no layer")
        return max(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(**{k: d[k] for k in ("pooled", "refusal_layers", "ema_halflife", "pool_start", "refusal_ids",
                                        "compliance_ids") if k in d})


@dataclass
class Features:
    """Feature arrays of n prompts: ``arrays[pooling]`` (n, len(layers[pooling]), d), ``arrays["refusal"]``
    (n, len(layers["refusal"]))."""

    arrays: dict[str, np.ndarray]
    layers: dict[str, list[int]]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def has(self, kind: str, layers: Sequence[int]) -> bool:
        return kind in self.arrays and set(layers) <= set(self.layers.get(kind, []))

    def take(self, kind: str, layers: Sequence[int], rows: Any = None) -> np.ndarray:
        """``arrays[kind]`` at ``layers`` (in the order given), rows ``rows`` (default all), as float64."""
        if not self.has(kind, layers):
            have = self.layers.get(kind)
            raise IhsError(f"no {kind} features at layers {list(layers)} (have: {have if have else 'none'})")
        pos = [self.layers[kind].index(int(v)) for v in layers]
        arr = self.arrays[kind] if rows is None else self.arrays[kind][rows]
        return np.asarray(arr[:, pos], dtype=np.float64)

    def subset(self, rows: Any) -> Features:
        return Features({k: v[rows] for k, v in self.arrays.items()}, dict(self.layers))

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        first = parts[0]
        for p in parts[1:]:
            if p.layers != first.layers:
                raise IhsError("cannot join features read at different layers")
        return Features({k: np.concatenate([p.arrays[k] for p in parts]) for k in first.arrays}, dict(first.layers))


# -- pooling ------------------------------------------------------------------------------------


def ema_alpha(halflife: float) -> float:
    """The EMA's update weight for a half-life in tokens: a state ``halflife`` tokens back weighs half."""
    return 1.0 - 0.5 ** (1.0 / float(halflife))


def pool(hidden: torch.Tensor, lengths: torch.Tensor, start: int, how: str, halflife: float = 8.0) -> torch.Tensor:
    """Pool right-padded states (B, T, d) over positions ``start .. lengths[b]-1`` of each row -> (B, d) float32.

    ``start`` is clamped so that every row pools at least its last token.
    """
    if how not in POOLINGS:
        raise IhsError(f"unknown pooling {how!r}; choose from {', '.join(POOLINGS)}")
    h = hidden.float()
    batch, width = h.shape[0], h.shape[1]
    lengths = lengths.to(h.device).long()
    last = lengths - 1
    if how == "last":
        return h[torch.arange(batch, device=h.device), last]
    t = torch.arange(width, device=h.device)[None, :]
    first = torch.minimum(torch.full_like(last, int(start)), last)[:, None]
    valid = (t >= first) & (t <= last[:, None])
    if how == "mean":
        w = valid.float()
        return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    if how == "max":
        return h.masked_fill(~valid[..., None], float("-inf")).amax(1)
    alpha = ema_alpha(halflife)
    age = (last[:, None] - t).clamp_min(0).float()
    w = alpha * (1.0 - alpha) ** age
    w = torch.where(t == first, (1.0 - alpha) ** age, w) * valid.float()
    return (h * w[..., None]).sum(1)


# -- the refusal readout -------------------------------------------------------------------------


def first_token_ids(tokenizer: Any, openings: Sequence[str]) -> list[int]:
    """The first token id of each opening as the answer would begin (without special tokens), de-duplicated."""
    out: list[int] = []
    for text in openings:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids and int(ids[0]) not in out:
            out.append(int(ids[0]))
    return out


def refusal_token_ids(tokenizer: Any, refusal: Sequence[str] = REFUSAL_OPENINGS,
                      compliance: Sequence[str] = COMPLIANCE_OPENINGS) -> tuple[list[int], list[int]]:
    """First tokens of refusal and of compliance openings, with the tokens they share removed from both."""
    r, c = first_token_ids(tokenizer, refusal), first_token_ids(tokenizer, compliance)
    shared = set(r) & set(c)
    r, c = [v for v in r if v not in shared], [v for v in c if v not in shared]
    if not r or not c:
        raise IhsError("the refusal and compliance openings share all their first tokens in this tokenizer")
    return r, c


def refusal_margin(lm: Any, states: torch.Tensor, refusal_ids: Sequence[int],
                   compliance_ids: Sequence[int]) -> torch.Tensor:
    """Logit-lens refusal margin of last-token states (B, d) -> (B,) float32: final norm, the unembedding rows
    of the opening tokens, logsumexp(refusal) - logsumexp(compliance)."""
    anatomy = lm.anatomy
    weight = anatomy.unembed.weight
    normed = anatomy.final_norm(states.to(weight.device, weight.dtype))
    ids = torch.tensor([*refusal_ids, *compliance_ids], device=weight.device)
    logits = normed @ weight[ids].T
    bias = getattr(anatomy.unembed, "bias", None)
    if bias is not None:
        logits = logits + bias[ids]
    if anatomy.logit_softcap:
        logits = torch.tanh(logits / anatomy.logit_softcap) * anatomy.logit_softcap
    logits = logits.float()
    k = len(refusal_ids)
    return torch.logsumexp(logits[:, :k], dim=1) - torch.logsumexp(logits[:, k:], dim=1)


# -- the forward pass ------------------------------------------------------------------------------


def template_prefix(tokenizer: Any, chat: bool, system_prompt: str | None = None) -> int:
    """Tokens every formatted prompt opens with (BOS and the chat template up to the user's text)."""
    from ihs.formatting import format_prompt

    a = format_prompt(tokenizer, "Alpha beta gamma.", chat, system_prompt).ids
    b = format_prompt(tokenizer, "Zebra yellow xylophone?", chat, system_prompt).ids
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@torch.inference_mode()
def features_of_batch(lm: Any, batch_ids: Sequence[Sequence[int]], spec: FeatureSpec) -> dict[str, torch.Tensor]:
    """One right-padded batch through the blocks up to ``spec.deepest``: ``{kind: (B, layers, d) or (B, layers)}``."""
    from ihs.guard.early_exit import pad_right

    num_layers = lm.anatomy.num_layers
    if spec.deepest > num_layers:
        raise IhsError(f"features read layer {spec.deepest}; the model has layers 0..{num_layers}")
    input_ids, attention, last = pad_right(batch_ids, lm.tokenizer.pad_token_id or 0)
    lengths = last + 1
    got: dict[tuple[str, int], torch.Tensor] = {}

    def reader(layer: int) -> Callable[[torch.Tensor], None]:
        def read(h: torch.Tensor) -> None:
            for how, layers in spec.pooled.items():
                if layer in layers:
                    got[(how, layer)] = pool(h, lengths, spec.pool_start, how, spec.ema_halflife).cpu()
            if layer in spec.refusal_layers:
                rows = torch.arange(h.shape[0], device=h.device)
                tail = h[rows, last.to(h.device)]
                got[(REFUSAL, layer)] = refusal_margin(lm, tail, spec.refusal_ids, spec.compliance_ids).cpu()
        return read

    edits = [Edit(layer, "read", positions="all", fn=reader(layer)) for layer in spec.layers]
    device = lm.input_device
    run_with_hooks(lm, edits, stop_after=spec.deepest, input_ids=input_ids.to(device),
                   attention_mask=attention.to(device), use_cache=False)
    out = {how: torch.stack([got[(how, v)] for v in layers], dim=1) for how, layers in spec.pooled.items()}
    if spec.refusal_layers:
        out[REFUSAL] = torch.stack([got[(REFUSAL, v)] for v in spec.refusal_layers], dim=1)
    return out


def extract_features(lm: Any, ids: Sequence[Sequence[int]], spec: FeatureSpec, *, batch_size: int = 16,
                     max_batch_tokens: int = 4096, dtype: Any = np.float32,
                     progress: Callable[[int], None] | None = None) -> Features:
    """:func:`features_of_batch` over many prompts, batched by length; rows come back in input order.

    A pooled array kept in a narrow ``dtype`` (float16) is widened to float32 as soon as a value would
    overflow it (gemma-3's residual stream exceeds float16's range at a few positions).
    """
    n = len(ids)
    d = lm.hidden_size
    arrays: dict[str, np.ndarray] = {how: np.zeros((n, len(ls), d), dtype=dtype) for how, ls in spec.pooled.items()}
    if spec.refusal_layers:
        arrays[REFUSAL] = np.zeros((n, len(spec.refusal_layers)), dtype=np.float32)
    lengths = [len(x) for x in ids]
    budget = max(max_batch_tokens, max(lengths, default=1))
    for batch in plan_batches(lengths, list(range(n)), batch_size, budget):
        got = features_of_batch(lm, [ids[i] for i in batch], spec)
        for kind, value in got.items():
            v = value.numpy()
            dt = arrays[kind].dtype
            if np.issubdtype(dt, np.floating) and np.finfo(dt).max < np.finfo(np.float32).max \
                    and np.abs(v).max(initial=0.0) > np.finfo(dt).max:
                arrays[kind] = arrays[kind].astype(np.float32)  # a state beyond the narrow type's range
            arrays[kind][batch] = v.astype(arrays[kind].dtype)
        if progress:
            progress(len(batch))
    layers = {how: list(ls) for how, ls in spec.pooled.items()}
    if spec.refusal_layers:
        layers[REFUSAL] = list(spec.refusal_layers)
    return Features(arrays, layers)


def grid_layers(num_layers: int, steps: int = 10) -> list[int]:
    """About ``steps`` + 1 evenly spaced layers 0..L (both ends included): the pooled candidates of a bank."""
    step = max(1, math.ceil(num_layers / steps))
    return sorted(set(range(0, num_layers + 1, step)) | {num_layers})
