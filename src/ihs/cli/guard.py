"""``ihs guard fit|score|eval|serve``: a probe-based harmful-request detector, over :mod:`ihs.workflows.guard`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.errors import IhsError
from ihs.io import write_jsonl
from ihs.progress import console
from ihs.workflows.base import help_of
from ihs.workflows.guard import (
    GuardEvalOptions,
    GuardFitOptions,
    data_inputs,
    load_guard,
    prompt_records,
    run_guard_eval,
    run_guard_fit,
    score_records,
    serve_guard,
    store_inputs,
)

H = GuardFitOptions
DATA_HELP = "NAME=SPEC, repeatable (e.g. normal=builtin:normal, malicious=path.csv)."
GUARD_DIR = Annotated[Path, typer.Argument(help="Guard directory (from `ihs guard fit`).")]
app = common.Typer(help="A probe-based harmful-request and jailbreak detector: fit, score, eval, serve.")


@app.command("fit")
def fit_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Guard directory to write (guard.json + guard.safetensors).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help=common.MODEL_HELP + " With --store: checked "
                                              "against it.")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help=DATA_HELP + " Extracted in memory.")] = None,
    store: Annotated[list[Path] | None, typer.Option(
        "--store", "-s", help="Fit from existing activation store(s) of one model (no extraction); repeatable: the "
        "stores' prompts are pooled.")] = None,
    limit: Annotated[int | None, typer.Option(help="With --data: first N distinct prompts per class.")] = None,
    layers: Annotated[str | None, typer.Option(help=help_of(H, "layers"))] = None,
    classifiers: Annotated[str, typer.Option(help=help_of(H, "classifiers"))] = "logreg,svm,diffmean",
    target_fpr: Annotated[float, typer.Option(help=help_of(H, "target_fpr"))] = 0.01,
    test_frac: Annotated[float, typer.Option(help=help_of(H, "test_frac") + " `ihs guard eval` reads them.")] = 0.2,
    calib_frac: Annotated[float, typer.Option(help=help_of(H, "calib_frac"))] = 0.25,
    folds: Annotated[int, typer.Option(help=help_of(H, "folds"))] = 5,
    tolerance: Annotated[float, typer.Option(help=help_of(H, "tolerance"))] = 0.005,
    benign: Annotated[str | None, typer.Option(help=help_of(H, "benign") + " Comma-separated.")] = None,
    malicious: Annotated[str | None, typer.Option(help=help_of(H, "malicious") + " Comma-separated.")] = None,
    seed: Annotated[int, typer.Option(help=help_of(H, "seed"))] = 0,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    batch_size: Annotated[int, typer.Option(help="Extraction batch size (with --data).")] = 32,
) -> None:
    """Choose layer and probe by cross-validation, calibrate the threshold, save the guard."""
    if bool(store) == bool(data):
        raise IhsError("give either --store or --model with --data")
    options = GuardFitOptions(layers=layers, classifiers=common.csv(classifiers) or [], folds=folds,
                              target_fpr=target_fpr, test_frac=test_frac, calib_frac=calib_frac, tolerance=tolerance,
                              seed=seed, benign=common.csv(benign), malicious=common.csv(malicious))
    options.validate()
    if store:
        st, info, data_info = store_inputs(store, model=model, device=device)
    else:
        if not model:
            raise IhsError("--data needs --model")
        lm = common.load_model(model, dtype=dtype, device=device)
        st, info, data_info = data_inputs(lm, data or [], limit=limit, chat=chat, system_prompt=system_prompt,
                                          batch_size=batch_size)
    guard = run_guard_fit(st, options, model=info, data_info=data_info)
    guard.save(common.out_dir(out))
    sel, test = guard.card["selection"]["chosen"], guard.card.get("test") or {}
    console.print(f"guard: layer {guard.layer} of {st.hidden.shape[1] - 1} ({guard.classifier}), CV AUROC "
                  f"{sel['cv_auroc']:.3f}; threshold p > {guard.threshold:.4g} (calibration FPR "
                  f"{guard.card['calibration_fpr']:.3f} on {guard.card['n_calibration']} benign prompts)")
    if test:
        console.print(f"held-out: AUROC {test['auroc']:.3f}, TPR {test['tpr_at_threshold']:.3f} at FPR "
                      f"{test['fpr_at_threshold']:.3f} (n = {test['n']})")
    for w in guard.card.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"saved: {out}")


@app.command("score")
def score_cmd(
    guard_dir: GUARD_DIR,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help=DATA_HELP)] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt to score, repeatable.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write one JSON line per prompt here.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default: the one the card names; must "
                                              "match).")] = None,
    device: common.Device = None,
    limit: Annotated[int | None, typer.Option(help="First N distinct prompts per dataset.")] = None,
    batch_size: Annotated[int, typer.Option(help="Largest batch.")] = 32,
) -> None:
    """Score prompts with early exit: probability of malicious and verdict per prompt."""
    if not data and not prompt:
        raise IhsError("nothing to score: give --data NAME=SPEC or --prompt TEXT")
    records = prompt_records(data, prompt, limit)
    rows = score_records(load_guard(guard_dir, model=model, device=device), records, batch_size=batch_size)
    if out:
        write_jsonl(out, rows)
    if prompt and not data:
        for r in rows:
            typer.echo(f"{r['probability']:.4f}  {'MALICIOUS' if r['malicious'] else 'ok       '}  {r['text'][:80]!r}")
        return
    by: dict[str, list[bool]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r["malicious"])
    for label, flags in by.items():
        console.print(f"{label}: {sum(flags)} of {len(flags)} flagged ({sum(flags) / len(flags):.1%})")
    if out:
        console.print(f"scores: {out}")


@app.command("eval")
def eval_cmd(
    guard_dir: GUARD_DIR,
    store: Annotated[list[Path] | None, typer.Option(
        "--store", "-s", help="Evaluate on a store of the guard's model (states read, no forward pass); repeatable. "
        "Default: the guard's training store (held-out split).")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help=DATA_HELP + " Scored with the model (early "
                                                   "exit).")] = None,
    generations: Annotated[list[Path] | None, typer.Option(
        "--generations", "-g", help="`ihs generate` output (dir or generations.jsonl) for the refusal baseline; "
        "repeatable.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write eval.json (and eval.md) into this "
                                             "directory.")] = None,
    no_bow: Annotated[bool, typer.Option("--no-bow", help="Skip the bag-of-words baseline.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model for --data (default: the card's).")] = None,
    limit: Annotated[int | None, typer.Option(help=help_of(GuardEvalOptions, "limit"))] = None,
) -> None:
    """AUROC, TPR at 1% FPR and accuracy per dataset and jailbreak family, vs bag-of-words and refusal."""
    guard = load_guard(guard_dir, model=model, attach=bool(data))
    result = run_guard_eval(guard, GuardEvalOptions(bow=not no_bow, limit=limit), guard_dir=guard_dir,
                            stores=store or [], data=data or [], generations=generations or [])
    typer.echo(result.table())
    if out:
        result.save(common.out_dir(out))
        console.print(f"eval: {out / 'eval.json'}")


@app.command("serve")
def serve_cmd(
    guard_dir: GUARD_DIR,
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (default loopback only).")] = "127.0.0.1",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default: the card's; must match).")] = None,
    device: common.Device = None,
    max_prompts: Annotated[int, typer.Option(help="Most prompts per request (413 above).")] = 64,
    max_prompt_chars: Annotated[int, typer.Option(help="Longest prompt in characters (413 above).")] = 16000,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt in tokens after formatting (413 above).")]
    = 2048,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 1_000_000,
    batch_window_ms: Annotated[float, typer.Option(help="Requests arriving within this window share a forward "
                                                   "pass.")] = 5.0,
    max_batch_prompts: Annotated[int, typer.Option(help="Most prompts in one forward pass.")] = 64,
) -> None:
    """Serve the guard over HTTP: POST /v1/score, GET /healthz, OpenAPI at /openapi.json."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] binding {host}: the service has no authentication")

    def ready(guard: object) -> None:
        console.print(f"serving guard {guard_dir} ({guard.model_name}, layer {guard.layer}) on "  # type: ignore[attr-defined]
                      f"http://{host}:{port}")

    serve_guard(guard_dir, host=host, port=port, model=model, device=device, on_ready=ready,
                max_prompts=max_prompts, max_prompt_chars=max_prompt_chars, max_prompt_tokens=max_prompt_tokens,
                max_body_bytes=max_body_bytes, batch_window_ms=batch_window_ms, max_batch_prompts=max_batch_prompts)
