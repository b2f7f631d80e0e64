"""``ihs guard fit|score|eval|serve``: a probe-based harmful-request detector, over :mod:`ihs.workflows.guard`."""

from __future__ import annotations

import time
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
    GuardKindOptions,
    data_inputs,
    load_guard,
    prompt_records,
    run_guard_calibrate,
    run_guard_eval,
    run_guard_features,
    run_guard_fit,
    run_guard_fit_bank,
    score_records,
    serve_guard,
    store_inputs,
)

H = GuardFitOptions
K = GuardKindOptions
E = GuardEvalOptions
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
    bank: Annotated[list[Path] | None, typer.Option(
        "--bank", "-b", help="Fit from feature bank(s) of one model (`ihs guard features`); repeatable.")] = None,
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
    kind: Annotated[str, typer.Option(help=help_of(K, "kind"))] = "last",
    poolings: Annotated[str, typer.Option(help=help_of(K, "poolings"))] = "last,mean,max,ema",
    heads: Annotated[str, typer.Option(help=help_of(K, "heads"))] = "logreg,mlp",
    refusal: Annotated[bool, typer.Option("--refusal/--no-refusal", help=help_of(K, "refusal"))] = True,
    select_key: Annotated[str, typer.Option(help=help_of(K, "select_key"))] = "auto",
    select_folds: Annotated[int, typer.Option(help=help_of(K, "select_folds"))] = 4,
    sets: Annotated[str | None, typer.Option(help=help_of(K, "sets") + " Comma-separated.")] = None,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    batch_size: Annotated[int, typer.Option(help="Extraction batch size (with --data).")] = 32,
) -> None:
    """Choose the guard (layer and probe, or with --kind auto its whole kind) by cross-validation, calibrate the
    threshold, save the guard."""
    if sum(map(bool, (store, data, bank))) != 1:
        raise IhsError("give one of --store, --bank, or --model with --data")
    options = GuardFitOptions(layers=layers, classifiers=common.csv(classifiers) or [], folds=folds,
                              target_fpr=target_fpr, test_frac=test_frac, calib_frac=calib_frac, tolerance=tolerance,
                              seed=seed, benign=common.csv(benign), malicious=common.csv(malicious))
    kinds = GuardKindOptions(kind=kind, poolings=common.csv(poolings) or [], heads=common.csv(heads) or [],
                             refusal=refusal, select_key=select_key, select_folds=select_folds,
                             sets=common.csv(sets))
    options.validate()
    kinds.validate()
    if store or (data and kind == "last"):
        if store and kind != "last":
            raise IhsError("a store holds last-token states only; fit other kinds from --bank or --data")
        st, info, data_info = (store_inputs(store, model=model, device=device) if store else
                               _data_store(model, data or [], limit=limit, dtype=dtype, device=device, chat=chat,
                                           system_prompt=system_prompt, batch_size=batch_size))
        guard = run_guard_fit(st, options, model=info, data_info=data_info)
    else:
        source = _bank(bank) if bank else _data_bank(model, data or [], limit=limit, dtype=dtype, device=device,
                                                     chat=chat, system_prompt=system_prompt, batch_size=batch_size)
        guard = run_guard_fit_bank(source, options, kinds)
    guard.save(common.out_dir(out))
    _print_fit(guard)
    console.print(f"saved: {out}")


def _bank(paths: list[Path]):
    from ihs.guard.bank import FeatureBank

    banks = [FeatureBank.load(p) for p in paths]
    return banks[0] if len(banks) == 1 else FeatureBank.concat(banks)


def _data_store(model: str | None, data: list[str], **kw):
    if not model:
        raise IhsError("--data needs --model")
    dtype, device = kw.pop("dtype"), kw.pop("device")
    return data_inputs(common.load_model(model, dtype=dtype, device=device), data, **kw)


def _data_bank(model: str | None, data: list[str], **kw):
    if not model:
        raise IhsError("--data needs --model")
    dtype, device = kw.pop("dtype"), kw.pop("device")
    return run_guard_features(common.load_model(model, dtype=dtype, device=device), data, **kw)


def _print_fit(guard) -> None:
    test = guard.card.get("test") or {}
    num_layers = guard.model.get("num_layers")
    head = f"guard: {guard.kind}, stops after layer {guard.layer} of {num_layers}"
    chosen = (guard.card.get("selection") or {}).get("chosen") or {}
    if "cv_auroc" in chosen:
        head += f", CV AUROC {chosen['cv_auroc']:.3f}"
    elif guard.card.get("selection"):
        m = guard.card["selection"]["chosen_metrics"]
        head += f", leave-group-out CV AUROC mean {m['mean']:.3f}, worst {m['worst']:.3f} ({m['worst_group']})"
    console.print(head)
    console.print(f"threshold p > {guard.threshold:.4g} (calibration FPR {guard.card['calibration_fpr']:.3f} on "
                  f"{guard.card['n_calibration']} benign prompts)")
    for k, v in (guard.card.get("calibration_by_kind") or {}).items():
        console.print(f"  {k}: FPR {v['fpr']:.3f} on {v['n']}")
    overall = test.get("overall") or (test if "auroc" in test else None)
    if overall:
        tpr = overall.get("tpr", overall.get("tpr_at_threshold"))
        fpr = overall.get("fpr", overall.get("fpr_at_threshold"))
        console.print(f"held-out: AUROC {overall['auroc']:.3f}, TPR {tpr:.3f} at FPR {fpr:.3f} (n = {overall['n']})"
                      if "n" in overall else f"held-out: AUROC {overall['auroc']:.3f}, TPR {tpr:.3f} at FPR {fpr:.3f}")
    for w in guard.card.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")


@app.command("features")
def features_cmd(
    model: common.Model,
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature bank directory to write.")],
    data: Annotated[list[str], typer.Option("--data", "-d", help=DATA_HELP)],
    limit: common.Limit = None,
    limit_by: Annotated[str | None, typer.Option(help="Apply --limit per class and value of this tag (e.g. lang).")]
    = None,
    sample: Annotated[int | None, typer.Option(help="A seeded random N prompts of each set (--limit keeps the first "
                                               "N; built-in files are ordered by category).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --sample.")] = 0,
    layers: Annotated[str | None, typer.Option(help="Layers of the pooled states and refusal margins, in the layer "
                                               "grammar (default: about eleven evenly spaced, 0 and L included); the "
                                               "last token is kept at every layer.")] = None,
    poolings: Annotated[str, typer.Option(help=help_of(K, "poolings"))] = "last,mean,max,ema",
    refusal: Annotated[bool, typer.Option("--refusal/--no-refusal", help="Keep the refusal margins.")] = True,
    dtype: common.Dtype = "float32",
    device: common.Device = None,
    chat: common.Chat = None,
    system_prompt: common.SystemPrompt = None,
    batch_size: Annotated[int, typer.Option(help="Largest batch.")] = 16,
) -> None:
    """Run the model once over prompt sets and keep what any guard kind could read (a feature bank)."""
    lm = common.load_model(model, dtype=dtype, device=device)
    bank = run_guard_features(lm, data, out=common.out_dir(out), limit=limit, limit_by=limit_by, sample=sample,
                              seed=seed, chat=chat,
                              system_prompt=system_prompt, layers=layers, poolings=common.csv(poolings) or [],
                              refusal=refusal, batch_size=batch_size)
    layers_kept = ", ".join(f"{k} {len(v)}" for k, v in bank.features.layers.items())
    console.print(f"bank: {len(bank)} prompts, layers per feature: {layers_kept}; saved: {out}")


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
    explain: Annotated[bool, typer.Option("--explain", help="Also attribute each verdict to the prompt's tokens "
                                          "(integrated gradients, 32 steps, on the guard's logit; linear last-token "
                                          "guards): prints the tokens that push each way; with --out each row gets "
                                          "an 'explanation' and a heat map page is written beside it "
                                          "(OUT.explain.html).")] = False,
) -> None:
    """Score prompts with early exit: probability of malicious and verdict per prompt."""
    if not data and not prompt:
        raise IhsError("nothing to score: give --data NAME=SPEC or --prompt TEXT")
    records = prompt_records(data, prompt, limit)
    guard = load_guard(guard_dir, model=model, device=device)
    started = time.perf_counter()
    rows = score_records(guard, records, batch_size=batch_size)
    seconds = time.perf_counter() - started
    console.print(f"scored {len(rows)} prompts in {seconds:.2f} s ({len(rows) / max(seconds, 1e-9):.2f} prompts/s), "
                  f"blocks 1..{guard.layer} of {guard.model.get('num_layers')} ({guard.kind})")
    if explain:
        from ihs.workflows.explain import explain_guard_rows

        page = Path(out).with_suffix(".explain.html") if out else None
        for line in explain_guard_rows(guard, records, rows, html=page):
            typer.echo(line)
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
        "Default: the guard's training store or bank (held-out split).")] = None,
    bank: Annotated[list[Path] | None, typer.Option(
        "--bank", "-b", help="Evaluate on a feature bank of the guard's model (no forward pass); repeatable.")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help=DATA_HELP + " Scored with the model (early "
                                                   "exit); together they must hold benign and malicious prompts.")]
    = None,
    holdout: Annotated[list[str] | None, typer.Option("--holdout", help=help_of(E, "holdout") + " Repeatable.")]
    = None,
    compare: Annotated[list[str] | None, typer.Option(
        "--compare", help="With --holdout: also NAME=GUARD_DIR (a guard of the same model) or NAME=KIND (a kind name "
        "such as last@17/logreg) under the same splits; repeatable.")] = None,
    exclude: Annotated[list[Path] | None, typer.Option(
        "--exclude", help="Also leave out the prompts this guard was trained or calibrated on (compare guards on the "
        "same rows); repeatable.")] = None,
    benign_policy: Annotated[str, typer.Option(help=help_of(E, "benign_policy"))] = "pool",
    random_folds: Annotated[int, typer.Option(help=help_of(E, "random_folds"))] = 5,
    nested: Annotated[bool, typer.Option("--nested", help=help_of(E, "nested"))] = False,
    min_group: Annotated[int, typer.Option(help=help_of(E, "min_group"))] = 2,
    generations: Annotated[list[Path] | None, typer.Option(
        "--generations", "-g", help="`ihs generate` output (dir or generations.jsonl) for the refusal baseline; "
        "repeatable.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write eval.json (and eval.md) into this "
                                             "directory.")] = None,
    no_bow: Annotated[bool, typer.Option("--no-bow", help="Skip the bag-of-words baseline.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model for --data (default: the card's).")] = None,
    limit: Annotated[int | None, typer.Option(help=help_of(GuardEvalOptions, "limit"))] = None,
) -> None:
    """AUROC, TPR at 1% FPR and TPR / FPR at the threshold per set, kind and jailbreak family, vs bag-of-words and
    refusal; with --holdout, per held-out group under leave-one-group-out."""
    if benign_policy not in ("pool", "own"):
        raise IhsError(f"unknown benign policy {benign_policy!r}; use pool or own")
    if min_group < 2:
        raise IhsError(f"--min-group must be at least 2, got {min_group}")
    guard = load_guard(guard_dir, model=model, attach=bool(data))
    options = GuardEvalOptions(bow=not no_bow, limit=limit, holdout=holdout or [], benign_policy=benign_policy,
                               random_folds=random_folds, nested=nested, min_group=min_group)
    result = run_guard_eval(guard, options, guard_dir=guard_dir, stores=store or [], data=data or [],
                            banks=bank or [], generations=generations or [], compare=_compare(compare or []),
                            exclude=[load_guard(p, attach=False) for p in exclude or []])
    typer.echo(result.table())
    if out:
        result.save(common.out_dir(out))
        console.print(f"eval: {out / 'eval.json'}")


def _compare(items: list[str]) -> list[tuple[str, object]]:
    from ihs.guard import Guard

    out: list[tuple[str, object]] = []
    for item in items:
        name, sep, what = item.partition("=")
        if not sep or not name or not what:
            raise IhsError(f"--compare takes NAME=GUARD_DIR or NAME=KIND, got {item!r}")
        out.append((name, Guard.load(what) if Path(what).is_dir() else what))
    return out


@app.command("calibrate")
def calibrate_cmd(
    guard_dir: GUARD_DIR,
    benign: Annotated[list[str], typer.Option("--benign", help="A file of benign deployment prompts (CSV, JSONL, TXT; "
                                              "NAME=FILE names its kind); repeatable: each file is a kind.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the recalibrated guard here (default: "
                                             "update GUARD in place).")] = None,
    target_fpr: Annotated[float | None, typer.Option(help="Target FPR (default: the guard's).")] = None,
    kind_key: Annotated[str | None, typer.Option(help="A column or tag naming each prompt's kind (default: its "
                                                 "file).")] = None,
    pooled: Annotated[bool, typer.Option("--pooled", help="One threshold over all benign prompts instead of one that "
                                         "holds on every kind.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model (default: the card's; must match).")] = None,
    device: common.Device = None,
    limit: Annotated[int | None, typer.Option(help="First N prompts per file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Largest batch.")] = 32,
) -> None:
    """Recalibrate the threshold on benign traffic from the deployment; prints the realised FPR per kind."""
    if target_fpr is not None and not 0 <= target_fpr < 1:
        raise IhsError(f"--target-fpr must be in [0, 1), got {target_fpr}")
    guard = load_guard(guard_dir, model=model, device=device)
    report = run_guard_calibrate(guard, benign, target_fpr=target_fpr, kind_key=kind_key, per_kind=not pooled,
                                 limit=limit, batch_size=batch_size)
    target = common.out_dir(out) if out else guard_dir
    if out and Path(out).resolve() != Path(guard_dir).resolve():
        guard.card.setdefault("recalibrated_from", str(guard_dir))
    guard.save(target)
    console.print(f"threshold p > {report['previous']['threshold']:.4g} -> {report['threshold']:.4g} for "
                  f"{report['target_fpr']:.2%} FPR on {report['n']} benign prompts")
    for k, v in report["by_kind"].items():
        console.print(f"  {k}: n {v['n']}, FPR {v['fpr_before']:.3f} before, {v['fpr']:.3f} now")
    console.print(f"saved: {target}")


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
    max_request_tokens: Annotated[int, typer.Option(help="Token budget of one request, all prompts together "
                                                    "(413 above).")] = 16384,
    request_timeout_s: Annotated[float, typer.Option(help="A request waiting longer for its scores gets 503.")]
    = 60.0,
    api_key_file: Annotated[Path | None, typer.Option(help="File holding the API key every request must send "
                                                      "(Authorization: Bearer KEY); default: env IHS_API_KEY.")]
    = None,
    client_tokens_per_s: Annotated[float, typer.Option(
        help="Per-client token budget: each client's bucket refills this many tokens (after formatting) per second; "
        "a request it cannot pay gets 429 with Retry-After. A client is its API key when one is set, else its "
        "address (behind a proxy or on loopback all clients share one). 0 = no per-client budget.")] = 500.0,
    client_burst_tokens: Annotated[int, typer.Option(help="Most tokens a client's bucket holds (a burst); 0 = no "
                                                     "per-client budget.")] = 16384,
) -> None:
    """Serve the guard over HTTP: POST /v1/score, GET /healthz, OpenAPI at /openapi.json."""
    from rich.markup import escape

    from ihs.guard.http_security import read_api_key

    if client_tokens_per_s < 0 or client_burst_tokens < 0:
        raise IhsError("--client-tokens-per-s and --client-burst-tokens must be 0 (off) or positive")
    api_key = read_api_key(api_key_file)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        console.print(f"[yellow]warning:[/] binding {escape(host)} without an API key (--api-key-file or "
                      "IHS_API_KEY): anyone who reaches it can use it")

    def ready(guard: object) -> None:
        console.print(f"serving guard {escape(str(guard_dir))} ({escape(guard.model_name)}, "  # type: ignore[attr-defined]
                      f"layer {guard.layer}) on http://{escape(host)}:{port}"  # type: ignore[attr-defined]
                      + (" (API key required)" if api_key else ""))

    serve_guard(guard_dir, host=host, port=port, model=model, device=device, on_ready=ready,
                max_prompts=max_prompts, max_prompt_chars=max_prompt_chars, max_prompt_tokens=max_prompt_tokens,
                max_body_bytes=max_body_bytes, batch_window_ms=batch_window_ms, max_batch_prompts=max_batch_prompts,
                max_request_tokens=max_request_tokens, request_timeout_s=request_timeout_s, api_key=api_key,
                client_tokens_per_s=client_tokens_per_s, client_burst_tokens=client_burst_tokens)
