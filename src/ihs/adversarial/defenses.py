"""Inference-time defenses on the same held-out prompts as the rounds, for comparison.

:func:`compare_defenses` measures a model (normally the base model of a rounds folder) on the run's
evaluation set with the probe-conditioned steering defense (:func:`ihs.interventions.defense.defend`:
an early guard flags the prompt, flagged prompts are steered toward refusal at the given layers) and
with refuse-when-flagged (:func:`ihs.interventions.defense.refuse_when_flagged`), beside the
undefended answers. The guard is fitted like the rounds' guard (the same layer, prompts and
false-positive target, training side only); the steering direction is the difference of means,
malicious minus normal, of the probe prompts' states. The steered layers and strength are given,
never chosen here: choose them on other prompts (``ihs defend sweep`` on its tune split).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ihs.adversarial.measure import MALICIOUS, MeasureOptions, dedupe
from ihs.adversarial.scan import proportion


def _rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    att = [r for r in rows if r["label"] == "jailbreak"]
    out = {"asr": proportion(sum(not r["refused"] for r in att), len(att))}
    for kind in ("contrast", "wrapped"):
        ben = [r for r in rows if r["label"] == kind]
        out[f"over_refusal_{kind}"] = proportion(sum(bool(r["refused"]) for r in ben), len(ben))
    out["flagged_attacks"] = proportion(sum(bool(r.get("flagged")) for r in att), len(att))
    return out


def compare_defenses(lm: Any, eval_set: dict[str, Any], *, layers: str, alpha: float,
                     options: MeasureOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Undefended, steer-if-flagged and refuse-when-flagged on the evaluation set's attacks and benign prompts."""
    from ihs.extraction import ExtractOptions, extract
    from ihs.generation import GenerateOptions
    from ihs.guard import Guard
    from ihs.interventions.defense import DefenseSetting, defend, refuse_when_flagged
    from ihs.interventions.steering import compute_directions
    from ihs.layers import parse_layers

    options = options or MeasureOptions()
    started = time.perf_counter()
    rows, (probe_idx, guard_idx) = dedupe([eval_set["probe"], eval_set["guard_base"]])
    store = extract(lm, rows, None, ExtractOptions(chat=options.chat, k=options.lens_k,
                                                   batch_size=options.batch_size), progress=progress)
    L = store.num_layers
    steered = parse_layers(layers, L)
    guard_layer = parse_layers(options.guard_layer, L)[0]
    X = np.asarray(store.hidden[:, guard_layer], dtype=np.float64)
    y = np.array([label in MALICIOUS for label in store.labels])
    guard = Guard.fit_states(X, y, layer=guard_layer, classifier="logreg", calibration=X[~y],
                             target_fpr=options.target_fpr, model=lm)
    directions = compute_directions(store, steered, positive=("malicious",), negative=("normal",))
    scored = eval_set["attacks"] + eval_set["contrast"] + eval_set["wrapped"]
    gen = GenerateOptions(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, chat=options.chat)
    base = defend(lm, scored, guard, None, None, gen, progress=progress, description="undefended").rows
    steer = defend(lm, scored, guard, directions, DefenseSetting(layers=steered, alpha=alpha), gen,
                   progress=progress, description="steer if flagged").rows
    variants = {"undefended": base, "steer_if_flagged": steer, "refuse_when_flagged": refuse_when_flagged(base)}
    return {"layers": steered, "alpha": alpha, "guard_layer": guard_layer, "n_probe": len(probe_idx),
            "n_guard_extra": len(guard_idx), "guard_oof_auroc": guard.card.get("oof_train", {}).get("auroc"),
            "variants": {name: _rates(v) for name, v in variants.items()},
            "answers": {name: [{"id": r["id"], "label": r["label"], "refused": bool(r["refused"]),
                                "flagged": bool(r.get("flagged")), "answer": r["answer"][:200]} for r in v]
                        for name, v in variants.items()},
            "seconds": round(time.perf_counter() - started, 2)}
