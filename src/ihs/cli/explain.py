"""``ihs explain``: token attributions of a probe, a guard, the refusal margin or an emotion lens logit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ihs.cli import common
from ihs.data.prepare import prepare
from ihs.errors import IhsError
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.explain import ExplainOptions, ExplainResult, command_line, run_explain

H = ExplainOptions
D = ExplainOptions()


def explain_cmd(
    model: common.Model,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: explain.json, explain.html, figures.")],
    data: common.Data = None,
    target: Annotated[str, typer.Option(help=help_of(H, "target"))] = "probe",
    method: Annotated[str, typer.Option(help=help_of(H, "method"))] = "ig",
    steps: Annotated[int, typer.Option(help=help_of(H, "steps"))] = 32,
    layer: Annotated[str | None, typer.Option("--layer", help=help_of(H, "layer"))] = None,
    guard: Annotated[Path | None, typer.Option(help=help_of(H, "guard"))] = None,
    word: Annotated[str, typer.Option(help=help_of(H, "word"))] = "sorry",
    classes: Annotated[str | None, typer.Option(help=help_of(H, "classes"))] = None,
    limit: Annotated[int, typer.Option(help=help_of(H, "limit"))] = D.limit,
    sample: Annotated[bool, typer.Option("--sample/--first", help=help_of(H, "sample"))] = D.sample,
    train_limit: Annotated[int, typer.Option(help=help_of(H, "train_limit"))] = D.train_limit,
    faithfulness: Annotated[bool, typer.Option("--faithfulness/--no-faithfulness",
                                               help=help_of(H, "faithfulness"))] = True,
    faith_steps: Annotated[int, typer.Option(help=help_of(H, "faith_steps"))] = D.faith_steps,
    random_orders: Annotated[int, typer.Option(help=help_of(H, "random_orders"))] = D.random_orders,
    cosines: Annotated[bool, typer.Option("--cosines/--no-cosines", help=help_of(H, "cosines"))] = True,
    cosine_layers: Annotated[str | None, typer.Option(help=help_of(H, "cosine_layers"))] = D.cosine_layers,
    controls: Annotated[int, typer.Option(help=help_of(H, "controls"))] = D.controls,
    sanity: Annotated[bool, typer.Option("--sanity/--no-sanity", help=help_of(H, "sanity"))] = False,
    batch_size: Annotated[int, typer.Option(help=help_of(H, "batch_size"))] = 8,
    max_batch_tokens: Annotated[int, typer.Option(help=help_of(H, "max_batch_tokens"))] = 2048,
    max_tokens: Annotated[int | None, typer.Option(help=help_of(H, "max_tokens"))] = None,
    seed: Annotated[int, typer.Option(help=help_of(H, "seed"))] = 0,
    formats: Annotated[str, typer.Option(help="Figure formats: png, svg, pdf (empty: none).")] = "png",
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    progress: common.Progress = True,
) -> None:
    """Which input tokens move a probe, a guard, the refusal margin or an emotion logit (integrated gradients)."""
    options = ExplainOptions(target=target, method=method, steps=steps, layer=layer,
                             guard=str(guard) if guard else None, word=word, classes=common.csv(classes),
                             limit=limit, sample=sample, train_limit=train_limit, faithfulness=faithfulness,
                             faith_steps=faith_steps, random_orders=random_orders, cosines=cosines,
                             cosine_layers=cosine_layers, controls=controls, sanity=sanity, batch_size=batch_size,
                             max_batch_tokens=max_batch_tokens, max_tokens=max_tokens, seed=seed)
    options.validate()
    if not data:
        raise IhsError("give prompts with --data NAME=SPEC (e.g. --data normal=builtin:normal)")
    records, report = prepare(data)
    console.print(common.cleaning_line(report))
    out = common.out_dir(out)
    lm = common.load_model(model, dtype=dtype, device=device)
    command = command_line(model, data, options, out)
    result = run_explain(lm, records, options, chat=chat, system_prompt=system_prompt, command=command,
                         progress=progress)
    files = result.save(out, figures=common.csv(formats) or [])
    print_summary(result)
    console.print(f"wrote {out / ExplainResult.FILE}, {out / ExplainResult.HTML} and {len(files) - 2} figure "
                  f"file(s)")


def print_summary(result: ExplainResult) -> None:
    """Shares per class, completeness, faithfulness areas and speed, on the console."""
    n = result.numbers()
    for label, e in n["share"].items():
        a, m = e["alarm"], e["marked"]
        console.print(escape(f"  {label} (n={e['n']}): share on alarming words {_f(a['share'])}{_ci(a.get('share_ci'))} "
                             f"(uniform {_f(a['uniform'])}, {a['prompts']} prompts); on marked span "
                             f"{_f(m['share'])}{_ci(m.get('share_ci'))} (uniform {_f(m['uniform'])}, "
                             f"{m['prompts']} prompts)"))
    c = n["completeness"]
    console.print(f"  completeness: median relative gap {_f(c['median_relative_gap'])}, "
                  f"max {_f(c['max_relative_gap'])}")
    faith = n["faithfulness"]
    if faith:
        for curve in ("deletion", "insertion"):
            parts = ", ".join(f"{o} {_f(v['auc_normalised'])}" for o, v in faith[curve].items())
            console.print(escape(f"  {curve} area (normalised): {parts}"))
    if n["prompts_per_second"]:
        console.print(f"  speed: {n['prompts_per_second']:.3f} prompts/s (attribution)")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
