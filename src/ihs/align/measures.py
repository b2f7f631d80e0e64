"""Measures tracking needs that no other workflow computes: answer perplexity and a rank correlation.

:func:`answer_perplexity` scores reference answers under a model, given their prompts formatted as
every analysis formats them (:func:`ihs.formatting.format_prompt`) and the answer rendered as the
chat template's assistant turn (:func:`ihs.align.encoding.answer_ids`). :func:`spearman_bootstrap`
gives Spearman's rho with a percentile bootstrap interval over points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ihs.align.encoding import answer_ids


def reference_answers(limit: int | None = None) -> list[tuple[str, str, str]]:
    """``(source id, prompt, answer)`` of ihs's written benign answers, in the built-in sets' order."""
    from ihs.align.answers import ANSWERS
    from ihs.data.builtin import load_builtin

    out = []
    for name in ("normal", "contrast"):
        for rec in load_builtin(name):
            sid = (rec.tags or {}).get("source_id") or rec.id
            if sid in ANSWERS:
                out.append((sid, rec.text, ANSWERS[sid]))
    return out[:limit] if limit else out


@torch.no_grad()
def answer_perplexity(lm: Any, pairs: Sequence[tuple[str, str, str]], *, chat: bool | None = None,
                      system_prompt: str | None = None) -> dict[str, Any]:
    """exp(mean NLL per answer token) of each ``(id, prompt, answer)`` under ``lm`` (a LoadedModel), and overall."""
    from ihs.formatting import format_prompt, uses_chat
    from ihs.generation import eos_ids

    use_chat = uses_chat(lm.tokenizer, chat)
    stops = eos_ids(lm)
    total_nll, total_tokens, per = 0.0, 0, []
    for sid, prompt, answer in pairs:
        fp = format_prompt(lm.tokenizer, prompt, use_chat, system_prompt)
        if use_chat:
            ans = answer_ids(lm.tokenizer, fp.text, prompt, answer, system_prompt=system_prompt, stop_ids=stops)
        else:
            ans = list(lm.tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([list(fp.ids) + ans], device=lm.device)
        logits = lm.model(input_ids=ids).logits[0, len(fp.ids) - 1:-1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, len(fp.ids):], reduction="sum").item()
        total_nll += nll
        total_tokens += len(ans)
        per.append({"id": sid, "tokens": len(ans), "perplexity": math.exp(nll / max(len(ans), 1))})
    mean = math.exp(total_nll / total_tokens) if total_tokens else math.nan
    return {"perplexity": mean, "n": len(per), "tokens": total_tokens, "chat": use_chat, "answers": per}


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):  # average ranks of ties
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when a side is constant or n < 3."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 3:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_bootstrap(x: Sequence[float], y: Sequence[float], *, draws: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """Spearman's rho of paired points with a 95% percentile bootstrap interval (points resampled)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    rho = spearman(a, b)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(draws if len(a) >= 3 else 0):
        idx = rng.integers(0, len(a), len(a))
        r = spearman(a[idx], b[idx])
        if not math.isnan(r):
            boots.append(r)
    lo, hi = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (math.nan, math.nan)
    return {"rho": rho, "ci95": [lo, hi], "n": int(len(a)), "draws": len(boots)}
