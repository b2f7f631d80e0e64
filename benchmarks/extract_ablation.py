"""What each extraction choice is worth: batch cut (greedy vs least padding) x lens (whole rows vs tiles).

The four combinations run on the same prompts in interleaved rounds (the machine
is shared and noisy), each timed over forward passes plus lens; the best round
of each is reported with the median, the padded token count and the executed
GFLOP/s over a matmul ceiling measured in the same rounds.

Usage (repo root, ../shared/data/paper present):
  .venv/bin/python benchmarks/extract_ablation.py [--model smollm2-135m-instruct] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ihs.batching import EXTRACT_BATCH_COST, auto_batch_tokens, plan_batches
from ihs.bench import _matmul_params, matmul_ceiling_gflops
from ihs.data.prepare import prepare
from ihs.extraction import (
    ExtractOptions,
    _lens_topk_rows,
    forward_last_states,
    lens_topk,
    plan_extraction,
    shared_prefix_ids,
)
from ihs.models.loading import load_model
from ihs.prefix_cache import build_shared_prefix

PAPER = "../shared/data/paper"


def whole_rows(lm, states, k):
    """The lens before tiling: every row over the whole vocabulary, 64 MB of logits at a time."""
    return _lens_topk_rows(lm, states.reshape(-1, states.shape[-1]), k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    records, _ = prepare([f"normal={PAPER}/normal_prompt.csv", f"malicious={PAPER}/malicious_prompt.csv"],
                         limit=args.prompts // 2)
    lm = load_model(args.model, dtype="float32")
    options = ExtractOptions(batch_size=64)
    plan = plan_extraction(lm, records, options)
    rows = list(range(len(records)))
    budget = auto_batch_tokens(lm, max(plan.lengths))
    prefix = build_shared_prefix(lm, shared_prefix_ids(plan, options) or [])
    offset = prefix.length if prefix is not None else 0
    cuts = {"greedy": plan_batches(plan.lengths, rows, options.batch_size, budget),
            "least padding": plan_batches(plan.lengths, rows, options.batch_size, budget, EXTRACT_BATCH_COST)}
    lenses = {"whole rows": whole_rows, "tiles": lambda lm, s, k: lens_topk(lm, s, k)}
    body, unembed = _matmul_params(lm)
    tokens_run = sum(plan.lengths) - offset * (len(rows) - 1)
    work = 2.0 * body * tokens_run + 2.0 * unembed * len(rows) * (lm.num_layers + 1)

    def run(batches, lens) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                states = forward_last_states(lm, [plan.formatted[r].ids for r in batch], prefix)
                lens(lm, states, options.k)
        return time.perf_counter() - started

    run(cuts["greedy"][:1], lenses["tiles"])  # warm-up
    times: dict[tuple[str, str], list[float]] = {(c, ln): [] for c in cuts for ln in lenses}
    ceilings = []
    for _ in range(args.rounds):
        ceilings.append(matmul_ceiling_gflops(torch.float32))
        for cut, lens in times:
            times[(cut, lens)].append(run(cuts[cut], lenses[lens]))
    ceiling = max(ceilings)
    result = {"model": lm.name, "prompts": len(rows), "rounds": args.rounds, "ceiling_gflops": round(ceiling, 1),
              "threads": torch.get_num_threads(), "rows": []}
    for (cut, lens), seconds in times.items():
        padded = sum(len(b) * (max(plan.lengths[r] for r in b) - offset) for b in cuts[cut])
        best = min(seconds)
        result["rows"].append({"batches": cut, "lens": lens, "n_batches": len(cuts[cut]), "padded_tokens": padded,
                               "best_s": round(best, 3), "median_s": round(statistics.median(seconds), 3),
                               "gflops": round(work / best / 1e9, 1),
                               "fraction_of_ceiling": round(work / best / 1e9 / ceiling, 3)})
    real = sum(plan.lengths) - offset * len(rows)
    result["real_tokens"] = real
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
