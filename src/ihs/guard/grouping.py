"""Groups and kinds of prompts for the guard: what a held-out group is, what a benign or malicious kind is.

A guard that generalises must hold on *families* of prompts it never saw. The group keys here name
such families (one value per record, or None for a record outside every group):

- any key of :func:`ihs.analysis.group_splits.group_values`: ``dataset``, ``label`` or a tag
  (``family``, ``category``, ``kind``, ``reformulation``, ``position``, ``lang``, ...); a comma list takes
  the first present;
- ``KEY:malicious`` or ``KEY:benign``: the same, grouping only the rows of one class (``category:malicious``
  is the malicious categories; the benign rows' topics stay ungrouped and free to train);
- ``malicious-kind``: each malicious row's finest kind, prefixed by its set: a jailbreak family, a
  reformulation kind, a buried position, a plain request's harm category (``reformulated:past_tense``);
- ``benign-kind``: the same for benign rows: a wrapper family, an alarming kind, a contrast kind, a
  buried position, a normal prompt's form (``wrapped:developer_mode``);
- ``auto``: ``malicious-kind`` and ``benign-kind`` together, the key the guard's own selection holds
  groups out by.

A record's *kind* (:func:`kind_of`) is its set's short name (``normal``, ``wrapped``, ``reformulated``,
a user file's name): the threshold is calibrated to hold on every benign kind, and rates are reported
per kind.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from ihs.analysis.group_splits import group_values
from ihs.errors import IhsError
from ihs.guard.linear import BENIGN_LABELS, MALICIOUS_LABELS

#: tags naming a row's finest kind, in the order they are tried
SUBKIND_TAGS: tuple[str, ...] = ("family", "reformulation", "kind", "position", "form", "lang", "category")
DERIVED_KEYS: tuple[str, ...] = ("auto", "malicious-kind", "benign-kind")


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def _tags(record: Any) -> dict[str, Any]:
    tags = _field(record, "tags")
    return tags if isinstance(tags, dict) else {}


def kind_of(record: Any) -> str:
    """The record's set as a short name: a built-in set's name, a file's name without its suffix (and without a
    ``:column``), else its dataset as given (``hf:...``)."""
    dataset = str(_field(record, "dataset") or _field(record, "label") or "?")
    if dataset.startswith("builtin:"):
        return dataset.removeprefix("builtin:").split(":", 1)[0]
    if dataset.startswith("hf:"):
        return dataset
    path = dataset.rsplit(":", 1)[0] if ":" in dataset.rsplit("/", 1)[-1] else dataset
    return PurePath(path).stem or dataset


def subkind_of(record: Any) -> str:
    """``kind:value`` with the record's finest kind tag (``wrapped:developer_mode``), or the kind alone."""
    tags = _tags(record)
    for t in SUBKIND_TAGS:
        v = tags.get(t)
        if v not in (None, ""):
            return f"{kind_of(record)}:{v}"
    return kind_of(record)


def binary_y(records: Sequence[Any], benign: Sequence[str] = BENIGN_LABELS,
             malicious: Sequence[str] = MALICIOUS_LABELS) -> np.ndarray:
    """True for malicious rows; a label in neither list is a one-line error naming the set it came from."""
    out = []
    for r in records:
        lab = str(_field(r, "label"))
        if lab in malicious:
            out.append(True)
        elif lab in benign:
            out.append(False)
        else:
            raise IhsError(f"label {lab!r} (set {kind_of(r)}) is neither benign ({', '.join(benign)}) nor malicious "
                           f"({', '.join(malicious)}); name a data set after its class, e.g. malicious=FILE")
    return np.asarray(out, dtype=bool)


def group_of(records: Sequence[Any], key: str, y: np.ndarray | None = None) -> np.ndarray:
    """One group name (str) or None per record for ``key`` (see the module docstring). An unknown key is an
    ``IhsError`` listing what the records have."""
    key = key.strip()
    if not key:
        raise IhsError("empty group key")
    y = binary_y(records) if y is None else np.asarray(y).astype(bool)
    if key in DERIVED_KEYS:
        want = {"auto": (True, False), "malicious-kind": (True,), "benign-kind": (False,)}[key]
        return np.asarray([subkind_of(r) if bool(v) in want else None for r, v in zip(records, y, strict=True)],
                          dtype=object)
    base, _, cls = key.partition(":")
    if cls and cls not in ("malicious", "benign"):
        raise IhsError(f"unknown class {cls!r} in group key {key!r}; use KEY:malicious or KEY:benign")
    try:
        values = group_values(records, base)
    except IhsError:
        present = sorted({t for r in records for t in _tags(r)})
        raise IhsError(f"unknown group key {base!r}: no prompt has it; use dataset, label, "
                       f"{', '.join(DERIVED_KEYS)} or a tag ({', '.join(present) or 'none present'})") from None
    if base == "dataset":
        values = np.asarray([None if v is None else kind_of(r) for r, v in zip(records, values, strict=True)],
                            dtype=object)
    if cls:
        keep = y if cls == "malicious" else ~y
        values = np.asarray([v if k else None for v, k in zip(values, keep, strict=True)], dtype=object)
        if all(v is None for v in values):
            raise IhsError(f"no {cls} prompt has the key {base!r}")
    return values


def check_groups(values: np.ndarray, key: str) -> list[str]:
    """The sorted group names; a group of one row, or fewer than two groups, is a one-line error."""
    present = np.asarray([v for v in values if v is not None], dtype=object)
    if len(present) == 0:
        raise IhsError(f"no prompt has the group key {key!r}")
    names, counts = np.unique(present.astype(str), return_counts=True)
    single = [str(n) for n, c in zip(names, counts, strict=True) if c == 1]
    if single:
        raise IhsError(f"group {single[0]!r} of key {key!r} has only one prompt; a held-out group needs at least "
                       f"two ({len(single)} such groups)")
    if len(names) < 2:
        raise IhsError(f"key {key!r} gives {len(names)} group; leave-group-out needs at least two")
    return [str(n) for n in names]


@functools.cache
def builtin_label(name: str) -> str | None:
    """The label a built-in set gives its rows (``wrapped``: benign, ``reformulated``: malicious), or None."""
    from ihs.data.builtin import BUILTIN_NAMES, load_builtin

    base = name.split(":", 1)[0]
    if base not in BUILTIN_NAMES:
        return None
    labels = {r.label for r in load_builtin(base)}
    return labels.pop() if len(labels) == 1 else None


def with_class_labels(records: Sequence[dict[str, Any]], benign: Sequence[str] = BENIGN_LABELS,
                      malicious: Sequence[str] = MALICIOUS_LABELS) -> list[dict[str, Any]]:
    """Records of a set whose name is not a class (``wrapped=builtin:wrapped``, ``buried=builtin:buried``) take
    their row's ``class`` tag as label when it is a class, else the built-in set's own label; the set name stays
    in ``tags["set"]``."""
    known = set(benign) | set(malicious)
    out = []
    for r in records:
        r = dict(r)
        if str(r.get("label")) not in known:
            cls = _tags(r).get("class")
            dataset = str(r.get("dataset") or "")
            own = builtin_label(dataset.removeprefix("builtin:")) if dataset.startswith("builtin:") else None
            new = cls if cls in known else own if own in known else None
            if new is not None:
                r["tags"] = {**_tags(r), "set": r.get("label")}
                r["label"] = new
        out.append(r)
    return out
