"""Summarise the zoo runs of scripts/make_explain_results.sh into benchmarks/results/explain_zoo.{json,md} and
the figures of docs/EXPLAIN.md.

Usage::

    .venv/bin/python scripts/explain_summary.py --runs runs/explain-zoo --out benchmarks/results/explain_zoo \
        --figures docs/figures

Per model (pieces ``ig-CLASS``, ``gxi-CLASS``, ``cosines``) it pools the explained prompts of every class and
gives: the share of |attribution| on alarming words and on the marked span (a contrast prompt's trigger word,
the request inside a jailbreak or role-play wrapper) against the uniform share, with 95% bootstrap intervals
over prompts (``ihs.workflows.explain.class_shares``); completeness gaps; faithfulness areas per method and
order with bootstrap intervals; the per-layer direction cosines with their controls; the worked examples'
verdicts and the speed run. Missing pieces are listed, not guessed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

MODELS = {"smollm2": "smollm2-135m-instruct", "gemma": "gemma-3-270m", "qwen": "qwen2.5-coder-0.5b-instruct"}
CLASSES = ("malicious", "contrast", "jailbreak", "wrapped")
METHODS = ("ig", "gxi")


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _log_load(path: Path) -> dict[str, Any]:
    """Load averages and wall time a piece's log recorded."""
    if not path.is_file():
        return {}
    text = path.read_text()
    before = re.search(r"load before: ([\d.]+) ([\d.]+) ([\d.]+)", text)
    after = re.search(r"wall (\d+) s, load after: ([\d.]+) ([\d.]+) ([\d.]+)", text)
    out: dict[str, Any] = {}
    if before:
        out["load_before"] = [float(x) for x in before.groups()]
    if after:
        out["wall_s"] = int(after.group(1))
        out["load_after"] = [float(x) for x in after.groups()[1:]]
    return out


def _ci(values: list[float]) -> dict[str, Any]:
    from ihs.explain.shares import bootstrap_mean

    v = [x for x in values if x is not None and np.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None, "ci": bootstrap_mean(v), "n": len(v)}


def faithfulness(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per curve and order: the mean signed area in probe-logit units with a bootstrap interval
    (``ihs.explain.faithfulness.signed_area``: robust where the baseline scores like the prompt), the median
    normalised area, and per prompt how often the attribution order beats random."""
    from ihs.explain.faithfulness import signed_area

    out: dict[str, Any] = {}
    for curve in ("deletion", "insertion"):
        per: dict[str, Any] = {}
        for order in ("attribution", "random", "bow"):
            have = [it for it in items if order in it[curve]]
            per[order] = _ci([signed_area(it, curve, order) for it in have])
            norm = [it["auc_normalised"][curve][order] for it in have]
            norm = [v for v in norm if v is not None and np.isfinite(v)]
            per[order]["median_normalised"] = float(np.median(norm)) if norm else None
        att = [signed_area(it, curve, "attribution") for it in items]
        rnd = [signed_area(it, curve, "random") for it in items]
        better = [(a < r) if curve == "deletion" else (a > r) for a, r in zip(att, rnd, strict=True)
                  if np.isfinite(a) and np.isfinite(r)]
        per["attribution_beats_random"] = {"k": int(sum(better)), "n": len(better)}
        per["attribution_minus_random"] = _ci([a - r for a, r in zip(att, rnd, strict=True)])
        if all("bow" in it[curve] for it in items):
            bow = [signed_area(it, curve, "bow") for it in items]
            per["attribution_minus_bow"] = _ci([a - b for a, b in zip(att, bow, strict=True)])
        out[curve] = per
    spans = [it["direction"] * (it["full"] - it["empty"]) for it in items]
    out["span"] = {"median": float(np.median(spans)), "mean": float(np.mean(spans))}
    return out


def model_summary(folder: Path) -> dict[str, Any]:
    from ihs.workflows.explain import class_shares

    out: dict[str, Any] = {"missing": [], "methods": {}}
    for method in METHODS:
        items, faith_items, pieces = [], [], {}
        for c in CLASSES:
            d = _load(folder / f"{method}-{c}" / "explain.json")
            if d is None:
                out["missing"].append(f"{method}-{c}")
                continue
            items += d["items"]
            faith_items += (d.get("faithfulness") or {}).get("items", [])
            pieces[c] = {"command": d.get("command"), "probe": d.get("probe"), "timing": d.get("timing"),
                         "completeness": d.get("completeness"), "target": d.get("target"),
                         **_log_load(folder / f"{method}-{c}.log")}
        if not items:
            continue
        rel = np.asarray([it["relative_gap"] for it in items], dtype=float)
        by_class = {}
        for c in CLASSES:
            r = np.asarray([it["relative_gap"] for it in items if it["label"] == c], dtype=float)
            if len(r):
                by_class[c] = {"median": float(np.nanmedian(r)), "max": float(np.nanmax(r))}
        verdicts = {c: {"above_zero": int(sum(it["target"] > 0 for it in items if it["label"] == c)),
                        "n": int(sum(it["label"] == c for it in items)),
                        "median_logit": float(np.median([it["target"] for it in items if it["label"] == c])),
                        "median_baseline_logit": float(np.median([it["baseline_target"] for it in items
                                                                  if it["label"] == c]))}
                    for c in CLASSES if any(it["label"] == c for it in items)}
        out["methods"][method] = {
            "prompts": len(items), "shares": class_shares(items), "probe_verdicts": verdicts,
            "completeness": {"median_abs_gap": float(np.median(np.abs([it["gap"] for it in items]))),
                             "median_relative_gap": float(np.nanmedian(rel)), "p90_relative_gap":
                             float(np.nanquantile(rel, 0.9)), "max_relative_gap": float(np.nanmax(rel)),
                             "by_class": by_class},
            "faithfulness": faithfulness(faith_items) if faith_items else None,
            "faith_items": faith_items, "pieces": pieces,
            "tokens_per_prompt": float(np.mean([len(it["tokens"]) for it in items])),
            "user_tokens_per_prompt": float(np.mean([sum(it["user"]) for it in items]))}
    cos = _load(folder / "cosines" / "explain.json")
    if cos is None:
        out["missing"].append("cosines")
    else:
        out["cosines"] = {**cos["cosines"], "command": cos.get("command"), "probe": cos.get("probe"),
                          **_log_load(folder / "cosines.log")}
    return out


def claim2(cos: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Layers of the middle third (ihs's default span) where the malicious-vs-normal direction aligns with the
    negative-emotion direction beyond the random-word and beyond the shuffled-concept controls."""
    from ihs.layers import default_layer_range

    lo, hi = default_layer_range(num_layers)
    entry = cos["controls"]["malicious_vs_normal"]["negative_emotion"]
    layers = cos["layers"]
    mid = [i for i, layer in enumerate(layers) if lo <= layer <= hi]
    pick = [entry["cosine"][i] for i in mid]
    out = {"middle_layers": [lo, hi], "cosine_range": [float(np.nanmin(pick)), float(np.nanmax(pick))],
           "positive_beyond_random": [layers[i] for i in mid if entry["random"]["exceeds_q95"][i]
                                      and entry["cosine"][i] > 0],
           "positive_beyond_shuffled": [layers[i] for i in mid if entry["shuffled"]["exceeds_q95"][i]
                                        and entry["cosine"][i] > 0],
           "shuffled_q95_range": [float(np.nanmin([entry["shuffled"]["q95_abs"][i] for i in mid])),
                                  float(np.nanmax([entry["shuffled"]["q95_abs"][i] for i in mid]))]}
    ref = cos["controls"].get("refusal", {}).get("negative_emotion")
    if ref:
        out["refusal_vs_negative_emotion"] = [float(ref["cosine"][i]) if ref["cosine"][i] is not None else None
                                              for i in mid]
        out["refusal_positive_beyond_shuffled"] = [layers[i] for i in mid if ref["shuffled"]["exceeds_q95"][i]
                                                   and ref["cosine"][i] > 0]
    return out


def _round(value: Any, digits: int = 4) -> Any:
    """Floats rounded (the summary is a small results file; the runs keep full precision)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _fc(entry: dict[str, Any] | None, d: int = 3) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['mean']:.{d}f}" + (f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]" if ci else "")


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# ihs explain on the zoo models", "", "Written by `scripts/explain_summary.py` from the runs of "
             "`bash scripts/make_explain_results.sh`; intervals are 95% percentile bootstrap intervals over "
             "prompts.", ""]
    for short, m in summary["models"].items():
        lines += [f"## {MODELS.get(short, short)}", ""]
        if m.get("missing"):
            lines += [f"Missing pieces: {', '.join(m['missing'])}", ""]
        for method, r in m["methods"].items():
            lines += [f"### {method}: shares of |attribution| ({r['prompts']} prompts)", "",
                      "| class | prompts | on alarming words | uniform | lift (share/uniform) | above uniform | "
                      "on the marked span | uniform | lift |", "|---|---|---|---|---|---|---|---|---|"]
            for label, e in r["shares"].items():
                a, s = e["alarm"], e["marked"]
                lines.append(
                    f"| {label} | {e['n']} | {_fc({'mean': a['share'], 'ci': a['share_ci']})} ({a['prompts']}) | "
                    f"{_f(a['uniform'])} | {_fc({'mean': a['lift'], 'ci': a['lift_ci']}, 2)} | "
                    f"{a['above']}/{a['prompts']} | {_fc({'mean': s['share'], 'ci': s['share_ci']})} "
                    f"({s['prompts']}) | {_f(s['uniform'])} | {_fc({'mean': s['lift'], 'ci': s['lift_ci']}, 2)} |")
            v = r["probe_verdicts"]
            lines += ["", "Probe logit > 0 (malicious): " + ", ".join(
                f"{k} {e['above_zero']}/{e['n']} (median logit {e['median_logit']:.2f}, baseline "
                f"{e['median_baseline_logit']:.2f})" for k, e in v.items())]
            c = r["completeness"]
            lines += ["", f"Completeness (relative gap): median {_f(c['median_relative_gap'])}, 90% "
                      f"{_f(c['p90_relative_gap'])}, max {_f(c['max_relative_gap'])}; by class "
                      + ", ".join(f"{k} {_f(v['median'])} (max {_f(v['max'])})" for k, v in c["by_class"].items()),
                      ""]
            f = r.get("faithfulness")
            if f:
                lines += ["Signed areas in probe-logit units (deletion: lower is better; insertion: higher), "
                          f"median |full - empty| {_f(f['span']['median'], 2)}:", "",
                          "| curve | attribution | random | bag-of-words | attribution - random | attribution - bow "
                          "| beats random (prompts) | median normalised: attr / random / bow |",
                          "|---|---|---|---|---|---|---|---|"]
                for curve in ("deletion", "insertion"):
                    p = f[curve]
                    lines.append(f"| {curve} | {_fc(p['attribution'], 2)} | {_fc(p['random'], 2)} | "
                                 f"{_fc(p['bow'], 2)} | {_fc(p['attribution_minus_random'], 2)} | "
                                 f"{_fc(p.get('attribution_minus_bow'), 2)} | {p['attribution_beats_random']['k']}/"
                                 f"{p['attribution_beats_random']['n']} | {_f(p['attribution']['median_normalised'], 2)}"
                                 f" / {_f(p['random']['median_normalised'], 2)} / "
                                 f"{_f(p['bow']['median_normalised'], 2)} |")
                lines.append("")
            for c_name, piece in r["pieces"].items():
                lines.append(f"- `{c_name}`: `{piece.get('command')}` (wall {piece.get('wall_s')} s, load "
                             f"{piece.get('load_before')} -> {piece.get('load_after')}; attribution "
                             f"{_f((piece.get('timing') or {}).get('prompts_per_second'))} prompts/s)")
            lines.append("")
        cos = m.get("cosines")
        if cos:
            lines += [f"### Direction cosines with the malicious-vs-normal direction ({cos['sizes']})", "",
                      f"Refusal direction: {cos['refusal']}", "",
                      "| layer | " + " | ".join(cos["controls"]["malicious_vs_normal"]) + " | refusal |",
                      "|---" * (len(cos["controls"]["malicious_vs_normal"]) + 2) + "|"]
            for li, layer in enumerate(cos["layers"]):
                cells = []
                for e in cos["controls"]["malicious_vs_normal"].values():
                    v = e["cosine"][li]
                    mark = ("R" if e["random"]["exceeds_q95"][li] else "") + \
                           ("S" if e["shuffled"]["exceeds_q95"][li] else "")
                    cells.append(f"{_f(v, 2)}{' (' + mark + ')' if mark else ''}")
                ref = (_f(cos["refusal_vs_malicious_vs_normal"][li], 2)
                       if "refusal_vs_malicious_vs_normal" in cos else "n/a")
                lines.append(f"| {layer} | " + " | ".join(cells) + f" | {ref} |")
            lines += ["", f"Claim 2 check: {m.get('claim2')}", f"Command: `{cos.get('command')}`", ""]
    ex = summary.get("examples")
    if ex:
        lines += ["## Worked examples", "", f"Counts: {ex['counts']}", f"Command: `{ex['command']}`", ""]
        for e in ex["examples"]:
            lines.append(f"- {e['kind']}: p = {_f(e['guard']['probability'])} (threshold "
                         f"{_f(e['guard']['threshold'])}); {e['story_text']}")
        lines.append("")
    sp = summary.get("speed")
    if sp:
        lines += ["## Speed", "", f"{sp}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/explain-zoo")
    parser.add_argument("--out", default="benchmarks/results/explain_zoo")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--examples", default=None, help="Worked-examples folder (default: RUNS/examples).")
    parser.add_argument("--extra", action="append", default=[],
                        help="LABEL:METHOD=DIR: one more ihs explain run (e.g. the same prompts with another "
                             "method) as a row of the faithfulness figure and table; repeatable.")
    args = parser.parse_args()

    from ihs.io import write_json
    from ihs.plots.explain import plot_zoo_cosines, plot_zoo_faithfulness

    runs = Path(args.runs)
    summary: dict[str, Any] = {"format": "ihs-explain-zoo", "runs": str(runs), "models": {}}
    faith_runs: dict[str, dict[str, list]] = {}
    cosines: dict[str, Any] = {}
    for short in MODELS:
        if not (runs / short).is_dir():
            continue
        m = model_summary(runs / short)
        for method, r in m["methods"].items():
            if r["faith_items"]:
                faith_runs.setdefault(MODELS[short], {})[method] = r.pop("faith_items")
            else:
                r.pop("faith_items")
        if "cosines" in m:
            num_layers = max(m["cosines"]["layers"])
            m["claim2"] = claim2(m["cosines"], num_layers)
            cosines[MODELS[short]] = m["cosines"]
        summary["models"][short] = m
    extra: dict[str, Any] = {}
    for spec in args.extra:
        label_method, _, folder = spec.partition("=")
        label, _, method = label_method.partition(":")
        d = _load(Path(folder) / "explain.json")
        if d is None or not d.get("faithfulness"):
            raise SystemExit(f"no faithfulness in {folder}")
        faith_runs.setdefault(label, {})[method] = d["faithfulness"]["items"]
        extra.setdefault(label, {})[method] = {"command": d.get("command"), "prompts": len(d["items"]),
                                               "faithfulness": faithfulness(d["faithfulness"]["items"]),
                                               "completeness": d.get("completeness")}
    if extra:
        summary["extra"] = extra
    ex_dir = Path(args.examples) if args.examples else runs / "examples"
    ex = _load(ex_dir / "examples.json")
    if ex:
        summary["examples"] = {"counts": ex["counts"], "command": ex["command"], "seconds": ex["seconds"],
                               "load_before": ex["load_before"], "load_after": ex["load_after"],
                               "candidates": ex["candidates"],
                               "examples": [{k: e[k] for k in ("kind", "id", "text", "guard", "answer", "refused",
                                                                "guard_top", "guard_bottom", "story_text")}
                                            | {"summary": e["story"]["summary"],
                                               "guard_relative_gap": e["guard_attribution"]["relative_gap"],
                                               "refusal_relative_gap": e["refusal_attribution"]["relative_gap"],
                                               "refusal_margin": e["refusal_attribution"]["target"]}
                                            for e in ex["examples"]]}
        figs = Path(args.figures)
        shutil.copy(ex_dir / "examples.html", figs / "explain_examples.html")
        if (ex_dir / "explain_examples.png").is_file():
            shutil.copy(ex_dir / "explain_examples.png", figs / "explain_examples.png")
    sp = _load(runs / "speed" / "explain.json")
    if sp:
        summary["speed"] = {"command": sp.get("command"), "timing": sp["timing"], "prompts": len(sp["items"]),
                            "tokens_per_prompt": float(np.mean([len(it["tokens"]) for it in sp["items"]])),
                            "completeness": sp["completeness"], **_log_load(runs / "speed.log")}
    cmd = f"scripts/explain_summary.py --runs {args.runs} --out {args.out} --figures {args.figures}" + (
        f" --examples {args.examples}" if args.examples else "") + "".join(f" --extra {e}" for e in args.extra)
    summary["command"] = cmd
    plot_zoo_faithfulness(faith_runs, Path(args.figures), caption="bash scripts/make_explain_results.sh; " + cmd)
    plot_zoo_cosines(cosines, Path(args.figures), caption="bash scripts/make_explain_results.sh; " + cmd)
    for m in summary["models"].values():  # the full cosine matrix stays in the runs; keep refusal vs malicious
        cos = m.get("cosines")
        if cos and "cosines" in cos:
            names = cos["names"]
            if "refusal" in names:
                i, j = names.index("malicious_vs_normal"), names.index("refusal")
                cos["refusal_vs_malicious_vs_normal"] = [row[i][j] for row in cos["cosines"]]
            del cos["cosines"]
            for per in cos.get("controls", {}).values():
                for entry in per.values():
                    for kind in ("random", "shuffled"):
                        (entry.get(kind) or {}).pop("mean_abs", None)
    write_json(Path(args.out + ".json"), _round(summary))
    Path(args.out + ".md").write_text(markdown(summary), encoding="utf-8")
    print(f"wrote {args.out}.json, {args.out}.md and figures in {args.figures}")


if __name__ == "__main__":
    main()
