"""JSON and JSON Lines in and out, one policy for every result file ihs writes.

* Writes are atomic: the text goes to ``.NAME.tmp`` beside the target and is renamed over it, so a
  reader (or a crash) never sees half a file.
* NaN and infinities are written as ``null`` (JSON has no NaN; ``null`` reads back as ``None``).
  numpy scalars and arrays become plain numbers and lists; tuples become lists; keys become strings.
* Text is UTF-8 and not escaped to ASCII.
* Reading a missing or malformed file raises :class:`ihs.errors.IhsError` naming the file.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
>>> write_json(p, {"acc": float("nan"), "n": 3})
>>> read_json(p)
{'acc': None, 'n': 3}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ihs.errors import IhsError


def to_jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None, numpy values as Python ones, tuples as lists, keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def dumps(data: Any, indent: int | None = 1) -> str:
    return json.dumps(to_jsonable(data), indent=indent, ensure_ascii=False, allow_nan=False)


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as JSON to ``path`` atomically (NaN as null)."""
    _atomic_write(Path(path), dumps(data, indent) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line to ``path`` atomically (NaN as null)."""
    _atomic_write(Path(path), "".join(dumps(row, None) + "\n" for row in rows))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IhsError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IhsError(f"{path} is not valid JSON: {exc}") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IhsError(f"{path} not found") from None
    except UnicodeDecodeError as exc:
        raise IhsError(f"{path} is not UTF-8 text: {exc}") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise IhsError(f"{path} line {n} is not valid JSON: {exc}") from None
    return rows
