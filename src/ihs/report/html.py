"""The report's HTML primitives: escaping, tables, notices, text blocks, embedded PNGs, tokens, sections.

Every piece of text that comes from prompts, answers, token strings, model or dataset names goes
through :func:`esc` (or a primitive that calls it): the prompt sets are adversarial by nature, so a
prompt such as ``<script>alert(1)</script>`` must show as text and run nothing. Nothing here reads
a run folder; the sections (``ihs.report.sections``) do, through ``ihs.report.context``.
"""

from __future__ import annotations

import base64
import html
import math
import unicodedata
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

STATUS_TEXT = {
    "disabled": "Not run: this analysis is switched off in the run's config ({message}).",
    "unavailable": "Not available in this version of ihs ({message}).",
    "failed": "This step failed: {message}. The details are in run.log; re-running the same command retries it.",
    "skipped": "Not run: {message}.",
    "blocked": "Not run: it {message}.",
    "missing": "No output found for this step.",
}


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def pct(x: float | None, digits: int = 0) -> str:
    """A share as a percentage (``n/a`` for None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals (``n/a`` for None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_seconds(s: float | None) -> str:
    """Seconds as ``12.3 s`` or ``2 min 05 s`` (empty for None)."""
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:02.0f} s"


def asset(name: str) -> str:
    """The text of a file in ``ihs/report/assets`` (the stylesheet, the script)."""
    return resources.files("ihs.report").joinpath("assets", name).read_text(encoding="utf-8")


def status_sentence(s: dict[str, Any]) -> str:
    """Why a step has no output, in words, from its entry in run.json (status and message)."""
    status = s.get("status", "missing")
    return STATUS_TEXT.get(status, "{message}").format(message=s.get("message") or status).replace("..", ".")


class Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (), cls: str = "",
          widths: Sequence[str] | None = None) -> str:
    """A table; cells are escaped unless given as :class:`Raw`; ``widths`` (CSS widths) fix the column sizes."""
    numeric = set(numeric)
    cols = "<colgroup>" + "".join(f'<col style="width:{esc(w)}">' for w in widths) + "</colgroup>" if widths else ""
    h = "".join(f'<th{" class=n" if i in numeric else ""}>{esc(c)}</th>' for i, c in enumerate(head))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            content = c.html if isinstance(c, Raw) else esc(c)
            cells.append(f'<td{" class=n" if i in numeric else ""}>{content}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="{cls}">{cols}<thead><tr>{h}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def notice(text: str, failed: bool = False) -> str:
    """A boxed sentence (why a step has no output); ``failed`` colours it as an error."""
    return f'<div class="notice{" failed" if failed else ""}">{esc(text)}</div>'


def text_block(text: str, limit: int = 600) -> str:
    """A prompt or answer as text; longer than ``limit`` characters: folded behind its opening."""
    text = text or ""
    if len(text) > limit:
        return (f'<details><summary><span class="txt-short">{esc(text[:limit])}…</span></summary>'
                f'<div class="txt">{esc(text)}</div></details>')
    return f'<div class="txt">{esc(text)}</div>'


def verdict(refused: Any) -> str:
    """The judge's verdict as a tag: refused, complied or not judged."""
    if refused is True:
        return '<span class="tag refused">refused</span>'
    if refused is False:
        return '<span class="tag complied">complied</span>'
    return '<span class="tag">not judged</span>'


def _png_data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def png(path: Path, alt: str, caption: str | None = None, open_: bool = False) -> str:
    """An embedded PNG inside a <details> (the static version of an interactive figure); empty if absent."""
    if not path.exists():
        return ""
    img = f'<img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{_png_data(path)}">'
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<details class="static"{" open" if open_ else ""}><summary>Static figure (PNG): {esc(alt)}</summary>'
            f"<figure>{img}{cap}</figure></details>")


def png_figure(path: Path, alt: str, caption: str | None = None) -> str:
    """An embedded PNG shown directly (figures that have no interactive version); empty if absent."""
    if not path.exists():
        return ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{_png_data(path)}">{cap}</figure>'


def display_token(text: str | None, max_chars: int = 14) -> str:
    """A token as shown in a cell: edge spaces as ␣, newlines and invisible characters as escapes."""
    if text is None:
        return "·"
    if text == "":
        return "∅"
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch != " " and unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cs", "Cn"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    shown = "".join(out)
    lead = len(shown) - len(shown.lstrip(" "))
    trail = len(shown) - len(shown.rstrip(" ")) if shown.strip(" ") else 0
    shown = "␣" * lead + shown.strip(" ") + "␣" * trail if shown.strip(" ") else "␣" * len(shown)
    return shown if len(shown) <= max_chars else shown[: max_chars - 1] + "…"


def section(key: str, title: str, body: str, lead: str = "") -> str:
    """One section of the page (``lead`` is trusted HTML written by ihs, not user text)."""
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section class="sec" id="sec-{key}" data-section="{key}"><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def model_block(name: str, slug: str, many: bool, body: str, key: str) -> str:
    """One model's part of a section; with ``many`` models it is headed by the model's name."""
    head = f"<h3>{esc(name)}</h3>" if many else ""
    return f'<div class="model-block" data-model="{esc(slug)}" data-part="{esc(key)}">{head}{body}</div>'


__all__ = ["Raw", "asset", "display_token", "esc", "fmt_seconds", "model_block", "notice", "num", "pct", "png",
           "png_figure", "section", "status_sentence", "table", "text_block", "verdict"]
