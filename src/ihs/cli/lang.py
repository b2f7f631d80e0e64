"""``ihs lang``: the cross-lingual analysis of one or more stores, and refusal per language of generations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ihs.cli import common
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.languages import (
    LanguagesOptions,
    LanguagesResult,
    check_formats,
    command_line,
    fmt_value,
    run_languages,
)

H = LanguagesOptions


def lang_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for lang.json and figures.")],
    stores: Annotated[list[Path] | None, typer.Argument(
        help="Store directories made by `ihs extract` with a lang tag (none: refusal from --generations only).")] = None,
    generations: Annotated[list[Path] | None, typer.Option(
        "--generations", "-g", help="generations.jsonl of `ihs generate` (or its folder), repeatable; "
        "refusal per language. Named by the model in its refusal.json.")] = None,
    tag: Annotated[str, typer.Option(help=help_of(H, "tag"))] = "lang",
    source: Annotated[str, typer.Option(help=help_of(H, "source"))] = "en",
    classes: Annotated[str, typer.Option(help=help_of(H, "classes"))] = "normal,malicious",
    classifiers: Annotated[str, typer.Option("--classifiers", "-c", help=help_of(H, "classifiers"))] = "svm",
    folds: Annotated[int, typer.Option(help=help_of(H, "folds"))] = 5,
    seed: Annotated[int, typer.Option(help=help_of(H, "seed"))] = 42,
    layers: common.Layers = None,
    names: Annotated[str | None, typer.Option(help="Display names, comma-separated, one per store.")] = None,
    control: Annotated[bool, typer.Option("--control/--no-control", help=help_of(H, "control"))] = True,
    formats: Annotated[str, typer.Option(help="Figure formats: png, svg, pdf.")] = "png",
) -> None:
    """Languages: per-language probe accuracy, cross-lingual transfer, lens emotion/script and refusal by language."""
    stores, generations = stores or [], generations or []
    options = LanguagesOptions(tag=tag, source=source, classes=common.csv(classes) or [],
                               classifiers=common.csv(classifiers) or [], folds=folds, seed=seed, layers=layers,
                               control=control)
    options.validate()
    fmts = check_formats(common.csv(formats) or [])
    if not fmts:
        raise IhsError("unknown figure format '(none)'; choose png, svg or pdf")
    if not stores and not generations:
        raise IhsError("give at least one store or --generations")
    given = [n.strip() for n in names.split(",")] if names else None
    name_list = given or [Path(s).name for s in stores]
    if len(name_list) != len(stores):
        raise IhsError(f"--names has {len(name_list)} names for {len(stores)} stores")
    out = common.out_dir(out)
    command = command_line([str(s) for s in stores], given, options, [str(g) for g in generations], out)
    result = run_languages(dict(zip(name_list, [str(s) for s in stores], strict=True)), options,
                           generations=generations, command=command)
    files = result.save(out, figures=fmts)
    print_summary(result)
    console.print(escape(f"wrote {out / LanguagesResult.FILE}, {LanguagesResult.MD_FILE} and "
                         f"{len(files) - 2} figure file(s) in {out}"))


def print_summary(result: LanguagesResult) -> None:
    """One table per store (per language: n, CV, transfer, lens numbers) and refusal lines per model."""
    from rich.table import Table

    clf = result.classifier
    for res in result.models:
        s = res["summary"]
        early = s["early_layers"]
        table = Table(title=escape(f"{res['name']} (L={res['num_layers']}; early = blocks {early[0]}-{early[-1]}; "
                                   f"{clf})"), title_justify="left")
        for col in ("lang", "n", "CV 1st>=.95", "CV early", f"{res['source']}->X 1st", f"{res['source']}->X early",
                    f"X->{res['source']} early", "neg mid mal/norm", "own script mid"):
            table.add_column(escape(col))
        for g, row in s["rows"].items():
            n = res["n"].get(g, {})
            table.add_row(
                escape(g), "/".join(str(n.get(c, 0)) for c in res["classes"]),
                fmt_value(row.get(f"{clf}_cv_first_95")), fmt_value(row.get(f"{clf}_cv_early_mean")),
                fmt_value(row.get(f"{clf}_forward_first_95")), fmt_value(row.get(f"{clf}_forward_early_mean")),
                fmt_value(row.get(f"{clf}_reverse_early_mean")),
                f"{fmt_value(row.get('neg_mid_malicious'))}/{fmt_value(row.get('neg_mid_normal'))}",
                fmt_value(row.get("own_script_mid")),
            )
        console.print(table)
    for model, r in result.refusal.items():
        parts = []
        for g, entry in r["groups"].items():
            m = entry.get("malicious")
            if m:
                parts.append(f"{g} {m['refusal_rate']:.2f} ({m['refused']}/{m['n']}; English phrases "
                             f"{m['refused_english_phrases']})")
        console.print(escape(f"refusal of malicious prompts, {model}: " + "; ".join(parts)))
