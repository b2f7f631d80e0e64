"""Intervention engine: read, replace, add (steer) or ablate residual states at chosen layers.

One context manager attaches forward hooks to the decoder blocks named by the
model's anatomy and removes every one of them on exit, also after an error, so a
failed experiment never leaves a model silently modified. Nothing in the
library's source is patched, so it works on every family the anatomy table
knows (llama, qwen2, gemma3, gpt2, mistral, ...).

Layers follow the store convention: layer 0 is the embedding output (the input
of block 1, edited by a pre-hook on block 1) and layer i the output of decoder
block i. Positions are column indices of the batch being run; ``"last"`` means
the last column, which is the last real token of every row under left padding
(the padding :func:`ihs.generation.generate` uses), or a per-row index given by
``Intervention.last_index`` for right-padded batches.

Timing: an edit with ``when="prompt"`` acts only on the first forward pass after
entering the context (or after :meth:`Intervention.new_pass`): the pass that
reads the prompt during generation. ``when="all"`` acts on every pass; in
cached generation each later pass holds one new token, so ``"last"`` then means
the token being generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ihs.errors import IhsError
from ihs.models.anatomy import block_output, replace_block_output

Op = Literal["read", "replace", "add", "ablate"]
When = Literal["prompt", "all"]
Positions = Literal["last", "all"] | int | Sequence[int]


@dataclass
class Edit:
    """One operation on the residual stream at one layer.

    ``value`` is a vector of size d, or (B, d) with one row per batch row: the
    new state for ``replace``, the steering vector for ``add`` (times
    ``scale``), the direction to project out for ``ablate``; ``read`` needs none.
    """

    layer: int
    op: Op
    value: torch.Tensor | None = None
    positions: Positions = "last"
    when: When = "prompt"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.op not in ("read", "replace", "add", "ablate"):
            raise IhsError(f"unknown intervention op '{self.op}'; choose read, replace, add or ablate")
        if self.when not in ("prompt", "all"):
            raise IhsError(f"unknown intervention timing '{self.when}'; choose prompt or all")
        if self.op != "read" and self.value is None:
            raise IhsError(f"intervention op '{self.op}' at layer {self.layer} needs a value")


@dataclass
class Intervention:
    """Context manager applying ``edits`` to ``lm`` while active; hooks always come off on exit.

    ``reads[layer]`` collects, for every ``read`` edit, one tensor per forward
    pass of the selected positions (detached, on CPU).
    """

    lm: Any
    edits: Sequence[Edit]
    last_index: torch.Tensor | None = None
    reads: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    step: int = -1
    _handles: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.lm.anatomy.num_layers
        for edit in self.edits:
            if not 0 <= edit.layer <= n:
                raise IhsError(f"layer {edit.layer} is outside 0..{n} (0 = embedding output, i = output of block i)")

    # -- lifecycle -----------------------------------------------------------------------
    def new_pass(self) -> None:
        """Make the next forward pass count as a prompt pass again (e.g. a new generate call)."""
        self.step = -1

    def __enter__(self) -> Intervention:
        blocks = self.lm.anatomy.blocks
        by_layer: dict[int, list[Edit]] = {}
        for edit in self.edits:
            by_layer.setdefault(edit.layer, []).append(edit)
        try:
            # Counts forward passes: the first call after entry/new_pass is the prompt pass.
            self._handles.append(self.lm.anatomy.backbone.register_forward_pre_hook(self._count))
            for layer, edits in sorted(by_layer.items()):
                if layer == 0:
                    self._handles.append(
                        blocks[0].register_forward_pre_hook(self._make_pre_hook(edits), with_kwargs=True))
                else:
                    self._handles.append(blocks[layer - 1].register_forward_hook(self._make_hook(edits)))
        except BaseException:
            self.remove()
            raise
        self.step = -1
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- hooks ---------------------------------------------------------------------------
    def _count(self, module: Any, args: Any) -> None:
        self.step += 1

    def _make_hook(self, edits: list[Edit]):
        def hook(module, args, output):
            hidden = block_output(output)
            new = self._apply(hidden, edits)
            return None if new is hidden else replace_block_output(output, new)

        return hook

    def _make_pre_hook(self, edits: list[Edit]):
        def pre_hook(module, args, kwargs):
            if args:
                new = self._apply(args[0], edits)
                return None if new is args[0] else ((new, *args[1:]), kwargs)
            new = self._apply(kwargs["hidden_states"], edits)
            return None if new is kwargs["hidden_states"] else (args, {**kwargs, "hidden_states": new})

        return pre_hook

    def _index(self, hidden: torch.Tensor, positions: Positions) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, cols) to edit, or None for every position."""
        batch, seq = hidden.shape[0], hidden.shape[1]
        rows = torch.arange(batch, device=hidden.device)
        if positions == "all":
            return None
        if positions == "last":
            if self.last_index is not None and self.step == 0:
                return rows, self.last_index.to(hidden.device)
            return rows, torch.full((batch,), seq - 1, device=hidden.device)
        cols = [positions] if isinstance(positions, int) else list(positions)
        cols = [c + seq if c < 0 else c for c in cols]
        if any(not 0 <= c < seq for c in cols):
            raise IhsError(f"intervention position outside the sequence of length {seq}: {positions}")
        rows_all = rows.repeat_interleave(len(cols))
        return rows_all, torch.tensor(cols, device=hidden.device).repeat(batch)

    def _apply(self, hidden: torch.Tensor, edits: list[Edit]) -> torch.Tensor:
        out = hidden
        for edit in edits:
            if edit.when == "prompt" and self.step != 0:
                continue
            if edit.positions not in ("last", "all") and self.step != 0:
                continue  # explicit column indices refer to the prompt
            index = self._index(out, edit.positions)
            if edit.op == "read":
                picked = out if index is None else out[index[0], index[1]]
                self.reads.setdefault(edit.layer, []).append(picked.detach().to("cpu", copy=True))
                continue
            if out is hidden:
                out = hidden.clone()
            out = _edit(out, edit, index)
        return out


def _edit(hidden: torch.Tensor, edit: Edit, index: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Apply one write op in place on ``hidden`` (already a clone) and return it."""
    value = edit.value.to(device=hidden.device, dtype=hidden.dtype)
    if index is None:
        target = hidden
        if value.ndim == 2:  # one vector per row, broadcast over positions
            value = value[:, None, :]
    else:
        rows, cols = index
        target = hidden[rows, cols]
        if value.ndim == 2:
            per_row = value.shape[0]
            if per_row != hidden.shape[0]:
                raise IhsError(f"edit value has {per_row} rows for a batch of {hidden.shape[0]}")
            value = value[rows]
    if edit.op == "replace":
        new = value.expand_as(target)
    elif edit.op == "add":
        new = target + edit.scale * value
    else:  # ablate: remove the component along the (normalised) direction
        unit = value / value.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        new = target - edit.scale * (target * unit).sum(-1, keepdim=True) * unit
    if index is None:
        hidden.copy_(new.expand_as(hidden))
    else:
        hidden[index[0], index[1]] = new
    return hidden


def active_hooks(lm: Any) -> int:
    """Number of forward hooks and pre-hooks currently on the model's blocks and backbone (tests, sanity)."""
    modules = [lm.anatomy.backbone, *lm.anatomy.blocks]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)
