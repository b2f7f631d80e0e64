"""Weak-to-Strong Explanation: per-layer probes on the last-token hidden states.

The paper's first claim is that weak classifiers (a linear SVM, a small MLP) separate malicious
from normal prompts with >95% accuracy already in early layers. A high accuracy alone proves
little, so every number here comes with the controls a reviewer asks for:

- **cross-validation on de-duplicated prompts** (``mode="cv"``, the default): stratified k-fold,
  the scaler fitted inside each fold, duplicates removed before splitting (the paper's files hold
  duplicates that otherwise land on both sides of a split);
- **a shuffled-label control** per layer (selectivity = accuracy minus control accuracy);
- **a bag-of-words baseline** on the raw prompt text: if surface words already separate the
  classes, a hidden-state probe doing the same says little about "concepts";
- **the contrast set's false-positive rate**: benign prompts with trigger words;
- **the last-token confound check**: layer 0 (the embedding output) sees only the last token, so
  a layer-0 accuracy far above chance means the classes differ in their final token;
- **transfer**: a normal-vs-malicious probe scoring jailbreak prompts, and a probe trained on one
  store scoring another store of the same model.

``mode="paper"`` reproduces the paper's own protocol (its ``weak2strong.py``): one unstratified
70/30 ``train_test_split(test_size=0.3, random_state=42)`` of the rows as given, ``SVC(kernel="linear")``
on the raw (unscaled) states and ``MLPClassifier`` (100 hidden units, Adam, lr 0.01, alpha 0.01,
300 iterations, ``random_state=42``) on ``StandardScaler``-ed states; no de-duplication.

Results are plain dicts of lists (JSON-ready); figures live in ``ihs.plots.probes``.
Layer index 0 is the embedding output and index i the output of decoder block i.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ihs.analysis.classifiers import (  # noqa: F401  (the probe API is used through this module)
    CLASSIFIERS,
    CONFOUND_THRESHOLD,
    MODES,
    NEGATIVE_LABEL,
    PAPER_SEED,
    PAPER_TEST_SIZE,
    POSITIVE_LABEL,
    TARGET,
    TRANSFER_LABELS,
    DiffMeanProbe,
    auroc,
    check_hidden,
    check_mode,
    fit_score,
    make_classifier,
    parallel,
    parse_classifiers,
    resolve_layers,
    t_interval,
    wilson_interval,
)
from ihs.analysis.probe_cv import (  # noqa: F401
    LayerwiseProbe,
    cv_predict,
    dedupe_rows,
    default_classes,
    first_layer,
    layer_task,
    nanmean,
    plan_splits,
    summarise_classifier,
)
from ihs.analysis.surface import BagOfWordsBaseline
from ihs.data.validate import dedupe_key
from ihs.errors import IhsError, StoreError


def _ends_with_punct(text: str) -> bool:
    core = text.rstrip().rstrip("\"'”’)]»")
    return bool(core) and core[-1] in ".?"


def probe_store(
    store: Any,
    classifiers: Sequence[str] = ("svm", "mlp", "logreg", "diffmean"),
    mode: str = "cv",
    classes: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = PAPER_SEED,
    control: bool = True,
    bow: bool = True,
    layers: Sequence[int] | None = None,
    n_jobs: int = 1,
    ci: str = "wilson",
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
    by: str | None = "auto",
) -> dict[str, Any]:
    """Probe every layer of one ``ActivationStore``; return the store's section of ``probe.json``.

    ``by`` names a tag (e.g. ``lang``) whose values split the out-of-fold accuracy into groups
    (``result["by"]``); ``"auto"`` uses ``lang`` when the store holds two or more languages.

    ``classes`` (default: every label but contrast and jailbreak, normal first) are the classes the
    probes learn; two classes give binary metrics with the second class as positive. Every other
    label in the store (contrast, jailbreak, ...) is a transfer set: a probe fitted on all training
    rows scores it, and the result is the share predicted as each class per layer.
    ``progress`` is called with 1 after each (classifier, layer) task.
    """
    classifiers = parse_classifiers(classifiers)
    check_mode(mode)
    labels_all = np.asarray(store.labels, dtype=object)
    present = list(dict.fromkeys(str(v) for v in labels_all))
    classes = list(classes) if classes else default_classes(present)
    missing = [c for c in classes if c not in present]
    if missing:
        raise StoreError(f"class {missing[0]!r} is not in store {name or store.path}; it has: {', '.join(present) or 'none'}")
    if len(classes) < 2:
        raise StoreError(f"store {name or store.path} has only one class ({', '.join(present) or 'none'}); "
                         "a probe needs at least two, e.g. normal and malicious")
    num_layers = store.hidden.shape[1] - 1
    layer_list = resolve_layers(layers, num_layers)
    texts = store.prompts
    in_classes = np.flatnonzero(np.isin(labels_all, classes))
    if mode == "cv":
        keep, dedupe = dedupe_rows([texts[i] for i in in_classes], labels_all[in_classes])
        rows = in_classes[keep]
    else:
        rows = in_classes
        _, info = dedupe_rows([texts[i] for i in in_classes], labels_all[in_classes])
        dedupe = {"rows_in": len(rows), "duplicates_dropped": 0, "conflicts_dropped": 0, "rows_kept": len(rows),
                  "duplicates_present": info["duplicates_dropped"] + info["conflicts_dropped"]}
    y = np.array([classes.index(str(v)) for v in labels_all[rows]], dtype=np.int64)
    k = len(classes)
    counts = np.bincount(y, minlength=k)
    if counts.min() == 0:
        raise StoreError(f"class {classes[int(counts.argmin())]!r} has no prompts left after de-duplication")
    splits, control_y, control_splits = plan_splits(y, mode, folds, seed, control)

    # transfer sets: the other labels, without prompts that also occur in the training rows
    train_keys = {dedupe_key(texts[i]) for i in rows}
    extra_rows: dict[str, np.ndarray] = {}
    for lab in present:
        if lab in classes:
            continue
        idx = np.flatnonzero(labels_all == lab)
        kept, seen = [], set()
        for i in idx:
            key = dedupe_key(texts[i])
            if key not in train_keys and key not in seen:
                seen.add(key)
                kept.append(i)
        if kept:
            extra_rows[lab] = np.array(kept, dtype=np.int64)

    hidden = store.hidden
    tasks = [(clf, layer) for clf in classifiers for layer in layer_list]

    args = ((hidden[rows, layer], y, splits, control_y, control_splits,
             {lab: hidden[idx, layer] for lab, idx in extra_rows.items()}, clf, mode, seed, k)
            for clf, layer in tasks)
    t0 = time.perf_counter()
    outs = parallel(layer_task, args, n_jobs, progress)
    wall = time.perf_counter() - t0

    result: dict[str, Any] = {
        "name": name or (store.path.name if getattr(store, "path", None) else "store"),
        "path": str(store.path) if getattr(store, "path", None) else None,
        "model": store.manifest.get("model", {}),
        "chat": store.manifest.get("chat"),
        "final_punct": _final_punct_flag(store),
        "num_layers": num_layers,
        "hidden_size": int(hidden.shape[2]),
        "layers": layer_list,
        "depth": [layer / num_layers if num_layers else 0.0 for layer in layer_list],
        "classes": classes,
        "positive": classes[1] if k == 2 else None,
        "n": {c: int(counts[i]) for i, c in enumerate(classes)},
        "chance": float(counts.max() / counts.sum()),
        "dedupe": dedupe,
        "classifiers": {},
        "sets": {},
        "warnings": [],
        "wall_seconds": wall,
    }
    by_clf: dict[str, list[dict[str, Any]]] = {c: [] for c in classifiers}
    for (clf, _), o in zip(tasks, outs, strict=True):
        by_clf[clf].append(o)
    for clf in classifiers:
        result["classifiers"][clf] = summarise_classifier(by_clf[clf], y, layer_list, num_layers, k, ci)

    for lab, idx in extra_rows.items():
        result["sets"][lab] = _transfer_set(store, idx, lab, classes, classifiers, by_clf, result)
    _convenience_keys(result)
    by_tag = _by_tag(store, rows, by)
    if by_tag:
        result["by"] = by_group(store, rows, y, by_clf, by_tag, layer_list, num_layers)
    if bow:
        result["bow"] = bow_on_splits(texts, rows, y, splits, classes, extra_rows, seed)
    result["confound"] = _confound(store, rows, y, classes, result)
    if result["confound"]["warn"]:
        result["warnings"].append(result["confound"]["message"])
    if mode == "paper" and dedupe.get("duplicates_present"):
        result["warnings"].append(
            f"paper mode keeps duplicates as the paper did: {dedupe['duplicates_present']} duplicate rows can sit "
            "on both sides of the split")
    return result


def _by_tag(store: Any, rows: np.ndarray, by: str | None) -> str | None:
    if by is None or by == "":
        return None
    if by == "auto":
        values = {(store.records[i].get("tags") or {}).get("lang") for i in rows} - {None}
        return "lang" if len(values) > 1 else None
    if not any(by in (store.records[i].get("tags") or {}) for i in rows):
        raise StoreError(f"no prompt of the probed classes has a {by!r} tag")
    return by


def by_group(store: Any, rows: np.ndarray, y: np.ndarray, by_clf: dict[str, list[dict[str, Any]]], tag: str,
             layers: list[int], num_layers: int) -> dict[str, Any]:
    """Out-of-fold accuracy per value of ``tag`` (Wilson 95%), per classifier and layer.

    The folds are those of the pooled probe, which trains on every group at once; a prompt and its
    translation (or any other near copy across groups) can sit on both sides of a split, so this is
    the accuracy of one probe for all groups, not of a probe that never saw the group's content.
    """
    values = np.array([str((store.records[i].get("tags") or {}).get(tag)) for i in rows], dtype=object)
    out: dict[str, Any] = {"tag": tag, "groups": {}}
    for g in sorted(set(values), key=lambda v: (v == "None", v)):
        mask = values == g
        entry: dict[str, Any] = {"n": int(mask.sum()), "classifiers": {}}
        for clf, outs in by_clf.items():
            acc, lo, hi = [], [], []
            for o in outs:
                pred = o["pred"][mask]
                tested = pred >= 0
                correct = int((pred[tested] == y[mask][tested]).sum())
                n = int(tested.sum())
                a, b = wilson_interval(correct, n)
                acc.append(correct / n if n else float("nan"))
                lo.append(a)
                hi.append(b)
            res = {"accuracy": acc, "ci_low": lo, "ci_high": hi}
            res.update(first_layer(acc, layers, num_layers, TARGET))
            entry["classifiers"][clf] = res
        out["groups"][g] = entry
    return out


def _final_punct_flag(store: Any) -> bool | None:
    opts = store.manifest.get("data") or store.manifest.get("prepare") or {}
    if isinstance(opts, dict) and "final_punct" in opts:
        return bool(opts["final_punct"])
    tags = [r.get("tags", {}) for r in store.records]
    return True if any(t.get("punct_added") for t in tags) else None


def _transfer_set(store: Any, idx: np.ndarray, label: str, classes: list[str], classifiers: list[str],
                  by_clf: dict[str, list[dict[str, Any]]], result: dict[str, Any]) -> dict[str, Any]:
    """Share of a transfer set predicted as each class, per layer; and per family when tagged."""
    tags = [store.records[i].get("tags", {}) for i in idx]
    families = [t.get("family") for t in tags]
    has_family = any(f is not None for f in families)
    positive = classes.index(POSITIVE_LABEL) if POSITIVE_LABEL in classes else (1 if len(classes) == 2 else None)
    out: dict[str, Any] = {"n": int(len(idx)), "classifiers": {}}
    for clf in classifiers:
        preds = [o["extra"][label] for o in by_clf[clf]]  # per layer, (n,)
        share = {c: [float(np.mean(p == j)) for p in preds] for j, c in enumerate(classes)}
        entry: dict[str, Any] = {"share": share}
        first = result["classifiers"][clf]["first_layer_95"]
        if first is not None:
            pos = result["layers"].index(first)
            entry["at_first_95"] = {c: share[c][pos] for c in classes}
        if has_family and positive is not None:
            fams: dict[str, Any] = {}
            for fam in sorted({f for f in families if f is not None}):
                mask = np.array([f == fam for f in families])
                fams[str(fam)] = {"n": int(mask.sum()),
                                  "share_positive": [float(np.mean(p[mask] == positive)) for p in preds]}
            entry["by_family"] = fams
        out["classifiers"][clf] = entry
    return out


def _convenience_keys(result: dict[str, Any]) -> None:
    """Contrast false-positive rate and jailbreak-called-malicious, straight on each classifier."""
    classes = result["classes"]
    for clf, entry in result["classifiers"].items():
        contrast = result["sets"].get("contrast", {}).get("classifiers", {}).get(clf)
        if contrast and NEGATIVE_LABEL in classes:
            entry["contrast_fpr"] = [1.0 - v for v in contrast["share"][NEGATIVE_LABEL]]
        jail = result["sets"].get("jailbreak", {}).get("classifiers", {}).get(clf)
        if jail and POSITIVE_LABEL in classes:
            entry["jailbreak_called_malicious"] = jail["share"][POSITIVE_LABEL]


def bow_on_splits(texts: Sequence[str], rows: np.ndarray, y: np.ndarray, splits, classes: list[str],
                  extra_rows: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """The bag-of-words baseline on the raw prompts, on the very same splits as the probes."""
    t = np.asarray([texts[i] for i in rows], dtype=object)
    pred = np.full(len(y), -1, dtype=np.int64)
    for tr, te in splits:
        pred[te] = BagOfWordsBaseline(random_state=seed).fit(t[tr], y[tr]).predict(t[te])
    tested = pred >= 0
    correct = int((pred[tested] == y[tested]).sum())
    lo, hi = wilson_interval(correct, int(tested.sum()))
    out: dict[str, Any] = {"model": "unigram+bigram presence -> logistic regression (ihs.analysis.surface)",
                           "accuracy": correct / int(tested.sum()), "ci_low": lo, "ci_high": hi, "sets": {}}
    if extra_rows:
        full = BagOfWordsBaseline(random_state=seed).fit(t, y)
        for lab, idx in extra_rows.items():
            p = full.predict([texts[i] for i in idx])
            out["sets"][lab] = {c: float(np.mean(p == j)) for j, c in enumerate(classes)}
    if "contrast" in out["sets"] and NEGATIVE_LABEL in classes:
        out["contrast_fpr"] = 1.0 - out["sets"]["contrast"][NEGATIVE_LABEL]
    if "jailbreak" in out["sets"] and POSITIVE_LABEL in classes:
        out["jailbreak_called_malicious"] = out["sets"]["jailbreak"][POSITIVE_LABEL]
    return out


def _confound(store: Any, rows: np.ndarray, y: np.ndarray, classes: list[str], result: dict[str, Any],
              threshold: float = CONFOUND_THRESHOLD) -> dict[str, Any]:
    """Layer 0 sees only the last token: how well does it separate the classes, and why?"""
    texts = store.prompts
    ends = {c: float(np.mean([_ends_with_punct(texts[i]) for i in rows[y == j]])) for j, c in enumerate(classes)}
    layer0 = store.hidden[rows, 0]
    distinct = int(len(np.unique(np.round(layer0, 4), axis=0)))
    out: dict[str, Any] = {"layer0_accuracy": {}, "layer0_balanced_accuracy": {}, "layer0_distinct_states": distinct,
                           "ends_with_punct": ends, "threshold": threshold, "warn": False, "message": None}
    if 0 not in result["layers"]:
        return out
    pos = result["layers"].index(0)
    for clf, entry in result["classifiers"].items():
        out["layer0_accuracy"][clf] = entry["accuracy"][pos]
        out["layer0_balanced_accuracy"][clf] = entry["balanced_accuracy"][pos]
    worst = max(out["layer0_balanced_accuracy"].values())
    spread = max(ends.values()) - min(ends.values())
    if distinct == 1 and spread > 0.5:
        out["warn"] = True
        detail = ", ".join(f"{c} {v:.0%}" for c, v in ends.items())
        out["message"] = (
            "layer 0 cannot show a last-token confound here (every prompt ends in the same template token), "
            f"but the prompts' own endings differ by class (ending in '.' or '?': {detail}) and every later "
            "layer can attend to them. To rule this out, re-extract with `ihs extract --final-punct`.")
    elif worst > threshold:
        out["warn"] = True
        detail = ", ".join(f"{c} {v:.0%}" for c, v in ends.items())
        out["message"] = (
            f"last-token confound: layer 0 (embedding output, sees only the last token) reaches balanced "
            f"accuracy {worst:.2f} > {threshold}; the classes differ in their final token "
            f"(prompts ending in '.' or '?': {detail}). Remedy: re-extract with `ihs extract --final-punct`.")
    return out


def _same_model(a: Any, b: Any) -> bool:
    ma, mb = a.manifest.get("model", {}), b.manifest.get("model", {})
    key = "fingerprint" if ma.get("fingerprint") or mb.get("fingerprint") else "id"
    return (ma.get(key) == mb.get(key) and a.hidden.shape[1:] == b.hidden.shape[1:]
            and a.manifest.get("chat") == b.manifest.get("chat"))


def cross_store_transfer(
    train: Any, test: Any, classes: Sequence[str], classifiers: Sequence[str] = ("svm",), mode: str = "cv",
    seed: int = PAPER_SEED, layers: Sequence[int] | None = None, n_jobs: int = 1,
    train_name: str = "train", test_name: str = "test", progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fit on every de-duplicated row of ``train`` (classes only), score ``test``'s rows of the same
    classes, leaving out test prompts that also occur in ``train``. Both stores must come from one
    model with one formatting, or the hidden states are not comparable."""
    classifiers = parse_classifiers(classifiers)
    if not _same_model(train, test):
        raise StoreError(f"cannot transfer {train_name} -> {test_name}: the stores come from different models "
                         "or formatting")
    classes = list(classes)

    def pick(store: Any, exclude: set[str]) -> tuple[np.ndarray, np.ndarray]:
        lab = np.asarray(store.labels, dtype=object)
        idx = np.flatnonzero(np.isin(lab, classes))
        keep, _ = dedupe_rows([store.prompts[i] for i in idx], lab[idx])
        idx = np.array([i for i in idx[keep] if dedupe_key(store.prompts[i]) not in exclude], dtype=np.int64)
        return idx, np.array([classes.index(str(v)) for v in lab[idx]], dtype=np.int64)

    tr_idx, tr_y = pick(train, set())
    te_idx, te_y = pick(test, {dedupe_key(train.prompts[i]) for i in tr_idx})
    for what, yy in (("training", tr_y), ("test", te_y)):
        if len(np.unique(yy)) < len(classes):
            why = "" if what == "training" else " once prompts that also occur in the training store are left out"
            raise StoreError(f"cannot transfer {train_name} -> {test_name}: the {what} store lacks one of "
                             f"{', '.join(classes)}{why}")
    num_layers = train.hidden.shape[1] - 1
    layer_list = resolve_layers(layers, num_layers)
    k = len(classes)
    tasks = [(clf, layer) for clf in classifiers for layer in layer_list]

    args = ((clf, mode, seed, train.hidden[tr_idx, layer], tr_y, test.hidden[te_idx, layer]) for clf, layer in tasks)
    outs = parallel(fit_score, args, n_jobs, progress)
    res: dict[str, Any] = {"train": train_name, "test": test_name, "classes": classes,
                           "n_train": int(len(tr_idx)), "n_test": int(len(te_idx)), "layers": layer_list,
                           "depth": [layer / num_layers for layer in layer_list], "classifiers": {}}
    for clf in classifiers:
        acc, lo, hi, auc = [], [], [], []
        for (c, _), (pred, score) in zip(tasks, outs, strict=True):
            if c != clf:
                continue
            correct = int((pred == te_y).sum())
            a, b = wilson_interval(correct, len(te_y))
            acc.append(correct / len(te_y))
            lo.append(a)
            hi.append(b)
            auc.append(auroc(te_y, score, k))
        entry = {"accuracy": acc, "ci_low": lo, "ci_high": hi, "auroc": auc}
        entry.update(first_layer(acc, layer_list, num_layers))
        res["classifiers"][clf] = entry
    return res


def probe_stores(
    stores: Mapping[str, Any],
    classifiers: Sequence[str] = ("svm", "mlp", "logreg", "diffmean"),
    mode: str = "cv",
    classes: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = PAPER_SEED,
    control: bool = True,
    bow: bool = True,
    cross: bool = True,
    layers: Sequence[int] | None = None,
    n_jobs: int = 1,
    ci: str = "wilson",
    progress: Callable[[int], None] | None = None,
    by: str | None = "auto",
) -> dict[str, Any]:
    """Probe several stores (e.g. a base and an aligned model, or one model on two prompt sets).

    With ``cross``, every ordered pair of stores from the same model and formatting also gets a
    cross-dataset transfer (train on one, test on the other). Returns the whole ``probe.json``.
    """
    import ihs

    classifiers = parse_classifiers(classifiers)
    check_mode(mode)
    if not stores:
        raise IhsError("no store given")
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "analysis": "probe", "ihs_version": ihs.__version__, "mode": mode, "classifiers": classifiers,
        "folds": folds if mode == "cv" else None, "test_size": PAPER_TEST_SIZE if mode == "paper" else None,
        "seed": seed, "target": TARGET, "ci": f"{ci} 95%" + (" (pooled out-of-fold predictions)" if ci == "wilson" else
                                                             " (over folds)"),
        "layer_convention": "0 = embedding output, i = output of decoder block i (before the final norm)",
        "stores": [], "cross_transfer": [], "warnings": [],
    }
    for name, store in stores.items():
        out["stores"].append(probe_store(store, classifiers, mode, classes, folds, seed, control, bow, layers,
                                         n_jobs, ci, name, progress, by))
    if cross and len(stores) > 1:
        names = list(stores)
        for a in names:
            for b in names:
                if a == b or not _same_model(stores[a], stores[b]):
                    continue
                ca = next(s for s in out["stores"] if s["name"] == a)["classes"]
                cb = next(s for s in out["stores"] if s["name"] == b)["classes"]
                if ca != cb:
                    continue
                try:
                    out["cross_transfer"].append(cross_store_transfer(
                        stores[a], stores[b], ca, classifiers, mode, seed, layers, n_jobs, a, b, progress))
                except StoreError as exc:  # e.g. the same prompts twice: nothing left to test on
                    out["warnings"].append(f"skipped: {exc}")
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def count_tasks(stores: Mapping[str, Any], classifiers: Sequence[str], layers: Sequence[int] | None,
                cross: bool) -> int:
    """Number of (classifier, layer) tasks ``probe_stores`` will report to ``progress``."""
    n = 0
    for store in stores.values():
        n += len(classifiers) * len(resolve_layers(layers, store.hidden.shape[1] - 1))
    if cross:
        for a in stores:
            for b in stores:
                if a != b and _same_model(stores[a], stores[b]):
                    n += len(classifiers) * len(resolve_layers(layers, stores[a].hidden.shape[1] - 1))
    return n
