"""Logit-lens analyses of a store: emotion association, Top-K Intermediate Consistency (TKIC), cross-model table.

Pure computing over a store's logit-lens top-k (or any (N, L+1, k) token ids, e.g. a tuned lens's):

* :func:`analyze_store`: per-layer emotion association with 95% Wilson intervals, the first layer of
  negative dominance for malicious input, TKIC lists per class and layer and the TKIC scalar over a
  layer range, with the overlap of each class's lists with the normal class's;
* :func:`text_of`: the decoded text of a token id (the store's own table, else the tokenizer);
* :func:`cross_model_table` and :func:`table_markdown`: TKIC next to refusal rates, one row per model,
  with Spearman's rank correlation across models.

The workflow that runs these and writes ``lens.json`` is :mod:`ihs.workflows.lens`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ihs.analysis.consistency import PAD, top_k_consistency
from ihs.analysis.emotion import EmotionMatcher, emotion_association, emotion_codes
from ihs.errors import IhsError, StoreError
from ihs.store import ActivationStore

ATTACK_CLASSES = ("malicious", "jailbreak")
REFUSAL_NOTE = ("refusal rate: not available (it comes from the generation stage: pass --refusal with the "
                "refusal_rates.json that `ihs generate` writes)")
TKIC_DEFINITION = ("per class and layer: count each token once per input among all inputs' top-k lists, keep the "
                   "k most frequent, share = count / N; scalar top1 = mean over the layer range (inclusive) of the "
                   "top-1 share, topk = mean over the range of the mean of the k shares")
LAYER_CONVENTION = "index 0 = embedding output; index i = output of decoder block i"


def analyze_store(
    store: ActivationStore,
    matcher: EmotionMatcher,
    layer_range: tuple[int, int],
    lens_ids: np.ndarray | None = None,
    text_of: Callable[[int], str] | None = None,
    margin: float = 0.1,
) -> dict[str, Any]:
    """Emotion association and TKIC of one store (``lens_ids`` defaults to the store's logit lens).

    Returns a JSON-ready dict with ``association``, ``consistency`` (per class: lists, shares and
    the scalar over ``layer_range``) and ``layer_range``.
    """
    ids = store.lens_ids if lens_ids is None else lens_ids
    if ids is None:
        raise StoreError("this store has no logit-lens top-k (lens_ids); re-extract it with ihs extract")
    text_of = text_of or store.token_text
    labels = store.labels
    codes = emotion_codes(ids, text_of, matcher)
    assoc = emotion_association(codes, labels)
    consistency: dict[str, Any] = {}
    lists = {label: top_k_consistency(ids[labels == label]) for label in assoc.labels}
    reference = lists.get("normal")
    lo, hi = layer_range
    for label, tk in lists.items():
        entry = tk.to_json(text_of)
        entry["emotion"] = [[None if t == PAD else matcher.classify(text_of(int(t))) for t in row] for row in tk.tokens]
        entry["scalar"] = tk.scalar(layer_range)
        if reference is not None and label != "normal":
            # how much of this class's consistency list it shares with the normal class's: high TKIC with
            # full overlap means the layers decode the same tokens whatever the input (not class-specific)
            overlap = [len(set(a[a != PAD]) & set(b[b != PAD])) / tk.k
                       for a, b in zip(tk.tokens, reference.tokens, strict=True)]
            entry["overlap_with_normal"] = [round(x, 4) for x in overlap]
            in_range = [x for layer, x in zip(tk.layers, overlap, strict=True) if lo <= layer <= hi]
            entry["scalar"]["overlap_with_normal"] = round(float(np.mean(in_range)), 4) if in_range else None
        consistency[label] = entry
    return {
        "layer_range": list(layer_range),
        "association": assoc.to_json(margin=margin),
        "consistency": consistency,
    }


def text_of(store: ActivationStore, tokenizer: Any = None) -> Callable[[int], str]:
    """Decoded text of a token id: the store's own table first, else the tokenizer, else "<id>"."""
    cache: dict[int, str] = {}

    def decode(token_id: int) -> str:
        token_id = int(token_id)
        if token_id in store.lens_tokens:
            return store.lens_tokens[token_id]
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id]) if tokenizer is not None else f"<{token_id}>"
        return cache[token_id]

    return decode


# -- refusal rates and the cross-model table ---------------------------------------------------------------


def read_refusal(paths: list[str] | list[Path] | None) -> dict[str, Any]:
    """Merge refusal-rate files: ``{model or store name: rate}`` or ``{name: {class: rate}}``
    (``ihs generate`` writes the latter as ``refusal_rates.json``)."""
    merged: dict[str, Any] = {}
    for path in paths or []:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise IhsError(f"cannot read refusal rates from {path}: {exc}") from None
        if not isinstance(data, dict):
            raise IhsError(f"{path} must hold a JSON object {{model or store name: refusal rate}}")
        merged.update(data)
    return merged


def refusal_for(lookup: dict[str, Any], keys: list[Any]) -> dict[str, float]:
    """Refusal rate per class for the first key found; a bare number means the malicious class."""
    for key in keys:
        if key and key in lookup:
            value = lookup[key]
            if not isinstance(value, dict):
                value = {"malicious": value}
            return {str(k): float(v) for k, v in value.items()
                    if isinstance(v, int | float) and not (isinstance(v, float) and np.isnan(v))}
    return {}


def cross_model_table(models: list[dict[str, Any]], refusal: dict[str, Any], lens: str = "logit") -> dict[str, Any]:
    """One row per model: TKIC scalars per class next to refusal rates, with Spearman's rank
    correlation across models (TKIC top-1 on class c vs refusal rate on c, for malicious and
    jailbreak) wherever at least 3 models have both values."""
    from scipy.stats import spearmanr

    rows = []
    for m in models:
        result = m["lenses"].get(lens)
        if result is None:
            continue
        model = m.get("model", {})
        keys = [m["store_name"], str(m["store"]), model.get("name"), model.get("id"), model.get("zoo_name")]
        rows.append({"model": model.get("name") or model.get("id"), "store": m["store"],
                     "layer_range": result["layer_range"],
                     "tkic_top1": {label: c["scalar"]["top1"] for label, c in result["consistency"].items()},
                     "tkic_topk": {label: c["scalar"]["topk"] for label, c in result["consistency"].items()},
                     "refusal_rate": refusal_for(refusal, keys)})
    out: dict[str, Any] = {"lens": lens, "rows": rows, "correlation": {}}
    notes = []
    if not any(r["refusal_rate"] for r in rows):
        notes.append(REFUSAL_NOTE)
    else:
        for label in ATTACK_CLASSES:
            pairs = [(r["tkic_top1"].get(label), r["refusal_rate"].get(label)) for r in rows]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if len(pairs) >= 3:
                rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
                out["correlation"][label] = {
                    "method": "spearman", "x": f"TKIC top-1 on {label} input", "y": f"refusal rate on {label}",
                    "n_models": len(pairs), "rho": None if np.isnan(rho) else round(float(rho), 4),
                    "p": None if np.isnan(p) else round(float(p), 4)}
            elif any(r["refusal_rate"].get(label) is not None for r in rows):
                notes.append(f"{label}: rank correlation needs at least 3 models with a refusal rate ({len(pairs)} here)")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def table_markdown(table: dict[str, Any]) -> str:
    """The cross-model table (:func:`cross_model_table`) as Markdown, with its correlations and note."""
    labels: list[str] = []
    for r in table["rows"]:
        labels.extend(x for x in r["tkic_top1"] if x not in labels)
    refusal_labels = [x for x in ATTACK_CLASSES if x in labels or any(x in r["refusal_rate"] for r in table["rows"])]
    head = (["model", "layers"] + [f"TKIC top-1 {x}" for x in labels] + [f"TKIC top-k {x}" for x in labels]
            + [f"refusal rate {x}" for x in refusal_labels])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    for r in table["rows"]:
        cells = [_md(str(r["model"])), f"{r['layer_range'][0]}-{r['layer_range'][1]}"]
        cells += [fmt(r["tkic_top1"].get(x)) for x in labels] + [fmt(r["tkic_topk"].get(x)) for x in labels]
        cells += [fmt(r["refusal_rate"].get(x)) for x in refusal_labels]
        lines.append("| " + " | ".join(cells) + " |")
    for label, c in (table.get("correlation") or {}).items():
        lines.append(f"\nSpearman rho, TKIC top-1 vs refusal rate on {label} ({c['n_models']} models): "
                     f"{c['rho']} (p = {c['p']})")
    if table.get("note"):
        lines.append(f"\nNote: {table['note']}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return re.sub(r"([|\\`*_<>\[\]])", r"\\\1", text)


def slug(text: str) -> str:
    """A file-name-safe store name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "store"
