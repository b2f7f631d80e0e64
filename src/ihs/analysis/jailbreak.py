"""Jailbreak analysis (Zhou et al., claim 3): early recognition, middle-layer emotion, and the answer.

For every jailbreak input this joins three things from one model:

* **early recognition**: a probe trained per layer on normal vs malicious
  last-token states (from the store), applied to the jailbreak input; "recognised
  early" means the probe at the early layer calls it malicious (normal and malicious
  rows get out-of-fold verdicts, so their shares are held-out accuracies);
* **middle-layer emotion**: the logit-lens top-k of the store at each middle layer,
  matched against the emotion lexicon; the input's middle-layer negative share is
  the fraction of middle layers whose top-k holds a negative token (positive
  likewise), and it "turned negative" when that negative share exceeds the
  positive share;
* **refusal**: the judged generation for the same prompt id (``generations.jsonl``).

The claim predicts: jailbreak inputs are recognised early about as often as
plain malicious ones, but their middle layers turn negative less often, and
among jailbreak inputs those the model refused have more negative middle layers
than those it complied with.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from ihs.analysis.emotion import CODES, EmotionMatcher, emotion_codes
from ihs.analysis.probes import LayerwiseProbe, make_classifier
from ihs.errors import IhsError
from ihs.layers import default_layer_range
from ihs.store import ActivationStore


def default_early_layer(num_layers: int) -> int:
    """The end of the first sixth of depth: ceil(L/6) (Qwen2.5-0.5B, L=24: 4; SmolLM2, L=30: 5)."""
    return max(1, -(-num_layers // 6))


def _mean_ci(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = float(v.mean())
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else float("nan")

    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return {"mean": round(mean, 4), "ci95": [r(mean - half), r(mean + half)], "n": int(v.size)}


def _mann_whitney(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import mannwhitneyu

    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    return float(f"{mannwhitneyu(a, b, alternative='two-sided').pvalue:.3g}")


def jailbreak_analysis(
    store: ActivationStore,
    generations: Sequence[dict[str, Any]],
    text_of: Callable[[int], str] | None = None,
    matcher: EmotionMatcher | None = None,
    middle: tuple[int, int] | None = None,
    early_layer: int | None = None,
    classifier: str = "svm",
    normal: str = "normal",
    malicious: str = "malicious",
    jailbreak: str = "jailbreak",
    group_tag: str = "family",
    seed: int = 42,
) -> dict[str, Any]:
    """Per-input table and group summaries joining probe verdicts, middle-layer emotion and refusal.

    ``generations`` are judged rows (``id``, ``refused``) as written by ``ihs generate``;
    rows of the store without a generation keep ``refused = None``.
    """
    labels = store.labels
    for needed in (normal, malicious, jailbreak):
        if not (labels == needed).any():
            raise IhsError(f"the store has no '{needed}' rows; extract {normal}, {malicious} and {jailbreak} together")
    if store.lens_ids is None:
        raise IhsError("the store has no logit-lens top-k (lens_ids); re-extract it with ihs extract")
    L = store.num_layers
    lo, hi = middle or default_layer_range(L)
    early = default_early_layer(L) if early_layer is None else int(early_layer)
    if not 0 <= early <= L:
        raise IhsError(f"early layer {early} is outside 0..{L}")
    matcher = matcher or EmotionMatcher()
    text_of = text_of or store.token_text

    refused_by_id = {g["id"]: g.get("refused") for g in generations if "refused" in g}
    answers = {g["id"]: g.get("answer", "") for g in generations}
    refused = [refused_by_id.get(i) for i in store.ids]

    train = np.isin(labels, [normal, malicious])
    y = labels[train] == malicious
    probe = LayerwiseProbe(classifier=classifier, seed=seed).fit(store.hidden[train], y)
    verdicts = np.asarray(probe.predict(store.hidden), dtype=bool)  # (L+1, N): predicted malicious
    early_scores = np.asarray(probe.decision_function(store.hidden)[early], dtype=float).ravel()
    # the training rows get out-of-fold verdicts, so their "recognised" shares are held-out accuracies
    folds = StratifiedKFold(n_splits=max(2, min(5, int(y.sum()), int((~y).sum()))), shuffle=True, random_state=seed)
    rows = np.flatnonzero(train)
    for layer in range(L + 1):
        X = np.ascontiguousarray(store.hidden[train, layer])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verdicts[layer, rows] = cross_val_predict(make_classifier(classifier, seed=seed), X, y, cv=folds)
            if layer == early:
                early_scores[rows] = np.asarray(cross_val_predict(make_classifier(classifier, seed=seed), X, y,
                                                                  cv=folds, method="decision_function")).ravel()

    codes = emotion_codes(store.lens_ids, text_of, matcher)  # (N, L+1, k)
    negative = (codes == CODES["negative"]).any(axis=2)  # (N, L+1)
    positive = (codes == CODES["positive"]).any(axis=2)
    mid_neg = negative[:, lo:hi + 1].mean(axis=1)
    mid_pos = positive[:, lo:hi + 1].mean(axis=1)

    table = []
    for i, rec in enumerate(store.records):
        table.append({
            "id": rec["id"], "label": rec["label"], group_tag: rec.get("tags", {}).get(group_tag),
            "early_malicious": bool(verdicts[early, i]), "early_score": round(float(early_scores[i]), 4),
            "mid_negative_share": round(float(mid_neg[i]), 4), "mid_positive_share": round(float(mid_pos[i]), 4),
            "middle_negative": bool(mid_neg[i] > mid_pos[i]),
            "refused": refused[i], "answer": answers.get(rec["id"]),
        })

    is_jb = labels == jailbreak
    groups = {
        normal: labels == normal,
        malicious: labels == malicious,
        f"{jailbreak} refused": is_jb & np.array([r is True for r in refused]),
        f"{jailbreak} complied": is_jb & np.array([r is False for r in refused]),
        f"{jailbreak} (all)": is_jb,
    }
    if (labels == malicious).any() and any(r is not None for r in np.array(refused, dtype=object)[labels == malicious]):
        groups[f"{malicious} refused"] = (labels == malicious) & np.array([r is True for r in refused])
        groups[f"{malicious} complied"] = (labels == malicious) & np.array([r is False for r in refused])
    summary = {}
    for name, mask in groups.items():
        n = int(mask.sum())
        summary[name] = {
            "n": n,
            "early_recognised": round(float(verdicts[early, mask].mean()), 4) if n else None,
            "mid_negative_share": _mean_ci(mid_neg[mask]),
            "mid_positive_share": _mean_ci(mid_pos[mask]),
            "middle_negative": round(float((mid_neg[mask] > mid_pos[mask]).mean()), 4) if n else None,
            "refusal_rate": _rate([refused[i] for i in np.flatnonzero(mask)]),
            "negative_by_layer": [round(float(x), 4) for x in negative[mask].mean(axis=0)] if n else [],
            "positive_by_layer": [round(float(x), 4) for x in positive[mask].mean(axis=0)] if n else [],
            "predicted_malicious_by_layer": [round(float(x), 4) for x in verdicts[:, mask].mean(axis=1)] if n else [],
        }
    ref_mask, comp_mask = groups[f"{jailbreak} refused"], groups[f"{jailbreak} complied"]
    families = {}
    for fam in sorted({r[group_tag] for r, j in zip(table, is_jb, strict=True) if j and r[group_tag]}):
        mask = is_jb & np.array([r[group_tag] == fam for r in table])
        families[fam] = {"n": int(mask.sum()), "refusal_rate": _rate([refused[i] for i in np.flatnonzero(mask)]),
                         "early_recognised": round(float(verdicts[early, mask].mean()), 4),
                         "mid_negative_share": round(float(mid_neg[mask].mean()), 4),
                         "mid_positive_share": round(float(mid_pos[mask].mean()), 4)}
    return {
        "layers": list(range(L + 1)), "middle": [lo, hi], "early_layer": early, "classifier": classifier,
        "probe_training": f"{classifier} per layer on all '{normal}' and '{malicious}' rows of the store; "
                          "jailbreak rows are scored by that probe, the training rows by 5-fold out-of-fold predictions",
        "definitions": {
            "early_recognised": f"the probe at layer {early} predicts '{malicious}'",
            "mid_negative_share": f"fraction of layers {lo}..{hi} whose logit-lens top-{store.lens_ids.shape[2]} "
                                  "holds a negative lexicon token (positive likewise)",
            "middle_negative": "mid_negative_share > mid_positive_share",
        },
        "groups": summary,
        "families": families,
        "refused_vs_complied": {
            "mid_negative_difference": _diff(mid_neg, ref_mask, comp_mask),
            "mid_negative_mannwhitney_p": _mann_whitney(mid_neg[ref_mask], mid_neg[comp_mask]),
            "mid_positive_difference": _diff(mid_pos, ref_mask, comp_mask),
            "mid_positive_mannwhitney_p": _mann_whitney(mid_pos[ref_mask], mid_pos[comp_mask]),
        },
        "n_without_generation": int(sum(r is None for r in refused)),
        "table": table,
    }


def _rate(values: Sequence[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def _diff(values: np.ndarray, a: np.ndarray, b: np.ndarray) -> float | None:
    if not a.any() or not b.any():
        return None
    return round(float(values[a].mean() - values[b].mean()), 4)
