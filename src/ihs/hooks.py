"""The one hook engine: record, read, replace, add or ablate residual states of a causal LM, or stop early.

Hook points. A model with L decoder blocks has L+1 points, named by the store's layer convention:

    ``"embed"``     layer 0, the embedding output (the input of the first block; a pre-hook on it)
    ``"blocks.i"``  layer i, 1 <= i <= L, the output of decoder block i (a forward hook on it)

A layer index (0..L) works wherever a name does. The blocks are those :mod:`ihs.models.anatomy`
finds for the model's family; a block may return a tensor or a tuple (only the hidden state is
read or replaced). Nothing in transformers is patched.

Operations, one :class:`Edit` each, applied at their point in the order given:

    ``record``   keep the selected states in ``hooks.recorded[layer]`` (on their device; the latest pass
                 it acts on wins); ``hooks.stacked()`` puts them side by side in layer order
    ``read``     append a CPU copy to ``hooks.reads[layer]``, one per pass it acts on, or call ``fn`` with them
    ``replace``  set them to ``value``
    ``add``      add ``scale * value`` (steering)
    ``ablate``   ``how="zero"``: set them to 0; ``how="mean"``: to their mean over the batch's rows
                 (position by position; over all of them for a mask), or to ``value`` when one is
                 given (a mean taken elsewhere);
                 ``how="direction"`` (the default when ``value`` is given): remove ``scale`` times
                 their component along ``value``

and ``stop_after=l`` ends the forward pass once point l is done, so only blocks 1..l run (early exit).

Where. ``positions`` selects columns: ``"last"`` (default) is each row's last real token:
``last_index[row]`` on the prompt pass when given (right padding), else the last column (left padding,
and every cached generation step after the prompt); ``"all"``; a column index or a list of them
(negative counts from the end); or a (B, T) boolean mask. ``rows`` restricts an edit to some batch
rows (indices, or a function returning them, called when the edit applies). A ``value`` is a vector of
size d or (B, d), one row per batch row.

When. The pass counter restarts on entry and at :meth:`Hooks.new_pass`: an edit with ``when="prompt"``
(default) acts only on the first forward pass (the prompt pass of a ``generate`` call), ``"all"`` on
every pass. Column indices and masks refer to the prompt, so they act on the prompt pass only.

Every hook comes off on exit from the context, also after an exception.

Example (a tiny random Llama; left padding, so "last" is the last column)::

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from ihs.hooks import Edit, Hooks, run_with_hooks
    >>> from ihs.models.anatomy import resolve_anatomy
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).eval()
    >>> anatomy = resolve_anatomy(model)
    >>> ids = torch.tensor([[0, 5, 6, 7], [4, 5, 6, 7]])
    >>> mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    >>> with Hooks(anatomy, [Edit(layer, "record") for layer in ("embed", "blocks.1", "blocks.2")]) as h:
    ...     _ = model(input_ids=ids, attention_mask=mask)
    >>> h.stacked().shape  # the last token's state at layers 0..2
    torch.Size([2, 3, 16])
    >>> steer = Edit("blocks.1", "add", torch.ones(16), positions="all", when="all", scale=2.0)
    >>> with Hooks(anatomy, [steer]):  # steering every token generated
    ...     _ = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    >>> _, early = run_with_hooks(anatomy, [Edit(1, "record")], stop_after=1, input_ids=ids, attention_mask=mask)
    >>> torch.equal(early.recorded[1], h.recorded[1])  # blocks after 1, norm and head never ran
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ihs.errors import IhsError
from ihs.models.anatomy import block_output, replace_block_output

Op = Literal["record", "read", "replace", "add", "ablate"]
When = Literal["prompt", "all"]
Positions = Literal["last", "all"] | int | Sequence[int] | torch.Tensor
Rows = Sequence[int] | torch.Tensor | Callable[[], Any] | None
OPS = ("record", "read", "replace", "add", "ablate")
ABLATIONS = ("direction", "zero", "mean")


def hook_name(layer: int) -> str:
    """The name of layer index ``layer``: ``"embed"`` for 0, ``"blocks.i"`` for i."""
    return "embed" if layer == 0 else f"blocks.{layer}"


def hook_names(lm: Any) -> list[str]:
    """Every hook point of a model (a LoadedModel or an Anatomy), in layer order 0..L."""
    return [hook_name(layer) for layer in range(_anatomy(lm).num_layers + 1)]


def layer_index(point: int | str, num_layers: int) -> int:
    """The layer index (0..L) of a hook point given by name or index; anything else is an IhsError."""
    if isinstance(point, str):
        name = point.strip()
        if name == "embed":
            return 0
        number = name.removeprefix("blocks.")
        if name == number or not number.isdigit() or int(number) == 0:
            hint = " (layer 0 is 'embed')" if number == "0" else ""
            raise IhsError(f"unknown hook point '{point}'{hint}; use 'embed' or 'blocks.i' with i in 1..{num_layers}")
        point = int(number)
    layer = int(point)
    if not 0 <= layer <= num_layers:
        raise IhsError(f"layer {layer} is outside 0..{num_layers} (0 = embedding output, i = output of block i)")
    return layer


@dataclass
class Edit:
    """One operation at one hook point (see the module's docstring for every field)."""

    layer: int | str
    op: Op
    value: torch.Tensor | None = None
    positions: Positions = "last"
    when: When = "prompt"
    scale: float = 1.0
    rows: Rows = None
    how: Literal["direction", "zero", "mean"] | None = None  # ablate only
    fn: Callable[[torch.Tensor], Any] | None = None  # read only: called with the states instead of keeping them

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise IhsError(f"unknown hook op '{self.op}'; choose {', '.join(OPS)}")
        if self.when not in ("prompt", "all"):
            raise IhsError(f"unknown hook timing '{self.when}'; choose prompt or all")
        if self.op == "ablate" and self.how is None and self.value is not None:
            self.how = "direction"
        if self.op == "ablate" and self.how not in ABLATIONS:
            raise IhsError(f"ablate at layer {self.layer} needs a value (a direction) or how='zero' or 'mean'")
        if self.op != "ablate" and self.how is not None:
            raise IhsError(f"how='{self.how}' is for op 'ablate', not '{self.op}'")
        if self.value is None and (self.op in ("replace", "add") or self.how == "direction"):
            raise IhsError(f"hook op '{self.op}' at layer {self.layer} needs a value")
        if self.fn is not None and self.op != "read":
            raise IhsError("fn is for op 'read' only")


class _StopForward(Exception):
    """Raised by the hook of the ``stop_after`` point; caught by :meth:`Hooks.run` and on exit."""


class Hooks:
    """Context manager applying ``edits`` to a model (a LoadedModel or an Anatomy) while active.

    ``recorded[layer]`` holds each ``record`` edit's states of the latest matching pass, ``reads[layer]``
    one CPU tensor per pass and ``read`` edit, ``step`` the index of the current forward pass. With
    ``stop_after``, call the model through :meth:`run` (or :func:`run_with_hooks`); a model called
    directly in the with-block ends the block at the stop.
    """

    def __init__(self, lm: Any, edits: Sequence[Edit], *, last_index: torch.Tensor | None = None,
                 stop_after: int | str | None = None) -> None:
        self.anatomy = _anatomy(lm)
        n = self.anatomy.num_layers
        self.edits = list(edits)
        self.by_layer: dict[int, list[Edit]] = {}
        for edit in self.edits:
            self.by_layer.setdefault(layer_index(edit.layer, n), []).append(edit)
        self.stop_after = None if stop_after is None else layer_index(stop_after, n)
        self.last_index = last_index
        self.recorded: dict[int, torch.Tensor] = {}
        self.reads: dict[int, list[torch.Tensor]] = {}
        self.step = -1
        self._last: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Hooks:
        blocks = self.anatomy.blocks
        points = sorted(set(self.by_layer) | ({self.stop_after} - {None}))
        try:
            self._handles.append(self.anatomy.backbone.register_forward_pre_hook(self._count))
            for layer in points:
                if layer == 0:
                    self._handles.append(blocks[0].register_forward_pre_hook(self._embed_hook, with_kwargs=True))
                else:
                    self._handles.append(blocks[layer - 1].register_forward_hook(self._block_hook(layer)))
        except BaseException:
            self.remove()
            raise
        self.new_pass()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.remove()
        return self._stopped(exc)  # the pass ended where it was asked to: the with-block ends with it

    def remove(self) -> None:
        """Take every hook off (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def new_pass(self) -> None:
        """Make the next forward pass count as a prompt pass again (e.g. a new generate call)."""
        self.step = -1
        self._last.clear()

    def run(self, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``forward(*args, **kwargs)`` under the active hooks; None when ``stop_after`` ended it early."""
        try:
            return forward(*args, **kwargs)
        except _StopForward as exc:
            if not self._stopped(exc):
                raise
            return None

    def _stopped(self, exc: BaseException | None) -> bool:
        return isinstance(exc, _StopForward) and exc.args[0] is self

    def stacked(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Recorded states in layer order, stacked on one device: (B, n_recorded, d) for ``"last"``."""
        return torch.stack([self.recorded[layer].to(device) for layer in sorted(self.recorded)], dim=1)

    # -- hooks ---------------------------------------------------------------------------
    def _count(self, module: Any, args: Any) -> None:
        self.step += 1
        self._last.clear()

    def _embed_hook(self, module: Any, args: tuple, kwargs: dict) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        new = self._apply(0, hidden)
        if self.stop_after == 0:
            raise _StopForward(self)
        if new is hidden:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    def _block_hook(self, layer: int) -> Callable[..., Any]:
        def hook(module: Any, args: Any, output: Any) -> Any:
            hidden = block_output(output)
            new = self._apply(layer, hidden)
            if layer == self.stop_after:
                raise _StopForward(self)
            return None if new is hidden else replace_block_output(output, new)

        hook.engine = self  # type: ignore[attr-defined]  # how active_hooks tells the engine's hooks apart
        return hook

    # -- selection and edits -------------------------------------------------------------
    def last_positions(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) of every row's last real token in this pass, on ``hidden``'s device."""
        found = self._last.get(hidden.device)
        if found is None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            if self.last_index is not None and self.step == 0:
                cols = self.last_index.to(hidden.device)
            else:
                cols = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
            found = self._last[hidden.device] = (rows, cols)
        return found

    def _select(self, hidden: torch.Tensor, edit: Edit) -> tuple[Any, int | None]:
        """An index into ``hidden`` for the states ``edit`` acts on, and how many of them each row has
        (None: all positions, or a mask's varying count)."""
        batch, seq, device = hidden.shape[0], hidden.shape[1], hidden.device
        positions = edit.positions
        if isinstance(positions, str) and positions == "all":
            index: Any = slice(None)
            per_row = None
        elif isinstance(positions, str) and positions == "last":
            index, per_row = self.last_positions(hidden), 1
        elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
            if tuple(positions.shape) != (batch, seq):
                raise IhsError(f"a position mask of shape {tuple(positions.shape)} for a batch of {(batch, seq)}")
            index, per_row = positions.to(device).nonzero(as_tuple=True), None
        elif isinstance(positions, str):
            raise IhsError(f"unknown positions '{positions}'; use last, all, column indices or a mask")
        else:
            cols = [int(positions)] if isinstance(positions, int) else [int(c) for c in positions]
            cols = [c + seq if c < 0 else c for c in cols]
            if any(not 0 <= c < seq for c in cols):
                raise IhsError(f"hook position outside the sequence of length {seq}: {positions}")
            index = (torch.arange(batch, device=device).repeat_interleave(len(cols)),
                     torch.tensor(cols, device=device).repeat(batch))
            per_row = len(cols)
        if edit.rows is None:
            return index, per_row
        rows = torch.as_tensor(edit.rows() if callable(edit.rows) else edit.rows, dtype=torch.long).to(device)
        if isinstance(index, slice):
            return rows, None
        keep = torch.isin(index[0], rows)
        return (index[0][keep], index[1][keep]), per_row

    def _apply(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Run the edits of ``layer`` on ``hidden``; a changed clone, or ``hidden`` itself if none wrote."""
        out = hidden
        for edit in self.by_layer.get(layer, ()):
            prompt_only = edit.when == "prompt" or not isinstance(edit.positions, str)
            if prompt_only and self.step != 0:
                continue
            index, per_row = self._select(out, edit)
            if edit.op in ("record", "read"):
                picked = out[index].detach()
                if edit.op == "read":
                    if edit.fn is not None:
                        edit.fn(picked)
                    else:
                        self.reads.setdefault(layer, []).append(picked.to("cpu", copy=True))
                else:
                    self.recorded[layer] = picked.clone() if isinstance(index, slice) else picked
                continue
            if _empty(index):
                continue
            if out is hidden:
                out = hidden.clone()
            out[index] = _new_states(out, edit, index, per_row)
        return out


def _anatomy(lm: Any) -> Any:
    return getattr(lm, "anatomy", lm)


def _empty(index: Any) -> bool:
    first = index[0] if isinstance(index, tuple) else index
    return isinstance(first, torch.Tensor) and first.numel() == 0


def _new_states(hidden: torch.Tensor, edit: Edit, index: Any, per_row: int | None) -> torch.Tensor:
    """What the selected states ``hidden[index]`` become under a write op."""
    target = hidden[index]
    value = None
    if edit.value is not None:
        value = edit.value.to(device=hidden.device, dtype=hidden.dtype)
        if value.ndim == 2:  # one vector per batch row
            if value.shape[0] != hidden.shape[0]:
                raise IhsError(f"edit value has {value.shape[0]} rows for a batch of {hidden.shape[0]}")
            if isinstance(index, tuple):
                value = value[index[0]]
            else:  # every position of the selected rows
                value = value[index][:, None, :]
    if edit.op == "replace":
        return value.expand_as(target)
    if edit.op == "add":
        return target + edit.scale * value
    if edit.how == "direction":  # remove the component along the (normalised) direction
        unit = value / value.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return target - edit.scale * (target * unit).sum(-1, keepdim=True) * unit
    if edit.how == "zero":
        return torch.zeros_like(target)
    if value is not None:  # mean ablation to a mean taken elsewhere
        return value.expand_as(target)
    if not isinstance(index, tuple) or per_row is None:  # every position: column by column; a mask: all of them
        return target.mean(0, keepdim=True).expand_as(target)
    slots = target.reshape(-1, per_row, target.shape[-1]).mean(0)  # the k-th selected position of each row
    return slots.repeat(target.shape[0] // per_row, 1)


def run_with_hooks(lm: Any, edits: Sequence[Edit], *, last_index: torch.Tensor | None = None,
                   stop_after: int | str | None = None, forward: Callable[..., Any] | None = None,
                   **inputs: Any) -> tuple[Any, Hooks]:
    """One forward pass under ``edits``: ``(output, hooks)``; output is None when ``stop_after`` ended it.

    ``forward`` defaults to the backbone (no final norm, no LM head); pass ``lm.model`` for logits.
    """
    hooks = Hooks(lm, edits, last_index=last_index, stop_after=stop_after)
    with hooks:
        out = hooks.run(forward or hooks.anatomy.backbone, **inputs)
    return out, hooks


def active_hooks(lm: Any) -> int:
    """Number of the engine's hooks still on the model's backbone and blocks (tests, sanity).

    Hooks of other libraries are not counted (transformers keeps its own on the blocks once
    ``output_hidden_states`` was asked for).
    """
    anatomy = _anatomy(lm)
    found = [fn for m in (anatomy.backbone, *anatomy.blocks)
             for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return sum(isinstance(getattr(fn, "__self__", None) or getattr(fn, "engine", None), Hooks) for fn in found)
