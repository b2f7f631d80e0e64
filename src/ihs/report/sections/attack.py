"""Adversarial training: held-out measures per round and arm (the ``attack`` step, off by default)."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, table
from ihs.report.html import section as section_html
from ihs.workflows.attack import AttackResult

RESULT = AttackResult
TITLE = "Adversarial training"
LEAD = ("Rounds of <code>ihs attack rounds</code>: attacks found on the training side are added to the training data "
        "(refused) with benign look-alikes (answered), the model is trained with LoRA SFT and the guard refitted. "
        "Every round is measured on jailbreak families, mutations and goals never trained on; the random arm adds "
        "as many untargeted attacks.")
COLUMNS = (("arm", "arm"), ("round", "round"), ("asr", "held-out ASR"), ("asr_mutated", "ASR mutated"),
           ("over_refusal_contrast", "over-refusal contrast"), ("over_refusal_wrapped", "over-refusal wrapped"),
           ("flagged_asr", "ASR refuse-when-flagged"), ("guard_auroc", "guard AUROC held-out"),
           ("early_recognised", "early probe: malicious"), ("mid_neg_complied", "mid neg. complied"),
           ("mid_neg_refused", "mid neg. refused"), ("perplexity", "perplexity"), ("attacks_added", "attacks added"),
           ("seconds", "seconds"))


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return num(value) if isinstance(value, float) else str(value)


def _body(m: ModelResults, result: Any) -> str:
    n = result.numbers()
    rows = [[_cell(r[key]) for key, _ in COLUMNS] for r in n["rows"]]
    text = f"Rounds folder {n['run']} on {n['model']}: {len(rows)} evaluated models (round 0 is the base model)."
    return f'<p class="lead">{esc(text)}</p>' + table([label for _, label in COLUMNS], rows,
                                                       numeric=list(range(1, len(COLUMNS))))


def section(ctx: ReportContext) -> str:
    """One table row per arm and round (empty when the step did not run)."""
    if not any(m.ok("attack") for m in ctx.models):
        return ""
    return section_html("attack", TITLE, ctx.per_model("attack", "attack", _body), LEAD)
