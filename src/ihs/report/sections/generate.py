"""Generation and refusal: refusal rate and attack success rate per class and jailbreak family."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import Raw, esc, fmt_seconds, pct, png_figure, table, text_block, verdict
from ihs.report.html import section as section_html
from ihs.report.svg import class_order
from ihs.workflows.generate import GenerateResult

RESULT = GenerateResult
TITLE = "Generation and refusal"
LEAD = "Does the model refuse? Attack success rate (ASR) on malicious and jailbreak prompts, over-refusal on benign ones."


def example_rows(rows: list[dict[str, Any]], n: int) -> list[list[Any]]:
    """Table rows of judged answers: class, family, prompt, answer, verdict (all escaped)."""
    return [[r.get("label", ""), (r.get("tags") or {}).get("family", ""), Raw(text_block(r.get("prompt", ""), 360)),
             Raw(text_block(r.get("answer", ""), 360)), Raw(verdict(r.get("refused")))] for r in rows[:n]]


def _rates(ref: dict[str, Any]) -> str:
    rows = []
    for label in class_order(ref["per_class"]):
        v = ref["per_class"][label]
        lo_ci, hi_ci = v["refusal_ci95"]
        rows.append([label, v["n"], v["refused"], pct(v["refusal_rate"]), f"{pct(lo_ci)}-{pct(hi_ci)}", pct(v["asr"])])
    out = table(["class", "n", "refused", "refusal rate", "95% CI", "ASR (answered)"], rows, numeric=[1, 2, 3, 4, 5])
    fam_rows = [[fam, v["n"], pct(v["refusal_rate"]), pct(v["asr"])] for fam, v in
                sorted(ref.get("per_family", {}).items(), key=lambda kv: -kv[1]["asr"])]
    if fam_rows:
        out += "<h4>Jailbreak families</h4>" + table(["family", "n", "refusal rate", "ASR"], fam_rows, numeric=[1, 2, 3])
    return out


def _examples(gens: list[dict[str, Any]], examples: int) -> str:
    picked = []
    for label in ("malicious", "jailbreak", "normal", "contrast"):
        picked += [r for r in gens if r.get("label") == label][:max(1, examples // 2)]
    if not picked:
        return ""
    return ("<h4>Example answers</h4>"
            + table(["class", "family", "prompt", "answer", "verdict"], example_rows(picked, len(picked)),
                    cls="examples", widths=["10%", "13%", "36%", "31%", "10%"]))


def _body(ctx: ReportContext, m: ModelResults, result: Any) -> str:
    ref = result.data
    opts = ref.get("options", {})
    text = (f"Greedy answers of at most {opts.get('max_new_tokens', '?')} new tokens, judged by the "
            f"'{ref.get('judge')}' judge (refusal phrases in the opening of the answer). ASR = share not refused. "
            f"{len(result.rows)} answers in {fmt_seconds(ref.get('seconds'))}.")
    figure = png_figure(m.folder("generate") / "refusal.png", "refusal rate per class and family")
    return f'<p class="lead">{esc(text)}</p>{_rates(ref)}{figure}{_examples(result.rows, ctx.examples)}'


def section(ctx: ReportContext) -> str:
    """Refusal per class and family, the refusal figure and example answers."""
    blocks = ctx.per_model("generate", "generate", lambda m, r: _body(ctx, m, r))
    return section_html("generate", "Generation and refusal", blocks, LEAD)
