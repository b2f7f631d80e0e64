"""``ihs attack``: find where a model's recognition of harm and its answer part ways, attack there, retrain.

* ``ihs attack scan --model M --out DIR``: measure attacks (training-side families and mutations, or the
  held-out ones with ``--side eval``) and rank families, templates, kinds and mutations by the gap between
  "the early probe says malicious" and "the model complies"; ``attack_scan.json``.
* ``ihs attack generate --scan DIR --out DIR``: new training-side attacks weighted by a scan (``--random``:
  uniform); ``attacks.jsonl``. ``--paraphrase --model M``: M also paraphrases half of the requests.
* ``ihs attack defend RUN --layers 18:21 --alpha 0.05``: the probe-conditioned steering defense and
  refuse-when-flagged on the run's held-out prompts (the base model, or a round's with ``--round``).
* ``ihs attack rounds --model M --out RUN``: adversarial-training rounds (``--arm targeted|random``), resumable;
  ``RUN/attack.json`` and ``RUN/attack.md`` summarise every finished round.
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
from ihs.workflows.attack import AttackOptions, run_defenses, run_generate, run_rounds, run_scan, summarise
from ihs.workflows.base import help_of

A = AttackOptions
app = common.Typer(no_args_is_help=True)

Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Prompts = Annotated[int, typer.Option(help=help_of(A, "prompts"))]
Seed = Annotated[int, typer.Option(help=help_of(A, "seed"))]
Families = Annotated[str | None, typer.Option(help=help_of(A, "families"))]
Mutations = Annotated[str | None, typer.Option(help=help_of(A, "mutations"))]
Paraphrase = Annotated[bool, typer.Option("--paraphrase/--no-paraphrase", help=help_of(A, "paraphrase"))]


def _command() -> str:
    return shlex.join(["ihs", *sys.argv[1:]])


@app.command("scan")
def scan_cmd(
    model: common.Model,
    out: Out,
    side: Annotated[str, typer.Option(help="train (training families and mutations) or eval (held-out ones).")] = "train",
    prompts: Prompts = 48,
    max_new_tokens: Annotated[int, typer.Option(help=help_of(A, "max_new_tokens"))] = 32,
    probe_per_class: Annotated[int, typer.Option(help=help_of(A, "probe_per_class"))] = 24,
    families: Families = None,
    mutations: Mutations = None,
    seed: Seed = 0,
    progress: common.Progress = True,
) -> None:
    """Weakness scan: per family, template, kind and mutation, ASR and the probe-says-malicious-but-complied gap."""
    options = AttackOptions(prompts=prompts, max_new_tokens=max_new_tokens, probe_per_class=probe_per_class,
                            families=families, mutations=mutations, seed=seed)
    out = common.out_dir(out)
    result = run_scan(model, options, side=side, command=_command(), progress=progress)
    result.save(out)
    for by in ("family", "kind"):
        top = ", ".join(f"{g['name']} (gap {g['gap']['rate']}, ASR {g['asr']['rate']})" for g in result.top(by, 3))
        console.print(f"weakest {by}: {top}")
    console.print(f"wrote {out / result.FILE}")


@app.command("generate")
def generate_cmd(
    out: Out,
    scan: Annotated[Path | None, typer.Option(help="A scan (attack_scan.json or its folder) to weight by.")] = None,
    random: Annotated[bool, typer.Option("--random", help="Untargeted: draw uniformly (the control arm).")] = False,
    prompts: Prompts = 48,
    families: Families = None,
    mutations: Mutations = None,
    seed: Seed = 0,
    paraphrase: Paraphrase = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model that paraphrases (with "
                                                                    "--paraphrase).")] = None,
) -> None:
    """Generate training-side attacks: weak templates and mutations of a scan recombined with new goals."""
    options = AttackOptions(prompts=prompts, families=families, mutations=mutations, seed=seed,
                            paraphrase=paraphrase)
    out = common.out_dir(out)
    result = run_generate(scan, options, random=random, command=_command(), model=model,
                          cache=out / "paraphrases.jsonl")
    result.save(out)
    console.print(f"{result.data['n']} {result.data['mode']} attacks; wrote {out / result.ROWS}")


@app.command("rounds")
def rounds_cmd(
    model: common.Model,
    out: Annotated[Path, typer.Option("--out", "-o", help="Rounds folder (resumes a run found there).")],
    arm: Annotated[str, typer.Option(help="targeted (scan-guided attacks) or random (as many untargeted ones; "
                                          "waits for the targeted arm's rounds).")] = "targeted",
    rounds: Annotated[int, typer.Option(help=help_of(A, "rounds"))] = 3,
    prompts: Prompts = 48,
    minutes: Annotated[float, typer.Option(help=help_of(A, "minutes"))] = 10.0,
    max_train_attacks: Annotated[int, typer.Option(help=help_of(A, "max_train_attacks"))] = 16,
    search: Annotated[bool, typer.Option("--search/--no-search", help=help_of(A, "search"))] = False,
    anchors: Annotated[int, typer.Option(help=help_of(A, "anchors"))] = 8,
    steps: Annotated[int, typer.Option(help=help_of(A, "steps"))] = 12,
    batch_size: Annotated[int, typer.Option(help=help_of(A, "batch_size"))] = 4,
    learning_rate: Annotated[float, typer.Option(help=help_of(A, "learning_rate"))] = 3e-4,
    lora_r: Annotated[int, typer.Option(help=help_of(A, "lora_r"))] = 8,
    max_length: Annotated[int, typer.Option(help=help_of(A, "max_length"))] = 256,
    eval_attacks: Annotated[int, typer.Option(help=help_of(A, "eval_attacks"))] = 32,
    eval_benign: Annotated[int, typer.Option(help=help_of(A, "eval_benign"))] = 16,
    probe_per_class: Annotated[int, typer.Option(help=help_of(A, "probe_per_class"))] = 24,
    perplexity: Annotated[int, typer.Option(help=help_of(A, "perplexity"))] = 12,
    max_new_tokens: Annotated[int, typer.Option(help=help_of(A, "max_new_tokens"))] = 32,
    middle: Annotated[str | None, typer.Option(help=help_of(A, "middle"))] = None,
    families: Families = None,
    mutations: Mutations = None,
    seed: Seed = 0,
    threads: Annotated[int | None, typer.Option(help=help_of(A, "threads"))] = None,
    paraphrase: Paraphrase = False,
    progress: common.Progress = True,
) -> None:
    """Adversarial training: attack, train on successes (refused) and look-alikes (answered), refit, evaluate."""
    if arm not in ("targeted", "random"):
        raise IhsError(f"unknown --arm {arm!r}; use targeted or random")
    options = AttackOptions(rounds=rounds, prompts=prompts, minutes=minutes, max_train_attacks=max_train_attacks,
                            search=search, anchors=anchors, steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate, lora_r=lora_r, max_length=max_length,
                            eval_attacks=eval_attacks, eval_benign=eval_benign, probe_per_class=probe_per_class,
                            perplexity=perplexity, max_new_tokens=max_new_tokens, middle=middle, families=families,
                            mutations=mutations, seed=seed, threads=threads, paraphrase=paraphrase)
    result = run_rounds(model, out, options, arm=arm, command=_command(), progress=progress)
    result.save(out)
    for row in result.numbers()["rows"]:
        console.print(f"{row['arm']} round {row['round']}: held-out ASR {row['asr']}, over-refusal contrast "
                      f"{row['over_refusal_contrast']} wrapped {row['over_refusal_wrapped']}, guard AUROC "
                      f"{row['guard_auroc']}")
    console.print(f"wrote {out / result.FILE} and {out / 'attack.md'}")


@app.command("defend")
def defend_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Rounds folder made by `ihs attack rounds`.")],
    layers: Annotated[str, typer.Option(help="Steered layers (layer grammar), chosen on other prompts.")],
    alpha: Annotated[float, typer.Option(help="Steering strength, in units of each layer's mean norm.")],
    round_: Annotated[int, typer.Option("--round", help="The model a round ended with (0: the base model).")] = 0,
    arm: Annotated[str, typer.Option(help="The arm of --round (targeted or random).")] = "targeted",
    progress: common.Progress = True,
) -> None:
    """Steer-if-flagged and refuse-when-flagged on the run's held-out prompts, beside the undefended model."""
    result = run_defenses(run_dir, layers=layers, alpha=alpha, arm=arm, round_=round_, progress=progress)
    for name, v in result["variants"].items():
        console.print(f"{name}: held-out ASR {v['asr']['rate']}, over-refusal contrast "
                      f"{v['over_refusal_contrast']['rate']} wrapped {v['over_refusal_wrapped']['rate']}")
    summarise(run_dir, command=None).save(run_dir)
    console.print(f"wrote defense.json in {run_dir}")
