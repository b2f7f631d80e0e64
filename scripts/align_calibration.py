"""Choose the association weight on training prompts only: read short calibration runs' trainer logs.

Each argument is an ``ihs align sft --association ...`` run folder (a few steps at one weight). For each the
table gives the weight, the association term ``mean(1 - cos)`` at the first and the last logged step, its
fall, and the task part of the loss (the logged loss minus weight x term) at both ends. The chosen weight is
the smallest whose term fell by at least ``--min-fall`` (default 0.05), for the raw and the centred cosine
(``--assoc-center``) apart: large enough that the term moves the
middle-layer states, no larger. Nothing here reads an evaluation prompt: the logs are of training batches.

    .venv/bin/python scripts/align_calibration.py runs/align/calibrate/w* \\
        --markdown benchmarks/results/align_calibration.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_run(folder: Path) -> dict:
    """Weight, steps and the term / task loss at the first and last logged step of one run folder."""
    run = json.loads((folder / "run.json").read_text())
    assoc = run["key"]["options"]["association"]
    weight = float(assoc["weight"])
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "assoc_loss" in r and "loss" in r]
    if not rows:
        raise SystemExit(f"{folder}: no step with an association term in log.jsonl")
    first, last = rows[0], rows[-1]
    return {"run": str(folder), "weight": weight, "centred": bool(assoc.get("center")), "steps": int(last["step"]),
            "term_first": first["assoc_loss"], "term_last": last["assoc_loss"],
            "term_min": min(r["assoc_loss"] for r in rows),
            "fall": first["assoc_loss"] - last["assoc_loss"],
            "task_first": first["loss"] - weight * first["assoc_loss"],
            "task_last": last["loss"] - weight * last["assoc_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--min-fall", type=float, default=0.05)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--centres", type=Path, help="a centred run's association.safetensors: print how much "
                        "of each layer's mean state sits in its 5 largest coordinates")
    args = parser.parse_args()
    if args.centres:
        from safetensors.torch import load_file

        for key, c in sorted(load_file(str(args.centres)).items()):
            if key.startswith("center_"):
                n2 = float((c ** 2).sum())
                print(f"layer {key[7:]}: ||mean state|| {n2 ** 0.5:.0f}, share of its squared norm in the 5 largest "
                      f"of {c.numel()} coordinates {float((c ** 2).topk(5).values.sum()) / n2:.3f}")
    rows = sorted((read_run(p) for p in args.runs), key=lambda r: (r["centred"], r["weight"]))
    lines = ["| cosine | weight | steps | term, first step | term, last step | fall | task loss, first / last |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'centred' if r['centred'] else 'raw'} | {r['weight']:g} | {r['steps']} | "
                     f"{r['term_first']:.4f} | {r['term_last']:.4f} | {r['fall']:.4f} | "
                     f"{r['task_first']:.3f} / {r['task_last']:.3f} |")
    verdicts = []
    for centred in (False, True):
        group = [r for r in rows if r["centred"] == centred]
        if not group:
            continue
        chosen = next((r["weight"] for r in group if r["fall"] >= args.min_fall), None)
        name = "centred" if centred else "raw"
        verdicts.append(f"{name} cosine: chosen weight {chosen:g} (the smallest whose term fell by at least "
                        f"{args.min_fall})." if chosen is not None else
                        f"{name} cosine: no weight made the term fall by {args.min_fall}.")
    verdict = " ".join(verdicts)
    text = "\n".join(lines) + "\n\n" + verdict + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("# Association weight, calibrated on training batches\n\n"
                                 "`STAGES=calibrate bash scripts/make_alignment_results.sh` (6 steps per weight, "
                                 "gemma-3-270m, blocks L/3:L/2, emotion target; raw: 1 - cos(h, u), centred: 1 - cos(h - mean state, u))\n\n" + text)


if __name__ == "__main__":
    main()
