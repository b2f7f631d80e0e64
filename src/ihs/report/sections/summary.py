"""Summary: one finding per claim of the paper, per model, in the run's own numbers."""

from __future__ import annotations

from ihs.report.context import ReportContext
from ihs.report.html import esc
from ihs.report.html import section as section_html
from ihs.report.summary import Finding, findings

TITLE = "Summary"
STEPS = ("probe", "lens", "generate", "jailbreak", "graft")
LEAD = ("What the run found, claim by claim of Zhou et al. (2024), in the run's own numbers. Layer indices: 0 is the "
        "embedding output, i the output of decoder block i.")


def _finding(f: Finding) -> str:
    return (f'<div class="finding{"" if f.available else " missing"}" data-finding="{esc(f.key)}">'
            f'<div class="claim">{esc(f.title)}</div><div class="headline">{esc(f.headline)}</div>'
            f'<p class="text">{esc(f.text)}</p></div>')


def section(ctx: ReportContext) -> str:
    """The findings of every model."""
    blocks = []
    for m in ctx.models:
        found = findings({step: m.result(step) for step in STEPS}, m.why_missing())
        blocks.append(ctx.block(m, f'<div class="findings">{"".join(_finding(f) for f in found)}</div>', "summary"))
    return section_html("summary", "Summary of findings", "".join(blocks), LEAD)
