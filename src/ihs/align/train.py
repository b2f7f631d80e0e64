"""Align a model with SFT or DPO (trl), LoRA (peft) or full fine-tuning, and keep analysable checkpoints.

A run lives in one folder::

    OUT/run.json                   what is being trained: base model identity, options, data digest
    OUT/data/{sft,dpo}.jsonl       the exact examples trained on (plus data.json when built by ihs)
    OUT/association.safetensors    the association target directions, when the term is on
    OUT/trainer/checkpoint-N/      trl / transformers state to resume from (adapter, optimizer, RNG)
    OUT/checkpoints/step-NNNNNN/   a complete model folder per saved step, loadable with
                                   ``ihs.models.loading.load_model(path)``, with ``ihs_align.json``
    OUT/log.jsonl                  the training log (loss, learning rate, association term, ...)

Every ``save_every`` steps (and at the end, and at step 0 with ``save_initial``) the current model is
written as an ordinary Hugging Face folder: LoRA weights merged into the base weights, safetensors,
the tokenizer with the chat template used in training. Its ``ihs_align.json`` records the base
model's identity, the step, the options and the ids of the training examples and goals, so tracking
code can follow ihs measures checkpoint by checkpoint and check that no evaluation goal was trained on.

Prompts are tokenized with :func:`ihs.formatting.format_prompt`, the same code every analysis
uses, so the prompt tokens a model is trained on are exactly those it is later analysed on; the
answer follows the prompt as the chat template renders an assistant turn, cut after its first
end-of-turn token. A base model without a chat template gets :data:`ihs.align.texts.IHS_CHAT_TEMPLATE`
(``chat_template="auto"``, the default, or ``"ihs"``); ``chat_template="model"`` allows only the
model's own and refuses a model that has none.

Re-running :func:`train` on the same folder with the same model, data and options resumes from the
last trainer checkpoint; a folder holding another run is refused. ``max_steps`` (and ``save_every``)
may change between runs, so a finished run can be extended; the learning-rate schedule then follows
the new ``max_steps``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ihs.align.association import AssociationLoss, AssociationOptions, Directions, compute_directions
from ihs.align.checkpoints import export_checkpoint, list_checkpoints, versions
from ihs.align.data import (
    AlignData,
    DPOPair,
    SFTExample,
    SplitOptions,
    evaluation_split,
    goal_key,
)
from ihs.align.encoding import encode, resolve_chat_template, trainer_rows
from ihs.align.files import load_examples
from ihs.align.trainers import Collate, trainer_classes
from ihs.data.records import prompt_id
from ihs.errors import DataError, IhsError
from ihs.io import read_json, write_json, write_jsonl

log = logging.getLogger(__name__)

RUN_FORMAT = "ihs-align-run/1"
CHECKPOINT_FORMAT = "ihs-align/1"
METHODS = ("sft", "dpo")
TEMPLATES = ("auto", "model", "ihs")
#: options that may change between a run and its resumption
_RESUMABLE = ("max_steps", "save_every", "progress", "threads", "keep_states")


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapter settings (peft): rank, alpha, dropout and which modules get adapters."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainOptions:
    """How to train.

    ``method``: ``sft`` or ``dpo``. ``lora``: adapter settings, or None for full fine-tuning (fine
    for the smallest models). ``max_steps`` optimizer steps of ``batch_size`` x ``grad_accum``
    examples. ``save_every``: steps between exported checkpoints. ``max_length``: tokens of prompt +
    answer (the prompt's beginning is cut first, as the analyses do). ``beta``: DPO's temperature.
    ``chat_template``: ``auto`` (the model's, else ihs's plain template), ``model`` (the model's or an
    error), ``ihs`` (always ihs's). ``association``: the auxiliary term, or None. ``keep_states``: how
    many resumable trainer states to keep (exported checkpoints are all kept). ``device``: None
    trains on a GPU when there is one, else the CPU.
    """

    method: str = "sft"
    lora: LoraOptions | None = field(default_factory=LoraOptions)
    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    save_every: int = 25
    save_initial: bool = True
    seed: int = 0
    max_length: int = 384
    beta: float = 0.1
    chat_template: str = "auto"
    system_prompt: str | None = None
    association: AssociationOptions | None = None
    dtype: str = "float32"
    device: str | None = None
    gradient_checkpointing: bool = False
    keep_states: int = 2
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise IhsError(f"unknown training method {self.method!r}; use sft or dpo")
        if self.chat_template not in TEMPLATES:
            raise IhsError(f"chat_template must be auto, model or ihs, got {self.chat_template!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "max_length", "keep_states"):
            if int(getattr(self, name)) < 1:
                raise IhsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise IhsError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_length < 8:
            raise IhsError(f"max_length {self.max_length} is too short for a prompt and an answer")


@dataclass
class TrainResult:
    """What a run produced: its folder, exported checkpoints (step, folder), the step reached and the log."""

    out: Path
    checkpoints: list[tuple[int, Path]]
    step: int
    log: list[dict[str, Any]]
    resumed_from: int | None = None

    @property
    def final_loss(self) -> float | None:
        losses = [row["loss"] for row in self.log if row.get("loss") is not None]
        return float(losses[-1]) if losses else None


# -- checkpoints, progress and log -------------------------------------------------------------------------


def _callback_classes():
    from transformers import TrainerCallback

    class Export(TrainerCallback):
        """Export a model folder whenever the trainer saves its state."""

        def __init__(self, run: _Run) -> None:
            self.run = run

        def on_save(self, args, state, control, **kwargs):
            self.run.export(kwargs["model"], state.global_step)

    class Progress(TrainerCallback):
        """An ihs progress bar over optimizer steps, and the log written to ``log.jsonl``."""

        def __init__(self, run: _Run, enabled: bool) -> None:
            self.run = run
            self.enabled = enabled
            self.stack = contextlib.ExitStack()
            self.advance = None
            self.shown = 0

        def on_train_begin(self, args, state, control, **kwargs):
            from ihs.progress import progress_bar

            self.advance = self.stack.enter_context(
                progress_bar(f"align {self.run.options.method}", total=state.max_steps, unit="steps",
                             enabled=self.enabled))
            self.shown = 0

        def on_step_end(self, args, state, control, **kwargs):
            # a resumed run's state (its global step) is loaded after on_train_begin: catch up here
            if self.advance is not None and state.global_step > self.shown:
                self.advance(state.global_step - self.shown)
                self.shown = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.run.add_log(state.global_step, logs or {})

        def on_train_end(self, args, state, control, **kwargs):
            self.stack.close()
            self.advance = None

    return Export, Progress


@dataclass
class _Run:
    """The state one call of :func:`train` shares with its callbacks."""

    out: Path
    options: TrainOptions
    tokenizer: Any
    meta: dict[str, Any]
    log_rows: list[dict[str, Any]]

    def export(self, model: Any, step: int) -> Path:
        losses = [r["loss"] for r in self.log_rows if r.get("loss") is not None and r["step"] <= step]
        meta = {**self.meta, "step": int(step), "loss": losses[-1] if losses else None,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        return export_checkpoint(model, self.tokenizer, self.out / "checkpoints" / f"step-{step:06d}", meta)

    def add_log(self, step: int, logs: dict[str, Any]) -> None:
        row = {"step": int(step)}
        for key, value in logs.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[key] = float(value)
        self.log_rows.append(row)
        write_jsonl(self.out / "log.jsonl", self.log_rows)


def _last_trainer_state(folder: Path) -> Path | None:
    """The newest complete trainer checkpoint under ``folder`` (one with its ``trainer_state.json``)."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        m = re.match(r"^checkpoint-(\d+)$", child.name)
        if m and (child / "trainer_state.json").is_file():
            found.append((int(m.group(1)), child))
    return max(found)[1] if found else None


# -- the run ----------------------------------------------------------------------------------------------------


def _digest(rows: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _check_not_eval(examples: Sequence[SFTExample] | Sequence[DPOPair], split: SplitOptions) -> None:
    """Refuse examples whose prompt or goal is one of the built-in evaluation prompts of ``split``."""
    held: set[str] = set()
    for records in evaluation_split(split=split).values():
        for rec in records:
            held.add(rec.id)
            held.add(goal_key(rec))
    bad = [ex for ex in examples if ex.goal in held or ex.id in held or prompt_id(ex.prompt) in held]
    if bad:
        raise DataError(f"{len(bad)} training example(s) are evaluation prompts or goals of the ihs split "
                        f"(first: {bad[0].prompt[:60]!r}); build the data with ihs.align.data.build_data")


def _run_key(options: TrainOptions) -> dict[str, Any]:
    data = asdict(options)
    for name in _RESUMABLE:
        data.pop(name, None)
    if data.get("association") and not data["association"].get("center"):
        data["association"].pop("center", None)  # runs made before the option existed keep their key
    return data


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"options": {"lora": {"r": 4}}}`` -> ``{"options.lora.r": 4}`` (lists as JSON text)."""
    if not isinstance(data, dict):
        return {prefix: json.dumps(data, sort_keys=True)}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _prepare_folder(out: Path, key: dict[str, Any]) -> None:
    """Refuse a folder that holds another run; create it otherwise."""
    run_file = out / "run.json"
    if run_file.is_file():
        old = _flat(read_json(run_file).get("key", {}))
        new = _flat(key)
        if old != new:
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise IhsError(f"{out} holds another alignment run (it differs in: {', '.join(differ)}); "
                           "use a new output folder or the same model, data and options")
    elif out.exists() and any(out.iterdir()):
        raise IhsError(f"{out} exists and is not an ihs alignment run; use a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)


def train(model: str, data: str | Path | AlignData | Sequence[SFTExample] | Sequence[DPOPair], out: str | Path, *,
          options: TrainOptions = TrainOptions(), callbacks: Sequence[Any] = ()) -> TrainResult:
    """Align ``model`` (zoo name, folder, GGUF or hub id) on ``data`` and write checkpoints into ``out``.

    ``data``: built data (:class:`ihs.align.data.AlignData`), a folder written by ``AlignData.save``,
    a JSONL file, or a list of examples of the method's kind. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects. Resumes a run found in ``out`` (see the module docstring).
    """
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from ihs.generation import eos_ids
    from ihs.models.loading import load_model

    out = Path(out)
    examples, manifest = load_examples(data, options.method)
    split = SplitOptions(**manifest["options"]["split"]) if manifest.get("options", {}).get("split") else SplitOptions()
    _check_not_eval(examples, split)
    if options.association is not None and not any(ex.malicious for ex in examples):
        raise DataError("the association loss needs malicious examples (label 'malicious' or 'jailbreak')")
    if options.threads:
        torch.set_num_threads(int(options.threads))

    lm = load_model(model, dtype=options.dtype)
    tokenizer = lm.tokenizer
    template = resolve_chat_template(tokenizer, options.chat_template, lm.name)
    enc = encode(examples, tokenizer, max_length=options.max_length, system_prompt=options.system_prompt,
                 stop_ids=eos_ids(lm))
    if not enc.prompts:
        raise DataError(f"no example fits max_length={options.max_length}")
    rows = trainer_rows(enc)
    used = [examples[i] for i in enc.kept]
    data_digest = _digest(rows)
    key = {"base": lm.fingerprint(), "data": data_digest, "chat_template": template, "options": _run_key(options)}
    _prepare_folder(out, key)
    write_json(out / "run.json", {"format": RUN_FORMAT, "key": key, "model": model, "base_name": lm.name,
                                  "base_identity": lm.identity, "examples": len(used), "dropped": enc.dropped,
                                  "versions": versions()})
    write_jsonl(out / "data" / f"{options.method}.jsonl", [ex.to_dict() for ex in used])
    if manifest:
        write_json(out / "data" / "data.json", manifest)

    set_seed(options.seed)
    directions: Directions | None = None
    if options.association is not None:
        path = out / "association.safetensors"
        if path.is_file():
            directions = Directions.load(path, info=read_json(out / "association.json"))
        else:
            directions = compute_directions(lm.model, tokenizer, lm.anatomy, enc.prompts, enc.malicious,
                                            options=options.association, seed=options.seed)
            directions.save(path)
            write_json(out / "association.json", directions.info)

    meta = {
        "format": CHECKPOINT_FORMAT,
        "base": {"model": model, "name": lm.name, "identity": lm.identity},
        "method": options.method,
        "options": asdict(options),
        "chat_template": template,
        "data": {
            "digest": data_digest,
            "examples": len(used),
            "labels": dict(Counter(ex.label for ex in used)),
            "split": asdict(split),
            "split_from": "data manifest" if manifest else "default (bare examples)",
            "train_ids": sorted({ex.id for ex in used}),
            "train_goals": sorted({ex.goal for ex in used}),
        },
        "association": directions.info if directions is not None else None,
        "versions": versions(),
    }
    old_log = out / "log.jsonl"
    log_rows: list[dict[str, Any]] = []
    resume = _last_trainer_state(out / "trainer")
    resume_step = int(resume.name.split("-")[1]) if resume is not None else None
    if resume is not None and old_log.is_file():
        from ihs.io import read_jsonl

        log_rows = [r for r in read_jsonl(old_log) if int(r.get("step", 0)) <= resume_step]
    run = _Run(out, options, tokenizer, meta, log_rows)
    with _quiet():
        trainer = _build_trainer(lm, rows, options, out)
    trainer.association = (AssociationLoss(lm.anatomy.blocks, directions, options.association.weight)
                           if directions is not None and options.association is not None else None)
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    export_cb, progress_cls = _callback_classes()
    progress_cb = progress_cls(run, options.progress)
    trainer.add_callback(export_cb(run))
    trainer.add_callback(progress_cb)
    for cb in callbacks:
        trainer.add_callback(cb)
    if resume is None and options.save_initial and not (out / "checkpoints" / "step-000000").is_dir():
        run.export(trainer.model, 0)
    try:
        with _quiet():
            trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    finally:
        progress_cb.stack.close()  # an interrupted run must not leave the live bar running
    step = int(trainer.state.global_step)
    return TrainResult(out, list_checkpoints(out), step, run.log_rows, resume_step)


@contextlib.contextmanager
def _quiet():
    """Hide the libraries' deprecation notices about their own defaults (``gradient_checkpointing``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft)\.")
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*")
        yield


def _build_trainer(lm: Any, rows: list[dict[str, Any]], options: TrainOptions, out: Path) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, SFTConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    sft_cls, dpo_cls = trainer_classes()
    use_cpu = options.device == "cpu" or (options.device is None and not torch.cuda.is_available())
    common = dict(
        output_dir=str(out / "trainer"), max_steps=options.max_steps, per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum, learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler, warmup_steps=options.warmup_steps,
        weight_decay=options.weight_decay, logging_steps=1, save_strategy="steps", save_steps=options.save_every,
        save_total_limit=options.keep_states, report_to=[], bf16=False, fp16=False,
        gradient_checkpointing=options.gradient_checkpointing, use_cpu=use_cpu, seed=options.seed,
        data_seed=options.seed, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        max_length=options.max_length,
    )
    peft_config = None
    if options.lora is not None:
        from peft import LoraConfig

        targets = options.lora.target_modules
        peft_config = LoraConfig(r=options.lora.r, lora_alpha=options.lora.alpha, lora_dropout=options.lora.dropout,
                                 target_modules=list(targets) if isinstance(targets, tuple) else targets,
                                 task_type="CAUSAL_LM")
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dataset = Dataset.from_list(rows)
    lm.model.train()
    if options.method == "sft":
        args = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True})
        return sft_cls(model=lm.model, args=args, train_dataset=dataset, processing_class=lm.tokenizer,
                       peft_config=peft_config, data_collator=Collate(DataCollatorForLanguageModeling(pad_id)))
    args = DPOConfig(**common, beta=options.beta)
    ref = None
    if peft_config is None:
        ref = copy.deepcopy(lm.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    return dpo_cls(model=lm.model, ref_model=ref, args=args, train_dataset=dataset, processing_class=lm.tokenizer,
                   peft_config=peft_config,
                   data_collator=Collate(DataCollatorForPreference(pad_id, max_length=options.max_length)))
