"""Gradients of a target with respect to the last token's state at many layers at once.

TCAV needs, per prompt, the gradient of the refusal margin (or any target) with respect to the last
token's residual state at each layer. A zero vector is added to that state after each wanted block
(forward hooks; a pre-hook on block 1 for layer 0) and the target is differentiated with respect to
those vectors: one forward and one backward pass per batch give every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ihs.explain.targets import check_target, embed_ids, length_batches, target_values
from ihs.explain.tokens import tokenize_prompts
from ihs.models.anatomy import block_output, replace_block_output
from ihs.progress import progress_bar


def state_gradients(lm: Any, prompts: Sequence[Any], target: Any, layers: Sequence[int], *,
                    batch_size: int = 16, max_batch_tokens: int = 4096, chat: bool | None = None,
                    system_prompt: str | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, len(layers), d) gradients of ``target`` with respect to the last token's state at each layer,
    and the target values (N,). Layers above the target's own layer get zero gradients.

    A zero vector is added to the last position's state at each layer (hooks on the blocks) and
    differentiated: one forward and one backward pass per batch give every layer at once.
    """
    check_target(lm, target)
    pts = tokenize_prompts(lm, prompts, chat=chat, system_prompt=system_prompt)
    wanted = [layer for layer in layers if layer <= target.layer]
    grads = np.zeros((len(pts), len(layers), lm.hidden_size), dtype=np.float64)
    values = np.zeros(len(pts), dtype=np.float64)
    pos = {layer: j for j, layer in enumerate(layers)}
    batches = length_batches([len(p) for p in pts], batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    with torch.enable_grad(), progress_bar("gradients", total=len(pts), enabled=progress) as advance:
        for batch in batches:
            got, out = _batch_state_gradients(lm, target, [list(pts[i].ids) for i in batch], wanted)
            for layer, g in zip(wanted, got, strict=True):
                grads[batch, pos[layer]] = g
            values[batch] = out
            advance(len(batch))
    return grads, values


def _batch_state_gradients(lm: Any, target: Any, ids: list[list[int]],
                           wanted: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """One right-padded batch: a zero vector added at the last position after each wanted layer, then
    the target differentiated with respect to those vectors."""
    blocks = lm.anatomy.blocks
    with torch.no_grad():
        embeds = embed_ids(lm, ids).detach()
    n, width = embeds.shape[0], embeds.shape[1]
    last = torch.tensor([len(x) - 1 for x in ids])
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, x in enumerate(ids):
        mask[r, : len(x)] = 1
    onehot = torch.zeros((n, width, 1), dtype=embeds.dtype, device=embeds.device)
    onehot[torch.arange(n), last.to(embeds.device)] = 1
    deltas = {layer: torch.zeros((n, embeds.shape[-1]), dtype=embeds.dtype, device=embeds.device,
                                 requires_grad=True) for layer in wanted}

    def add(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        d = deltas[layer].to(hidden.device, hidden.dtype)
        return hidden + onehot.to(hidden.device) * d[:, None, :]

    def pre(module, args, kwargs):
        if args:
            return (add(args[0], 0), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": add(kwargs["hidden_states"], 0)}

    def make_post(layer: int):
        def post(module, args, output):
            return replace_block_output(output, add(block_output(output), layer))

        return post

    handles = []
    try:
        for layer in wanted:
            if layer == 0:
                handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
            else:
                handles.append(blocks[layer - 1].register_forward_hook(make_post(layer)))
        out = target_values(lm, target, embeds, mask, last)
    finally:
        for h in handles:
            h.remove()
    got = torch.autograd.grad(out.sum(), [deltas[layer] for layer in wanted]) if wanted else []
    return [g.double().cpu().numpy() for g in got], out.detach().double().cpu().numpy()
