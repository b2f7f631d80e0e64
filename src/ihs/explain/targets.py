"""The scalars ihs explains, as functions of the input embeddings.

A *target* reads the last real token's state at one layer boundary and maps it to one number per
prompt. Attribution differentiates that number with respect to the input embeddings, so every
target is written in torch and runs on a forward pass that starts from ``inputs_embeds`` (the
output of the model's own input embedding, scaled as the model scales it) and stops right after
the block that produces the layer it reads (later blocks never run).

Targets:

- :class:`ProbeTarget`: a linear probe's logit ``state . weight + bias`` at its layer (a guard's folded
  probe: :meth:`ProbeTarget.from_guard`).
- :class:`RefusalTarget` (:func:`refusal_target`): the refusal margin at the first answer token,
  ``log P(refusal openings) - log P(compliance openings)`` from the model's final logits at the last
  prompt position, where ``P(S)`` sums the next-token probabilities of the token set ``S``. The
  softmax normaliser cancels in the difference, so it equals ``logsumexp(z[R]) - logsumexp(z[C])``.
- :class:`LensTarget` (:func:`emotion_target`): one token's logit-lens logit at a layer: the final
  norm and the unembedding applied to that layer's last-token state.

**Refusal and compliance token sets.** The refusal openings are the ways a refusal *begins* among
``ihs.generation.REFUSAL_PHRASES`` (the judge's phrases: "I'm sorry", "I cannot", "Sorry, but",
...), plus "Unfortunately" from the paper's negative emotion words; the compliance openings are the
usual first words of a helpful answer ("Sure", "Certainly", "Here", "Of course", ...) with the paper's
positive tokens "step" and "title". Only each opening's *first token* counts, with and without a
leading space (templates differ in whether the answer starts with one), so the refusal set is
about {"I", "Sorry", "Unfortunately"}: "I" is counted as refusal because at the first answer
position of a chat model it mostly opens "I'm sorry" / "I cannot", which is the margin's known
weakness ("I'd be happy to" counts as refusal too). A token in both sets is dropped from both.
Pass your own openings to :func:`refusal_target` to change this.

Layer numbering: index 0 is the embedding output (the input of block 1), index l the output of
decoder block l, before the final norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ihs.errors import IhsError
from ihs.layers import parse_layers
from ihs.models.anatomy import block_output
from ihs.prefix_cache import (
    MIN_PREFIX_TOKENS,
    SharedPrefix,
    cache_keyword,
    returned_cache,
    shared_prefix_length,
)

#: The refusal openings (first words of refusals in ``ihs.generation.REFUSAL_PHRASES``, capitalised as an
#: answer starts) and "Unfortunately" (the paper's negative emotion words).
REFUSAL_OPENINGS: tuple[str, ...] = (
    "I'm sorry", "I am sorry", "Sorry, but", "Sorry, I", "I apologize", "I cannot", "I can't", "I won't",
    "I will not", "I'm unable", "I am unable", "I must decline", "I refuse", "Unfortunately",
)
#: The compliance openings: first words of helpful answers, and the paper's positive tokens "step" and "title".
COMPLIANCE_OPENINGS: tuple[str, ...] = (
    "Sure", "Certainly", "Of course", "Absolutely", "Here", "Yes", "Great", "Okay", "To", "Step", "Title",
)


class Target(Protocol):
    """Reads one number per prompt from the last real token's state at ``layer``."""

    name: str
    layer: int

    def readout(self, lm: Any, states: torch.Tensor) -> torch.Tensor:
        """(B, d) last-token states at ``layer`` -> (B,) float32 values."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (kind, layer, parameters)."""
        ...


@dataclass
class ProbeTarget:
    """A linear probe's logit ``state . weight + bias`` on the last-token state at ``layer``."""

    weight: Any
    bias: float
    layer: int
    name: str = "probe"

    def __post_init__(self) -> None:
        w = self.weight.detach().cpu().double().numpy() if hasattr(self.weight, "detach") else self.weight
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if w.size == 0 or not np.isfinite(w).all():
            raise IhsError("a probe's weight vector must be non-empty and finite")
        self.weight = w
        self.bias = float(self.bias)
        self.layer = int(self.layer)

    @classmethod
    def from_guard(cls, guard: Any, name: str = "guard") -> ProbeTarget:
        """The folded probe of a guard (``weight``, ``bias``, ``layer``): its logit before the sigmoid."""
        try:
            return cls(weight=guard.weight, bias=guard.bias, layer=guard.layer, name=name)
        except AttributeError:
            raise IhsError("a guard needs 'weight', 'bias' and 'layer'") from None

    def readout(self, lm: Any, states: torch.Tensor) -> torch.Tensor:
        if states.shape[-1] != self.weight.shape[0]:
            raise IhsError(f"the probe has {self.weight.shape[0]} weights but the model's states have "
                           f"{states.shape[-1]} dimensions")
        w = torch.as_tensor(self.weight, dtype=torch.float32, device=states.device)
        return states.float() @ w + self.bias

    def describe(self) -> dict[str, Any]:
        return {"kind": "probe", "name": self.name, "layer": self.layer, "bias": self.bias,
                "weight_norm": float(np.linalg.norm(self.weight)),
                "value": "probe logit (state . weight + bias) at the last token"}


@dataclass
class RefusalTarget:
    """The refusal margin at the first answer token (see the module docstring for the token sets)."""

    refusal_ids: list[int]
    compliance_ids: list[int]
    layer: int
    refusal_tokens: list[str] = field(default_factory=list)
    compliance_tokens: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    name: str = "refusal_margin"

    def readout(self, lm: Any, states: torch.Tensor) -> torch.Tensor:
        logits = lm.anatomy.lens(states).float()
        r = torch.as_tensor(self.refusal_ids, device=logits.device)
        c = torch.as_tensor(self.compliance_ids, device=logits.device)
        return torch.logsumexp(logits[:, r], dim=-1) - torch.logsumexp(logits[:, c], dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"kind": "refusal_margin", "name": self.name, "layer": self.layer,
                "refusal_tokens": self.refusal_tokens, "compliance_tokens": self.compliance_tokens,
                "refusal_ids": self.refusal_ids, "compliance_ids": self.compliance_ids,
                "dropped_from_both": self.dropped,
                "value": "log P(refusal openings) - log P(compliance openings) at the first answer token"}


@dataclass
class LensTarget:
    """One token's logit-lens logit (final norm + unembedding) of the last-token state at ``layer``."""

    token_id: int
    layer: int
    token: str = ""
    word: str = ""
    name: str = "lens_logit"

    def readout(self, lm: Any, states: torch.Tensor) -> torch.Tensor:
        return lm.anatomy.lens(states).float()[:, self.token_id]

    def describe(self) -> dict[str, Any]:
        return {"kind": "lens_logit", "name": self.name, "layer": self.layer, "token_id": self.token_id,
                "token": self.token, "word": self.word,
                "value": "logit-lens logit of the token at the last position (final norm + unembedding)"}


def _first_tokens(tokenizer: Any, phrases: Sequence[str]) -> dict[int, str]:
    """First token of each phrase, as is and after a space; bare-space tokens are skipped."""
    out: dict[int, str] = {}
    for phrase in phrases:
        for variant in (phrase, " " + phrase):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            text = tokenizer.decode([ids[0]])
            if text.strip():
                out.setdefault(int(ids[0]), text)
    return out


def refusal_target(
    lm: Any,
    *,
    refusal_openings: Sequence[str] = REFUSAL_OPENINGS,
    compliance_openings: Sequence[str] = COMPLIANCE_OPENINGS,
) -> RefusalTarget:
    """The refusal margin of ``lm`` with its token sets resolved in this tokenizer."""
    refusal = _first_tokens(lm.tokenizer, refusal_openings)
    compliance = _first_tokens(lm.tokenizer, compliance_openings)
    both = sorted(set(refusal) & set(compliance))
    dropped = [refusal[i] for i in both]
    for i in both:
        refusal.pop(i)
        compliance.pop(i)
    if not refusal or not compliance:
        raise IhsError("the refusal and compliance openings share all their first tokens in this tokenizer; "
                       "give openings that start differently")
    return RefusalTarget(refusal_ids=sorted(refusal), compliance_ids=sorted(compliance), layer=lm.num_layers,
                         refusal_tokens=[refusal[i] for i in sorted(refusal)],
                         compliance_tokens=[compliance[i] for i in sorted(compliance)], dropped=dropped)


def resolve_word_token(tokenizer: Any, word: str) -> tuple[int, str]:
    """The token id that stands for ``word``: its first single-token form among word, " word",
    Word, " Word"; otherwise the first token of " word" (a word piece)."""
    if not word or not word.strip():
        raise IhsError("an emotion token needs a non-empty word")
    forms = [word, " " + word, word.capitalize(), " " + word.capitalize()]
    for form in forms:
        ids = tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0]), tokenizer.decode(ids)
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if tokenizer.decode([i]).strip()] or ids
    return int(ids[0]), tokenizer.decode([ids[0]])


def emotion_target(lm: Any, word: str | int = "sorry", *, layer: int | str | None = None) -> LensTarget:
    """The logit-lens logit of an emotion word's token at ``layer`` (default: the middle, round(L/2)).

    ``word`` may also be a token id.
    """
    if layer is None:
        index = int(round(lm.num_layers / 2))
    else:
        chosen = parse_layers(layer, lm.num_layers)
        if len(chosen) != 1:
            raise IhsError(f"the emotion target reads one layer; {layer!r} names {len(chosen)}")
        index = chosen[0]
    if isinstance(word, int):
        vocab = lm.anatomy.unembed.weight.shape[0]
        if not 0 <= word < vocab:
            raise IhsError(f"token id {word} is outside the vocabulary of {vocab}")
        return LensTarget(token_id=word, layer=index, token=lm.tokenizer.decode([word]), word=str(word),
                          name=f"lens_logit[{lm.tokenizer.decode([word]).strip()}]@{index}")
    token_id, token = resolve_word_token(lm.tokenizer, word)
    return LensTarget(token_id=token_id, layer=index, token=token, word=word, name=f"lens_logit[{word}]@{index}")


def check_target(lm: Any, target: Any) -> None:
    """Raise ``IhsError`` unless ``target`` reads a layer of ``lm`` and has a readout."""
    if not hasattr(target, "readout") or not hasattr(target, "layer"):
        raise IhsError(f"{type(target).__name__} is not a target (it needs 'layer' and 'readout')")
    if not 0 <= int(target.layer) <= lm.num_layers:
        raise IhsError(f"the target reads layer {target.layer}, outside 0..{lm.num_layers}")


# -- the forward pass from input embeddings ---------------------------------------------------


class _Stop(Exception):
    """Raised from a hook once the wanted layer's state is captured, so later blocks never run."""


def embed_ids(lm: Any, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Input embeddings (B, T, d) of right-padded ``ids`` (pad positions hold the pad token's embedding)."""
    width = max(len(x) for x in ids)
    pad = lm.tokenizer.pad_token_id or 0
    tensor = torch.full((len(ids), width), pad, dtype=torch.long)
    for row, seq in enumerate(ids):
        tensor[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    emb = lm.model.get_input_embeddings()
    return emb(tensor.to(lm.input_device))


def pad_rows(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (T_i, d) embedding rows into (B, T, d) with zeros; return it, the mask and the last index.

    In a causal model the last real token never sees the padding after it, so its state equals the
    unpadded one; the mask keeps the padded queries well defined.
    """
    lengths = torch.tensor([int(r.shape[0]) for r in rows])
    if (lengths == 0).any():
        raise IhsError("an empty token sequence cannot be scored")
    width = int(lengths.max())
    first = rows[0]
    out = first.new_zeros((len(rows), width, first.shape[-1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=first.device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return out, mask, lengths - 1


def build_prefix(lm: Any, ids: Sequence[int]) -> SharedPrefix | None:
    """The key/value cache of an opening that many rows share (the chat template before the user's text),
    built without autograd so rows can be differentiated on top of it; None when it is too short or the
    model takes no cache.

    Attention is causal, so the opening's keys and values do not depend on the tokens after it: running it
    once and handing its cache to every row of a pass gives the same last-token states (up to float
    rounding) for a fraction of the work.
    """
    if len(ids) < MIN_PREFIX_TOKENS:
        return None
    backbone = lm.anatomy.backbone
    try:
        with torch.no_grad():
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=lm.input_device)
            out = backbone(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True)
        cache = returned_cache(out)
    except (RuntimeError, TypeError, ValueError, AttributeError, NotImplementedError):
        return None
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return SharedPrefix(list(ids), cache, cache_keyword(backbone))


def common_prefix(pts: Sequence[Any], *, limit_to_user: bool) -> int:
    """Length of the token opening all prompts share (each keeps at least one token after it); with
    ``limit_to_user`` it stops before the first user token of any prompt."""
    n = shared_prefix_length([list(p.ids) for p in pts])
    if limit_to_user:
        firsts = [p.user.index(True) for p in pts if any(p.user)]
        if firsts:
            n = min(n, min(firsts))
    return n if n >= MIN_PREFIX_TOKENS else 0


def last_state(lm: Any, embeds: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, layer: int,
               prefix: SharedPrefix | None = None) -> torch.Tensor:
    """The last real token's state (B, d) at layer index ``layer``, from ``inputs_embeds``; differentiable.

    The pass stops right after the block that produces ``layer`` (index 0: the input of block 1). With
    ``prefix``, ``embeds``/``mask``/``last`` describe only what follows the cached opening.
    """
    blocks = lm.anatomy.blocks
    captured: dict[str, torch.Tensor] = {}

    def grab(hidden: torch.Tensor) -> None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        captured["h"] = hidden[rows, last.to(hidden.device)]
        raise _Stop

    if layer == 0:
        def pre_hook(module, args, kwargs):
            grab(args[0] if args else kwargs["hidden_states"])

        handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(module, args, output):
            grab(block_output(output))

        handle = blocks[layer - 1].register_forward_hook(hook)
    mask = mask.to(embeds.device)
    kwargs: dict[str, Any] = {"use_cache": False}
    if prefix is not None:
        n, width = embeds.shape[0], embeds.shape[1]
        positions = (prefix.length + torch.arange(width, device=embeds.device)).unsqueeze(0).expand(n, -1)
        mask = torch.cat([torch.ones((n, prefix.length), dtype=mask.dtype, device=mask.device), mask], dim=1)
        kwargs = {"use_cache": True, "position_ids": positions, **prefix.batch_kwargs(n)}
    try:
        lm.anatomy.backbone(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in captured:  # pragma: no cover - a backbone that skipped its blocks
        raise RuntimeError(f"the forward pass never reached layer {layer}")
    return captured["h"]


def target_values(lm: Any, target: Any, embeds: torch.Tensor, mask: torch.Tensor, last: torch.Tensor,
                  prefix: SharedPrefix | None = None) -> torch.Tensor:
    """The target's value per row (B,), float32, differentiable in ``embeds`` (see :func:`last_state`)."""
    return target.readout(lm, last_state(lm, embeds, mask, last, int(target.layer), prefix)).float()


def length_batches(lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Row indices cut into batches of similar length: at most ``batch_size`` rows and ``max_batch_tokens``
    padded tokens (a single over-long row still gets its own batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # sorted ascending: this row is the widest so far
        if current and (len(current) + 1 > batch_size or (len(current) + 1) * width > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def score_rows(lm: Any, target: Any, rows: Sequence[torch.Tensor], *, batch_size: int = 32,
               max_batch_tokens: int = 4096, prefix: SharedPrefix | None = None) -> np.ndarray:
    """The target on many embedding rows (T_i, d) of any lengths, batched by length; (N,) float64.

    With ``prefix``, every row must start with the embeddings of the prefix's tokens; only the rest runs.
    """
    skip = prefix.length if prefix is not None else 0
    rows = [r[skip:] for r in rows]
    out = np.empty(len(rows), dtype=np.float64)
    for batch in length_batches([int(r.shape[0]) for r in rows], batch_size=batch_size,
                                max_batch_tokens=max_batch_tokens):
        embeds, mask, last = pad_rows([rows[i] for i in batch])
        values = target_values(lm, target, embeds, mask, last, prefix)
        out[batch] = values.double().cpu().numpy()
    return out
