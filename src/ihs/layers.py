"""The layer convention and the one grammar every command uses to name layers.

Convention: index 0 is the embedding output and index ``i`` the output of decoder block ``i``, so a
model with ``L`` blocks has indices ``0..L``. Stored states are block outputs before the final norm.

Grammar (``--layers``, run configs, the Python API), a comma-separated list of items:

============  =====================================================================
``12``        one index
``-1``        counted from the end: ``-1`` is ``L``, ``-2`` is ``L-1``
``L``         the last block; ``L/2``, ``2L/3``, ``L-4`` are arithmetic on L (floored)
``0.25``      a fraction of depth (a number with a decimal point), rounded: ``round(0.25 * L)``
``a:b``       a range, both ends included; an empty end means 0 or L (``:5``, ``10:``)
``a:b:s``     a range with a step (``0:L:5`` is every fifth block)
``a-b``       the same as ``a:b`` for two non-negative integers (``0-10``)
============  =====================================================================

Every end of a range may use any index form (``L/4:3L/4``, ``0.4:0.6``). Results are sorted and
unique. :func:`parse_layers` gives the list; :func:`parse_layer_range` gives ``(lo, hi)`` for the
analyses that summarise over one contiguous span (TKIC, the middle layers) and refuses steps and
lists. Bad input raises :class:`ihs.errors.IhsError` with one message naming the grammar.

>>> parse_layers("0:L:10", 30)
[0, 10, 20, 30]
>>> parse_layers("L/2,-1", 24)
[12, 24]
>>> parse_layer_range("0.5:0.85", 24)
(12, 20)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ihs.errors import IhsError

LAYER_CONVENTION = "index 0 = embedding output; index i = output of decoder block i"
GRAMMAR_HINT = "e.g. 12, -1, L/2, 0.5, 0:L, 0:L:5, 4,8,12 or 0.25:0.75 (ends included)"

_L_EXPR = re.compile(r"^(\d*)\s*L\s*(?:/\s*(\d+))?\s*(?:([+-])\s*(\d+))?$")
_DASH_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def _bad(spec: str, why: str, num_layers: int) -> IhsError:
    return IhsError(f"bad layer spec {spec!r}: {why}; layers are 0..{num_layers} ({GRAMMAR_HINT})")


def _index(token: str, spec: str, num_layers: int, default: int | None = None) -> int:
    """One index form -> an integer in 0..L (checked)."""
    token = token.strip()
    if token == "":
        if default is None:
            raise _bad(spec, "an empty layer", num_layers)
        return default
    m = _L_EXPR.match(token.upper())
    if m:
        mult = int(m.group(1)) if m.group(1) else 1
        value = mult * num_layers
        if m.group(2):
            if int(m.group(2)) == 0:
                raise _bad(spec, f"division by zero in {token!r}", num_layers)
            value //= int(m.group(2))
        if m.group(3):
            value = value + int(m.group(4)) if m.group(3) == "+" else value - int(m.group(4))
    elif "." in token:
        try:
            frac = float(token)
        except ValueError:
            raise _bad(spec, f"{token!r} is not a layer", num_layers) from None
        if not 0.0 <= frac <= 1.0:
            raise _bad(spec, f"the depth fraction {token} must lie in 0..1", num_layers)
        value = int(round(frac * num_layers))
    else:
        try:
            value = int(token)
        except ValueError:
            raise _bad(spec, f"{token!r} is not a layer", num_layers) from None
        if value < 0:
            value = num_layers + 1 + value
    if not 0 <= value <= num_layers:
        raise _bad(spec, f"{token!r} is outside 0..{num_layers}", num_layers)
    return value


def _item(part: str, spec: str, num_layers: int) -> list[int]:
    part = part.strip()
    if not part:
        raise _bad(spec, "an empty item", num_layers)
    dash = _DASH_RANGE.match(part)
    bits = [dash.group(1), dash.group(2)] if dash else part.split(":")
    if len(bits) == 1:
        return [_index(part, spec, num_layers)]
    if len(bits) > 3:
        raise _bad(spec, f"{part!r} has more than two ':'", num_layers)
    lo = _index(bits[0], spec, num_layers, default=0)
    hi = _index(bits[1], spec, num_layers, default=num_layers)
    step = 1
    if len(bits) == 3:
        try:
            step = int(bits[2])
        except ValueError:
            raise _bad(spec, f"the step {bits[2].strip()!r} is not an integer", num_layers) from None
        if step <= 0:
            raise _bad(spec, "the step must be positive", num_layers)
    if lo > hi:
        raise _bad(spec, f"the range {part!r} is empty (ends are included: write a <= b)", num_layers)
    return list(range(lo, hi + 1, step))


def parse_layers(spec: str | int | Sequence[int] | None, num_layers: int) -> list[int]:
    """Sorted unique layer indices named by ``spec`` over ``0..num_layers``; ``None`` or ``""`` means all.

    >>> parse_layers("0-2,5", 7)
    [0, 1, 2, 5]
    >>> parse_layers(None, 2)
    [0, 1, 2]
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return list(range(num_layers + 1))
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str):
        values = sorted({int(x) for x in spec})
        bad = [x for x in values if not 0 <= x <= num_layers]
        if bad or not values:
            raise _bad(str(list(spec)), f"{bad[0] if bad else 'no layer'} is outside 0..{num_layers}", num_layers)
        return values
    out: set[int] = set()
    for part in spec.split(","):
        out.update(_item(part, spec, num_layers))
    return sorted(out)


def default_layer_range(num_layers: int) -> tuple[int, int]:
    """The middle third of depth over layer indices 0..L: ceil(L/3) .. floor(2L/3), inclusive.

    SmolLM2 (L=30): 10..20; Qwen2.5-0.5B (L=24): 8..16; Gemma-3-270m (L=18): 6..12; a one-block model: 1..1.
    """
    lo = -(-num_layers // 3)
    return lo, max(lo, (2 * num_layers) // 3)


def parse_layer_range(spec: str | None, num_layers: int) -> tuple[int, int]:
    """One contiguous span ``(lo, hi)``, both included; ``None`` gives :func:`default_layer_range`.

    >>> parse_layer_range("-5:", 30)
    (26, 30)
    """
    if spec is None or not str(spec).strip():
        return default_layer_range(num_layers)
    spec = str(spec)
    if "," in spec or spec.count(":") > 1:
        raise _bad(spec, "this option takes one span a:b, not a list or a step", num_layers)
    layers = _item(spec, spec, num_layers)
    return layers[0], layers[-1]


def format_layers(layers: Sequence[int]) -> str:
    """A compact spec that parses back to ``layers``: ``[0, 1, 2, 5]`` -> ``"0:2,5"``."""
    values = sorted(set(int(x) for x in layers))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}:{values[j]}")
        i = j + 1
    return ",".join(parts)
