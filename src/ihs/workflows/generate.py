"""Generation workflow: greedy answers for prompt sets, judged for refusal.

The computing lives in :mod:`ihs.generation` (``generate``, the judges, ``refusal_summary``); this
module gives it options with help, a result that saves ``generations.jsonl`` (one judged answer per
prompt, keyed by prompt id), ``refusal.json`` (refusal rate per class and jailbreak family, ASR),
``refusal_rates.json`` (``{model: {class: rate}}``, which ``ihs lens --refusal`` reads) and
``refusal.png``, and the ``generate`` step of ``ihs run``.

>>> from ihs.workflows.generate import GenerateConfig, run_generate
>>> result = run_generate(lm, records, GenerateConfig(max_new_tokens=16))  # doctest: +SKIP
>>> result.numbers()["asr"], result.save("out/generate")                  # doctest: +SKIP
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl, write_json, write_jsonl
from ihs.workflows.base import (
    FormatOptions,
    RowsResult,
    Skip,
    Step,
    StepContext,
    format_flags,
    opt,
    records_digest,
)

JUDGE_HELP = ("Refusal judge: phrases (refusal phrases in the first 160 characters, case-insensitive), phrases:N, "
              "gcg (GCG prefixes verbatim), py:module:function, classifier:MODEL[:LABELS].")
GENERATIONS = "generations.jsonl"
RATES = "refusal_rates.json"
FIGURE = "refusal.png"


@dataclass(kw_only=True)
class GenerateConfig:
    """Greedy generation and refusal judging."""

    classes: list[str] = opt(help="Classes to answer (in ihs run; those among the data classes).",
                             factory=lambda: ["normal", "malicious", "contrast", "jailbreak"])
    limit: int | None = opt(40, "Prompts per class: the first N (null: all).")
    max_new_tokens: int = opt(32, "New tokens per answer (greedy; stops at EOS).")
    batch_size: int = opt(16, "Prompts per generation batch.")
    judge: str = opt("phrases", JUDGE_HELP)

    def validate(self) -> None:
        for name in ("limit", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise IhsError(f"{name} must be positive, got {value}")


def command_line(model: str, data: Sequence[str], options: GenerateConfig, out: str | Path | None, *,
                 fmt: FormatOptions | None = None) -> str:
    """The canonical ``ihs generate`` command for these inputs, written into refusal.json."""
    parts = ["ihs", "generate", "--model", str(model)]
    for spec in data:
        parts += ["--data", spec]
    if options.limit is not None:
        parts += ["--limit", str(options.limit)]
    parts += ["--max-new-tokens", str(options.max_new_tokens), "--batch-size", str(options.batch_size),
              "--judge", options.judge]
    parts += format_flags(fmt)
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


class GenerateResult(RowsResult):
    """``refusal.json`` (refusal per class and family, ASR, judge, timing) with the judged generations."""

    FILE = "refusal.json"

    @property
    def model(self) -> str:
        return self.data.get("model", "")

    @property
    def per_class(self) -> dict[str, dict[str, Any]]:
        return self.data.get("per_class", {})

    def rates(self) -> dict[str, dict[str, float]]:
        """``{model: {class: refusal rate}}``, the content of refusal_rates.json."""
        return {self.model: {label: v["refusal_rate"] for label, v in self.per_class.items()}}

    def numbers(self) -> dict[str, Any] | None:
        """The headline numbers: refusal per class and family, ASR over the attack classes, the judge."""
        if "per_class" not in self.data:
            return None
        return {"per_class": self.data["per_class"], "per_family": self.data.get("per_family", {}),
                "asr": self.data.get("asr"), "judge": self.data.get("judge")}

    def save(self, folder: str | Path, *, figures: bool = True) -> list[Path]:
        """Write generations.jsonl, refusal.json, refusal_rates.json and (with ``figures``) refusal.png."""
        written = super().save(folder)
        folder = Path(folder)
        write_jsonl(folder / GENERATIONS, self.rows)
        write_json(folder / RATES, self.rates())
        written += [folder / GENERATIONS, folder / RATES]
        if figures:
            from ihs.plots.graft import plot_refusal

            written.append(plot_refusal(self.data, folder / FIGURE,
                                        title=f"{self.model}: refusal rate ({self.data.get('judge')} judge)"))
        return written

    @classmethod
    def load(cls, folder: str | Path) -> GenerateResult:
        folder = Path(folder)
        rows = read_jsonl(folder / GENERATIONS) if (folder / GENERATIONS).is_file() else []
        return cls(read_json(folder / cls.FILE), rows)


def _result(run: Any, meta: dict[str, Any], command: str | None) -> GenerateResult:
    from ihs.generation import refusal_summary

    summary = refusal_summary(run.rows)
    data = {**meta, **({"command": command} if command else {}), "judge": run.judge, **summary}
    return GenerateResult(data, run.rows)


def run_generate(model: Any, records: Sequence[Any], options: GenerateConfig | None = None, *,
                 fmt: FormatOptions | None = None, command: str | None = None,
                 progress: bool = True) -> GenerateResult:
    """Answer every record greedily with ``model`` (a LoadedModel), judge refusal, summarise.

    ``records`` are the prompts to answer (already chosen: ``options.classes`` and ``limit`` are
    applied by the caller); ``fmt`` is the prompt formatting (chat template, system prompt).
    """
    from ihs.generation import GenerateOptions, generate

    options = options or GenerateConfig()
    options.validate()
    fmt = fmt or FormatOptions()
    if not records:
        raise IhsError("nothing to generate: the prompt set is empty")
    gen = GenerateOptions(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, chat=fmt.chat,
                          system_prompt=fmt.system_prompt)
    run = generate(model, records, gen, options.judge, progress=progress)
    dtype = str(model.dtype).replace("torch.", "")
    meta = {"model": model.name, "identity": model.identity, "options": {**run.options, "dtype": dtype},
            "seconds": round(run.seconds, 2),
            "new_tokens_per_s": round(run.new_tokens / run.seconds, 2) if run.seconds else None}
    return _result(run, meta, command)


def rejudge(generations: str | Path, judge: str, *, model: str | None = None,
            command: str | None = None) -> GenerateResult:
    """Judge an existing ``generations.jsonl`` again with ``judge`` (no generation).

    The model name, identity, options and timing come from the ``refusal.json`` beside it when
    there is one (else the model is ``model``).
    """
    from ihs.generation import GenerationRun, judge_rows, load_judge

    path = Path(generations)
    rows = read_jsonl(path)
    old = read_json(path.parent / GenerateResult.FILE) if (path.parent / GenerateResult.FILE).is_file() else {}
    run = judge_rows(GenerationRun(rows, 0.0, sum(len(r.get("new_ids", [])) for r in rows)), load_judge(judge))
    meta = {"model": old.get("model", model or "model"),
            **{k: old[k] for k in ("identity", "options", "seconds", "new_tokens_per_s") if k in old}}
    return _result(run, meta, command)


class GenerateStep(Step):
    name = "generate"
    options = GenerateConfig
    help = ("Greedy answers judged for refusal: the classes, prompts per class, new tokens, judge "
            "(phrases, gcg, py:module:function, classifier:MODEL).")

    @staticmethod
    def records(ctx: StepContext) -> list[Any]:
        """The prompts the step answers: the first ``limit`` of each of ``classes`` among the data classes."""
        cfg: GenerateConfig = ctx.options("generate")
        return ctx.select([c for c in cfg.classes if c in ctx.config.data], cfg.limit)

    def key(self, ctx: StepContext) -> dict[str, Any]:
        return {"model": ctx.model_part(), "data": records_digest(self.records(ctx)),
                "options": asdict(ctx.options(self.name))}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        cfg: GenerateConfig = ctx.options(self.name)
        records = self.records(ctx)
        if not records:
            raise Skip(f"none of generate.classes ({', '.join(cfg.classes)}) is among the data classes")
        data = [f"{c}={ctx.config.data[c]}" for c in cfg.classes if c in ctx.config.data]
        command = command_line(ctx.model.ref, data, cfg, folder, fmt=ctx.config.format)
        result = run_generate(ctx.model.get(), records, cfg, fmt=ctx.config.format, command=command,
                              progress=ctx.progress)
        result.save(folder)
        return {"outputs": [GENERATIONS, GenerateResult.FILE], "n": len(result.rows)}
