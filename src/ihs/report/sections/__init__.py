"""The report's sections, one module per section.

A section module exposes ``TITLE`` (its name in the page's table of contents) and
``section(ctx: ihs.report.context.ReportContext) -> str`` (its HTML, or "" when it has nothing to
show). A step's section also names the workflow's Result class it reads, ``RESULT``
(``ctx`` loads it from the step's folder with ``RESULT.load``, for this section and any other that
asks for the step's result). The page shows the fixed sections (summary, data, compare, run) and, in
run order, one section per registered step that has a module here named after it
(``ihs.report.sections.<step>``); a module may name further sections drawn from the same step's
result in ``ALSO`` (the lens step has ``ALSO = ("consistency",)``). Adding an analysis to the report
= adding one module named after its step.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def section_module(name: str) -> ModuleType | None:
    """``ihs.report.sections.<name>``, or None when there is no such section."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None
        raise


def result_class(step: str) -> type | None:
    """The Result class the section of ``step`` reads (None when the step has no section or reads none)."""
    module = section_module(step)
    return getattr(module, "RESULT", None) if module is not None else None
