"""Top-K Intermediate Consistency (claim 4): how alike the middle layers' decoded tokens are within a class."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ModelResults, ReportContext
from ihs.report.html import display_token, esc, num, pct, png, table
from ihs.report.html import section as section_html

TITLE = "Consistency"
LEAD = ("Claim 4: how consistently the middle layers' top-k decoded tokens agree across the prompts of a class; "
        "the paper finds more consistent models more harmless.")
LEGEND = ('<p class="legend-emo">Token colour: <span class="neg">negative</span><span class="pos">positive</span>'
          '<span class="neu">neutral</span><span>other</span> · cell shade: share of prompts · middle '
          "layers have a shaded header · hover a cell for its token and share.</p>")


def _cell(label: str, c: dict[str, Any], j: int, r: int) -> str:
    layer = c["layers"][j]
    text = c["text"][j][r] if c.get("text") else None
    share = c["shares"][j][r]
    emo = c["emotion"][j][r] if c.get("emotion") else None
    count = round((share or 0) * c["n"])
    tip = (f"{label} · layer {layer} · rank {r + 1}\ntoken {text!r}" + (f" ({emo})" if emo else "")
           + f"\nshare {pct(share, 1)} ({count} of {c['n']} prompts)")
    style = f"background:rgba(224,184,92,{0.08 + 0.8 * (share or 0):.2f})"
    cls = f"emo-{emo}" if emo else ""
    return (f'<td class="{cls}" style="{style}" data-tip="{esc(tip)}" title="{esc(tip)}">'
            f"{esc(display_token(text, 10))}</td>")


def heatmap(label: str, c: dict[str, Any], lo: int, hi: int, k: int) -> str:
    """One class's top-k tokens by layer and rank, shaded by the share of prompts holding them."""
    layers = c["layers"]
    head = "".join(f'<th class="{"mid" if lo <= layer <= hi else ""}">{layer}</th>' for layer in layers)
    rows = [f"<tr><th>{r + 1}</th>{''.join(_cell(label, c, j, r) for j in range(len(layers)))}</tr>" for r in range(k)]
    return (f'<h4>{esc(label)} (n={c["n"]}): TKIC top-1 over layers {lo}-{hi} = {esc(num(c["scalar"]["top1"], 3))}</h4>'
            f'<div class="scroll"><table class="heat" data-heatmap="{esc(label)}"><thead><tr><th>rank</th>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")


def _body(m: ModelResults, result: Any) -> str:
    entry = result.data["models"][0]
    logit = entry["lenses"]["logit"]
    lo, hi = logit["layer_range"]
    k = entry.get("k") or 5
    rows = [[label, c["n"], num(c["scalar"]["top1"], 3), num(c["scalar"]["topk"], 3)]
            for label, c in logit["consistency"].items()]
    scalars = table(["class", "n", f"TKIC top-1 (layers {lo}-{hi})", "TKIC top-k"], rows, numeric=[1, 2, 3])
    heat = "".join(heatmap(label, c, lo, hi, k) for label, c in logit["consistency"].items() if c["n"])
    figure = png(m.folder("lens") / ("lens_" + entry["store_name"] + "_heatmap.png"),
                 "consistency heatmap (middle layers)")
    definition = result.data.get("tkic_definition", "")
    return f"{scalars}<p class=\"lead\">{esc(definition)}.</p>{LEGEND}{heat}{figure}"


def section(ctx: ReportContext) -> str:
    """TKIC per class and a hoverable token heatmap per class (from the lens step's result)."""
    return section_html("consistency", "Top-K Intermediate Consistency", ctx.per_model("consistency", "lens", _body),
                        LEAD)
