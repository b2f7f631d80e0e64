"""Steering directions: per-layer difference of means between two groups of last-position states.

The default direction at layer l is mean(malicious) - mean(normal) of the
store's last-position states, the axis along which the model's states move when
a request is harmful. The option ``from generations`` uses refused minus
complied attack prompts instead (the states of prompts the model actually
refused, against those it answered).

Only *training* ids enter the means. The store's ids are split by a hash of
each id (``split_ids``), so a prompt's side never depends on which other
prompts are in the store, and the held-out ids (and every prompt outside the
store) stay free for choosing settings and for evaluation. The saved direction
lists its training ids, its held-out ids and the ids of the whole store.

Scale. ``vector(layer, alpha)`` is ``alpha * mean_norm[layer] * unit[layer]``:
alpha is measured in units of the layer's mean last-token norm over the
training prompts (so alpha = 0.1 adds a tenth of a typical state's length).
``diff_norm / mean_norm`` (saved per layer) converts to units of the
malicious-normal gap.

Files: ``directions.safetensors`` (``directions`` (n, d) raw differences,
``layers`` (n,)) and ``direction.json`` (layers, norms, ids, classes, model).
Layers follow the store convention: 0 = embedding output, i = output of block i.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ihs.errors import IhsError, StoreError

DIRECTION_JSON = "direction.json"
DIRECTION_TENSORS = "directions.safetensors"


def in_train(record_id: str, train_fraction: float = 0.75, seed: int = 0) -> bool:
    """Whether ``record_id`` falls on the training side of the hash split (independent of other ids)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < train_fraction


def split_ids(ids: Sequence[str], train_fraction: float = 0.75, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) ids by :func:`in_train`, in input order."""
    if not 0 < train_fraction <= 1:
        raise IhsError(f"train fraction must be in (0, 1], got {train_fraction}")
    train = [i for i in ids if in_train(i, train_fraction, seed)]
    chosen = set(train)
    return train, [i for i in ids if i not in chosen]


@dataclass
class SteeringDirections:
    """Per-layer difference-of-means directions with the norms that set their scale."""

    layers: list[int]
    vectors: np.ndarray  # (n, d): mean(positive) - mean(negative), raw
    mean_norm: np.ndarray  # (n,): mean last-token norm of the training states at each layer
    train_ids: list[str]
    heldout_ids: list[str]
    store_ids: list[str]
    positive: list[str]
    negative: list[str]
    method: str = "diffmean"
    model: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        self.mean_norm = np.asarray(self.mean_norm, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise IhsError(f"directions: {len(self.layers)} layers for vectors of shape {self.vectors.shape}")

    @property
    def diff_norm(self) -> np.ndarray:
        return np.linalg.norm(self.vectors, axis=1)

    def _row(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise IhsError(f"the direction has no layer {layer}; it has {self.layers[0]}..{self.layers[-1]}") from None

    def unit(self, layer: int) -> torch.Tensor:
        v = self.vectors[self._row(layer)]
        norm = float(np.linalg.norm(v))
        if norm == 0:
            raise IhsError(f"the direction at layer {layer} is zero (both groups have the same mean state there)")
        return torch.from_numpy(v / norm)

    def vector(self, layer: int, alpha: float) -> torch.Tensor:
        """The vector added at ``layer``: alpha times the layer's mean last-token norm along the unit direction."""
        return self.unit(layer) * float(alpha) * float(self.mean_norm[self._row(layer)])

    # -- files ---------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"directions": self.vectors, "layers": np.asarray(self.layers, dtype=np.int64)},
                  str(out / DIRECTION_TENSORS))
        meta = {
            "method": self.method, "positive": self.positive, "negative": self.negative,
            "layers": self.layers, "mean_norm": [float(x) for x in self.mean_norm],
            "diff_norm": [float(x) for x in self.diff_norm],
            "diff_over_mean_norm": [float(d / m) if m else None for d, m in zip(self.diff_norm, self.mean_norm, strict=True)],
            "scale": "added vector = alpha * mean_norm[layer] * unit direction",
            "layer_convention": "0 = embedding output; i = output of decoder block i",
            "model": self.model, "info": self.info,
            "train_ids": self.train_ids, "heldout_ids": self.heldout_ids, "store_ids": self.store_ids,
        }
        (out / DIRECTION_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | Path) -> SteeringDirections:
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / DIRECTION_JSON).exists() or not (path / DIRECTION_TENSORS).exists():
            raise IhsError(f"{path} is not a steering direction (needs {DIRECTION_JSON} and {DIRECTION_TENSORS}; "
                           "make one with `ihs defend direction`)")
        meta = json.loads((path / DIRECTION_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(path / DIRECTION_TENSORS))
        layers = [int(x) for x in tensors["layers"]]
        if layers != [int(x) for x in meta["layers"]]:
            raise IhsError(f"{path}: the layers in {DIRECTION_JSON} and {DIRECTION_TENSORS} disagree")
        return cls(layers=layers, vectors=tensors["directions"], mean_norm=np.asarray(meta["mean_norm"]),
                   train_ids=meta["train_ids"], heldout_ids=meta["heldout_ids"], store_ids=meta["store_ids"],
                   positive=meta["positive"], negative=meta["negative"], method=meta.get("method", "diffmean"),
                   model=meta.get("model", {}), info=meta.get("info", {}))


def _diffmean(hidden: np.ndarray, pos: np.ndarray, neg: np.ndarray, layers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, d), mean norms (n,)) for the chosen layers, in float64 then stored as float32."""
    h = hidden[:, layers].astype(np.float64)
    vectors = h[pos].mean(0) - h[neg].mean(0)
    norms = np.linalg.norm(h[pos | neg], axis=-1).mean(0)
    return vectors, norms


def compute_directions(
    store: Any,
    layers: Sequence[int] | None = None,
    positive: Sequence[str] = ("malicious",),
    negative: Sequence[str] = ("normal",),
    train_fraction: float = 0.75,
    seed: int = 0,
    refused: dict[str, bool] | None = None,
) -> SteeringDirections:
    """Difference of means positive - negative at each layer, over the store's training ids only.

    ``refused`` (prompt id -> refused?, from judged generations) switches to the refused-vs-complied
    direction: the groups are then the store's prompts of the ``positive`` classes that have a
    judged answer, split by whether the model refused.
    """
    ids = list(store.ids)
    if len(set(ids)) != len(ids):
        raise StoreError("the store has duplicate prompt ids; de-duplicate before computing directions")
    num_layers = store.hidden.shape[1] - 1
    chosen = list(range(num_layers + 1)) if layers is None else sorted({int(x) for x in layers})
    bad = [x for x in chosen if not 0 <= x <= num_layers]
    if bad:
        raise IhsError(f"layers {bad} are outside 0..{num_layers} (0 = embedding output, i = output of block i)")
    train, heldout = split_ids(ids, train_fraction, seed)
    is_train = np.isin(np.asarray(ids, dtype=object), np.asarray(train, dtype=object))
    labels = np.asarray(store.labels)
    if refused is None:
        method = "diffmean"
        pos_names, neg_names = list(positive), list(negative)
        pos = is_train & np.isin(labels, pos_names)
        neg = is_train & np.isin(labels, neg_names)
        missing = [n for n in [*pos_names, *neg_names] if not np.any(labels == n)]
        if missing:
            raise IhsError(f"the store has no prompts labelled {missing}; its labels are {sorted(set(labels))}")
    else:
        method = "refused-vs-complied"
        attack = np.isin(labels, list(positive))
        judged = np.array([i in refused for i in ids])
        verdict = np.array([bool(refused.get(i, False)) for i in ids])
        pos = is_train & attack & judged & verdict
        neg = is_train & attack & judged & ~verdict
        pos_names = [f"{'+'.join(positive)} refused"]
        neg_names = [f"{'+'.join(positive)} complied"]
    if pos.sum() < 2 or neg.sum() < 2:
        raise IhsError(f"too few training prompts for a direction: {int(pos.sum())} {pos_names} and "
                       f"{int(neg.sum())} {neg_names} (need at least 2 each)")
    vectors, norms = _diffmean(np.asarray(store.hidden), pos, neg, chosen)
    used = set(np.asarray(ids, dtype=object)[pos | neg])
    return SteeringDirections(
        layers=chosen, vectors=vectors, mean_norm=norms,
        train_ids=[i for i in ids if i in used], heldout_ids=heldout, store_ids=ids,
        positive=pos_names, negative=neg_names, method=method,
        model=dict(store.manifest.get("model", {})),
        info={"n_positive": int(pos.sum()), "n_negative": int(neg.sum()), "train_fraction": train_fraction,
              "seed": seed, "store": str(store.path) if store.path else None,
              "split": "sha256(seed:id) < train_fraction -> train; the held-out ids are never averaged"},
    )
