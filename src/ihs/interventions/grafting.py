"""Logit grafting (Zhou et al., claim 5): put a donor's middle-layer state into a target prompt, then generate.

At layer l, the last-position state of each target prompt is replaced, during
the prompt pass only, by a donor state: by default the mean of the donors'
last-position states at the same layer (``per_pair=True`` gives each target one
donor of its own, cycling through the donors). Later tokens run normally, but
they attend to the grafted position's keys and values at layers after l, which
is how the graft steers the whole answer. Layer numbering is the store's:
l = 0 replaces the embedding output (the input of block 1), l = i the output of
block i, so l runs over 0..L.

A sweep over layers reports, per layer, the refusal rate and ASR of the grafted
targets against the same targets without a graft, and (optionally) against a
real jailbreak set; the reverse graft (malicious donors into normal targets)
asks whether the model then refuses benign requests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ihs.batching import as_record_dict, plan_batches
from ihs.errors import IhsError
from ihs.extraction import forward_last_states
from ihs.formatting import format_prompt, uses_chat
from ihs.generation import GenerateOptions, Judge, generate, load_judge, rate
from ihs.hooks import Edit, Hooks
from ihs.layers import parse_layers
from ihs.models.loading import LoadedModel
from ihs.progress import progress_bar


@torch.inference_mode()
def last_states(lm: LoadedModel, records: Sequence[Any], options: GenerateOptions | None = None,
                progress: bool = False) -> torch.Tensor:
    """Last-position states (N, L+1, d) of prompts formatted exactly as :func:`generate` formats them."""
    options = options or GenerateOptions()
    recs = [as_record_dict(r) for r in records]
    chat = uses_chat(lm.tokenizer, options.chat)
    budget = max(1, (options.max_length or lm.max_length) - options.max_new_tokens)
    ids = [format_prompt(lm.tokenizer, r["text"], chat, options.system_prompt, budget, options.truncate).ids
           for r in recs]
    states: list[torch.Tensor | None] = [None] * len(recs)
    batches = plan_batches([len(i) for i in ids], list(range(len(recs))), options.batch_size, options.max_batch_tokens)
    with progress_bar("donor states", total=len(recs), enabled=progress) as advance:
        for batch in batches:
            got = forward_last_states(lm, [ids[r] for r in batch])
            for r, s in zip(batch, got, strict=True):
                states[r] = s
            advance(len(batch))
    return torch.stack(states)


def graft_intervention(lm: LoadedModel, layer: int, donor: torch.Tensor):
    """A factory for :func:`generate`: replace the last prompt position at ``layer`` with ``donor``.

    ``donor`` is (d,) for a mean donor, or (N, d) with one row per target record.
    """

    def factory(rows: list[int]) -> Hooks:
        value = donor if donor.ndim == 1 else donor[rows]
        return Hooks(lm, [Edit(layer=layer, op="replace", value=value, positions="last", when="prompt")])

    return factory


@dataclass
class GraftOptions:
    layers: str | Sequence[int] | None = None
    per_pair: bool = False
    examples: int = 3


def _examples(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"], "refused": r["refused"]} for r in rows[:n]]


def graft_sweep(
    lm: LoadedModel,
    targets: Sequence[Any],
    donors: Sequence[Any],
    layers: str | Sequence[int] | None = None,
    judge: Judge | str | None = "phrases",
    options: GenerateOptions | None = None,
    per_pair: bool = False,
    examples: int = 3,
    reference: Sequence[Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Graft donor states into targets at each layer, generate, judge; compare with no graft.

    Returns ``{"baseline", "layers": [{layer, refusal_rate, asr, ...}], "reference", "rows"}``,
    where ``rows`` holds every generation (layer ``None`` = baseline, ``"reference"`` = the
    reference set, e.g. real jailbreaks) for ``generations.jsonl``.
    """
    options = options or GenerateOptions()
    judge_obj = load_judge(judge)
    targets = [as_record_dict(r) for r in targets]
    donors = [as_record_dict(r) for r in donors]
    if not targets or not donors:
        raise IhsError("grafting needs at least one target and one donor prompt")
    chosen = parse_layers(layers, lm.num_layers)
    started = time.perf_counter()
    donor_all = last_states(lm, donors, options, progress=progress)  # (D, L+1, d)
    if per_pair:
        pick = torch.arange(len(targets)) % len(donors)
        donor_states = donor_all[pick]  # (N, L+1, d)
    else:
        donor_states = donor_all.mean(0)  # (L+1, d)
    all_rows: list[dict[str, Any]] = []

    base = generate(lm, targets, options, judge_obj, progress=progress, description="no graft")
    for row in base.rows:
        row["graft_layer"] = None
    all_rows.extend(base.rows)
    result: dict[str, Any] = {"baseline": {**rate(base.rows), "examples": _examples(base.rows, examples)}}

    per_layer = []
    for layer in chosen:
        donor = donor_states[:, layer] if per_pair else donor_states[layer]
        run = generate(lm, targets, options, judge_obj, intervention_for=graft_intervention(lm, layer, donor),
                       progress=progress, description=f"graft layer {layer}")
        changed = sum(a["answer"] != b["answer"] for a, b in zip(run.rows, base.rows, strict=True))
        for row in run.rows:
            row["graft_layer"] = layer
        all_rows.extend(run.rows)
        per_layer.append({"layer": layer, **rate(run.rows), "changed_answers": changed,
                          "seconds": round(run.seconds, 2), "examples": _examples(run.rows, examples)})
    result["layers"] = per_layer

    if reference:
        ref = generate(lm, reference, options, judge_obj, progress=progress, description="reference")
        for row in ref.rows:
            row["graft_layer"] = "reference"
        all_rows.extend(ref.rows)
        result["reference"] = {**rate(ref.rows), "label": ref.rows[0]["label"], "examples": _examples(ref.rows, examples)}
    else:
        result["reference"] = None
    donor_norm = donor_states.norm(dim=-1)
    result.update({
        "n_targets": len(targets), "n_donors": len(donors), "per_pair": per_pair, "judge": judge_obj.name,
        "target_labels": sorted({t.get("label", "") for t in targets}),
        "donor_labels": sorted({d.get("label", "") for d in donors}),
        "donor_norm_by_layer": (donor_norm.mean(0) if per_pair else donor_norm).tolist(),
        "layer_convention": "0 = embedding output (input of block 1); i = output of decoder block i",
        "seconds": round(time.perf_counter() - started, 2), "options": {**asdict(options)},
        "rows": all_rows,
    })
    return result
