"""Probe workflow: per-layer weak classifiers on activation stores (claim 1, early recognition).

>>> from ihs.workflows.probe import ProbeOptions, run_probe
>>> result = run_probe({"smol": "runs/smol"}, ProbeOptions(classifiers=["svm"]))  # doctest: +SKIP
>>> result.numbers()["first_95"], result.save("runs/smol/probe")                  # doctest: +SKIP
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.analysis.probes import CLASSIFIERS, count_tasks, parse_classifiers, probe_stores
from ihs.errors import IhsError
from ihs.layers import parse_layers
from ihs.progress import progress_bar
from ihs.store import ActivationStore
from ihs.workflows.base import Result, Step, StepContext, opt

PRIMARY_CLASSIFIERS = ("svm", "logreg", "mlp", "diffmean")
CLASSIFIER_NAMES = {"svm": "linear SVM", "mlp": "MLP", "logreg": "logistic regression",
                    "diffmean": "difference of means"}
FIGURE_FORMATS = ("png", "svg", "pdf")


@dataclass(kw_only=True)
class ProbeOptions:
    """Weak classifiers per layer."""

    classifiers: list[str] = opt(help=f"Classifiers, any of {', '.join(CLASSIFIERS)}.",
                                 factory=lambda: ["svm", "mlp", "logreg", "diffmean"])
    mode: str = opt("cv", "cv: stratified k-fold on de-duplicated prompts, mean, 95% interval, AUROC, F1; "
                          "paper: the paper's 70/30 split (random_state=seed, 42 as in the paper).")
    classes: list[str] | None = opt(None, "Classes to train on, e.g. normal,malicious (null: all labels but contrast "
                                          "and jailbreak, which become transfer sets).")
    folds: int = opt(5, "Folds in cv mode.")
    seed: int = opt(42, "Seed for splits, label shuffles and the MLP.")
    layers: str | None = opt(None, "Layers to probe, in the layer grammar (null: all).")
    control: bool = opt(True, "Shuffled-label control.")
    bow: bool = opt(True, "Bag-of-words baseline on the raw prompts.")
    cross: bool = opt(True, "Cross-store transfer when several stores of one model are given.")
    ci: str = opt("wilson", "95% interval: wilson (pooled predictions) or t (over folds).")
    n_jobs: int = opt(1, "Worker processes across layers.")
    by: str | None = opt("auto", "Also report accuracy per value of this tag, e.g. lang (auto: lang when the "
                                 "store holds two or more languages; none: off).")
    holdout: str | None = opt(None, "Also leave-one-group-out per layer by this key (family, category, "
                                    "category:malicious, kind, reformulation, dataset, benign-kind, malicious-kind, any "
                                    "tag): a logistic probe fitted without each group and scored on it, its threshold "
                                    "set on the training side, beside bag-of-words under the same splits.")

    def validate(self) -> None:
        parse_classifiers(self.classifiers)
        if self.mode not in ("cv", "paper"):
            raise IhsError(f"unknown mode {self.mode!r}; choose cv or paper")
        if self.ci not in ("wilson", "t"):
            raise IhsError(f"unknown ci {self.ci!r}; choose wilson or t")
        if self.n_jobs < 1:
            raise IhsError(f"n_jobs must be at least 1, got {self.n_jobs}")
        if self.folds < 2:
            raise IhsError(f"folds must be at least 2, got {self.folds}")


def command_line(stores: list[str], names: list[str] | None, options: ProbeOptions, out: str | Path | None) -> str:
    """The canonical ``ihs probe`` command for these inputs, written under every figure and into probe.json."""
    o, d = options, ProbeOptions()
    parts = ["ihs", "probe", *stores, "--classifiers", ",".join(o.classifiers), "--mode", o.mode]
    if o.classes:
        parts += ["--classes", ",".join(o.classes)]
    if o.mode == "cv" and o.folds != d.folds:
        parts += ["--folds", str(o.folds)]
    if o.seed != d.seed:
        parts += ["--seed", str(o.seed)]
    if o.layers:
        parts += ["--layers", o.layers]
    if names:
        parts += ["--names", ",".join(names)]
    parts += [flag for flag, on in (("--no-control", not o.control), ("--no-bow", not o.bow),
                                    ("--no-cross", not o.cross)) if on]
    if o.ci != d.ci:
        parts += ["--ci", o.ci]
    if out is not None:
        parts += ["--out", str(out)]
    if o.by not in (None, "auto"):
        parts += ["--by", o.by]
    if o.holdout:
        parts += ["--holdout", o.holdout]
    return shlex.join(parts)


class ProbeResult(Result):
    """``probe.json``: per store, per classifier, per layer accuracy with intervals, controls, baselines."""

    FILE = "probe.json"

    @property
    def stores(self) -> list[dict[str, Any]]:
        return self.data["stores"]

    def save(self, folder: str | Path, *, figures: tuple[str, ...] | list[str] = ("png",)) -> list[Path]:
        """Write probe.json and the figures (``figures``: any of png, svg, pdf; empty for none)."""
        written = super().save(folder)
        bad = [f for f in figures if f not in FIGURE_FORMATS]
        if bad:
            raise IhsError(f"unknown figure format {bad[0]!r}; choose png, svg or pdf")
        if figures:
            from ihs.plots.probes import plot_all

            written += plot_all(self.data, folder, caption=self.data.get("command"), formats=list(figures))
        return written

    def numbers(self, store: int = 0) -> dict[str, Any] | None:
        """The headline numbers of one store for the primary classifier (svm, else logreg, mlp, diffmean)."""
        if not self.data.get("stores"):
            return None
        entry = self.stores[store]
        clf = next((c for c in PRIMARY_CLASSIFIERS if c in entry["classifiers"]), next(iter(entry["classifiers"]), None))
        if clf is None:
            return None
        res = entry["classifiers"][clf]
        control = [c for c in res.get("control_accuracy") or [] if c is not None]
        first = res.get("first_layer_95")
        jb = res.get("jailbreak_called_malicious")
        return {
            "classifier": clf, "classifier_name": CLASSIFIER_NAMES.get(clf, clf), "num_layers": entry["num_layers"],
            "first_95": first, "first_95_depth": res.get("first_layer_95_depth"),
            "best_layer": res.get("best_layer"), "best_accuracy": res.get("best_accuracy"),
            "control": sum(control) / len(control) if control else None,
            "bow": (entry.get("bow") or {}).get("accuracy"), "classes": entry["classes"], "n": entry["n"],
            "folds": self.data.get("folds"), "mode": self.data.get("mode"),
            "jailbreak_called_malicious": jb[entry["layers"].index(first)] if first is not None and jb else None,
            "warnings": list(entry.get("warnings", [])),
        }


def _load_stores(stores: Mapping[str, Any]) -> dict[str, ActivationStore]:
    loaded = {}
    for name, store in stores.items():
        loaded[name] = store if isinstance(store, ActivationStore) else ActivationStore.load(store)
    return loaded


def run_probe(stores: Mapping[str, str | Path | ActivationStore], options: ProbeOptions | None = None, *,
              command: str | None = None, progress: bool = True) -> ProbeResult:
    """Probe every layer of each store (``{display name: store or store folder}``).

    >>> import numpy as np
    >>> from ihs.store import ActivationStore
    >>> store = ActivationStore.from_arrays(np.random.default_rng(0).normal(size=(40, 3, 8)).astype("float32"),
    ...                                     ["normal", "malicious"] * 20)
    >>> result = run_probe({"demo": store}, ProbeOptions(classifiers=["diffmean"], bow=False), progress=False)
    >>> result.numbers()["classifier"]
    'diffmean'
    """
    options = options or ProbeOptions()
    options.validate()
    if not stores:
        raise IhsError("no store given")
    loaded = _load_stores(stores)
    classifiers = parse_classifiers(options.classifiers)
    depth = min(s.hidden.shape[1] - 1 for s in loaded.values())
    layers = parse_layers(options.layers, depth) if options.layers else None
    by = None if options.by == "none" else options.by
    total = count_tasks(loaded, classifiers, layers, options.cross)
    with progress_bar("probing", total=total, unit="layer fits", enabled=progress) as advance:
        data = probe_stores(loaded, classifiers, options.mode, options.classes, options.folds, options.seed,
                            options.control, options.bow, options.cross, layers, options.n_jobs, options.ci, advance,
                            by=by)
    if options.holdout:
        from ihs.guard.holdout import layerwise_holdout

        for entry, store in zip(data["stores"], loaded.values(), strict=True):
            chosen = layers if layers is not None else list(range(store.hidden.shape[1]))
            entry["holdout"] = layerwise_holdout(store.records, store.hidden, options.holdout, chosen,
                                                 seed=options.seed, progress=progress)
    if command:
        data["command"] = command
    return ProbeResult(data)


class ProbeStep(Step):
    name = "probe"
    options = ProbeOptions
    depends = ("extract",)
    help = ("Weak classifiers per layer (svm, mlp, logreg, diffmean); mode cv (stratified k-fold on de-duplicated "
            "prompts) or paper (70/30 split); layers in the layer grammar (null: all).")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        return {"extract": ctx.keys["extract"], "options": asdict(ctx.options(self.name))}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        options: ProbeOptions = ctx.options(self.name)
        name = ctx.model_dir.name
        command = command_line([str(ctx.store_dir())], [name], options, folder)
        result = run_probe({name: ctx.load_store()}, options, command=command, progress=ctx.progress)
        files = result.save(folder, figures=("png",))
        return {"outputs": [ProbeResult.FILE], "figures": [p.name for p in files if p.suffix == ".png"]}
