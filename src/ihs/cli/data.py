"""``ihs data``: list the built-in sets, look at any spec, and run the surface baseline.

User text is escaped before rich renders it: prompts are adversarial by nature and may contain
rich markup such as ``[bold]`` or ``[link=...]``.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ihs.cli import common
from ihs.data.builtin import BUILTIN_NAMES, list_builtin
from ihs.data.loaders import load_dataset_spec
from ihs.data.validate import clean, require_min

app = common.Typer()


def _console() -> Console:
    return Console(soft_wrap=False)


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the built-in prompt sets with size, version and categories."""
    sets = list_builtin()
    if as_json:
        typer.echo(json.dumps(sets, indent=2))
        return
    table = Table(title="Built-in prompt sets (use as builtin:NAME)")
    for col in ("name", "size", "version", "description", "categories / families"):
        table.add_column(col, overflow="fold")
    for s in sets:
        groups = _counts(s["families"]) if s["families"] else _counts(s["categories"])
        size = str(s["size"]) if s["available"] else "missing"
        table.add_row(escape(s["name"]), size, escape(s["version"]), escape(s["description"]), escape(groups))
    _console().print(table)


def _load(spec: str):
    if spec in BUILTIN_NAMES:
        spec = f"builtin:{spec}"
    return load_dataset_spec(spec)


@app.command("show")
def show_cmd(
    spec: str = typer.Argument(..., help="A built-in name (normal, malicious, ...) or any dataset spec."),
    n: int = typer.Option(5, "--n", "-n", min=0, help="How many prompts to show."),
    seed: int | None = typer.Option(None, "--seed", help="Show a random sample drawn with this seed (default: the first N)."),
    max_chars: int = typer.Option(400, "--max-chars", min=20, help="Cut longer prompts to this many characters."),
) -> None:
    """Show N prompts of a set with their id, label and category/family tags."""
    records = _load(spec)
    idx = list(range(len(records)))
    if seed is not None:
        idx = sorted(random.Random(seed).sample(idx, min(n, len(idx))))
    idx = idx[:n]
    labels = Counter(r.label for r in records)
    console = _console()
    console.print(f"[bold]{escape(spec)}[/bold]: {len(records)} prompts; labels: {escape(_counts(dict(labels)))}")
    for key in ("category", "family"):
        counts = Counter(str(r.tags[key]) for r in records if r.tags.get(key))
        if counts:
            console.print(f"{key}: {escape(_counts(dict(sorted(counts.items()))))}")
    table = Table(show_lines=True)
    for col in ("id", "label", "tags", "prompt"):
        table.add_column(col, overflow="fold")
    for i in idx:
        r = records[i]
        tag_keys = ("category", "family", "template_id", "form", "trigger")
        tags = ", ".join(f"{k}={r.tags[k]}" for k in tag_keys if k in r.tags)
        text = r.text if len(r.text) <= max_chars else r.text[: max_chars - 1] + "…"
        table.add_row(r.id, escape(r.label), escape(tags), escape(text))
    console.print(table)


@app.command("baseline")
def baseline_cmd(
    normal: str = typer.Option("builtin:normal", "--normal", help="Spec of the normal prompts."),
    malicious: str = typer.Option("builtin:malicious", "--malicious", help="Spec of the malicious prompts."),
    contrast: str = typer.Option(
        "builtin:contrast", "--contrast", help="Spec of benign prompts with trigger words; 'none' to skip."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold split and the label shuffle."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Bag-of-words baseline: how well surface words alone separate normal from malicious."""
    from ihs.analysis.surface import surface_report

    specs = [("normal", normal), ("malicious", malicious)]
    if contrast.strip().lower() not in ("", "none"):
        specs.append(("contrast", contrast))
    records = []
    for name, spec in specs:
        records.extend(load_dataset_spec(f"builtin:{spec}" if spec in BUILTIN_NAMES else spec, label=name))
    kept, cleaning = clean(records, across="keep")
    require_min([r for r in kept if r.label in ("normal", "malicious")], n=max(10, folds), labels=["normal", "malicious"])
    by = {name: [r.text for r in kept if r.label == name] for name, _ in specs}
    report = surface_report(by["normal"], by["malicious"], by.get("contrast"), folds=folds, seed=seed)
    report["specs"] = dict(specs)
    report["cleaning"] = cleaning
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = _console()
    acc, sh = report["cv_accuracy"], report["shuffled_accuracy"]
    n = report["n"]
    console.print(f"[bold]Surface baseline[/bold] ({escape(report['model'])}, {folds}-fold CV, seed {seed})")
    console.print(f"normal {n['normal']} vs malicious {n['malicious']} unique prompts")
    console.print(f"accuracy          {acc['mean']:.3f}  (95% CI {acc['ci95'][0]:.3f}-{acc['ci95'][1]:.3f})")
    console.print(f"shuffled labels   {sh['mean']:.3f}  (95% CI {sh['ci95'][0]:.3f}-{sh['ci95'][1]:.3f})")
    console.print(f"chance (majority) {report['chance']:.3f}")
    if report["contrast_called_malicious"] is not None:
        console.print(
            f"contrast called malicious: {report['contrast_called_malicious']:.3f} of {n['contrast']} "
            f"(mean p(malicious) {report['contrast_mean_p_malicious']:.3f})"
        )
    for side in ("malicious", "normal"):
        words = ", ".join(w for w, _ in report["top_features"][side])
        console.print(f"top {side} n-grams: {escape(words)}")
