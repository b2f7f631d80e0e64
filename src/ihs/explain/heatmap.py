"""Token heat maps as HTML text: every token escaped, coloured by its score.

Prompts are adversarial by nature, so a token such as ``<script>`` must come out as text. This is a
pure function with no plotting imports; the report decides where the spans go.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from ihs.errors import IhsError

_POSITIVE = (200, 30, 30)   # red: pushes the target up
_NEGATIVE = (30, 80, 200)   # blue: pushes it down


def _visible(token: str) -> str:
    """Escaped token text with whitespace made visible (newline, tab) so template tokens show."""
    text = html.escape(token, quote=True)
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "")


def token_heatmap_html(
    tokens: Sequence[str],
    scores: Sequence[float],
    *,
    user: Sequence[bool] | None = None,
    scale: float | None = None,
) -> str:
    """Concatenated ``<span>`` elements, one per token, background opacity |score| / scale.

    ``scale`` defaults to the largest |score| (over user tokens when ``user`` is given); template
    tokens (``user`` False) get the class ``ihs-template``. Token text and titles are HTML-escaped,
    non-finite scores are left uncoloured.
    """
    if len(tokens) != len(scores):
        raise IhsError(f"{len(tokens)} tokens but {len(scores)} scores")
    if user is not None and len(user) != len(tokens):
        raise IhsError(f"{len(tokens)} tokens but {len(user)} user flags")
    finite = [abs(float(s)) for i, s in enumerate(scores)
              if math.isfinite(float(s)) and (user is None or user[i])]
    top = float(scale) if scale is not None else max(finite, default=0.0)
    parts = []
    for i, (token, score) in enumerate(zip(tokens, scores, strict=True)):
        s = float(score)
        cls = "ihs-tok" if user is None or user[i] else "ihs-tok ihs-template"
        if math.isfinite(s) and top > 0:
            alpha = min(abs(s) / top, 1.0)
            r, g, b = _POSITIVE if s >= 0 else _NEGATIVE
            style = f' style="background-color: rgba({r}, {g}, {b}, {alpha:.3f})"'
            title = f"{s:+.4g}"
        else:
            style, title = "", "n/a" if not math.isfinite(s) else f"{s:+.4g}"
        parts.append(f'<span class="{cls}"{style} title="{html.escape(title, quote=True)}">{_visible(token)}</span>')
    return "".join(parts)
