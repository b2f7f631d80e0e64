"""Extraction step of ``ihs run``: every layer's last-token state and logit-lens top-k into a store.

The computing lives in :mod:`ihs.extraction` (``extract``, ``extract_to``, :class:`ExtractOptions`);
this module gives the run its configuration section and its step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.workflows.base import Step, StepContext, opt, records_digest


@dataclass(kw_only=True)
class ExtractConfig:
    """The forward pass of ``ihs run``'s extraction."""

    batch_size: int = opt(32, "Largest batch (prompts).")
    max_batch_tokens: int | None = opt(None, "Largest batch in padded tokens (null: from free memory).")
    k: int = opt(5, "Logit-lens top-k kept per layer.")
    max_length: int | None = opt(None, "Token limit (null: the model's context).")
    store_dtype: str = opt("float32", "Storage type of hidden states: float32 or float16.")

    def validate(self) -> None:
        for name in ("batch_size", "k", "max_batch_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise IhsError(f"extract.{name} must be positive, got {value}")
        if self.store_dtype not in ("float32", "float16"):
            raise IhsError(f"extract.store_dtype must be float32 or float16, got {self.store_dtype!r}")


class ExtractStep(Step):
    name = "extract"
    options = ExtractConfig
    help = "Forward pass: batch size, padded-token budget, lens top-k, token limit, storage dtype."

    def key(self, ctx: StepContext) -> dict[str, Any]:
        return {"model": ctx.model_part(), "data": records_digest(ctx.extract_records()),
                "options": asdict(ctx.options(self.name))}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        from ihs.extraction import ExtractOptions, extract

        cfg: ExtractConfig = ctx.options(self.name)
        fmt = ctx.config.format
        options = ExtractOptions(chat=fmt.chat, system_prompt=fmt.system_prompt, k=cfg.k, batch_size=cfg.batch_size,
                                 max_batch_tokens=cfg.max_batch_tokens, max_length=cfg.max_length,
                                 store_dtype=cfg.store_dtype)
        store = extract(ctx.model.get(), ctx.extract_records(), ctx.store_dir(), options, progress=ctx.progress,
                        overwrite=True)
        runs = store.manifest.get("runs") or [{}]
        return {"n": len(store), "shape": list(store.hidden.shape), "prompts_per_s": runs[-1].get("prompts_per_s"),
                "labels": {label: int((store.labels == label).sum()) for label in dict.fromkeys(store.labels)},
                "outputs": ["store/manifest.json"]}
