"""Languages: does early recognition hold beyond English? Probes per language, transfer, refusal by language."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, pct, png, table
from ihs.report.html import section as section_html
from ihs.report.svg import FALLBACK_COLORS, LAYER_AXIS, line_chart, swatch
from ihs.workflows.languages import LanguagesResult

RESULT = LanguagesResult
TITLE = "Languages"
LEAD = ("Early recognition beyond English: probe accuracy inside each language (cross-validated), transfer of a probe "
        "trained on the source language to each other language and back, and refusal by language.")
FIGURES = (("lang_cv", "accuracy per language by layer"), ("lang_transfer", "transfer by layer"),
           ("lang_lens", "lens emotion and script by language"), ("lang_refusal", "refusal by language"))


def _chart(res: dict[str, Any], clf: str, slug: str) -> str:
    cv, tr = res["cv"][clf], res["transfer"][clf]
    series, options = [], []
    for i, g in enumerate(res["groups"]):
        colour = FALLBACK_COLORS[i % len(FALLBACK_COLORS)]
        if g in cv["groups"]:
            series.append({"name": f"{g}: trained and tested on {g}", "x": cv["layers"],
                           "y": cv["groups"][g]["accuracy"], "color": colour, "attrs": {"lang": g, "kind": "cv"}})
        if g in tr["forward"]:
            series.append({"name": f"{g}: trained on {res['source']}", "x": tr["layers"],
                           "y": tr["forward"][g]["accuracy"], "color": colour, "dash": "6 4",
                           "attrs": {"lang": g, "kind": "transfer"}})
        options.append((g, g, swatch(colour), True))
    toggles = [("lang", "languages", options),
               ("kind", "show", [("cv", "within the language", swatch("#333"), True),
                                 ("transfer", f"trained on {res['source']}", swatch("#333", "dash"), True)])]
    lowest = min((y for s in series for y in s["y"] if y is not None), default=0.5)
    return line_chart(series, x_label=LAYER_AXIS, y_label="accuracy", y_min=max(0.0, min(0.4, lowest - 0.05)),
                      toggles=toggles,
                      title=f"{clf} accuracy by layer and language", figure_id=f"languages-chart-{slug}")


def _first(v: Any) -> str:
    return "never" if v is None else str(v)


def _table(n: dict[str, Any]) -> str:
    clf, src = n["classifier"], n["source"]
    rows = []
    for g in n["groups"]:
        r = n["rows"].get(g, {})
        counts = " / ".join(str(n["n"].get(g, {}).get(c, 0)) for c in n["classes"])
        own = g == src
        rows.append([g, counts, num(r.get(f"{clf}_cv_early_mean")), _first(r.get(f"{clf}_cv_first_95")),
                     num(r.get(f"{clf}_cv_best")), "(source)" if own else num(r.get(f"{clf}_forward_early_mean")),
                     "-" if own else _first(r.get(f"{clf}_forward_first_95")),
                     "-" if own else num(r.get(f"{clf}_reverse_best"))])
    early = ", ".join(str(x) for x in n["early_layers"])
    return table(["language", f"n ({' / '.join(n['classes'])})", f"within: early layers ({early})",
                  "within: first layer >= 0.95", "within: best", f"{src} -> language: early layers",
                  f"{src} -> language: first >= 0.95", f"language -> {src}: best"], rows, numeric=[2, 4, 5, 7])


def _refusal(refusal: dict[str, Any]) -> str:
    rows = []
    for model, r in refusal.items():
        for g, entry in (r.get("groups") or {}).items():
            mal, nor = entry.get("malicious"), entry.get("normal")
            rows.append([model, g, f"{mal['refused']} of {mal['n']}" if mal else "-",
                         pct(mal["refusal_rate"]) if mal else "-",
                         f"{pct(mal['refusal_ci95'][0])}-{pct(mal['refusal_ci95'][1])}" if mal else "-",
                         pct(nor["refusal_rate"]) if nor else "-"])
    if not rows:
        return ("<p>Refusal by language: not measured in this run (the languages analysis was given no "
                "generations in these languages).</p>")
    return ("<h4>Refusal by language</h4>"
            + table(["model", "language", "malicious refused", "refusal rate", "95% CI", "normal refused"], rows,
                    numeric=[3, 5]))


def _body(m: ModelResults, result: Any) -> str:
    n = result.numbers()
    if n is None:
        return _refusal(result.refusal) if result.refusal else m.notice("languages")
    res = result.models[0]
    text = (f"{n['classifier']} probes on the last-token state of {n['name']} (L = {n['num_layers']}), "
            f"{' vs '.join(n['classes'])}, per language tag '{result.data.get('tag', '')}'; source language "
            f"{n['source']}. Solid: trained and tested within the language; dashed: trained on {n['source']}.")
    figures = "".join(png(m.folder("languages") / f"{stem}.png", alt) for stem, alt in FIGURES)
    return (f'<p class="lead">{esc(text)}</p>{_chart(res, n["classifier"], m.slug)}{_table(n)}'
            f"{_refusal(result.refusal)}{figures}")


def section(ctx: ReportContext) -> str:
    """Per-language accuracy and transfer by layer, a table per language, refusal by language."""
    return section_html("languages", "Languages", ctx.per_model("languages", "languages", _body), LEAD)
