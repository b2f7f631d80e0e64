"""Where the last token looks: its attention over the prompt, per layer and head.

The decision ihs reads (probe, lens, refusal) sits in the last token's state, and attention is how
that position gathers the prompt. For each prompt this keeps the last real token's attention
weights over all positions, per block and head (``weights``: (L, H, T); row ``l - 1`` is block ``l``,
the block that produces layer index ``l``), computed with eager attention (the model is switched to
it for the call and back afterwards), and summarises them per layer:

- ``span_share``: the attention mass on a *marked span* (character offsets in the prompt, e.g. the
  harmful goal inside a jailbreak template; see :func:`ihs.explain.tokens.find_span`), averaged over
  heads, next to ``span_fraction`` (the span's share of positions: what uniform attention would give);
- ``user_share``: mass on the user's tokens (the rest is on the chat template);
- ``first_token_share``: mass on position 0 (the usual attention sink);
- ``entropy``: the attention distribution's entropy in nats, averaged over heads (``log T`` is uniform);
- ``top_heads``: per layer, the heads that put most mass on the span.

Batches are right-padded: the last real token never attends to the padding after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ihs.errors import IhsError
from ihs.explain.targets import length_batches
from ihs.explain.tokens import PromptTokens, tokenize_prompts
from ihs.io import write_json
from ihs.progress import progress_bar


@dataclass(frozen=True)
class AttentionOptions:
    """``top_heads``: heads listed per layer; batching and formatting as in attribution."""

    top_heads: int = 3
    batch_size: int = 8
    max_batch_tokens: int = 4096
    chat: bool | None = None
    system_prompt: str | None = None
    progress: bool = True


@contextmanager
def eager_attention(lm: Any) -> Iterator[None]:
    """Switch ``lm`` to eager attention (which can return its weights) for the duration of the block."""
    config = lm.model.config
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(lm.model, "set_attn_implementation")
    if switch:
        lm.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            lm.model.set_attn_implementation(previous)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


@dataclass
class PromptAttention:
    """One prompt's last-token attention: ``weights`` (L, H, T) and the token masks it is summarised with."""

    prompt: str
    tokens: list[str]
    user: list[bool]
    span: list[bool] | None
    weights: np.ndarray

    def summary(self, top_heads: int = 3) -> dict[str, Any]:
        """Per-layer shares, entropy and the heads that read the span most (JSON-ready)."""
        w = np.asarray(self.weights, dtype=np.float64)
        n_layers, n_heads, n_tok = w.shape
        user = np.asarray(self.user, dtype=bool)
        out: dict[str, Any] = {
            "layers": list(range(1, n_layers + 1)),
            "n_tokens": n_tok,
            "user_share": w[:, :, user].sum(-1).mean(-1).tolist(),
            "first_token_share": w[:, :, 0].mean(-1).tolist(),
            "entropy": entropy(w).mean(-1).tolist(),
            "uniform_entropy": float(np.log(n_tok)),
            "span_share": None, "span_share_by_head": None, "span_fraction": None, "top_heads": None,
        }
        if self.span is not None and any(self.span):
            span = np.asarray(self.span, dtype=bool)
            by_head = w[:, :, span].sum(-1)  # (L, H)
            k = min(max(top_heads, 0), n_heads)
            order = np.argsort(-by_head, axis=1, kind="stable")[:, :k]
            out.update({
                "span_share": by_head.mean(-1).tolist(),
                "span_share_by_head": by_head.tolist(),
                "span_fraction": float(span.mean()),
                "top_heads": [[{"head": int(h), "span_share": float(by_head[li, h])} for h in order[li]]
                              for li in range(n_layers)],
            })
        return out


@dataclass
class AttentionResult:
    """Last-token attention for a list of prompts, with per-prompt and aggregate summaries."""

    items: list[PromptAttention]
    num_layers: int
    num_heads: int
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def aggregate(self, top_heads: int | None = None) -> dict[str, Any]:
        """Means over prompts per layer; span figures over the prompts that have a marked span, and the
        (layer, head) pairs with the highest mean span share."""
        k = self.options.get("top_heads", 3) if top_heads is None else top_heads
        sums = [it.summary(k) for it in self.items]
        out: dict[str, Any] = {"layers": list(range(1, self.num_layers + 1)), "prompts": len(sums)}
        for key in ("user_share", "first_token_share", "entropy"):
            out[key] = np.mean([s[key] for s in sums], axis=0).tolist() if sums else None
        with_span = [s for s in sums if s["span_share"] is not None]
        out["prompts_with_span"] = len(with_span)
        if with_span:
            share = np.mean([s["span_share"] for s in with_span], axis=0)
            fraction = float(np.mean([s["span_fraction"] for s in with_span]))
            by_head = np.mean([s["span_share_by_head"] for s in with_span], axis=0)
            flat = np.argsort(-by_head, axis=None, kind="stable")[: max(k, 0)]
            out.update({
                "span_share": share.tolist(), "span_fraction": fraction,
                "span_lift": (share / fraction).tolist() if fraction > 0 else None,
                "top_heads": [{"layer": int(i // self.num_heads) + 1, "head": int(i % self.num_heads),
                               "span_share": float(by_head.flat[i])} for i in flat],
            })
        return out

    def to_dict(self, *, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready: aggregate and per-prompt summaries (and the raw weights with ``arrays=True``)."""
        k = self.options.get("top_heads", 3)
        items = []
        for it in self.items:
            row = {"prompt": it.prompt, "tokens": it.tokens, "user": it.user, "span": it.span,
                   "summary": it.summary(k)}
            if arrays:
                row["weights"] = it.weights.tolist()
            items.append(row)
        return {"format": "ihs-explain-attention", "layer_convention": "row l-1 = block l (produces layer l)",
                "num_layers": self.num_layers, "num_heads": self.num_heads, "model": self.model,
                "options": self.options, "seconds": self.seconds, "aggregate": self.aggregate(), "items": items}

    def save(self, path: str | Path) -> Path:
        """Write the summaries as JSON at ``path`` and the weights beside it (``<stem>.npz``, one array per prompt)."""
        path = Path(path)
        write_json(path, self.to_dict())
        np.savez_compressed(path.with_suffix(".npz"),
                            **{f"prompt_{i}": it.weights.astype(np.float32) for i, it in enumerate(self.items)})
        return path


def _as_span_list(spans: Any) -> list[tuple[int, int]] | None:
    if spans is None:
        return None
    if len(spans) == 2 and all(isinstance(v, int | np.integer) for v in spans):
        return [(int(spans[0]), int(spans[1]))]
    return [tuple(s) for s in spans]


@torch.no_grad()
def attention_for_tokens(lm: Any, pts: Sequence[PromptTokens], *, spans: Sequence[Any] | None = None,
                         options: AttentionOptions | None = None) -> AttentionResult:
    """Last-token attention for tokenized prompts (see :func:`last_token_attention`)."""
    options = options or AttentionOptions()
    if spans is not None and len(spans) != len(pts):
        raise IhsError(f"got {len(spans)} marked spans for {len(pts)} prompts; give one (or None) per prompt")
    started = time.perf_counter()
    items: list[PromptAttention | None] = [None] * len(pts)
    pad = lm.tokenizer.pad_token_id or 0
    device = lm.input_device
    groups = length_batches([len(p) for p in pts], batch_size=options.batch_size,
                            max_batch_tokens=options.max_batch_tokens)
    with eager_attention(lm), progress_bar("attention", total=len(pts), enabled=options.progress) as advance:
        for group in groups:
            width = max(len(pts[i]) for i in group)
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, : len(pts[i])] = torch.tensor(pts[i].ids)
                mask[row, : len(pts[i])] = 1
            out = lm.anatomy.backbone(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      output_attentions=True, use_cache=False)
            attentions = getattr(out, "attentions", None)
            if not attentions or any(a is None for a in attentions):
                raise IhsError(f"{type(lm.model).__name__} returned no attention weights even with eager attention")
            for row, i in enumerate(group):
                n = len(pts[i])
                w = torch.stack([a[row, :, n - 1, :n].float().cpu() for a in attentions]).numpy()
                span = _as_span_list(spans[i]) if spans is not None else None
                items[i] = PromptAttention(prompt=pts[i].prompt, tokens=list(pts[i].tokens), user=list(pts[i].user),
                                           span=pts[i].char_mask(span) if span is not None else None, weights=w)
            advance(len(group))
    done = [it for it in items if it is not None]
    heads = int(done[0].weights.shape[1]) if done else 0
    return AttentionResult(items=done, num_layers=lm.num_layers, num_heads=heads,
                           model={"name": getattr(lm, "name", "unknown")}, options=asdict(options),
                           seconds=time.perf_counter() - started)


def last_token_attention(lm: Any, prompts: Sequence[Any], *, spans: Sequence[Any] | None = None,
                         options: AttentionOptions | None = None) -> AttentionResult:
    """The last token's attention over each prompt, per layer and head, with per-layer summaries.

    ``spans``: one entry per prompt, ``None`` or (start, end) character offsets in the prompt text (or a
    list of such pairs) marking the part to measure attention on.
    """
    options = options or AttentionOptions()
    if not prompts:
        raise IhsError("no prompts to explain")
    pts = tokenize_prompts(lm, prompts, chat=options.chat, system_prompt=options.system_prompt)
    return attention_for_tokens(lm, pts, spans=spans, options=options)
