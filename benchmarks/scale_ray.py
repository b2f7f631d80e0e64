"""Single-process `ihs extract` against `ihs extract --ray` (local cluster) on the same prompts; stores compared.

Usage (from the repo root):
    nice -n 19 .venv/bin/python benchmarks/scale_ray.py --model smollm2-135m-instruct --limit 100 \
        --out runs/scale --json benchmarks/results/scale_ray.json

Both commands run as subprocesses, one after the other, each timed from start to exit
(so model loading, and for Ray the cluster start and the actors' model loading, count);
the extraction-only seconds come from each store's manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "data" / "paper"


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=100, help="prompts per class (normal, malicious)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "scale")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ray-first", action="store_true", help="run the Ray command first (checks drift in load)")
    args = parser.parse_args()

    ihs = str(Path(sys.executable).with_name("ihs"))
    base = [ihs, "extract", "--model", args.model, "--data", f"normal={PAPER / 'normal_prompt.csv'}",
            "--data", f"malicious={PAPER / 'malicious_prompt.csv'}", "--limit", str(args.limit)]
    single_out, ray_out = args.out / "single", args.out / "ray"
    for path in (single_out, ray_out):
        shutil.rmtree(path, ignore_errors=True)
    single_cmd = [*base, "--out", str(single_out)]
    ray_cmd = [*base, "--out", str(ray_out), "--ray", "local", "--ray-actors", str(args.actors),
               "--ray-threads", str(args.threads)]
    load = os.getloadavg()
    if args.ray_first:
        wall_ray = run(ray_cmd)
        wall_single = run(single_cmd)
    else:
        wall_single = run(single_cmd)
        wall_ray = run(ray_cmd)
    load_after = os.getloadavg()

    from ihs.store import ActivationStore

    a, b = ActivationStore.load(single_out), ActivationStore.load(ray_out)
    n = len(a)
    run_a, run_b = a.manifest["runs"][-1], b.manifest["runs"][-1]
    result = {
        "model": args.model, "prompts": n, "cpu_cores": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load],
        "load_avg_after": [round(x, 2) for x in load_after], "order": "ray first" if args.ray_first else "single first",
        "single": {"command": " ".join(single_cmd), "wall_s": round(wall_single, 1),
                   "prompts_per_s_wall": round(n / wall_single, 2), "extract_s": run_a["seconds"],
                   "prompts_per_s_extract": run_a["prompts_per_s"]},
        "ray": {"command": " ".join(ray_cmd), "wall_s": round(wall_ray, 1), "prompts_per_s_wall": round(n / wall_ray, 2),
                "extract_s": run_b["seconds"], "prompts_per_s_extract": run_b["prompts_per_s"], **run_b["ray"]},
        "same_records": a.records == b.records,
        "hidden_max_abs_diff": float(np.abs(a.hidden - b.hidden).max()),
        "hidden_max_abs": float(np.abs(a.hidden).max()),
        "lens_top1_equal_share": float((a.lens_ids[..., 0] == b.lens_ids[..., 0]).mean()),
        "lens_ids_equal": bool((a.lens_ids == b.lens_ids).all()),
        "lens_logits_max_abs_diff": float(np.abs(a.lens_logits - b.lens_logits).max()),
        "speedup_wall": round(wall_single / wall_ray, 2),
        "speedup_extract": round(run_a["seconds"] / run_b["seconds"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
