"""Turn a dataset spec string into ``PromptRecord`` objects.

One spec grammar for the whole tool, so every command accepts the same inputs:

- ``builtin:NAME``: a built-in set (normal, malicious, contrast, jailbreak, jailbreak-templates);
  a bare built-in name also works when no file of that name exists.
- ``path.csv`` / ``path.tsv`` (``:COLUMN`` optional): the prompt column is auto-detected from the
  names public sets use (the paper's files and AdvBench ``goal``, JailbreakBench ``Goal``,
  HarmBench ``Behavior``, ``prompt``, ``text``, ``question``, ``instruction``); the other columns
  are kept as tags (HarmBench ``SemanticCategory`` and JailbreakBench ``Category`` become
  ``category``).
- ``path.json`` (``:FIELD`` optional): a list of strings, or of objects.
- ``path.jsonl`` (``:FIELD`` optional): one string or object per line.
- ``path.txt``: one prompt per line.
- ``hf:ORG/NAME[:SPLIT[:FIELD]]``: a Hugging Face dataset; needs the optional ``datasets`` package.

Loaders keep rows whose prompt cell is empty (so ``validate.clean`` can count them) but skip
blank lines of line-based formats. Run ``validate.clean`` before using the records.
Every problem a user can cause is a one-line ``DataError``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ihs.data.records import PromptRecord
from ihs.errors import DataError

#: Prompt column names, in order of preference, matched exactly first, then ignoring case.
#: ``goal`` comes before ``behavior`` because JailbreakBench has both and its ``Behavior`` is a
#: short name ("Defamation"), while HarmBench has only ``Behavior``, which is the prompt.
TEXT_COLUMNS: tuple[str, ...] = ("goal", "prompt", "Goal", "Behavior", "text", "question", "instruction")

#: Column renames applied to the tags; other columns are kept under their snake_case name.
TAG_ALIASES: dict[str, str] = {
    "SemanticCategory": "category",
    "semantic_category": "category",
    "Category": "category",
    "FunctionalCategory": "functional_category",
    "Target": "target",
    "BehaviorID": "source_id",
    "Index": "source_id",
    "id": "source_id",
}

FILE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".json", ".jsonl", ".txt")

_SNAKE1 = re.compile(r"(.)([A-Z][a-z]+)")
_SNAKE2 = re.compile(r"([a-z0-9])([A-Z])")


def _snake(name: str) -> str:
    s = _SNAKE2.sub(r"\1_\2", _SNAKE1.sub(r"\1_\2", name.strip()))
    return re.sub(r"[^0-9a-zA-Z_]+", "_", s).strip("_").lower() or "column"


def _tag_name(column: str) -> str:
    return TAG_ALIASES.get(column, _snake(column))


def _pick_column(columns: list[str], where: str, explicit: str | None) -> str:
    """Choose the prompt column: the explicit one, else the first known name present."""
    if explicit is not None:
        if explicit in columns:
            return explicit
        folded = [c for c in columns if c.casefold() == explicit.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise DataError(f"{where}: no column {explicit!r}; columns found: {', '.join(columns) or '(none)'}")
    for cand in TEXT_COLUMNS:
        if cand in columns:
            return cand
    for cand in TEXT_COLUMNS:
        folded = [c for c in columns if c.casefold() == cand.casefold()]
        if folded:
            return folded[0]
    raise DataError(
        f"{where}: no prompt column; columns found: {', '.join(columns) or '(none)'}; "
        f"accepted: {', '.join(TEXT_COLUMNS)}; pick one with {where}:COLUMN"
    )


def _read_text(path: Path) -> str:
    """Read a file as UTF-8 (a BOM is allowed), with a clear error for anything else."""
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a prompt file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 (byte 0x{data[exc.start]:02x} at byte offset {exc.start}, line {line}); "
            "re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text


def _no_prompts(where: str) -> DataError:
    return DataError(f"{where}: no prompts found")


def _check_some(records: list[PromptRecord], where: str) -> list[PromptRecord]:
    if not any(r.text.strip() for r in records):
        raise _no_prompts(where)
    return records


def _value_to_text(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: prompt is a {type(value).__name__}, expected a string")


def _object_tags(obj: dict, text_field: str) -> dict:
    tags = {}
    for key, value in obj.items():
        if key == text_field or key is None or value is None or value == "":
            continue
        tags[_tag_name(str(key))] = value
    return tags


# ---------------------------------------------------------------------------------------- formats


def load_csv(path: Path, column: str | None, label: str, dataset: str, delimiter: str = ",") -> list[PromptRecord]:
    """CSV/TSV with a header row; quoted fields may contain commas, quotes and newlines."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty")
        header = [h.strip() for h in header]
        col = _pick_column(header, str(path), column)
        idx = header.index(col)
        records: list[PromptRecord] = []
        for row_no, row in enumerate(reader, start=1):
            if not row or all(not cell.strip() for cell in row):
                continue  # a blank line, not a prompt row
            cell = row[idx] if idx < len(row) else ""
            obj = {h: (row[i] if i < len(row) else "") for i, h in enumerate(header) if h}
            tags = _object_tags(obj, col)
            tags["row"] = row_no
            records.append(PromptRecord.make(cell, label, dataset, tags))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV at line {reader.line_num}: {exc}") from None
    return _check_some(records, str(path))


def load_json(path: Path, field: str | None, label: str, dataset: str) -> list[PromptRecord]:
    """A JSON list of strings or of objects (``field`` picks the prompt key)."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of strings or objects, found a {type(data).__name__}")
    return _check_some(_from_items(data, field, label, dataset, str(path), "item"), str(path))


def load_jsonl(path: Path, field: str | None, label: str, dataset: str) -> list[PromptRecord]:
    """One JSON string or object per line; blank lines are skipped."""
    text = _read_text(path)
    items: list[tuple[int, object]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON on line {line_no}: {exc.msg}") from None
    if not items:
        raise _no_prompts(str(path))
    records = _from_items([v for _, v in items], field, label, dataset, str(path), "line", [n for n, _ in items])
    return _check_some(records, str(path))


def _from_items(
    items: list,
    field: str | None,
    label: str,
    dataset: str,
    where: str,
    unit: str,
    numbers: list[int] | None = None,
) -> list[PromptRecord]:
    numbers = numbers or list(range(1, len(items) + 1))
    if not items:
        raise _no_prompts(where)
    first_obj = next((it for it in items if isinstance(it, dict)), None)
    key = None
    if first_obj is not None:
        key = _pick_column([str(k) for k in first_obj], where, field)
    elif field is not None:
        raise DataError(f"{where}: field {field!r} given but the {unit}s are not objects")
    records = []
    for n, item in zip(numbers, items, strict=True):
        if isinstance(item, dict):
            if key not in item:
                raise DataError(f"{where}: {unit} {n} has no field {key!r}; fields: {', '.join(map(str, item))}")
            text = _value_to_text(item[key], f"{where}: {unit} {n}")
            tags = _object_tags(item, key)
        elif isinstance(item, str) or item is None:
            text, tags = item or "", {}
        else:
            raise DataError(f"{where}: {unit} {n} is a {type(item).__name__}, expected a string or an object")
        tags["row"] = n
        records.append(PromptRecord.make(text, label, dataset, tags))
    return records


def load_txt(path: Path, label: str, dataset: str) -> list[PromptRecord]:
    """One prompt per line; blank lines are skipped (so multi-line prompts need another format)."""
    text = _read_text(path)
    records = [
        PromptRecord.make(line, label, dataset, {"row": n})
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    return _check_some(records, str(path))


def load_hf(spec: str, label: str) -> list[PromptRecord]:
    """``hf:ORG/NAME[:SPLIT[:FIELD]]`` through the optional ``datasets`` package."""
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"bad Hugging Face spec {spec!r}; expected hf:ORG/NAME[:SPLIT[:FIELD]]")
    name = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    field = parts[2] if len(parts) > 2 and parts[2] else None
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"{spec}: loading Hugging Face datasets needs the optional 'datasets' package; "
            "install ihs[hf] (pip install 'ihs[hf]') or download the file and pass its path"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's spec or network
        msg = " ".join(str(exc).split())[:300]
        raise DataError(f"{spec}: could not load Hugging Face dataset: {type(exc).__name__}: {msg}") from None
    col = _pick_column(list(ds.column_names), spec, field)
    records = []
    for n, row in enumerate(ds, start=1):
        text = _value_to_text(row[col], f"{spec}: row {n}")
        tags = _object_tags(dict(row), col)
        tags = {k: v for k, v in tags.items() if isinstance(v, str | int | float | bool)}
        tags["row"] = n
        records.append(PromptRecord.make(text, label, spec, tags))
    return _check_some(records, spec)


# ------------------------------------------------------------------------------------------ specs


def split_spec(spec: str) -> tuple[Path, str | None]:
    """Split ``path.ext:COLUMN`` into the path and the column (``None`` when not given).

    A spec naming an existing file is taken whole, so file names containing ':' still work.
    """
    path = Path(spec)
    if path.exists() or ":" not in spec:
        return path, None
    head, _, column = spec.rpartition(":")
    if Path(head).suffix.lower() in FILE_SUFFIXES:
        return Path(head), (column or None)
    return path, None


def load_dataset_spec(spec: str, label: str | None = None) -> list[PromptRecord]:
    """Load the prompts a spec names (see the module docstring for the grammar).

    ``label`` is the class given to every record; by default the built-in set's own label, or the
    file's stem. ``dataset`` on each record is the spec as given.
    """
    from ihs.data.builtin import BUILTIN_NAMES, load_builtin

    spec = spec.strip()
    if not spec:
        raise DataError("empty dataset spec")
    if spec.startswith("builtin:"):
        return load_builtin(spec[len("builtin:") :], label=label)
    if spec.startswith("hf:"):
        return load_hf(spec, label or spec.split(":")[1].split("/")[-1])
    if spec in BUILTIN_NAMES and not Path(spec).exists():
        return load_builtin(spec, label=label)
    path, column = split_spec(spec)
    suffix = path.suffix.lower()
    lab = label or path.stem
    if suffix not in FILE_SUFFIXES:
        if not path.exists():
            raise DataError(
                f"file not found: {path} (a spec is a file ending in {', '.join(FILE_SUFFIXES)}, "
                f"builtin:NAME or hf:ORG/NAME)"
            )
        raise DataError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
            f"use {', '.join(FILE_SUFFIXES)}, builtin:NAME or hf:ORG/NAME"
        )
    if suffix == ".csv":
        return load_csv(path, column, lab, spec)
    if suffix == ".tsv":
        return load_csv(path, column, lab, spec, delimiter="\t")
    if suffix == ".json":
        return load_json(path, column, lab, spec)
    if suffix == ".jsonl":
        return load_jsonl(path, column, lab, spec)
    if column is not None:
        raise DataError(f"{path}: a .txt file has no columns (got ':{column}')")
    return load_txt(path, lab, spec)


def load_many(named_specs: list[tuple[str, str]]) -> list[PromptRecord]:
    """Load several ``(name, spec)`` pairs; each record's label is its name."""
    records: list[PromptRecord] = []
    for name, spec in named_specs:
        records.extend(load_dataset_spec(spec, label=name))
    return records


def parse_named_spec(text: str) -> tuple[str, str]:
    """Parse ``NAME=SPEC`` as command lines write it (``malicious=data/x.csv:goal``)."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise DataError(f"expected NAME=SPEC (e.g. malicious=builtin:malicious), got {text!r}")
    return name.strip(), spec.strip()
