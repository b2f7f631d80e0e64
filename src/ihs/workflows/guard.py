"""Guard workflow: a calibrated probe on one early layer as a harmful-request detector (fit, evaluate, score, serve).

The computing lives in :mod:`ihs.guard` (``fit_guard``, :class:`~ihs.guard.guard.Guard`, the
evaluation helpers of :mod:`ihs.guard.evaluate`); this module gives them options with help, one
path for each of fit and evaluation, the :class:`GuardResult` the report reads, and the ``guard``
step of ``ihs run``: a guard fitted on the training split of the run's own store (prompts grouped by
goal, so a jailbreak never sits on the other side of its plain goal), its threshold calibrated on
the calibration split and its detection measured on the held-out split, beside a bag-of-words
baseline fitted and calibrated on the same prompts.

>>> from ihs.workflows.guard import GuardConfig, run_guard
>>> result = run_guard("runs/smol/extract/store", "runs/smol/guard", GuardConfig())  # doctest: +SKIP
>>> result.numbers()["auroc"], result.numbers()["bow_auroc"]                           # doctest: +SKIP
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ihs.errors import IhsError
from ihs.guard.fit import FitOptions, fit_guard
from ihs.guard.guard import BENIGN_LABELS, CARD, MALICIOUS_LABELS, PROBES, Guard, model_info
from ihs.io import read_json
from ihs.layers import parse_layers
from ihs.progress import progress_bar
from ihs.store import ActivationStore
from ihs.workflows.base import Result, Skip, Step, StepContext, opt

EVAL_FILE = "eval.json"
EVAL_TABLE = "eval.md"


@dataclass(kw_only=True)
class GuardFitOptions:
    """How a guard is fitted: candidate layers and probes, splits, calibration."""

    layers: str | None = opt(None, "Candidate layers in the layer grammar, e.g. 0:8 or 0.1:0.4 (null: all). "
                                   "0 = embedding output.")
    classifiers: list[str] = opt(help=f"Candidate linear probes, any of {', '.join(PROBES)}.",
                                 factory=lambda: list(PROBES))
    folds: int = opt(5, "Cross-validation folds for choosing layer and probe.")
    target_fpr: float = opt(0.01, "False-positive rate the threshold is calibrated for.")
    test_frac: float = opt(0.2, "Share of prompt groups (a goal with its jailbreaks) held out for evaluation.")
    calib_frac: float = opt(0.25, "Share of the remaining benign groups used to calibrate the threshold.")
    tolerance: float = opt(0.005, "Take the earliest layer within this cross-validated AUROC of the best.")
    seed: int = opt(0, "Seed of splits and folds.")
    benign: list[str] | None = opt(None, f"Benign labels (null: those present of {', '.join(BENIGN_LABELS)}).")
    malicious: list[str] | None = opt(None, "Malicious labels (null: those present of "
                                            f"{', '.join(MALICIOUS_LABELS)}).")

    def validate(self) -> None:
        bad = [c for c in self.classifiers if c not in PROBES]
        if bad or not self.classifiers:
            raise IhsError(f"unknown guard probe {bad[0] if bad else '(none)'!r}; choose from {', '.join(PROBES)}")
        if self.folds < 2:
            raise IhsError(f"folds must be at least 2, got {self.folds}")
        if not 0 <= self.target_fpr < 1:
            raise IhsError(f"target_fpr must be in [0, 1), got {self.target_fpr}")
        if not 0 <= self.test_frac < 1 or not 0 < self.calib_frac < 1:
            raise IhsError(f"fractions must be in [0, 1): test_frac {self.test_frac}, calib_frac {self.calib_frac}")
        if self.tolerance < 0:
            raise IhsError(f"tolerance must be non-negative, got {self.tolerance}")

    def fit_options(self, num_layers: int) -> FitOptions:
        """The :class:`ihs.guard.fit.FitOptions` for states with layers ``0..num_layers``."""
        return FitOptions(layers=parse_layers(self.layers, num_layers) if self.layers else None,
                          classifiers=list(self.classifiers), folds=self.folds, target_fpr=self.target_fpr,
                          test_frac=self.test_frac, calib_frac=self.calib_frac, tolerance=self.tolerance,
                          seed=self.seed, benign=self.benign, malicious=self.malicious)


@dataclass(kw_only=True)
class GuardEvalOptions:
    """How a guard is evaluated."""

    bow: bool = opt(True, "Bag-of-words baseline, fitted on the guard's training prompts and calibrated on its "
                          "calibration prompts for the same target FPR.")
    limit: int | None = opt(None, "With data: first N distinct prompts per dataset.")
    batch_size: int = opt(32, "Largest batch when prompts are scored with the model.")


@dataclass(kw_only=True)
class GuardConfig(GuardFitOptions):
    """The guard section of ``ihs run``: fit on the store's training split, evaluate on its held-out split."""

    bow: bool = opt(True, "Bag-of-words baseline beside the guard.")


class GuardResult(Result):
    """A guard folder: ``guard.json`` + ``guard.safetensors`` (the card and weights) and ``eval.json`` +
    ``eval.md`` (detection per set, label and jailbreak family, with the baselines)."""

    FILE = EVAL_FILE

    def __init__(self, data: dict[str, Any], guard: Guard | None = None, card: dict[str, Any] | None = None) -> None:
        super().__init__(data)
        self.guard = guard
        self.card = card if card is not None else (guard.to_card() if guard is not None else {})

    def table(self) -> str:
        """The evaluation as a Markdown table (what ``eval.md`` holds)."""
        from ihs.guard.evaluate import markdown_table

        return markdown_table(self.data)

    def save(self, folder: str | Path, **_: Any) -> list[Path]:
        """Write the guard (when this result holds one), eval.json and eval.md into ``folder``."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise IhsError(f"--out {folder} is a file; give a folder")
        written = []
        if self.guard is not None:
            self.guard.save(folder)
            written += [folder / CARD, folder / "guard.safetensors"]
        written += super().save(folder)
        (folder / EVAL_TABLE).write_text(self.table() + "\n", encoding="utf-8")
        return [*written, folder / EVAL_TABLE]

    @classmethod
    def load(cls, folder: str | Path) -> GuardResult:
        folder = Path(folder)
        card = read_json(folder / CARD) if (folder / CARD).is_file() else {}
        return cls(read_json(folder / EVAL_FILE), card=card)

    def held_out(self) -> dict[str, Any] | None:
        """The held-out set (the guard's own store), else the first set evaluated."""
        sets = self.data.get("sets") or []
        return next((s for s in sets if s["name"].endswith("(held-out)")), sets[0] if sets else None)

    def numbers(self) -> dict[str, Any] | None:
        """Headline numbers on the held-out set: AUROC, TPR at 1% FPR, TPR / FPR at the threshold, per label
        and family, and the bag-of-words baseline's on the same rows."""
        s = self.held_out()
        if s is None:
            return None
        g, b = s["guard"], s.get("bow") or {}
        bo = b.get("overall") or {}
        chosen = (self.card.get("selection") or {}).get("chosen") or {}
        model = self.card.get("model") or {}
        out = {"set": s["name"], "layer": self.data.get("layer"), "num_layers": model.get("num_layers"),
               "classifier": self.data.get("classifier"), "threshold": self.data.get("threshold"),
               "target_fpr": self.data.get("target_fpr"), "cv_auroc": chosen.get("cv_auroc"),
               "calibration_fpr": self.card.get("calibration_fpr"), "warnings": list(self.card.get("warnings", []))}
        out.update({k: g["overall"].get(k) for k in ("n_malicious", "n_benign", "auroc", "tpr_at_1pct_fpr", "tpr",
                                                      "fpr", "accuracy")})
        out.update({f"bow_{k}": bo.get(k) for k in ("auroc", "tpr_at_1pct_fpr", "tpr", "fpr", "accuracy")})
        out["by_label"] = {k: {**v, "bow": (b.get("by_label") or {}).get(k)} for k, v in g["by_label"].items()}
        out["by_family"] = {k: {**v, "bow": (b.get("by_family") or {}).get(k)} for k, v in g["by_family"].items()}
        return out


# -- inputs ----------------------------------------------------------------------------------------------------


def pool_stores(paths: Sequence[str | Path]) -> ActivationStore:
    """Load stores and pool their rows; they must hold one model's states under one formatting."""
    if not paths:
        raise IhsError("no store given")
    stores = [ActivationStore.load(p) for p in paths]
    first = stores[0].manifest
    for p, st in zip(paths[1:], stores[1:], strict=True):
        m = st.manifest
        if m.get("model", {}).get("fingerprint") != first.get("model", {}).get("fingerprint"):
            raise IhsError(f"store {p} holds another model's states than {paths[0]}")
        if (m.get("chat"), m.get("system_prompt")) != (first.get("chat"), first.get("system_prompt")):
            raise IhsError(f"store {p} was formatted differently (chat/system prompt) from {paths[0]}")
    if len(stores) == 1:
        return stores[0]
    manifest = {**first, "datasets": sorted({d for st in stores for d in st.manifest.get("datasets") or []})}
    return ActivationStore(hidden=np.concatenate([st.hidden for st in stores]),
                           records=[r for st in stores for r in st.records], manifest=manifest)


def store_inputs(paths: Sequence[str | Path], *, model: str | None = None,
                 device: str | None = None) -> tuple[ActivationStore, dict[str, Any], dict[str, Any]]:
    """(pooled store, the card's model block, the card's data block) for fitting from stores; with ``model``
    (loaded in the stores' dtype), the stores must hold that model's states."""
    store = pool_stores(paths)
    info = model_info(store.manifest)
    if model:
        from ihs.models.loading import load_model

        lm = load_model(model, dtype=store.manifest.get("model", {}).get("dtype", "float32"), device=device)
        if lm.fingerprint() != info["fingerprint"]:
            raise IhsError(f"store {paths[0]} holds states of {info['name']!r} ({info['fingerprint']}), "
                           f"not of {model!r} ({lm.fingerprint()})")
    return store, info, {"stores": [str(Path(p).resolve()) for p in paths], "datasets": store.manifest.get("datasets")}


def data_inputs(lm: Any, data: Sequence[str], *, limit: int | None = None, chat: bool | None = None,
                system_prompt: str | None = None, batch_size: int = 32,
                progress: bool = True) -> tuple[ActivationStore, dict[str, Any], dict[str, Any]]:
    """(in-memory store, model block, data block) for fitting from ``NAME=SPEC`` prompt sets run through ``lm``."""
    from ihs.data.prepare import prepare
    from ihs.extract import ExtractOptions, extract

    records, _ = prepare(list(data), limit=limit)
    store = extract(lm, records, None, ExtractOptions(chat=chat, system_prompt=system_prompt, batch_size=batch_size),
                    progress=progress)
    return store, model_info(lm, chat=chat, system_prompt=system_prompt), {"specs": list(data), "limit": limit}


def load_guard(guard_dir: str | Path, *, model: str | None = None, device: str | None = None,
               attach: bool = True) -> Guard:
    """A saved guard; with ``attach``, its model attached: ``model`` (checked against the card) or the one the
    card names."""
    from ihs.models.loading import load_model

    guard = Guard.load(guard_dir)
    if not attach:
        return guard
    if model:
        guard.attach(load_model(model, dtype=guard.model.get("dtype") or "float32", device=device))
    else:
        guard.load_model(device=device)
    return guard


def prompt_records(data: Sequence[str] | None, prompts: Sequence[str] | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """Records from ``NAME=SPEC`` prompt sets and from raw prompts (label ``prompt``)."""
    from ihs.batching import as_record_dict
    from ihs.data.prepare import prepare

    records = [as_record_dict(r) for r in prepare(list(data), limit=limit)[0]] if data else []
    return records + [{"id": f"prompt-{i}", "text": t, "label": "prompt", "dataset": "--prompt", "tags": {}}
                      for i, t in enumerate(prompts or [])]


# -- fit, evaluate, score ----------------------------------------------------------------------------------------


def run_guard_fit(store: ActivationStore, options: GuardFitOptions | None = None, *, model: Any = None,
                  data_info: dict[str, Any] | None = None, progress: bool = True) -> Guard:
    """Fit a guard on a store's states: layer and probe by cross-validation on the training split, threshold
    on the calibration split, the test split held out (its metrics in ``card["test"]``).

    ``model``: the card's model block (a dict, a store manifest or a LoadedModel; None: the store's manifest).
    """
    options = options or GuardFitOptions()
    options.validate()
    num_layers = store.hidden.shape[1] - 1
    fit = options.fit_options(num_layers)
    n_layers = len(fit.layers) if fit.layers is not None else num_layers + 1
    with progress_bar("choosing layer", total=n_layers * len(fit.classifiers), unit="probes",
                      enabled=progress) as advance:
        return fit_guard(store.hidden, list(store.records), model if model is not None else model_info(store.manifest),
                         fit, advance, data_info)


def _training_records(guard: Guard, train_paths: Sequence[Path]) -> tuple[list[dict], list[dict]]:
    ids = guard.card.get("splits", {}).get("ids", {})
    tr, ca = set(ids.get("train", [])), set(ids.get("calibration", []))
    train, cal = [], []
    for path in train_paths:
        if path.is_dir():
            records = ActivationStore.load(path).records
            train += [r for r in records if r["id"] in tr]
            cal += [r for r in records if r["id"] in ca]
    return train, cal


def run_guard_eval(guard: Guard, options: GuardEvalOptions | None = None, *, guard_dir: str | Path | None = None,
                   stores: Sequence[str | Path] = (), data: Sequence[str] = (), generations: Sequence[str | Path] = (),
                   progress: bool = True) -> GuardResult:
    """Detection of ``guard`` per set (stores read, ``data`` scored with the guard's attached model), per label and
    jailbreak family, beside the bag-of-words baseline and (with ``generations``) the model's own refusal.

    Prompts the guard was trained or calibrated on are left out, so with no stores and no data the guard's own
    training store gives exactly its held-out split.
    """
    from ihs.guard.evaluate import (
        BowBaseline,
        check_store,
        evaluate_set,
        exclude_fitted,
        load_generations,
        refusal_detector,
    )

    options = options or GuardEvalOptions()
    card_data = guard.card.get("data", {})
    train_paths = [Path(p) for p in card_data.get("stores") or ([card_data["store"]] if card_data.get("store") else [])]
    stores = [Path(p) for p in stores]
    if not stores and not data:
        if not train_paths:
            raise IhsError("this guard was fitted from --data, not a store; pass --store or --data to evaluate on")
        stores = train_paths
    train_recs, cal_recs = _training_records(guard, train_paths)
    fitted_texts = [r["text"] for r in train_recs + cal_recs]
    bow, notes = None, []
    if options.bow:
        if train_recs and cal_recs:
            bow = BowBaseline(train_recs, cal_recs, guard)
        else:
            notes.append("bag-of-words baseline skipped: the guard's training store is not available")
    gens = load_generations(generations) if generations else None
    result: dict[str, Any] = {"guard": str(guard_dir) if guard_dir is not None else None, "model": guard.model_name,
                              "layer": guard.layer, "classifier": guard.classifier, "threshold": guard.threshold,
                              "target_fpr": guard.target_fpr, "sets": [], "notes": notes}
    resolved = [p.resolve() for p in train_paths]
    for path in stores:
        st = ActivationStore.load(path)
        check_store(guard, st, str(path))
        keep = exclude_fitted(guard, st.records, fitted_texts)
        recs = [st.records[i] for i in keep]
        name = path.name + (" (held-out)" if path.resolve() in resolved else "")
        result["sets"].append(evaluate_set(guard, name, recs, guard.decision_states(st.hidden[keep, guard.layer]),
                                           bow, gens))
    if data:
        recs = prompt_records(data, limit=options.limit)
        recs = [recs[i] for i in exclude_fitted(guard, recs, fitted_texts)]
        with progress_bar(f"scoring (layer {guard.layer})", total=len(recs), enabled=progress) as advance:
            states = guard.states([r["text"] for r in recs], batch_size=options.batch_size, progress=advance)
        result["sets"].append(evaluate_set(guard, "data: " + ", ".join(data), recs, guard.decision_states(states),
                                           bow, gens))
    if gens:
        result["refusal"] = refusal_detector(gens, guard)
    if bow is not None:
        result["bow"] = {"n_train": bow.n_train, "threshold": bow.threshold}
    return GuardResult(result, card=guard.to_card())


def score_records(guard: Guard, records: Sequence[dict[str, Any]], *, batch_size: int = 32,
                  progress: bool = True) -> list[dict[str, Any]]:
    """One row per record: id, label, dataset, probability of malicious, verdict, text (early-exit forward pass)."""
    with progress_bar(f"scoring (layer {guard.layer})", total=len(records), enabled=progress) as advance:
        res = guard.score([r["text"] for r in records], batch_size=batch_size, progress=advance)
    return [{"id": r["id"], "label": r["label"], "dataset": r.get("dataset"), "probability": float(p),
             "malicious": bool(m), "text": r["text"]}
            for r, p, m in zip(records, res.probability, res.malicious, strict=True)]


def serve_guard(guard_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
                device: str | None = None, on_ready: Callable[[Guard], None] | None = None, **limits: Any) -> None:
    """Serve a saved guard over HTTP (``limits``: the fields of :class:`ihs.guard.serve.ServeLimits`)."""
    from ihs.guard.serve import ServeLimits, run_server

    guard = load_guard(guard_dir, model=model, device=device)
    if on_ready is not None:
        on_ready(guard)
    run_server(guard, host, port, ServeLimits(**limits))


def run_guard(store: str | Path, folder: str | Path, options: GuardConfig | None = None, *,
              progress: bool = True) -> GuardResult:
    """Fit a guard on a store's training split and evaluate it on the held-out split (the ``guard`` step)."""
    options = options or GuardConfig()
    pooled, info, data_info = store_inputs([store])
    guard = run_guard_fit(pooled, options, model=info, data_info=data_info, progress=progress)
    result = run_guard_eval(guard, GuardEvalOptions(bow=options.bow), guard_dir=folder, progress=progress)
    result.guard = guard
    return result


def fit_command(stores: Sequence[str | Path], options: GuardFitOptions, out: str | Path) -> str:
    """The ``ihs guard fit`` command that fits the same guard."""
    o, d = options, GuardFitOptions()
    parts = ["ihs", "guard", "fit", *[a for s in stores for a in ("--store", str(s))], "--out", str(out)]
    for name in ("layers", "classifiers", "benign", "malicious"):
        value = getattr(o, name)
        if value != getattr(d, name):
            parts += [f"--{name}", value if isinstance(value, str) else ",".join(value)]
    for name in ("folds", "target_fpr", "test_frac", "calib_frac", "tolerance", "seed"):
        if getattr(o, name) != getattr(d, name):
            parts += [f"--{name.replace('_', '-')}", str(getattr(o, name))]
    return shlex.join(parts)


class GuardStep(Step):
    name = "guard"
    options = GuardConfig
    depends = ("extract",)
    default = False
    help = ("A probe on an early layer as a detector: layer and probe chosen by cross-validation on the store's "
            "training split (grouped by goal), threshold calibrated on the calibration split for target_fpr, "
            "detection measured on the held-out split beside a bag-of-words baseline.")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        return {"extract": ctx.keys["extract"], "options": asdict(ctx.options(self.name))}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        options: GuardConfig = ctx.options(self.name)
        labels = set(ctx.config.data)
        if not labels & set(options.benign or BENIGN_LABELS) or not labels & set(options.malicious or MALICIOUS_LABELS):
            raise Skip("needs benign (normal, contrast) and malicious (malicious, jailbreak) data")
        result = run_guard(ctx.store_dir(), folder, options, progress=ctx.progress)
        result.save(folder)
        numbers = result.numbers() or {}
        commands = [fit_command([ctx.store_dir()], options, folder),
                    shlex.join(["ihs", "guard", "eval", str(folder), "--out", str(folder)]
                               + ([] if options.bow else ["--no-bow"]))]
        return {"outputs": [CARD, EVAL_FILE], "layer": numbers.get("layer"), "auroc": numbers.get("auroc"),
                "bow_auroc": numbers.get("bow_auroc"), "commands": commands}
