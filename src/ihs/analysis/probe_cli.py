"""``ihs probe``: per-layer weak classifiers on one or more activation stores."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from ihs.errors import IhsError

CLF_HELP = "Comma-separated: svm, mlp, logreg, diffmean."
MODE_HELP = ("cv: stratified k-fold on de-duplicated prompts, mean, 95% interval, AUROC, F1; "
             "paper: the paper's 70/30 split (random_state=--seed, 42 as in the paper).")
CLASSES_HELP = ("Classes to train on, e.g. normal,malicious or normal,malicious,jailbreak "
                "(default: all labels but contrast and jailbreak, which become transfer sets).")


def probe_cmd(
    stores: Annotated[list[Path], typer.Argument(help="One or more store directories made by `ihs extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for probe.json and figures.")],
    classifiers: Annotated[str, typer.Option("--classifiers", "-c", help=CLF_HELP)] = "svm,mlp,logreg,diffmean",
    mode: Annotated[str, typer.Option(help=MODE_HELP)] = "cv",
    classes: Annotated[str | None, typer.Option(help=CLASSES_HELP)] = None,
    folds: Annotated[int, typer.Option(help="Folds in cv mode.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for splits, label shuffles and the MLP.")] = 42,
    layers: Annotated[str | None, typer.Option(help="Layer indices to probe, e.g. 0-10,15 (default: all).")] = None,
    names: Annotated[str | None, typer.Option(help="Display names, comma-separated, one per store.")] = None,
    control: Annotated[bool, typer.Option("--control/--no-control", help="Shuffled-label control.")] = True,
    bow: Annotated[bool, typer.Option("--bow/--no-bow", help="Bag-of-words baseline on the raw prompts.")] = True,
    cross: Annotated[bool, typer.Option("--cross/--no-cross", help="Cross-store transfer (same model).")] = True,
    ci: Annotated[str, typer.Option(help="95% interval: wilson (pooled predictions) or t (over folds).")] = "wilson",
    n_jobs: Annotated[int, typer.Option("--n-jobs", "-j", help="Worker processes across layers.")] = 1,
    formats: Annotated[str, typer.Option(help="Figure formats: png, svg, pdf.")] = "png,svg",
    by: Annotated[str | None, typer.Option(
        help="Also report accuracy per value of this tag, e.g. lang (default: lang when the store holds two "
             "or more languages; 'none' to switch off).")] = None,
) -> None:
    """Weak-to-Strong Explanation: does each layer's last-token state separate the classes?"""
    try:
        _run(stores, out, classifiers, mode, classes, folds, seed, layers, names, control, bow, cross, ci, n_jobs,
             formats, by)
    except IhsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _command_line(stores, out, classifiers, mode, classes, folds, seed, layers, names, control, bow, cross, ci) -> str:
    """The canonical command, written under every figure and into probe.json."""
    parts = ["ihs", "probe", *[str(s) for s in stores], "--classifiers", classifiers, "--mode", mode]
    if classes:
        parts += ["--classes", classes]
    if mode == "cv" and folds != 5:
        parts += ["--folds", str(folds)]
    if seed != 42:
        parts += ["--seed", str(seed)]
    if layers:
        parts += ["--layers", layers]
    if names:
        parts += ["--names", names]
    parts += [flag for flag, on in (("--no-control", not control), ("--no-bow", not bow), ("--no-cross", not cross)) if on]
    if ci != "wilson":
        parts += ["--ci", ci]
    parts += ["--out", str(out)]
    return shlex.join(parts)


def _run(stores, out, classifiers, mode, classes, folds, seed, layers, names, control, bow, cross, ci, n_jobs,
         formats, by=None) -> None:
    from ihs.analysis.probes import count_tasks, parse_classifiers, probe_stores
    from ihs.layers import parse_layers
    from ihs.plots.probes import plot_all
    from ihs.progress import console, progress_bar
    from ihs.store import ActivationStore

    clf_list = parse_classifiers(classifiers)
    if mode not in ("cv", "paper"):
        raise IhsError(f"unknown mode {mode!r}; choose cv or paper")
    if ci not in ("wilson", "t"):
        raise IhsError(f"unknown --ci {ci!r}; choose wilson or t")
    if n_jobs < 1:
        raise IhsError(f"--n-jobs must be at least 1, got {n_jobs}")
    fmt_list = [f.strip() for f in formats.split(",") if f.strip()]
    bad_fmt = [f for f in fmt_list if f not in ("png", "svg", "pdf")]
    if bad_fmt or not fmt_list:
        raise IhsError(f"unknown figure format {bad_fmt[0] if bad_fmt else '(none)'!r}; choose png, svg or pdf")
    name_list = [n.strip() for n in names.split(",")] if names else [Path(s).name or str(s) for s in stores]
    if len(name_list) != len(stores):
        raise IhsError(f"--names has {len(name_list)} names for {len(stores)} stores")
    loaded = {}
    for path, name in zip(stores, name_list, strict=True):
        unique, i = name, 2
        while unique in loaded:
            unique, i = f"{name}-{i}", i + 1
        loaded[unique] = ActivationStore.load(path)
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    depths = {s.hidden.shape[1] - 1 for s in loaded.values()}
    layer_list = parse_layers(layers, min(depths)) if layers else None
    command = _command_line(stores, out, classifiers, mode, classes, folds, seed, layers, names, control, bow, cross, ci)

    total = count_tasks(loaded, clf_list, layer_list, cross)
    with progress_bar("probing", total=total, unit="layer fits") as advance:
        result = probe_stores(loaded, clf_list, mode, class_list, folds, seed, control, bow, cross, layer_list,
                              n_jobs, ci, advance, by="auto" if by is None else (None if by == "none" else by))
    if by:
        command += f" --by {shlex.quote(by)}"
    result["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=1, allow_nan=True), encoding="utf-8")
    figures = plot_all(result, out, caption=command, formats=fmt_list)
    _print_summary(result, console)
    console.print(f"wrote {out / 'probe.json'} and {len(figures)} figure file(s) in {out}  "
                  f"({result['wall_seconds']:.1f} s)")


def _print_summary(result: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    for entry in result["stores"]:
        n = ", ".join(f"{c} {v}" for c, v in entry["n"].items())
        table = Table(title=escape(f"{entry['name']}  (L={entry['num_layers']}; {n}; chance {entry['chance']:.2f})"),
                      title_justify="left")
        for col in ("probe", "1st>=.95 (depth)", "best (layer)", "layer 0", "control", "FPR*", "jb->mal*"):
            table.add_column(col)
        for clf, res in entry["classifiers"].items():
            first = res["first_layer_95"]
            pos = entry["layers"].index(first) if first is not None else None
            ctrl = res.get("control_accuracy")
            table.add_row(
                clf,
                f"{first} ({res['first_layer_95_depth']:.2f})" if first is not None else "never",
                f"{res['best_accuracy']:.3f} ({res['best_layer']})",
                f"{entry['confound']['layer0_accuracy'].get(clf, float('nan')):.3f}",
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
            for clf, _ in entry["classifiers"].items():
                parts = []
                for g, ge in grouped["groups"].items():
                    r = ge["classifiers"][clf]
                    best = max((a for a in r["accuracy"] if a == a), default=float("nan"))
                    parts.append(f"{g} (n={ge['n']}) 1st>=.95 {r['first_layer_95']}, best {best:.3f}")
                console.print(escape(f"  {clf} by {grouped['tag']}: " + "; ".join(parts)))
        for w in entry["warnings"]:
            console.print(f"  [yellow]warning:[/] {escape(w)}")
    for w in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    for t in result.get("cross_transfer", []):
        accs = ", ".join(f"{clf} first>=0.95 at {r['first_layer_95']}, best {max(r['accuracy']):.3f}"
                         for clf, r in t["classifiers"].items())
        console.print(escape(f"transfer {t['train']} -> {t['test']} (n={t['n_test']}): {accs}"))
