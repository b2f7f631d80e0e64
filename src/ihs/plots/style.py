"""What every figure shares: the layer axis label, escaping user text for matplotlib, saving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LAYER_LABEL = "layer (0 = embedding output, i = output of block i)"
DEPTH_LABEL = "depth = layer / L (0 = embedding output, 1 = last block)"


def esc(text: Any) -> str:
    """User text for matplotlib: '$' would start math mode (and can raise on bad input)."""
    return str(text).replace("$", r"\$")


def save_figure(fig: Any, out: Path, stem: str, caption: str | None = None,
                formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write ``fig`` as ``out/stem.<fmt>`` for each format, with ``caption`` (the command) under it; closes it."""
    if caption:
        # below the axes, outside the figure box: bbox_inches="tight" grows the canvas to fit it
        fig.text(0.01, -0.035, esc(caption), fontsize=7, color="0.35", ha="left", va="top", family="monospace")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
