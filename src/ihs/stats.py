"""Intervals shared by every floor (generation, analysis, adversarial rounds, scripts).

The one proportion interval of the project lives here, below the analysis floor, so that the running
floor (``ihs.generation``) can use it too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def wilson_interval(correct: Any, n: int, level: float = 0.95) -> tuple[Any, Any]:
    """Wilson score interval of the proportion ``correct / n``: stays in [0, 1], not degenerate at 0 or n.

    The project's one proportion interval. ``correct`` may be a number (floats back) or an array
    (arrays back, elementwise); ``n == 0`` gives NaN.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    """
    c = np.asarray(correct, dtype=float)
    if n == 0:
        lo = hi = np.full_like(c, np.nan)
    else:
        z = float(stats.norm.ppf(0.5 + level / 2))
        p = c / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        lo = np.where(c <= 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        hi = np.where(c >= n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return (float(lo), float(hi)) if c.ndim == 0 else (lo, hi)
