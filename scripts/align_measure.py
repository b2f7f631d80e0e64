"""Measure one short LoRA SFT run of ihs.align on a real model: wall time, step rate, peak memory.

Usage (from the repo root; the model is pulled on first use)::

    nice -n 10 .venv/bin/python scripts/align_measure.py --model smollm2-135m-instruct --steps 50 \
        --out runs/align-measure

It builds the default alignment data (written refusals and answers, the goal split), trains LoRA
SFT for ``--steps`` optimizer steps, exporting a checkpoint every ``--save-every`` steps, and writes
``OUT/measure.json``: wall time of each phase, the trainer's own step time, the process's CPU time,
peak resident memory (``ru_maxrss``), the losses and the machine's load average before and after. The run
folder is created fresh (an existing ``OUT/run`` is removed) so the numbers are for a run from step 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/align-measure")
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = os.getloadavg()
    import torch

    from ihs.align import LoraOptions, TrainOptions, build_data, train
    from ihs.io import write_json
    from ihs.models import zoo

    if args.model in zoo.ZOO:
        zoo.pull(args.model)
    t_import = time.perf_counter() - started

    out = Path(args.out)
    shutil.rmtree(out / "run", ignore_errors=True)
    t0 = time.perf_counter()
    data = build_data()
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    options = TrainOptions(method="sft", lora=LoraOptions(), max_steps=args.steps, save_every=args.save_every,
                           batch_size=args.batch_size, max_length=args.max_length, threads=args.threads)
    result = train(args.model, data, out / "run", options=options)
    t_train = time.perf_counter() - t0
    summary = next((r for r in reversed(result.log) if "train_runtime" in r), {})
    losses = [r["loss"] for r in result.log if "loss" in r]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = usage.ru_maxrss
    report = {
        "command": f"nice -n 10 .venv/bin/python scripts/align_measure.py --model {args.model} --steps {args.steps} "
                   f"--save-every {args.save_every} --batch-size {args.batch_size} --max-length {args.max_length}"
                   + (f" --threads {args.threads}" if args.threads else "") + f" --out {args.out}",
        "model": args.model,
        "method": "sft",
        "lora": {"r": options.lora.r, "alpha": options.lora.alpha, "targets": options.lora.target_modules},
        "steps": result.step,
        "batch_size": args.batch_size,
        "examples": len(data.sft),
        "checkpoints": [step for step, _ in result.checkpoints],
        "seconds": {"import_and_pull": round(t_import, 1), "build_data": round(t_data, 1),
                    "train_call": round(t_train, 1), "trainer_runtime": summary.get("train_runtime"),
                    "total": round(time.perf_counter() - started, 1)},
        "seconds_per_step": round(summary["train_runtime"] / max(result.step, 1), 2) if summary else None,
        # CPU seconds of this process (user + system): on a shared machine wall time mostly measures the others
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(peak_kb / 1024, 1),
        "loss_first": losses[0] if losses else None,
        "loss_last5_mean": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.platform(),
    }
    write_json(out / "measure.json", report)
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
