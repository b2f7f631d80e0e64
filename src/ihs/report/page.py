"""The run report: one self-contained HTML page built from the outputs of ``ihs run``.

Self-contained: styles and the small script are inlined, figures are inline SVG (interactive:
hover for values, toggles for series) with the analyses' PNGs embedded as base64 as a static
fallback; nothing is fetched from anywhere (a Content-Security-Policy forbids it, and allows only
the report's own script by nonce). Every piece of text from prompts, answers, token strings, model
or dataset names is escaped (:func:`ihs.report.html.esc`).

The sections are modules of :mod:`ihs.report.sections`: the fixed ones (summary, data, then compare
and run at the end) and, in run order, one per registered step that has a module of its name.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import read_json
from ihs.pipeline.layout import RunLayout
from ihs.report.context import ReportContext, load_context
from ihs.report.html import asset, esc
from ihs.report.sections import section_module

HEAD = ("summary", "data")
TAIL = ("compare", "run")


def step_names(index: dict[str, Any]) -> list[str]:
    """The registered steps in run order, then any other step the run's index names (older runs)."""
    from ihs.workflows import steps

    names = [s.name for s in steps()]
    for entry in index.get("models", []):
        names += [s for s in entry.get("steps", {}) if s not in names]
    names += [s for s in index.get("steps", []) if s not in names]
    return names


def section_names(index: dict[str, Any]) -> list[str]:
    """Every section of the page, in order: summary, data, the steps' sections, compare, run."""
    out = list(HEAD)
    for name in step_names(index):
        module = None if name in HEAD + TAIL else section_module(name)
        if module is not None:
            out += [name, *(also for also in getattr(module, "ALSO", ()) if also not in out)]
    return out + list(TAIL)


def render_sections(ctx: ReportContext) -> list[tuple[str, str, str]]:
    """``(key, nav title, html)`` of every section that has something to show."""
    rendered = []
    for name in section_names(ctx.index):
        module = section_module(name)
        if module is None:
            continue
        body = module.section(ctx)
        if body:
            rendered.append((name, module.TITLE, body))
    return rendered


def _subtitle(ctx: ReportContext, names: str) -> str:
    index = ctx.index
    n = len(ctx.models)
    created = index.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = index.get("data", {})
    return (f"{n} model{'s' if n != 1 else ''}: {names} · data: "
            + ", ".join(f"{k} {v}" for k, v in data.get("counts", {}).items())
            + f" distinct prompts (limit {data.get('limit')} per class) · {created} · ihs {index.get('ihs_version', '')}")


def _document(title: str, subtitle: str, version: str, nav: str, body: str) -> str:
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
           "base-uri 'none'; form-action 'none'")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="generator" content="ihs {esc(version)}">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{asset("report.css")}</style>
</head>
<body>
<header class="top"><div class="wrap"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></div></header>
<nav class="toc"><div class="wrap">{nav}</div></nav>
<main class="wrap">
{body}
</main>
<footer class="wrap">Made by <code>ihs run</code>. Self-contained: figures are embedded and nothing is loaded from the network.
Interactive figures need JavaScript; each has a static PNG below it.</footer>
<div id="ihs-tip" role="tooltip" hidden></div>
<script nonce="{nonce}">{asset("report.js")}</script>
</body>
</html>
"""


def build_report(out: str | Path, index: dict[str, Any] | None = None) -> str:
    """The report's HTML for the run in ``out`` (reads ``out/run.json`` unless ``index`` is given)."""
    layout = RunLayout(out)
    if index is None:
        try:
            index = read_json(layout.run_json)
        except IhsError:
            raise IhsError(f"{layout.out} holds no run.json; run `ihs run --out {layout.out}` first") from None
    ctx = load_context(layout.out, index)
    names = ", ".join(m.name for m in ctx.models)
    title = index.get("config", {}).get("report", {}).get("title") or f"ihs report: {names}"
    sections = render_sections(ctx)
    nav = "".join(f'<a href="#sec-{key}">{esc(nav_title)}</a>' for key, nav_title, _ in sections)
    body = "".join(html for _, _, html in sections)
    return _document(title, _subtitle(ctx, names), index.get("ihs_version", ""), nav, body)


def write_report(out: str | Path, index: dict[str, Any] | None = None) -> Path:
    """Write ``out/report.html`` and return its path."""
    layout = RunLayout(out)
    page = build_report(layout.out, index)
    tmp = layout.out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(layout.report_html)
    return layout.report_html


__all__ = ["build_report", "write_report", "section_names"]
