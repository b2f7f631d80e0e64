"""Choosing a guard's kind by leave-group-out cross-validation on its training prompts only.

Folds hold out whole groups (default key ``auto``: every jailbreak and wrapper family, reformulation
kind, alarming and contrast kind, buried position, harm category and normal form is a group; see
:mod:`ihs.guard.grouping`). Groups are dealt into ``folds`` folds; a fold trains on the rows of the
other folds' groups, except rows that share a goal with a held-out row (they move to the test side)
and a fixed pool of goals that never trains. A group is scored on its own rows plus the pool's rows
of a class it lacks, so every group, benign-only or malicious-only, gets an AUROC.

The criterion of a candidate is the mean of its mean and its worst group AUROC (groups of at least
``min_group`` rows), so a kind that is excellent on average but fails one family loses to one that
holds everywhere. The search is staged to stay cheap: (1) a logistic head on each pooling at each
layer of the bank's grid; (2) for the two best poolings, their best two or three layers and the
window around the best layer, concatenated or averaged; (3) for the best two so far, an MLP head and
the refusal margin added. Among candidates within ``tolerance`` of the best criterion the one that
stops earliest wins (then fewer layers, then a linear head): an earlier exit is a cheaper guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ihs.analysis.group_splits import goal_components, stratified_components
from ihs.errors import IhsError
from ihs.guard.features import POOLINGS, REFUSAL, Features
from ihs.guard.grouping import group_of
from ihs.guard.heads import Recipe, fit_head
from ihs.guard.metrics import auroc


@dataclass
class SelectOptions:
    """The candidate kinds and the inner cross-validation that compares them."""

    poolings: Sequence[str] = POOLINGS
    heads: Sequence[str] = ("logreg", "mlp")
    combines: Sequence[str] = ("concat", "mean")
    refusal: bool = True
    layers: Sequence[int] | None = None
    key: str = "auto"
    folds: int = 4
    pool_fraction: float = 0.2
    min_group: int = 5
    tolerance: float = 0.005
    seed: int = 0

    def validate(self) -> None:
        bad = [p for p in self.poolings if p not in POOLINGS]
        if bad or not self.poolings:
            raise IhsError(f"unknown pooling {bad[0] if bad else '(none)'!r}; choose from {', '.join(POOLINGS)}")
        if self.folds < 2:
            raise IhsError(f"selection needs at least 2 folds, got {self.folds}")
        if not 0 < self.pool_fraction < 1:
            raise IhsError(f"pool fraction must be between 0 and 1, got {self.pool_fraction}")


@dataclass
class Fold:
    train: np.ndarray
    test: np.ndarray
    groups: dict[str, np.ndarray]  # group -> rows scored for it (its rows + pool rows of a class it lacks)
    sizes: dict[str, int]  # group -> its own rows


def grouped_folds(records: Sequence[Any], y: np.ndarray, key: str, folds: int, *, pool_fraction: float = 0.2,
                  seed: int = 0) -> list[Fold]:
    """``folds`` folds of whole groups of ``key`` (goals never split, a fixed never-trained pool); see the module."""
    y = np.asarray(y).astype(bool)
    values = group_of(records, key, y)
    comp = goal_components(records)
    rng = np.random.default_rng(seed)
    pool_comps = stratified_components(comp, y, np.arange(len(y)), pool_fraction, rng, leave=1)
    in_pool = np.isin(comp, pool_comps)
    names = sorted({str(v) for v in values if v is not None})
    if len(names) < folds:
        raise IhsError(f"key {key!r} gives {len(names)} groups, fewer than the {folds} selection folds")
    sizes = {n: int(np.sum(values == n)) for n in names}
    order = sorted(rng.permutation(names).tolist(), key=lambda n: -sizes[n])
    load = np.zeros(folds)
    fold_of: dict[str, int] = {}
    for n in order:  # biggest groups first, each to the lightest fold
        f = int(np.argmin(load))
        fold_of[n] = f
        load[f] += sizes[n]
    out = []
    for f in range(folds):
        held_names = [n for n in names if fold_of[n] == f]
        held = np.flatnonzero(np.isin(values.astype(str), held_names) & (values != None))  # noqa: E711
        in_test = np.isin(comp, np.unique(comp[held])) | in_pool
        groups, own = {}, {}
        for n in held_names:
            rows = np.flatnonzero(values == n)
            lacking = [c for c in (False, True) if not (y[rows] == c).any()]
            extra = np.flatnonzero(in_pool & np.isin(y, lacking) & (values != n))
            groups[n] = np.union1d(rows, extra)
            own[n] = int(len(rows))
        out.append(Fold(train=np.flatnonzero(~in_test), test=np.flatnonzero(in_test), groups=groups, sizes=own))
    return out


def evaluate_recipe(feats: Features, y: np.ndarray, folds: Sequence[Fold], recipe: Recipe, *, seed: int = 0,
                    min_group: int = 5) -> dict[str, Any]:
    """Per-group AUROC of ``recipe`` over the folds, its mean, worst and the criterion (mean of the two)."""
    y = np.asarray(y).astype(bool)
    per_group: dict[str, float] = {}
    for fold in folds:
        tr = fold.train
        if y[tr].all() or not y[tr].any():
            continue
        head = fit_head(recipe.head, recipe.design(feats, tr), y[tr].astype(int), seed=seed, calibrate=False)
        scores = np.full(len(y), np.nan)
        scores[fold.test] = head.logit(recipe.design(feats, fold.test))
        for name, rows in fold.groups.items():
            if fold.sizes[name] >= min_group:
                per_group[name] = auroc(y[rows], scores[rows])
    aucs = {k: v for k, v in per_group.items() if np.isfinite(v)}
    if not aucs:
        return {"recipe": recipe.name, "criterion": float("nan"), "mean": None, "worst": None, "worst_group": None}
    worst = min(aucs, key=aucs.get)
    mean = float(np.mean(list(aucs.values())))
    return {"recipe": recipe.name, "criterion": 0.5 * (mean + aucs[worst]), "mean": mean, "worst": aucs[worst],
            "worst_group": worst, "n_groups": len(aucs)}


def _rank(entries: list[tuple[Recipe, dict]]) -> list[tuple[Recipe, dict]]:
    return sorted((e for e in entries if np.isfinite(e[1]["criterion"])), key=lambda e: -e[1]["criterion"])


def _stage_two(ranked: list[tuple[Recipe, dict]], grid: dict[str, list[int]],
               combines: Sequence[str]) -> list[Recipe]:
    """Multi-layer candidates for the two best poolings: their best 2 and 3 layers, and the best layer's window."""
    out: list[Recipe] = []
    poolings = list(dict.fromkeys(r.pooling for r, _ in ranked))[:2]
    for p in poolings:
        layers = [r.layers[0] for r, _ in ranked if r.pooling == p]
        g = grid[p]
        best = layers[0]
        i = g.index(best)
        sets = [tuple(layers[:2]), tuple(layers[:3]), tuple(g[max(0, i - 1): i + 2])]
        for s in dict.fromkeys(tuple(sorted(s)) for s in sets if len(s) > 1):
            out += [Recipe(layers=s, pooling=p, combine=c) for c in combines]
    return out


def select_recipe(feats: Features, records: Sequence[Any], y: np.ndarray, options: SelectOptions | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Compare candidate kinds by leave-group-out CV on these (training) rows; returns the table and the choice."""
    options = options or SelectOptions()
    options.validate()
    t0 = time.perf_counter()
    y = np.asarray(y).astype(bool)
    folds = grouped_folds(records, y, options.key, options.folds, pool_fraction=options.pool_fraction,
                          seed=options.seed)
    grid = {p: [v for v in feats.layers.get(p, []) if options.layers is None or v in set(options.layers)]
            for p in options.poolings if p in feats.layers}
    if "last" in grid and any(p != "last" for p in grid):  # the last token on the same grid as the other poolings
        others = sorted({v for p, ls in grid.items() if p != "last" for v in ls})
        grid["last"] = [v for v in grid["last"] if v in others] or grid["last"]
    grid = {p: ls for p, ls in grid.items() if ls}
    if not grid:
        raise IhsError("the features hold none of the candidate poolings at the candidate layers")
    seen: dict[str, tuple[Recipe, dict]] = {}

    def run(recipes: Sequence[Recipe]) -> None:
        for r in recipes:
            if r.name not in seen:
                seen[r.name] = (r, evaluate_recipe(feats, y, folds, r, seed=options.seed, min_group=options.min_group))
            if progress:
                progress(1)

    run([Recipe(layers=(v,), pooling=p) for p, ls in grid.items() for v in ls])
    ranked = _rank(list(seen.values()))
    if not ranked:
        raise IhsError("no candidate kind could be scored under leave-group-out; give more varied training data")
    run(_stage_two(ranked, grid, options.combines))
    top = [r for r, _ in _rank(list(seen.values()))[:2]]
    third = []
    for r in top:
        can_refuse = options.refusal and feats.has(REFUSAL, r.layers)
        for head in options.heads:
            for refusal in ((False, True) if can_refuse else (False,)):
                third.append(Recipe(layers=r.layers, pooling=r.pooling, combine=r.combine, head=head, refusal=refusal))
    run(third)
    ranked = _rank(list(seen.values()))
    best = ranked[0][1]["criterion"]
    close = [(r, m) for r, m in ranked if m["criterion"] >= best - options.tolerance]
    chosen, metrics = min(close, key=lambda e: (e[0].deepest, len(e[0].layers), e[0].head == "mlp",
                                                 -e[1]["criterion"]))
    return {"chosen": chosen.to_dict() | {"name": chosen.name}, "chosen_metrics": metrics,
            "candidates": [m for _, m in ranked], "options": {k: (list(v) if isinstance(v, tuple) else v)
                                                              for k, v in asdict(options).items()},
            "n_folds": len(folds), "grid": grid, "seconds": time.perf_counter() - t0}


def count_candidates(feats: Features, options: SelectOptions) -> int:
    """About how many candidates :func:`select_recipe` scores (for a progress bar)."""
    layers = {v for p in options.poolings for v in feats.layers.get(p, [])
              if options.layers is None or v in set(options.layers)}
    stage_one = len([p for p in options.poolings if p in feats.layers]) * max(1, len(layers))
    return stage_one + 6 * len(options.combines) + 4 * len(options.heads)
