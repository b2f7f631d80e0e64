"""The ``ihs`` command line: one thin subcommand per stage, over the Python API."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from ihs.errors import IhsError

app = typer.Typer(
    name="ihs",
    help="Explain LLM safety through intermediate hidden states: probes, logit lens, emotion tokens, grafting.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

MODEL_HELP = "Zoo name (see `ihs models list`), local model folder, GGUF file or Hugging Face id."
DATA_HELP = "NAME=SPEC, repeatable. SPEC: builtin:normal, path.csv[:column], path.jsonl[:field], path.txt, hf:org/name:split:field."


@app.command("extract")
def extract_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help=MODEL_HELP),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory (created; re-running resumes)."),
    limit: int | None = typer.Option(None, help="Keep the first N distinct prompts of each dataset."),
    limit_by: str | None = typer.Option(None, "--limit-by", help="Apply --limit per value of this tag too, e.g. lang."),
    lang: str | None = typer.Option(None, "--lang", help="Language tag for prompts without one (a lang/language column wins)."),
    batch_size: int = typer.Option(32, help="Largest batch (prompts)."),
    shared_prefix: bool = typer.Option(True, "--shared-prefix/--no-shared-prefix",
                                       help="Run the opening every prompt shares (chat template, system prompt) once."),
    max_batch_tokens: int | None = typer.Option(None, help="Largest batch in padded tokens (default: from free memory)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, mps (default: cpu)."),
    device_map: str | None = typer.Option(
        None, "--device-map", help="Spread the model over devices (accelerate): auto, balanced, sequential, "
        "or a JSON {module: device}, inline or a .json file."),
    max_memory: str | None = typer.Option(
        None, "--max-memory", help="Cap per device with --device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB."),
    offload_folder: Path | None = typer.Option(None, help="Where weights that fit nowhere are offloaded."),
    ray: str | None = typer.Option(
        None, "--ray", metavar="[ADDRESS]",
        help="Extract on a Ray cluster: --ray alone (or --ray local) starts a local one; --ray ADDRESS joins one "
        "(e.g. auto, ray://head:10001). The store must be on a filesystem every worker sees."),
    ray_actors: int = typer.Option(2, help="Ray actors (each loads the model once)."),
    ray_threads: int = typer.Option(1, help="CPUs and torch threads per Ray actor."),
    ray_gpus: float = typer.Option(0.0, help="GPUs per Ray actor (0: CPU actors)."),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="Use the chat template (default: when the tokenizer has one)."),
    system_prompt: str | None = typer.Option(None, help="System prompt for chat formatting."),
    k: int = typer.Option(5, "--k", help="Logit-lens top-k kept per layer."),
    max_length: int | None = typer.Option(None, help="Token limit (default: the model's context)."),
    no_truncate: bool = typer.Option(False, "--no-truncate", help="Refuse over-long prompts instead of cutting their start."),
    final_punct: bool = typer.Option(False, "--final-punct", help="Append '.' to prompts not ending in . or ? (last-token confound remedy)."),
    store_dtype: str = typer.Option("float32", help="Storage type of hidden states: float32 or float16."),
    overwrite: bool = typer.Option(False, help="Replace an incompatible store in --out."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub (off by default)."),
) -> None:
    """Run prompt sets through a model; keep every layer's last-token state and logit-lens top-k."""
    from ihs.data.prepare import prepare
    from ihs.extract import ExtractOptions, extract_to
    from ihs.models.loading import load_model
    from ihs.progress import console

    if store_dtype not in ("float32", "float16"):
        raise IhsError(f"--store-dtype must be float32 or float16, got {store_dtype}")
    records, report = prepare(data or [], limit=limit, final_punct=final_punct, lang=lang, limit_by=limit_by)
    console.print(_cleaning_line(report))
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
        lm = load_model(model, **load_args)
        manifest = extract_to(lm, records, out, options, overwrite=overwrite)  # streamed, never loaded whole
    run = (manifest.get("runs") or [{}])[-1]
    rate = run.get("prompts_per_s")
    shape = (manifest.get("n_planned"), manifest["num_layers"] + 1, manifest["hidden_size"])
    console.print(f"store: {out}  shape {shape} (N, L+1, d)" + (f"  {rate:.2f} prompts/s" if rate else ""))


@app.command("bench")
def bench_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help=MODEL_HELP),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Default: built-in normal and malicious."),
    prompts: int = typer.Option(200, help="Prompts measured (split evenly over the datasets)."),
    reference_prompts: int | None = typer.Option(None, help="Prompts for the slow reference path (default: all)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    batch_size: int = typer.Option(64, help="Largest extraction batch (prompts)."),
    max_batch_tokens: int | None = typer.Option(None, help="Largest batch in padded tokens (default: from free memory)."),
    shared_prefix: bool = typer.Option(True, "--shared-prefix/--no-shared-prefix",
                                       help="Run the chat template's shared opening once per run."),
    rounds: int = typer.Option(3, help="Interleaved rounds (ceiling, ihs, reference slice); best round reported."),
    generate_prompts: int = typer.Option(48, help="Prompts for the generation bench (0: skip it)."),
    reference_generations: int | None = typer.Option(12, help="Prompts generated one by one for the reference."),
    max_new_tokens: int = typer.Option(32, help="New tokens per answer in the generation bench."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if available)."),
    device_map: str | None = typer.Option(None, "--device-map", help="accelerate device map, e.g. auto."),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's choice)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure extraction and generation against the paper's code path and the matmul ceiling, in one run."""
    import json

    import torch

    from ihs.bench import bench_extract, bench_generate
    from ihs.data.prepare import prepare
    from ihs.extract import ExtractOptions
    from ihs.models.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    specs = data or ["normal=builtin:normal", "malicious=builtin:malicious"]
    records, _ = prepare(specs, limit=max(1, prompts // len(specs)))
    lm = load_model(model, dtype=dtype, device=device, device_map=device_map)
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


def _cleaning_line(report: dict) -> str:
    parts = []
    for label, c in report["cleaning"].items():
        dropped = c["empty"] + c["dup_within"] + c["dup_across"]
        parts.append(f"{label}: {c['kept']} kept" + (f" ({dropped} dropped: {c['empty']} empty, "
                     f"{c['dup_within']} duplicate, {c['dup_across']} in another class)" if dropped else ""))
    return "data: " + "; ".join(parts) + (f"; limit {report['limit']} per class" if report["limit"] else "")


def _register() -> None:
    from ihs.data.cli import app as data_app
    from ihs.models.cli import app as models_app

    app.add_typer(data_app, name="data", help="Built-in prompt sets and dataset specs.")
    app.add_typer(models_app, name="models", help="The built-in model zoo: list and pull.")
    from ihs.analysis.probe_cli import probe_cmd
    app.command("probe")(probe_cmd)
    from ihs.analysis.lens_cli import lens_cmd
    app.command("lens")(lens_cmd)
    from ihs.interventions.graft_cli import generate_cmd, graft_cmd, jailbreak_cmd
    app.command("generate")(generate_cmd)
    app.command("graft")(graft_cmd)
    app.command("jailbreak")(jailbreak_cmd)
    from ihs.run import run_cmd
    app.command("run")(run_cmd)
    from ihs.analysis.lang_cli import lang_cmd
    app.command("lang")(lang_cmd)
    from ihs.interventions.defense_cli import app as defend_app
    app.add_typer(defend_app, name="defend", help="Probe-conditioned steering defense: direction, evaluate, sweep.")
    from ihs.guard.cli import app as guard_app
    app.add_typer(guard_app, name="guard", help="Probe-based harmful-request detector: fit, score, eval, serve.")


_register()


def expand_ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` with no address (last, or followed by another option) means ``--ray local``."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("local")
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=expand_ray_flag(sys.argv[1:]))
    except IhsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
