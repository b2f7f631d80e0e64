"""Probes (claim 1): weak classifiers per layer, with controls, chance and a bag-of-words baseline."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, pct, png, table
from ihs.report.html import section as section_html
from ihs.report.svg import CLF_COLORS, LAYER_AXIS, line_chart, swatch
from ihs.workflows.probe import CLASSIFIER_NAMES, ProbeResult

RESULT = ProbeResult
TITLE = "Probes"
LEAD = ("Claim 1: ethical concepts are learned in pre-training, so weak classifiers separate malicious from normal "
        "input already in early layers.")
NOTES = ('<p class="lead">* at the first layer reaching 0.95. Contrast prompts are benign prompts with alarming '
         "words; jailbreak prompts are scored by probes trained only on normal vs malicious.</p>")
FIGURES = (("probe_accuracy", "accuracy by layer"), ("probe_transfer", "transfer sets by layer"),
           ("probe_confusion", "confusion matrices"))


def _name(clf: str) -> str:
    return CLASSIFIER_NAMES.get(clf, clf)


def _chart(probe: dict[str, Any], entry: dict[str, Any], slug: str) -> str:
    series = []
    for clf, res in entry["classifiers"].items():
        colour = CLF_COLORS.get(clf, "#555")
        series.append({"name": f"{_name(clf)} accuracy", "x": entry["layers"], "y": res["accuracy"],
                       "lo": res.get("ci_low"), "hi": res.get("ci_high"), "color": colour,
                       "attrs": {"clf": clf, "kind": "accuracy"}})
        if res.get("control_accuracy"):
            series.append({"name": f"{_name(clf)}, shuffled labels (control)", "x": entry["layers"],
                           "y": res["control_accuracy"], "color": colour, "dash": "3 3",
                           "attrs": {"clf": clf, "kind": "control"}})
    toggles = [("clf", "classifier", [(c, _name(c), swatch(CLF_COLORS.get(c, "#555")), True)
                                      for c in entry["classifiers"]]),
               ("kind", "show", [("accuracy", "accuracy (band: 95% CI)", swatch("#333"), True),
                                 ("control", "shuffled-label control", swatch("#333", "dot"), True)])]
    hlines = [{"y": entry["chance"], "label": "chance (majority class)", "color": "#999", "dash": "2 4"}]
    legend = [("chance", "#999", "dot")]
    if entry.get("bow"):
        hlines.append({"y": entry["bow"]["accuracy"], "label": "bag-of-words baseline on the raw text",
                       "color": "#d68910", "dash": "8 4"})
        legend.append(("bag-of-words on raw text", "#d68910", "dash"))
    counts = ", ".join(f"{c} {n}" for c, n in entry["n"].items())
    return line_chart(series, x_label=LAYER_AXIS, y_label="accuracy", y_min=min(0.4, entry["chance"] - 0.05),
                      y_max=1.0, hlines=hlines, toggles=toggles, legend=legend,
                      title=f"{probe['mode']} accuracy by layer ({counts})", figure_id=f"probe-chart-{slug}")


def _at(res: dict[str, Any], key: str, pos: int | None) -> str:
    return pct(res[key][pos]) if pos is not None and key in res else "-"


def _table(entry: dict[str, Any]) -> str:
    rows = []
    for clf, res in entry["classifiers"].items():
        ctrl = res.get("control_accuracy")
        first = res.get("first_layer_95")
        pos = entry["layers"].index(first) if first is not None else None
        rows.append([
            _name(clf),
            f"{first} (depth {num(res['first_layer_95_depth'])})" if first is not None else "never",
            f"{num(res['best_accuracy'], 3)} at layer {res['best_layer']}",
            num(entry.get("confound", {}).get("layer0_accuracy", {}).get(clf), 3),
            num(sum(ctrl) / len(ctrl), 3) if ctrl else "-",
            _at(res, "contrast_fpr", pos), _at(res, "jailbreak_called_malicious", pos),
        ])
    return table(["probe", "first layer >= 0.95", "best", "layer 0", "control (mean)", "contrast called malicious*",
                  "jailbreak called malicious*"], rows, numeric=[3, 4, 5, 6])


def _body(m: ModelResults, result: Any) -> str:
    probe = result.data
    entry = probe["stores"][0]
    warns = "".join(f'<p class="warning">{esc(w)}</p>' for w in entry.get("warnings", []) + probe.get("warnings", []))
    figs = "".join(png(m.folder("probe") / f"{stem}.png", alt) for stem, alt in FIGURES)
    text = (f"Per layer, weak classifiers on the last-token hidden state ({probe['mode']} mode"
            + (f", {probe['folds']}-fold cross-validation on de-duplicated prompts" if probe.get("folds") else "")
            + "). Hover a point for its value; tick the boxes to show or hide series.")
    body = f'<p class="lead">{esc(text)}</p>{_chart(probe, entry, m.slug)}{_table(entry)}{NOTES}{warns}{figs}'
    if result.numbers() and entry.get("bow"):
        body += f'<p>Bag-of-words baseline on the raw prompts: {esc(num(entry["bow"]["accuracy"], 3))}.</p>'
    return body


def section(ctx: ReportContext) -> str:
    """Accuracy by layer per classifier, the first layer reaching 0.95, controls and baselines."""
    return section_html("probe", "Weak-to-strong probes", ctx.per_model("probe", "probe", _body), LEAD)
