"""Explanations: token heat maps, the share of attribution on alarming words per class, faithfulness areas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ihs.explain import token_heatmap_html
from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import esc, num, png, table
from ihs.report.html import section as section_html
from ihs.workflows.explain import ExplainResult

RESULT = ExplainResult
TITLE = "Explanations"
LEAD = ("Which input tokens move the target: integrated gradients on the input embeddings. Does the probe read "
        "the request or the alarming words in it?")
HEATMAPS = 6
FIGURES = (("explain_faithfulness", "deletion and insertion curves"), ("explain_cosines", "direction cosines by layer"))


def _shares(shares: dict[str, Any]) -> str:
    rows = []
    for label, e in shares.items():
        a, m = e["alarm"], e["marked"]
        rows.append([label, e["n"], f"{num(a['share'])}{_ci(a.get('share_ci'))} ({a['prompts']})", num(a["uniform"]),
                     f"{num(m['share'])}{_ci(m.get('share_ci'))} ({m['prompts']})", num(m["uniform"])])
    return table(["class", "explained", "share of |attribution| on alarming words [95% interval] (prompts)",
                  "uniform", "share on marked span [95% interval] (prompts)", "uniform"], rows,
                 numeric=[1, 2, 3, 4, 5])


def _ci(ci: list[float] | None) -> str:
    return f" [{num(ci[0])}, {num(ci[1])}]" if ci else ""


def _faith(faith: dict[str, Any] | None) -> str:
    if not faith or not faith.get("summary"):
        return ""
    s = faith["summary"]
    rows = [[curve, *[num((s[curve].get(o) or {}).get("auc_normalised"), 3) for o in faith["orders"]],
             num((s.get("attribution_beats_random") or {}).get(curve))] for curve in ("deletion", "insertion")]
    return ("<p>Normalised areas under the deletion (lower is better) and insertion (higher is better) curves, "
            "per token order:</p>" + table(["curve", *faith["orders"], "share of prompts beating random"], rows,
                                          numeric=list(range(1, len(faith["orders"]) + 2))))


def _heatmaps(items: list[dict[str, Any]]) -> str:
    chosen, seen = [], set()
    for it in items:  # one of each class first, then the rest in order
        if it["label"] not in seen:
            chosen.append(it)
            seen.add(it["label"])
    chosen += [it for it in items if it not in chosen]
    blocks = []
    for it in chosen[:HEATMAPS]:
        meta = (f"{it['label']}: target {num(it['target'], 3)} (baseline {num(it['baseline_target'], 3)}), "
                f"share on alarming words {num(it.get('alarm_share'))}")
        spans = token_heatmap_html(it["tokens"][-300:], it["scores"][-300:], user=it["user"][-300:])
        blocks.append(f'<p class="lead">{esc(meta)}</p><div class="ihs-heat" style="font-family:monospace;'
                      f'line-height:1.7">{spans}</div>')
    return "".join(blocks)


def body_html(result: ExplainResult, folder: Path) -> str:
    """The section body for one model's explain result (every prompt token and label escaped)."""
    d = result.data
    t = d["target"]
    c = d["completeness"]
    head = (f"Target {t.get('name', t.get('kind'))} at layer {t.get('layer')}, method {d['options']['method']}. "
            f"Completeness gap (sum of scores minus the target's change): median relative "
            f"{num(c.get('median_relative_gap'), 3)}, max {num(c.get('max_relative_gap'), 3)}.")
    figs = "".join(png(folder / f"{stem}.png", alt) for stem, alt in FIGURES)
    return (f'<p class="lead">{esc(head)}</p>{_shares(d["shares"])}{_faith(d.get("faithfulness"))}'
            f"{_heatmaps(d['items'])}{figs}")


def _body(m: ModelResults, result: ExplainResult) -> str:
    return body_html(result, m.folder("explain"))


def section(ctx: ReportContext) -> str:
    """Token heat maps, attribution shares per class and faithfulness areas."""
    return section_html("explain", TITLE, ctx.per_model("explain", "explain", _body), LEAD)
