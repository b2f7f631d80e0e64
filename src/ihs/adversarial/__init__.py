"""Adversarial training: find where the early recognition of harm and the answer part ways, attack there, retrain.

* :mod:`ihs.adversarial.mutations`: rule-based rewrites (tense, framing, encodings, nesting);
* :mod:`ihs.adversarial.paraphrase`: paraphrases of the request by the model itself (opt-in, cached);
* :mod:`ihs.adversarial.pools`: the held-out goals, families and mutations, and the training pools;
* :mod:`ihs.adversarial.measure`: refusal, early probe, middle-layer emotion and guard score per prompt;
* :mod:`ihs.adversarial.scan`: the weakness scan (per family, template, kind, mutation; ranked, with intervals);
* :mod:`ihs.adversarial.generator`: targeted recombination, the bounded search, the random control;
* :mod:`ihs.adversarial.evaluate`: the per-round evaluation on what training never saw;
* :mod:`ihs.adversarial.rounds`: the resumable rounds (attack, train with ``ihs.align``, refit, evaluate).
"""

from ihs.adversarial.generator import Budget, random_attacks, recombine, search
from ihs.adversarial.measure import MeasureOptions, measure
from ihs.adversarial.mutations import MUTATIONS, apply
from ihs.adversarial.pools import EVAL_FAMILIES, EVAL_MUTATIONS, Holdout, check_training
from ihs.adversarial.rounds import ARMS, RoundsOptions, Runner, summary
from ihs.adversarial.scan import scan

__all__ = ["ARMS", "Budget", "EVAL_FAMILIES", "EVAL_MUTATIONS", "Holdout", "MUTATIONS", "MeasureOptions",
           "RoundsOptions", "Runner", "apply", "check_training", "measure", "random_attacks", "recombine", "scan",
           "search", "summary"]
