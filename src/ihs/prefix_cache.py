"""Compute a prompt set's shared opening once and reuse its keys and values in every batch.

A chat template puts the same tokens in front of every prompt (SmolLM2's
system prompt is 24 of a paper prompt's 41 tokens on average). Attention is
causal, so the states of those tokens do not depend on what follows: running
them once and handing their key/value cache to every batch gives the same last-
position states, up to float rounding of differently shaped matmuls, for a
fraction of the work. The suffix is what is run per batch; the last real token
is always in it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ihs.models.loading import LoadedModel

# Below this many shared tokens the saving does not pay for the cache copies.
MIN_PREFIX_TOKENS = 8


def shared_prefix_length(sequences: Sequence[Sequence[int]], minimum: int = MIN_PREFIX_TOKENS) -> int:
    """Length of the token prefix common to all sequences, leaving at least one token each; 0 if short."""
    if not sequences:
        return 0
    first = sequences[0]
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n if n >= minimum else 0


def cache_keyword(backbone: torch.nn.Module) -> str:
    """The keyword the backbone takes its cache under: transformers 5 renamed ``past_key_values``
    to ``cache`` and warns about (later drops) the old name."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The key/value cache of a forward pass, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@dataclass
class SharedPrefix:
    """Key/value cache of ``ids`` run once through the backbone."""

    ids: list[int]
    cache: Any
    keyword: str = "past_key_values"  # how the backbone takes it (cache_keyword)

    @property
    def length(self) -> int:
        return len(self.ids)

    @classmethod
    @torch.inference_mode()
    def build(cls, lm: LoadedModel, ids: Sequence[int]) -> SharedPrefix:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=lm.input_device)
        out = lm.anatomy.backbone(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True)
        cache = returned_cache(out)
        if cache is None:
            raise RuntimeError("the backbone returned no key/value cache")
        return cls(list(ids), cache, cache_keyword(lm.anatomy.backbone))

    def for_batch(self, batch_size: int) -> Any:
        """A private copy of the cache repeated for ``batch_size`` rows (the forward pass appends to it)."""
        cache = copy.deepcopy(self.cache)
        if batch_size > 1:
            cache.batch_repeat_interleave(batch_size)
        return cache

    def batch_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The backbone keyword argument carrying a private copy for ``batch_size`` rows."""
        return {self.keyword: self.for_batch(batch_size)}

    def matches(self, ids: Sequence[int]) -> bool:
        return len(ids) > self.length and list(ids[: self.length]) == self.ids


def build_shared_prefix(lm: LoadedModel, prefix_ids: Sequence[int]) -> SharedPrefix | None:
    """The cache of ``prefix_ids``, or None when there is nothing to cache or the model cannot
    take a cache (then the plain path is used)."""
    if not prefix_ids:
        return None
    try:
        return SharedPrefix.build(lm, list(prefix_ids))
    except (RuntimeError, TypeError, ValueError, AttributeError, NotImplementedError):
        return None
