"""Where each architecture keeps its decoder blocks, final norm and unembedding.

Every analysis needs the same three parts of a causal LM: the list of decoder
blocks (to hook), the final norm (to decode intermediate states through the
logit lens) and the unembedding. Guessing them by name silently goes wrong on
new architectures, so they are resolved from an explicit table per family; a
user can override the paths, and anything else is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ihs.errors import ModelError

# model_type -> (backbone path, blocks path, final norm path), relative to the *ForCausalLM.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llama": ("model", "model.layers", "model.norm"),
    "mistral": ("model", "model.layers", "model.norm"),
    "mixtral": ("model", "model.layers", "model.norm"),
    "qwen2": ("model", "model.layers", "model.norm"),
    "qwen3": ("model", "model.layers", "model.norm"),
    "qwen2_moe": ("model", "model.layers", "model.norm"),
    "gemma": ("model", "model.layers", "model.norm"),
    "gemma2": ("model", "model.layers", "model.norm"),
    "gemma3_text": ("model", "model.layers", "model.norm"),
    "phi3": ("model", "model.layers", "model.norm"),
    "olmo2": ("model", "model.layers", "model.norm"),
    "smollm3": ("model", "model.layers", "model.norm"),
    "granite": ("model", "model.layers", "model.norm"),
    "phi": ("model", "model.layers", "model.final_layernorm"),
    "falcon": ("transformer", "transformer.h", "transformer.ln_f"),
    "gpt2": ("transformer", "transformer.h", "transformer.ln_f"),
    "bloom": ("transformer", "transformer.h", "transformer.ln_f"),
    "gptj": ("transformer", "transformer.h", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "opt": ("model.decoder", "model.decoder.layers", "model.decoder.final_layer_norm"),
}


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError as exc:
        raise ModelError(f"module path '{path}' not found in {type(root).__name__}") from exc


@dataclass
class Anatomy:
    """The parts of a causal LM that ihs reads and hooks."""

    family: str
    backbone: nn.Module
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    logit_softcap: float | None
    blocks_path: str

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def lens(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decode raw (pre-final-norm) residual states into vocabulary logits.

        Applies the final norm exactly once, so it must receive block outputs,
        never Hugging Face's last ``hidden_states`` entry (already normed).
        """
        from ihs.models.devices import execution_device

        # Under a device map the norm and the unembedding may sit on different devices (or be
        # offloaded, with weights on "meta"): send the state to where each one computes.
        normed = self.final_norm(hidden.to(execution_device(self.final_norm), self.unembed.weight.dtype))
        logits = self.unembed(normed.to(execution_device(self.unembed)))
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def resolve_anatomy(
    model: nn.Module,
    blocks_path: str | None = None,
    norm_path: str | None = None,
    backbone_path: str | None = None,
) -> Anatomy:
    """Find blocks, final norm and unembedding for ``model``; overrides win."""
    model_type = getattr(model.config, "model_type", "unknown")
    known = FAMILIES.get(model_type)
    if known is None and not (blocks_path and norm_path and backbone_path):
        raise ModelError(
            f"architecture '{model_type}' is not in ihs's family table "
            f"({', '.join(sorted(FAMILIES))}); pass --blocks-path, --norm-path and --backbone-path "
            "(e.g. model.layers, model.norm, model) to use it"
        )
    backbone_p, blocks_p, norm_p = known or (backbone_path, blocks_path, norm_path)
    backbone_p = backbone_path or backbone_p
    blocks_p = blocks_path or blocks_p
    norm_p = norm_path or norm_p
    blocks = get_submodule(model, blocks_p)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ModelError(f"'{blocks_p}' in {type(model).__name__} is not a non-empty list of blocks")
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise ModelError(f"{type(model).__name__} has no output embeddings (is it a causal LM?)")
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return Anatomy(
        family=model_type,
        backbone=get_submodule(model, backbone_p),
        blocks=blocks,
        final_norm=get_submodule(model, norm_p),
        unembed=unembed,
        logit_softcap=softcap,
        blocks_path=blocks_p,
    )


def block_output(output: object) -> torch.Tensor:
    """The hidden state a decoder block returns: a tensor, or the first item of a tuple.

    transformers returns a tuple from blocks in some versions and a bare tensor
    in others; hooks must accept both.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder block output of type {type(output).__name__}")


def replace_block_output(output: object, hidden: torch.Tensor) -> object:
    """Return ``output`` with its hidden state swapped for ``hidden``, keeping its shape."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"unexpected decoder block output of type {type(output).__name__}")
