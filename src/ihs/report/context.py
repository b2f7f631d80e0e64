"""What a section is given: the run's index, its layout, each model's results (loaded once, on demand).

Paths come from :class:`ihs.pipeline.layout.RunLayout` and results from the Result class each step's
section names (``RESULT``, loaded with ``RESULT.load(step folder)``); a section never spells a path
or opens a file itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import read_jsonl
from ihs.pipeline.layout import RunLayout
from ihs.report.html import STATUS_TEXT, model_block, notice, status_sentence
from ihs.report.sections import result_class

DONE = ("done", "cached")


@dataclass
class ModelResults:
    """One model of the run: its entry in run.json and its steps' results."""

    entry: dict[str, Any]
    layout: RunLayout
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def slug(self) -> str:
        return self.entry["slug"]

    @property
    def steps(self) -> dict[str, Any]:
        return self.entry.get("steps", {})

    def folder(self, step: str) -> Path:
        """The step's output folder."""
        return self.layout.step_dir(self.entry["dir"], step)

    def ok(self, step: str) -> bool:
        """Whether the step finished (computed now or reused from the cache)."""
        return self.steps.get(step, {}).get("status") in DONE

    def result(self, step: str) -> Any | None:
        """The step's result (None when the step did not finish or its output cannot be read)."""
        if step not in self._loaded:
            self._loaded[step] = None
            cls = result_class(step) if self.ok(step) else None
            if cls is not None:
                try:
                    self._loaded[step] = cls.load(self.folder(step))
                except (IhsError, OSError, KeyError, ValueError):
                    self._loaded[step] = None
        return self._loaded[step]

    def why(self, step: str) -> str:
        """Why the step has no result, in words."""
        if self.ok(step):
            return STATUS_TEXT["missing"]
        return status_sentence(self.steps.get(step, {"status": "missing"}))

    def notice(self, step: str) -> str:
        failed = self.steps.get(step, {}).get("status") == "failed"
        return notice(self.why(step), failed=failed)

    def why_missing(self) -> dict[str, str]:
        """Step -> why it has no output, for every step that did not finish."""
        return {step: self.why(step) for step in self.steps if not self.ok(step)}

    def prompts(self) -> list[dict[str, Any]]:
        """The extraction's planned prompts (the store's prompts.jsonl), empty when there is no store."""
        from ihs.store import PROMPTS

        if not self.ok("extract"):
            return []
        try:
            return read_jsonl(self.layout.store_dir(self.entry["dir"]) / PROMPTS)
        except IhsError:
            return []

    def lens_examples(self) -> dict[str, Any] | None:
        """Top-k lens tokens per prompt (for the example table); None when the store cannot be read."""
        if not self.ok("extract"):
            return None
        try:
            from ihs.store import ActivationStore

            store = ActivationStore.load(self.layout.store_dir(self.entry["dir"]))
        except Exception:  # noqa: BLE001 - the report shows what it can
            return None
        if store.lens_ids is None:
            return None
        return {"ids": store.lens_ids, "records": store.records, "text": store.token_text,
                "num_layers": store.num_layers}


@dataclass
class ReportContext:
    """The run a report shows: ``index`` (run.json), ``layout``, ``models``, and the report options."""

    index: dict[str, Any]
    layout: RunLayout
    models: list[ModelResults]
    examples: int = 4

    @property
    def many(self) -> bool:
        return len(self.models) > 1

    def block(self, m: ModelResults, body: str, key: str) -> str:
        """One model's part of section ``key`` (headed by the model's name when the run has several)."""
        return model_block(m.name, m.slug, self.many, body, key)

    def per_model(self, key: str, step: str, render: Callable[[ModelResults, Any], str]) -> str:
        """Every model's block of section ``key``: ``render(model, result)`` where ``step`` has a result,
        else the notice saying why not."""
        blocks = []
        for m in self.models:
            result = m.result(step)
            body = m.notice(step) if result is None else render(m, result)
            blocks.append(self.block(m, body, key))
        return "".join(blocks)


def load_context(out: str | Path, index: dict[str, Any]) -> ReportContext:
    """The context of the run in ``out`` described by ``index`` (run.json)."""
    layout = RunLayout(out)
    examples = int(index.get("config", {}).get("report", {}).get("examples", 4) or 4)
    models = [ModelResults(entry, layout) for entry in index["models"]]
    return ReportContext(index, layout, models, examples)
