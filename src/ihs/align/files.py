"""Reading alignment data from files: SFT examples and DPO pairs in JSONL, or a folder built by ihs.

``sft.jsonl`` needs ``prompt`` and ``completion`` (or ``answer``) per line; ``dpo.jsonl`` needs
``prompt``, ``chosen`` and ``rejected``. A folder written by :meth:`ihs.align.data.AlignData.save`
holds both and its ``data.json`` manifest. A missing answer is a one-line :class:`DataError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ihs.align.data import AlignData, DPOPair, SFTExample
from ihs.data.records import prompt_id
from ihs.errors import DataError
from ihs.io import read_json, read_jsonl


def _text(row: dict, keys: Sequence[str]) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"training data not found: {path}")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path} holds no examples")
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
    return rows


def load_sft(path: str | Path) -> list[SFTExample]:
    """Read SFT examples from a JSONL file (``prompt`` and ``completion`` or ``answer`` per line)."""
    path = Path(path)
    out = []
    for n, row in enumerate(_rows(path), start=1):
        prompt = _text(row, ("prompt", "text"))
        completion = _text(row, ("completion", "answer", "response"))
        if prompt is None:
            raise DataError(f"{path}: example {n} has no prompt")
        if completion is None:
            raise DataError(f"{path}: example {n} has no answer ('completion'); SFT needs an answer for every prompt")
        out.append(SFTExample(prompt, completion, str(row.get("label") or "unknown"),
                              str(row.get("goal") or prompt_id(prompt)), str(row.get("source") or "file"),
                              str(row.get("id") or prompt_id(prompt))))
    return out


def load_dpo(path: str | Path) -> list[DPOPair]:
    """Read DPO pairs from a JSONL file (``prompt``, ``chosen`` and ``rejected`` per line)."""
    path = Path(path)
    out = []
    for n, row in enumerate(_rows(path), start=1):
        prompt = _text(row, ("prompt", "text"))
        chosen = _text(row, ("chosen",))
        rejected = _text(row, ("rejected",))
        if prompt is None:
            raise DataError(f"{path}: pair {n} has no prompt")
        if chosen is None:
            raise DataError(f"{path}: pair {n} has no chosen answer; DPO needs prompt, chosen and rejected")
        if rejected is None:
            raise DataError(f"{path}: pair {n} has no rejected answer; DPO needs prompt, chosen and rejected")
        out.append(DPOPair(prompt, chosen, rejected, str(row.get("label") or "unknown"),
                           str(row.get("goal") or prompt_id(prompt)), str(row.get("chosen_source") or "file"),
                           str(row.get("rejected_source") or "file"), str(row.get("id") or prompt_id(prompt))))
    return out


def load_examples(source: str | Path | Sequence[SFTExample] | Sequence[DPOPair] | AlignData,
                  method: str) -> tuple[list[SFTExample] | list[DPOPair], dict[str, Any]]:
    """The examples ``method`` (``sft`` or ``dpo``) trains on, from built data, a folder or a file,
    with the folder's manifest (empty for a bare file or a list)."""
    if method not in ("sft", "dpo"):
        raise DataError(f"unknown method {method!r}; use sft or dpo")
    if isinstance(source, AlignData):
        examples = source.sft if method == "sft" else source.dpo
        return list(examples), dict(source.manifest)
    if isinstance(source, str | Path):
        path = Path(source)
        manifest: dict[str, Any] = {}
        if path.is_dir():
            if (path / "data.json").is_file():
                manifest = read_json(path / "data.json")
            path = path / f"{method}.jsonl"
        examples = load_sft(path) if method == "sft" else load_dpo(path)
        return list(examples), manifest
    examples = list(source)
    if not examples:
        raise DataError("no training examples given")
    want = SFTExample if method == "sft" else DPOPair
    wrong = [type(e).__name__ for e in examples if not isinstance(e, want)]
    if wrong:
        raise DataError(f"method {method} needs {want.__name__} examples, got {wrong[0]}")
    return examples, {}
