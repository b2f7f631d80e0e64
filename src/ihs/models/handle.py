"""A model named by reference and loaded on first use, or given already loaded.

``ihs run`` and the workflows take a :class:`ModelHandle` so that a step whose result is cached never
loads the model: the handle knows the model's identity (zoo sha256, folder fingerprint, hub id)
without reading its weights.

>>> from ihs.models.handle import ModelHandle, ModelOptions
>>> handle = ModelHandle("smollm2-135m-instruct", ModelOptions(dtype="float32"))  # doctest: +SKIP
>>> handle.fingerprint, handle.loads                                              # doctest: +SKIP
('b179c9523d0e...', 0)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ihs.models.loading import LoadedModel, load_model, resolve_source

log = logging.getLogger(__name__)


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(kw_only=True)
class ModelOptions:
    """How a model loads."""

    dtype: str = _opt("float32", "float32, bfloat16 or float16.")
    device: str | None = _opt(None, "cpu, cuda, cuda:1 or mps (null: cpu).")
    trust_remote_code: bool = _opt(False, "Allow model code from the hub (off by default).")
    threads: int | None = _opt(None, "CPU threads for torch (null: torch's default, or 1 when the load average "
                                     "shows the cores already busy, where several threads stall each other).")


class ModelHandle:
    """A model reference (zoo name, folder, GGUF file, hub id) or a :class:`LoadedModel`, loaded lazily."""

    def __init__(self, ref: str | LoadedModel, options: ModelOptions | None = None) -> None:
        self.options = options or ModelOptions()
        self._lm: LoadedModel | None = ref if isinstance(ref, LoadedModel) else None
        self.loads = 0
        if self._lm is not None:
            self.ref = self._lm.name
            self.name = self._lm.name
            self.identity = dict(self._lm.identity)
            self.fingerprint = self._lm.fingerprint()
            self.dtype = str(self._lm.dtype).replace("torch.", "")
        else:
            self.ref = str(ref)
            # Resolving pulls a zoo model once if needed, and gives its identity without loading weights.
            _, identity, display = resolve_source(self.ref, pull=True)
            self.name = display
            self.identity = identity
            self.fingerprint = str(identity.get("sha256") or identity.get("revision") or self.ref)
            self.dtype = self.options.dtype

    def get(self) -> LoadedModel:
        """The loaded model (loaded now if it was not)."""
        if self._lm is None:
            started = time.perf_counter()
            self._lm = load_model(self.ref, dtype=self.options.dtype, device=self.options.device,
                                  trust_remote_code=self.options.trust_remote_code)
            self.loads += 1
            log.info("loaded %s in %.1f s", self.ref, time.perf_counter() - started)
            self.identity = dict(self._lm.identity)
        return self._lm

    @property
    def loaded(self) -> LoadedModel | None:
        """The model if it is loaded already, else None (never loads)."""
        return self._lm

    def describe(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "fingerprint": self.fingerprint, "dtype": self.dtype,
                "identity": self.identity}
