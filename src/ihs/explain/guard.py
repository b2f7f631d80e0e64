"""A guard's verdicts explained: token attributions of a linear last-token guard's logit.

``ihs guard score --explain`` runs :func:`explain_guard`: integrated gradients (or gradient x input) of the
guard's logit ``state . weight + bias`` at its layer, on the prompt formatted exactly as the guard formats it
(its card's chat setting and system prompt). The attributed logit at the input is the guard's own, so the
verdict (logit above the guard's threshold logit) is the guard's real verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ihs.errors import IhsError
from ihs.explain.attribution import AttributionOptions, attribute
from ihs.explain.targets import ProbeTarget

METHODS = {"ig": "ig", "gxi": "grad_x_input"}


def guard_target(guard: Any) -> Any:
    """The logit of a linear last-token guard as an attribution target; ``IhsError`` for other kinds."""
    recipe = guard.recipe
    if recipe is not None and (not recipe.linear or len(recipe.layers) != 1 or recipe.pooling != "last"
                               or recipe.refusal):
        raise IhsError(f"--explain reads linear last-token guards only; this guard is {guard.kind}")
    return ProbeTarget.from_guard(guard)


def explain_guard(guard: Any, texts: Sequence[str], *, method: str = "ig", steps: int = 32, top: int = 5,
                  batch_size: int = 8, max_batch_tokens: int = 2048, progress: bool = True) -> list[dict[str, Any]]:
    """Token attributions of a guard's logit for each text, formatted as the guard formats them.

    Per text: the guard's logit at the input (``logit``) and with the user's tokens replaced by the mean
    embedding (``baseline_logit``), the verdict (logit above the guard's threshold logit), the completeness
    gap, the ``top`` tokens that push toward "malicious" and toward "benign", and every token with its score.
    """
    if method not in METHODS:
        raise IhsError(f"unknown method {method!r}; choose ig or gxi")
    if guard.lm is None:
        raise IhsError("the guard has no model attached")
    target = guard_target(guard)
    options = AttributionOptions(method=METHODS[method], steps=steps, batch_size=batch_size,
                                 max_batch_tokens=max_batch_tokens, progress=progress,
                                 chat=bool(guard.model.get("chat", False)),
                                 system_prompt=guard.model.get("system_prompt"))
    result = attribute(guard.lm, list(texts), target, options=options)
    threshold = float(guard.threshold_logit)
    out = []
    for it in result.items:
        user = [i for i, u in enumerate(it.user) if u]
        by_score = sorted(user, key=lambda i: -it.scores[i])
        out.append({"method": method, "steps": steps if method == "ig" else 1, "layer": int(guard.layer),
                    "logit": it.target, "baseline_logit": it.baseline_target, "threshold_logit": threshold,
                    "malicious": bool(it.target > threshold), "gap": it.gap, "relative_gap": it.relative_gap,
                    "toward_malicious": [{"token": it.tokens[i], "score": it.scores[i]} for i in by_score[:top]
                                         if it.scores[i] > 0],
                    "toward_benign": [{"token": it.tokens[i], "score": it.scores[i]}
                                      for i in reversed(by_score[-top:]) if it.scores[i] < 0],
                    "tokens": it.tokens, "scores": it.scores, "user": it.user})
    return out
