"""Logit grafting (claim 5): a benign prompt's middle-layer state grafted into malicious prompts."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import Raw, esc, pct, png, table, text_block, verdict
from ihs.report.html import section as section_html
from ihs.report.svg import LAYER_AXIS, line_chart, swatch
from ihs.workflows.graft import GraftResult

RESULT = GraftResult
TITLE = "Grafting"
LEAD = ("Claim 5: replacing a malicious prompt's middle-layer state with a 'positive emotion' state from normal "
        "prompts makes the model comply, approximating a jailbreak.")


def _chart(fwd: dict[str, Any], slug: str) -> str:
    layers = fwd["layers"]
    series = [{"name": f"grafted (n={fwd['n_targets']} targets)", "x": [e["layer"] for e in layers],
               "y": [e["asr"] for e in layers], "lo": [e["asr_ci95"][0] for e in layers],
               "hi": [e["asr_ci95"][1] for e in layers], "color": "#c0392b", "attrs": {"kind": "graft"}}]
    hlines = [{"y": fwd["baseline"]["asr"], "label": "no graft", "color": "#555", "attrs": {"kind": "baseline"}}]
    options = [("graft", "grafted (band: 95% CI)", swatch("#c0392b"), True),
               ("baseline", "no graft", swatch("#555", "dash"), True)]
    if fwd.get("reference"):
        hlines.append({"y": fwd["reference"]["asr"], "label": f"real jailbreaks (n={fwd['reference']['n']})",
                       "color": "#2d5fa8", "dash": "2 3", "attrs": {"kind": "reference"}})
        options.append(("reference", "real jailbreaks", swatch("#2d5fa8", "dot"), True))
    title = f"{'+'.join(fwd['donor_labels'])} state grafted into {'+'.join(fwd['target_labels'])} prompts"
    return line_chart(series, x_label="grafted " + LAYER_AXIS, y_label="attack success rate", y_percent=True,
                      hlines=hlines, toggles=[("kind", "show", options)], title=title,
                      figure_id=f"graft-chart-{slug}")


def _table(fwd: dict[str, Any]) -> str:
    rows = [["no graft", fwd["baseline"]["n"], pct(fwd["baseline"]["asr"]), "", ""]]
    for e in fwd["layers"]:
        rows.append([f"layer {e['layer']}", e["n"], pct(e["asr"]), f"{pct(e['asr_ci95'][0])}-{pct(e['asr_ci95'][1])}",
                     e.get("changed_answers", "")])
    if fwd.get("reference"):
        rows.append([f"real jailbreaks ({fwd['reference'].get('label', '')})", fwd["reference"]["n"],
                     pct(fwd["reference"]["asr"]), "", ""])
    return table(["condition", "n", "ASR", "95% CI", "answers changed vs no graft"], rows, numeric=[1, 2, 4])


def _examples(rows: list[dict[str, Any]], best: int, examples: int) -> str:
    base = {r["id"]: r for r in rows if r.get("graft_layer") is None and r.get("direction") == "forward"}
    at_best = [r for r in rows if r.get("graft_layer") == best and r.get("direction") == "forward"]
    ex_rows = []
    for r in at_best[:examples]:
        b = base.get(r["id"], {})
        ex_rows.append([Raw(text_block(r["prompt"], 300)), Raw(text_block(b.get("answer", ""), 300) + verdict(b.get("refused"))),
                        Raw(text_block(r["answer"], 300) + verdict(r.get("refused")))])
    if not ex_rows:
        return ""
    return (f"<h4>Examples: no graft vs graft at layer {best}</h4>"
            + table(["target prompt", "no graft", f"graft at layer {best}"], ex_rows, cls="examples",
                    widths=["34%", "33%", "33%"]))


def _reverse(graft: dict[str, Any]) -> str:
    if not graft.get("reverse"):
        return ""
    back = graft["reverse"]
    rows = [["no graft", pct(back["baseline"]["refusal_rate"])]] + [
        [f"layer {e['layer']}", pct(e["refusal_rate"])] for e in back["layers"]]
    return "<h4>Reverse graft: refusal rate of benign targets</h4>" + table(["condition", "refusal rate"], rows,
                                                                             numeric=[1])


def _body(ctx: ReportContext, m: ModelResults, result: Any) -> str:
    graft = result.data
    fwd = graft["forward"]
    g = result.numbers()
    text = (f"During the prompt pass of each target, the last-position state at layer l is replaced by the "
            f"{'per-pair' if fwd.get('per_pair') else 'mean'} state of {fwd['n_donors']} donor prompts "
            f"({'+'.join(fwd['donor_labels'])}); then the model answers greedily. {graft.get('target_donor_split', '')}.")
    ex = _examples(result.rows, g["best_layer"], ctx.examples) if g is not None else ""
    figure = png(m.folder("graft") / "graft_asr.png", "ASR by grafted layer")
    return f'<p class="lead">{esc(text)}</p>{_chart(fwd, m.slug)}{_table(fwd)}{_reverse(graft)}{figure}{ex}'


def section(ctx: ReportContext) -> str:
    """ASR by grafted layer against no graft and real jailbreaks, the reverse graft, example answers."""
    return section_html("graft", "Logit grafting", ctx.per_model("graft", "graft", lambda m, r: _body(ctx, m, r)), LEAD)
