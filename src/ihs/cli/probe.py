"""``ihs probe``: per-layer weak classifiers on one or more activation stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ihs.cli import common
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.probe import ProbeOptions, ProbeResult, command_line, run_probe

H = ProbeOptions


def probe_cmd(
    stores: Annotated[list[Path], typer.Argument(help="One or more store directories made by `ihs extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for probe.json and figures.")],
    classifiers: Annotated[str, typer.Option("--classifiers", "-c", help=help_of(H, "classifiers"))]
    = "svm,mlp,logreg,diffmean",
    mode: Annotated[str, typer.Option(help=help_of(H, "mode"))] = "cv",
    classes: Annotated[str | None, typer.Option(help=help_of(H, "classes"))] = None,
    folds: Annotated[int, typer.Option(help=help_of(H, "folds"))] = 5,
    seed: Annotated[int, typer.Option(help=help_of(H, "seed"))] = 42,
    layers: common.Layers = None,
    names: Annotated[str | None, typer.Option(help="Display names, comma-separated, one per store.")] = None,
    control: Annotated[bool, typer.Option("--control/--no-control", help=help_of(H, "control"))] = True,
    bow: Annotated[bool, typer.Option("--bow/--no-bow", help=help_of(H, "bow"))] = True,
    cross: Annotated[bool, typer.Option("--cross/--no-cross", help=help_of(H, "cross"))] = True,
    ci: Annotated[str, typer.Option(help=help_of(H, "ci"))] = "wilson",
    n_jobs: Annotated[int, typer.Option("--n-jobs", "-j", help=help_of(H, "n_jobs"))] = 1,
    formats: Annotated[str, typer.Option(help="Figure formats: png, svg, pdf.")] = "png,svg",
    by: Annotated[str | None, typer.Option(help=help_of(H, "by"))] = None,
    holdout: Annotated[str | None, typer.Option(help=help_of(H, "holdout"))] = None,
) -> None:
    """Weak-to-Strong Explanation: does each layer's last-token state separate the classes?"""
    options = ProbeOptions(classifiers=common.csv(classifiers) or [], mode=mode, classes=common.csv(classes),
                           folds=folds, seed=seed, layers=layers, control=control, bow=bow, cross=cross, ci=ci,
                           n_jobs=n_jobs, by=by or "auto", holdout=holdout)
    name_list = common.csv(names) if names else [Path(s).name or str(s) for s in stores]
    if len(name_list) != len(stores):
        raise IhsError(f"--names has {len(name_list)} names for {len(stores)} stores")
    unique: dict[str, Path] = {}
    for path, name in zip(stores, name_list, strict=True):
        label, i = name, 2
        while label in unique:
            label, i = f"{name}-{i}", i + 1
        unique[label] = path
    out = common.out_dir(out)
    command = command_line([str(s) for s in stores], common.csv(names), options, out)
    result = run_probe(unique, options, command=command)
    files = result.save(out, figures=common.csv(formats) or [])
    print_summary(result)
    console.print(f"wrote {out / ProbeResult.FILE} and {len(files) - 1} figure file(s) in {out}  "
                  f"({result.data['wall_seconds']:.1f} s)")


def print_summary(result: ProbeResult) -> None:
    from rich.table import Table

    for entry in result.stores:
        n = ", ".join(f"{c} {v}" for c, v in entry["n"].items())
        table = Table(title=escape(f"{entry['name']}  (L={entry['num_layers']}; {n}; chance {entry['chance']:.2f})"),
                      title_justify="left")
        for col in ("probe", "1st>=.95 (depth)", "best (layer)", "layer 0", "control", "FPR*", "jb->mal*"):
            table.add_column(col)
        for clf, res in entry["classifiers"].items():
            first = res["first_layer_95"]
            pos = entry["layers"].index(first) if first is not None else None
            ctrl = [c for c in res.get("control_accuracy") or [] if c is not None]
            layer0 = entry["confound"]["layer0_accuracy"].get(clf)
            table.add_row(
                clf,
                f"{first} ({res['first_layer_95_depth']:.2f})" if first is not None else "never",
                f"{res['best_accuracy']:.3f} ({res['best_layer']})",
                f"{layer0:.3f}" if layer0 is not None else "n/a",
                f"{sum(ctrl) / len(ctrl):.3f}" if ctrl else "-",
                f"{res['contrast_fpr'][pos]:.2f}" if pos is not None and "contrast_fpr" in res else "-",
                f"{res['jailbreak_called_malicious'][pos]:.2f}"
                if pos is not None and "jailbreak_called_malicious" in res else "-",
            )
        console.print(table)
        bow = entry.get("bow")
        if bow:
            console.print(f"  bag-of-words baseline: {bow['accuracy']:.3f} [{bow['ci_low']:.3f}, {bow['ci_high']:.3f}]"
                          + (f"; contrast FPR {bow['contrast_fpr']:.2f}" if "contrast_fpr" in bow else ""))
        console.print("  control: mean shuffled-label accuracy; FPR: contrast prompts called malicious; "
                      "jb->mal: jailbreak prompts called malicious; * at the first layer reaching 0.95")
        grouped = entry.get("by")
        if grouped:
            for clf in entry["classifiers"]:
                parts = []
                for g, ge in grouped["groups"].items():
                    r = ge["classifiers"][clf]
                    best = max((a for a in r["accuracy"] if a is not None and a == a), default=float("nan"))
                    parts.append(f"{g} (n={ge['n']}) 1st>=.95 {r['first_layer_95']}, best {best:.3f}")
                console.print(escape(f"  {clf} by {grouped['tag']}: " + "; ".join(parts)))
        for w in entry["warnings"]:
            console.print(f"  [yellow]warning:[/] {escape(w)}")
    for w in result.data.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    for entry in result.stores:
        print_holdout(entry)
    for t in result.data.get("cross_transfer", []):
        accs = ", ".join(f"{clf} first>=0.95 at {r['first_layer_95']}, best {max(r['accuracy']):.3f}"
                         for clf, r in t["classifiers"].items())
        console.print(escape(f"transfer {t['train']} -> {t['test']} (n={t['n_test']}): {accs}"))


def print_holdout(entry: dict) -> None:
    """One line per layer of a store's leave-one-group-out probe, and the worst groups at the best layer."""
    h = entry.get("holdout")
    if not h:
        return
    best = h["best_layer"]
    console.print(escape(f"{entry['name']}: leave-one-{h['key']}-out, logistic probe per layer (worst / mean group "
                         f"AUROC); bag-of-words {_f(h['bow']['worst_auroc'])} / {_f(h['bow']['mean_auroc'])}"))
    console.print("  " + "; ".join(f"{v}: {_f(s['worst_auroc'])} / {_f(s['mean_auroc'])}" for v, s in
                                   h["per_layer"].items()))
    if best is not None:
        s = h["summary"][f"layer {best}"]
        console.print(escape(f"  best worst-group layer {best}: worst {s['worst_group']} {_f(s['worst_auroc'])}, lowest "
                             f"TPR {s['min_tpr_group']} {_f(s['min_tpr'])}, highest FPR {s['max_fpr_group']} "
                             f"{_f(s['max_fpr'])}"))


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
