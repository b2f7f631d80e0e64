"""Data: the prompt sets after cleaning, and example prompts shown as text."""

from __future__ import annotations

from typing import Any

from ihs.report.context import ReportContext
from ihs.report.html import Raw, table, text_block
from ihs.report.html import section as section_html

TITLE = "Data"
LEAD = ("The prompt sets, after cleaning (empty prompts and duplicates dropped, also across classes) and the "
        "per-class limit. Prompts are shown as text, exactly as they are.")


def _counts(data: dict[str, Any]) -> str:
    rows = []
    cleaning = data.get("cleaning", {})
    counts = data.get("counts", {})
    limit = data.get("limit")
    for spec in data.get("specs", []):
        name, _, source = spec.partition("=")
        c = cleaning.get(name, {})
        used = min(counts.get(name, 0), limit) if limit else counts.get(name, 0)
        rows.append([name, source, c.get("kept", counts.get(name, "")),
                     (c.get("empty", 0) + c.get("dup_within", 0) + c.get("dup_across", 0)) if c else "", used])
    return table(["class", "source", "distinct prompts", "dropped (empty / duplicate)", "used for extraction"], rows,
                 numeric=[2, 3, 4])


def _examples(prompts: list[dict[str, Any]], examples: int) -> str:
    by_class: dict[str, list[dict[str, Any]]] = {}
    for p in prompts:
        by_class.setdefault(p["label"], []).append(p)
    rows = []
    for label, items in by_class.items():
        for p in items[:examples]:
            tags = ", ".join(f"{k}: {v}" for k, v in (p.get("tags") or {}).items() if k in ("category", "family"))
            rows.append([label, Raw(text_block(p["text"], 400)), tags])
    return "<h3>Example prompts</h3>" + table(["class", "prompt", "tags"], rows, cls="examples",
                                              widths=["12%", "63%", "25%"])


def section(ctx: ReportContext) -> str:
    """Counts per class and the first model's example prompts."""
    body = _counts(ctx.index.get("data", {}))
    prompts = ctx.models[0].prompts() if ctx.models else []
    if prompts:
        body += _examples(prompts, ctx.examples)
    return section_html("data", "Data", body, LEAD)
