"""A feature bank: what every candidate guard could read, computed once per model and kept on disk.

Choosing a guard's kind by cross-validation, and measuring it under leave-group-out, fits hundreds of
heads on the same prompts. The model runs once: :func:`build_bank` computes the last token's state at
every layer 0..L (today's guards read one of them) and the pooled states (mean, max, EMA) and the
refusal margin at a grid of layers, for every prompt; fitting and evaluating then read the bank.

A bank folder holds ``bank.json`` (model block as in a guard card, the feature settings, the layers of
each feature, the data specs), ``records.jsonl`` (id, text, label, dataset, tags; one line per row)
and ``features.safetensors`` (one array per feature; pooled states in float16 to keep it small).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ihs.errors import IhsError
from ihs.guard.features import POOLINGS, REFUSAL, Features, FeatureSpec, grid_layers
from ihs.io import write_json, write_jsonl

BANK = "bank.json"
RECORDS = "records.jsonl"
ARRAYS = "features.safetensors"


@dataclass
class FeatureBank:
    """Records, their :class:`~ihs.guard.features.Features`, the model block and the feature settings."""

    records: list[dict[str, Any]]
    features: Features
    model: dict[str, Any]
    spec: FeatureSpec
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.records) != len(self.features):
            raise IhsError(f"a feature bank with {len(self.records)} records and {len(self.features)} feature rows")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_layers(self) -> int:
        return int(self.model.get("num_layers") or max(self.features.layers.get("last", [0])))

    def subset(self, rows: Sequence[int] | np.ndarray) -> FeatureBank:
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureBank([self.records[i] for i in rows], self.features.subset(rows), self.model, self.spec,
                           dict(self.info))

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in self.features.arrays.items()}, str(out / ARRAYS),
                  metadata={"format": "ihs-guard-bank"})
        write_jsonl(out / RECORDS, [{k: r.get(k) for k in ("id", "text", "label", "dataset", "tags")}
                                    for r in self.records])
        write_json(out / BANK, {"format": "ihs-guard-bank", "model": self.model, "spec": self.spec.to_dict(),
                                "layers": self.features.layers, "n": len(self), "info": self.info}, indent=2)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> FeatureBank:
        d = Path(folder)
        if not (d / BANK).is_file():
            raise IhsError(f"{d} is not a feature bank (no {BANK}; make one with `ihs guard features`)")
        try:
            meta = json.loads((d / BANK).read_text(encoding="utf-8"))
            arrays = load_file(str(d / ARRAYS))
            records = [json.loads(line) for line in (d / RECORDS).read_text(encoding="utf-8").splitlines() if line]
        except (OSError, ValueError) as exc:
            raise IhsError(f"feature bank {d} is unreadable: {exc}") from exc
        if meta.get("format") != "ihs-guard-bank":
            raise IhsError(f"{d / BANK} is not an ihs feature bank")
        feats = Features(arrays, {k: list(v) for k, v in meta["layers"].items()})
        bank = cls(records, feats, meta.get("model", {}), FeatureSpec.from_dict(meta.get("spec", {})),
                   meta.get("info", {}))
        bank.info["path"] = str(d)
        return bank

    @staticmethod
    def concat(banks: Sequence[FeatureBank]) -> FeatureBank:
        """Rows of several banks of one model, read with the same settings."""
        first = banks[0]
        for b in banks[1:]:
            if b.model.get("fingerprint") != first.model.get("fingerprint"):
                raise IhsError("cannot pool feature banks of different models")
            if b.spec.to_dict() != first.spec.to_dict() or b.features.layers != first.features.layers:
                raise IhsError("cannot pool feature banks read with different settings")
        return FeatureBank([r for b in banks for r in b.records], Features.concat([b.features for b in banks]),
                           first.model, first.spec, {"parts": [b.info for b in banks]})


def bank_spec(lm: Any, *, chat: bool, system_prompt: str | None = None, pooled_layers: Sequence[int] | None = None,
              poolings: Sequence[str] = POOLINGS, refusal: bool = True, ema_halflife: float = 8.0) -> FeatureSpec:
    """The features a bank computes: the last token at every layer, other poolings and the refusal margin at
    ``pooled_layers`` (default: about eleven evenly spaced layers, 0 and L included)."""
    from ihs.guard.features import refusal_token_ids, template_prefix

    num_layers = lm.num_layers
    grid = sorted(set(pooled_layers)) if pooled_layers is not None else grid_layers(num_layers)
    bad = [v for v in grid if not 0 <= v <= num_layers]
    if bad:
        raise IhsError(f"layer {bad[0]} is outside 0..{num_layers}")
    pooled = {"last": list(range(num_layers + 1))}
    pooled.update({p: grid for p in poolings if p != "last"})
    r, c = refusal_token_ids(lm.tokenizer) if refusal else ([], [])
    return FeatureSpec(pooled=pooled, refusal_layers=grid if refusal else [], ema_halflife=ema_halflife,
                       pool_start=template_prefix(lm.tokenizer, chat, system_prompt), refusal_ids=r,
                       compliance_ids=c)


def build_bank(lm: Any, records: Sequence[dict[str, Any]], spec: FeatureSpec, model: dict[str, Any], *,
               batch_size: int = 16, max_batch_tokens: int = 4096, info: dict[str, Any] | None = None,
               progress: Any = None) -> FeatureBank:
    """Run ``lm`` once over ``records`` (formatted as ``model`` says) and keep ``spec``'s features.

    Pooled states are kept in float16 (the last-token states too), or float32 for a feature with a value
    beyond float16's range; the refusal margins in float32.
    """
    from ihs.formatting import format_prompt
    from ihs.guard.features import extract_features

    chat = bool(model.get("chat"))
    max_length = int(model.get("max_length") or lm.max_length)
    ids = [format_prompt(lm.tokenizer, r["text"], chat, model.get("system_prompt"), max_length, True).ids
           for r in records]
    feats = extract_features(lm, ids, spec, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                             dtype=np.float16, progress=progress)
    recs = [{k: r.get(k) for k in ("id", "text", "label", "dataset", "tags")} for r in records]
    for r, x in zip(recs, ids, strict=True):
        r["n_tokens"] = len(x)
    return FeatureBank(recs, feats, model, spec, dict(info or {}))


def bank_from_store(store: Any, model: dict[str, Any]) -> FeatureBank:
    """A bank holding only the last token's states at every layer, from an activation store (no model run)."""
    n, layers, _ = store.hidden.shape
    feats = Features({"last": np.asarray(store.hidden)}, {"last": list(range(layers))})
    return FeatureBank(list(store.records), feats, model, FeatureSpec(pooled={"last": list(range(layers))}),
                       {"store": str(store.path) if store.path else None})


def available(bank: FeatureBank) -> dict[str, list[int]]:
    """Feature kind -> layers the bank holds (what candidate kinds may read)."""
    return {k: list(v) for k, v in bank.features.layers.items() if k in (*POOLINGS, REFUSAL)}
