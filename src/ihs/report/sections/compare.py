"""Model comparison: the headline numbers of every model side by side (shown with two or more models)."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, pct, table
from ihs.report.html import section as section_html
from ihs.report.svg import FALLBACK_COLORS, line_chart, swatch
from ihs.workflows.probe import PRIMARY_CLASSIFIERS

TITLE = "Model comparison"
LEAD = "The same analyses on every model: depth = layer / L puts models of different depth on one axis."
HEAD = ["model", "L", "first layer >= 0.95 (depth)", "middle negative contrast", "TKIC top-1 malicious",
        "TKIC top-1 jailbreak", "refusal rate malicious", "jailbreak ASR", "best graft layer (ASR)"]


def _numbers(m: ModelResults, step: str) -> dict[str, Any] | None:
    result = m.result(step)
    return result.numbers() if result is not None else None


def _row(m: ModelResults) -> list[Any]:
    p, lens, g = _numbers(m, "probe"), _numbers(m, "lens"), _numbers(m, "graft")
    ref = m.result("generate")
    per = ref.data.get("per_class", {}) if ref is not None else {}
    contrast = None
    if lens and lens["shares"].get("malicious") and lens["shares"].get("normal"):
        a, b = lens["shares"]["malicious"]["negative"], lens["shares"]["normal"]["negative"]
        contrast = None if a is None or b is None else a - b
    first = "n/a"
    if p:
        first = f"{p['first_95']} ({num(p['first_95_depth'])})" if p["first_95"] is not None else "never"
    return [
        m.name, p["num_layers"] if p else "", first,
        f"{contrast * 100:+.0f} pts" if contrast is not None else "n/a",
        num(lens["tkic_top1"].get("malicious")) if lens else "n/a",
        num(lens["tkic_top1"].get("jailbreak")) if lens else "n/a",
        pct(per["malicious"]["refusal_rate"]) if "malicious" in per else "n/a",
        pct(per["jailbreak"]["asr"]) if "jailbreak" in per else "n/a",
        f"{g['best_layer']} ({pct(g['best_asr'])})" if g else "n/a",
    ]


def _depth_chart(ctx: ReportContext) -> str:
    series, options = [], []
    for i, m in enumerate(ctx.models):
        probe = m.result("probe")
        if probe is None:
            continue
        entry = probe.data["stores"][0]
        clf = next((c for c in PRIMARY_CLASSIFIERS if c in entry["classifiers"]), next(iter(entry["classifiers"]), None))
        colour = FALLBACK_COLORS[i % len(FALLBACK_COLORS)]
        series.append({"name": f"{m.name} ({clf})", "x": [round(d, 3) * 100 for d in entry["depth"]],
                       "y": entry["classifiers"][clf]["accuracy"], "color": colour, "attrs": {"model": m.slug}})
        options.append((m.slug, m.name, swatch(colour), True))
    if not series:
        return ""
    return line_chart(series, x_label="depth (% of blocks; 0 = embedding output)", y_label="probe accuracy",
                      y_min=0.4, toggles=[("model", "models", options)], title="Probe accuracy by relative depth",
                      figure_id="compare-depth")


def _correlation(ctx: ReportContext) -> str:
    try:
        from ihs.analysis.lens import cross_model_table
    except ImportError:
        return ""
    entries, refusal = [], {}
    for m in ctx.models:
        lens, gen = m.result("lens"), m.result("generate")
        if lens is None:
            continue
        e = lens.data["models"][0]
        entries.append(e)
        if gen is not None:
            refusal[e["store_name"]] = {k: v["refusal_rate"] for k, v in gen.data["per_class"].items()}
    if len(entries) < 2:
        return ""
    found = cross_model_table(entries, refusal, "logit")
    parts = [f"Spearman rank correlation, TKIC top-1 vs refusal rate on {label} prompts over {c['n_models']} models: "
             f"rho = {c['rho']} (p = {c['p']})." for label, c in (found.get("correlation") or {}).items()]
    if found.get("note"):
        parts.append(found["note"])
    return "".join(f"<p>{esc(p)}</p>" for p in parts)


def section(ctx: ReportContext) -> str:
    """The comparison table, probe accuracy by relative depth and TKIC vs refusal across models."""
    if not ctx.many:
        return ""
    body = table(HEAD, [_row(m) for m in ctx.models]) + _depth_chart(ctx) + _correlation(ctx)
    return section_html("compare", "Model comparison", body, LEAD)
