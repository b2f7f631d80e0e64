"""Turn tracked alignment runs into the numbers of docs/ALIGNMENT.md (claims 1, 2 and 4, run comparison).

Usage (from the repo root)::

    .venv/bin/python scripts/align_claims.py NAME=TRACK_DIR[:RUN_SUMMARY] ... --out runs/align/claims.json

``TRACK_DIR`` holds ``align_track.json`` (``ihs align track``); ``RUN_SUMMARY`` is the run's
``align_run.json`` or ``measure.json`` (wall time, peak memory). It writes ``claims.json`` and prints
Markdown tables. Claim 4 pools every checkpoint of every run, plus the two zoo models whose TKIC and
refusal rate docs/RESULTS.md reports (measured on 200 built-in prompts per class, not on the held-out
split; they are marked as such and the statistic is also given without them).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ihs.align.measures import spearman_bootstrap
from ihs.io import read_json, write_json

#: (model, TKIC top-1 on malicious input, refusal rate on malicious input) from docs/RESULTS.md
ZOO_POINTS = [("smollm2-135m-instruct", 0.998, 0.00), ("qwen2.5-coder-0.5b-instruct", 0.932, 0.47)]


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def claim2(row: dict) -> dict:
    """Peak negative share for malicious input (and its layer) and normal's share at that layer."""
    lens = row["lens"]
    mal = lens["share"]["negative"].get("malicious") or []
    nor = lens["share"]["negative"].get("normal") or []
    vals = [(v if v is not None else -1.0) for v in mal]
    i = max(range(len(vals)), key=vals.__getitem__) if vals else None
    return {"peak_malicious": mal[i] if i is not None else None, "peak_layer": lens["layers"][i] if i is not None
            else None, "normal_at_peak": nor[i] if i is not None and nor else None,
            "mid_malicious": lens["negative_mid"].get("malicious"), "mid_normal": lens["negative_mid"].get("normal"),
            "range": lens["range"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="runs/align/claims.json")
    args = parser.parse_args()
    runs, points = {}, []
    for spec in args.runs:
        name, _, rest = spec.partition("=")
        track_dir, _, summary = rest.partition(":")
        track = read_json(Path(track_dir) / "align_track.json")
        info = read_json(summary) if summary else {}
        rows = []
        for r in track["rows"]:
            p, g = r["probe"], r["generate"]
            rows.append({"step": r["step"], "loss": r.get("loss"), "acc_L4": p["acc_L4"], "acc_L4_ci": p["acc_L4_ci"],
                         "control_L4": p["control_L4"], "layer_L4": p["layer_L4"], "first_95": p["first_95"],
                         "first_95_ci": p.get("first_95_ci"), "claim2": claim2(r),
                         "tkic_top1_malicious": r["lens"]["tkic_top1"].get("malicious"),
                         "refusal": g["refusal"], "refusal_ci95": g["refusal_ci95"], "asr": g["asr"],
                         "asr_by_family": g["asr_by_family"],
                         "perplexity": (r.get("perplexity") or {}).get("perplexity"), "n": g["n"]})
            points.append((f"{name}@{r['step']}", rows[-1]["tkic_top1_malicious"], 1 - g["asr"]["malicious"]))
        seconds = info.get("seconds", {})
        runs[name] = {"track": track_dir, "command": track.get("command"), "rows": rows,
                      "train_wall_seconds": info.get("wall_seconds") or seconds.get("train_call"),
                      "seconds_per_step": info.get("seconds_per_step"), "peak_rss_mib": info.get("peak_rss_mib"),
                      "train_command": info.get("command"), "track_peak_rss_mib": track.get("peak_rss_mib"),
                      "track_seconds": sum(r.get("seconds", 0) for r in track["rows"])}
    ckpt = [(n, t, s) for n, t, s in points if t is not None]
    zoo = [(f"zoo:{m}", t, r) for m, t, r in ZOO_POINTS]
    claim4 = {"checkpoints_only": spearman_bootstrap([t for _, t, _ in ckpt], [s for _, _, s in ckpt]),
              "with_zoo": spearman_bootstrap([t for _, t, _ in ckpt + zoo], [s for _, _, s in ckpt + zoo]),
              "points": [{"name": n, "tkic_top1_malicious": t, "one_minus_asr": s} for n, t, s in ckpt + zoo]}
    write_json(args.out, {"runs": runs, "claim4": claim4})

    for name, run in runs.items():
        print(f"\n### {name}\n")
        print("| step | loss | acc L/4 [95% CI] | control L/4 | first >= 0.95 | neg. share malicious peak (layer) "
              "| normal at that layer | TKIC top-1 mal. | refusal mal. | ASR mal. | ASR jailbreak | over-refusal "
              "contrast | refusal normal | perplexity |")
        print("|" + "---|" * 14)
        for r in run["rows"]:
            c2 = r["claim2"]
            print(f"| {r['step']} | {fmt(r['loss'])} | {fmt(r['acc_L4'])} [{fmt(r['acc_L4_ci'][0], 2)}, "
                  f"{fmt(r['acc_L4_ci'][1], 2)}] (layer {r['layer_L4']}) | {fmt(r['control_L4'])} | "
                  f"{fmt(r['first_95'])} | {fmt(c2['peak_malicious'])} ({c2['peak_layer']}) | "
                  f"{fmt(c2['normal_at_peak'])} | {fmt(r['tkic_top1_malicious'])} | "
                  f"{fmt(r['refusal'].get('malicious'))} | {fmt(r['asr'].get('malicious'))} | "
                  f"{fmt(r['asr'].get('jailbreak'))} | {fmt(r['refusal'].get('contrast'))} | "
                  f"{fmt(r['refusal'].get('normal'))} | {fmt(r['perplexity'], 2)} |")
        print(f"\ntrain wall {run['train_wall_seconds']} s, {run['seconds_per_step']} s/step, peak "
              f"{run['peak_rss_mib']} MiB; tracking {run['track_seconds']:.0f} s, peak {run['track_peak_rss_mib']} MiB")
        last = run["rows"][-1]
        print("ASR by jailbreak family (last checkpoint): "
              + ", ".join(f"{k} {fmt(v, 2)}" for k, v in sorted(last["asr_by_family"].items())))
    for key, stat in claim4.items():
        if key != "points":
            print(f"\nclaim 4 ({key}): Spearman rho {fmt(stat['rho'])} [{fmt(stat['ci95'][0])}, "
                  f"{fmt(stat['ci95'][1])}], n = {stat['n']} points")


if __name__ == "__main__":
    main()
