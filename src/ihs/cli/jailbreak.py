"""``ihs jailbreak``: per jailbreak input, recognised early? middle layers negative? refused? (claim 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.jailbreak import JailbreakOptions, JailbreakResult, command_line, run_jailbreak

H = JailbreakOptions


def jailbreak_cmd(
    store: Annotated[Path, typer.Argument(help="Store (ihs extract) holding normal, malicious and jailbreak rows.")],
    generations: Annotated[Path, typer.Option(help="generations.jsonl from ihs generate on the same prompts.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    middle: Annotated[str | None, typer.Option(
        help="Middle layers a:b, inclusive (default: the middle third, ceil(L/3):floor(2L/3)).")] = None,
    early_layer: Annotated[int | None, typer.Option(help=help_of(H, "early_layer"))] = None,
    classifier: Annotated[str, typer.Option(help=help_of(H, "classifier"))] = "svm",
    lexicon: Annotated[Path | None, typer.Option(help="Emotion lexicon JSON (default: the built-in one).")] = None,
) -> None:
    """Per jailbreak input: recognised as malicious early? middle layers negative? refused? (claim 3)."""
    options = JailbreakOptions(middle=middle, early_layer=early_layer, classifier=classifier)
    out = common.out_dir(out)
    command = command_line(store, generations, options, out, lexicon=lexicon)
    result = run_jailbreak(store, generations, options, lexicon=lexicon, command=command)
    result.save(out)
    print_summary(result, out)


def print_summary(result: JailbreakResult, out: Path) -> None:
    for name, g in result.groups.items():
        neg = g["mid_negative_share"]["mean"]
        console.print(f"{name:>22}: n={g['n']:<4} early-recognised {g['early_recognised']}  "
                      f"mid-negative {neg}  refusal {g['refusal_rate']}")
    console.print(f"wrote {out}/jailbreak.json, jailbreak_table.csv, jailbreak_table.jsonl, jailbreak.png")
