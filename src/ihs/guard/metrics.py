"""Detection metrics and thresholds of the guard: AUROC, TPR at a false-positive rate, thresholds overall and per kind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ihs.errors import DataError, IhsError

#: Relative margin above the boundary benign score: the same prompt scored in another batch moves by about 1e-5
#: (float32 sums in another order), which must not flip the prompt the threshold was set on.
NOISE_MARGIN = 1e-4


def calibrate_threshold(benign_scores: Sequence[float], target_fpr: float) -> float:
    """The lowest threshold t with share(benign_scores > t) <= target_fpr.

    With n benign scores at most floor(target_fpr * n) of them lie strictly above t, so the rule
    ``p > t`` meets the target on these scores exactly (ties included).
    """
    s = np.sort(np.asarray(benign_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise DataError("no benign prompts to calibrate the threshold on")
    if not 0.0 <= target_fpr < 1.0:
        raise IhsError(f"target FPR must be in [0, 1), got {target_fpr}")
    allowed = int(np.floor(target_fpr * len(s) + 1e-9))
    return float(s[allowed])


def calibrate_by_kind(benign_scores: Sequence[float], kinds: Sequence[Any], target_fpr: float,
                      ) -> tuple[float, dict[str, dict[str, Any]]]:
    """A threshold meeting ``target_fpr`` on every benign kind at once, and the realised rate per kind.

    Each kind gets its own threshold (:func:`calibrate_threshold` on its scores); the guard takes the
    highest, so no kind of benign prompt in the calibration set is flagged more often than the target, plus
    :data:`NOISE_MARGIN` (relative) so that batching noise cannot flip the boundary prompt.
    Returns ``(threshold, {kind: {"n", "threshold", "fpr"}})`` where ``fpr`` is read at the common threshold.
    """
    s = np.asarray(benign_scores, dtype=np.float64)
    k = np.asarray([str(v) for v in kinds], dtype=object)
    if len(s) != len(k):
        raise IhsError(f"{len(k)} kinds for {len(s)} benign scores")
    if len(s) == 0:
        raise DataError("no benign prompts to calibrate the threshold on")
    per = {str(v): calibrate_threshold(s[k == v], target_fpr) for v in sorted(set(k.tolist()))}
    top = max(per.values())
    threshold = top + NOISE_MARGIN * (1.0 + abs(top))
    report = {v: {"n": int((k == v).sum()), "threshold": t, "fpr": float(np.mean(s[k == v] > threshold))}
              for v, t in per.items()}
    return threshold, report


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """TPR at the threshold calibrated on this set's own benign scores for ``fpr`` (NaN without both classes)."""
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        return float("nan")
    t = calibrate_threshold(scores[~y], fpr)
    return float(np.mean(scores[y] > t))


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with malicious (1/True) as the positive class; NaN without both classes."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, scores))


def rate(flags: np.ndarray) -> float | None:
    """Share of True in ``flags``; None when empty."""
    return float(np.mean(flags)) if len(flags) else None


def finite_or_none(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def set_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts, AUROC, TPR at 1% FPR on the set's own benign rows (an oracle threshold), TPR and FPR at ``threshold``.

    A metric that needs a class the set lacks is None.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    flagged = s > threshold
    return {"n_malicious": int(y.sum()), "n_benign": int((~y).sum()),
            "auroc": finite_or_none(auroc(y, s)), "tpr_at_1pct_fpr": finite_or_none(tpr_at_fpr(y, s, 0.01)),
            "tpr": rate(flagged[y]), "fpr": rate(flagged[~y])}
