"""Inputs of the guard's commands: pooled stores, prompt sets run through a model, feature banks, saved guards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ihs.errors import IhsError
from ihs.guard.guard import Guard, model_info
from ihs.store import ActivationStore


def pool_stores(paths: Sequence[str | Path]) -> ActivationStore:
    """Load stores and pool their rows; they must hold one model's states under one formatting."""
    if not paths:
        raise IhsError("no store given")
    stores = [ActivationStore.load(p) for p in paths]
    first = stores[0].manifest
    for p, st in zip(paths[1:], stores[1:], strict=True):
        m = st.manifest
        if m.get("model", {}).get("fingerprint") != first.get("model", {}).get("fingerprint"):
            raise IhsError(f"store {p} holds another model's states than {paths[0]}")
        if (m.get("chat"), m.get("system_prompt")) != (first.get("chat"), first.get("system_prompt")):
            raise IhsError(f"store {p} was formatted differently (chat/system prompt) from {paths[0]}")
    if len(stores) == 1:
        return stores[0]
    manifest = {**first, "datasets": sorted({d for st in stores for d in st.manifest.get("datasets") or []})}
    return ActivationStore(hidden=np.concatenate([st.hidden for st in stores]),
                           records=[r for st in stores for r in st.records], manifest=manifest)


def store_inputs(paths: Sequence[str | Path], *, model: str | None = None,
                 device: str | None = None) -> tuple[ActivationStore, dict[str, Any], dict[str, Any]]:
    """(pooled store, the card's model block, the card's data block) for fitting from stores; with ``model``
    (loaded in the stores' dtype), the stores must hold that model's states."""
    store = pool_stores(paths)
    info = model_info(store.manifest)
    if model:
        from ihs.models.loading import load_model

        lm = load_model(model, dtype=store.manifest.get("model", {}).get("dtype", "float32"), device=device)
        if lm.fingerprint() != info["fingerprint"]:
            raise IhsError(f"store {paths[0]} holds states of {info['name']!r} ({info['fingerprint']}), "
                           f"not of {model!r} ({lm.fingerprint()})")
    return store, info, {"stores": [str(Path(p).resolve()) for p in paths], "datasets": store.manifest.get("datasets")}


def data_inputs(lm: Any, data: Sequence[str], *, limit: int | None = None, chat: bool | None = None,
                system_prompt: str | None = None, batch_size: int = 32,
                progress: bool = True) -> tuple[ActivationStore, dict[str, Any], dict[str, Any]]:
    """(in-memory store, model block, data block) for fitting from ``NAME=SPEC`` prompt sets run through ``lm``."""
    from ihs.data.prepare import prepare
    from ihs.extraction import ExtractOptions, extract

    records, _ = prepare(list(data), limit=limit)
    store = extract(lm, records, None, ExtractOptions(chat=chat, system_prompt=system_prompt, batch_size=batch_size),
                    progress=progress)
    return store, model_info(lm, chat=chat, system_prompt=system_prompt), {"specs": list(data), "limit": limit}


def load_guard(guard_dir: str | Path, *, model: str | None = None, device: str | None = None,
               attach: bool = True) -> Guard:
    """A saved guard; with ``attach``, its model attached: ``model`` (checked against the card) or the one the
    card names."""
    from ihs.models.loading import load_model

    guard = Guard.load(guard_dir)
    if not attach:
        return guard
    if model:
        guard.attach(load_model(model, dtype=guard.model.get("dtype") or "float32", device=device))
    else:
        guard.load_model(device=device)
    return guard


def prompt_records(data: Sequence[str] | None, prompts: Sequence[str] | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """Records from ``NAME=SPEC`` prompt sets and from raw prompts (label ``prompt``)."""
    from ihs.batching import as_record_dict
    from ihs.data.prepare import prepare

    records = [as_record_dict(r) for r in prepare(list(data), limit=limit)[0]] if data else []
    return records + [{"id": f"prompt-{i}", "text": t, "label": "prompt", "dataset": "--prompt", "tags": {}}
                      for i, t in enumerate(prompts or [])]


def data_records(data: Sequence[str], *, limit: int | None = None, limit_by: str | None = None,
                 sample: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Cleaned records of ``NAME=SPEC`` sets as dicts, a row's ``class`` tag (or a built-in set's own label) taken
    as its label where the set name is not a class (``buried=builtin:buried``, ``wrapped=builtin:wrapped``).

    ``sample``: a seeded random ``sample`` rows of each set (in file order), where ``limit`` keeps the first ones;
    the built-in files are ordered by category, so their first rows cover few categories.
    """
    from ihs.batching import as_record_dict
    from ihs.data.prepare import prepare
    from ihs.guard.grouping import with_class_labels

    records, _ = prepare(list(data), limit=limit, limit_by=limit_by)
    out = with_class_labels([as_record_dict(r) for r in records])
    if sample is not None:
        if sample <= 0:
            raise IhsError(f"--sample must be positive, got {sample}")
        rng = np.random.default_rng(seed)
        keep: set[int] = set()
        for dataset in dict.fromkeys(r["dataset"] for r in out):
            rows = [i for i, r in enumerate(out) if r["dataset"] == dataset]
            keep.update(rows if len(rows) <= sample else rng.choice(rows, size=sample, replace=False).tolist())
        out = [r for i, r in enumerate(out) if i in keep]
    return out


def bank_inputs(lm: Any, data: Sequence[str], *, limit: int | None = None, limit_by: str | None = None,
                sample: int | None = None, seed: int = 0, chat: bool | None = None, system_prompt: str | None = None, layers: Sequence[int] | None = None,
                poolings: Sequence[str] | None = None, refusal: bool = True, ema_halflife: float = 8.0,
                batch_size: int = 16, max_batch_tokens: int = 4096, progress: bool = True) -> Any:
    """A :class:`ihs.guard.bank.FeatureBank` of ``NAME=SPEC`` sets run once through ``lm``."""
    from ihs.guard.bank import bank_spec, build_bank
    from ihs.guard.features import POOLINGS
    from ihs.progress import progress_bar

    records = data_records(data, limit=limit, limit_by=limit_by, sample=sample, seed=seed)
    model = model_info(lm, chat=chat, system_prompt=system_prompt)
    spec = bank_spec(lm, chat=model["chat"], system_prompt=system_prompt, pooled_layers=layers,
                     poolings=poolings or POOLINGS, refusal=refusal, ema_halflife=ema_halflife)
    info = {"specs": list(data), "limit": limit, "limit_by": limit_by, "sample": sample, "seed": seed}
    with progress_bar(f"features (blocks 1..{spec.deepest})", total=len(records), enabled=progress) as advance:
        return build_bank(lm, records, spec, model, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                          info=info, progress=advance)


def bank_rows(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """Indices of records with a known benign or malicious label (others, e.g. raw prompts, are left out)."""
    from ihs.guard.linear import BENIGN_LABELS, MALICIOUS_LABELS

    known = set(BENIGN_LABELS) | set(MALICIOUS_LABELS)
    return np.asarray([i for i, r in enumerate(records) if str(r.get("label")) in known], dtype=np.int64)
