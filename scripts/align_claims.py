"""Turn tracked alignment runs into the numbers of docs/ALIGNMENT.md (claims 1, 2 and 4, run comparison).

Usage (from the repo root; ``bash scripts/make_alignment_results.sh`` calls it as its ``claims`` stage)::

    .venv/bin/python scripts/align_claims.py NAME=TRACK_DIR[:RUN_SUMMARY] ... \
        --out benchmarks/results/align_claims.json --markdown benchmarks/results/align_claims.md \
        --figures docs/figures

``TRACK_DIR`` holds ``align_track.json`` (``ihs align track``); ``RUN_SUMMARY`` is the run's
``align_run.json`` (wall time, peak memory). It writes one JSON file, a Markdown file with every
table docs/ALIGNMENT.md shows, and the figures ``align_compare.png``, ``align_claim2.png`` and
``align_claim4.png``.

* Claim 1: per run and checkpoint, probe accuracy at L/4 with its Wilson interval, the shuffled-label
  control, and the first layer reaching 0.95.
* Claim 2: per run and checkpoint, the share of held-out malicious (and normal) inputs with a
  negative-emotion token in the logit lens's top-5, at every layer.
* Claim 4: Spearman's rho between TKIC top-1 on malicious input and 1 - ASR, with a percentile
  bootstrap interval, over every tracked checkpoint (the step 0 shared by the runs counted once)
  and, in a second statistic, also the zoo models whose TKIC and refusal rate docs/RESULTS.md
  reports in its "Top-K Intermediate Consistency across models" table (measured on 200 built-in
  prompts per class, chat-formatted, not on this held-out split; marked as such).
* Comparison: the last checkpoint of each run, with Wilson intervals, and paired bootstrap
  intervals of the differences to the first run (the same held-out prompts in every run).
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from pathlib import Path

import numpy as np

from ihs.align.measures import spearman_bootstrap
from ihs.io import read_json, read_jsonl, write_json
from ihs.stats import wilson_interval

RESULTS_MD = Path("docs/RESULTS.md")
ZOO_HEADING = "### Top-K Intermediate Consistency across models"


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def zoo_points(path: Path = RESULTS_MD) -> list[dict]:
    """Rows of RESULTS.md's TKIC table that have a measured refusal rate: (model, TKIC top-1 malicious, refusal)."""
    text = path.read_text(encoding="utf-8")
    if ZOO_HEADING not in text:
        raise SystemExit(f"{path} has no section {ZOO_HEADING!r}")
    block = text.split(ZOO_HEADING, 1)[1].split("\n#", 1)[0]
    out = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"[0-9.]+", cells[1] or "x"):
            continue
        refusal = re.match(r"^([0-9.]+)", cells[3])
        if refusal:
            out.append({"model": cells[0], "tkic_top1_malicious": float(cells[1]), "refusal_malicious": float(refusal[1])})
    return out


def neg_shares(row: dict, label: str) -> list:
    return row["lens"]["share"]["negative"].get(label) or []


def claim2(row: dict) -> dict:
    """Peak negative share for malicious input (and its layer) and normal's share at that layer."""
    lens = row["lens"]
    mal, nor = neg_shares(row, "malicious"), neg_shares(row, "normal")
    vals = [(v if v is not None else -1.0) for v in mal]
    i = max(range(len(vals)), key=vals.__getitem__) if vals else None
    if i is not None and not vals[i] > 0:  # no layer has any: no peak
        i = None
    return {"peak_malicious": mal[i] if i is not None else (0.0 if mal else None),
            "peak_layer": lens["layers"][i] if i is not None else None,
            "normal_at_peak": nor[i] if i is not None and nor else None,
            "mid_malicious": lens["negative_mid"].get("malicious"), "mid_normal": lens["negative_mid"].get("normal"),
            "range": lens["range"], "layers": lens["layers"], "malicious": mal, "normal": nor}


def refused_flags(track_dir: Path, row: dict) -> dict[str, dict[str, bool]]:
    """Per class, prompt id -> refused, from the checkpoint's generations (the row's own or the reused one's)."""
    source = Path(row["reused_from"]).parent if row.get("reused_from") else track_dir / f"step-{row['step']:06d}"
    rows = read_jsonl(source / "generate" / "generations.jsonl")
    out: dict[str, dict[str, bool]] = {}
    for r in rows:
        out.setdefault(r["label"], {})[r["id"]] = bool(r["refused"])
    return out


def paired_difference(a: dict[str, bool], b: dict[str, bool], *, draws: int = 4000, seed: int = 0) -> dict:
    """Refusal rate of b minus a on the same prompts, with a 95% percentile bootstrap interval over prompts."""
    ids = sorted(set(a) & set(b))
    x = np.array([a[i] for i in ids], float)
    y = np.array([b[i] for i in ids], float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), (draws, len(ids)))
    boots = (y[idx] - x[idx]).mean(axis=1)
    return {"difference": float(y.mean() - x.mean()), "ci95": [float(np.percentile(boots, 2.5)),
                                                               float(np.percentile(boots, 97.5))], "n": len(ids)}


def update_ratio(base: str, first: str, other: str) -> float | None:
    """``||W_other - W_first|| / ||W_first - W_base||`` over all weights: how far another run's checkpoint lies
    from the first run's, relative to the first run's own update (0: the same model)."""
    from safetensors.torch import load_file

    paths = [Path(p) / "model.safetensors" for p in (base, first, other)]
    if not all(p.is_file() for p in paths):
        return None
    b, f, o = (load_file(str(p)) for p in paths)
    num = sum(float(((o[k] - f[k]).double() ** 2).sum()) for k in f)
    den = sum(float(((f[k] - b[k]).double() ** 2).sum()) for k in f)
    return (num / den) ** 0.5 if den > 0 else None


def loss_summary(run_dir: str | None, weight: float = 1.0) -> dict:
    """From a run's ``log.jsonl``: the task loss (``weight`` x the association term taken out) averaged over the first and the
    last 10 logged steps, and the association term's first, last, lowest and highest value."""
    path = Path(run_dir or "") / "log.jsonl"
    if not run_dir or not path.is_file():
        return {}
    rows = [r for r in read_jsonl(path) if r.get("loss") is not None]
    task = [r["loss"] - weight * (r.get("assoc_loss") or 0.0) for r in rows]
    term = [r["assoc_loss"] for r in rows if r.get("assoc_loss")]  # 0 on a batch without malicious rows
    out = {"task_loss_first10": float(np.mean(task[:10])), "task_loss_last10": float(np.mean(task[-10:])),
           "steps_logged": len(rows)}
    if term:
        out["association_term"] = {"first": term[0], "last": term[-1], "min": min(term), "max": max(term)}
    return out


def load_run(name: str, track_dir: Path, summary: Path | None) -> dict:
    # a run without tracking (trained, not measured) still reports its training cost
    track = read_json(track_dir / "align_track.json") if (track_dir / "align_track.json").is_file() else {"rows": []}
    info = read_json(summary) if summary and summary.is_file() else {}
    rows = []
    for r in track["rows"]:
        p, g = r["probe"], r["generate"]
        c2 = claim2(r)
        n = g["n"]
        rows.append({
            "step": r["step"], "loss": r.get("loss"), "weights": r.get("weights"), "reused_from": r.get("reused_from"),
            "checkpoint": r.get("checkpoint"),
            "acc_L4": p["acc_L4"], "acc_L4_ci": p["acc_L4_ci"], "control_L4": p["control_L4"], "layer_L4": p["layer_L4"],
            "first_95": p["first_95"], "first_95_ci": p.get("first_95_ci"), "probe_n": p.get("n"),
            "accuracy": p["accuracy"], "control": p["control"], "probe_layers": p["layers"],
            "claim2": c2, "neg_peak_malicious": c2["peak_malicious"],
            "tkic_top1_malicious": r["lens"]["tkic_top1"].get("malicious"),
            "tkic_top1_normal": r["lens"]["tkic_top1"].get("normal"),
            "refusal": g["refusal"], "refusal_ci95": g["refusal_ci95"], "asr": g["asr"],
            "asr_malicious": g["asr"].get("malicious"), "asr_jailbreak": g["asr"].get("jailbreak"),
            "over_refusal": g["refusal"].get("contrast"), "asr_by_family": g["asr_by_family"], "n": n,
            "perplexity": (r.get("perplexity") or {}).get("perplexity"),
            "track_seconds": r.get("seconds"), "track_seconds_parts": r.get("seconds_parts"),
            "refused": refused_flags(track_dir, r),
            "bow": (track.get("bow") or {}).get("accuracy"),
        })
    return {"track": str(track_dir), "command": track.get("command"), "rows": rows,
            "method": track.get("method"), "association": track.get("association"),
            "train_command": info.get("command"), "train_command_dir": info.get("run_dir"), "train_wall_seconds": info.get("wall_seconds"),
            "seconds_per_step": info.get("seconds_per_step"), "peak_rss_mib": info.get("peak_rss_mib"),
            "segments": info.get("segments"), "steps": info.get("steps") or info.get("stopped_at_step"), "examples": info.get("examples"),
            "loss_first": info.get("loss_first"), "loss_last": info.get("loss_last"),
            "track_peak_rss_mib": track.get("peak_rss_mib"),
            "method_trained": (info.get("options") or {}).get("method") or info.get("method"),
            "losses": loss_summary(info.get("run_dir"), float((info.get("options") or {}).get("assoc_weight") or 1.0)),
            "association_trained": info.get("association"), "base_model": info.get("model")}


def ci(lo_hi) -> str:
    return f"[{fmt(lo_hi[0], 2)}, {fmt(lo_hi[1], 2)}]" if lo_hi else ""


def rate_cell(row: dict, cls: str) -> str:
    rate = row["refusal"].get(cls)
    n = row["n"].get(cls, 0)
    if rate is None:
        return "n/a"
    k = round(rate * n)
    return f"{fmt(rate, 2)} ({k}/{n}) {ci(row['refusal_ci95'].get(cls))}"


def asr_cell(row: dict, cls: str) -> str:
    rate = row["refusal"].get(cls)
    n = row["n"].get(cls, 0)
    if rate is None:
        return "n/a"
    k = n - round(rate * n)
    lo, hi = wilson_interval(k, n)
    return f"{fmt(1 - rate, 2)} ({k}/{n}) [{fmt(lo, 2)}, {fmt(hi, 2)}]"


def markdown(all_runs: dict, claim4: dict, zoo: list[dict], differences: dict, command: str) -> str:
    runs = {n: r for n, r in all_runs.items() if r["rows"]}
    out = [f"<!-- written by: {command} -->", ""]
    out += ["## Runs", "", "| run | method | steps | examples | wall (s) | s/step (trainer) | peak RSS (MiB) | "
            "loss first -> last |", "|---|---|---|---|---|---|---|---|"]
    for name, run in all_runs.items():
        method = run["method"] or run["method_trained"]
        assoc = run["association"] or run["association_trained"]
        state = "" if run["rows"] else (" (not tracked)" if run["steps"] else " (not trained)")
        out.append(f"| {name}{state} | {method or 'n/a'}{' + association' if assoc else ''} | "
                   f"{run['steps']} | "
                   f"{run['examples']} | {fmt(run['train_wall_seconds'], 0)} | {fmt(run['seconds_per_step'], 1)} | "
                   f"{fmt(run['peak_rss_mib'], 0)} | {fmt(run['loss_first'], 2)} -> {fmt(run['loss_last'], 2)} |")
    out += ["", "Task loss (the association term taken out), mean of the first / last 10 logged steps: "
            + "; ".join(f"{n} {fmt(r['losses'].get('task_loss_first10'), 3)} / {fmt(r['losses'].get('task_loss_last10'), 3)}"
                        for n, r in all_runs.items() if r["losses"])]
    for n, r in all_runs.items():
        t = r["losses"].get("association_term") if r["losses"] else None
        if t:
            out.append(f"Association term of {n} (mean 1 - cos over malicious rows): first {fmt(t['first'], 4)}, last "
                       f"{fmt(t['last'], 4)}, range {fmt(t['min'], 4)}-{fmt(t['max'], 4)}.")
    out += ["", "## Comparison at the last checkpoint (held-out goals; rate (k/n) [Wilson 95%])", "",
            "| measure | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    last = {name: run["rows"][-1] for name, run in runs.items()}
    measures = [
        ("step", lambda r: str(r["step"])),
        ("ASR held-out jailbreaks (16 families)", lambda r: asr_cell(r, "jailbreak")),
        ("ASR held-out malicious", lambda r: asr_cell(r, "malicious")),
        ("over-refusal (contrast prompts)", lambda r: rate_cell(r, "contrast")),
        ("refusal of normal prompts", lambda r: rate_cell(r, "normal")),
        ("perplexity, 24 written benign answers", lambda r: fmt(r["perplexity"], 2)),
        ("probe acc. at L/4 [CI] / shuffled control", lambda r: f"{fmt(r['acc_L4'], 3)} {ci(r['acc_L4_ci'])} / "
                                                              f"{fmt(r['control_L4'], 3)}"),
        ("bag-of-words, same prompts and folds (text only: one number per run)", lambda r: fmt(r["bow"], 3)),
        ("first layer >= 0.95", lambda r: fmt(r["first_95"])),
        ("peak negative share, malicious (layer) / normal there",
         lambda r: f"{fmt(r['claim2']['peak_malicious'], 2)} ({r['claim2']['peak_layer']}) / "
                   f"{fmt(r['claim2']['normal_at_peak'], 2)}"),
        ("negative share, middle third, malicious / normal",
         lambda r: f"{fmt(r['claim2']['mid_malicious'], 3)} / {fmt(r['claim2']['mid_normal'], 3)}"),
        ("TKIC top-1, malicious / normal", lambda r: f"{fmt(r['tkic_top1_malicious'], 3)} / "
                                                    f"{fmt(r['tkic_top1_normal'], 3)}"),
    ]
    for label, cell in measures:
        out.append(f"| {label} | " + " | ".join(cell(last[n]) for n in runs) + " |")
    classes = ("malicious", "jailbreak", "contrast", "normal")
    if differences:
        out += ["", "Paired differences to the first run (runs of the same base model) at the last checkpoint (refusal rate of the run minus the "
                "first run's, on the same prompts; 95% bootstrap interval over prompts), and how far the run's "
                "weights lie from the first run's (distance / the first run's own update from step 0):", "",
                "| run | " + " | ".join(f"refusal {c}" for c in classes) + " | weights |",
                "|---|" + "---|" * (len(classes) + 1)]
        for name, diffs in differences.items():
            cells = [f"{fmt(diffs[c]['difference'], 2)} {ci(diffs[c]['ci95'])}" if c in diffs else "n/a"
                     for c in classes]
            w = diffs.get("weights", {})
            cells.append(f"{fmt(w.get('update_ratio'), 3)} (step {w.get('step')})" if w else "n/a")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "## Every checkpoint", "", "(reused): the row of a checkpoint with identical weights measured in "
            "another tracking folder (every run's step 0 is the base model; `reused_from` in the JSON).", ""]
    for name, run in runs.items():
        out += [f"### {name}", "", "| step | loss | acc L/4 [95% CI] | control L/4 | first >= 0.95 | peak neg. share "
                "mal. (layer) | normal there | TKIC top-1 mal. | ASR mal. | ASR jailbreak | over-refusal | refusal "
                "normal | perplexity |", "|" + "---|" * 13]
        for r in run["rows"]:
            c2 = r["claim2"]
            out.append(f"| {r['step']}{' (reused)' if r['reused_from'] else ''} | {fmt(r['loss'], 2)} | "
                       f"{fmt(r['acc_L4'])} {ci(r['acc_L4_ci'])} | {fmt(r['control_L4'])} | {fmt(r['first_95'])} | "
                       f"{fmt(c2['peak_malicious'], 2)} ({c2['peak_layer']}) | {fmt(c2['normal_at_peak'], 2)} | "
                       f"{fmt(r['tkic_top1_malicious'])} | {fmt(r['asr_malicious'], 2)} | "
                       f"{fmt(r['asr_jailbreak'], 2)} | {fmt(r['over_refusal'], 2)} | "
                       f"{fmt(r['refusal'].get('normal'), 2)} | {fmt(r['perplexity'], 2)} |")
        secs = [r["track_seconds"] for r in run["rows"] if r["track_seconds"] and not r["reused_from"]]
        out += ["", f"Tracking: {len(secs)} checkpoint(s) measured in this run's folder, "
                f"{fmt(float(np.median(secs)), 0) if secs else 'n/a'} s each (median); ASR by jailbreak family at "
                f"the last checkpoint: " + ", ".join(f"{k} {fmt(v, 2)}" for k, v in
                                                      sorted(run["rows"][-1]["asr_by_family"].items())), ""]
    out += ["## Claim 2: negative-emotion share of malicious (normal) inputs per layer, logit lens top-5", ""]
    for name, run in runs.items():
        layers = run["rows"][0]["claim2"]["layers"]
        out += [f"### {name}", "", "| step | " + " | ".join(str(x) for x in layers) + " |",
                "|---|" + "---|" * len(layers)]
        for r in run["rows"]:
            c2 = r["claim2"]
            cells = [f"{fmt(m, 2)} ({fmt(n, 2)})" if (m or n) else "0" for m, n in
                     zip(c2["malicious"], c2["normal"] or [None] * len(layers), strict=True)]
            out.append(f"| {r['step']} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Claim 4: TKIC top-1 on malicious input against 1 - ASR", ""]
    for key, label in (("checkpoints", "tracked checkpoints only"), ("with_zoo", "checkpoints + zoo models")):
        stat = claim4[key]
        out.append(f"* {label}: Spearman rho {fmt(stat['rho'])} [{fmt(stat['ci95'][0])}, {fmt(stat['ci95'][1])}] "
                   f"(95% percentile bootstrap over points, {stat['draws']} draws), n = {stat['n']} points")
    out += ["", "| point | TKIC top-1 malicious | 1 - ASR malicious |", "|---|---|---|"]
    for p in claim4["points"]:
        out.append(f"| {p['name']} | {fmt(p['tkic'])} | {fmt(p['harmless'], 3)} |")
    out += ["", f"Zoo points from docs/RESULTS.md ({ZOO_HEADING[4:]}): " + "; ".join(
        f"{z['model']} TKIC {z['tkic_top1_malicious']}, refusal {z['refusal_malicious']}" for z in zoo)
        + " (200 built-in prompts per class, chat-formatted; refusal on 64 prompts; not this held-out split)."]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=TRACK_DIR[:RUN_SUMMARY]")
    parser.add_argument("--out", default="benchmarks/results/align_claims.json")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--figures", default=None, help="folder for align_compare/claim2/claim4.png")
    parser.add_argument("--results", default=str(RESULTS_MD), help="RESULTS.md to read the zoo points from")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "scripts/align_claims.py", *sys.argv[1:]])

    runs = {}
    for spec in args.runs:
        name, _, rest = spec.partition("=")
        track_dir, _, summary = rest.partition(":")
        runs[name] = load_run(name, Path(track_dir), Path(summary) if summary else None)

    # claim 4: every checkpoint once (a step shared by runs, identical weights, counts once)
    seen, points = set(), []
    for name, run in runs.items():
        for r in run["rows"]:
            key = r["weights"] or f"{name}@{r['step']}"
            if key in seen or r["tkic_top1_malicious"] is None:
                continue
            seen.add(key)
            base = run["base_model"] or name
            shared = r["step"] == 0 and sum(x["base_model"] == run["base_model"] for x in runs.values()) > 1
            points.append({"name": f"{base} (step 0)" if shared else f"{name}@{r['step']}",
                           "group": f"step 0 ({base})" if shared else name, "label": str(r["step"]),
                           "tkic": r["tkic_top1_malicious"], "harmless": 1 - r["asr_malicious"]})
    # a zoo model that is also a tracked run's base is measured there (step 0, this held-out split): counted once
    tracked_bases = {(r["base_model"] or "").lower() for r in runs.values() if r["rows"]}
    zoo = [z for z in zoo_points(Path(args.results)) if z["model"].lower() not in tracked_bases]
    zoo_pts = [{"name": f"zoo: {z['model']}", "group": "zoo (RESULTS.md)", "label": z["model"].replace("-Instruct", ""),
                "tkic": z["tkic_top1_malicious"], "harmless": z["refusal_malicious"]} for z in zoo]
    both = points + zoo_pts
    claim4 = {"checkpoints": spearman_bootstrap([p["tkic"] for p in points], [p["harmless"] for p in points]),
              "with_zoo": spearman_bootstrap([p["tkic"] for p in both], [p["harmless"] for p in both]),
              "points": both}

    tracked = [n for n, r in runs.items() if r["rows"]]
    first = tracked[0]
    differences = {}
    same_base = [n for n in tracked[1:] if runs[n]["base_model"] == runs[first]["base_model"]]
    for name in same_base:
        a, b = runs[first]["rows"][-1]["refused"], runs[name]["rows"][-1]["refused"]
        differences[name] = {cls: paired_difference(a[cls], b[cls]) for cls in ("malicious", "jailbreak", "contrast",
                                                                               "normal") if cls in a and cls in b}

    for name in [n for n in runs if n != first and runs[n]["base_model"] == runs[first]["base_model"]]:
        a, b = runs[first]["rows"], runs[name]["rows"] or [{"step": None}]
        if a[-1]["step"] == b[-1]["step"] and a[0]["step"] == 0:
            ratio = update_ratio(a[0]["checkpoint"], a[-1]["checkpoint"], b[-1]["checkpoint"])
            differences.setdefault(name, {})["weights"] = {"update_ratio": ratio, "step": b[-1]["step"]}
        elif not runs[name]["rows"] and runs[name]["steps"] == a[-1]["step"]:  # trained, not tracked
            folder = Path(runs[name]["train_command_dir"]) / "checkpoints" / f"step-{a[-1]['step']:06d}"
            ratio = update_ratio(a[0]["checkpoint"], a[-1]["checkpoint"], str(folder))
            differences.setdefault(name, {})["weights"] = {"update_ratio": ratio, "step": a[-1]["step"]}

    write_json(args.out, {"command": command, "runs": runs, "claim4": claim4, "zoo": zoo,
                          "differences_to": first, "differences": differences})
    text = markdown(runs, claim4, zoo, differences, command)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    print(text)
    if args.figures:
        from ihs.plots.align import claim2_figure, claim4_figure, compare_figure

        caption = "scripts/align_claims.py (bash scripts/make_alignment_results.sh, stage claims)"
        compare_figure({n: r["rows"] for n, r in runs.items() if r["rows"]}, args.figures, caption)
        claim2_figure({n: [{"step": r["step"], "layers": r["claim2"]["layers"],
                            "neg_malicious": r["claim2"]["malicious"]} for r in run["rows"]]
                       for n, run in runs.items() if run["rows"]}, args.figures, caption)
        claim4_figure(both, claim4["with_zoo"], args.figures, caption)


if __name__ == "__main__":
    main()
