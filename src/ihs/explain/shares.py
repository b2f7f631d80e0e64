"""Where the attribution lands: its share on alarming words and on a marked span, per prompt and per class.

For one prompt, :func:`token_share` is the sum of |score| over the user's tokens in a mask divided by the sum
of |score| over all user tokens, beside the share of user tokens in the mask (what an even spread would
give). :func:`class_shares` averages them per class, with the lift (share / uniform) and 95% percentile
bootstrap intervals over prompts (:func:`bootstrap_mean`). Alarming words are the shipped harm concepts'
words and every contrast prompt's trigger (:func:`alarming_words`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ihs.analysis.classifiers import bootstrap_interval
from ihs.explain.concepts import HARM_CONCEPTS, ConceptLibrary

BOOTSTRAP = 2000


def alarming_words(records: Sequence[Any]) -> list[str]:
    """The alarming-word lexicon: the shipped harm concepts' words and every contrast trigger in the data."""
    lib = ConceptLibrary.default()
    words = {w.casefold() for name in HARM_CONCEPTS if name in lib.concepts for w in lib.concepts[name].words}
    words |= {str(r.tags["trigger"]).casefold() for r in records if (r.tags or {}).get("trigger")}
    return sorted(w for w in words if w.strip())


def word_spans(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of whole-word occurrences of any of ``words`` (case-insensitive)."""
    if not words:
        return []
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                         + r")(?!\w)", re.IGNORECASE)
    return [(m.start(), m.end()) for m in pattern.finditer(text)]


def token_share(scores: np.ndarray, user: np.ndarray, mask: np.ndarray) -> tuple[float | None, float | None]:
    """(share of |attribution| of the user tokens on ``mask``, share of user tokens in ``mask``)."""
    total = np.abs(scores[user]).sum()
    n = int(user.sum())
    if n == 0 or not mask[user].any():
        return None, None
    return (float(np.abs(scores[user & mask]).sum() / total) if total > 0 else None), float(mask[user].sum() / n)


def bootstrap_mean(values: Sequence[float], *, resamples: int = BOOTSTRAP, seed: int = 0,
                   level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (resampling prompts); None under 3 values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) < 3:
        return None
    return list(bootstrap_interval(v, resamples=resamples, seed=seed, level=level))


def class_shares(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per class: mean share of |attribution| on alarming words and on the marked span, against the share of
    user tokens they are (what a uniform attribution would give), over the prompts that have such tokens.

    ``lift`` is the mean over prompts of share / uniform (1: no more than an even spread); ``share_ci`` and
    ``lift_ci`` are 95% percentile bootstrap intervals over prompts (none under 3 prompts); ``above`` counts
    the prompts whose share exceeds their uniform share."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(it["label"] for it in items):
        entry: dict[str, Any] = {"n": sum(it["label"] == label for it in items)}
        for kind in ("alarm", "marked"):
            rows = [it for it in items if it["label"] == label and it[f"{kind}_share"] is not None]
            got = [it[f"{kind}_share"] for it in rows]
            base = [it[f"{kind}_tokens"] for it in rows]
            lift = [g / b for g, b in zip(got, base, strict=True) if b]
            entry[kind] = {"prompts": len(got), "share": float(np.mean(got)) if got else None,
                           "uniform": float(np.mean(base)) if base else None,
                           "share_ci": bootstrap_mean(got), "lift": float(np.mean(lift)) if lift else None,
                           "lift_ci": bootstrap_mean(lift),
                           "above": int(sum(g > b for g, b in zip(got, base, strict=True)))}
        out[label] = entry
    return out
