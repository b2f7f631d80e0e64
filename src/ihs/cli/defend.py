"""``ihs defend``: probe-conditioned steering as a defense, its evaluation and its sweep, over
:mod:`ihs.workflows.defense`.

* ``ihs defend direction STORE --out DIR``: per-layer steering directions from a store's training ids.
* ``ihs defend --model M --guard G --direction D --layers a:b --alpha A --data ... --out DIR``: one
  setting against the undefended model, unconditional steering and refuse-when-flagged.
* ``ihs defend sweep ... --layers a:b --layers c:d --alpha A --alpha B ...``: every layer range x alpha,
  the trade-off figure and the best setting under an over-refusal budget.

Outputs: ``defense.json``, ``generations.jsonl``, ``table.md`` and ``tradeoff.png``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.defense import (
    DefenseOptions,
    DirectionOptions,
    load_direction,
    load_records,
    load_scorer,
    run_defense,
    run_direction,
    select_records,
)

D = DefenseOptions
DATA_HELP = "NAME=SPEC, repeatable (builtin:jailbreak, builtin:malicious, builtin:normal, builtin:contrast, files)."
DIRECTION = "Directory from `ihs defend direction`."
app = common.Typer(no_args_is_help=False, invoke_without_command=True,
                   help="Probe-conditioned steering: steer toward refusal when an early-layer guard flags the input.")

Guard = Annotated[Path | None, typer.Option("--guard", "-g", help="Guard directory from `ihs guard fit`.")]
ProbeStore = Annotated[Path | None, typer.Option(help="Instead of --guard: fit a logreg probe on this store's "
                                                "training ids.")]
ProbeLayer = Annotated[int | None, typer.Option(help="Layer of the --probe-store probe (0 = embedding output).")]
Threshold = Annotated[float | None, typer.Option(help="Override the guard's threshold (a probability).")]
Data = Annotated[list[str] | None, typer.Option("--data", "-d", help=DATA_HELP + " Default: the four built-in sets.")]
Exclude = Annotated[list[Path] | None, typer.Option("--exclude-store", help="Drop prompts in this store or sharing "
                                                    "a goal with one (repeatable).")]
TuneFraction = Annotated[float, typer.Option(help="Share of goals on the tune side.")]
Limit = Annotated[str | None, typer.Option(help="First N prompts per class after exclusion and split: N or LABEL=N,N "
                                           "(e.g. jailbreak=48,32).")]
MaxNewTokens = Annotated[int, typer.Option(help=help_of(D, "max_new_tokens"))]
BatchSize = Annotated[int, typer.Option(help=help_of(D, "batch_size"))]
PromptOnly = Annotated[bool, typer.Option("--prompt-only", help=help_of(D, "prompt_only"))]
Positions = Annotated[str, typer.Option(help=help_of(D, "positions"))]
Full = Annotated[bool, typer.Option("--full", help=help_of(D, "full"))]
Quality = Annotated[bool, typer.Option("--quality/--no-quality", help=help_of(D, "quality"))]
Judge = Annotated[str, typer.Option(help=help_of(D, "judge"))]
MaxOverRefusal = Annotated[float | None, typer.Option(help=help_of(D, "max_over_refusal"))]


def _run(model: str, dtype: str, device: str | None, scorer: dict, direction: Path, data: list[str],
         exclude_store: list[Path], split: str, tune_fraction: float, limit: str | None, options: DefenseOptions,
         out: Path, sweep: bool) -> None:
    options.validate()
    directions = load_direction(direction)
    recs, selection = select_records(load_records(data), exclude_store, split, tune_fraction, limit)
    console.print("prompts: " + ", ".join(f"{k} {v}" for k, v in selection["counts"].items()) + f" ({split} split)")
    guard = load_scorer(**scorer)
    lm = common.load_model(model, dtype=dtype, device=device)
    meta = {"direction_path": str(direction), "guard_path": str(scorer["guard"]) if scorer["guard"] else None,
            "probe_store": str(scorer["probe_store"]) if scorer["probe_store"] else None,
            "probe_layer": scorer["probe_layer"], "selection": selection, "sweep": sweep}
    result = run_defense(lm, recs, guard, directions, options, meta=meta,
                         command=shlex.join(["ihs", *sys.argv[1:]]))
    result.save(common.out_dir(out))
    console.print(result.table())
    console.print(f"best ({result.data['best_rule']}): {result.data['best']}")
    console.print(f"wrote {out}/defense.json, generations.jsonl, table.md, tradeoff.png "
                  f"({result.data['seconds']:.0f} s)")


@app.callback()
def defend_cmd(
    ctx: typer.Context,
    model: common.OptionalModel = None,
    guard: Guard = None,
    probe_store: ProbeStore = None,
    probe_layer: ProbeLayer = None,
    threshold: Threshold = None,
    direction: Annotated[Path | None, typer.Option("--direction", help=DIRECTION)] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Steered layers, a:b (both ends) or a,b,c.")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Strength, in units of each layer's mean "
                                                "last-token norm.")] = None,
    data: Data = None,
    exclude_store: Exclude = None,
    split: Annotated[str, typer.Option(help="tune, eval or all: which side of the goal-hash split to use.")] = "all",
    tune_fraction: TuneFraction = 0.3,
    limit: Limit = None,
    max_new_tokens: MaxNewTokens = 24,
    batch_size: BatchSize = 16,
    prompt_only: PromptOnly = False,
    positions: Positions = "all",
    always: Annotated[str, typer.Option(help=help_of(D, "always"))] = "all",
    full: Full = False,
    quality: Quality = True,
    judge: Judge = "phrases",
    max_over_refusal: MaxOverRefusal = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")] = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
) -> None:
    """Evaluate one defense setting: undefended, conditional steering, unconditional steering, refuse-when-flagged."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--model", model), ("--direction", direction), ("--layers", layers),
                              ("--alpha", alpha), ("--out", out)) if v is None]
    if missing:
        raise IhsError(f"ihs defend needs {', '.join(missing)} (or a subcommand: direction, sweep)")
    options = DefenseOptions(layers=[layers], alphas=[alpha], max_new_tokens=max_new_tokens, batch_size=batch_size,
                             prompt_only=prompt_only, positions=positions, always=always, full=full, quality=quality,
                             judge=judge, max_over_refusal=max_over_refusal)
    scorer = dict(guard=guard, probe_store=probe_store, probe_layer=probe_layer, threshold=threshold)
    _run(model, dtype, device, scorer, direction, data or [], exclude_store or [], split, tune_fraction, limit,
         options, out, sweep=False)


@app.command("sweep")
def sweep_cmd(
    model: common.Model,
    direction: Annotated[Path, typer.Option("--direction", help=DIRECTION)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    layers: Annotated[list[str], typer.Option("--layers", help="Layer range, repeatable (a:b or a,b,c).")],
    alpha: Annotated[list[float], typer.Option("--alpha", help="Strength, repeatable.")],
    guard: Guard = None,
    probe_store: ProbeStore = None,
    probe_layer: ProbeLayer = None,
    threshold: Threshold = None,
    data: Data = None,
    exclude_store: Exclude = None,
    split: Annotated[str, typer.Option(help="tune (default for a sweep), eval or all.")] = "tune",
    tune_fraction: TuneFraction = 0.3,
    limit: Limit = None,
    max_new_tokens: MaxNewTokens = 24,
    batch_size: BatchSize = 16,
    prompt_only: PromptOnly = False,
    positions: Positions = "all",
    always: Annotated[str, typer.Option(help="Unconditional baseline: all, best (default), none.")] = "best",
    full: Full = False,
    quality: Quality = True,
    judge: Judge = "phrases",
    max_over_refusal: MaxOverRefusal = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
) -> None:
    """Every --layers x --alpha setting; trade-off figure; best setting under the over-refusal budget."""
    options = DefenseOptions(layers=list(layers), alphas=list(alpha), max_new_tokens=max_new_tokens,
                             batch_size=batch_size, prompt_only=prompt_only, positions=positions, always=always,
                             full=full, quality=quality, judge=judge, max_over_refusal=max_over_refusal)
    scorer = dict(guard=guard, probe_store=probe_store, probe_layer=probe_layer, threshold=threshold)
    _run(model, dtype, device, scorer, direction, data or [], exclude_store or [], split, tune_fraction, limit,
         options, out, sweep=True)


@app.command("direction")
def direction_cmd(
    store: Annotated[Path, typer.Argument(help="Activation store (from `ihs extract`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for direction.json + directions.safetensors.")],
    layers: Annotated[str | None, typer.Option(help=help_of(DirectionOptions, "layers"))] = None,
    positive: Annotated[str, typer.Option(help="Positive classes, comma-separated.")] = "malicious",
    negative: Annotated[str, typer.Option(help="Negative classes, comma-separated.")] = "normal",
    generations: Annotated[Path | None, typer.Option(help="generations.jsonl: refused minus complied prompts of the "
                                                     "positive classes instead.")] = None,
    train_fraction: Annotated[float, typer.Option(help=help_of(DirectionOptions, "train_fraction"))] = 0.75,
    seed: Annotated[int, typer.Option(help=help_of(DirectionOptions, "seed"))] = 0,
) -> None:
    """Difference-of-means directions (positive - negative, or refused - complied) on the store's training ids."""
    options = DirectionOptions(layers=layers, positive=common.csv(positive) or [], negative=common.csv(negative) or [],
                               train_fraction=train_fraction, seed=seed)
    dirs = run_direction(store, options, generations=generations)
    dirs.save(out)
    ratio = dirs.diff_norm / dirs.mean_norm
    mid = len(dirs.layers) // 2
    console.print(f"direction ({dirs.method}): {dirs.info['n_positive']} {dirs.positive} vs "
                  f"{dirs.info['n_negative']} {dirs.negative} training prompts, {len(dirs.heldout_ids)} held out; "
                  f"layers {dirs.layers[0]}..{dirs.layers[-1]}; |diff| / mean |h| at layer {dirs.layers[mid]}: "
                  f"{ratio[mid]:.3f}")
    console.print(f"saved: {out}")
