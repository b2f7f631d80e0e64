"""A prompt's layer-by-layer story: where it starts to look malicious, where the answer turns to refusal,
and where the last token looks.

For each prompt and every layer index 0..L (0: the embedding output, i: the output of block i) this gives:

- ``malicious_position``: the last-token state projected on the malicious-vs-normal direction ``d`` (mean
  of reference malicious prompts minus mean of reference normal prompts, per layer) and rescaled so 0 is the
  normal mean and 1 the malicious mean: ``(h - mu_normal) . d / (mu_malicious - mu_normal) . d``;
- ``refusal_margin``: the refusal margin read with the logit lens at that layer (final norm + unembedding;
  :class:`ihs.explain.targets.RefusalTarget`); only the last layer's value is the model's real margin;
- per block (layers 1..L, from :mod:`ihs.explain.attention`): the last token's attention mass on the marked
  span (``span_share``, with ``span_fraction`` the share of positions it covers), on the user's tokens
  (``user_share``) and the attention entropy, all averaged over heads;
- ``summary``: the first layer where the position passes 0.5, the layer where it peaks, the last layer
  where the lens margin changes sign, the block whose heads read the span most (with its top heads).

The reference prompts should not include the prompts being told (they only set the direction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ihs.errors import IhsError
from ihs.explain.attention import AttentionOptions, attention_for_tokens
from ihs.explain.concepts import ConceptOptions, last_token_states
from ihs.explain.targets import refusal_target
from ihs.explain.tokens import tokenize_prompts


@dataclass(frozen=True)
class StoryOptions:
    """Formatting and batching, as in extraction; ``top_heads``: heads listed for the span."""

    chat: bool | None = None
    system_prompt: str | None = None
    batch_size: int = 8
    top_heads: int = 3
    progress: bool = True


def malicious_positions(states: np.ndarray, malicious: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """states (N, nL, d), reference states (M, nL, d) and (K, nL, d) -> (N, nL) positions on the
    malicious-vs-normal axis (0: the normal mean, 1: the malicious mean; NaN where the means coincide)."""
    mu_m, mu_n = malicious.mean(0), normal.mean(0)
    d = mu_m - mu_n
    scale = np.einsum("ld,ld->l", d, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.einsum("nld,ld->nl", states - mu_n[None], d) / scale[None]
    return np.where(scale[None] > 1e-12, pos, np.nan)


def _summary(story: dict[str, Any]) -> dict[str, Any]:
    pos = np.asarray([np.nan if v is None else v for v in story.get("malicious_position") or []], dtype=float)
    out: dict[str, Any] = {}
    if len(pos) and np.isfinite(pos).any():
        above = [i for i, v in enumerate(pos) if np.isfinite(v) and v > 0.5]
        out["first_layer_above_half"] = above[0] if above else None
        out["peak_layer"] = int(np.nanargmax(pos))
        out["peak_position"] = float(np.nanmax(pos))
        out["final_position"] = float(pos[-1])
    margin = story.get("refusal_margin")
    if margin:
        signs = np.sign(margin)
        flips = [i for i in range(1, len(signs)) if signs[i] != signs[i - 1]]
        out["refusal_margin_final"] = float(margin[-1])
        out["last_sign_change"] = flips[-1] if flips else None
        out["margin_peak_layer"] = int(np.argmax(margin))
    att = story.get("attention") or {}
    if att.get("span_share"):
        share = np.asarray(att["span_share"], dtype=float)
        block = int(np.argmax(share))
        out["span_peak_block"] = block + 1
        out["span_peak_share"] = float(share[block])
        out["span_fraction"] = att.get("span_fraction")
        out["span_top_heads"] = (att.get("top_heads") or [None] * len(share))[block]
    return out


def layer_stories(
    lm: Any,
    prompts: Sequence[str],
    *,
    malicious: Sequence[str],
    normal: Sequence[str],
    spans: Sequence[Any] | None = None,
    refusal: Any = None,
    options: StoryOptions | None = None,
) -> list[dict[str, Any]]:
    """The layer-by-layer story of each prompt (see the module docstring); ``spans``: per prompt None or
    (start, end) character offsets to measure attention on; ``refusal``: a refusal target (default
    :func:`ihs.explain.targets.refusal_target`)."""
    options = options or StoryOptions()
    if not prompts:
        raise IhsError("no prompts to tell")
    if not malicious or not normal:
        raise IhsError("a story needs malicious and normal reference prompts")
    fmt = {"chat": options.chat, "system_prompt": options.system_prompt}
    copts = ConceptOptions(batch_size=options.batch_size, progress=options.progress, **fmt)
    states = last_token_states(lm, list(prompts), options=copts, description="story states").astype(np.float64)
    ref_m = last_token_states(lm, list(malicious), options=copts, description="reference").astype(np.float64)
    ref_n = last_token_states(lm, list(normal), options=copts, description="reference").astype(np.float64)
    position = malicious_positions(states, ref_m, ref_n)
    refusal = refusal if refusal is not None else refusal_target(lm)
    with torch.no_grad():
        flat = torch.as_tensor(states.reshape(-1, states.shape[-1]), dtype=torch.float32, device=lm.input_device)
        margin = refusal.readout(lm, flat.to(lm.dtype)).double().cpu().numpy().reshape(states.shape[:2])
    pts = tokenize_prompts(lm, list(prompts), **fmt)
    att = attention_for_tokens(lm, pts, spans=list(spans) if spans is not None else None,
                               options=AttentionOptions(top_heads=options.top_heads, batch_size=options.batch_size,
                                                        progress=options.progress, **fmt))
    out = []
    for i, prompt in enumerate(prompts):
        summary = att.items[i].summary(options.top_heads)
        story = {"prompt": prompt, "layers": list(range(lm.num_layers + 1)),
                 "malicious_position": [None if not np.isfinite(v) else float(v) for v in position[i]],
                 "refusal_margin": margin[i].tolist(),
                 "attention": {k: summary[k] for k in ("layers", "span_share", "span_fraction", "user_share",
                                                       "first_token_share", "entropy", "top_heads")}}
        story["summary"] = _summary(story)
        out.append(story)
    return out


def tell(story: dict[str, Any]) -> str:
    """One plain sentence per finding of a story's summary (for reports)."""
    s = story.get("summary") or {}
    parts = []
    if s.get("peak_layer") is not None:
        first = s.get("first_layer_above_half")
        parts.append(("it never passes halfway to the malicious mean" if first is None else
                      f"it passes halfway to the malicious mean at layer {first}")
                     + f"; its position peaks at {s['peak_position']:.2f} at layer {s['peak_layer']} and ends "
                       f"at {s['final_position']:.2f}")
    if "refusal_margin_final" in s:
        flip = s.get("last_sign_change")
        parts.append(f"the lens refusal margin ends at {s['refusal_margin_final']:+.2f}"
                     + (f" (last sign change at layer {flip})" if flip is not None else " (no sign change)"))
    if s.get("span_peak_block") is not None:
        heads = ", ".join(str(h["head"]) for h in s.get("span_top_heads") or [])
        parts.append(f"the last token's attention on the marked span peaks in block {s['span_peak_block']} "
                     f"({s['span_peak_share']:.2f} of its attention for {s['span_fraction']:.2f} of the positions"
                     + (f"; heads {heads}" if heads else "") + ")")
    return "; ".join(parts) + "." if parts else ""
