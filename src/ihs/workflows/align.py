"""Alignment workflow: train a model with SFT or DPO (``ihs.align``) and track ihs measures per checkpoint.

>>> from ihs.workflows.align import AlignOptions, TrackOptions, run_align, run_track
>>> run = run_align("gemma-3-270m", "runs/align/sft", AlignOptions(steps=60, save_every=15))  # doctest: +SKIP
>>> track = run_track("runs/align/sft", TrackOptions(per_class=24))                        # doctest: +SKIP
>>> track.save("runs/align/sft-track"); track.numbers()["rows"][0]["asr_malicious"]         # doctest: +SKIP

Tracking measures every exported checkpoint on ONE fixed evaluation set: the first ``per_class``
held-out prompts of each class of :func:`ihs.align.data.evaluation_split` (goals never trained on).
Every measure comes from the workflow that owns it: extraction (:func:`ihs.extraction.extract`), probes
(:func:`ihs.workflows.probe.run_probe`), logit lens and TKIC (:func:`ihs.workflows.lens.run_lens`),
refusal and ASR (:func:`ihs.workflows.generate.run_generate`). Perplexity is the mean token NLL of
ihs's written benign answers (:mod:`ihs.align.answers`) given their prompts, exponentiated.
"""

from __future__ import annotations

import math
import os
import resource
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.workflows.base import Result, Skip, Step, StepContext, opt

__all__ = ["AlignOptions", "AlignResult", "AlignStep", "AlignStepOptions", "TrackOptions", "TrackResult",
           "run_align", "run_track"]


@dataclass(kw_only=True)
class AlignOptions:
    """How to align a model (SFT or DPO, LoRA or full, optional association term)."""

    method: str = opt("sft", "sft (supervised answers) or dpo (chosen vs rejected answers).")
    data: str | None = opt(None, "Training data: a folder from ihs.align (sft.jsonl / dpo.jsonl + data.json) or a "
                                 "JSONL file (null: the built-in sets, training side of the goal split).")
    steps: int = opt(100, "Optimizer steps.")
    save_every: int = opt(25, "Steps between exported checkpoints (step 0 and the last step are kept too).")
    batch_size: int = opt(4, "Examples per step.")
    learning_rate: float = opt(2e-4, "Learning rate (linear decay).")
    max_length: int = opt(256, "Tokens of prompt + answer.")
    lora_r: int = opt(16, "LoRA rank (0: full fine-tuning).")
    lora_alpha: int = opt(32, "LoRA alpha.")
    beta: float = opt(0.1, "DPO temperature.")
    association: str | None = opt(None, "Association term: emotion (malicious last-token states toward negative-"
                                        "emotion directions) or refusal (toward the refusal direction); null: off.")
    assoc_layers: str = opt("L/3:L/2", "Layers of the association term, in the layer grammar.")
    assoc_weight: float = opt(1.0, "Weight of the association term in the loss.")
    assoc_center: bool = opt(False, "Centre the states on the training prompts' mean state before the cosine "
                                    "(a scale-free term; see ihs.align.association).")
    chat_template: str = opt("auto", "auto (the model's, else ihs's plain template), model (the model's or an "
                                     "error), ihs (always ihs's).")
    seed: int = opt(0, "Training seed.")
    threads: int | None = opt(None, "CPU threads (null: torch's default).")

    def validate(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise IhsError(f"unknown method {self.method!r}; use sft or dpo")
        if self.association not in (None, "emotion", "refusal"):
            raise IhsError(f"unknown association target {self.association!r}; use emotion or refusal")
        if self.lora_r < 0:
            raise IhsError(f"lora_r must be 0 (full fine-tuning) or positive, got {self.lora_r}")

    def train_options(self, progress: bool = True) -> Any:
        """The :class:`ihs.align.train.TrainOptions` these options stand for."""
        from ihs.align import AssociationOptions, LoraOptions, TrainOptions

        self.validate()
        assoc = (AssociationOptions(target=self.association, layers=self.assoc_layers, weight=self.assoc_weight,
                                    center=self.assoc_center) if self.association else None)
        lora = LoraOptions(r=self.lora_r, alpha=self.lora_alpha) if self.lora_r else None
        return TrainOptions(method=self.method, lora=lora, max_steps=self.steps, save_every=self.save_every,
                            batch_size=self.batch_size, learning_rate=self.learning_rate, max_length=self.max_length,
                            beta=self.beta, chat_template=self.chat_template, association=assoc, seed=self.seed,
                            threads=self.threads, progress=progress)


def command_line(model: str, out: str | Path, options: AlignOptions) -> str:
    """The canonical ``ihs align sft|dpo`` command for these inputs (options that differ from the defaults)."""
    parts = ["ihs", "align", options.method, "--model", model, "--out", str(out)]
    default = AlignOptions()
    for name, value in asdict(options).items():
        if name == "method" or value == getattr(default, name) or value is None:
            continue
        parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def check_template(model: str) -> None:
    """Refuse a model without a chat template of its own, reading only its tokenizer (no weights)."""
    from transformers import AutoTokenizer

    from ihs.align.encoding import resolve_chat_template
    from ihs.models.loading import resolve_source

    source, _, name = resolve_source(model, pull=True)
    resolve_chat_template(AutoTokenizer.from_pretrained(str(source)), "model", name)


class AlignResult(Result):
    """``align_run.json``: what a training run did: checkpoints, losses, wall time, peak memory."""

    FILE = "align_run.json"

    def numbers(self) -> dict[str, Any]:
        """Headline numbers: method, steps, checkpoints, first and last loss, wall seconds, peak memory."""
        d = self.data
        return {k: d.get(k) for k in ("method", "steps", "checkpoints", "loss_first", "loss_last", "wall_seconds",
                                      "seconds_per_step", "peak_rss_mib", "examples", "association")}


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _earlier_segments(out: Path, resumed_from: int | None) -> list[dict[str, Any]]:
    """The segments of earlier calls on a resumed run (from its ``align_run.json``), up to the resumed step."""
    from ihs.io import read_json

    path = out / AlignResult.FILE
    if not resumed_from or not path.is_file():
        return []
    return [s for s in read_json(path).get("segments", []) if int(s.get("to_step", 0)) <= resumed_from]


def run_align(model: str, out: str | Path, options: AlignOptions | None = None, *, command: str | None = None,
              progress: bool = True) -> AlignResult:
    """Train ``model`` into the run folder ``out`` (resumes a run there) and summarise it."""
    from ihs.align import build_data, train
    from ihs.align.files import load_examples
    from ihs.io import read_json

    options = options or AlignOptions()
    train_options = options.train_options(progress)
    if options.data:
        load_examples(options.data, options.method)  # a file without answers fails here, before any loading
    if options.chat_template == "model":
        check_template(model)
    started, load = time.perf_counter(), os.getloadavg()
    data = options.data if options.data else build_data(progress=progress)
    result = train(model, data, out, options=train_options)
    wall = time.perf_counter() - started
    losses = [r["loss"] for r in result.log if r.get("loss") is not None]
    runtime = next((r["train_runtime"] for r in reversed(result.log) if "train_runtime" in r), None)
    trained = result.step - (result.resumed_from or 0)
    segment = {"from_step": result.resumed_from or 0, "to_step": result.step, "wall_seconds": round(wall, 1),
               "trainer_seconds": runtime, "seconds_per_step": round(runtime / max(trained, 1), 2) if runtime else None,
               "peak_rss_mib": _peak_rss_mib(), "threads": _threads(),
               "load_average_before": [round(x, 2) for x in load],
               "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    segments = _earlier_segments(Path(out), result.resumed_from) + [segment]
    payload = {
        "command": command or command_line(model, out, options), "model": model, "method": options.method,
        "options": asdict(options), "run_dir": str(out), "steps": result.step,
        "checkpoints": [step for step, _ in result.checkpoints],
        "examples": read_json(Path(out) / "run.json").get("examples"),
        "association": options.association, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        # the whole run: the sum over its segments (a resumed run has one per call) and the largest peak
        "wall_seconds": round(sum(s["wall_seconds"] for s in segments), 1),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in segments),
        "seconds_per_step": segment["seconds_per_step"], "trainer_seconds": runtime,
        "resumed_from": result.resumed_from, "segments": segments,
        "load_average_before": segment["load_average_before"], "load_average_after": segment["load_average_after"],
        "cpus": os.cpu_count(),
    }
    return AlignResult(payload)


# -- tracking ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TrackOptions:
    """How to measure each checkpoint of an alignment run on the held-out goals."""

    per_class: int = opt(24, "Held-out prompts per class (normal, malicious, contrast, jailbreak; jailbreak "
                             "wrappings dealt round-robin over families).")
    max_new_tokens: int = opt(20, "New tokens per generated answer (greedy).")
    gen_batch: int = opt(16, "Prompts per generation batch.")
    judge: str = opt("phrases", "Refusal judge (phrases, gcg, py:module:function, classifier:MODEL).")
    classifier: str = opt("logreg", "Probe classifier (svm, logreg, mlp, diffmean).")
    folds: int = opt(5, "Probe cross-validation folds.")
    seed: int = opt(42, "Probe seed (folds, shuffled-label control).")
    lens_layers: str | None = opt(None, "Layer range of the lens scalars (TKIC, mean shares); null: the lens default.")
    perplexity_answers: int = opt(24, "ihs's written benign answers scored for perplexity (0: off).")
    dtype: str = opt("float32", "Dtype the checkpoints are loaded in.")
    steps: list[int] | None = opt(None, "Only these checkpoint steps (null: every checkpoint).")

    def validate(self) -> None:
        if self.per_class < 4:
            raise IhsError(f"per_class must be at least 4, got {self.per_class}")
        if self.max_new_tokens < 1:
            raise IhsError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.folds < 2:
            raise IhsError(f"folds must be at least 2, got {self.folds}")


def text_baseline(records: dict[str, list[Any]], options: TrackOptions) -> dict[str, Any]:
    """The bag-of-words baseline beside the tracked probe: normal vs malicious on the same held-out prompts, de-duplicated
    and split into the same folds as the probe (pooled out-of-fold accuracy, Wilson 95%); one number per tracking."""
    import numpy as np

    from ihs.analysis.probe_cv import dedupe_rows, plan_splits
    from ihs.analysis.probes import bow_on_splits

    texts = [r.text for c in ("normal", "malicious") for r in records[c]]
    labels = np.array([c for c in ("normal", "malicious") for _ in records[c]], dtype=object)
    keep, _ = dedupe_rows(texts, labels)
    y = np.array([label == "malicious" for label in labels[keep]], dtype=np.int64)
    splits = plan_splits(y, "cv", options.folds, options.seed, False)[0]
    out = bow_on_splits([texts[i] for i in keep], np.arange(len(y)), y, splits, ["normal", "malicious"], {},
                        options.seed)
    return {k: out[k] for k in ("model", "accuracy", "ci_low", "ci_high")} | {"n": len(y)}


class TrackResult(Result):
    """``align_track.json``: one row per checkpoint (probe, lens, TKIC, refusal, ASR, over-refusal, perplexity)."""

    FILE = "align_track.json"
    TABLE_FILE = "align_track.md"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    def numbers(self) -> dict[str, Any]:
        """The flat table: per checkpoint the headline measures (what the figures and the Markdown show)."""
        bow = (self.data.get("bow") or {}).get("accuracy")
        return {"run": self.data.get("run_dir"), "method": self.data.get("method"),
                "rows": [{**_flat_row(r), "bow_accuracy": bow} for r in self.rows]}

    def markdown(self) -> str:
        """The flat table as Markdown."""
        rows = self.numbers()["rows"]
        if not rows:
            return "(no checkpoint)\n"
        cols = list(rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path, *, figures: bool = True) -> list[Path]:
        """Write align_track.json, align_track.md and (``figures``) one PNG per measure over steps."""
        written = super().save(folder)
        folder = Path(folder)
        (folder / self.TABLE_FILE).write_text(self.markdown(), encoding="utf-8")
        written.append(folder / self.TABLE_FILE)
        if figures and self.rows:
            from ihs.plots.align import track_figures

            written += track_figures(self.data, folder)
        return written


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return "n/a" if value is None else str(value)


def _flat_row(r: dict[str, Any]) -> dict[str, Any]:
    p, g = r["probe"], r["generate"]
    return {"step": r["step"], "loss": r.get("loss"), "first_95": p["first_95"], "acc_L4": p["acc_L4"],
            "control_L4": p["control_L4"], "neg_share_malicious_mid": r["lens"]["negative_mid"].get("malicious"),
            "neg_share_normal_mid": r["lens"]["negative_mid"].get("normal"),
            "tkic_top1_malicious": r["lens"]["tkic_top1"].get("malicious"),
            "refusal_malicious": g["refusal"].get("malicious"), "asr_malicious": g["asr"].get("malicious"),
            "asr_jailbreak": g["asr"].get("jailbreak"), "over_refusal_contrast": g["refusal"].get("contrast"),
            "refusal_normal": g["refusal"].get("normal"), "perplexity": (r.get("perplexity") or {}).get("perplexity")}


def _probe_row(result: Any, num_layers: int) -> dict[str, Any]:
    from ihs.layers import parse_layers

    entry = result.stores[0]
    clf = next(iter(entry["classifiers"]))
    res = entry["classifiers"][clf]
    quarter = parse_layers("L/4", num_layers)[0]
    i = entry["layers"].index(quarter)
    control = res.get("control_accuracy") or []
    return {"classifier": clf, "layers": entry["layers"], "accuracy": res["accuracy"], "ci_low": res["ci_low"],
            "ci_high": res["ci_high"], "control": control, "first_95": res["first_layer_95"],
            "first_95_ci": res.get("first_layer_95_ci"), "layer_L4": quarter, "acc_L4": res["accuracy"][i],
            "acc_L4_ci": [res["ci_low"][i], res["ci_high"][i]], "control_L4": control[i] if control else None,
            "n": entry["n"]}


def _lens_row(result: Any) -> dict[str, Any]:
    numbers = result.numbers()
    logit = result.models[0]["lenses"]["logit"]
    assoc = logit["association"]
    share = {e: {label: c["topk"][e]["share"] for label, c in assoc["classes"].items()}
             for e in ("negative", "positive")}
    return {"layers": assoc["layers"], "range": list(numbers["range"]), "share": share,
            "negative_mid": {label: v["negative"] for label, v in numbers["shares"].items()},
            "tkic_top1": numbers["tkic_top1"], "tkic_topk": numbers["tkic_topk"],
            "negative_first": numbers["negative_first"]}


def _generate_row(result: Any) -> dict[str, Any]:
    per_class = result.per_class
    return {"refusal": {c: v["refusal_rate"] for c, v in per_class.items()},
            "refusal_ci95": {c: v["refusal_ci95"] for c, v in per_class.items()},
            "asr": {c: v["asr"] for c, v in per_class.items() if c in ("malicious", "jailbreak")},
            "asr_by_family": {f: v["asr"] for f, v in result.data.get("per_family", {}).items()},
            "n": {c: v["n"] for c, v in per_class.items()}}


def track_checkpoint(step: int, folder: Path, records: dict[str, list[Any]], options: TrackOptions, out: Path | None,
                     *, progress: bool = True) -> dict[str, Any]:
    """Measure one checkpoint folder; with ``out``, keep its probe, lens and generation results in out/step-N."""
    from ihs.align.measures import answer_perplexity, reference_answers
    from ihs.extraction import ExtractOptions, extract
    from ihs.models.loading import load_model
    from ihs.workflows.generate import GenerateConfig, run_generate
    from ihs.workflows.lens import LensOptions, run_lens
    from ihs.workflows.probe import ProbeOptions, run_probe

    started = time.perf_counter()
    parts: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        parts[name] = round(now - since, 1)
        return now

    lm = load_model(str(folder), dtype=options.dtype)
    t = lap("load", started)
    name = f"step-{step:06d}"
    flat = [r for class_records in records.values() for r in class_records]  # normal, malicious, contrast, jailbreak
    store = extract(lm, flat, None, ExtractOptions(), progress=progress)
    t = lap("extract", t)
    probe = run_probe({name: store}, ProbeOptions(classifiers=[options.classifier], classes=["normal", "malicious"],
                                                  folds=options.folds, seed=options.seed, bow=False, cross=False,
                                                  by="none"), progress=False)
    t = lap("probe", t)
    lens = run_lens({name: store}, LensOptions(layers=options.lens_layers), model=lm, progress=False)
    t = lap("lens", t)
    gen = run_generate(lm, flat, GenerateConfig(max_new_tokens=options.max_new_tokens, batch_size=options.gen_batch,
                                                judge=options.judge), progress=progress)
    t = lap("generate", t)
    ppl = (answer_perplexity(lm, reference_answers(options.perplexity_answers))
           if options.perplexity_answers else None)
    lap("perplexity", t)
    if out is not None:
        probe.save(out / name / "probe", figures=())
        lens.save(out / name / "lens", figures=False)
        gen.save(out / name / "generate", figures=False)
    meta = read_meta(folder)
    return {"step": step, "checkpoint": str(folder), "loss": meta.get("loss"), "num_layers": lm.num_layers,
            "weights": _digest(folder),
            "probe": _probe_row(probe, lm.num_layers), "lens": _lens_row(lens), "generate": _generate_row(gen),
            "perplexity": {k: v for k, v in ppl.items() if k != "answers"} if ppl else None,
            "seconds": round(time.perf_counter() - started, 1), "seconds_parts": parts}


def _digest(folder: str | Path) -> str:
    from ihs.align.checkpoints import checkpoint_digest

    return checkpoint_digest(folder)


ROW_FILE = "track_row.json"


def _cached_row(step: int, folder: Path, records: dict[str, list[Any]], options: TrackOptions,
                out: Path | None, reuse: Sequence[Path] = ()) -> dict[str, Any]:
    """A checkpoint's row, reused from ``out/step-N/track_row.json`` when measured with the same options and
    checkpoint (so a run can be tracked while it trains, or after an interruption, without measuring twice),
    or from a row of another tracked run in ``reuse`` measured with the same options on identical weights."""
    from ihs.io import read_json, write_json

    same = {k: v for k, v in asdict(options).items() if k != "steps"}
    cache = out / f"step-{step:06d}" / ROW_FILE if out is not None else None
    created = read_meta(folder).get("created_at")
    if cache is not None and cache.is_file():
        saved = read_json(cache)
        if saved.get("options") == same and saved.get("created_at") == created:
            return saved["row"]
    row = None
    if reuse:
        digest = _digest(folder)
        for other in reuse:
            for path in sorted(Path(other).glob(f"step-*/{ROW_FILE}")):
                saved = read_json(path)
                if saved.get("options") != same:
                    continue
                weights = saved["row"].get("weights")
                measured = saved["row"].get("checkpoint")
                if weights is None and measured and Path(measured).is_dir():  # a row written before digests
                    weights = _digest(measured)
                if weights == digest:
                    row = {**saved["row"], "step": step, "checkpoint": str(folder), "loss": read_meta(folder).get("loss"),
                           "weights": digest, "reused_from": str(path)}
                    break
            if row is not None:
                break
    if row is None:
        row = track_checkpoint(step, folder, records, options, out, progress=False)
    if cache is not None:
        write_json(cache, {"options": same, "created_at": created, "row": row})
    return row


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``ihs_align.json`` (empty when absent)."""
    from ihs.io import read_json

    path = Path(folder) / "ihs_align.json"
    return read_json(path) if path.is_file() else {}


def run_track(run_dir: str | Path, options: TrackOptions | None = None, *, out: str | Path | None = None,
              command: str | None = None, progress: bool = True,
              reuse: Sequence[str | Path] = ()) -> TrackResult:
    """Measure every checkpoint of the alignment run in ``run_dir`` on the fixed held-out evaluation set.

    With ``out``, each checkpoint's row is kept in ``out/step-N/track_row.json`` and reused by later calls.
    ``reuse``: output folders of other tracked runs whose rows are taken for checkpoints with identical
    weights (:func:`ihs.align.checkpoints.checkpoint_digest`) measured with the same options, such as the shared step 0.
    """
    from ihs.align import list_checkpoints
    from ihs.io import read_json
    from ihs.progress import progress_bar

    options = options or TrackOptions()
    options.validate()
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise IhsError(f"{run_dir} is not an alignment run (no run.json); train one with `ihs align sft`")
    checkpoints = [(s, f) for s, f in list_checkpoints(run_dir) if options.steps is None or s in options.steps]
    if not checkpoints:
        raise IhsError(f"{run_dir} has no exported checkpoint" + (" at the steps asked for" if options.steps else ""))
    from ihs.align.data import evaluation_records

    records = evaluation_records(options.per_class)
    run = read_json(run_dir / "run.json")
    rows = []
    with progress_bar("tracking checkpoints", total=len(checkpoints), unit="checkpoints", enabled=progress) as adv:
        for step, folder in checkpoints:
            rows.append(_cached_row(step, folder, records, options, Path(out) if out else None,
                                    [Path(p) for p in reuse]))
            adv(1)
    key = run.get("key", {})
    payload = {"command": command, "run_dir": str(run_dir), "method": key.get("options", {}).get("method"),
               "association": key.get("options", {}).get("association"), "base_model": run.get("model"), "options": asdict(options),
               "evaluation": {c: [r.id for r in v] for c, v in records.items()}, "rows": rows,
               "bow": text_baseline(records, options), "peak_rss_mib": _peak_rss_mib()}
    # rows read back from the cache cost no memory here: keep the peak of the calls that measured them
    previous = Path(out) / TrackResult.FILE if out else None
    if previous is not None and previous.is_file():
        payload["peak_rss_mib"] = max(payload["peak_rss_mib"], read_json(previous).get("peak_rss_mib") or 0.0)
    return TrackResult(payload)


@dataclass(kw_only=True)
class AlignStepOptions(TrackOptions):
    """Track an existing alignment run in ``ihs run`` (the run itself is trained with ``ihs align``)."""

    run_dir: str | None = opt(None, "The alignment run folder to track (made by ihs align sft|dpo).")


class AlignStep(Step):
    name = "align"
    options = AlignStepOptions
    default = False
    help = ("Track an alignment run made by `ihs align sft|dpo` (align.run_dir): probes, lens, TKIC, refusal, "
            "ASR, over-refusal and perplexity per checkpoint on the held-out goals.")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        options: AlignStepOptions = ctx.options(self.name)
        from ihs.align import list_checkpoints

        steps = [step for step, _ in list_checkpoints(options.run_dir)] if options.run_dir else []
        return {"options": asdict(options), "checkpoints": steps}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        options: AlignStepOptions = ctx.options(self.name)
        if not options.run_dir:
            raise Skip("align.run_dir is not set (train a run with `ihs align sft` first)")
        result = run_track(options.run_dir, options, progress=ctx.progress)
        files = result.save(folder)
        return {"outputs": [TrackResult.FILE], "figures": [p.name for p in files if p.suffix == ".png"]}
