"""Cost of guard scoring with early exit against a full forward pass, per zoo model.

For each model: the same prompts (built-in normal + malicious), the same batches, timed
(1) stopped after layer index l (``ihs.guard.early_exit.states_at_layer``) for several l, including the
guard's chosen layer when a guard directory is given; (2) the full backbone (all blocks, last-token
states, as ``ihs extract`` runs it); (3) the whole model call with the LM head (what serving the
model itself costs for the prompt). Each timing is the median of ``--repeats`` passes over all
batches. Also checks that the early-exit states equal the full pass's states at that index.

    .venv/bin/python benchmarks/guard_early_exit.py --model smollm2-135m-instruct \
        --guard runs/guard/smollm2-builtin --out benchmarks/results/guard_early_exit_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--guard", help="guard directory: its layer is timed too")
    ap.add_argument("--prompts", type=int, default=64, help="prompts (half normal, half malicious)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ihs.batching import plan_batches
    from ihs.data.prepare import prepare
    from ihs.extraction import forward_last_states
    from ihs.formatting import format_prompt, uses_chat
    from ihs.guard.early_exit import pad_right, states_at_layer
    from ihs.models.loading import load_model

    lm = load_model(args.model, device=args.device)
    guard_layer = None
    if args.guard:
        from ihs.guard import Guard

        guard_layer = Guard.load(args.guard, lm=lm).layer
    records, _ = prepare(["normal=builtin:normal", "malicious=builtin:malicious"], limit=args.prompts // 2)
    chat = uses_chat(lm.tokenizer, None)
    ids = [format_prompt(lm.tokenizer, r.text, chat).ids for r in records]
    lengths = [len(x) for x in ids]
    batches = [[ids[i] for i in b] for b in plan_batches(lengths, list(range(len(ids))), args.batch_size, 10**9)]
    L = lm.num_layers
    layers = sorted({0, L // 4, L // 2, L} | ({guard_layer} if guard_layer is not None else set()))

    def sync() -> None:
        if lm.input_device.type == "cuda":
            torch.cuda.synchronize()

    def once(fn) -> float:
        sync()
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        sync()
        return time.perf_counter() - t0

    @torch.inference_mode()
    def whole_model(b):
        input_ids, attention, _ = pad_right(b, lm.tokenizer.pad_token_id or 0)
        lm.model(input_ids=input_ids.to(lm.input_device), attention_mask=attention.to(lm.input_device), use_cache=False)

    # variants are interleaved within each repeat, so load from other jobs drifts over all of them alike;
    # the minimum over repeats is the least disturbed run (the median is kept too)
    variants = {"full": lambda b: forward_last_states(lm, b), "head": whole_model}
    variants.update({layer: (lambda b, layer=layer: states_at_layer(lm, b, layer)) for layer in layers})
    once(variants["full"])  # warm-up
    runs: dict = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():
            runs[k].append(once(fn))
    best = {k: min(v) for k, v in runs.items()}
    full, with_head = best["full"], best["head"]
    per_layer = {layer: best[layer] for layer in layers}
    median_fraction = {str(layer): statistics.median(runs[layer]) / statistics.median(runs["full"]) for layer in layers}
    max_diff = 0.0
    for layer in layers:
        for b in batches[:2]:
            ref = forward_last_states(lm, b)[:, layer]
            max_diff = max(max_diff, float((states_at_layer(lm, b, layer) - ref).abs().max()))
    result = {
        "model": args.model, "num_layers": L, "prompts": len(ids), "mean_tokens": float(np.mean(lengths)),
        "batch_size": args.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "device": str(lm.input_device), "dtype": str(lm.dtype),
        "seconds_full_backbone": full, "seconds_full_model_with_lm_head": with_head,
        "seconds_early_exit": {str(k): v for k, v in per_layer.items()},
        "fraction_of_full_backbone": {str(k): v / full for k, v in per_layer.items()},
        "fraction_of_full_backbone_medians": median_fraction,
        "timing": "minimum over repeats, variants interleaved within each repeat",
        "guard_layer": guard_layer,
        "guard_fraction_of_full_backbone": per_layer[guard_layer] / full if guard_layer is not None else None,
        "guard_fraction_of_full_model": per_layer[guard_layer] / with_head if guard_layer is not None else None,
        "max_abs_diff_vs_full_pass": max_diff,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
