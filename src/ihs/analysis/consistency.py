"""Top-K Intermediate Consistency (TKIC): how much the logit-lens top-k agrees across inputs of a class.

Definition (Zhou et al. 2024, section 4.3, made precise here). For one class c of N inputs and one
layer l, each input i has a top-k list T_i(l) of decoded token ids (k = 5 in the paper).

* ``count(t) = |{i : t in T_i(l)}|``: a token is counted at most once per input;
* the layer's consistency list is the k tokens with the largest counts, with shares
  ``share(t) = count(t) / N`` in [0, 1] (ties: larger count first, then smaller summed rank
  within the lists, i.e. the token that sits higher, then smaller token id);
* the model's scalar over a layer range R (default: the middle third of depth, see
  :func:`default_layer_range`) is ``TKIC_top1 = mean over l in R of the top-1 share``; the mean
  over l in R of the mean of the k shares (``TKIC_topk``) is reported beside it.

A value of 1 means every input of the class has the same token in its top-k at every layer of
the range; a value near k/V means the lists share nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Token id used to pad a layer with fewer than k distinct tokens.
PAD = -1


@dataclass
class Consistency:
    """Per layer: the k most frequent top-k tokens of a class and their shares (count / N)."""

    tokens: np.ndarray  # (n_layers, k) int, PAD where fewer than k distinct tokens exist
    counts: np.ndarray  # (n_layers, k) int
    n: int
    layers: list[int]

    @property
    def shares(self) -> np.ndarray:
        return self.counts / self.n if self.n else np.full(self.counts.shape, np.nan)

    @property
    def k(self) -> int:
        return int(self.tokens.shape[1])

    def scalar(self, layer_range: tuple[int, int]) -> dict[str, float | None]:
        """``top1``: mean top-1 share over layers lo..hi (inclusive); ``topk``: mean of all k shares there."""
        lo, hi = layer_range
        rows = [i for i, layer in enumerate(self.layers) if lo <= layer <= hi]
        if not rows or not self.n:
            return {"top1": None, "topk": None}
        shares = self.shares[rows]
        return {"top1": round(float(shares[:, 0].mean()), 4), "topk": round(float(shares.mean()), 4)}

    def to_json(self, text_of=None) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "layers": self.layers,
                               "tokens": self.tokens.tolist(), "shares": np.round(self.shares, 4).tolist()}
        if text_of is not None:
            out["text"] = [[None if t == PAD else text_of(int(t)) for t in row] for row in self.tokens]
        return out


def layer_consistency(ids: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most frequent tokens over N top-k lists ``ids`` (N, k_in), each counted once per list.

    Returns (tokens, counts), both of length k, padded with ``PAD`` / 0.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"expected (N, k) top-k lists, got shape {ids.shape}")
    k = ids.shape[1] if k is None else int(k)
    tokens = np.full(k, PAD, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    if ids.size == 0:
        return tokens, counts
    n, width = ids.shape
    flat = ids.reshape(-1).astype(np.int64)
    rows = np.repeat(np.arange(n), width)
    ranks = np.tile(np.arange(width), n)
    # keep the first (highest) occurrence of each token within a list
    order = np.lexsort((ranks, flat, rows))
    f, r, rk = flat[order], rows[order], ranks[order]
    first = np.ones(len(f), dtype=bool)
    first[1:] = (f[1:] != f[:-1]) | (r[1:] != r[:-1])
    f, rk = f[first], rk[first]
    uniq, inverse = np.unique(f, return_inverse=True)
    cnt = np.bincount(inverse)
    rank_sum = np.bincount(inverse, weights=rk)
    best = np.lexsort((uniq, rank_sum, -cnt))[:k]
    tokens[: len(best)] = uniq[best]
    counts[: len(best)] = cnt[best]
    return tokens, counts


def top_k_consistency(lens_ids: np.ndarray, k: int | None = None, layers: list[int] | None = None) -> Consistency:
    """TKIC lists for every layer of ``lens_ids`` (N, L+1, k_in): one class's top-k lists."""
    lens_ids = np.asarray(lens_ids)
    if lens_ids.ndim != 3:
        raise ValueError(f"expected lens ids of shape (N, L+1, k), got {lens_ids.shape}")
    k = lens_ids.shape[2] if k is None else int(k)
    layer_index = list(range(lens_ids.shape[1])) if layers is None else [int(x) for x in layers]
    tokens = np.full((len(layer_index), k), PAD, dtype=np.int64)
    counts = np.zeros((len(layer_index), k), dtype=np.int64)
    for row, layer in enumerate(layer_index):
        tokens[row], counts[row] = layer_consistency(lens_ids[:, layer], k)
    return Consistency(tokens=tokens, counts=counts, n=int(lens_ids.shape[0]), layers=layer_index)


