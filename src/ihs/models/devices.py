"""Models spread over several devices: device maps, memory limits, and where a module really runs.

With ``device_map`` (accelerate) a model's blocks can live on several GPUs, on
the CPU, or be offloaded to disk and streamed in block by block. Offloaded
modules keep their weights on the ``meta`` device and carry an accelerate hook
whose ``execution_device`` says where they compute, so code must never send
inputs to ``module.weight.device``: :func:`execution_device` is the one place
that answers "where does this module run". Hooks in ihs move what they touch to
the device of the tensor they receive, and gathered states go to the CPU once
per batch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ihs.errors import ModelError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``20GiB``, ``500MB``, ``1.5GB`` or a plain integer."""
    match = _SIZE.match(str(text))
    if not match:
        raise ModelError(f"bad memory size '{text}': use e.g. 20GiB, 500MB or a number of bytes")
    number, unit = float(match.group(1)), (match.group(2) or "B").lower()
    return int(number * _UNITS[unit])


def parse_max_memory(spec: str | dict | None) -> dict[int | str, int] | None:
    """``0=20GiB,1=20GiB,cpu=64GiB`` -> {0: bytes, 1: bytes, "cpu": bytes} for accelerate.

    Keys are GPU indices (``0`` or ``cuda:0``), ``cpu``, ``mps`` or ``disk``.
    """
    if spec is None or spec == "":
        return None
    items = spec.items() if isinstance(spec, dict) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(spec).split(",") if part.strip())
    limits: dict[int | str, int] = {}
    for key, value in items:
        key = str(key).strip().lower()
        if value is None:
            raise ModelError(f"bad --max-memory entry '{key}': use DEVICE=SIZE, e.g. 0=20GiB,cpu=64GiB")
        if key.startswith("cuda:"):
            key = key[5:]
        if key.isdigit():
            device: int | str = int(key)
        elif key in ("cpu", "mps", "disk"):
            device = key
        else:
            raise ModelError(f"bad device '{key}' in --max-memory: use a GPU index (0, 1, cuda:0), cpu, mps or disk")
        if device in limits:
            raise ModelError(f"device '{key}' appears twice in --max-memory")
        limits[device] = value if isinstance(value, int) else parse_size(value)
    return limits


def parse_device_map(spec: str | dict | None) -> str | dict | None:
    """``auto`` / ``balanced`` / ``balanced_low_0`` / ``sequential``, a JSON object, or a JSON file path."""
    if spec is None or isinstance(spec, dict):
        return spec
    text = str(spec).strip()
    if text in DEVICE_MAP_STRATEGIES:
        return text
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"--device-map is not valid JSON: {exc}") from None
    elif text.endswith(".json"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelError(f"device map file not found: {path}")
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"device map file {path} is not valid JSON: {exc}") from None
    else:
        raise ModelError(f"unknown --device-map '{text}': use {', '.join(DEVICE_MAP_STRATEGIES)}, "
                         "a JSON object {\"module\": device} or a .json file holding one")
    if not isinstance(mapping, dict) or not mapping:
        raise ModelError("--device-map JSON must be a non-empty object {\"module.path\": device}")
    return mapping


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when dispatched, else its parameters' device.

    Weights offloaded to disk or CPU sit on ``meta`` (or CPU) between calls; their
    hook moves inputs and weights to the execution device on every forward.
    """
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    for child in module.modules():  # a container whose children are dispatched
        if child is not module and getattr(child, "_hf_hook", None) is not None:
            return execution_device(child)
    return torch.device("cpu")


def placement(lm: Any) -> dict[str, Any]:
    """Where the parts of a loaded model run: {"embedding", "blocks": [...], "final_norm", "unembed", "map"}."""
    anatomy = lm.anatomy
    return {
        "embedding": str(execution_device(lm.model.get_input_embeddings())),
        "blocks": [str(execution_device(b)) for b in anatomy.blocks],
        "final_norm": str(execution_device(anatomy.final_norm)),
        "unembed": str(execution_device(anatomy.unembed)),
        "map": dict(getattr(lm.model, "hf_device_map", None) or {}),
    }


def used_devices(lm: Any) -> list[torch.device]:
    """Distinct execution devices of the embedding, every block and the unembedding."""
    where = placement(lm)
    found: list[torch.device] = []
    for device in [where["embedding"], *where["blocks"], where["unembed"]]:
        device = torch.device(device)
        if device not in found:
            found.append(device)
    return found
