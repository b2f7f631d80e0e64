"""Run a causal LM only up to one layer boundary and read the last real token's state there.

The hook engine (:mod:`ihs.hooks`) records the last-position states at layer index ``l`` and
stops the forward pass there (``stop_after``), so blocks after ``l``, the final norm and the
unembedding never run; its hooks come off whatever happens. The index convention is the
store's (``ihs.store``): index 0 = embedding output, index l = output of decoder block l.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ihs.batching import plan_batches
from ihs.hooks import Edit, run_with_hooks


def pad_right(batch_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, last_index) of a right-padded batch."""
    lengths = torch.tensor([len(ids) for ids in batch_ids])
    if (lengths == 0).any():
        raise ValueError("an empty token sequence cannot be scored")
    width = int(lengths.max())
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, : len(ids)] = 1
    return input_ids, attention, lengths - 1


@torch.inference_mode()
def states_at_layer(lm: Any, batch_ids: Sequence[Sequence[int]], layer: int) -> torch.Tensor:
    """Last-position states (B, d) at layer index ``layer``, stopping the forward pass there."""
    num_layers = lm.anatomy.num_layers
    if not 0 <= layer <= num_layers:
        raise ValueError(f"layer {layer} out of range 0..{num_layers}")
    input_ids, attention, last = pad_right(batch_ids, lm.tokenizer.pad_token_id or 0)
    device = lm.input_device
    _, hooks = run_with_hooks(lm, [Edit(layer, "record")], last_index=last, stop_after=layer,
                              input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False)
    if layer not in hooks.recorded:  # pragma: no cover - a backbone that skipped its blocks
        raise RuntimeError(f"the forward pass never reached layer {layer}")
    return hooks.recorded[layer].to("cpu")


def states_at_layer_batched(lm: Any, ids: Sequence[Sequence[int]], layer: int, batch_size: int = 32,
                            max_batch_tokens: int = 4096,
                            progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``states_at_layer`` over many prompts, batched by length; rows come back in input order."""
    lengths = [len(x) for x in ids]
    out = np.zeros((len(ids), lm.hidden_size), dtype=np.float32)
    for batch in plan_batches(lengths, list(range(len(ids))), batch_size, max(max_batch_tokens, max(lengths, default=1))):
        h = states_at_layer(lm, [ids[i] for i in batch], layer)
        out[batch] = h.float().numpy()
        if progress:
            progress(len(batch))
    return out
