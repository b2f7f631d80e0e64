"""``ihs generate``: greedy answers for prompt sets, judged for refusal (refusal rate per class and family, ASR)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.progress import console
from ihs.workflows.base import FormatOptions, help_of
from ihs.workflows.generate import GenerateConfig, GenerateResult, command_line, rejudge, run_generate

H = GenerateConfig


def generate_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    model: common.Model = "smollm2-135m-instruct",
    data: common.Data = None,
    limit: common.Limit = None,
    limit_by: Annotated[str | None, typer.Option(
        "--limit-by", help="Apply --limit per value of this tag too, e.g. lang (N per class and language).")] = None,
    lang: Annotated[str | None, typer.Option(
        "--lang", help="Language tag for prompts without one (a lang/language column wins).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help=help_of(H, "max_new_tokens"))] = 32,
    batch_size: Annotated[int, typer.Option(help=help_of(H, "batch_size"))] = 16,
    judge: Annotated[str, typer.Option(help=help_of(H, "judge"))] = "phrases",
    rejudge_path: Annotated[Path | None, typer.Option(
        "--rejudge", help="Re-judge an existing generations.jsonl with --judge instead of generating.")] = None,
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    device_map: common.DeviceMap = None,
    max_memory: common.MaxMemory = None,
    trust_remote_code: common.TrustRemoteCode = False,
) -> None:
    """Generate greedy answers for prompt sets, judge refusal, report refusal rate per class and family and ASR."""
    from ihs.data.prepare import prepare

    options = GenerateConfig(limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size, judge=judge)
    fmt = FormatOptions(chat=chat, system_prompt=system_prompt)
    out = common.out_dir(out)
    command = command_line(model, data or [], options, out, fmt=fmt)
    if rejudge_path is not None:
        again = shlex.join(["ihs", "generate", "--rejudge", str(rejudge_path), "--judge", judge, "--out", str(out)])
        result = rejudge(rejudge_path, judge, model=model, command=again)
    else:
        options.validate()
        records, _ = prepare(data or [], limit=limit, lang=lang, limit_by=limit_by)
        lm = common.load_model(model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               trust_remote_code=trust_remote_code)
        result = run_generate(lm, records, options, fmt=fmt, command=command)
    result.save(out)
    print_summary(result, out)


def print_summary(result: GenerateResult, out: Path) -> None:
    for label, v in result.per_class.items():
        console.print(f"{label:>12}: refusal {v['refusal_rate']:.2f} ({v['refused']}/{v['n']})  ASR {v['asr']:.2f}")
    seconds = result.data.get("seconds")
    console.print(f"wrote {out}/generations.jsonl, refusal.json, refusal.png" + (f"  ({seconds} s)" if seconds else ""))
