"""Splits for leave-group-out evaluation: reading records, group values, goal components, the splits.

The protocol is described in :mod:`ihs.analysis.groups`, which evaluates scorers on these splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ihs.data.validate import dedupe_key
from ihs.errors import IhsError

#: Labels read as malicious / benign when ``y`` is not given (the guard's defaults).
MALICIOUS_LABELS: tuple[str, ...] = ("malicious", "jailbreak", "harmful")
BENIGN_LABELS: tuple[str, ...] = ("normal", "contrast", "benign", "harmless")
#: Tags whose values name a record's goal.
GOAL_TAGS: tuple[str, ...] = ("goal_id", "goal_source_id", "src_id")
POLICIES: tuple[str, ...] = ("pool", "own")

#: fit(train indices, their labels) -> score(indices) -> scores, higher = more malicious.
Scorer = Callable[[np.ndarray], np.ndarray]
ScorerFactory = Callable[[np.ndarray, np.ndarray], Scorer]


# -- reading records (PromptRecord objects or plain dicts) --------------------------------------


def _field(record: Any, name: str) -> Any:
    if isinstance(record, dict):
        return record.get(name)
    return getattr(record, name, None)


def _tags(record: Any) -> dict:
    tags = _field(record, "tags")
    return tags if isinstance(tags, dict) else {}


def record_text(record: Any) -> str | None:
    text = _field(record, "text")
    if text is None and isinstance(record, dict):
        text = record.get("prompt")
    return text if isinstance(text, str) else None


def binary_labels(records: Sequence[Any], *, malicious: Sequence[str] = MALICIOUS_LABELS,
                  benign: Sequence[str] = BENIGN_LABELS) -> np.ndarray:
    """``y`` (True = malicious) from the records' labels; a label in neither list is an error."""
    mal, ben = set(malicious), set(benign)
    y = []
    for r in records:
        lab = str(_field(r, "label"))
        if lab in mal:
            y.append(True)
        elif lab in ben:
            y.append(False)
        else:
            raise IhsError(f"label {lab!r} is neither malicious ({', '.join(sorted(mal))}) nor benign "
                           f"({', '.join(sorted(ben))}); pass y explicitly")
    return np.asarray(y, dtype=bool)


def split_keys(key: str | Sequence[str]) -> list[str]:
    parts = key.split(",") if isinstance(key, str) else list(key)
    keys = [k.strip() for k in parts if k and k.strip()]
    if not keys:
        raise IhsError("empty group key")
    return keys


def group_values(records: Sequence[Any], key: str | Sequence[str]) -> np.ndarray:
    """One group value (a string, or None when absent) per record for ``key``.

    ``key`` is ``"dataset"``, ``"label"`` or a tag name, or several (a list or a comma-separated
    string) of which the first present wins. A key that no record has is an error.
    """
    keys = split_keys(key)
    out: list[str | None] = []
    for r in records:
        value = None
        for k in keys:
            v = _field(r, k) if k in ("dataset", "label") else _tags(r).get(k)
            if v is not None and str(v) != "":
                value = str(v)
                break
        out.append(value)
    if records and all(v is None for v in out):
        present = sorted({t for r in records for t in _tags(r)})
        raise IhsError(f"unknown group key {','.join(keys)!r}: no record has it; use dataset, label or a tag "
                       f"({', '.join(present) or 'none present'})")
    return np.asarray(out, dtype=object)


def goal_components(records: Sequence[Any], *, goal_tags: Sequence[str] = GOAL_TAGS) -> np.ndarray:
    """Component number per record: records linked by a shared goal (see the module docstring)."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, r in enumerate(records):
        links: list[str] = []
        rid = _field(r, "id")
        if rid is not None:
            links.append(f"g:{rid}")
        text = record_text(r)
        if text is not None:
            links.append(f"t:{dedupe_key(text)}")
        tags = _tags(r)
        for t in goal_tags:
            if tags.get(t) not in (None, ""):
                links.append(f"g:{tags[t]}")
        sid = tags.get("source_id")
        if sid not in (None, ""):
            dataset = str(_field(r, "dataset") or "")
            links.append(f"g:{sid}" if dataset.startswith("builtin:") else f"g:{dataset}#{sid}")
        for link in links:
            j = first.setdefault(link, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = [find(i) for i in range(len(records))]
    _, comp = np.unique(np.asarray(roots, dtype=np.int64), return_inverse=True)
    return comp.astype(np.int64)


# -- splits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSplit:
    """One held-out group: index arrays into the records.

    ``train`` and ``test`` never share a row, a goal component or the group. ``test`` = ``held``
    (the group's rows) + ``moved`` (other rows sharing a goal with them) + ``pool`` (the fixed pool,
    ``"pool"`` policy only). ``evaluate`` is what the group's metrics use: ``held`` plus the pool
    rows of a class the group lacks.
    """

    group: str
    train: np.ndarray
    test: np.ndarray
    held: np.ndarray
    moved: np.ndarray
    pool: np.ndarray
    evaluate: np.ndarray


def stratified_components(comp: np.ndarray, y: np.ndarray, rows: np.ndarray, fraction: float,
                           rng: np.random.Generator, *, min_each: int = 1, leave: int = 0) -> np.ndarray:
    """A seeded ``fraction`` of the goal components among ``rows``, taken per class (a component is
    malicious when any of its rows is), at least ``min_each`` and leaving at least ``leave`` per class."""
    comps = np.unique(comp[rows])
    is_mal = np.bincount(comp[rows], weights=y[rows].astype(np.float64), minlength=int(comp.max()) + 1)[comps] > 0
    chosen = []
    for cls in (False, True):
        pool = comps[is_mal == cls]
        k = int(round(fraction * len(pool)))
        k = min(max(k, min_each), len(pool) - leave)
        if k > 0:
            chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def check_inputs(records: Sequence[Any], y: np.ndarray | None) -> np.ndarray:
    if len(records) == 0:
        raise IhsError("no records to split")
    y = binary_labels(records) if y is None else np.asarray(y).astype(bool)
    if len(y) != len(records):
        raise IhsError(f"y has {len(y)} labels for {len(records)} records")
    n_mal = int(y.sum())
    if n_mal == 0 or n_mal == len(y):
        raise IhsError(f"leave-group-out needs benign and malicious rows; got {len(y) - n_mal} benign, {n_mal} malicious")
    return y


def group_splits(
    records: Sequence[Any],
    key: str | Sequence[str],
    *,
    y: np.ndarray | None = None,
    benign: str = "pool",
    pool_fraction: float = 0.2,
    seed: int = 0,
    goal_tags: Sequence[str] = GOAL_TAGS,
) -> list[GroupSplit]:
    """One :class:`GroupSplit` per group of ``key``, in sorted group order (see the module docstring).

    ``y`` (True = malicious) defaults to :func:`binary_labels`. Errors (``IhsError``): no records, no
    benign or no malicious rows, an unknown key, a group of one row, fewer than two groups, an
    unknown ``benign`` policy, a pool fraction outside (0, 1).
    """
    y = check_inputs(records, y)
    if benign not in POLICIES:
        raise IhsError(f"unknown benign policy {benign!r}; use one of {', '.join(POLICIES)}")
    if benign == "pool" and not 0.0 < pool_fraction < 1.0:
        raise IhsError(f"pool fraction must be between 0 and 1, got {pool_fraction}")
    values = group_values(records, key)
    present = np.asarray([v is not None for v in values], dtype=bool)
    names, counts = np.unique(values[present].astype(str), return_counts=True)
    single = [str(n) for n, c in zip(names, counts, strict=True) if c == 1]
    if single:
        raise IhsError(f"group {single[0]!r} of key {key!r} has only one row; a group needs at least two "
                       f"({len(single)} such groups); merge or drop them")
    if len(names) < 2:
        raise IhsError(f"key {key!r} gives {len(names)} group(s); leave-group-out needs at least two")
    comp = goal_components(records, goal_tags=goal_tags)
    all_rows = np.arange(len(records))
    pool_comps = np.empty(0, dtype=np.int64)
    if benign == "pool":
        pool_comps = stratified_components(comp, y, all_rows, pool_fraction, np.random.default_rng(seed), leave=1)
    in_pool = np.isin(comp, pool_comps)
    splits = []
    for name in names:
        held = np.flatnonzero(values == name)
        in_test = np.isin(comp, np.unique(comp[held])) | in_pool
        test = np.flatnonzero(in_test)
        moved = np.flatnonzero(in_test & ~in_pool & (values != name))
        pool = np.flatnonzero(in_pool & (values != name))
        lacking = [cls for cls in (False, True) if not (y[held] == cls).any()]
        extra = pool[np.isin(y[pool], lacking)] if lacking else np.empty(0, dtype=np.int64)
        splits.append(GroupSplit(group=str(name), train=np.flatnonzero(~in_test), test=test, held=held,
                                 moved=moved, pool=pool, evaluate=np.sort(np.concatenate([held, extra]))))
    return splits


def leave_one_group_out(records: Sequence[Any], key: str | Sequence[str], **options: Any,
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(train, test)`` index arrays, one pair per held-out group (options of :func:`group_splits`)."""
    for split in group_splits(records, key, **options):
        yield split.train, split.test


def random_splits(records: Sequence[Any], *, y: np.ndarray | None = None, folds: int = 5, seed: int = 0,
                  goal_tags: Sequence[str] = GOAL_TAGS) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` random (train, test) splits over whole goal components, each fold's components
    dealt per class so both classes appear in every fold: the in-distribution comparison."""
    y = check_inputs(records, y)
    if folds < 2:
        raise IhsError(f"folds must be at least 2, got {folds}")
    comp = goal_components(records, goal_tags=goal_tags)
    rng = np.random.default_rng(seed)
    comps = np.unique(comp)
    is_mal = np.bincount(comp, weights=y.astype(np.float64))[comps] > 0
    fold_of = np.empty(len(comps), dtype=np.int64)
    for cls in (False, True):
        idx = np.flatnonzero(is_mal == cls)
        if len(idx) < folds:
            raise IhsError(f"{folds} folds need at least {folds} {'malicious' if cls else 'benign'} goals, got {len(idx)}")
        order = rng.permutation(idx)
        fold_of[order] = np.arange(len(order)) % folds
    row_fold = fold_of[np.searchsorted(comps, comp)]
    return [(np.flatnonzero(row_fold != f), np.flatnonzero(row_fold == f)) for f in range(folds)]
