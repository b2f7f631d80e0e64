"""Claim 2 under a tuned lens: negative-emotion shares per layer at an alignment run's checkpoints.

The logit lens decodes a middle layer as if it were the last; a tuned lens (``ihs.analysis.tuned_lens``:
one affine translator per layer, trained with the model frozen to match the model's own output) is the
stricter reading. Training one lens per checkpoint costs more than this 2-core machine gives, so the lens is
trained once, on the run's step 0 (the base model), on *training-side* prompts only (``ihs.align``'s goal
split; chat-formatted with the template the run trained with, extended by the model's own greedy answer), and
applied unchanged to every chosen checkpoint. Whether that is fair is measured, not assumed: for every
checkpoint the script reports the mean KL from the checkpoint's own output to the tuned and to the logit lens
on the evaluation prompts' last positions; a tuned lens that still fits a checkpoint keeps a KL far below the
logit lens's.

On each checkpoint, the evaluation set is the first ``--per-class`` held-out normal and malicious prompts of
``ihs align track`` (the same records, same order); per layer it reports the share of prompts with a
negative-emotion token among the lens's top 5, under both lenses.

    .venv/bin/python scripts/align_tuned_lens.py runs/align/sft --steps 0,10,40 \\
        --out benchmarks/results/align_tuned_lens_sft.json
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ihs.io import write_json


def training_texts(n_per_class: int, seed: int) -> list[str]:
    """Seeded sample of training-side normal and malicious prompts (no held-out goal)."""
    from ihs.align import training_split

    split = training_split(classes=("normal", "malicious"))
    rng = random.Random(f"align-tuned-lens:{seed}")
    texts: list[str] = []
    for name in ("normal", "malicious"):
        records = list(split[name])
        texts += [r.text for r in rng.sample(records, min(n_per_class, len(records)))]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an ihs align run folder (checkpoints/step-N)")
    parser.add_argument("--steps", default="0,40", help="checkpoints to read, comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--texts", type=int, default=48, help="training-side prompts per class for the lens")
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--continue-tokens", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lens", type=Path, help="folder of the base model's tuned lens: loaded when it holds one "
                        "trained on the same step-0 weights, else trained and saved there (runs of one base share it)")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "scripts/align_tuned_lens.py", *sys.argv[1:]])
    torch.manual_seed(args.seed)

    from ihs.align.data import evaluation_records
    from ihs.analysis.emotion import EmotionMatcher, Lexicon
    from ihs.analysis.lens import analyze_store, text_of
    from ihs.analysis.tuned_lens import TunedLens, collect_states, lens_kl, train_tuned_lens, tuned_topk
    from ihs.extraction import ExtractOptions, extract
    from ihs.layers import default_layer_range
    from ihs.models.loading import load_model

    steps = [int(s) for s in args.steps.split(",")]
    folder = {s: args.run / "checkpoints" / f"step-{s:06d}" for s in steps}
    missing = [str(p) for p in folder.values() if not p.is_dir()]
    if missing:
        raise SystemExit(f"no checkpoint folder {missing[0]}")
    started = time.perf_counter()
    base = load_model(str(args.run / "checkpoints" / "step-000000"))
    texts = training_texts(args.texts, args.seed)
    if args.lens is not None and (args.lens / "tuned_lens.safetensors").is_file():
        tuned = TunedLens.load(args.lens, fingerprint=base.fingerprint())  # refuses a lens of other weights
        report, gathered = tuned.meta["training"], 0.0
    else:
        states = collect_states(base, texts, chat=True, positions_per_sequence=args.positions,
                                continue_tokens=args.continue_tokens, seed=args.seed)
        gathered = time.perf_counter() - started
        tuned, report = train_tuned_lens(base, states, epochs=args.epochs, seed=args.seed)
        report["gather_seconds"] = round(gathered, 1)
        del states
        if args.lens is not None:
            tuned.save(args.lens)
    records = evaluation_records(args.per_class)
    flat = [r for c in ("normal", "malicious") for r in records[c]]
    lexicon = Lexicon.load(None)
    rows = []
    for step in steps:
        t0 = time.perf_counter()
        lm = base if step == 0 else load_model(str(folder[step]))
        store = extract(lm, flat, None, ExtractOptions(), progress=False)
        matcher = EmotionMatcher(lexicon, lm.tokenizer)
        layer_range = default_layer_range(lm.num_layers)
        ids, _ = tuned_topk(lm, tuned, store.hidden, 5)
        decode = text_of(store, lm.tokenizer)
        per_lens = {}
        for name, lens_ids in (("logit", None), ("tuned", ids)):
            assoc = analyze_store(store, matcher, layer_range, lens_ids=lens_ids, text_of=decode)["association"]
            per_lens[name] = {label: [round(float(x), 4) for x in c["topk"]["negative"]["share"]]
                              for label, c in assoc["classes"].items()}
        kl_logit, kl_tuned = lens_kl(lm, store.hidden), lens_kl(lm, store.hidden, tuned)
        rows.append({"step": step, "checkpoint": str(folder[step]), "layers": list(range(lm.num_layers + 1)),
                     "negative_share": per_lens,
                     "kl_last_positions": {"logit": [round(float(x), 3) for x in kl_logit],
                                           "tuned": [round(float(x), 3) for x in kl_tuned]},
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"step {step}: mean KL over blocks 1..L-1 logit {np.mean(kl_logit[1:-1]):.2f}, tuned "
              f"{np.mean(kl_tuned[1:-1]):.2f}; peak tuned negative share, malicious "
              f"{max(per_lens['tuned'].get('malicious', [0])):.2f}", flush=True)
        if step != 0:
            del lm
    write_json(args.out, {"command": command, "run": str(args.run), "training_texts": len(texts),
                          "positions": int(report["positions"]), "gather_seconds": report.get("gather_seconds"),
                          "lens_training": report, "rows": rows,
                          "seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
