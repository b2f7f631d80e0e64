"""``ihs lens``: emotion association, Top-K Intermediate Consistency and the cross-model table of stores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ihs.cli import common
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.lens import LensOptions, LensResult, command_line, run_lens, store_names

H = LensOptions


def lens_cmd(
    stores: Annotated[list[Path], typer.Argument(help="Store directories written by `ihs extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for lens.json and figures.")],
    layers: Annotated[str | None, typer.Option("--layers", help=help_of(H, "layers"))] = None,
    heatmap_layers: Annotated[str | None, typer.Option("--heatmap-layers", help=help_of(H, "heatmap_layers"))] = None,
    lexicon: Annotated[Path | None, typer.Option("--lexicon", help=help_of(H, "lexicon"))] = None,
    tuned: Annotated[bool, typer.Option("--tuned", help=help_of(H, "tuned"))] = False,
    tuned_data: Annotated[list[str] | None, typer.Option("--tuned-data", help=help_of(H, "tuned_data"))] = None,
    tuned_limit: Annotated[int | None, typer.Option("--tuned-limit", help=help_of(H, "tuned_limit"))] = 100,
    tuned_epochs: Annotated[int, typer.Option("--tuned-epochs", help=help_of(H, "tuned_epochs"))] = 3,
    tuned_positions: Annotated[int, typer.Option("--tuned-positions", help=help_of(H, "tuned_positions"))] = 12,
    tuned_continue: Annotated[int, typer.Option("--tuned-continue", help=help_of(H, "tuned_continue"))] = 24,
    retrain: Annotated[bool, typer.Option("--retrain", help=help_of(H, "retrain"))] = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model for the tuned lens and tokenizer (default: the store's).")] = None,
    refusal: Annotated[list[Path] | None, typer.Option(
        "--refusal", help=help_of(H, "refusal") + " Repeatable.")] = None,
    margin: Annotated[float, typer.Option("--margin", help=help_of(H, "margin"))] = 0.1,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write figures.")] = True,
    classes: Annotated[str | None, typer.Option("--classes", help=help_of(H, "classes"))] = None,
    names: Annotated[str | None, typer.Option(
        help="Display names, comma-separated, one per store (default: the store folders' names).")] = None,
) -> None:
    """Logit lens: emotion tokens per layer and class, Top-K Intermediate Consistency, cross-model table."""
    options = LensOptions(layers=layers, heatmap_layers=heatmap_layers, lexicon=str(lexicon) if lexicon else None,
                          margin=margin, tuned=tuned, tuned_data=tuned_data or None, tuned_limit=tuned_limit,
                          tuned_epochs=tuned_epochs, tuned_positions=tuned_positions, tuned_continue=tuned_continue,
                          retrain=retrain, refusal=[str(p) for p in refusal] if refusal else None,
                          classes=common.csv(classes))
    given = common.csv(names)
    name_list = given or store_names(stores)
    if len(name_list) != len(stores):
        raise IhsError(f"--names has {len(name_list)} names for {len(stores)} stores")
    if len(set(name_list)) != len(name_list):
        raise IhsError("--names repeats a name; give each store its own")
    out = common.out_dir(out)
    command = command_line([str(s) for s in stores], given, options, out, model)
    result = run_lens(dict(zip(name_list, [str(s) for s in stores], strict=True)), options, model=model,
                      command=command, progress=sys.stderr.isatty(), log=lambda m: console.print(escape(m)))
    result.save(out, figures=figures)
    for entry in result.models:
        console.print(summary_line(entry))
    console.print(escape(f"wrote {out / LensResult.FILE} and {out / LensResult.TABLE_FILE}"))


def summary_line(entry: dict[str, Any]) -> str:
    """One line per store: TKIC top-1 per class and the first layer of negative dominance, per lens."""
    parts = [escape(f"{entry['store_name']}:")]
    for lens_name, result in entry["lenses"].items():
        scal = {label: c["scalar"]["top1"] for label, c in result["consistency"].items()}
        dom = result["association"]["negative_dominance"]["topk"]
        parts.append(f"\\[{lens_name}] TKIC top-1 " + ", ".join(f"{k}={v}" for k, v in scal.items())
                     + f"; negative dominates for malicious from layer {dom['first']}")
    return " ".join(parts)
