"""Measure the speed and completeness of ihs.explain's integrated gradients on a real model.

Usage (from the repo root; the model is pulled on first use)::

    nice -n 10 .venv/bin/python scripts/explain_measure.py --model smollm2-135m-instruct --prompts 20 \
        --steps 32 --out runs/explain-measure.json

It takes the first ``--prompts / 2`` built-in malicious and normal prompts, formats them with the model's
chat template and attributes the refusal margin (or, with ``--target lens``, the logit-lens logit of
"sorry" at the middle layer) to their tokens with integrated gradients (``--steps`` Gauss-Legendre
nodes, prompts batched by length, the template's shared opening cached). It writes one JSON file:
wall time of the attribution alone (the model load and tokenisation excluded), prompts per second,
the completeness gaps, the settings, torch's thread count and the machine's load average before and
after (the host is shared, so the load says how quiet the measurement was).
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--target", choices=["refusal", "lens"], default="refusal")
    parser.add_argument("--method", choices=["ig", "grad_x_input"], default="ig")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--no-share-prefix", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/explain-measure.json")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ihs.data import load_builtin
    from ihs.explain import AttributionOptions, emotion_target, refusal_target, tokenize_prompts
    from ihs.explain.attribution import attribute_tokens
    from ihs.io import write_json
    from ihs.models.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    half = max(args.prompts // 2, 1)
    records = load_builtin("malicious")[:half] + load_builtin("normal")[: args.prompts - half]
    lm = load_model(args.model)
    target = refusal_target(lm) if args.target == "refusal" else emotion_target(lm, "sorry")
    options = AttributionOptions(method=args.method, steps=args.steps, batch_size=args.batch_size,
                                 max_batch_tokens=args.max_batch_tokens, share_prefix=not args.no_share_prefix)
    pts = tokenize_prompts(lm, records)
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = attribute_tokens(lm, pts, target, options=options)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()
    rel = np.array([it.relative_gap for it in result.items])
    report = {
        "command": "scripts/explain_measure.py " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
        "model": args.model, "target": target.describe(), "method": args.method, "steps": args.steps,
        "prompts": len(pts), "tokens_mean": float(np.mean([len(p) for p in pts])),
        "user_tokens_mean": float(np.mean([p.n_user for p in pts])),
        "seconds": seconds, "prompts_per_second": len(pts) / seconds,
        "relative_gap": {"median": float(np.median(rel)), "p90": float(np.quantile(rel, 0.9)), "max": float(rel.max())},
        "abs_gap_max": float(np.max(np.abs([it.gap for it in result.items]))),
        "options": result.options, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
        "top_tokens": [{"prompt": it.prompt, "target": it.target, "top": it.top(3)} for it in result.items],
    }
    write_json(args.out, report)
    print(f"{len(pts)} prompts, {args.steps} steps: {seconds:.1f} s, {len(pts) / seconds:.3f} prompts/s; "
          f"relative gap median {np.median(rel):.3g}, max {rel.max():.3g}; load {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
