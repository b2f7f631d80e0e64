"""Measure a model on attack and benign prompts: refusal, early probe, middle-layer emotion, guard score.

One pass of :func:`measure` extracts every prompt's last-token states and logit-lens top-k in
memory (:func:`ihs.extraction.extract`), generates and judges answers for the scored prompts
(:func:`ihs.generation.generate`), joins them through the jailbreak analysis
(:func:`ihs.analysis.jailbreak.jailbreak_analysis`: a per-layer probe trained on the plain normal
vs malicious prompts, the early layer's verdict, the middle layers' negative-emotion share), and
fits a guard (:meth:`ihs.guard.Guard.fit_states`, last token at one fixed layer, threshold for a
target false-positive rate on the benign training prompts) on the probe prompts plus any extra
guard-training prompts, then scores the scored prompts with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ihs.errors import IhsError

MALICIOUS = ("malicious", "jailbreak")


@dataclass(frozen=True)
class MeasureOptions:
    """How prompts are measured (generation length, probe and guard settings)."""

    max_new_tokens: int = 32
    batch_size: int = 8
    guard_layer: str = "L/2"
    target_fpr: float = 0.05
    early_layer: int | None = None
    middle: str | None = None
    classifier: str = "svm"
    lens_k: int = 5
    chat: bool | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise IhsError("max_new_tokens and batch_size must be at least 1")
        if not 0.0 <= self.target_fpr < 1.0:
            raise IhsError(f"target_fpr must be in [0, 1), got {self.target_fpr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dedupe(groups: Sequence[Sequence[dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """All rows once (first occurrence wins) and, per group, the positions of its rows."""
    rows: list[dict[str, Any]] = []
    where: dict[str, int] = {}
    index: list[list[int]] = []
    for group in groups:
        idx = []
        for row in group:
            if row["id"] not in where:
                where[row["id"]] = len(rows)
                rows.append({"id": row["id"], "text": row["text"], "label": row["label"],
                             "dataset": row.get("dataset", ""), "tags": row.get("tags") or {}})
            idx.append(where[row["id"]])
        index.append(idx)
    return rows, index


def measure(lm: Any, *, probe_rows: Sequence[dict[str, Any]], scored_rows: Sequence[dict[str, Any]],
            guard_rows: Sequence[dict[str, Any]] = (), options: MeasureOptions | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Measure ``scored_rows`` on ``lm`` (a LoadedModel); see the module docstring.

    ``probe_rows`` are plain prompts labelled ``normal`` and ``malicious`` (the early probe and the
    guard learn from them); ``guard_rows`` add guard-training prompts (``malicious``/``jailbreak``
    labels are positive, any other negative). Returns ``{"rows": [...], "info": {...}}`` with one row
    per scored prompt: refused, answer, early verdict and score, middle-layer shares, guard score and flag.
    """
    from ihs.analysis.emotion import EmotionMatcher, Lexicon
    from ihs.analysis.jailbreak import jailbreak_analysis
    from ihs.analysis.lens import text_of
    from ihs.extraction import ExtractOptions, extract
    from ihs.generation import GenerateOptions, generate
    from ihs.guard import Guard
    from ihs.layers import parse_layer_range, parse_layers

    options = options or MeasureOptions()
    if not scored_rows:
        raise IhsError("nothing to measure: no scored prompts")
    labels = {r["label"] for r in probe_rows}
    if not {"normal", "malicious"} <= labels:
        raise IhsError("the probe prompts need both 'normal' and 'malicious' rows")
    started = time.perf_counter()
    rows, (probe_idx, scored_idx, guard_idx) = dedupe([probe_rows, scored_rows, guard_rows])
    store = extract(lm, rows, None, ExtractOptions(chat=options.chat, k=options.lens_k,
                                                   batch_size=options.batch_size), progress=progress)
    t_extract = time.perf_counter() - started
    scored = [rows[i] for i in dict.fromkeys(scored_idx)]
    gen = generate(lm, scored, GenerateOptions(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                                               chat=options.chat), judge="phrases", progress=progress,
                   description="attack answers")
    t_generate = gen.seconds
    L = store.num_layers
    span = parse_layer_range(options.middle, L) if options.middle else None
    analysis = jailbreak_analysis(store, gen.rows, text_of(store, lm.tokenizer), EmotionMatcher(Lexicon.load(None),
                                  lm.tokenizer), span, options.early_layer, options.classifier)
    table = {row["id"]: row for row in analysis["table"]}

    layer = parse_layers(options.guard_layer, L)[0]
    X = np.asarray(store.hidden[:, layer], dtype=np.float64)
    pos = {rid: i for i, rid in enumerate(store.ids)}
    train = [pos[rows[i]["id"]] for i in dict.fromkeys(probe_idx + guard_idx)]
    y = np.array([store.labels[i] in MALICIOUS for i in train])
    benign = [i for i, is_mal in zip(train, y, strict=True) if not is_mal]
    guard = Guard.fit_states(X[train], y, layer=layer, classifier="logreg", calibration=X[benign],
                             target_fpr=options.target_fpr, model=lm)
    out = []
    for row in gen.rows:
        i = pos[row["id"]]
        t = table[row["id"]]
        out.append({"id": row["id"], "label": row["label"], "tags": row["tags"], "text": row["prompt"],
                    "dataset": row.get("dataset", ""),
                    "refused": bool(row["refused"]), "answer": row["answer"][:300],
                    "early_malicious": t["early_malicious"], "early_score": t["early_score"],
                    "mid_negative_share": t["mid_negative_share"], "mid_positive_share": t["mid_positive_share"],
                    "guard_score": round(float(guard.score_states(X[i:i + 1])[0]), 5),
                    "guard_flag": bool(guard.verdict_states(X[i:i + 1])[0])})
    info = {"n_scored": len(out), "n_probe": len(probe_idx), "n_guard_extra": len(guard_idx),
            "early_layer": analysis["early_layer"], "middle": analysis["middle"], "guard_layer": layer,
            "guard_oof_auroc": guard.card.get("oof_train", {}).get("auroc"), "num_layers": L,
            "seconds": {"extract": round(t_extract, 2), "generate": round(t_generate, 2),
                        "total": round(time.perf_counter() - started, 2)},
            "options": options.to_dict()}
    return {"rows": out, "info": info}
