"""A guard's cost as a share of the full forward pass, and ``ihs guard score``'s prompts per second, in one run.

For one model and one or more guards (any kind): the same prompts (built-in normal, malicious, wrapped and
buried: short and long ones), formatted once, timed in the same process with the variants interleaved
within each repeat (so load from other jobs drifts over all of them alike):

- ``full``: the whole model call with the LM head over every position (what serving the model costs for
  the prompt), and ``backbone``: all blocks without the head (what ``ihs extract`` runs);
- each guard's ``decision_ids``: the blocks up to its deepest layer, its pooling, refusal margin and head;
- each guard's ``score`` on the raw prompts (tokenising included), as ``ihs guard score`` runs it:
  prompts per second.

Every variant runs the same length-sorted batches. Each is timed twice: CPU time of this process (all its
threads; what the work costs, and what other jobs on a shared machine disturb least) and wall time. Ratios are
of medians over repeats; prompts per second are from wall time.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/guard_cost.py --model smollm2-135m-instruct \\
        --guard new=runs/guardgen/smollm2/guard-new --guard old=runs/guardgen/smollm2/guard-old \\
        --prompts 32 --repeats 3 --out benchmarks/results/guard_cost_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--guard", action="append", default=[], help="NAME=GUARD_DIR, repeatable")
    ap.add_argument("--prompts", type=int, default=32, help="prompts, a quarter from each of four built-in sets")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ihs.batching import plan_batches
    from ihs.data.prepare import prepare
    from ihs.guard import Guard
    from ihs.guard.early_exit import pad_right
    from ihs.io import write_json
    from ihs.models.loading import load_model

    lm = load_model(args.model)
    guards = {}
    for item in args.guard:
        name, _, path = item.partition("=")
        guards[name] = Guard.load(path, lm=lm)
    per = max(1, args.prompts // 4)
    records, _ = prepare(["normal=builtin:normal", "malicious=builtin:malicious", "wrapped=builtin:wrapped",
                          "buried=builtin:buried"], limit=per)
    texts = [r.text for r in records]
    first = next(iter(guards.values()))
    ids = [f.ids for f in first.format(texts)]
    lengths = [len(x) for x in ids]
    batches = [[ids[i] for i in b] for b in plan_batches(lengths, list(range(len(ids))), args.batch_size, 10**9)]

    @torch.inference_mode()
    def call(fn_model, b):
        input_ids, attention, _ = pad_right(b, lm.tokenizer.pad_token_id or 0)
        fn_model(input_ids=input_ids.to(lm.input_device), attention_mask=attention.to(lm.input_device), use_cache=False)

    def over_batches(fn):
        def run():
            for b in batches:
                fn(b)
        return run

    budget = 10**9  # one batch plan for every variant: the length-sorted cuts of --batch-size
    variants = {"full": over_batches(lambda b: call(lm.model, b)),
                "backbone": over_batches(lambda b: call(lm.anatomy.backbone, b))}
    for name, g in guards.items():
        variants[f"{name}:decision"] = (lambda g=g: g.decision_ids(ids, batch_size=args.batch_size,
                                                                   max_batch_tokens=budget))
        variants[f"{name}:score"] = (lambda g=g: g.score(texts, batch_size=args.batch_size, max_batch_tokens=budget))
    variants["full"]()  # warm-up
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    load = [os.getloadavg()]
    for _ in range(args.repeats):
        for k, fn in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - t0)
        load.append(os.getloadavg())
    c = {k: statistics.median(v) for k, v in cpu.items()}
    w = {k: statistics.median(v) for k, v in wall.items()}
    out = {"model": args.model, "num_layers": lm.num_layers, "prompts": len(ids), "mean_tokens": float(np.mean(lengths)),
           "batch_size": args.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
           "load_average": load[0], "load_average_during": [max(x[0] for x in load), min(x[0] for x in load)],
           "cpu_seconds_median": c, "wall_seconds_median": w, "cpu_seconds": cpu, "wall_seconds": wall, "guards": {}}
    for name, g in guards.items():
        out["guards"][name] = {
            "kind": g.kind, "deepest_layer": g.layer, "blocks_share": g.layer / lm.num_layers,
            "cpu_share_of_full": c[f"{name}:decision"] / c["full"],
            "cpu_share_of_backbone": c[f"{name}:decision"] / c["backbone"],
            "wall_share_of_full": w[f"{name}:decision"] / w["full"],
            "score_prompts_per_second": len(texts) / w[f"{name}:score"],
            "full_prompts_per_second": len(texts) / w["full"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
