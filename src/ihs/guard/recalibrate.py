"""Recalibrating a guard on deployment traffic: a new threshold from benign prompts, held on each of their kinds."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ihs.errors import DataError
from ihs.guard.grouping import kind_of
from ihs.guard.guard import Guard


def kinds_of(records: Sequence[dict[str, Any]], key: str | None) -> list[str]:
    """One kind per record: the value of ``key`` (a tag or a record field) where given, else the record's set."""
    out = []
    for r in records:
        v = None
        if key:
            v = r.get(key) if key in ("dataset", "label") else (r.get("tags") or {}).get(key)
        out.append(str(v) if v not in (None, "") else kind_of(r))
    return out


def recalibrate(guard: Guard, records: Sequence[dict[str, Any]], logits: np.ndarray, *,
                target_fpr: float | None = None, kind_key: str | None = None, per_kind: bool = True,
                source: Sequence[str] = ()) -> dict[str, Any]:
    """Set ``guard``'s threshold from its logits on benign ``records`` (every kind meets the target with
    ``per_kind``); returns and records in the card the realised FPR per kind at the old and the new threshold."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        raise DataError("no benign prompts to recalibrate on")
    kinds = np.asarray(kinds_of(records, kind_key), dtype=object)
    before = float(guard.threshold_logit)
    previous = {"threshold": guard.threshold, "threshold_logit": before, "target_fpr": guard.target_fpr}
    realised = guard.calibrate_logits(logits, target_fpr, kinds.tolist() if per_kind else None)
    table = {}
    for k in sorted(set(kinds.tolist())):
        m = kinds == k
        table[k] = {"n": int(m.sum()), "fpr_before": float(np.mean(logits[m] > before)),
                    "fpr": float(np.mean(logits[m] > guard.threshold_logit))}
    report = {"source": list(source), "n": int(len(logits)), "kind_key": kind_key, "per_kind_rule": per_kind,
              "target_fpr": guard.target_fpr, "previous": previous, "threshold": guard.threshold,
              "threshold_logit": guard.threshold_logit, "fpr": realised,
              "fpr_before": float(np.mean(logits > before)), "by_kind": table,
              "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    guard.card["recalibration"] = report
    return report
