"""``ihs align``: align a model ourselves and follow the ihs measures checkpoint by checkpoint.

* ``ihs align sft --model M --out RUN``: LoRA (or full) SFT on refusals and helpful answers, with
  ``--association emotion|refusal`` for the auxiliary middle-layer term; checkpoints in RUN/checkpoints.
* ``ihs align dpo --model M --out RUN``: the same with DPO pairs (chosen vs rejected answers).
* ``ihs align track RUN --out DIR``: every checkpoint on the held-out goals: probes, lens, TKIC,
  refusal, ASR, over-refusal, perplexity; ``align_track.json``, ``align_track.md`` and figures.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.align import AlignOptions, AlignResult, TrackOptions, TrackResult, run_align, run_track
from ihs.workflows.base import help_of

A, T = AlignOptions, TrackOptions
app = common.Typer(no_args_is_help=True)


def _train_command(method: str):
    def cmd(
        model: common.Model,
        out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, log, run.json).")],
        train_data: Annotated[str | None, typer.Option("--data", help=help_of(A, "data"))] = None,
        steps: Annotated[int, typer.Option(help=help_of(A, "steps"))] = 100,
        save_every: Annotated[int, typer.Option(help=help_of(A, "save_every"))] = 25,
        batch_size: Annotated[int, typer.Option(help=help_of(A, "batch_size"))] = 4,
        learning_rate: Annotated[float, typer.Option(help=help_of(A, "learning_rate"))] = 2e-4,
        max_length: Annotated[int, typer.Option(help=help_of(A, "max_length"))] = 256,
        lora_r: Annotated[int, typer.Option(help=help_of(A, "lora_r"))] = 16,
        lora_alpha: Annotated[int, typer.Option(help=help_of(A, "lora_alpha"))] = 32,
        beta: Annotated[float, typer.Option(help=help_of(A, "beta"))] = 0.1,
        association: Annotated[str | None, typer.Option(help=help_of(A, "association"))] = None,
        assoc_layers: Annotated[str, typer.Option(help=help_of(A, "assoc_layers"))] = "L/3:L/2",
        assoc_weight: Annotated[float, typer.Option(help=help_of(A, "assoc_weight"))] = 1.0,
        assoc_center: Annotated[bool, typer.Option(help=help_of(A, "assoc_center"))] = False,
        chat_template: Annotated[str, typer.Option(help=help_of(A, "chat_template"))] = "auto",
        seed: Annotated[int, typer.Option(help=help_of(A, "seed"))] = 0,
        threads: Annotated[int | None, typer.Option(help=help_of(A, "threads"))] = None,
        progress: common.Progress = True,
    ) -> None:
        options = AlignOptions(method=method, data=train_data, steps=steps, save_every=save_every, batch_size=batch_size,
                               learning_rate=learning_rate, max_length=max_length, lora_r=lora_r,
                               lora_alpha=lora_alpha, beta=beta, association=association, assoc_layers=assoc_layers,
                               assoc_weight=assoc_weight, assoc_center=assoc_center, chat_template=chat_template, seed=seed, threads=threads)
        result = run_align(model, out, options, progress=progress)
        result.save(out)
        n = result.numbers()
        console.print(f"{method}: {n['steps']} steps, checkpoints at {n['checkpoints']}, loss {n['loss_first']} -> "
                      f"{n['loss_last']}, {n['wall_seconds']} s, peak {n['peak_rss_mib']} MiB; wrote "
                      f"{out / AlignResult.FILE}")

    cmd.__doc__ = {"sft": "Supervised fine-tuning on refusals (malicious) and helpful answers (benign).",
                   "dpo": "DPO: prefer the refusal / helpful answer over the compliant opening / refusal."}[method]
    return cmd


app.command("sft")(_train_command("sft"))
app.command("dpo")(_train_command("dpo"))


@app.command("track")
def track_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Alignment run folder made by `ihs align sft|dpo`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for align_track.json and figures.")],
    per_class: Annotated[int, typer.Option(help=help_of(T, "per_class"))] = 24,
    max_new_tokens: Annotated[int, typer.Option(help=help_of(T, "max_new_tokens"))] = 20,
    gen_batch: Annotated[int, typer.Option(help=help_of(T, "gen_batch"))] = 16,
    judge: Annotated[str, typer.Option(help=help_of(T, "judge"))] = "phrases",
    classifier: Annotated[str, typer.Option(help=help_of(T, "classifier"))] = "logreg",
    folds: Annotated[int, typer.Option(help=help_of(T, "folds"))] = 5,
    seed: Annotated[int, typer.Option(help=help_of(T, "seed"))] = 42,
    lens_layers: Annotated[str | None, typer.Option(help=help_of(T, "lens_layers"))] = None,
    perplexity_answers: Annotated[int, typer.Option(help=help_of(T, "perplexity_answers"))] = 24,
    steps: Annotated[str | None, typer.Option(help="Only these checkpoint steps, comma-separated.")] = None,
    reuse: Annotated[list[Path] | None, typer.Option(
        help="Output folder of another tracked run: its rows are reused for checkpoints with identical weights "
             "measured with the same options (the shared step 0). Repeatable.")] = None,
    progress: common.Progress = True,
) -> None:
    """Measure every checkpoint of an alignment run on the held-out goals (one fixed evaluation set)."""
    step_list = [int(s) for s in common.csv(steps) or []] or None
    options = TrackOptions(per_class=per_class, max_new_tokens=max_new_tokens, gen_batch=gen_batch, judge=judge,
                           classifier=classifier, folds=folds, seed=seed, lens_layers=lens_layers,
                           perplexity_answers=perplexity_answers, steps=step_list)
    out = common.out_dir(out)
    command = shlex.join(["ihs", "align", "track", str(run_dir), "--out", str(out), "--per-class", str(per_class),
                          "--max-new-tokens", str(max_new_tokens)])
    for folder in reuse or []:
        if not folder.is_dir():
            raise IhsError(f"--reuse {folder} is not a folder (give the --out folder of another ihs align track)")
    result = run_track(run_dir, options, out=out, command=command, progress=progress, reuse=reuse or [])
    files = result.save(out)
    console.print(result.markdown())
    console.print(f"wrote {out / TrackResult.FILE} ({len(result.rows)} checkpoints) and {len(files) - 1} more file(s)")
