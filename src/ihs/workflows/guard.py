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
from ihs.guard.features import POOLINGS
from ihs.guard.fit import FitOptions, fit_guard
from ihs.guard.guard import BENIGN_LABELS, CARD, MALICIOUS_LABELS, PROBES, Guard, model_info
from ihs.guard.heads import HEADS, parse_kind
from ihs.guard.inputs import data_inputs as data_inputs
from ihs.guard.inputs import load_guard, store_inputs
from ihs.guard.inputs import pool_stores as pool_stores
from ihs.guard.inputs import prompt_records as prompt_records
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
class GuardKindOptions:
    """Which kind of guard is fitted, and how its kind is chosen (``ihs guard fit --kind``)."""

    kind: str = opt("last", "last: today's guard (one layer's last-token state, a linear probe, layer and probe by "
                            "cross-validation, one threshold over all benign prompts); auto: layers, pooling, head and "
                            "refusal margin chosen by leave-group-out cross-validation on the training split, threshold "
                            "held on every benign kind (needs --bank or --data); or a kind name such as "
                            "mean@12+16/mlp+refusal or last@17/logreg.")
    poolings: list[str] = opt(help=f"With --kind auto: candidate poolings, any of {', '.join(POOLINGS)}.",
                              factory=lambda: list(POOLINGS))
    heads: list[str] = opt(help=f"With --kind auto: candidate heads, any of {', '.join(HEADS)}.",
                           factory=lambda: ["logreg", "mlp"])
    refusal: bool = opt(True, "With --kind auto: also try the model's own refusal margin as features.")
    select_key: str = opt("auto", "With --kind auto: the group key whose groups the selection folds hold out "
                                  "(auto: every family, reformulation, kind, position, category and form).")
    select_folds: int = opt(4, "With --kind auto: folds of whole groups for the selection.")
    sets: list[str] | None = opt(None, "With --bank: fit on the rows of these sets only (their short names, e.g. "
                                       "normal,malicious,contrast,jailbreak); null: every set.")

    def validate(self) -> None:
        bad = [p for p in self.poolings if p not in POOLINGS] + [h for h in self.heads if h not in HEADS]
        if bad or not self.poolings or not self.heads:
            raise IhsError(f"unknown pooling or head {bad[0] if bad else '(none)'!r}; poolings: {', '.join(POOLINGS)}; "
                           f"heads: {', '.join(HEADS)}")
        if self.select_folds < 2:
            raise IhsError(f"select_folds must be at least 2, got {self.select_folds}")
        if self.kind not in ("last", "auto"):
            parse_kind(self.kind, 10**6)  # the syntax only; layers are checked against the model when fitting


@dataclass(kw_only=True)
class GuardEvalOptions:
    """How a guard is evaluated."""

    bow: bool = opt(True, "Bag-of-words baseline, fitted on the guard's training prompts and calibrated on its "
                          "calibration prompts for the same target FPR.")
    limit: int | None = opt(None, "With data: first N distinct prompts per dataset.")
    batch_size: int = opt(32, "Largest batch when prompts are scored with the model.")
    holdout: list[str] = opt(help="Group keys for leave-one-group-out evaluation on the guard's training data "
                                  "(family, category, category:malicious, kind, reformulation, dataset, benign-kind, "
                                  "malicious-kind, any tag).", factory=list)
    benign_policy: str = opt("pool", "Single-class held-out groups: pool (scored with a fixed never-trained pool of "
                                     "the other class) or own (only their own rows: TPR or FPR, no AUROC).")
    random_folds: int = opt(5, "With holdout: the same methods on this many random goal-level folds (0: off).")
    nested: bool = opt(False, "With holdout: also a guard whose kind is chosen again inside every training side.")
    min_group: int = opt(2, "With holdout: groups with fewer prompts are not held out (they train in every split) and "
                            "are listed; 2 (the least): a group of one prompt is an error.")


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
            return {"holdout": self.holdout_numbers()} if self.data.get("holdout") else None
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
        out["kind"] = self.data.get("kind") or (self.card.get("kind") or {}).get("name")
        out["blocks_share"] = (self.card.get("cost") or {}).get("blocks_share")
        out["calibration_by_kind"] = self.card.get("calibration_by_kind")
        out["holdout"] = self.holdout_numbers()
        return out

    def holdout_numbers(self) -> dict[str, Any] | None:
        """Per leave-group-out key and method: worst and mean group AUROC (and the worst group), lowest TPR and
        highest FPR at the training side's threshold; ``random`` for the random-fold comparison."""
        h = self.data.get("holdout")
        if not h:
            return None
        out = {key: res["summary"] for key, res in h.get("keys", {}).items()}
        if h.get("random"):
            out["random"] = h["random"]["summary"]
        return out


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


def run_guard_features(lm: Any, data: Sequence[str], out: str | Path | None = None, *, limit: int | None = None,
                       limit_by: str | None = None, sample: int | None = None, seed: int = 0, chat: bool | None = None, system_prompt: str | None = None,
                       layers: str | None = None, poolings: Sequence[str] = POOLINGS, refusal: bool = True,
                       ema_halflife: float = 8.0, batch_size: int = 16, progress: bool = True) -> Any:
    """Run ``lm`` once over ``NAME=SPEC`` sets and keep what any candidate guard could read (a feature bank):
    the last token at every layer, pooled states and the refusal margin at ``layers`` (default: a grid of about
    eleven layers); saved to ``out`` when given."""
    from ihs.guard.inputs import bank_inputs

    grid = parse_layers(layers, lm.num_layers) if layers else None
    bank = bank_inputs(lm, data, limit=limit, limit_by=limit_by, sample=sample, seed=seed, chat=chat, system_prompt=system_prompt, layers=grid,
                       poolings=poolings, refusal=refusal, ema_halflife=ema_halflife, batch_size=batch_size,
                       progress=progress)
    if out is not None:
        bank.save(out)
        bank.info["path"] = str(Path(out).resolve())
    return bank


def run_guard_fit_bank(bank: Any, options: GuardFitOptions | None = None, kind: GuardKindOptions | None = None, *,
                       progress: bool = True) -> Guard:
    """Fit a guard on a feature bank: today's recipe on its last-token states (``kind="last"``), or the kind chosen
    by leave-group-out cross-validation on the training split (``"auto"``), or a given kind."""
    from ihs.guard.fit_pooled import PooledFitOptions, fit_pooled_guard
    from ihs.guard.select import SelectOptions, count_candidates

    options, kind = options or GuardFitOptions(), kind or GuardKindOptions()
    options.validate()
    kind.validate()
    info = {**bank.info, "bank": bank.info.get("path"), "sets": list(kind.sets) if kind.sets else None}
    if kind.sets:
        from ihs.guard.grouping import kind_of

        present = sorted({kind_of(r) for r in bank.records})
        if any(s not in present for s in kind.sets):
            raise IhsError(f"--sets {','.join(kind.sets)}: the bank holds the sets {', '.join(present)}")
    num_layers = bank.num_layers
    layers = parse_layers(options.layers, num_layers) if options.layers else None
    select = SelectOptions(poolings=kind.poolings, heads=kind.heads, refusal=kind.refusal, key=kind.select_key,
                           folds=kind.select_folds, seed=options.seed, tolerance=options.tolerance, layers=layers)
    legacy = kind.kind == "last"
    fit = PooledFitOptions(select=select, recipe=None if kind.kind in ("auto", "last") else parse_kind(kind.kind, num_layers),
                           legacy=legacy, legacy_layers=layers, legacy_classifiers=list(options.classifiers),
                           tolerance=options.tolerance, sets=kind.sets,
                           target_fpr=options.target_fpr, test_frac=options.test_frac, calib_frac=options.calib_frac,
                           folds=options.folds, seed=options.seed, benign=options.benign or BENIGN_LABELS,
                           malicious=options.malicious or MALICIOUS_LABELS)
    total = (len(layers or range(num_layers + 1)) * len(options.classifiers) if legacy
             else count_candidates(bank.features, select))
    with progress_bar("choosing the layer" if legacy else "choosing the kind", total=total, unit="candidates",
                      enabled=progress and kind.kind in ("auto", "last")) as advance:
        guard = fit_pooled_guard(bank, fit, advance)
    guard.card["data"].update(info)
    return guard


def _eval_sources(guard: Guard, options: GuardEvalOptions, stores: Sequence[Path], banks: Sequence[Path],
                  data: Sequence[str], progress: bool, exclude: Sequence[Guard] = ()) -> list[tuple[str, list[dict],
                                                                                                  np.ndarray]]:
    """(name, records, logits) per evaluation set: stores and banks read, data scored with the model; prompts the
    guard (and every guard in ``exclude``) was trained or calibrated on are left out."""
    from ihs.guard.bank import FeatureBank
    from ihs.guard.evaluate import check_store, exclude_fitted, require_both
    from ihs.guard.inputs import data_records
    from ihs.guard.sources import check_bank, decision_on, fitted_records, store_features, training_source

    fitted = []
    for g in (guard, *exclude):
        source = training_source(g)
        fitted += [r["text"] for part in fitted_records(g, source[0]) for r in part] if source else []
    train_paths = [Path(p).resolve() for p in (guard.card.get("data") or {}).get("stores") or []]
    own_bank = (guard.card.get("data") or {}).get("bank")
    sets = []
    for path in stores:
        st = ActivationStore.load(path)
        check_store(guard, st, str(path))
        keep = exclude_fitted(guard, st.records, fitted)
        name = path.name + (" (held-out)" if path.resolve() in train_paths else "")
        sets.append((name, [st.records[i] for i in keep], decision_on(guard, store_features(st), keep, f"store {path}")))
    for path in banks:
        bank = FeatureBank.load(path)
        check_bank(guard, bank, str(path))
        keep = exclude_fitted(guard, bank.records, fitted)
        own = own_bank and Path(own_bank).resolve() == Path(path).resolve()
        sets.append((Path(path).name + (" (held-out)" if own else ""), [bank.records[i] for i in keep],
                     decision_on(guard, bank.features, keep, f"bank {path}")))
    if data:
        recs = data_records(data, limit=options.limit)
        recs = [recs[i] for i in exclude_fitted(guard, recs, fitted)]
        require_both("data: " + ", ".join(data), recs)
        with progress_bar(f"scoring (blocks 1..{guard.layer})", total=len(recs), enabled=progress) as advance:
            ids = [f.ids for f in guard.format([r["text"] for r in recs])]
            sets.append(("data: " + ", ".join(data), recs,
                         guard.decision_ids(ids, batch_size=options.batch_size, progress=advance)))
    return sets


def run_guard_eval(guard: Guard, options: GuardEvalOptions | None = None, *, guard_dir: str | Path | None = None,
                   stores: Sequence[str | Path] = (), data: Sequence[str] = (), banks: Sequence[str | Path] = (),
                   generations: Sequence[str | Path] = (), compare: Sequence[tuple[str, Any]] = (),
                   exclude: Sequence[Guard] = (), progress: bool = True) -> GuardResult:
    """Detection of ``guard`` per set (stores and banks read, ``data`` scored with the guard's attached model), per
    label, kind and jailbreak family, beside the bag-of-words baseline and (with ``generations``) the model's own
    refusal; with ``options.holdout``, leave-one-group-out on the guard's training data for each key (the guard's
    kind, the ``compare`` kinds and bag-of-words under the same splits) and the same on random folds.

    Prompts the guard was trained or calibrated on are left out, so with no sets the guard's own training data
    gives exactly its held-out split; so are those of the ``exclude`` guards (to compare guards on the same rows).
    """
    from ihs.guard.evaluate import BowBaseline, evaluate_set, load_generations, refusal_detector
    from ihs.guard.sources import fitted_records, holdout_for_guard, training_source

    options = options or GuardEvalOptions()
    card_data = guard.card.get("data", {})
    stores, banks = [Path(p) for p in stores], [Path(p) for p in banks]
    if not stores and not data and not banks and not options.holdout:
        if card_data.get("stores"):
            stores = [Path(p) for p in card_data["stores"]]
        elif card_data.get("bank"):
            banks = [Path(card_data["bank"])]
        else:
            raise IhsError("this guard was fitted from --data, not a store or bank; pass --store, --bank or --data")
    source = training_source(guard)
    train_recs, cal_recs = fitted_records(guard, source[0]) if source else ([], [])
    bow, notes = None, []
    if options.bow and (stores or banks or data):
        if train_recs and cal_recs:
            bow = BowBaseline(train_recs, cal_recs, guard)
        else:
            notes.append("bag-of-words baseline skipped: the guard's training data is not available")
    gens = load_generations(generations) if generations else None
    result: dict[str, Any] = {"guard": str(guard_dir) if guard_dir is not None else None, "model": guard.model_name,
                              "layer": guard.layer, "kind": guard.kind, "classifier": guard.classifier,
                              "threshold": guard.threshold, "target_fpr": guard.target_fpr, "sets": [], "notes": notes}
    for name, recs, logits in _eval_sources(guard, options, stores, banks, data, progress, exclude):
        result["sets"].append(evaluate_set(guard, name, recs, logits, bow, gens))
    if gens:
        result["refusal"] = refusal_detector(gens, guard)
    if bow is not None:
        result["bow"] = {"n_train": bow.n_train, "threshold": bow.threshold}
    if options.holdout:
        nested = None
        if options.nested:
            from ihs.guard.select import SelectOptions

            nested = SelectOptions(seed=0)
        result["holdout"] = holdout_for_guard(guard, options.holdout, compare=compare, bow=options.bow, nested=nested,
                                              benign=options.benign_policy, random_folds=options.random_folds,
                                              min_group=options.min_group, progress=progress)
    return GuardResult(result, card=guard.to_card())


def run_guard_calibrate(guard: Guard, benign: Sequence[str], *, target_fpr: float | None = None,
                        kind_key: str | None = None, per_kind: bool = True, limit: int | None = None,
                        batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """Recalibrate ``guard`` (its model attached) on files of benign deployment traffic (``FILE`` or ``NAME=FILE``):
    the threshold meets the target FPR on every kind (a file, or the values of ``kind_key``)."""
    from ihs.data.loaders import load_dataset_spec
    from ihs.guard.recalibrate import recalibrate

    if not benign:
        raise IhsError("give at least one --benign FILE of benign prompts")
    records = []
    for spec in benign:
        name, sep, path = spec.partition("=")
        path, name = (path, name) if sep and not Path(spec).exists() else (spec, Path(spec).stem)
        recs = [{"id": r.id, "text": r.text, "label": "benign", "dataset": name, "tags": dict(r.tags)}
                for r in load_dataset_spec(path, label="benign")]
        if not recs:
            raise IhsError(f"{path} holds no prompts")
        records += recs[:limit] if limit else recs
    with progress_bar(f"scoring benign traffic (blocks 1..{guard.layer})", total=len(records),
                      enabled=progress) as advance:
        logits = guard.decision_ids([f.ids for f in guard.format([r["text"] for r in records])],
                                    batch_size=batch_size, progress=advance)
    return recalibrate(guard, records, logits, target_fpr=target_fpr, kind_key=kind_key, per_kind=per_kind,
                       source=list(benign))


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
