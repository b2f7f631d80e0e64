"""Logit lens and emotion (claims 2 and 3): emotion tokens in the middle layers' decoded top-k."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import Raw, display_token, esc, pct, png, table, text_block
from ihs.report.html import section as section_html
from ihs.report.svg import EMOTION_STYLE, EMOTION_SWATCH, LAYER_AXIS, color, line_chart, swatch
from ihs.workflows.lens import LensResult

RESULT = LensResult
TITLE = "Logit lens and emotion"
ALSO = ("consistency",)
EMOTIONS = ("negative", "positive", "neutral")
LEAD = ("Claim 2: aligned models' middle layers decode (logit lens) to positive tokens for normal input and negative "
        "ones for malicious input; claim 3: jailbreaks weaken the negative association.")


def _chart(assoc: dict[str, Any], lo: int, hi: int, slug: str) -> str:
    labels = list(assoc["classes"])
    series = []
    for label in labels:
        c = assoc["classes"][label]
        if not c["n"]:
            continue
        for emo in EMOTIONS:
            series.append({"name": f"{label}: {emo} token in top-{assoc['k']} (n={c['n']})", "x": assoc["layers"],
                           "y": c["topk"][emo]["share"], "color": color(label, labels),
                           "dash": EMOTION_STYLE[emo], "attrs": {"class": label, "emotion": emo}})
    toggles = [("class", "classes", [(lab, lab, swatch(color(lab, labels)), True) for lab in labels]),
               ("emotion", "emotion", [(e, e, swatch("#333", EMOTION_SWATCH[e]), e != "neutral") for e in EMOTIONS])]
    return line_chart(series, x_label=LAYER_AXIS, y_label=f"share of prompts (top-{assoc['k']})", y_percent=True,
                      shade=(lo, hi), shade_label=f"middle layers {lo}-{hi}", toggles=toggles,
                      title="Emotion tokens in the logit-lens top-k, by layer", figure_id=f"trajectory-{slug}")


def _shares(assoc: dict[str, Any], nums: dict[str, Any], lo: int, hi: int) -> str:
    rows = []
    for label in assoc["classes"]:
        s = nums["shares"].get(label, {})
        rows.append([label, assoc["classes"][label]["n"], pct(s.get("negative")), pct(s.get("positive")),
                     pct(s.get("neutral"))])
    return table([f"class (layers {lo}-{hi})", "n", "negative", "positive", "neutral"], rows, numeric=[1, 2, 3, 4])


def _dominance(assoc: dict[str, Any]) -> str:
    dom = assoc.get("negative_dominance", {})
    topk = dom.get("topk", {})
    first = topk.get("first")
    if first is None:
        text = "Negative tokens never dominate for malicious input."
    else:
        stable = topk.get("stable_from")
        text = (f"Negative tokens first dominate for malicious input at layer {first}"
                + (f" and hold from layer {stable} on" if stable is not None else "") + ".")
    return text + f" ({dom.get('definition', '')})"


def _vocab(entry: dict[str, Any]) -> str:
    vocab = entry.get("vocab_check") or {}
    if vocab:
        single = vocab.get("words_with_single_token", {})
        total = vocab.get("words_total", {})
        return ("Lexicon words that are one token in this tokenizer: "
                + ", ".join(f"{e} {single.get(e, 0)} of {total.get(e, 0)}" for e in total) + ".")
    return entry.get("vocab_check_note") or ""


def _examples(m: ModelResults, lo: int, hi: int, examples: int) -> str:
    ex = m.lens_examples()
    if not ex:
        return ""
    mid, last = (lo + hi) // 2, ex["num_layers"]
    rows = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(ex["records"]):
        if seen.get(rec["label"], 0) >= max(1, examples // 2):
            continue
        seen[rec["label"]] = seen.get(rec["label"], 0) + 1
        mid_tokens = " · ".join(display_token(ex["text"](t), 12) for t in ex["ids"][i, mid])
        last_tokens = " · ".join(display_token(ex["text"](t), 12) for t in ex["ids"][i, last])
        rows.append([rec["label"], Raw(text_block(rec["text"], 240)), mid_tokens, last_tokens])
    return (f"<h4>Examples: top tokens at the middle layer {mid} and the last layer {last}</h4>"
            + table(["class", "prompt", f"layer {mid}", f"layer {last}"], rows, cls="examples",
                    widths=["11%", "41%", "24%", "24%"]))


def _body(ctx: ReportContext, m: ModelResults, result: Any) -> str:
    entry = result.data["models"][0]
    assoc = entry["lenses"]["logit"]["association"]
    lo, hi = entry["lenses"]["logit"]["layer_range"]
    lex = result.data.get("lexicon", {})
    intro = (f"Shaded: the middle layers {lo}-{hi}. Lines: share of each class whose top-{assoc['k']} decoded tokens "
             "hold a negative (solid), positive (dashed) or neutral (dotted) lexicon token. Hover a point for its "
             "value; tick classes and emotions to compare.")
    trajectory = png(m.folder("lens") / ("lens_" + entry["store_name"] + "_trajectory.png"), "emotion trajectory")
    return (f'<p class="lead">{esc(intro)}</p>{_chart(assoc, lo, hi, m.slug)}{trajectory}'
            f"<h4>Middle layers, mean share</h4>{_shares(assoc, result.numbers(), lo, hi)}"
            f"<p>{esc(_dominance(assoc))}</p>"
            f'<p class="lead">{esc(_vocab(entry))} Lexicon: {esc(lex.get("name", ""))} {esc(lex.get("version", ""))}.</p>'
            + _examples(m, lo, hi, ctx.examples))


def section(ctx: ReportContext) -> str:
    """Emotion-token shares by layer and class, middle-layer means, dominance, examples of decoded tokens."""
    blocks = ctx.per_model("lens", "lens", lambda m, r: _body(ctx, m, r))
    return section_html("lens", "Logit lens and emotion tokens", blocks, LEAD)
