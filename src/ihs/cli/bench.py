"""``ihs bench``: extraction and generation against the paper's code path and the matmul ceiling, in one run."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ihs.cli import common


def bench_cmd(
    model: common.Model = "smollm2-135m-instruct",
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help=common.DATA_HELP
                                                   + " Default: built-in normal and malicious.")] = None,
    prompts: Annotated[int, typer.Option(help="Prompts measured (split evenly over the datasets).")] = 200,
    reference_prompts: Annotated[int | None, typer.Option(help="Prompts for the slow reference path (default: all).")] = None,
    dtype: common.Dtype = "float32",
    batch_size: Annotated[int, typer.Option(help="Largest extraction batch (prompts).")] = 64,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Largest batch in padded tokens (default: from free memory).")] = None,
    shared_prefix: Annotated[bool, typer.Option("--shared-prefix/--no-shared-prefix",
                                                help="Run the chat template's shared opening once per run.")] = True,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds (ceiling, ihs, reference slice); best round reported.")] = 3,
    generate_prompts: Annotated[int, typer.Option(help="Prompts for the generation bench (0: skip it).")] = 48,
    reference_generations: Annotated[int | None, typer.Option(help="Prompts generated one by one for the reference.")] = 12,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per answer in the generation bench.")] = 32,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if available).")] = None,
    device_map: common.DeviceMap = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure extraction and generation against the paper's code path and the matmul ceiling, in one run."""
    import torch

    from ihs.bench import bench_extract, bench_generate
    from ihs.data.prepare import prepare
    from ihs.extraction import ExtractOptions

    if threads:
        torch.set_num_threads(threads)
    specs = data or ["normal=builtin:normal", "malicious=builtin:malicious"]
    records, _ = prepare(specs, limit=max(1, prompts // len(specs)))
    lm = common.load_model(model, dtype=dtype, device=device, device_map=device_map)
    texts = [r.text for r in records]
    options = ExtractOptions(batch_size=batch_size, max_batch_tokens=max_batch_tokens, shared_prefix=shared_prefix)
    result = bench_extract(lm, texts, reference_prompts, options, rounds=rounds, progress=not as_json)
    if generate_prompts > 0:
        # the same classes, interleaved, so short and long answers are both represented
        picked = [texts[i] for i in sorted(range(len(texts)), key=lambda i: (i % max(1, len(texts) // len(specs)), i))]
        result["generation"] = bench_generate(lm, picked[:generate_prompts], reference_generations,
                                              max_new_tokens=max_new_tokens, rounds=rounds, progress=not as_json)
    result["device"] = str(lm.input_device)
    if lm.input_device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(lm.input_device)
    result["data"] = specs
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        typer.echo(f"{key:>30}: {value}")
