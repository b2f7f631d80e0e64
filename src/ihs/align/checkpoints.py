"""Exported checkpoints of an alignment run: ``OUT/checkpoints/step-NNNNNN/`` model folders."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ihs.io import write_json

_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The exported checkpoints of a run, ``(step, folder)`` by step (complete ones only)."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and (child / "ihs_align.json").is_file():
                found.append((int(m.group(1)), child))
    return sorted(found)


def versions() -> dict[str, str]:
    """Versions of ihs and the training libraries, recorded in every checkpoint."""
    import peft
    import transformers
    import trl

    import ihs

    return {"ihs": getattr(ihs, "__version__", "unknown"), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}


def export_checkpoint(model: Any, tokenizer: Any, folder: Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` (LoRA merged into a copy) and ``tokenizer`` as a model folder with ``ihs_align.json``.

    The folder is written beside its place and renamed into it, so a folder that exists is complete.
    """
    from peft import PeftModel

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    merged = copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    write_json(tmp / "ihs_align.json", meta)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def checkpoint_digest(folder: str | Path) -> str:
    """sha256 over a checkpoint's weight files and chat template: equal digests mean the same model to measure.

    Every run's step 0 is the base model (LoRA starts as a no-op), so runs of one base model share that row.
    """
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) + [p for p in (folder / "chat_template.jinja",) if p.is_file()]
    for path in files:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()
