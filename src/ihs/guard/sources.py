"""Where a guard's evaluation reads from: its training data (a store or a feature bank), other stores and banks.

A guard card names the data it was fitted on (``data.stores`` or ``data.bank``) and the ids of its
training, calibration and test prompts. From them: the training pool for leave-group-out runs, the
records the bag-of-words baseline is fitted on, and the guard's logits on any store or bank of the
same model read the same way (no forward pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ihs.errors import IhsError, StoreError
from ihs.guard.bank import FeatureBank
from ihs.guard.features import REFUSAL, Features
from ihs.guard.fit_pooled import usable_rows
from ihs.guard.guard import Guard
from ihs.guard.heads import Recipe, parse_kind
from ihs.guard.holdout import (
    Method,
    bow_method,
    holdout_eval,
    legacy_method,
    nested_method,
    random_folds_eval,
    recipe_method,
)
from ihs.guard.linear import BENIGN_LABELS, MALICIOUS_LABELS


def store_features(store: Any) -> Features:
    """A store's last-token states at every layer as :class:`Features`."""
    return Features({"last": np.asarray(store.hidden)}, {"last": list(range(store.hidden.shape[1]))})


def training_source(guard: Guard) -> tuple[list[dict[str, Any]], Features] | None:
    """(records, features) of the data the guard was fitted on (its bank, or its stores pooled), or None."""
    data = guard.card.get("data") or {}
    if data.get("bank"):
        if not Path(data["bank"]).is_dir():
            return None
        bank = FeatureBank.load(data["bank"])
        return bank.records, bank.features
    paths = [Path(p) for p in data.get("stores") or ([data["store"]] if data.get("store") else [])]
    if not paths or not all(p.is_dir() for p in paths):
        return None
    from ihs.guard.inputs import pool_stores

    store = pool_stores(paths)
    return list(store.records), store_features(store)


def fitted_records(guard: Guard, records: Sequence[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """The guard's training and calibration records among ``records`` (by id)."""
    ids = guard.card.get("splits", {}).get("ids", {})
    tr, ca = set(ids.get("train", [])), set(ids.get("calibration", []))
    return [r for r in records if r["id"] in tr], [r for r in records if r["id"] in ca]


def check_bank(guard: Guard, bank: FeatureBank, name: str) -> None:
    """A bank can be scored only if it holds the guard's model, formatting and features, read the same way."""
    m = bank.model
    if guard.fingerprint and m.get("fingerprint") != guard.fingerprint:
        raise StoreError(f"bank {name} holds features of model {m.get('name')!r} ({m.get('fingerprint')}), not the "
                         f"guard's {guard.model_name!r} ({guard.fingerprint})")
    if bool(m.get("chat")) != bool(guard.model.get("chat")) or m.get("system_prompt") != guard.model.get("system_prompt"):
        raise StoreError(f"bank {name} was formatted differently (chat/system prompt) from the guard's training data")
    spec, want = bank.spec, guard.spec
    if guard.recipe.pooling != "last" and (spec.pool_start != want.pool_start or
                                           (guard.recipe.pooling == "ema" and spec.ema_halflife != want.ema_halflife)):
        raise StoreError(f"bank {name} pooled its states differently from the guard (start {spec.pool_start}, EMA "
                         f"half-life {spec.ema_halflife}; the guard: {want.pool_start}, {want.ema_halflife})")
    if guard.recipe.refusal and (spec.refusal_ids != want.refusal_ids or spec.compliance_ids != want.compliance_ids):
        raise StoreError(f"bank {name} read the refusal margin with other tokens than the guard")
    for kind, layers in guard.recipe.needs().items():
        if not bank.features.has(kind, layers):
            raise StoreError(f"bank {name} holds no {kind} features at layers {layers} (the guard's kind {guard.kind})")


def decision_on(guard: Guard, feats: Features, rows: np.ndarray, name: str) -> np.ndarray:
    """The guard's logits for ``rows`` of features read from a store or bank."""
    if guard.recipe.legacy:
        return guard.decision_states(feats.take("last", [guard.layer], rows)[:, 0])
    for kind, layers in guard.recipe.needs().items():
        if not feats.has(kind, layers):
            what = "pooled states" if kind != REFUSAL else "refusal margins"
            raise StoreError(f"{name} holds no {what} at layers {layers} for this guard ({guard.kind}); evaluate it "
                             "with --bank or --data")
    return guard.decision_features(feats.subset(rows))


def guard_method(guard: Guard, feats: Features, name: str | None = None) -> Method:
    """The guard's kind as a method refitted on every training side (today's recipe keeps its single threshold)."""
    if guard.recipe.legacy:
        return legacy_method(feats, guard.layer, guard.classifier, name=name or f"guard {guard.kind}")
    return recipe_method(feats, guard.recipe, name=name or f"guard {guard.kind}")


def holdout_for_guard(guard: Guard, keys: Sequence[str], *, compare: Sequence[tuple[str, Guard | str]] = (),
                      bow: bool = True, nested: Any = None, benign: str = "pool", random_folds: int = 5,
                      min_group: int = 2, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Leave-one-group-out over each key on the guard's training pool (its bank or stores), for the guard's kind,
    the ``compare`` kinds (a saved guard or a kind name, with a display name), bag-of-words and, with ``nested``
    (selection options), a guard whose kind is chosen again inside every split."""
    source = training_source(guard)
    if source is None:
        raise IhsError("leave-group-out needs the guard's training data (its bank or stores), which is not there; "
                       "refit the guard or give its bank")
    records, feats = source
    benign_labels = guard.card.get("data", {}).get("benign_labels") or BENIGN_LABELS
    malicious_labels = guard.card.get("data", {}).get("malicious_labels") or MALICIOUS_LABELS
    rows, _ = usable_rows(records, benign_labels, malicious_labels)
    recs, feats = [records[i] for i in rows], feats.subset(rows)
    methods = [guard_method(guard, feats, "guard")]
    for label, other in compare:
        if isinstance(other, Guard):
            if other.fingerprint != guard.fingerprint:
                raise IhsError(f"compared guard {label!r} was fitted on another model")
            method = guard_method(other, feats, label)
            sets = (other.card.get("data") or {}).get("sets")
            if sets:  # a guard fitted on some sets only fits and calibrates on those in every split too
                from ihs.guard.grouping import kind_of

                method.allowed = np.asarray([kind_of(r) in set(sets) for r in recs], dtype=bool)
            methods.append(method)
        else:
            recipe = parse_kind(other, int(guard.model.get("num_layers") or guard.layer))
            methods.append(recipe_method(feats, recipe, name=label))
    if bow:
        methods.append(bow_method([r["text"] for r in recs]))
    if nested is not None:
        from ihs.guard.grouping import binary_y

        methods.append(nested_method(feats, recs, binary_y(recs), nested))
    common = {"target_fpr": guard.target_fpr, "seed": seed, "progress": progress}
    out: dict[str, Any] = {"n": len(recs), "methods": [m.name for m in methods], "keys": {}}
    for key in keys:
        out["keys"][key] = holdout_eval(recs, key, methods, benign=benign, min_group=min_group, **common)
    if random_folds:
        out["random"] = random_folds_eval(recs, methods, folds=random_folds, **common)
    return out


def compare_kind(text: str, num_layers: int) -> Recipe:
    """A kind name to compare against (``--compare-kind``), checked against the model's depth."""
    return parse_kind(text, num_layers)
