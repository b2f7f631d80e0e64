"""Languages: per-language probes, cross-lingual transfer, emotion and script of lens tokens, refusal.

Does "early layers recognise malicious intent" hold beyond English? Given one store whose prompts
carry a language tag (``lang``; ``builtin:multilingual`` sets it, files can have a ``lang`` column or
``--lang``), this module answers with four measurements:

* **per-language accuracy**: the probe protocol of ``ihs probe`` (stratified k-fold, scaler inside
  the fold, Wilson interval, shuffled-label control) run inside each language alone, so no
  translation of a test prompt is ever in the training folds;
* **cross-lingual transfer**: per layer, fit on every prompt of the source language (English) and
  score each other language, and the reverse (fit on each language, score English). The training
  and test prompts are translations of each other, so transfer measures whether the concept the
  probe found is shared across languages, not whether it generalises to new requests. A
  shuffled-label fit gives the chance line of each transfer;
* **emotion and script of the logit lens per language**: the share of prompts whose top-k decoded
  tokens hold a negative emotion word (English lexicon: the paper's words) for malicious and normal
  input, and the Unicode script the decoded tokens are written in (Latin, Han, Bengali, ...);
* **refusal per language** from ``ihs generate`` rows (judged by the phrase judge, whose phrase
  list covers every language of the built-in set), with the share an English-only phrase list
  would have caught, and the script of the answers.

Layer index 0 is the embedding output and index i the output of decoder block i.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ihs.analysis.probes import (
    LayerwiseProbe,
    dedupe_rows,
    first_layer,
    fit_score,
    parse_classifiers,
    resolve_layers,
    wilson_interval,
)
from ihs.errors import DataError, StoreError

DEFAULT_TAG = "lang"
DEFAULT_SOURCE = "en"
CLASSES = ("normal", "malicious")
TARGET = 0.95
#: the script each built-in language is written in
EXPECTED_SCRIPT: dict[str, str] = {"en": "latin", "es": "latin", "fr": "latin", "sw": "latin", "zh": "han",
                                   "bn": "bengali", "hi": "devanagari", "ar": "arabic", "ru": "cyrillic",
                                   "ja": "han", "ko": "hangul"}

# -- Unicode script of a decoded token -----------------------------------------------------------

#: first word of a character's Unicode name -> script (CJK ideographs are "han", fullwidth Latin "latin")
_NAME_TO_SCRIPT = {"CJK": "han", "FULLWIDTH": "latin", "HALFWIDTH": "kana", "KANGXI": "han", "IDEOGRAPHIC": "han"}
_SCRIPT_CACHE: dict[str, str] = {}


def char_script(ch: str) -> str | None:
    """Script of one letter or combining mark ("latin", "han", "bengali", ...); None for anything else."""
    cat = unicodedata.category(ch)
    if not (cat.startswith("L") or cat.startswith("M")):
        return None
    try:
        first = unicodedata.name(ch).split()[0]
    except ValueError:
        return "other"
    if first in ("HIRAGANA", "KATAKANA"):
        return "kana"
    return _NAME_TO_SCRIPT.get(first, first.lower())


def token_script(text: str) -> str:
    """Script of a decoded token: the script most of its letters are in.

    "bytes" when it holds U+FFFD (a piece of a multi-byte character: byte-level tokenizers split
    Bengali and Chinese into such pieces), "none" when it has no letters (spaces, digits,
    punctuation, special tokens); ties go to the script met first.
    """
    if text in _SCRIPT_CACHE:
        return _SCRIPT_CACHE[text]
    if "\ufffd" in text:
        result = "bytes"
    else:
        counts = Counter(s for s in (char_script(ch) for ch in text) if s is not None)
        result = counts.most_common(1)[0][0] if counts else "none"
    if len(_SCRIPT_CACHE) < 500_000:
        _SCRIPT_CACHE[text] = result
    return result


def text_script(text: str) -> str:
    """Script of a longer text (an answer): most of its letters; "none" without letters."""
    counts = Counter(s for s in (char_script(ch) for ch in text) if s is not None)
    return counts.most_common(1)[0][0] if counts else "none"


# -- groups ----------------------------------------------------------------------------------------


def group_values(records: Sequence[dict[str, Any]], tag: str = DEFAULT_TAG) -> np.ndarray:
    """The tag's value per record (``None`` where missing), as an object array."""
    return np.array([(r.get("tags") or {}).get(tag) for r in records], dtype=object)


def ordered_groups(values: Sequence[Any], source: str | None = DEFAULT_SOURCE) -> list[str]:
    """Distinct tag values: the source first, then the built-in language order, then the rest sorted."""
    from ihs.data.multilingual import LANGUAGES

    present = {str(v) for v in values if v is not None}
    order = [g for g in ([source] if source else []) + list(LANGUAGES) if g in present]
    return list(dict.fromkeys(order + sorted(present - set(order))))


def _rows_for(texts: Sequence[str], labels: np.ndarray, groups: np.ndarray, classes: Sequence[str],
              group: str) -> tuple[np.ndarray, np.ndarray]:
    """De-duplicated row indices of one group with a label in ``classes``, and their 0/1.. targets."""
    idx = np.flatnonzero((groups == group) & np.isin(labels, list(classes)))
    keep, _ = dedupe_rows([texts[i] for i in idx], labels[idx])
    idx = idx[keep]
    return idx, np.array([list(classes).index(str(v)) for v in labels[idx]], dtype=np.int64)


# -- per-language cross-validation ---------------------------------------------------------------


def per_group_cv(hidden: np.ndarray, labels: Sequence[str], groups: Sequence[Any], texts: Sequence[str],
                 classes: Sequence[str] = CLASSES, classifier: str = "svm", folds: int = 5, seed: int = 42,
                 layers: Sequence[int] | None = None, control: bool = True,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """k-fold accuracy per layer inside each group alone (Wilson 95% interval, shuffled-label control)."""
    labels = np.asarray([str(v) for v in labels], dtype=object)
    groups = np.asarray(groups, dtype=object)
    num_layers = hidden.shape[1] - 1
    layer_list = resolve_layers(layers, num_layers)
    out: dict[str, Any] = {}
    for g in ordered_groups(groups):
        idx, y = _rows_for(texts, labels, groups, classes, g)
        counts = np.bincount(y, minlength=len(classes))
        if counts.min() < folds:
            out[g] = {"n": {c: int(counts[i]) for i, c in enumerate(classes)}, "skipped":
                      f"too few prompts for {folds}-fold CV (smallest class {int(counts.min())})"}
            if progress:
                progress(1)
            continue
        probe = LayerwiseProbe(classifier, "cv", layer_list, seed)
        res = probe.cross_validate(hidden[idx], y, folds=folds, control=control)
        entry = {"n": {c: int(counts[i]) for i, c in enumerate(classes)}, "accuracy": res["accuracy"],
                 "ci_low": res["ci_low"], "ci_high": res["ci_high"], "auroc": res["auroc"],
                 "control_accuracy": res.get("control_accuracy"),
                 "first_layer_95": res["first_layer_95"], "first_layer_95_ci": res["first_layer_95_ci"],
                 "best_layer": res["best_layer"], "best_accuracy": res["best_accuracy"]}
        out[g] = entry
        if progress:
            progress(1)
    return {"classifier": classifier, "folds": folds, "layers": layer_list, "groups": out}


# -- cross-lingual transfer ----------------------------------------------------------------------


def _transfer_one(hidden: np.ndarray, tr: np.ndarray, tr_y: np.ndarray, te: np.ndarray, te_y: np.ndarray,
                  layers: list[int], classifier: str, seed: int, shuffled: bool) -> dict[str, Any]:
    y_fit = np.random.default_rng(seed).permutation(tr_y) if shuffled else tr_y
    acc, lo, hi = [], [], []
    for layer in layers:
        pred, _ = fit_score(classifier, "cv", seed, hidden[tr, layer], y_fit, hidden[te, layer])
        correct = int((pred == te_y).sum())
        a, b = wilson_interval(correct, len(te_y))
        acc.append(correct / len(te_y))
        lo.append(a)
        hi.append(b)
    return {"accuracy": acc, "ci_low": lo, "ci_high": hi}


def transfer(hidden: np.ndarray, labels: Sequence[str], groups: Sequence[Any], texts: Sequence[str],
             source: str = DEFAULT_SOURCE, classes: Sequence[str] = CLASSES, classifier: str = "svm",
             seed: int = 42, layers: Sequence[int] | None = None, control: bool = True,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per layer: fit on all of ``source``, score each other group ("forward"); fit on each group, score
    ``source`` ("reverse"). ``control`` adds the same with shuffled training labels (chance line)."""
    labels = np.asarray([str(v) for v in labels], dtype=object)
    groups = np.asarray(groups, dtype=object)
    num_layers = hidden.shape[1] - 1
    layer_list = resolve_layers(layers, num_layers)
    names = ordered_groups(groups, source)
    if source not in names:
        raise StoreError(f"no prompt of the source group {source!r}; groups present: {', '.join(names) or 'none'}")
    src_idx, src_y = _rows_for(texts, labels, groups, classes, source)
    if len(np.unique(src_y)) < len(classes):
        raise StoreError(f"the source group {source!r} lacks one of {', '.join(classes)}")
    num_layers = hidden.shape[1] - 1
    out: dict[str, Any] = {"source": source, "classifier": classifier, "layers": layer_list,
                           "depth": [layer / num_layers for layer in layer_list], "forward": {}, "reverse": {}}
    for g in names:
        if g == source:
            continue
        idx, y = _rows_for(texts, labels, groups, classes, g)
        if len(np.unique(y)) < len(classes):
            continue
        for direction, (tr, tr_y, te, te_y) in (("forward", (src_idx, src_y, idx, y)),
                                                ("reverse", (idx, y, src_idx, src_y))):
            entry = _transfer_one(hidden, tr, tr_y, te, te_y, layer_list, classifier, seed, False)
            entry.update(first_layer(entry["accuracy"], layer_list, num_layers, TARGET))
            entry["n_train"], entry["n_test"] = int(len(tr)), int(len(te))
            if control:
                entry["control_accuracy"] = _transfer_one(hidden, tr, tr_y, te, te_y, layer_list, classifier, seed,
                                                          True)["accuracy"]
            out[direction][g] = entry
            if progress:
                progress(1)
    return out


# -- logit lens: emotion and script per language ---------------------------------------------------


def lens_by_group(lens_ids: np.ndarray, text_of: Callable[[int], str], labels: Sequence[str],
                  groups: Sequence[Any], classes: Sequence[str] = CLASSES, matcher: Any = None) -> dict[str, Any]:
    """Per group, class and layer: share of prompts with a negative / positive emotion token in the top-k,
    and the share of all top-k tokens in each script (plus the share in the group's own script)."""
    from ihs.analysis.emotion import CODES, EmotionMatcher, emotion_codes

    matcher = matcher or EmotionMatcher()
    lens_ids = np.asarray(lens_ids)
    labels = np.asarray([str(v) for v in labels], dtype=object)
    groups = np.asarray(groups, dtype=object)
    codes = emotion_codes(lens_ids, text_of, matcher)
    unique = np.unique(lens_ids)
    scripts_of = {int(t): token_script(text_of(int(t))) for t in unique}
    all_scripts = sorted(set(scripts_of.values()))
    script_idx = np.array([all_scripts.index(scripts_of[int(t)]) for t in unique])
    sc = script_idx[np.searchsorted(unique, lens_ids)]  # (N, L+1, k)
    out: dict[str, Any] = {"k": int(lens_ids.shape[2]), "layers": list(range(lens_ids.shape[1])), "groups": {}}
    for g in ordered_groups(groups):
        entry: dict[str, Any] = {"expected_script": EXPECTED_SCRIPT.get(g), "classes": {}}
        for c in classes:
            rows = (groups == g) & (labels == c)
            n = int(rows.sum())
            if n == 0:
                continue
            cg, sg = codes[rows], sc[rows]
            shares = {s: (sg == i).mean(axis=(0, 2)).round(4).tolist() for i, s in enumerate(all_scripts)}
            entry["classes"][c] = {
                "n": n,
                "negative_topk": (cg == CODES["negative"]).any(axis=2).mean(axis=0).round(4).tolist(),
                "positive_topk": (cg == CODES["positive"]).any(axis=2).mean(axis=0).round(4).tolist(),
                "script_share": {s: v for s, v in shares.items() if max(v) > 0},
            }
        out["groups"][g] = entry
    return out


def middle_layers(num_layers: int) -> list[int]:
    """The middle third of the blocks, as in ``ihs lens`` (indices 1..L)."""
    lo = max(1, round(num_layers / 3))
    hi = max(lo, round(2 * num_layers / 3))
    return list(range(lo, hi + 1))


# -- refusal per language --------------------------------------------------------------------------


def refusal_by_group(rows: Sequence[dict[str, Any]], tag: str = DEFAULT_TAG) -> dict[str, Any]:
    """Refusal rate per group and class from judged generation rows; with what an English-only phrase list
    finds, and the share of answers written in the prompt's own script."""
    from ihs.generation import REFUSAL_PHRASES, PhraseJudge, rate

    if not rows:
        raise DataError("no generation rows given")
    if any("refused" not in r for r in rows):
        raise DataError("generation rows are not judged; run `ihs generate` (or --rejudge) first")
    english = PhraseJudge(REFUSAL_PHRASES)
    groups = ordered_groups([(r.get("tags") or {}).get(tag) for r in rows])
    if not groups:
        raise DataError(f"no generation row has a {tag!r} tag")
    out: dict[str, Any] = {"tag": tag, "judge": rows[0].get("judge"), "groups": {}}
    for g in groups:
        entry: dict[str, Any] = {}
        for label in sorted({r["label"] for r in rows}):
            sel = [r for r in rows if r["label"] == label and (r.get("tags") or {}).get(tag) == g]
            if not sel:
                continue
            res = rate(sel)
            res["refused_english_phrases"] = sum(english.refuses(r["answer"]) for r in sel)
            want = EXPECTED_SCRIPT.get(g)
            if want:
                res["answer_in_own_script"] = float(np.mean([text_script(r["answer"]) == want for r in sel]))
            res["answer_scripts"] = dict(Counter(text_script(r["answer"]) for r in sel).most_common())
            entry[label] = res
        out["groups"][g] = entry
    return out


# -- everything for one store --------------------------------------------------------------------


def analyse_store(store: Any, tag: str = DEFAULT_TAG, source: str = DEFAULT_SOURCE,
                  classes: Sequence[str] = CLASSES, classifiers: Sequence[str] = ("svm",), folds: int = 5,
                  seed: int = 42, layers: Sequence[int] | None = None, control: bool = True,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per-language CV, transfer both ways, and the lens by language, for one ``ActivationStore``."""
    classifiers = parse_classifiers(classifiers)
    groups = group_values(store.records, tag)
    if all(g is None for g in groups):
        raise StoreError(f"no prompt in {store.path or 'the store'} has a {tag!r} tag; extract with "
                         "builtin:multilingual, a lang column or --lang")
    labels = store.labels
    missing = [c for c in classes if c not in set(labels)]
    if missing:
        raise StoreError(f"class {missing[0]!r} is not in the store; it has: {', '.join(sorted(set(labels)))}")
    texts = store.prompts
    num_layers = store.hidden.shape[1] - 1
    out: dict[str, Any] = {
        "name": store.path.name if getattr(store, "path", None) else "store",
        "model": store.manifest.get("model", {}), "num_layers": num_layers, "tag": tag, "source": source,
        "classes": list(classes), "groups": ordered_groups(groups, source),
        "n": {g: dict(Counter(str(label) for label, gg in zip(labels, groups, strict=True) if gg == g))
              for g in ordered_groups(groups, source)},
        "middle_layers": middle_layers(num_layers), "cv": {}, "transfer": {},
    }
    for clf in classifiers:
        out["cv"][clf] = per_group_cv(store.hidden, labels, groups, texts, classes, clf, folds, seed, layers, control,
                                      progress)
        out["transfer"][clf] = transfer(store.hidden, labels, groups, texts, source, classes, clf, seed, layers,
                                        control, progress)
    if store.lens_ids is not None:
        out["lens"] = lens_by_group(store.lens_ids, store.token_text, labels, groups, classes)
    out["summary"] = summarise(out)
    return out


def _mean(values: Sequence[float], layers: Sequence[int], pick: Sequence[int]) -> float:
    vals = [v for v, layer in zip(values, layers, strict=True) if layer in pick and v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """One row per language: first layer >= 0.95 in CV and in transfer, early-layer accuracies, lens numbers."""
    L = result["num_layers"]
    early = [layer for layer in range(1, L + 1) if layer <= max(1, -(-L // 6))]  # blocks 1..ceil(L/6)
    mid = result["middle_layers"]
    rows: dict[str, Any] = {}
    for clf, cv in result["cv"].items():
        tr = result["transfer"][clf]
        for g in result["groups"]:
            row = rows.setdefault(g, {})
            e = cv["groups"].get(g, {})
            if "accuracy" in e:
                row[f"{clf}_cv_first_95"] = e["first_layer_95"]
                row[f"{clf}_cv_early_mean"] = _mean(e["accuracy"], cv["layers"], early)
                row[f"{clf}_cv_best"] = e["best_accuracy"]
            for direction in ("forward", "reverse"):
                t = tr[direction].get(g)
                if t:
                    row[f"{clf}_{direction}_first_95"] = t["first_layer_95"]
                    row[f"{clf}_{direction}_early_mean"] = _mean(t["accuracy"], tr["layers"], early)
                    row[f"{clf}_{direction}_best"] = max(t["accuracy"])
    lens = result.get("lens")
    ref_layer = None
    if lens and result.get("source") in lens["groups"]:
        src = lens["groups"][result["source"]]["classes"]
        if "malicious" in src and "normal" in src:
            diff = np.subtract(src["malicious"]["negative_topk"], src["normal"]["negative_topk"])
            ref_layer = int(lens["layers"][int(np.argmax(diff))]) if diff.max() > 0 else None
    if lens:
        for g, entry in lens["groups"].items():
            row = rows.setdefault(g, {})
            m, n = entry["classes"].get("malicious"), entry["classes"].get("normal")
            if m and n:
                row["neg_mid_malicious"] = _mean(m["negative_topk"], lens["layers"], mid)
                row["neg_mid_normal"] = _mean(n["negative_topk"], lens["layers"], mid)
                row["neg_last_malicious"] = m["negative_topk"][-1]
                row["neg_last_normal"] = n["negative_topk"][-1]
                diff = np.subtract(m["negative_topk"], n["negative_topk"])
                row["neg_diff_max"] = float(diff.max())
                row["neg_diff_max_layer"] = int(lens["layers"][int(np.argmax(diff))])
                if ref_layer is not None:
                    i = lens["layers"].index(ref_layer)
                    row["neg_ref_layer"] = ref_layer
                    row["neg_malicious_at_ref"] = m["negative_topk"][i]
                    row["neg_normal_at_ref"] = n["negative_topk"][i]
            want = entry.get("expected_script")
            if want and m:
                own = m["script_share"].get(want, [0.0] * len(lens["layers"]))
                row["own_script_mid"] = _mean(own, lens["layers"], mid)
                row["own_script_last"] = own[-1]
                latin = m["script_share"].get("latin", [0.0] * len(lens["layers"]))
                row["latin_mid"] = _mean(latin, lens["layers"], mid)
            if m:
                mids = {sc: _mean(v, lens["layers"], mid) for sc, v in m["script_share"].items()}
                row["top_script_mid"] = max(mids, key=mids.get) if mids else None
                row["top_script_mid_share"] = mids[row["top_script_mid"]] if mids else None
    return {"early_layers": early, "rows": rows}
