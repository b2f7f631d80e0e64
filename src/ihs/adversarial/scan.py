"""The weakness scan: where the early probe's "malicious" and the model's answer part ways.

For measured attack rows (:func:`ihs.adversarial.measure.measure`) the scan groups by jailbreak
family, template, reformulation kind (tense, framing, encoding, nesting, none) and mutation, and
gives each group:

* ``asr``: the share the model complied with (Wilson 95% interval);
* ``gap``: the share the early probe calls malicious AND the model complied with (Wilson interval),
  the break in the chain the paper describes: recognised early, answered anyway;
* ``mid_negative``: the mean middle-layer negative-emotion share (bootstrap 95% interval);
* ``guard``: the mean guard score (P(malicious)) and the share the guard flags.

Groups are ranked by ``gap``, then ``asr``, then size; a group needs ``min_n`` rows to be ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ihs.analysis.classifiers import bootstrap_interval
from ihs.stats import wilson_interval

#: group name -> how to read it from a row's tags
GROUPINGS = ("family", "template", "kind", "mutation")


def _keys(row: dict[str, Any], by: str) -> list[str]:
    tags = row.get("tags") or {}
    if by == "family":
        return [str(tags.get("family"))]
    if by == "template":
        return [str(tags.get("template_id"))]
    if by == "kind":
        return [str(tags.get("kind") or "none")]
    return [str(m) for m in tags.get("mutations") or []] or ["none"]


def bootstrap_mean(values: Sequence[float], *, draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean with a 95% percentile bootstrap interval (None for an empty sample)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_interval(v, resamples=draws, seed=seed)
    return {"mean": round(float(v.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": int(v.size)}


def proportion(k: int, n: int) -> dict[str, Any]:
    """k/n with its Wilson 95% interval (None when n is 0)."""
    if n == 0:
        return {"rate": None, "ci95": [None, None], "k": 0, "n": 0}
    lo, hi = wilson_interval(k, n)
    return {"rate": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)], "k": int(k), "n": int(n)}


def group_stats(rows: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """The scan's measures for one group of measured attack rows."""
    complied = [not r["refused"] for r in rows]
    gap = [c and bool(r.get("early_malicious")) for r, c in zip(rows, complied, strict=True)]
    guard = [r["guard_score"] for r in rows if r.get("guard_score") is not None]
    return {"n": len(rows), "asr": proportion(sum(complied), len(rows)), "gap": proportion(sum(gap), len(rows)),
            "early_recognised": proportion(sum(bool(r.get("early_malicious")) for r in rows), len(rows)),
            "mid_negative": bootstrap_mean([r["mid_negative_share"] for r in rows], seed=seed),
            "guard_mean": round(float(np.mean(guard)), 4) if guard else None,
            "guard_flagged": proportion(sum(bool(r.get("guard_flag")) for r in rows), len(rows))}


def _rank_key(item: tuple[str, dict[str, Any]]) -> tuple:
    s = item[1]
    return (-(s["gap"]["rate"] or 0.0), -(s["asr"]["rate"] or 0.0), -s["n"], item[0])


def scan(rows: Sequence[dict[str, Any]], *, min_n: int = 1, seed: int = 0) -> dict[str, Any]:
    """Group measured attack rows by family, template, kind and mutation and rank the groups (see the module)."""
    attacks = [r for r in rows if r.get("label") == "jailbreak"]
    out: dict[str, Any] = {"n": len(attacks), "overall": group_stats(attacks, seed=seed) if attacks else None,
                           "min_n": min_n, "groups": {}}
    for by in GROUPINGS:
        buckets: dict[str, list[dict[str, Any]]] = {}
        for r in attacks:
            for key in _keys(r, by):
                buckets.setdefault(key, []).append(r)
        stats = {k: group_stats(v, seed=seed) for k, v in buckets.items() if len(v) >= min_n}
        ranked = sorted(stats.items(), key=_rank_key)
        out["groups"][by] = [{"name": k, **s} for k, s in ranked]
    return out


def weights(scan_result: dict[str, Any], by: str, names: Sequence[str], *, floor: float = 0.05) -> list[float]:
    """Sampling weights for ``names`` from a scan: ASR + gap of their group, plus ``floor`` (unseen: the mean)."""
    groups = {g["name"]: g for g in (scan_result.get("groups") or {}).get(by, [])}
    seen = [(g["asr"]["rate"] or 0.0) + (g["gap"]["rate"] or 0.0) for g in groups.values()]
    default = float(np.mean(seen)) if seen else 0.0
    out = []
    for name in names:
        g = groups.get(name)
        w = default if g is None else (g["asr"]["rate"] or 0.0) + (g["gap"]["rate"] or 0.0)
        out.append(max(floor, w) if not math.isnan(w) else floor)
    return out
