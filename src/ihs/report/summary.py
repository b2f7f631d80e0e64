"""The findings of a run in plain words and numbers, from the results' headline numbers.

Every number here comes from a result's ``numbers()`` (or its data) as the run saved it; nothing is
computed from hidden states and nothing is filled in when a result is missing: the finding then
says why it is absent. The HTML report escapes the text; this module returns plain strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ihs.report.html import num, pct

CLAIMS = {
    "probe": "Early recognition (claim 1)",
    "emotion": "Middle-layer emotion (claim 2)",
    "jailbreak": "Jailbreaks (claim 3)",
    "consistency": "Top-K Intermediate Consistency (claim 4)",
    "graft": "Logit grafting (claim 5)",
}
ORDER = ("malicious", "jailbreak", "normal", "contrast")


@dataclass
class Finding:
    """One line of the summary: ``headline`` is the short number, ``text`` the sentence around it."""

    key: str
    title: str
    available: bool
    headline: str = ""
    text: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def _missing(key: str, why: str) -> Finding:
    return Finding(key=key, title=CLAIMS[key], available=False, headline="not available", text=why)


def _numbers(result: Any) -> dict[str, Any] | None:
    return result.numbers() if result is not None else None


def findings(results: Mapping[str, Any], why_missing: Mapping[str, str] | None = None) -> list[Finding]:
    """The summary findings of one model from its results (keys: probe, lens, generate, jailbreak, graft;
    a value is the step's Result or None).

    ``why_missing`` maps a step (probe, lens, generate, jailbreak, graft) to the reason its result is
    absent (disabled, failed, not available in this version), shown instead of a number.
    """
    why = dict(why_missing or {})
    lens = _numbers(results.get("lens"))
    return [
        _probe_finding(_numbers(results.get("probe")), why),
        _emotion_finding(lens, why),
        _jailbreak_finding(_numbers(results.get("generate")), results.get("jailbreak"), why),
        _consistency_finding(lens, why),
        _graft_finding(_numbers(results.get("graft")), why),
    ]


def _probe_finding(p: dict[str, Any] | None, why: dict[str, str]) -> Finding:
    if p is None:
        return _missing("probe", why.get("probe", "the probe step produced no output"))
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
    return Finding("probe", CLAIMS["probe"], True, headline, text, p)


def _emotion_finding(lens: dict[str, Any] | None, why: dict[str, str]) -> Finding:
    if lens is None:
        return _missing("emotion", why.get("lens", "the lens step produced no output"))
    lo, hi = lens["range"]
    s = lens["shares"]
    mal, nor, jb = s.get("malicious"), s.get("normal"), s.get("jailbreak")
    if not (mal and nor and mal["negative"] is not None and nor["negative"] is not None):
        return _missing("emotion", "the data has no normal and malicious classes to contrast")
    contrast = mal["negative"] - nor["negative"]
    headline = f"contrast {contrast * 100:+.0f} pts"
    text = (f"Layers {lo}-{hi} (logit lens, top-{lens['k']}): a negative emotion token (sorry, cannot, ...) is "
            f"among the top tokens for {pct(mal['negative'])} of malicious vs {pct(nor['negative'])} of normal "
            f"prompts (contrast {contrast * 100:+.0f} points); a positive one (sure, glad, ...) for "
            f"{pct(nor['positive'])} of normal vs {pct(mal['positive'])} of malicious prompts.")
    if jb and jb["negative"] is not None:
        text += f" Jailbreak prompts: negative {pct(jb['negative'])}, positive {pct(jb['positive'])}."
    first = lens["negative_first"]
    text += (f" Negative tokens first dominate for malicious input at layer {first}." if first is not None
             else " Negative tokens never dominate for malicious input (margin 0.1).")
    return Finding("emotion", CLAIMS["emotion"], True, headline, text, {**lens, "contrast": contrast})


def _jailbreak_finding(r: dict[str, Any] | None, jb_result: Any, why: dict[str, str]) -> Finding:
    if r is None:
        return _missing("jailbreak", why.get("generate", "the generate step produced no output"))
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
    text = "; ".join(parts) + f" ({r['judge']} judge)." + _early_text(jb_result.data if jb_result is not None else None)
    return Finding("jailbreak", CLAIMS["jailbreak"], True, headline, text, {"per_class": per, "asr": r["asr"]})


def _early_text(jb: dict[str, Any] | None) -> str:
    if not jb or not jb.get("groups"):
        return ""
    g = jb["groups"]
    jall, mal = g.get("jailbreak (all)", {}), g.get("malicious", {})
    if jall.get("early_recognised") is None or mal.get("early_recognised") is None:
        return ""
    return (f" The layer-{jb['early_layer']} probe still calls {pct(jall['early_recognised'])} of "
            f"jailbreak prompts malicious ({pct(mal['early_recognised'])} of plain malicious ones).")


def _consistency_finding(lens: dict[str, Any] | None, why: dict[str, str]) -> Finding:
    if lens is None:
        return _missing("consistency", why.get("lens", "the lens step produced no output"))
    lo, hi = lens["range"]
    tk = lens["tkic_top1"]
    order = [c for c in ORDER if c in tk] + [c for c in tk if c not in ORDER]
    main = "malicious" if "malicious" in tk else order[0]
    headline = f"TKIC {num(tk[main])} ({main})"
    text = (f"Mean top-1 share over layers {lo}-{hi}: " + ", ".join(f"{c} {num(tk[c])}" for c in order)
            + " (1 = every prompt of the class has the same top token at every middle layer).")
    return Finding("consistency", CLAIMS["consistency"], True, headline, text, {"tkic_top1": tk, "range": [lo, hi]})


def _graft_finding(g: dict[str, Any] | None, why: dict[str, str]) -> Finding:
    if g is None:
        return _missing("graft", why.get("graft", "the graft step produced no output"))
    donors = "+".join(g["donor_labels"]) or "donor"
    targets = "+".join(g["target_labels"]) or "target"
    headline = f"layer {g['best_layer']}: ASR {pct(g['best_asr'])}"
    text = (f"Grafting the {donors} prompts' {'per-pair' if g['per_pair'] else 'mean'} last-token state into "
            f"{g['n_targets']} {targets} prompts: highest ASR {pct(g['best_asr'])} at layer {g['best_layer']} "
            f"(ties: the layer that changed the most answers; no graft: {pct(g['baseline_asr'])}")
    if g["reference_asr"] is not None:
        text += f"; real jailbreaks: {pct(g['reference_asr'])}"
    text += f"; layers tried: {layers_text(g['layers'])})."
    if g["baseline_asr"] is not None and g["baseline_asr"] >= 0.9:
        text += (" The model already answers most of these prompts without a graft, so grafting has little room "
                 "to raise the ASR.")
    return Finding("graft", CLAIMS["graft"], True, headline, text, g)


def layers_text(layers: Sequence[int]) -> str:
    """Layers as ``a-b every s`` when evenly spaced, else listed."""
    layers = list(layers)
    if len(layers) > 2:
        steps = {b - a for a, b in zip(layers, layers[1:], strict=False)}
        if len(steps) == 1:
            return f"{layers[0]}-{layers[-1]} every {steps.pop()}"
    return ", ".join(str(x) for x in layers)
