"""Jailbreaks (claim 3): recognised early by the probe, yet weaker negative emotion in the middle layers?"""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, pct, png, table
from ihs.report.html import section as section_html
from ihs.report.svg import CLASS_COLORS, FALLBACK_COLORS, LAYER_AXIS, line_chart, swatch
from ihs.workflows.jailbreak import JailbreakResult

RESULT = JailbreakResult
TITLE = "Jailbreaks"
LEAD = ("Claim 3: jailbreaks do not fool the early classification (jailbreak inputs still look malicious to early "
        "probes) but disturb the middle-layer association (negative emotion weakens).")
PALETTE = {"normal": CLASS_COLORS["normal"], "malicious": CLASS_COLORS["malicious"],
           "jailbreak (all)": CLASS_COLORS["jailbreak"], "jailbreak refused": "#2d5fa8",
           "jailbreak complied": "#b03a8c"}
DEFAULT_ON = {"normal", "malicious", "jailbreak (all)"}


def _groups(jb: dict[str, Any]) -> str:
    rows = []
    for name, g in jb["groups"].items():
        if not g["n"]:
            continue
        rows.append([name, g["n"], pct(g["early_recognised"]), pct(g["mid_negative_share"]["mean"]),
                     pct(g["mid_positive_share"]["mean"]), pct(g["middle_negative"]), pct(g["refusal_rate"])])
    return table(["group", "n", f"early probe says malicious (layer {jb['early_layer']})",
                  "middle layers with a negative token", "… with a positive token", "middle turned negative",
                  "refusal rate"], rows, numeric=[1, 2, 3, 4, 5, 6])


def _chart(jb: dict[str, Any], slug: str) -> str:
    series = []
    names = [n for n, g in jb["groups"].items() if g["n"] and g.get("negative_by_layer")]
    for i, name in enumerate(names):
        g = jb["groups"][name]
        colour = PALETTE.get(name, FALLBACK_COLORS[i % len(FALLBACK_COLORS)])
        series.append({"name": f"{name}: negative token (n={g['n']})", "x": jb["layers"], "y": g["negative_by_layer"],
                       "color": colour, "attrs": {"group": name, "kind": "negative"}})
        series.append({"name": f"{name}: probe says malicious", "x": jb["layers"],
                       "y": g["predicted_malicious_by_layer"], "color": colour, "dash": "6 4",
                       "attrs": {"group": name, "kind": "probe"}})
    toggles = [("group", "groups", [(n, n, swatch(PALETTE.get(n, "#555")), n in DEFAULT_ON) for n in names]),
               ("kind", "show", [("negative", "negative lens token", swatch("#333"), True),
                                 ("probe", "probe verdict 'malicious'", swatch("#333", "dash"), True)])]
    lo, hi = jb["middle"]
    return line_chart(series, x_label=LAYER_AXIS, y_label="share of prompts", y_percent=True, shade=(lo, hi),
                      shade_label=f"middle layers {lo}-{hi}", toggles=toggles,
                      title="Jailbreak inputs: recognised early, negative in the middle?",
                      figure_id=f"jailbreak-chart-{slug}")


def _families(jb: dict[str, Any]) -> str:
    rows = [[f, v["n"], pct(v["early_recognised"]), pct(v["mid_negative_share"]), pct(v["mid_positive_share"]),
             pct(v["refusal_rate"])] for f, v in jb.get("families", {}).items()]
    if not rows:
        return ""
    return "<h4>By jailbreak family</h4>" + table(["family", "n", "early: malicious", "mid negative", "mid positive",
                                                   "refusal rate"], rows, numeric=[1, 2, 3, 4, 5])


def _body(m: ModelResults, result: Any) -> str:
    jb = result.data
    defs = "; ".join(f"{k}: {v}" for k, v in jb.get("definitions", {}).items())
    rvc = jb.get("refused_vs_complied", {})
    rvc_text = ""
    if rvc.get("mid_negative_difference") is not None:
        rvc_text = (f"Refused minus complied jailbreak prompts, middle-layer negative share: "
                    f"{rvc['mid_negative_difference']:+.3f} (Mann-Whitney p = {rvc.get('mid_negative_mannwhitney_p')}).")
    note = (f"{jb.get('n_without_generation')} prompts of the store have no generation (the generate step covers "
            "fewer prompts than extraction); their refusal is unknown." if jb.get("n_without_generation") else "")
    return (f"{_chart(jb, m.slug)}{_groups(jb)}<p class=\"lead\">{esc(defs)}. {esc(note)}</p><p>{esc(rvc_text)}</p>"
            f"{_families(jb)}{png(m.folder('jailbreak') / 'jailbreak.png', 'jailbreak analysis')}")


def section(ctx: ReportContext) -> str:
    """Per group: early probe verdict, middle-layer emotion, refusal; by layer and by family."""
    return section_html("jailbreak", "Jailbreaks: early recognition, middle-layer emotion, refusal",
                        ctx.per_model("jailbreak", "jailbreak", _body), LEAD)
