"""Guard: a probe on one early layer as a harmful-request detector, measured on held-out prompts."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, pct, table
from ihs.report.html import section as section_html
from ihs.workflows.guard import GuardResult

RESULT = GuardResult
TITLE = "Guard"
LEAD = ("Early recognition put to work: a linear probe on one early layer flags harmful requests before any answer "
        "is generated. Layer and probe are chosen by cross-validation on the training split (a jailbreak stays "
        "with its plain goal), the threshold is calibrated on a separate calibration split, and every number "
        "below is measured on the held-out split, beside a bag-of-words model fitted on the same prompts.")
HEAD = ["detector", "n (malicious / benign)", "AUROC", "TPR at 1% FPR", "TPR at threshold", "FPR at threshold",
        "accuracy"]


def _headline(n: dict[str, Any]) -> str:
    counts = f"{n.get('n_malicious')} / {n.get('n_benign')}"
    rows = [[f"guard (layer {n['layer']}, {n['classifier']})", counts, num(n["auroc"], 3), pct(n["tpr_at_1pct_fpr"]),
             pct(n["tpr"]), pct(n["fpr"]), pct(n["accuracy"])]]
    if n.get("bow_auroc") is not None:
        rows.append(["bag-of-words on the raw text", counts, num(n["bow_auroc"], 3), pct(n["bow_tpr_at_1pct_fpr"]),
                     pct(n["bow_tpr"]), pct(n["bow_fpr"]), pct(n["bow_accuracy"])])
    return table(HEAD, rows, numeric=[2, 3, 4, 5, 6])


def _groups(n: dict[str, Any]) -> str:
    rows = []
    for kind, groups in (("class", n.get("by_label") or {}), ("jailbreak family", n.get("by_family") or {})):
        for name, g in groups.items():
            bow = g.get("bow") or {}
            count = f"{g.get('n_malicious', 0)} / {g.get('n_benign', 0)}"
            rows.append([f"{kind} {name}", count, num(g.get("auroc"), 3), pct(g.get("tpr")) if "tpr" in g else "-",
                         pct(g.get("fpr")), num(bow.get("auroc"), 3), pct(bow.get("tpr")) if "tpr" in bow else "-",
                         pct(bow.get("fpr"))])
    if not rows:
        return ""
    return ("<h4>By class and jailbreak family (held-out)</h4>"
            + table(["group", "n (malicious / benign)", "guard AUROC", "guard TPR", "guard FPR", "bag-of-words AUROC",
                     "bag-of-words TPR", "bag-of-words FPR"], rows, numeric=[2, 3, 4, 5, 6, 7]))


def _cost(n: dict[str, Any]) -> str:
    layer, total = n.get("layer"), n.get("num_layers")
    if layer is None or not total:
        return ""
    return (f"Cost: the guard reads layer {layer} of {total}, so a prompt needs {layer} of the {total} decoder blocks "
            f"({pct(layer / total)} of one prompt pass, no answer generated) and one dot product.")


def _body(m: ModelResults, result: Any) -> str:
    n = result.numbers()
    if n is None:
        return m.notice("guard")
    text = (f"Evaluated on {n['set']}. Threshold {num(n['threshold'], 3)} (probability), calibrated for a "
            f"false-positive rate of {pct(n['target_fpr'], 1)} (calibration split: {pct(n.get('calibration_fpr'), 1)}); "
            f"cross-validated AUROC of the chosen layer on the training split: {num(n.get('cv_auroc'), 3)}.")
    warns = "".join(f'<p class="warning">{esc(w)}</p>' for w in n.get("warnings") or [])
    return f'<p class="lead">{esc(text)}</p>{_headline(n)}<p>{esc(_cost(n))}</p>{warns}{_groups(n)}'


def section(ctx: ReportContext) -> str:
    """Held-out AUROC, TPR at 1% FPR and TPR/FPR at the threshold, beside the bag-of-words baseline."""
    return section_html("guard", "Guard: early-layer detector", ctx.per_model("guard", "guard", _body), LEAD)
