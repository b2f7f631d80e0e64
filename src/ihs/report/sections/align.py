"""Alignment: an alignment run's checkpoints measured on held-out goals (the ``align`` step, off by default)."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, png, table
from ihs.report.html import section as section_html
from ihs.workflows.align import TrackResult

RESULT = TrackResult
TITLE = "Alignment"
LEAD = ("An alignment run (<code>ihs align sft|dpo</code>) followed checkpoint by checkpoint on goals never trained "
        "on: probe accuracy at L/4 and the first layer reaching 0.95, negative-emotion share in the logit lens, TKIC, "
        "refusal and attack success, over-refusal on contrast prompts and perplexity of benign answers.")
FIGURES = (("align_probe", "probe accuracy over training"), ("align_lens", "negative-emotion share per layer"),
           ("align_behaviour", "refusal, ASR, over-refusal, TKIC and perplexity over training"))
COLUMNS = (("step", "step"), ("loss", "loss"), ("acc_L4", "acc. L/4"), ("control_L4", "control L/4"),
           ("first_95", "first >= 0.95"), ("neg_share_malicious_mid", "neg. share mal. (mid)"),
           ("tkic_top1_malicious", "TKIC top-1 mal."), ("asr_malicious", "ASR mal."),
           ("asr_jailbreak", "ASR jailbreak"), ("over_refusal_contrast", "over-refusal"),
           ("perplexity", "perplexity"))


def _cell(value: Any) -> str:
    return "never" if value is None else (num(value) if isinstance(value, float) else str(value))


def _body(m: ModelResults, result: Any) -> str:
    n = result.numbers()
    rows = [[_cell(r[key]) for key, _ in COLUMNS] for r in n["rows"]]
    text = (f"Run {n['run']} ({n['method']}), {len(rows)} checkpoints, each measured on the same held-out "
            f"evaluation set.")
    figures = "".join(png(m.folder("align") / f"{stem}.png", alt) for stem, alt in FIGURES)
    return (f'<p class="lead">{esc(text)}</p>'
            + table([label for _, label in COLUMNS], rows, numeric=list(range(1, len(COLUMNS)))) + figures)


def section(ctx: ReportContext) -> str:
    """One table row per checkpoint and the three tracking figures (empty when the step did not run)."""
    if not any(m.ok("align") for m in ctx.models):
        return ""
    return section_html("align", TITLE, ctx.per_model("align", "align", _body), LEAD)
