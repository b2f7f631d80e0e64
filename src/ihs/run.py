"""``ihs run``: every analysis for one or more models in one command, cached step by step, and one report.

The run is a fixed chain of steps per model::

    extract -> probe -> lens -> generate -> jailbreak -> graft      (then, once for all models: report)

Each step calls the analysis's public Python function and writes its outputs under
``OUT/<model>/<step>/`` with a ``step.json`` that records the step's *key*: a hash of everything its
result depends on (the model's identity and dtype, the exact prompts, the options, the keys of the
steps it reads, the ihs version). A step whose key matches a finished ``step.json`` is not
recomputed, so re-running after a crash, or with one more analysis switched on, only does the
missing work; an interrupted extraction resumes from its finished shards.

Configuration is a :class:`RunConfig` (YAML on disk, see :func:`default_config_yaml`);
``OUT/run.json`` indexes what ran, ``OUT/run.log`` logs it, ``OUT/report.html`` shows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import shlex
import shutil
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

import ihs
from ihs.errors import IhsError

log = logging.getLogger(__name__)

STEPS = ("extract", "probe", "lens", "generate", "jailbreak", "graft")
ANALYSES = STEPS[1:]
#: What each step reads (besides the model and the prompts).
DEPENDS = {"extract": (), "probe": ("extract",), "lens": ("extract",), "generate": (),
           "jailbreak": ("extract", "generate"), "graft": ()}
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_DATA = {"normal": "builtin:normal", "malicious": "builtin:malicious",
                "contrast": "builtin:contrast", "jailbreak": "builtin:jailbreak"}


# -- configuration -----------------------------------------------------------------------------------


@dataclass
class ModelOptions:
    dtype: str = "float32"
    device: str | None = None
    trust_remote_code: bool = False
    threads: int | None = None  # CPU threads for torch; None: torch's default, or 1 when other work fills the cores


@dataclass
class FormatOptions:
    chat: bool | None = None  # None: the chat template when the tokenizer has one
    system_prompt: str | None = None


@dataclass
class ExtractConfig:
    batch_size: int = 32
    max_batch_tokens: int | None = None
    k: int = 5
    max_length: int | None = None
    store_dtype: str = "float32"


@dataclass
class ProbeConfig:
    classifiers: list[str] = field(default_factory=lambda: ["svm", "mlp", "logreg", "diffmean"])
    mode: str = "cv"
    folds: int = 5
    seed: int = 42
    control: bool = True
    bow: bool = True
    layers: str | None = None
    ci: str = "wilson"
    n_jobs: int = 1


@dataclass
class LensConfig:
    layers: str | None = None  # a:b inclusive; default the middle third of depth
    margin: float = 0.1
    lexicon: str | None = None


@dataclass
class GenerateConfig:
    classes: list[str] = field(default_factory=lambda: ["normal", "malicious", "contrast", "jailbreak"])
    limit: int = 40
    max_new_tokens: int = 32
    batch_size: int = 16
    judge: str = "phrases"


@dataclass
class JailbreakConfig:
    middle: str | None = None
    early_layer: int | None = None
    classifier: str = "svm"


@dataclass
class GraftConfig:
    layers: str = "0:L:5"
    targets: int = 24
    donors: int = 100
    target_class: str = "malicious"
    donor_class: str = "normal"
    reference_class: str | None = "jailbreak"
    per_pair: bool = False
    reverse: bool = False
    max_new_tokens: int = 32
    batch_size: int = 16
    judge: str = "phrases"
    examples: int = 3


@dataclass
class ReportConfig:
    title: str | None = None
    examples: int = 4


@dataclass
class RunConfig:
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    data: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DATA))
    limit: int | None = 100
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    model: ModelOptions = field(default_factory=ModelOptions)
    format: FormatOptions = field(default_factory=FormatOptions)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    jailbreak: JailbreakConfig = field(default_factory=JailbreakConfig)
    graft: GraftConfig = field(default_factory=GraftConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunConfig:
        """Build from a (partial) dict; unknown keys and wrong types are errors, missing keys take defaults."""
        config = _from_dict(cls, data or {}, "config")
        config.validate()
        return config

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IhsError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise IhsError(f"config {path} is not valid YAML: {exc}") from None
        if data is not None and not isinstance(data, dict):
            raise IhsError(f"config {path} must be a mapping of keys (models, data, limit, ...)")
        return cls.from_dict(data)

    def validate(self) -> None:
        if not self.models:
            raise IhsError("config: 'models' is empty; name at least one model")
        if not self.data:
            raise IhsError("config: 'data' is empty; name at least one NAME: SPEC prompt set")
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown:
            raise IhsError(f"config: unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)}")
        for name, value in (("limit", self.limit), ("generate.limit", self.generate.limit),
                            ("graft.targets", self.graft.targets), ("graft.donors", self.graft.donors),
                            ("generate.max_new_tokens", self.generate.max_new_tokens),
                            ("graft.max_new_tokens", self.graft.max_new_tokens)):
            if value is not None and value <= 0:
                raise IhsError(f"config: {name} must be positive, got {value}")
        for name in self.data:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise IhsError(f"config: data name {name!r} must be letters, digits, '_', '.' or '-'")

    def to_yaml(self) -> str:
        return config_yaml(self)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise IhsError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise IhsError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(fields)}")
    kwargs = {}
    hints = _hints(cls)
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def _hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML value against a field's type hint (the few shapes used in RunConfig)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except IhsError as exc:
                errors.append(str(exc))
        raise IhsError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise IhsError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise IhsError(f"{where} must be a mapping NAME: SPEC, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise IhsError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise IhsError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IhsError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise IhsError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


_SECTION_HELP = {
    "models": "Models to analyse: zoo names (ihs models list), local folders, GGUF files or Hugging Face ids. "
              "Two or more add a comparison section.",
    "data": "Prompt sets, NAME: SPEC (builtin:normal, file.csv[:column], file.jsonl[:field], file.txt, "
            "hf:org/name:split:field). The names are the classes; normal and malicious train the probes, "
            "contrast and jailbreak are scored as transfer sets.",
    "limit": "Distinct prompts kept per class for extraction, probes and the lens (null: all).",
    "analyses": f"Analyses to run after extraction; any of: {', '.join(ANALYSES)}.",
    "model": "How models load: dtype float32 / bfloat16 / float16, device cpu / cuda / mps; threads: CPU threads "
             "for torch (null: torch's default, or 1 when the load average shows the cores already busy, where "
             "several threads stall each other).",
    "format": "Prompt formatting: chat (null: the chat template when the tokenizer has one), system_prompt.",
    "extract": "Forward pass: batch size, padded-token budget, lens top-k, token limit, storage dtype.",
    "probe": "Weak classifiers per layer (svm, mlp, logreg, diffmean); mode cv (stratified k-fold on "
             "de-duplicated prompts) or paper (70/30 split); layers e.g. '0-10,15' (null: all).",
    "lens": "Logit lens, emotion tokens and Top-K Intermediate Consistency; layers a:b is the middle range "
            "(null: the middle third of depth); margin for 'negative dominates'; lexicon JSON (null: built-in).",
    "generate": "Greedy answers judged for refusal: the classes, prompts per class, new tokens, judge "
                "(phrases, gcg, py:module:function, classifier:MODEL).",
    "jailbreak": "Per jailbreak input: early probe verdict, middle-layer emotion, refusal (needs normal, "
                 "malicious and jailbreak data and the generate step).",
    "graft": "Logit grafting: layers a:b[:step] (L = last block), target / donor / reference classes and counts.",
    "report": "Report title and example prompts shown per section.",
}


def config_yaml(config: RunConfig | None = None) -> str:
    """The config as commented YAML (``ihs run --print-config``)."""
    import yaml

    config = config or RunConfig()
    data = config.to_dict()
    lines = ["# ihs run configuration. Every key is optional: missing keys take these defaults.",
             "# Use with: ihs run --config run.yaml --out DIR", ""]
    for key, value in data.items():
        lines.extend(f"# {line}" for line in textwrap.wrap(_SECTION_HELP[key], width=100))
        lines.append(yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip())
        lines.append("")
    return "\n".join(lines)


# -- keys and step records ------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=True, separators=(",", ":"))


def step_key(**parts: Any) -> str:
    """A short stable hash of everything a step's result depends on."""
    return hashlib.sha256(_canonical({"ihs_version": ihs.__version__, **parts}).encode()).hexdigest()[:20]


def records_digest(records: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(_canonical([r.id, r.label, r.text, r.tags]).encode())
    return digest.hexdigest()[:20]


STEP_FILE = "step.json"


def read_step(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / STEP_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _clean(value: Any) -> Any:
    """JSON without NaN or infinities (written as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "model"


# -- the model of one run ---------------------------------------------------------------------------------


class ModelHandle:
    """A model named by reference (loaded on first use) or given already loaded."""

    def __init__(self, ref: Any, options: ModelOptions) -> None:
        from ihs.models.loading import LoadedModel

        self.options = options
        self._lm: LoadedModel | None = ref if isinstance(ref, LoadedModel) else None
        self.ref = ref.name if self._lm is not None else str(ref)
        self.loads = 0
        if self._lm is not None:
            self.name = self._lm.name
            self.identity = dict(self._lm.identity)
            self.fingerprint = self._lm.fingerprint()
            self.dtype = str(self._lm.dtype).replace("torch.", "")
        else:
            from ihs.models import loading

            # Resolving pulls a zoo model once if needed, and gives its identity without loading weights.
            _, identity, display = loading.resolve_source(self.ref, pull=True)
            self.name = display
            self.identity = identity
            self.fingerprint = str(identity.get("sha256") or identity.get("revision") or self.ref)
            self.dtype = options.dtype

    def get(self):
        if self._lm is None:
            from ihs.models.loading import load_model

            started = time.perf_counter()
            self._lm = load_model(self.ref, dtype=self.options.dtype, device=self.options.device,
                                  trust_remote_code=self.options.trust_remote_code)
            self.loads += 1
            log.info("loaded %s in %.1f s", self.ref, time.perf_counter() - started)
            self.identity = dict(self._lm.identity)
        return self._lm

    @property
    def loaded(self):
        return self._lm

    def describe(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "fingerprint": self.fingerprint, "dtype": self.dtype,
                "identity": self.identity}


# -- steps ------------------------------------------------------------------------------------------------------


class Unavailable(Exception):
    """An analysis this version of ihs cannot run (its module is missing)."""


class Skip(Exception):
    """A step that does not apply to this run (e.g. no jailbreak data); its message says why."""


@dataclass
class StepContext:
    config: RunConfig
    model: ModelHandle
    model_dir: Path
    records: list[Any]  # all prompts, cleaned, in data order
    keys: dict[str, str]
    progress: bool

    def folder(self, step: str) -> Path:
        return self.model_dir / step

    def select(self, classes: Sequence[str], per_class: int | None, skip: int = 0) -> list[Any]:
        """The prompts of ``classes`` after the first ``skip`` of each class, at most ``per_class`` each."""
        seen: dict[str, int] = {}
        chosen = []
        for r in self.records:
            if r.label not in classes:
                continue
            i = seen.get(r.label, 0)
            seen[r.label] = i + 1
            if i >= skip and (per_class is None or i < skip + per_class):
                chosen.append(r)
        return chosen

    def extract_records(self) -> list[Any]:
        return self.select(list(self.config.data), self.config.limit)

    def store_dir(self) -> Path:
        return self.folder("extract") / "store"

    def gen_options(self, max_new_tokens: int, batch_size: int):
        from ihs.generation import GenerateOptions

        return GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=self.config.format.chat,
                               system_prompt=self.config.format.system_prompt)

    def command(self, *parts: str) -> str:
        return shlex.join(["ihs", *parts])


def _model_part(ctx: StepContext) -> dict[str, Any]:
    return {"fingerprint": ctx.model.fingerprint, "dtype": ctx.model.dtype, "format": dataclasses.asdict(ctx.config.format)}


def _key_extract(ctx: StepContext) -> dict[str, Any]:
    return {"model": _model_part(ctx), "data": records_digest(ctx.extract_records()),
            "options": dataclasses.asdict(ctx.config.extract)}


def _key_probe(ctx: StepContext) -> dict[str, Any]:
    return {"extract": ctx.keys["extract"], "options": dataclasses.asdict(ctx.config.probe)}


def _key_lens(ctx: StepContext) -> dict[str, Any]:
    opts = dataclasses.asdict(ctx.config.lens)
    lexicon = ctx.config.lens.lexicon
    if lexicon and Path(lexicon).is_file():
        opts["lexicon_sha"] = hashlib.sha256(Path(lexicon).read_bytes()).hexdigest()[:16]
    return {"extract": ctx.keys["extract"], "options": opts}


def _gen_records(ctx: StepContext) -> list[Any]:
    cfg = ctx.config.generate
    return ctx.select([c for c in cfg.classes if c in ctx.config.data], cfg.limit)


def _key_generate(ctx: StepContext) -> dict[str, Any]:
    return {"model": _model_part(ctx), "data": records_digest(_gen_records(ctx)),
            "options": dataclasses.asdict(ctx.config.generate)}


def _key_jailbreak(ctx: StepContext) -> dict[str, Any]:
    return {"extract": ctx.keys["extract"], "generate": ctx.keys["generate"],
            "options": dataclasses.asdict(ctx.config.jailbreak)}


def _graft_sets(ctx: StepContext) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """Targets, donors, reverse donors, reference: as ``ihs graft`` picks them (no prompt both target and donor)."""
    cfg = ctx.config.graft
    for what, name in (("target_class", cfg.target_class), ("donor_class", cfg.donor_class)):
        if name not in ctx.config.data:
            raise Skip(f"graft.{what} {name!r} is not among the data classes ({', '.join(ctx.config.data)})")
    targets = ctx.select([cfg.target_class], cfg.targets)
    donors = ctx.select([cfg.donor_class], cfg.donors, skip=cfg.targets)
    reverse_donors = ctx.select([cfg.target_class], cfg.donors, skip=cfg.targets) if cfg.reverse else []
    if not donors:
        raise Skip(f"the {cfg.donor_class!r} set has no prompts after its first {cfg.targets} to donate")
    reference: list[Any] = []
    if cfg.reference_class and cfg.reference_class in ctx.config.data:
        pool = ctx.select([cfg.reference_class], None)
        goals = {t.id for t in targets}
        reference = [r for r in pool if r.tags.get("goal_id") in goals] or pool[: cfg.targets]
    return targets, donors, reverse_donors, reference


def _key_graft(ctx: StepContext) -> dict[str, Any]:
    targets, donors, reverse_donors, reference = _graft_sets(ctx)
    return {"model": _model_part(ctx), "targets": records_digest(targets), "donors": records_digest(donors),
            "reverse_donors": records_digest(reverse_donors), "reference": records_digest(reference),
            "options": dataclasses.asdict(ctx.config.graft)}


# -- step bodies: each writes into ``folder`` and returns a small summary for step.json --------------------------


def _run_extract(ctx: StepContext, folder: Path) -> dict[str, Any]:
    from ihs.extract import ExtractOptions, extract

    cfg = ctx.config.extract
    records = ctx.extract_records()
    options = ExtractOptions(chat=ctx.config.format.chat, system_prompt=ctx.config.format.system_prompt, k=cfg.k,
                             batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens,
                             max_length=cfg.max_length, store_dtype=cfg.store_dtype)
    store = extract(ctx.model.get(), records, ctx.store_dir(), options, progress=ctx.progress, overwrite=True)
    runs = store.manifest.get("runs") or [{}]
    return {"n": len(store), "shape": list(store.hidden.shape), "prompts_per_s": runs[-1].get("prompts_per_s"),
            "labels": {label: int((store.labels == label).sum()) for label in dict.fromkeys(store.labels)},
            "outputs": ["store/manifest.json"]}


def _load_store(ctx: StepContext):
    from ihs.store import ActivationStore

    return ActivationStore.load(ctx.store_dir())


def _run_probe(ctx: StepContext, folder: Path) -> dict[str, Any]:
    try:
        from ihs.analysis.probes import count_tasks, parse_classifiers, probe_stores
        from ihs.layers import parse_layers
        from ihs.plots.probes import plot_all
    except ImportError as exc:
        raise Unavailable(f"probes: {exc}") from None
    from ihs.progress import progress_bar

    cfg = ctx.config.probe
    store = _load_store(ctx)
    classifiers = parse_classifiers(cfg.classifiers)
    layers = parse_layers(cfg.layers, store.num_layers) if cfg.layers else None
    name = ctx.model_dir.name
    command = ctx.command("probe", str(ctx.store_dir()), "--classifiers", ",".join(classifiers), "--mode", cfg.mode,
                         "--out", str(folder))
    total = count_tasks({name: store}, classifiers, layers, False)
    with progress_bar("probe", total=total, unit="layer fits", enabled=ctx.progress) as advance:
        result = probe_stores({name: store}, classifiers, cfg.mode, None, cfg.folds, cfg.seed, cfg.control, cfg.bow,
                              False, layers, cfg.n_jobs, cfg.ci, advance)
    result["command"] = command
    _write_json(folder / "probe.json", result)
    figures = plot_all(result, folder, caption=command, formats=["png"])
    return {"outputs": ["probe.json"], "figures": [p.name for p in figures]}


def _tokenizer_for(ctx: StepContext, manifest: dict[str, Any]):
    if ctx.model.loaded is not None:
        return ctx.model.loaded.tokenizer
    from ihs.models.loading import load_tokenizer

    return load_tokenizer(manifest)


def _run_lens(ctx: StepContext, folder: Path) -> dict[str, Any]:
    try:
        from ihs.analysis import lens_cli
        from ihs.analysis.emotion import EmotionMatcher, Lexicon
        from ihs.layers import parse_layer_range
    except ImportError as exc:
        raise Unavailable(f"logit lens: {exc}") from None
    cfg = ctx.config.lens
    store = _load_store(ctx)
    lex = Lexicon.load(cfg.lexicon)
    tokenizer = _tokenizer_for(ctx, store.manifest)
    matcher = EmotionMatcher(lex, tokenizer)
    layer_range = parse_layer_range(cfg.layers, store.num_layers)
    name = ctx.model_dir.name
    text_of = lens_cli._text_of(store, tokenizer)
    entry: dict[str, Any] = {
        "store": str(ctx.store_dir()), "store_name": name, "model": store.manifest.get("model", {}),
        "num_layers": store.num_layers, "k": int(store.lens_ids.shape[2]) if store.lens_ids is not None else None,
        "labels": {label: int((store.labels == label).sum()) for label in dict.fromkeys(store.labels)},
        "vocab_check": matcher.vocab_report,
        "lenses": {"logit": lens_cli.analyze_store(store, matcher, layer_range, text_of=text_of, margin=cfg.margin)},
    }
    if tokenizer is None:
        entry["vocab_check_note"] = "tokenizer not available locally: no vocabulary check, fragment rules off"
    lens_cli._figures(entry, folder, layer_range)
    payload = {
        "ihs_version": ihs.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "layer_convention": "index 0 = embedding output; index i = output of decoder block i",
        "lexicon": lex.describe(),
        "tkic_definition": ("per class and layer: count each token once per input among all inputs' top-k lists, keep "
                            "the k most frequent, share = count / N; scalar top1 = mean over the layer range (inclusive) "
                            "of the top-1 share, topk = mean over the range of the mean of the k shares"),
        "command": ctx.command("lens", str(ctx.store_dir()), "--out", str(folder)),
        "models": [entry],
    }
    _write_json(folder / "lens.json", payload)
    return {"outputs": ["lens.json"], "layer_range": list(layer_range)}


def _run_generate(ctx: StepContext, folder: Path) -> dict[str, Any]:
    try:
        from ihs.generation import generate, refusal_summary
        from ihs.plots.graft import plot_refusal
    except ImportError as exc:
        raise Unavailable(f"generation: {exc}") from None
    cfg = ctx.config.generate
    records = _gen_records(ctx)
    if not records:
        raise Skip(f"none of generate.classes ({', '.join(cfg.classes)}) is among the data classes")
    lm = ctx.model.get()
    run = generate(lm, records, ctx.gen_options(cfg.max_new_tokens, cfg.batch_size), cfg.judge, progress=ctx.progress)
    summary = refusal_summary(run.rows)
    _write_jsonl(folder / "generations.jsonl", run.rows)
    meta = {"model": lm.name, "identity": lm.identity, "options": {**run.options, "dtype": ctx.model.dtype},
            "seconds": round(run.seconds, 2),
            "new_tokens_per_s": round(run.new_tokens / run.seconds, 2) if run.seconds else None}
    _write_json(folder / "refusal.json", {**meta, "judge": run.judge, **summary}, indent=2)
    _write_json(folder / "refusal_rates.json",
                {lm.name: {label: v["refusal_rate"] for label, v in summary["per_class"].items()}}, indent=2)
    plot_refusal(summary, folder / "refusal.png", title=f"{lm.name}: refusal rate ({run.judge} judge)")
    return {"outputs": ["generations.jsonl", "refusal.json"], "n": len(run.rows)}


def _run_jailbreak(ctx: StepContext, folder: Path) -> dict[str, Any]:
    try:
        from ihs.analysis import lens_cli
        from ihs.analysis.emotion import EmotionMatcher, Lexicon
        from ihs.analysis.jailbreak import jailbreak_analysis
        from ihs.layers import parse_layer_range
        from ihs.plots.graft import plot_jailbreak
    except ImportError as exc:
        raise Unavailable(f"jailbreak analysis: {exc}") from None
    missing = [c for c in ("normal", "malicious", "jailbreak") if c not in ctx.config.data]
    if missing:
        raise Skip(f"needs normal, malicious and jailbreak data (missing: {', '.join(missing)})")
    cfg = ctx.config.jailbreak
    store = _load_store(ctx)
    rows = read_jsonl(ctx.folder("generate") / "generations.jsonl")
    tokenizer = _tokenizer_for(ctx, store.manifest)
    matcher = EmotionMatcher(Lexicon.load(ctx.config.lens.lexicon), tokenizer)
    middle = parse_layer_range(cfg.middle or ctx.config.lens.layers, store.num_layers)
    result = jailbreak_analysis(store, rows, lens_cli._text_of(store, tokenizer), matcher, middle, cfg.early_layer,
                                cfg.classifier)
    table = result.pop("table")
    _write_json(folder / "jailbreak.json", {"model": ctx.model.name, "store": str(ctx.store_dir()), **result})
    _write_jsonl(folder / "jailbreak_table.jsonl", table)
    plot_jailbreak(result, folder / "jailbreak.png",
                   title=f"{ctx.model.name}: jailbreak inputs, early probe vs middle-layer emotion")
    return {"outputs": ["jailbreak.json"]}


def _run_graft(ctx: StepContext, folder: Path) -> dict[str, Any]:
    try:
        from ihs.interventions.grafting import graft_sweep
        from ihs.layers import parse_layers
        from ihs.plots.graft import plot_graft
    except ImportError as exc:
        raise Unavailable(f"grafting: {exc}") from None
    cfg = ctx.config.graft
    targets, donors, reverse_donors, reference = _graft_sets(ctx)
    lm = ctx.model.get()
    layers = parse_layers(cfg.layers, lm.num_layers)
    options = ctx.gen_options(cfg.max_new_tokens, cfg.batch_size)
    started = time.perf_counter()
    forward = graft_sweep(lm, targets, donors, layers, cfg.judge, options, cfg.per_pair, cfg.examples,
                          reference or None, progress=ctx.progress)
    rows = [{**r, "direction": "forward"} for r in forward.pop("rows")]
    result: dict[str, Any] = {"model": lm.name, "identity": lm.identity, "forward": forward, "reverse": None}
    if cfg.reverse and reverse_donors:
        reverse_targets = ctx.select([cfg.donor_class], cfg.targets)
        back = graft_sweep(lm, reverse_targets, reverse_donors, layers, cfg.judge, options, cfg.per_pair,
                           cfg.examples, None, progress=ctx.progress)
        rows += [{**r, "direction": "reverse"} for r in back.pop("rows")]
        result["reverse"] = back
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["command"] = ctx.command("graft", "--model", ctx.model.ref, "--layers", cfg.layers, "--limit",
                                    str(cfg.targets), "--donor-limit", str(cfg.donors), "--out", str(folder))
    result["target_donor_split"] = (f"targets: the first {cfg.targets} {cfg.target_class} prompts; donors: the next "
                                    f"{cfg.donors} {cfg.donor_class} prompts after the first {cfg.targets}, "
                                    "so no prompt is both")
    _write_json(folder / "graft.json", result, indent=2)
    _write_jsonl(folder / "generations.jsonl", rows)
    plot_graft(result, folder / "graft_asr.png")
    return {"outputs": ["graft.json"], "layers": layers}


STEP_FUNCS: dict[str, tuple[Callable[[StepContext], dict[str, Any]], Callable[[StepContext, Path], dict[str, Any]]]] = {
    "extract": (_key_extract, _run_extract),
    "probe": (_key_probe, _run_probe),
    "lens": (_key_lens, _run_lens),
    "generate": (_key_generate, _run_generate),
    "jailbreak": (_key_jailbreak, _run_jailbreak),
    "graft": (_key_graft, _run_graft),
}


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    out: Path
    report: Path | None
    index: dict[str, Any]

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(m["slug"], step) for m in self.index["models"] for step, s in m["steps"].items()
                if s["status"] == "failed"]


def _steps_needed(config: RunConfig) -> list[str]:
    wanted = set(config.analyses)
    needed = {"extract"} if wanted & {"probe", "lens", "jailbreak"} else set()
    if "jailbreak" in wanted:
        needed.add("generate")
    needed |= wanted
    return [s for s in STEPS if s in needed]


class _RunLog:
    """Log records of ``ihs.*`` into OUT/run.log for the duration of a run."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("ihs")
        self.old_level = self.logger.level

    def __enter__(self) -> _RunLog:
        self.old_propagate = self.logger.propagate
        self.forward = _ForwardWarnings()
        self.logger.addHandler(self.handler)
        self.logger.addHandler(self.forward)
        self.logger.propagate = False
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.removeHandler(self.forward)
        self.logger.propagate = self.old_propagate
        self.logger.setLevel(self.old_level)
        self.handler.close()


class _torch_threads:
    """Set torch's CPU threads for the duration of a run."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


class _ForwardWarnings(logging.Handler):
    """Pass warnings and errors on to the root logger's handlers (INFO goes to run.log only)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def choose_threads(requested: int | None) -> tuple[int, str]:
    """CPU threads for torch: the requested number, else torch's default unless other processes already
    keep the cores busy (1-minute load average at least the core count), where one thread is faster:
    threads that wait on each other at every matrix multiply lose most of their time slices."""
    import os

    import torch

    if requested is not None:
        if requested < 1:
            raise IhsError(f"config: model.threads must be at least 1, got {requested}")
        return requested, "as configured"
    default = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return default, "torch default"
    cores = os.cpu_count() or default
    if default > 1 and load >= cores:
        return 1, f"load average {load:.1f} on {cores} cores: other work keeps the cores busy"
    return default, f"torch default (load average {load:.1f} on {cores} cores)"


def run(
    config: RunConfig | None = None,
    out: str | Path = "ihs-run",
    models: Sequence[Any] | None = None,
    progress: bool = True,
    force: Sequence[str] | bool = (),
    report: bool = True,
    command: str | None = None,
) -> RunResult:
    """Run every configured analysis for every model into ``out`` and write ``out/report.html``.

    ``models`` overrides ``config.models`` and may hold already-loaded models
    (:class:`ihs.models.loading.LoadedModel`). ``force`` recomputes the named steps (``True``: all).
    Steps whose key matches a finished ``step.json`` are reused.
    """
    from ihs.data.prepare import prepare
    from ihs.progress import console

    config = config or RunConfig()
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    forced = set(STEPS) if force is True else set(force or ())
    refs = list(models) if models is not None else list(config.models)
    if not refs:
        raise IhsError("no model given")
    started = time.perf_counter()
    steps = _steps_needed(config)
    index: dict[str, Any] = {
        "ihs_version": ihs.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command or "ihs.run.run()", "out": str(out), "config": config.to_dict(), "steps": steps,
        "models": [], "log": "run.log",
    }
    import torch

    threads_before = torch.get_num_threads()
    threads, why = choose_threads(config.model.threads)
    index["threads"] = {"torch": threads, "why": why}
    with _RunLog(out / "run.log"), _torch_threads(threads):
        log.info("ihs run %s into %s: models %s, steps %s", ihs.__version__, out, [str(getattr(r, "name", r)) for r in refs],
                 steps)
        log.info("torch threads: %d (%s; was %d)", threads, why, threads_before)
        if threads != threads_before:
            console.print(f"torch threads: {threads} ({why})")
        specs = [f"{name}={spec}" for name, spec in config.data.items()]
        records, data_report = prepare(specs, limit=None)
        index["data"] = {"specs": specs, "cleaning": data_report["cleaning"], "limit": config.limit,
                         "counts": {c: sum(r.label == c for r in records) for c in config.data}}
        used: set[str] = set()
        for m_index, ref in enumerate(refs, start=1):
            handle = ModelHandle(ref, config.model)
            name = slug(handle.name)
            while name in used:
                name += "_"
            used.add(name)
            console.rule(f"[bold]model {m_index}/{len(refs)}: {handle.name}")
            log.info("model %s (%s) -> %s", handle.ref, handle.fingerprint, out / name)
            entry = {"slug": name, **handle.describe(), "dir": name, "steps": {}}
            index["models"].append(entry)
            ctx = StepContext(config, handle, out / name, records, {}, progress)
            for step in STEPS:
                if step not in steps:
                    entry["steps"][step] = {"status": "disabled",
                                            "message": f"not in analyses ({', '.join(config.analyses)})"}
                    continue
                entry["steps"][step] = _run_step(ctx, step, step in forced, entry["steps"], console)
                _write_json(out / "run.json", index, indent=2)
            entry["model_loads"] = handle.loads
            _write_json(out / "run.json", index, indent=2)
            del ctx, handle
        index["wall_seconds"] = round(time.perf_counter() - started, 1)
        report_path = None
        if report:
            from ihs.report.html import write_report

            t0 = time.perf_counter()
            report_path = write_report(out, index)
            index["report_seconds"] = round(time.perf_counter() - t0, 2)
            log.info("report written to %s in %.1f s", report_path, index["report_seconds"])
        _write_json(out / "run.json", index, indent=2)
        log.info("run finished in %.1f s", time.perf_counter() - started)
    return RunResult(out=out, report=report_path, index=index)


def _run_step(ctx: StepContext, step: str, forced: bool, statuses: dict[str, Any], console) -> dict[str, Any]:
    from rich.markup import escape

    blocked = [d for d in DEPENDS[step] if statuses.get(d, {}).get("status") not in ("done", "cached")]
    label = f"{ctx.model_dir.name} · {step}"
    if blocked:
        why = ", ".join(f"{d} {statuses.get(d, {}).get('status', 'missing')}" for d in blocked)
        console.print(f"[yellow]{escape(label)}: not run ({escape(why)})")
        log.warning("%s: not run (%s)", label, why)
        return {"status": "blocked", "message": f"needs {why.replace(' ', ': ', 1) if len(blocked) == 1 else why}"}
    key_fn, body = STEP_FUNCS[step]
    folder = ctx.folder(step)
    try:
        inputs = key_fn(ctx)
    except Skip as exc:
        console.print(f"[yellow]{escape(label)}: skipped: {escape(str(exc))}")
        log.info("%s: skipped: %s", label, exc)
        return {"status": "skipped", "message": str(exc)}
    key = step_key(step=step, **inputs)
    ctx.keys[step] = key
    previous = read_step(folder)
    if (not forced and previous and previous.get("key") == key and previous.get("status") == "done"
            and all((folder / o).exists() for o in previous.get("outputs", []))):
        console.print(f"[green]{escape(label)}: cached[/] (computed in {previous.get('seconds', 0):.1f} s)")
        log.info("%s: cached (key %s)", label, key)
        return {"status": "cached", "key": key, "seconds": previous.get("seconds"), "finished": previous.get("finished")}
    if folder.exists() and step != "extract":
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold cyan]{escape(label)}[/]: running")
    log.info("%s: running (key %s)", label, key)
    started = time.perf_counter()
    record: dict[str, Any] = {"step": step, "key": key, "inputs": inputs, "ihs_version": ihs.__version__}
    try:
        summary = body(ctx, folder)
    except Unavailable as exc:
        message = f"not available in this version of ihs ({exc})"
        console.print(f"[yellow]{escape(label)}: {escape(message)}")
        log.warning("%s: %s", label, message)
        return {"status": "unavailable", "message": message}
    except Skip as exc:
        console.print(f"[yellow]{escape(label)}: skipped: {escape(str(exc))}")
        log.info("%s: skipped: %s", label, exc)
        return {"status": "skipped", "message": str(exc)}
    except KeyboardInterrupt:
        log.warning("%s: interrupted; re-run the same command to resume", label)
        raise
    except Exception as exc:  # noqa: BLE001 - one failing analysis must not lose the others
        seconds = round(time.perf_counter() - started, 2)
        message = f"{type(exc).__name__}: {exc}"
        log.error("%s failed after %.1f s: %s\n%s", label, seconds, message, traceback.format_exc())
        console.print(f"[red]{escape(label)} failed:[/] {escape(message)} (details in run.log)")
        _write_json(folder / STEP_FILE, {**record, "status": "failed", "error": message, "seconds": seconds})
        return {"status": "failed", "key": key, "message": message, "seconds": seconds}
    seconds = round(time.perf_counter() - started, 2)
    record.update({"status": "done", "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   **summary})
    _write_json(folder / STEP_FILE, record)
    console.print(f"[green]{escape(label)}: done[/] in {seconds:.1f} s")
    log.info("%s: done in %.1f s", label, seconds)
    return {"status": "done", "key": key, "seconds": seconds, "finished": record["finished"]}


def main_command(argv: Sequence[str] | None = None) -> str:
    return shlex.join(["ihs", *(sys.argv[1:] if argv is None else argv)])


# -- the command ---------------------------------------------------------------------------------------------------------


def run_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Model to analyse, repeatable (zoo name, folder, GGUF file or Hugging Face id); "
        f"overrides the config's models. Default: {DEFAULT_MODEL}.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (models, data, limit, analyses and their options); "
        "`ihs run --print-config` prints the defaults.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (re-running reuses finished steps).")] = Path("ihs-run"),
    limit: Annotated[int | None, typer.Option(help="Distinct prompts per class for extraction, probes, lens.")] = None,
    analyses: Annotated[str | None, typer.Option(
        help=f"Comma-separated analyses to run (default all: {','.join(ANALYSES)}).")] = None,
    force: Annotated[str | None, typer.Option(
        help="Recompute these steps even if cached: comma-separated step names, or 'all'.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the config (defaults, or --config merged with them) as YAML and exit.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Only rebuild OUT/report.html from the outputs already in OUT.")] = False,
) -> None:
    """Every analysis for one or more models, cached step by step, and one HTML report (OUT/report.html)."""
    from ihs.progress import console

    if print_config:
        typer.echo(config_yaml(RunConfig.load(config) if config else RunConfig()))
        return
    if report_only:
        from ihs.report.html import write_report

        path = write_report(out)
        console.print(f"report: {path.resolve()}")
        return
    cfg = RunConfig.load(config) if config else RunConfig()
    if model:
        cfg.models = list(model)
    if limit is not None:
        cfg.limit = limit
    if analyses is not None:
        cfg.analyses = [a.strip() for a in analyses.split(",") if a.strip()]
    cfg.validate()
    forced: Sequence[str] | bool = ()
    if force:
        forced = True if force.strip() == "all" else [s.strip() for s in force.split(",") if s.strip()]
        unknown = [s for s in (forced if forced is not True else []) if s not in STEPS]
        if unknown:
            raise IhsError(f"--force: unknown step {unknown[0]!r}; choose from {', '.join(STEPS)} or all")
    result = run(cfg, out, progress=progress, force=forced, command=main_command())
    failed = result.failed
    if failed:
        console.print(f"[red]{len(failed)} step(s) failed:[/] " + ", ".join(f"{m}/{s}" for m, s in failed)
                      + f" (see {out / 'run.log'})")
    console.print(f"log: {(out / 'run.log').resolve()}")
    typer.echo(f"report: {result.report.resolve() if result.report else 'not written'}")
    if failed:
        raise typer.Exit(1)
