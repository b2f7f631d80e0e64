"""One workflow per analysis (see :mod:`ihs.workflows.base` for the contract).

``REGISTRY`` lists the steps of ``ihs run`` in run order, one line per analysis ("module:Step class");
registering a new analysis is one more line here (its report section is found by the step's name).
"""

from __future__ import annotations

import importlib
from functools import cache

REGISTRY: tuple[str, ...] = (
    "ihs.workflows.extract:ExtractStep",
    "ihs.workflows.probe:ProbeStep",
    "ihs.workflows.lens:LensStep",
    "ihs.workflows.generate:GenerateStep",
    "ihs.workflows.jailbreak:JailbreakStep",
    "ihs.workflows.graft:GraftStep",
    "ihs.workflows.guard:GuardStep",
    "ihs.workflows.defense:DefenseStep",
    "ihs.workflows.languages:LanguagesStep",
    "ihs.workflows.explain:ExplainStep",
    "ihs.workflows.align:AlignStep",
    "ihs.workflows.attack:AttackStep",
)


@cache
def steps() -> tuple:
    """The registered step objects, in run order."""
    out = []
    for entry in REGISTRY:
        module, cls = entry.split(":")
        out.append(getattr(importlib.import_module(module), cls)())
    return tuple(out)
