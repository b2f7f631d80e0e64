"""ihs: explain LLM safety through a model's intermediate hidden states.

A session in Python (names load on first use; see :mod:`ihs.api` for each call's options)::

    import ihs

    lm = ihs.load_model("smollm2-135m-instruct")
    store = ihs.extract(lm, {"normal": "builtin:normal", "malicious": "builtin:malicious"}, limit=50)
    ihs.probe(store).numbers()

Layers: index 0 is the embedding output, index i the output of decoder block i (``ihs.LAYER_CONVENTION``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("LAYER_CONVENTION", "ActivationStore", "Guard", "LoadedModel", "defend", "extract", "generate", "graft",
        "lens", "load_model", "parse_layer_range", "parse_layers", "probe", "prompts", "run")


def __getattr__(name: str) -> Any:
    if name in _API:
        from ihs import api

        return getattr(api, name)
    raise AttributeError(f"module 'ihs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
