"""Load any causal LM into one object that the rest of ihs can use without special cases.

Sources, tried in order: a zoo name (pulled and converted on first use), a
GGUF file (converted once into a cached safetensors folder), a local folder,
a Hugging Face model id. Weights load from safetensors only, and remote code
runs only when the user asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ihs.errors import ModelError
from ihs.models.anatomy import Anatomy, resolve_anatomy

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}") from None


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, anatomy and identity.

    ``identity`` says exactly which weights these are (zoo GGUF hash, hub
    revision, or a digest of a local folder's files) so stores and guards can
    refuse to mix models.
    """

    model: Any
    tokenizer: Any
    anatomy: Anatomy
    name: str
    identity: dict[str, Any]
    dtype: torch.dtype
    device: torch.device
    max_length: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.anatomy.num_layers

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    @property
    def input_device(self) -> torch.device:
        """Where the embedding computes: where inputs go, also under a multi-device map or offloading."""
        from ihs.models.devices import execution_device

        return execution_device(self.model.get_input_embeddings())

    def fingerprint(self) -> str:
        return str(self.identity.get("sha256") or self.identity.get("revision") or self.name)


_SAMPLE_BYTES = 1 << 16


def _sample_file(path: Path, digest: Any) -> None:
    """Feed ``digest`` with the file's size and three 64 KB windows (start, middle, end).

    Weight files of two fine-tunes of one architecture have the same names,
    sizes and headers but differ almost everywhere in their data, so sampled
    windows tell them apart without reading gigabytes.
    """
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with path.open("rb") as fh:
        for start in sorted({0, max(0, size // 2 - _SAMPLE_BYTES // 2), max(0, size - _SAMPLE_BYTES)}):
            fh.seek(start)
            digest.update(fh.read(_SAMPLE_BYTES))


def _folder_identity(folder: Path) -> dict[str, Any]:
    """A cheap digest of a model folder: its config and sampled bytes of every weight file."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weight in sorted(folder.glob("*.safetensors")):
        _sample_file(weight, digest)
    return {"source": "folder", "path": str(folder), "revision": "folder-" + digest.hexdigest()[:16]}


def resolve_source(name_or_path: str, pull: bool) -> tuple[Path | str, dict[str, Any], str]:
    """Where a model reference points, without loading weights: (folder or hub id, identity, display name).

    A zoo name is pulled first when ``pull``; a GGUF file is converted once into the cache.
    """
    from ihs.models import zoo

    if name_or_path in zoo.ZOO:
        entry = zoo.ZOO[name_or_path]
        if not zoo.is_pulled(name_or_path):
            if not pull:
                raise ModelError(f"zoo model '{name_or_path}' is not pulled; run: ihs models pull {name_or_path}")
            zoo.pull(name_or_path)
        folder = zoo.model_dir(name_or_path)
        return folder, {"source": "zoo", "zoo_name": name_or_path, "id": entry.id, "sha256": entry.sha256}, name_or_path
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        folder = zoo.convert_gguf(path)
        meta = json.loads((folder / "ihs_zoo.json").read_text())
        return folder, {"source": "gguf", "path": str(path), "sha256": meta.get("sha256")}, path.stem
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"folder {path} has no config.json; is it a Hugging Face model folder?")
        return path, _folder_identity(path), path.name
    if path.exists():
        raise ModelError(f"{path} is a file but not a .gguf model; give a model folder, a GGUF file or a zoo name")
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelError(
            f"unknown model '{name_or_path}': not a zoo name ({', '.join(zoo.ZOO)}), "
            "not a local folder or GGUF file, and not a Hugging Face id (org/name)"
        )
    return name_or_path, {"source": "hub", "id": name_or_path}, name_or_path


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | None = None,
    trust_remote_code: bool = False,
    blocks_path: str | None = None,
    norm_path: str | None = None,
    backbone_path: str | None = None,
    pull: bool = True,
) -> LoadedModel:
    """Load a causal LM by zoo name, GGUF file, local folder or hub id.

    ``device_map`` (``auto``, ``balanced``, ``sequential``, or {module: device}) spreads the
    blocks over devices with accelerate; ``max_memory`` (``0=20GiB,1=20GiB,cpu=64GiB`` or a
    dict) caps each device, and what does not fit is offloaded (to ``offload_folder`` when given).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ihs.models.devices import parse_device_map, parse_max_memory

    torch_dtype = parse_dtype(dtype)
    device_map = parse_device_map(device_map)
    limits = parse_max_memory(max_memory)
    if limits is not None and device_map is None:
        raise ModelError("--max-memory needs --device-map (e.g. --device-map auto)")
    if device_map is not None and device is not None:
        raise ModelError("give either --device or --device-map, not both")
    source, identity, display = resolve_source(name_or_path, pull)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if limits is not None:
            kwargs["max_memory"] = limits
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not load model '{name_or_path}': {first}") from exc
    from ihs.models.devices import execution_device

    if identity["source"] == "hub":
        identity["revision"] = getattr(model.config, "_commit_hash", None)
    model.eval()
    if device_map is None:
        target = torch.device(device or "cpu")
        model.to(target)
    anatomy = resolve_anatomy(model, blocks_path=blocks_path, norm_path=norm_path, backbone_path=backbone_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_length = _context_length(model.config, tokenizer)
    identity.setdefault("id", display)
    identity["model_type"] = anatomy.family
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        anatomy=anatomy,
        name=display,
        identity=identity,
        dtype=torch_dtype,
        device=execution_device(model.get_input_embeddings()),
        max_length=max_length,
    )


def _context_length(config: Any, tokenizer: Any) -> int:
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**7:
        return value
    return 2048


def from_modules(model: Any, tokenizer: Any, name: str = "custom", **anatomy_overrides: str) -> LoadedModel:
    """Wrap an already-built model (e.g. a tiny random one in tests) without loading anything."""
    model.eval()
    anatomy = resolve_anatomy(model, **anatomy_overrides)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    param = next(model.parameters())
    from ihs.models.devices import execution_device

    digest = hashlib.sha256()
    for tensor in [t for t in model.state_dict().values() if t.device.type != "meta"][:4]:
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        anatomy=anatomy,
        name=name,
        identity={"source": "memory", "id": name, "revision": "mem-" + digest.hexdigest()[:16],
                  "model_type": anatomy.family},
        dtype=param.dtype,
        device=execution_device(model.get_input_embeddings()),
        max_length=_context_length(model.config, tokenizer),
    )


def model_ref(identity: dict[str, Any], default: str | None = None) -> str | None:
    """How to load a model again from its identity (a store manifest's ``model``, a guard card's
    ``identity``): zoo name, GGUF or folder path, or hub id; ``default`` when none applies."""
    if identity.get("zoo_name"):
        return str(identity["zoo_name"])
    if identity.get("source") in ("gguf", "folder") and identity.get("path"):
        return str(identity["path"])
    if identity.get("id"):
        return str(identity["id"])
    return default


def load_tokenizer(identity: dict[str, Any], override: str | None = None) -> Any:
    """The tokenizer of a model named by its identity (or ``override``), from local files only, without
    loading weights; None (with a warning) when it is not available here."""
    from transformers import AutoTokenizer

    from ihs.models import zoo

    ref = override or model_ref(identity.get("model", identity))
    if ref is None:
        return None
    try:
        if ref in zoo.ZOO:
            if not zoo.is_pulled(ref):
                return None
            ref = str(zoo.model_dir(ref))
        return AutoTokenizer.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError) as exc:
        log.warning("could not load the tokenizer of %s (%s); fragment rules stay off", ref, exc)
        return None

