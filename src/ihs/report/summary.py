"""The findings of a run in plain words and numbers, read from the analyses' JSON outputs.

Every number here is read from a file the run wrote (``probe.json``, ``lens.json``,
``refusal.json``, ``jailbreak.json``, ``graft.json``); nothing is computed from hidden states and
nothing is filled in when an output is missing: the finding then says why it is absent.
The HTML report escapes the text; this module returns plain strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PRIMARY_CLASSIFIERS = ("svm", "logreg", "mlp", "diffmean")
CLAIMS = {
    "probe": "Early recognition (claim 1)",
    "emotion": "Middle-layer emotion (claim 2)",
    "jailbreak": "Jailbreaks (claim 3)",
    "consistency": "Top-K Intermediate Consistency (claim 4)",
    "graft": "Logit grafting (claim 5)",
}
CLASSIFIER_NAMES = {"svm": "linear SVM", "mlp": "MLP", "logreg": "logistic regression", "diffmean": "difference of means"}


@dataclass
class Finding:
    """One line of the summary: ``headline`` is the short number, ``text`` the sentence around it."""

    key: str
    title: str
    available: bool
    headline: str = ""
    text: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def pct(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def primary_classifier(classifiers: Sequence[str]) -> str | None:
    for name in PRIMARY_CLASSIFIERS:
        if name in classifiers:
            return name
    return next(iter(classifiers), None)


def mean_over(values: Sequence[float | None], layers: Sequence[int], lo: int, hi: int) -> float | None:
    picked = [v for v, layer in zip(values, layers, strict=True) if lo <= layer <= hi and v is not None]
    return sum(picked) / len(picked) if picked else None


# -- per analysis ----------------------------------------------------------------------------------------


def probe_numbers(probe: dict[str, Any]) -> dict[str, Any] | None:
    if not probe or not probe.get("stores"):
        return None
    entry = probe["stores"][0]
    clf = primary_classifier(list(entry["classifiers"]))
    if clf is None:
        return None
    res = entry["classifiers"][clf]
    control = res.get("control_accuracy")
    control = [c for c in control if c is not None] if control else None
    return {
        "classifier": clf, "classifier_name": CLASSIFIER_NAMES.get(clf, clf), "num_layers": entry["num_layers"],
        "first_95": res.get("first_layer_95"), "first_95_depth": res.get("first_layer_95_depth"),
        "best_layer": res.get("best_layer"), "best_accuracy": res.get("best_accuracy"),
        "control": sum(control) / len(control) if control else None,
        "bow": (entry.get("bow") or {}).get("accuracy"), "classes": entry["classes"], "n": entry["n"],
        "folds": probe.get("folds"), "mode": probe.get("mode"),
        "jailbreak_called_malicious": _at_first(res, entry, "jailbreak_called_malicious"),
        "warnings": list(entry.get("warnings", [])),
    }


def _at_first(res: dict[str, Any], entry: dict[str, Any], key: str) -> float | None:
    first = res.get("first_layer_95")
    if first is None or key not in res:
        return None
    return res[key][entry["layers"].index(first)]


def lens_numbers(lens: dict[str, Any]) -> dict[str, Any] | None:
    if not lens or not lens.get("models"):
        return None
    entry = lens["models"][0]
    logit = entry["lenses"]["logit"]
    lo, hi = logit["layer_range"]
    assoc = logit["association"]
    layers = assoc["layers"]
    shares: dict[str, dict[str, float | None]] = {}
    for label, c in assoc["classes"].items():
        shares[label] = {e: mean_over(c["topk"][e]["share"], layers, lo, hi) for e in ("negative", "positive", "neutral")}
    tkic = {label: c["scalar"]["top1"] for label, c in logit["consistency"].items()}
    tkic_k = {label: c["scalar"]["topk"] for label, c in logit["consistency"].items()}
    dom = assoc.get("negative_dominance", {}).get("topk", {})
    return {"range": (lo, hi), "k": assoc.get("k"), "shares": shares, "tkic_top1": tkic, "tkic_topk": tkic_k,
            "negative_first": dom.get("first"), "negative_stable": dom.get("stable_from"),
            "num_layers": entry.get("num_layers")}


def refusal_numbers(refusal: dict[str, Any]) -> dict[str, Any] | None:
    if not refusal or "per_class" not in refusal:
        return None
    return {"per_class": refusal["per_class"], "per_family": refusal.get("per_family", {}), "asr": refusal.get("asr"),
            "judge": refusal.get("judge")}


def graft_numbers(graft: dict[str, Any]) -> dict[str, Any] | None:
    if not graft or not graft.get("forward") or not graft["forward"].get("layers"):
        return None
    fwd = graft["forward"]
    best = max(fwd["layers"], key=lambda e: (e["asr"], e.get("changed_answers") or 0, -e["layer"]))
    return {"best_layer": best["layer"], "best_asr": best["asr"], "best_n": best["n"],
            "best_changed": best.get("changed_answers"), "baseline_asr": fwd["baseline"]["asr"],
            "reference_asr": (fwd.get("reference") or {}).get("asr"),
            "reference_n": (fwd.get("reference") or {}).get("n"), "n_targets": fwd["n_targets"],
            "n_donors": fwd["n_donors"], "layers": [e["layer"] for e in fwd["layers"]],
            "target_labels": fwd.get("target_labels", []), "donor_labels": fwd.get("donor_labels", []),
            "per_pair": fwd.get("per_pair")}


# -- the findings ------------------------------------------------------------------------------------------


def _missing(key: str, why: str) -> Finding:
    return Finding(key=key, title=CLAIMS[key], available=False, headline="not available", text=why)


def findings(outputs: dict[str, Any], why_missing: dict[str, str] | None = None) -> list[Finding]:
    """The summary findings of one model from its outputs (keys: probe, lens, refusal, jailbreak, graft).

    ``why_missing`` maps an analysis (probe, lens, generate, jailbreak, graft) to the reason its output
    is absent (disabled, failed, not available in this version), shown instead of a number.
    """
    why = why_missing or {}
    out: list[Finding] = []

    p = probe_numbers(outputs.get("probe"))
    if p is None:
        out.append(_missing("probe", why.get("probe", "the probe step produced no output")))
    else:
        L = p["num_layers"]
        classes = " vs ".join(p["classes"])
        if p["first_95"] is not None:
            headline = f"layer {p['first_95']} of {L}"
            text = (f"{classes}: the {p['classifier_name']} probe on the last-token state first reaches 95% accuracy at "
                    f"layer {p['first_95']} of {L} (depth {num(p['first_95_depth'])})")
        else:
            headline = "never reaches 95%"
            text = f"{classes}: the {p['classifier_name']} probe never reaches 95% accuracy at any of the {L + 1} layers"
        text += f"; best {num(p['best_accuracy'], 3)} at layer {p['best_layer']}"
        if p["control"] is not None:
            text += f"; shuffled-label control {num(p['control'], 2)}"
        if p["bow"] is not None:
            text += f"; a bag-of-words model on the raw text scores {num(p['bow'], 2)}"
        text += "."
        if p["jailbreak_called_malicious"] is not None:
            text += (f" At that layer the probe calls {pct(p['jailbreak_called_malicious'])} of jailbreak prompts "
                     "malicious.")
        out.append(Finding("probe", CLAIMS["probe"], True, headline, text, p))

    lens = lens_numbers(outputs.get("lens"))
    if lens is None:
        out.append(_missing("emotion", why.get("lens", "the lens step produced no output")))
    else:
        lo, hi = lens["range"]
        s = lens["shares"]
        mal, nor, jb = s.get("malicious"), s.get("normal"), s.get("jailbreak")
        if mal and nor and mal["negative"] is not None and nor["negative"] is not None:
            contrast = mal["negative"] - nor["negative"]
            headline = f"contrast {contrast * 100:+.0f} pts"
            text = (f"Layers {lo}-{hi} (logit lens, top-{lens['k']}): a negative emotion token (sorry, cannot, ...) is "
                    f"among the top tokens for {pct(mal['negative'])} of malicious vs {pct(nor['negative'])} of normal "
                    f"prompts (contrast {contrast * 100:+.0f} points); a positive one (sure, glad, ...) for "
                    f"{pct(nor['positive'])} of normal vs {pct(mal['positive'])} of malicious prompts.")
            if jb and jb["negative"] is not None:
                text += (f" Jailbreak prompts: negative {pct(jb['negative'])}, positive {pct(jb['positive'])}.")
            first = lens["negative_first"]
            text += (f" Negative tokens first dominate for malicious input at layer {first}." if first is not None
                     else " Negative tokens never dominate for malicious input (margin 0.1).")
            numbers = {**lens, "contrast": contrast}
            out.append(Finding("emotion", CLAIMS["emotion"], True, headline, text, numbers))
        else:
            out.append(_missing("emotion", "the data has no normal and malicious classes to contrast"))

    r = refusal_numbers(outputs.get("refusal"))
    jb_out = outputs.get("jailbreak")
    if r is None:
        out.append(_missing("jailbreak", why.get("generate", "the generate step produced no output")))
    else:
        per = r["per_class"]
        jb_rate, mal_rate = per.get("jailbreak"), per.get("malicious")
        parts = []
        if jb_rate:
            headline = f"ASR {pct(jb_rate['asr'])}"
            lo_ci, hi_ci = jb_rate["asr_ci95"]
            parts.append(f"Jailbreak prompts: attack success rate {pct(jb_rate['asr'])} "
                         f"({jb_rate['n'] - jb_rate['refused']} of {jb_rate['n']} answered, 95% CI {pct(lo_ci)}-{pct(hi_ci)})")
        elif mal_rate:
            headline = f"malicious ASR {pct(mal_rate['asr'])}"
        else:
            headline = "no attack prompts"
        if mal_rate:
            parts.append(f"plain malicious prompts: {pct(mal_rate['asr'])} ({mal_rate['n'] - mal_rate['refused']} of "
                         f"{mal_rate['n']})")
        if per.get("normal"):
            parts.append(f"normal prompts refused: {pct(per['normal']['refusal_rate'])}")
        if per.get("contrast"):
            parts.append(f"contrast prompts refused: {pct(per['contrast']['refusal_rate'])}")
        text = "; ".join(parts) + f" ({r['judge']} judge)."
        if jb_out and jb_out.get("groups"):
            g = jb_out["groups"]
            jall, mal = g.get("jailbreak (all)", {}), g.get("malicious", {})
            if jall.get("early_recognised") is not None and mal.get("early_recognised") is not None:
                text += (f" The layer-{jb_out['early_layer']} probe still calls {pct(jall['early_recognised'])} of "
                         f"jailbreak prompts malicious ({pct(mal['early_recognised'])} of plain malicious ones).")
        out.append(Finding("jailbreak", CLAIMS["jailbreak"], True, headline, text,
                           {"per_class": per, "asr": r["asr"]}))

    if lens is None:
        out.append(_missing("consistency", why.get("lens", "the lens step produced no output")))
    else:
        lo, hi = lens["range"]
        tk = lens["tkic_top1"]
        order = [c for c in ("malicious", "jailbreak", "normal", "contrast") if c in tk] + \
            [c for c in tk if c not in ("malicious", "jailbreak", "normal", "contrast")]
        main = "malicious" if "malicious" in tk else order[0]
        headline = f"TKIC {num(tk[main])} ({main})"
        text = (f"Mean top-1 share over layers {lo}-{hi}: " + ", ".join(f"{c} {num(tk[c])}" for c in order)
                + " (1 = every prompt of the class has the same top token at every middle layer).")
        out.append(Finding("consistency", CLAIMS["consistency"], True, headline, text, {"tkic_top1": tk, "range": [lo, hi]}))

    g = graft_numbers(outputs.get("graft"))
    if g is None:
        out.append(_missing("graft", why.get("graft", "the graft step produced no output")))
    else:
        donors = "+".join(g["donor_labels"]) or "donor"
        targets = "+".join(g["target_labels"]) or "target"
        headline = f"layer {g['best_layer']}: ASR {pct(g['best_asr'])}"
        text = (f"Grafting the {donors} prompts' {'per-pair' if g['per_pair'] else 'mean'} last-token state into "
                f"{g['n_targets']} {targets} prompts: highest ASR {pct(g['best_asr'])} at layer {g['best_layer']} "
                f"(ties: the layer that changed the most answers; no graft: {pct(g['baseline_asr'])}")
        if g["reference_asr"] is not None:
            text += f"; real jailbreaks: {pct(g['reference_asr'])}"
        text += f"; layers tried: {_layers_text(g['layers'])})."
        if g["baseline_asr"] is not None and g["baseline_asr"] >= 0.9:
            text += (" The model already answers most of these prompts without a graft, so grafting has little room "
                     "to raise the ASR.")
        out.append(Finding("graft", CLAIMS["graft"], True, headline, text, g))
    return out


def _layers_text(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 2:
        steps = {b - a for a, b in zip(layers, layers[1:], strict=False)}
        if len(steps) == 1:
            return f"{layers[0]}-{layers[-1]} every {steps.pop()}"
    return ", ".join(str(x) for x in layers)
