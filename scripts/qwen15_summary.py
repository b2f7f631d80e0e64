"""Collect the Qwen2.5-Coder-1.5B numbers that docs/RESULTS.md quotes from the runs of make_qwen15_results.sh.

Writes benchmarks/results/qwen15_results.json (every quoted number, with the command that made it) and
benchmarks/results/zoo_tkic_asr.json (the claim-4 point: TKIC top-1 on malicious input over the middle
third of depth against 1 - refusal rate on the same class), and prints a short text summary.
Parts whose runs are missing are left out (and said so).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ihs.io import write_json
from ihs.models import zoo

MODEL = "qwen2.5-coder-1.5b-instruct"
RUNS = Path("runs")
OUT = Path("benchmarks/results")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _r(x, nd: int = 3):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def probe_rows(probe: dict) -> list[dict]:
    """Per store: first layer >= 0.95 per classifier, SVM accuracy at 0 / 1 / L/4 / best, control, bag-of-words."""
    rows = []
    for s in probe["stores"]:
        L = s["num_layers"]
        q = L // 4
        svm = s["classifiers"]["svm"]
        row = {"store": s["name"], "L": L, "n": s["n"], "first_layer_95": {}, "bow": None}
        for name, c in s["classifiers"].items():
            row["first_layer_95"][name] = {"layer": c["first_layer_95"], "depth": _r(c["first_layer_95_depth"], 2),
                                           "best": _r(c["best_accuracy"]), "best_layer": c["best_layer"]}
        acc, lo, hi = svm["accuracy"], svm["ci_low"], svm["ci_high"]
        best = svm["best_layer"]
        control = svm.get("control_accuracy") or []
        row["svm"] = {"layer0": _r(acc[0]), "layer1": _r(acc[1]), "quarter_layer": q, "quarter": _r(acc[q]),
                      "quarter_ci": [_r(lo[q]), _r(hi[q])],
                      "best": _r(acc[best]), "best_layer": best, "best_ci": [_r(lo[best]), _r(hi[best])],
                      "control_mean": _r(sum(control) / len(control)) if control else None,
                      "control_range": [_r(min(control), 2), _r(max(control), 2)] if control else None}
        for name, c in s["classifiers"].items():
            if c.get("contrast_fpr") is not None:
                row.setdefault("transfer", {})[name] = {
                    "contrast_fpr": {"quarter": _r(c["contrast_fpr"][q], 2),
                                     "first95": _r(c["contrast_fpr"][svm["first_layer_95"]], 2)
                                     if svm["first_layer_95"] is not None else None,
                                     "last": _r(c["contrast_fpr"][L], 2)},
                    "jailbreak_called_malicious": {"quarter": _r(c["jailbreak_called_malicious"][q], 2),
                                                   "first95": _r(c["jailbreak_called_malicious"][svm["first_layer_95"]], 2)
                                                   if svm["first_layer_95"] is not None else None,
                                                   "last": _r(c["jailbreak_called_malicious"][L], 2)}}
        if s.get("bow"):
            row["bow"] = {"accuracy": _r(s["bow"]["accuracy"]), "ci": [_r(s["bow"]["ci_low"]), _r(s["bow"]["ci_high"])]}
        rows.append(row)
    return rows


def lens_summary(lens: dict) -> dict:
    """Negative / positive shares (top-5) by class at the malicious-vs-normal peak, TKIC and overlap."""
    m = lens["models"][0]
    res = m["lenses"]["logit"]
    assoc = res["association"]
    cls = assoc["classes"]
    neg_m = cls["malicious"]["topk"]["negative"]["share"]
    neg_n = cls["normal"]["topk"]["negative"]["share"]
    diff = [a - b for a, b in zip(neg_m, neg_n, strict=True)]
    peak = max(range(len(diff)), key=lambda i: (diff[i], neg_m[i]))
    at_peak = {}
    for label, c in cls.items():
        at_peak[label] = {kind: {"share": _r(c["topk"][kind]["share"][peak]),
                                 "ci95": [_r(c["topk"][kind]["ci95"][0][peak]), _r(c["topk"][kind]["ci95"][1][peak])]}
                          for kind in ("negative", "positive")}
    row = next(r for r in lens["table"]["logit"]["rows"])
    overlap = {label: _r(c.get("scalar", {}).get("overlap_with_normal"), 2)
               for label, c in res["consistency"].items()}
    max_neg = {label: {"max": _r(max(c["topk"]["negative"]["share"])),
                       "layer": max(range(len(c["topk"]["negative"]["share"])),
                                    key=lambda i: c["topk"]["negative"]["share"][i])}
               for label, c in cls.items()}
    return {"n": assoc["n"], "middle_third": res["layer_range"], "peak_layer": peak,
            "peak_difference": _r(diff[peak]), "at_peak": at_peak, "max_negative": max_neg,
            "negative_by_layer": {label: [_r(x, 2) for x in c["topk"]["negative"]["share"]] for label, c in cls.items()},
            "positive_by_layer": {label: [_r(x, 2) for x in c["topk"]["positive"]["share"]] for label, c in cls.items()},
            "negative_dominance": assoc["negative_dominance"],
            "tkic_top1": {k: _r(v) for k, v in row["tkic_top1"].items()},
            "tkic_topk": {k: _r(v) for k, v in row["tkic_topk"].items()},
            "overlap_with_normal": overlap, "refusal_rate": row.get("refusal_rate"),
            "command": lens.get("command")}


def main() -> int:
    out: dict = {"model": MODEL, "script": "scripts/make_qwen15_results.sh", "missing": []}
    probe = _load(RUNS / "probe-qwen15" / "probe.json")
    if probe:
        out["probes"] = {"command": probe.get("command"), "stores": probe_rows(probe), "transfer": []}
        for t in probe.get("cross_transfer") or []:
            acc, L = t["classifiers"]["svm"]["accuracy"], len(t["classifiers"]["svm"]["accuracy"]) - 1
            out["probes"]["transfer"].append({
                "train": t["train"], "test": t["test"], "n_test": t["n_test"],
                "svm": {"layer1": _r(acc[1], 2), "quarter": _r(acc[L // 4], 2), "half": _r(acc[L // 2], 2),
                        "last": _r(acc[L], 2), "first_layer_95": t["classifiers"]["svm"]["first_layer_95"]}})
    else:
        out["missing"].append("probes")
    lens = _load(RUNS / "lens-qwen15" / "lens.json")
    if lens:
        out["lens"] = lens_summary(lens)
    else:
        out["missing"].append("lens")
    gen = _load(RUNS / "gen-qwen15" / "refusal.json")
    if gen:
        out["refusal"] = {"per_class": {k: {x: (_r(y) if isinstance(y, float) else y) for x, y in v.items()}
                                        for k, v in gen["per_class"].items()},
                          "per_family": {k: {"refused": v["refused"], "n": v["n"]} for k, v in gen["per_family"].items()},
                          "judge": gen["judge"], "parts": {}}
        for part in sorted(RUNS.glob("gen-qwen15-*/refusal.json")):
            one = _load(part)
            out["refusal"]["parts"][part.parent.name] = {"command": one.get("command"), "seconds": one.get("seconds")}
    else:
        out["missing"].append("refusal")
    marker = _load(zoo.model_dir(MODEL) / zoo.MARKER) if zoo.is_pulled(MODEL) else None
    if marker:
        folder = zoo.model_dir(MODEL)
        out["model_folder"] = {"pull_seconds": marker.get("pull_seconds"), "sha256": marker["sha256"],
                               "gib_on_disk": _r(sum(f.stat().st_size for f in folder.iterdir()) / 2**30, 2),
                               "dtype": "float32"}
    store = _load(RUNS / "qwen15-builtin" / "manifest.json")
    if store:
        out["store"] = {"n_prompts": store.get("n_prompts"), "datasets": store.get("datasets"),
                        "seconds": sum(r.get("seconds", 0) for r in store.get("runs", []))}
    for name in ("jb-qwen15", "jb-qwen15-19-23"):
        jb = _load(RUNS / name / "jailbreak.json")
        if not jb:
            out["missing"].append(name)
            continue
        out[name.replace("jb-qwen15", "jailbreak")] = {"middle": jb["middle"], "early_layer": jb["early_layer"],
                            "groups": {k: {"n": g["n"], "early_recognised": _r(g["early_recognised"], 2),
                                           "mid_negative_share": {"mean": _r(g["mid_negative_share"]["mean"], 2),
                                                                  "ci95": [_r(x, 2) for x in g["mid_negative_share"]["ci95"]]}
                                           if g["n"] else None,
                                           "mid_positive_share": _r(g["mid_positive_share"]["mean"], 2) if g["n"] else None,
                                           "refusal_rate": _r(g["refusal_rate"], 2)}
                                       for k, g in jb["groups"].items()},
                            "refused_vs_complied": jb["refused_vs_complied"],
                            "n_without_generation": jb["n_without_generation"]}
    graft = _load(RUNS / "graft-qwen15-pair" / "graft.json")
    if graft:
        f = graft["forward"]
        out["graft"] = {"command": graft["command"], "seconds": graft.get("seconds"), "per_pair": f.get("per_pair"),
                        "baseline": {"asr": _r(f["baseline"]["asr"], 2), "refused": f["baseline"]["refused"],
                                     "n": f["baseline"]["n"], "asr_ci95": [_r(x, 2) for x in f["baseline"]["asr_ci95"]]},
                        "layers": [{"layer": x["layer"], "asr": _r(x["asr"], 2), "refused": x["refused"], "n": x["n"],
                                    "asr_ci95": [_r(y, 2) for y in x["asr_ci95"]], "changed": x.get("changed_answers")}
                                   for x in f["layers"]]}
    else:
        out["missing"].append("graft")
    write_json(OUT / "qwen15_results.json", out)

    if lens and gen:
        mal = gen["per_class"]["malicious"]
        point = {"model": MODEL, "tkic": out["lens"]["tkic_top1"]["malicious"],
                 "asr": _r(mal["asr"], 4), "n": mal["n"],
                 "tkic_topk": out["lens"]["tkic_topk"]["malicious"], "layers": out["lens"]["middle_third"],
                 "n_tkic": out["lens"]["n"]["malicious"],
                 "asr_jailbreak": _r(gen["per_class"].get("jailbreak", {}).get("asr"), 4),
                 "n_jailbreak": gen["per_class"].get("jailbreak", {}).get("n"),
                 "definition": "tkic: TKIC top-1 on the built-in malicious prompts, logit lens, mean over blocks "
                               "ceil(L/3)..floor(2L/3); asr: 1 - refusal rate of greedy answers (32 new tokens, "
                               "phrase judge) to the same first n malicious prompts",
                 "command": "scripts/make_qwen15_results.sh store gen-malicious analyse"}
        write_json(OUT / "zoo_tkic_asr.json", [point])
    print(json.dumps(out, indent=1)[:6000])
    if out["missing"]:
        print("missing:", ", ".join(out["missing"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
