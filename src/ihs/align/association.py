"""The association loss: pull malicious prompts' middle-layer states toward a target direction.

Zhou et al. read aligned models and conclude that alignment *associates* the early ethical
classification with negative emotion in the middle layers. To test that causally, training can add
an auxiliary term that builds this association on purpose and see whether refusal follows (or
whether refusal training builds it without being asked). The term acts at chosen layers ``l``
(block outputs, ihs numbering: 1..L) on the last prompt token, the position every ihs analysis
reads, and only on malicious rows:

    loss_assoc = mean over malicious rows r and layers l of (1 - cos(h_l[r, last] - c_l, u_l))

Benign rows contribute nothing, and nothing above the highest chosen layer is touched by it.
The total loss is ``task loss + weight * loss_assoc``. The centre ``c_l`` is 0 by default; with
``center=True`` it is the mean last-token state of the training prompts at layer ``l`` (fixed, like
``u_l``). Centring makes the term scale-free: in models whose residual stream carries a few huge,
nearly constant coordinates (gemma-3), ``cos(h, u)`` stays near 0 whatever training does and its
gradient, which scales as ``1 / ||h - c||``, is too small to compete with the language-model loss;
``cos(h - c, u)`` measures how the prompt's state *departs from the average state* along ``u``.

Targets ``u_l`` are fixed before training, from the base model on *training* prompts only:

* ``emotion`` (option A): the direction in which moving the state raises the logit-lens logits of
  negative-emotion tokens (``ihs.analysis.emotion`` lexicon) above the vocabulary's mean, taken
  through the final norm and unembedding exactly as the lens applies them: the gradient of
  ``mean(lens(h)[negative]) - mean(lens(h))`` at ``h`` = the mean last-token state of the layer.
  For an RMSNorm this is, up to the norm's projection, ``gain * (mean negative row - mean row)``
  of the unembedding; the gradient form also covers LayerNorm, Gemma's ``1 + w`` gain and a
  logit soft-cap without special cases.
* ``refusal`` (option B): ``mean(malicious) - mean(benign)`` of the last-token states at the layer
  (a difference-of-means "refusal direction").

States are captured with forward hooks on the decoder blocks resolved by ``ihs.models.anatomy``, so
the term never sees Hugging Face's ``hidden_states`` (whose last entry is already normed), and
hooks record only forward passes that build a graph (a reference model's no-grad pass is ignored).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ihs.errors import IhsError
from ihs.models.anatomy import Anatomy, block_output

TARGETS: tuple[str, ...] = ("emotion", "refusal")


@dataclass(frozen=True)
class AssociationOptions:
    """The auxiliary term: target ``emotion`` or ``refusal``, the layers (``ihs.layers`` grammar;
    None: the middle third, as the lens analyses use), its weight, the emotion lexicon (None:
    built-in), how many training prompts estimate the directions, and whether states are centred
    on the training prompts' mean state before the cosine (see the module)."""

    target: str = "emotion"
    layers: str | None = None
    weight: float = 0.1
    lexicon: str | None = None
    max_prompts: int = 256
    batch_size: int = 16
    center: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise IhsError(f"unknown association target {self.target!r}; use {' or '.join(TARGETS)}")
        if self.weight < 0:
            raise IhsError(f"association weight must be 0 or more, got {self.weight}")
        if self.max_prompts < 2:
            raise IhsError(f"association max_prompts must be at least 2, got {self.max_prompts}")


def association_layers(spec: str | None, num_layers: int) -> list[int]:
    """The layers the term acts on: ``spec`` parsed with ``ihs.layers``, or the middle third; never 0."""
    from ihs.layers import default_layer_range, parse_layers

    if spec is None or not str(spec).strip():
        lo, hi = default_layer_range(num_layers)
        layers = list(range(max(lo, 1), hi + 1))
    else:
        layers = parse_layers(spec, num_layers)
    if 0 in layers:
        raise IhsError("association layers must be block outputs 1..L; layer 0 is the embedding output")
    return layers


@contextlib.contextmanager
def capture_blocks(blocks: Sequence[torch.nn.Module], layers: Sequence[int],
                   only_with_grad: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Record the output of block ``l - 1`` as layer ``l`` while the context is open.

    With ``only_with_grad`` a forward pass run under ``torch.no_grad`` (a DPO reference pass) is
    not recorded, so the captured states are those of the pass being trained.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def hook_for(layer: int):
        def hook(_module, _inputs, output):
            if only_with_grad and not torch.is_grad_enabled():
                return
            captured[layer] = block_output(output)

        return hook

    try:
        for layer in layers:
            handles.append(blocks[layer - 1].register_forward_hook(hook_for(layer)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def last_token_states(model: Any, blocks: Sequence[torch.nn.Module], prompts: Sequence[Sequence[int]],
                      layers: Sequence[int], *, pad_id: int, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Block outputs at each prompt's last token, per layer: ``{layer: (n, d) float32}``.

    Batches are right-padded and the last real position is gathered, so padding is never read.
    """
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, : len(p)] = torch.tensor(list(p), dtype=torch.long)
            mask[row, : len(p)] = 1
        last = torch.tensor([len(p) - 1 for p in batch])
        with capture_blocks(blocks, layers, only_with_grad=False) as captured:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        rows = torch.arange(len(batch))
        for layer in layers:
            out[layer].append(captured[layer][rows, last.to(captured[layer].device)].float().cpu())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def negative_token_ids(tokenizer: Any, lexicon: str | Path | None = None) -> list[int]:
    """Ids of every vocabulary token the emotion matcher calls negative for this tokenizer."""
    from ihs.analysis.emotion import EmotionMatcher, Lexicon

    matcher = EmotionMatcher(Lexicon.load(lexicon), tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if matcher.classify(text) == "negative"]


def emotion_directions(anatomy: Anatomy, reference: dict[int, torch.Tensor],
                       negative_ids: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per layer, the unit gradient of ``mean(lens(h)[negative]) - mean(lens(h))`` at the reference state."""
    if not negative_ids:
        raise IhsError("no vocabulary token of this tokenizer is a negative-emotion word; "
                       "use the association target 'refusal' or another lexicon")
    neg = torch.tensor(list(negative_ids), dtype=torch.long)
    out = {}
    param = next(anatomy.unembed.parameters())
    for layer, h0 in reference.items():
        h = h0.detach().to(param.device, param.dtype).clone().requires_grad_(True)
        with torch.enable_grad():
            logits = anatomy.lens(h[None, None, :])[0, 0].float()
            score = logits[neg.to(logits.device)].mean() - logits.mean()
            (grad,) = torch.autograd.grad(score, h)
        out[layer] = _unit(grad.float().cpu(), f"emotion direction at layer {layer}")
    return out


def refusal_directions(states: dict[int, torch.Tensor], malicious: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per layer, the unit vector ``mean(malicious) - mean(benign)`` of the last-token states."""
    malicious = malicious.bool()
    if malicious.all() or not malicious.any():
        raise IhsError("the refusal direction needs both malicious and benign training prompts")
    return {layer: _unit(s[malicious].mean(0) - s[~malicious].mean(0), f"refusal direction at layer {layer}")
            for layer, s in states.items()}


def _unit(vector: torch.Tensor, what: str) -> torch.Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise IhsError(f"the {what} is zero; the association loss has nothing to pull toward")
    return vector / norm


@dataclass
class Directions:
    """Target directions per layer (unit vectors, float32, on CPU) and how they were made."""

    target: str
    vectors: dict[int, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    centers: dict[int, torch.Tensor] | None = None

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def save(self, path: str | Path) -> None:
        """Write the vectors as safetensors (``layer_<l>`` keys) with target and layers in its metadata."""
        from safetensors.torch import save_file

        tensors = {f"layer_{layer}": v.contiguous() for layer, v in self.vectors.items()}
        tensors.update({f"center_{layer}": c.contiguous() for layer, c in (self.centers or {}).items()})
        save_file(tensors, str(path), metadata={"target": self.target, "layers": ",".join(map(str, self.layers))})

    @classmethod
    def load(cls, path: str | Path, info: dict[str, Any] | None = None) -> Directions:
        """Read what :meth:`save` wrote."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            vectors = {int(k.split("_", 1)[1]): fh.get_tensor(k) for k in fh.keys() if k.startswith("layer_")}
            centers = {int(k.split("_", 1)[1]): fh.get_tensor(k) for k in fh.keys() if k.startswith("center_")}
        return cls(meta.get("target", "unknown"), vectors, dict(info or {}), centers or None)


def compute_directions(model: Any, tokenizer: Any, anatomy: Anatomy, prompts: Sequence[Sequence[int]],
                       malicious: Sequence[bool], *, options: AssociationOptions, seed: int = 0) -> Directions:
    """Target directions from the (base) model on training prompts' ids (each ending where the answer starts).

    At most ``options.max_prompts`` prompts are used, half malicious and half benign where possible,
    drawn with ``seed``.
    """
    layers = association_layers(options.layers, anatomy.num_layers)
    rng = random.Random(f"ihs-align-directions:{seed}")
    mal = [i for i, m in enumerate(malicious) if m]
    ben = [i for i, m in enumerate(malicious) if not m]
    half = options.max_prompts // 2
    pick_mal = rng.sample(mal, min(len(mal), max(half, options.max_prompts - len(ben))))
    pick_ben = rng.sample(ben, min(len(ben), options.max_prompts - len(pick_mal)))
    chosen = sorted(pick_mal + pick_ben)
    if not chosen:
        raise IhsError("no training prompts to estimate the association directions from")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        states = last_token_states(model, anatomy.blocks, [prompts[i] for i in chosen], layers, pad_id=pad_id,
                                   batch_size=options.batch_size)
    finally:
        model.train(was_training)
    flags = torch.tensor([bool(malicious[i]) for i in chosen])
    info: dict[str, Any] = {"target": options.target, "layers": layers, "prompts": len(chosen),
                            "malicious_prompts": int(flags.sum()), "seed": seed}
    if options.target == "refusal":
        vectors = refusal_directions(states, flags)
    else:
        neg = negative_token_ids(tokenizer, options.lexicon)
        reference = {layer: s.mean(0) for layer, s in states.items()}
        vectors = emotion_directions(anatomy, reference, neg)
        info["negative_tokens"] = len(neg)
        info["lexicon"] = options.lexicon or "builtin"
    centers = None
    if options.center:
        centers = {layer: s.mean(0) for layer, s in states.items()}
        info["center"] = "mean last-token state of the chosen training prompts"
    return Directions(options.target, vectors, info, centers)


class AssociationLoss:
    """Captures block outputs during a training forward pass and turns them into the auxiliary term.

    Use ``with loss.capture(): model(...)`` and then ``loss(positions, malicious)``.
    """

    def __init__(self, blocks: Sequence[torch.nn.Module], directions: Directions, weight: float) -> None:
        self.blocks = blocks
        self.directions = directions
        self.weight = float(weight)
        self._captured: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Open hooks on the chosen layers' blocks for the duration of one training forward pass."""
        with capture_blocks(self.blocks, self.directions.layers) as captured:
            self._captured = captured
            yield

    def __call__(self, positions: torch.Tensor, malicious: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """The unweighted term for the last capture: ``mean(1 - cos(h_l[r, pos_r] - c_l, u_l))`` over malicious
        rows ``r`` (among the first ``rows`` of the batch, when given) and layers ``l``; 0 without any."""
        captured, self._captured = self._captured, {}
        missing = [layer for layer in self.directions.layers if layer not in captured]
        if missing:
            raise RuntimeError(f"no block output was captured for layers {missing}; run the forward inside capture()")
        first = captured[self.directions.layers[0]]
        flags = malicious.to(first.device).bool()
        if rows is not None:
            flags = flags[:rows]
        idx = flags.nonzero().flatten()
        if idx.numel() == 0:
            return first.new_zeros(())
        pos = positions.to(first.device)[idx]
        terms = []
        for layer in self.directions.layers:
            h = captured[layer][idx, pos]
            if self.directions.centers is not None:
                h = h - self.directions.centers[layer].to(h.device, h.dtype)
            u = self.directions.vectors[layer].to(h.device, h.dtype)
            terms.append((1 - F.cosine_similarity(h.float(), u.float()[None, :], dim=-1)).mean())
        return torch.stack(terms).mean()
