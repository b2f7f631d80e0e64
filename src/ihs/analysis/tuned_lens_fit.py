"""Training a store's tuned lens: the recipe behind ``ihs lens --tuned`` (and the lens step's ``tuned`` option).

:mod:`ihs.analysis.tuned_lens` holds the lens itself (translators, state collection, training,
KL); this module picks the texts, trains, and keeps the trained lens inside the store it belongs
to (``STORE/tuned_lens``), reusing it on later runs when the model and the training settings match.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ihs.analysis.tuned_lens import TunedLens, collect_states, train_tuned_lens, tuned_lens_dir
from ihs.errors import IhsError
from ihs.models.loading import LoadedModel, load_model, model_ref
from ihs.store import ActivationStore

DEFAULT_TUNED_DATA = ["normal=builtin:normal", "malicious=builtin:malicious"]


def build_tuned_lens(lm: LoadedModel, data: list[str], chat: bool | None = None, limit: int | None = 100,
                     positions: int = 12, continue_tokens: int = 24, epochs: int = 3,
                     progress: bool = True) -> tuple[TunedLens, dict[str, Any]]:
    """Train a tuned lens for ``lm`` on the text sets ``data`` (NAME=SPEC); returns (lens, report).

    Each text is formatted as the store's prompts were (``chat``), extended by the model's own
    greedy continuation of ``continue_tokens`` tokens, and ``positions`` positions per sequence are
    drawn (never the first); see :func:`ihs.analysis.tuned_lens.train_tuned_lens` for the optimisation.
    """
    from ihs.data.prepare import prepare

    records, _ = prepare(data, limit=limit)
    texts = [r.text for r in records]
    started = time.perf_counter()
    states = collect_states(lm, texts, chat=chat, positions_per_sequence=positions,
                            continue_tokens=continue_tokens, progress=progress)
    collect_seconds = time.perf_counter() - started
    return train_tuned_lens(lm, states, epochs=epochs, progress=progress, meta={
        "data": list(data), "limit": limit, "texts": len(texts), "text_ids": sorted(r.id for r in records),
        "chat": chat, "positions_per_sequence": positions, "continue_tokens": continue_tokens,
        "collect_seconds": round(collect_seconds, 1),
    })


def model_for_store(store: ActivationStore, model: str | LoadedModel | None = None) -> LoadedModel:
    """The model that made ``store`` (``model``: a reference or a loaded model overriding the store's own),
    loaded in float32; refused when its fingerprint is not the store's."""
    if isinstance(model, LoadedModel):
        lm = model
        ref = lm.name
    else:
        ref = model or model_ref(store.manifest.get("model", {}))
        if ref is None:
            raise IhsError(f"cannot tell which model made {store.path}; pass --model for the tuned lens")
        lm = load_model(ref, dtype="float32")
    expected = store.manifest.get("model", {}).get("fingerprint")
    if expected and lm.fingerprint() != expected:
        raise IhsError(f"--model {ref} is not the model of {store.path} ({lm.fingerprint()} != {expected})")
    return lm


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    return {"data": list(meta.get("data") or []), "limit": meta.get("limit"), "chat": meta.get("chat"),
            "positions": meta.get("positions_per_sequence"), "continue_tokens": meta.get("continue_tokens"),
            "epochs": (meta.get("training") or {}).get("epochs")}


def tuned_for_store(store: ActivationStore, lm: LoadedModel, data: list[str], *, retrain: bool = False,
                    epochs: int = 3, positions: int = 12, continue_tokens: int = 24, limit: int | None = 100,
                    progress: bool = True, log: Callable[[str], None] | None = None) -> TunedLens:
    """The store's tuned lens: loaded from ``STORE/tuned_lens`` when one trained on ``lm`` with these settings
    is there (and not ``retrain``), else trained and saved there (an in-memory store keeps it in memory)."""
    log = log or (lambda _: None)
    chat = store.manifest.get("chat")
    wanted = {"data": list(data), "limit": limit, "chat": chat, "positions": positions,
              "continue_tokens": continue_tokens, "epochs": epochs}
    folder = tuned_lens_dir(store.path) if store.path else None
    lens = None
    if folder is not None and (folder / "tuned_lens.safetensors").exists() and not retrain:
        saved = TunedLens.load(folder, fingerprint=lm.fingerprint())
        if _settings(saved.meta) == wanted:
            lens = saved
            log(f"tuned lens: loaded {folder}")
        else:
            log(f"tuned lens: the one in {folder} was trained with other settings; training again")
    if lens is None:
        log(f"tuned lens: training on {', '.join(data)} (at most {limit} texts each), {positions} positions "
            f"per sequence, {continue_tokens} continuation tokens, {epochs} epochs")
        lens, report = build_tuned_lens(lm, data, chat=chat, limit=limit, positions=positions,
                                        continue_tokens=continue_tokens, epochs=epochs, progress=progress)
        if folder is not None:
            lens.save(folder)
            log(f"tuned lens: saved to {folder} ({report['train_seconds']} s training)")
    lens.meta["texts_in_store"] = len(set(lens.meta.get("text_ids", [])) & set(store.ids))
    return lens
