"""Markdown tables of leave-group-out results: one row per held-out group, worst first, methods side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def fmt(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, ``-`` for None or NaN."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _cell(m: dict[str, Any] | None) -> str:
    if not m:
        return "- | - | - / -"
    if "skipped" in m:
        return "skipped | | "
    return f"{fmt(m.get('auroc'))} | {fmt(m.get('tpr_at_1pct_fpr'))} | {fmt(m.get('tpr'))} / {fmt(m.get('fpr'))}"


def _sort_key(entry: dict[str, Any], method: str) -> tuple:
    m = entry.get(method) or {}
    a = m.get("auroc")
    return (a is None, a if a is not None else 0.0)


def groups_markdown(result: dict[str, Any], methods: Sequence[str] | None = None, title: str = "") -> str:
    """One key's (or the random folds') table: rows sorted by the first method's AUROC, worst first."""
    methods = list(methods or result["methods"])
    head = "| group | classes | held (moved) | " + " | ".join(f"{m}: AUROC | TPR@1%FPR | TPR / FPR @thr" for m in methods)
    lines = [title] if title else []
    lines += [head + " |", "|---|---|---|" + "---|---|---|" * len(methods)]
    groups = result["groups"]
    for g in sorted(groups, key=lambda g: _sort_key(groups[g], methods[0])):
        e = groups[g]
        classes = ",".join(e.get("held_classes", [])) or "both"
        held = f"{e.get('n_held', '-')} ({e.get('n_moved', 0)})"
        lines.append(f"| {g} | {classes} | {held} | " + " | ".join(_cell(e.get(m)) for m in methods) + " |")
    lines.append("")
    for m in methods:
        s = result["summary"].get(m) or {}
        lines.append(f"- {m}: worst AUROC {fmt(s.get('worst_auroc'))} ({s.get('worst_group')}), mean "
                     f"{fmt(s.get('mean_auroc'))}; lowest TPR {fmt(s.get('min_tpr'))} ({s.get('min_tpr_group')}); "
                     f"highest FPR {fmt(s.get('max_fpr'))} ({s.get('max_fpr_group')}); {s.get('n_groups')} groups, "
                     f"{s.get('n_skipped')} skipped")
    return "\n".join(lines)


def holdout_markdown(holdout: dict[str, Any]) -> str:
    """Every key's leave-group-out table, then the random-fold table of the same methods."""
    parts = []
    for key, res in holdout.get("keys", {}).items():
        parts.append(groups_markdown(res, title=f"Leave-one-{key}-out (threshold for {fmt(res['target_fpr'], 2)} FPR "
                                                 f"set on the training side; {res['benign_policy']} policy)\n"))
    if holdout.get("random"):
        parts.append(groups_markdown(holdout["random"], title="Random goal-level folds (in distribution)\n"))
    return "\n\n".join(parts)
