"""Logit grafting workflow (claim 5): put a donor's state into the targets' last prompt position, generate, judge.

The computing lives in :func:`ihs.interventions.grafting.graft_sweep`; this module chooses targets,
donors and the reference set (:func:`graft_sets`, the one rule for the CLI and ``ihs run``: no
prompt is both target and donor), runs the forward and (optionally) reverse sweep, and saves
``graft.json`` (ASR per grafted layer, no-graft baseline, real-jailbreak reference, examples),
``generations.jsonl`` and ``graft_asr.png``.

>>> from ihs.workflows.graft import GraftConfig, graft_sets, run_graft
>>> sets = graft_sets(malicious, normal, GraftConfig(targets=24), reference=jailbreaks)   # doctest: +SKIP
>>> result = run_graft(lm, sets.targets, sets.donors, GraftConfig(targets=24),            # doctest: +SKIP
...                    reference=sets.reference)
>>> result.numbers()["best_asr"], result.save("out/graft")                               # doctest: +SKIP
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl, write_jsonl
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
from ihs.workflows.generate import JUDGE_HELP

GENERATIONS = "generations.jsonl"
FIGURE = "graft_asr.png"


@dataclass(kw_only=True)
class GraftConfig:
    """Logit grafting: which layers, how many targets and donors, which classes."""

    layers: str = opt("0:L:5", "Layers to graft, in the layer grammar (0 = embedding output, L = last block).")
    targets: int = opt(24, "Target prompts (grafted into): the first N of the target class.")
    donors: int = opt(100, "Donor prompts (states taken from): the N after the first `targets` of the donor class, "
                           "so reverse targets never donate.")
    target_class: str = opt("malicious", "Class of the targets (in ihs run).")
    donor_class: str = opt("normal", "Class of the donors (in ihs run).")
    reference_class: str | None = opt("jailbreak", "Real jailbreaks for the reference ASR (in ihs run; null: none); "
                                                   "prompts wrapping the targets' goals when the set tags goal_id.")
    per_pair: bool = opt(False, "One donor per target (cycling) instead of the donors' mean state.")
    reverse: bool = opt(False, "Also graft target-class states into donor-class prompts.")
    max_new_tokens: int = opt(32, "New tokens per answer (greedy).")
    batch_size: int = opt(16, "Prompts per generation batch.")
    judge: str = opt("phrases", JUDGE_HELP)
    examples: int = opt(3, "Example generations kept per layer in graft.json.")

    def validate(self) -> None:
        for name in ("targets", "donors", "max_new_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise IhsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.examples < 0:
            raise IhsError(f"examples must be 0 or more, got {self.examples}")


@dataclass
class GraftSets:
    """The prompts of one graft: forward targets and donors, reverse targets and donors, reference."""

    targets: list[Any]
    donors: list[Any]
    reverse_targets: list[Any] = field(default_factory=list)
    reverse_donors: list[Any] = field(default_factory=list)
    reference: list[Any] = field(default_factory=list)


def _text(record: Any) -> str:
    return record["text"] if isinstance(record, dict) else record.text


def _tags(record: Any) -> dict[str, Any]:
    return (record.get("tags") if isinstance(record, dict) else record.tags) or {}


def _id(record: Any) -> str:
    return record["id"] if isinstance(record, dict) else record.id


def graft_sets(target_pool: Sequence[Any], donor_pool: Sequence[Any], options: GraftConfig, *,
               reference: Sequence[Any] | None = None) -> GraftSets:
    """Choose the prompts of a graft from the target and donor classes (records in data order).

    Targets are the first ``options.targets`` of the target pool; donors the next ``options.donors``
    of the donor pool after its first ``options.targets`` (which are the reverse targets), so no
    prompt is both target and donor in either direction (a donor whose text is a target's is dropped
    too). The reverse donors are the target pool's prompts after its targets. The reference is the
    prompts of ``reference`` that wrap a target's goal (tag ``goal_id``), else its first ``targets``.
    """
    n, d = options.targets, options.donors
    if n <= 0 or d <= 0:
        raise IhsError("the numbers of targets and donors must be positive")
    targets, reverse_targets = list(target_pool[:n]), list(donor_pool[:n])
    if not targets:
        raise IhsError("the target set is empty")
    if not reverse_targets:
        raise IhsError("the donor set is empty")
    taken = {_text(r) for r in targets}
    donors = [r for r in donor_pool[n:n + d] if _text(r) not in taken]
    if not donors:
        raise IhsError(f"the donor set has no prompts after its first {n} (kept for the reverse graft)")
    reverse_donors: list[Any] = []
    if options.reverse:
        taken = {_text(r) for r in reverse_targets}
        reverse_donors = [r for r in target_pool[n:n + d] if _text(r) not in taken]
        if not reverse_donors:
            raise IhsError(f"the target set has no prompts after its first {n} to donate for the reverse graft")
    chosen: list[Any] = []
    if reference:
        goals = {_id(t) for t in targets}
        chosen = [r for r in reference if _tags(r).get("goal_id") in goals] or list(reference[:n])
    return GraftSets(targets, donors, reverse_targets, reverse_donors, chosen)


def command_line(model: str, target: str, donor: str, options: GraftConfig, out: str | Path | None, *,
                 jailbreak: str | None = None, fmt: FormatOptions | None = None) -> str:
    """The canonical ``ihs graft`` command for these inputs, written into graft.json."""
    o = options
    parts = ["ihs", "graft", "--model", str(model), "--target", target, "--donor", donor, "--layers", o.layers,
             "--limit", str(o.targets), "--donor-limit", str(o.donors), "--jailbreak", jailbreak or "none",
             "--max-new-tokens", str(o.max_new_tokens), "--batch-size", str(o.batch_size), "--judge", o.judge,
             "--examples", str(o.examples)]
    parts += [flag for flag, on in (("--per-pair", o.per_pair), ("--reverse", o.reverse)) if on]
    parts += format_flags(fmt)
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


class GraftResult(RowsResult):
    """``graft.json``: the forward sweep (baseline, per-layer ASR, reference), the reverse one or null."""

    FILE = "graft.json"

    @property
    def forward(self) -> dict[str, Any] | None:
        return self.data.get("forward")

    @property
    def reverse(self) -> dict[str, Any] | None:
        return self.data.get("reverse")

    def numbers(self) -> dict[str, Any] | None:
        """The headline numbers of the forward graft: best layer and its ASR, baseline and reference ASR."""
        fwd = self.forward
        if not fwd or not fwd.get("layers"):
            return None
        best = max(fwd["layers"], key=lambda e: (e["asr"], e.get("changed_answers") or 0, -e["layer"]))
        ref = fwd.get("reference") or {}
        return {"best_layer": best["layer"], "best_asr": best["asr"], "best_n": best["n"],
                "best_changed": best.get("changed_answers"), "baseline_asr": fwd["baseline"]["asr"],
                "reference_asr": ref.get("asr"), "reference_n": ref.get("n"), "n_targets": fwd["n_targets"],
                "n_donors": fwd["n_donors"], "layers": [e["layer"] for e in fwd["layers"]],
                "target_labels": fwd.get("target_labels", []), "donor_labels": fwd.get("donor_labels", []),
                "per_pair": fwd.get("per_pair")}

    def save(self, folder: str | Path, *, figures: bool = True) -> list[Path]:
        """Write graft.json, generations.jsonl and (with ``figures``) graft_asr.png."""
        written = super().save(folder)
        folder = Path(folder)
        write_jsonl(folder / GENERATIONS, self.rows)
        written.append(folder / GENERATIONS)
        if figures:
            from ihs.plots.graft import plot_graft

            written.append(plot_graft(self.data, folder / FIGURE))
        return written

    @classmethod
    def load(cls, folder: str | Path) -> GraftResult:
        folder = Path(folder)
        rows = read_jsonl(folder / GENERATIONS) if (folder / GENERATIONS).is_file() else []
        return cls(read_json(folder / cls.FILE), rows)


def _labels(records: Sequence[Any]) -> str:
    names = sorted({(r.get("label") if isinstance(r, dict) else r.label) or "" for r in records})
    return "+".join(n for n in names if n) or "target"


def run_graft(model: Any, targets: Sequence[Any], donors: Sequence[Any], options: GraftConfig | None = None, *,
              reference: Sequence[Any] | None = None, reverse_targets: Sequence[Any] | None = None,
              reverse_donors: Sequence[Any] | None = None, fmt: FormatOptions | None = None,
              command: str | None = None, progress: bool = True) -> GraftResult:
    """Graft donor states into the targets at each of ``options.layers`` with ``model`` (a LoadedModel).

    With ``options.reverse`` the reverse sweep grafts ``reverse_donors`` into ``reverse_targets``.
    ``reference`` (e.g. real jailbreaks of the targets' goals) is answered without a graft for comparison.
    """
    from ihs.generation import GenerateOptions
    from ihs.interventions.grafting import graft_sweep
    from ihs.layers import parse_layers

    options = options or GraftConfig()
    options.validate()
    fmt = fmt or FormatOptions()
    layers = parse_layers(options.layers, model.num_layers)
    if options.reverse and (not reverse_targets or not reverse_donors):
        raise IhsError("the reverse graft needs reverse targets and donors")
    gen = GenerateOptions(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, chat=fmt.chat,
                          system_prompt=fmt.system_prompt)
    sweep = dict(judge=options.judge, options=gen, per_pair=options.per_pair, examples=options.examples,
                 progress=progress)
    started = time.perf_counter()
    forward = graft_sweep(model, targets, donors, layers, reference=list(reference) if reference else None, **sweep)
    rows = [{**r, "direction": "forward"} for r in forward.pop("rows")]
    data: dict[str, Any] = {"model": model.name, "identity": model.identity,
                            **({"command": command} if command else {}), "forward": forward, "reverse": None}
    if options.reverse:
        back = graft_sweep(model, reverse_targets, reverse_donors, layers, reference=None, **sweep)
        rows += [{**r, "direction": "reverse"} for r in back.pop("rows")]
        data["reverse"] = back
    data["seconds"] = round(time.perf_counter() - started, 2)
    data["target_donor_split"] = (f"targets: the first {options.targets} {_labels(targets)} prompts; donors: the "
                                  f"{options.donors} {_labels(donors)} prompts after the first {options.targets}, "
                                  "so no prompt is both")
    return GraftResult(data, rows)


class GraftStep(Step):
    name = "graft"
    options = GraftConfig
    help = "Logit grafting: layers in the layer grammar (L = last block), target / donor / reference classes and counts."

    @staticmethod
    def sets(ctx: StepContext) -> GraftSets:
        """The step's prompts, chosen by :func:`graft_sets` from the run's classes (Skip when they cannot be)."""
        cfg: GraftConfig = ctx.options("graft")
        for what, name in (("target_class", cfg.target_class), ("donor_class", cfg.donor_class)):
            if name not in ctx.config.data:
                raise Skip(f"graft.{what} {name!r} is not among the data classes ({', '.join(ctx.config.data)})")
        reference = None
        if cfg.reference_class and cfg.reference_class in ctx.config.data:
            reference = ctx.select([cfg.reference_class], None)
        try:
            return graft_sets(ctx.select([cfg.target_class], None), ctx.select([cfg.donor_class], None), cfg,
                              reference=reference)
        except IhsError as exc:
            raise Skip(str(exc)) from None

    def key(self, ctx: StepContext) -> dict[str, Any]:
        s = self.sets(ctx)
        return {"model": ctx.model_part(), "targets": records_digest(s.targets), "donors": records_digest(s.donors),
                "reverse_donors": records_digest(s.reverse_donors), "reference": records_digest(s.reference),
                "options": asdict(ctx.options(self.name))}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        cfg: GraftConfig = ctx.options(self.name)
        s = self.sets(ctx)
        data = ctx.config.data
        reference = cfg.reference_class if cfg.reference_class in data else None
        command = command_line(ctx.model.ref, f"{cfg.target_class}={data[cfg.target_class]}",
                               f"{cfg.donor_class}={data[cfg.donor_class]}", cfg, folder,
                               jailbreak=f"{reference}={data[reference]}" if reference else None, fmt=ctx.config.format)
        result = run_graft(ctx.model.get(), s.targets, s.donors, cfg, reference=s.reference,
                           reverse_targets=s.reverse_targets, reverse_donors=s.reverse_donors, fmt=ctx.config.format,
                           command=command, progress=ctx.progress)
        result.save(folder)
        return {"outputs": [GraftResult.FILE], "layers": [e["layer"] for e in result.forward["layers"]]}
