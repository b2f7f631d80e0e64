"""``ihs extract``: run prompt sets through a model; keep every layer's last-token state and lens top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.data.prepare import prepare
from ihs.errors import IhsError
from ihs.extraction import ExtractOptions, extract_to
from ihs.progress import console


def extract_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory (created; re-running resumes).")],
    model: common.Model = "smollm2-135m-instruct",
    data: common.Data = None,
    limit: common.Limit = None,
    limit_by: Annotated[str | None, typer.Option("--limit-by", help="Apply --limit per value of this tag too, e.g. lang.")] = None,
    lang: Annotated[str | None, typer.Option("--lang", help="Language tag for prompts without one (a lang/language column wins).")] = None,
    batch_size: Annotated[int, typer.Option(help="Largest batch (prompts).")] = 32,
    shared_prefix: Annotated[bool, typer.Option("--shared-prefix/--no-shared-prefix",
                                                help="Run the opening every prompt shares (chat template, system prompt) once.")] = True,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Largest batch in padded tokens (default: from free memory).")] = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    device_map: common.DeviceMap = None,
    max_memory: common.MaxMemory = None,
    offload_folder: common.OffloadFolder = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]",
        help="Extract on a Ray cluster: --ray alone (or --ray local) starts a local one; --ray ADDRESS joins one "
        "(e.g. auto, ray://head:10001). The store must be on a filesystem every worker sees.")] = None,
    ray_actors: Annotated[int, typer.Option(help="Ray actors (each loads the model once).")] = 2,
    ray_threads: Annotated[int, typer.Option(help="CPUs and torch threads per Ray actor.")] = 1,
    ray_gpus: Annotated[float, typer.Option(help="GPUs per Ray actor (0: CPU actors).")] = 0.0,
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    k: Annotated[int, typer.Option("--k", help="Logit-lens top-k kept per layer.")] = 5,
    max_length: Annotated[int | None, typer.Option(help="Token limit (default: the model's context).")] = None,
    no_truncate: Annotated[bool, typer.Option("--no-truncate", help="Refuse over-long prompts instead of cutting their start.")] = False,
    final_punct: Annotated[bool, typer.Option("--final-punct", help="Append '.' to prompts not ending in . or ? (last-token confound remedy).")] = False,
    store_dtype: Annotated[str, typer.Option(help="Storage type of hidden states: float32 or float16.")] = "float32",
    overwrite: Annotated[bool, typer.Option(help="Replace an incompatible store in --out.")] = False,
    trust_remote_code: common.TrustRemoteCode = False,
) -> None:
    """Run prompt sets through a model; keep every layer's last-token state and logit-lens top-k."""
    if store_dtype not in ("float32", "float16"):
        raise IhsError(f"--store-dtype must be float32 or float16, got {store_dtype}")
    records, report = prepare(data or [], limit=limit, final_punct=final_punct, lang=lang, limit_by=limit_by)
    console.print(common.cleaning_line(report))
    options = ExtractOptions(chat=chat, system_prompt=system_prompt, k=k, batch_size=batch_size,
                             max_batch_tokens=max_batch_tokens, max_length=max_length,
                             truncate=not no_truncate, store_dtype=store_dtype, shared_prefix=shared_prefix)
    load_args = dict(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                     offload_folder=str(offload_folder) if offload_folder else None,
                     trust_remote_code=trust_remote_code)
    if ray is not None:
        from ihs.distributed.ray_extract import RayOptions, ray_extract
        from ihs.models.devices import parse_device_map, parse_max_memory

        parse_device_map(device_map), parse_max_memory(max_memory)  # bad specs fail here, not on every actor
        manifest = ray_extract({"name": model, **load_args}, records, out, options,
                               RayOptions(address=ray, actors=ray_actors, threads=ray_threads, gpus=ray_gpus),
                               overwrite=overwrite).manifest
    else:
        lm = common.load_model(model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               offload_folder=offload_folder, trust_remote_code=trust_remote_code)
        manifest = extract_to(lm, records, out, options, overwrite=overwrite)  # streamed, never loaded whole
    run = (manifest.get("runs") or [{}])[-1]
    rate = run.get("prompts_per_s")
    shape = (manifest.get("n_planned"), manifest["num_layers"] + 1, manifest["hidden_size"])
    console.print(f"store: {out}  shape {shape} (N, L+1, d)" + (f"  {rate:.2f} prompts/s" if rate else ""))
