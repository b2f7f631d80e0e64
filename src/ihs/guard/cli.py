"""``ihs guard fit|score|eval|serve``: thin commands over ``ihs.guard``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ihs.errors import IhsError

app = typer.Typer(no_args_is_help=True, help="A probe-based harmful-request and jailbreak detector: fit, score, eval, serve.")

MODEL_HELP = "Zoo name, local model folder, GGUF file or Hugging Face id."
DATA_HELP = "NAME=SPEC, repeatable (e.g. normal=builtin:normal, malicious=path.csv)."


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _records(store: Any) -> list[dict[str, Any]]:
    return list(store.records)


def _load_model(spec: str, dtype: str, device: str | None) -> Any:
    from ihs.models.loading import load_model

    return load_model(spec, dtype=dtype, device=device)


def _extract_in_memory(lm: Any, data: list[str], limit: int | None, chat: bool | None, system_prompt: str | None,
                       batch_size: int) -> Any:
    from ihs.data.prepare import prepare
    from ihs.extract import ExtractOptions, extract

    records, _ = prepare(data, limit=limit)
    return extract(lm, records, None, ExtractOptions(chat=chat, system_prompt=system_prompt, batch_size=batch_size))


@app.command("fit")
def fit_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Guard directory to write (guard.json + guard.safetensors)."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP + " With --store: checked against it."),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Extracted in memory."),
    store: list[Path] = typer.Option(None, "--store", "-s", help="Fit from existing activation store(s) of one model "
                                     "(no extraction); repeatable: the stores' prompts are pooled."),
    limit: int | None = typer.Option(None, help="With --data: first N distinct prompts per class."),
    layers: str | None = typer.Option(None, help="Candidate layers, e.g. 0-8 (default: all). 0 = embedding output."),
    classifiers: str = typer.Option("logreg,svm,diffmean", help="Candidate linear probes."),
    target_fpr: float = typer.Option(0.01, help="False-positive rate the threshold is calibrated for."),
    test_frac: float = typer.Option(0.2, help="Share of prompt groups held out for `ihs guard eval`."),
    calib_frac: float = typer.Option(0.25, help="Share of the remaining benign groups used to calibrate."),
    folds: int = typer.Option(5, help="Cross-validation folds for choosing layer and probe."),
    tolerance: float = typer.Option(0.005, help="Take the earliest layer within this AUROC of the best."),
    benign: str | None = typer.Option(None, help="Benign labels, comma-separated (default: normal, contrast present)."),
    malicious: str | None = typer.Option(None, help="Malicious labels (default: malicious, jailbreak present)."),
    seed: int = typer.Option(0, help="Seed of splits and folds."),
    dtype: str = typer.Option("float32", help="Model dtype (with --data)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (with --data)."),
    chat: bool | None = typer.Option(None, "--chat/--no-chat", help="Chat template (default: when the tokenizer has one)."),
    system_prompt: str | None = typer.Option(None, help="System prompt for chat formatting."),
    batch_size: int = typer.Option(32, help="Extraction batch size."),
) -> None:
    """Choose layer and probe by cross-validation, calibrate the threshold, save the guard."""
    from ihs.guard.guard import FitOptions, fit_guard, model_info
    from ihs.progress import console, progress_bar

    if bool(store) == bool(data):
        raise IhsError("give either --store or --model with --data")
    if store:
        st = _pool_stores(store)
        info = model_info(st.manifest)
        if model:
            lm = _load_model(model, st.manifest.get("model", {}).get("dtype", dtype), device)
            if lm.fingerprint() != info["fingerprint"]:
                raise IhsError(f"store {store[0]} holds states of {info['name']!r} ({info['fingerprint']}), "
                               f"not of {model!r} ({lm.fingerprint()})")
        data_info = {"stores": [str(p.resolve()) for p in store], "datasets": st.manifest.get("datasets")}
    else:
        if not model:
            raise IhsError("--data needs --model")
        lm = _load_model(model, dtype, device)
        st = _extract_in_memory(lm, data, limit, chat, system_prompt, batch_size)
        info = model_info(lm, chat=chat, system_prompt=system_prompt)
        data_info = {"specs": list(data), "limit": limit}
    options = FitOptions(layers=_parse_layers(layers, st.hidden.shape[1] - 1), classifiers=_csv(classifiers) or [],
                         folds=folds, target_fpr=target_fpr, test_frac=test_frac, calib_frac=calib_frac,
                         tolerance=tolerance, seed=seed, benign=_csv(benign), malicious=_csv(malicious))
    n_layers = len(options.layers) if options.layers is not None else st.hidden.shape[1]
    with progress_bar("choosing layer", n_layers * len(options.classifiers), unit="probes") as advance:
        guard = fit_guard(st.hidden, _records(st), info, options, advance, data_info)
    guard.save(out)
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


def _pool_stores(paths: list[Path]) -> Any:
    """Load stores and pool their rows; they must hold one model's states under one formatting."""
    import numpy as np

    from ihs.store import ActivationStore

    stores = [ActivationStore.load(p) for p in paths]
    first = stores[0].manifest
    for p, st in zip(paths[1:], stores[1:], strict=True):
        m = st.manifest
        if m.get("model", {}).get("fingerprint") != first.get("model", {}).get("fingerprint"):
            raise IhsError(f"store {p} holds another model's states than {paths[0]}")
        if (m.get("chat"), m.get("system_prompt")) != (first.get("chat"), first.get("system_prompt")):
            raise IhsError(f"store {p} was formatted differently (chat/system prompt) from {paths[0]}")
    if len(stores) == 1:
        return stores[0]
    manifest = {**first, "datasets": sorted({d for st in stores for d in st.manifest.get("datasets") or []})}
    return ActivationStore(hidden=np.concatenate([st.hidden for st in stores]),
                           records=[r for st in stores for r in st.records], manifest=manifest)


def _parse_layers(spec: str | None, num_layers: int) -> list[int] | None:
    from ihs.layers import parse_layers

    return parse_layers(spec, num_layers)


def _guard_with_model(guard_dir: Path, model: str | None, device: str | None) -> Any:
    from ihs.guard.guard import Guard

    guard = Guard.load(guard_dir)
    if model:
        guard.attach(_load_model(model, guard.model.get("dtype") or "float32", device))
    else:
        guard.load_model(device=device)
    return guard


@app.command("score")
def score_cmd(
    guard_dir: Path = typer.Argument(..., help="Guard directory (from `ihs guard fit`)."),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt to score, repeatable."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write one JSON line per prompt here."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model (default: the one the card names; must match)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    limit: int | None = typer.Option(None, help="First N distinct prompts per dataset."),
    batch_size: int = typer.Option(32, help="Largest batch."),
) -> None:
    """Score prompts with early exit: probability of malicious and verdict per prompt."""
    from ihs.data.prepare import prepare
    from ihs.extract import as_record_dict
    from ihs.progress import console, progress_bar

    if not data and not prompt:
        raise IhsError("nothing to score: give --data NAME=SPEC or --prompt TEXT")
    records: list[dict[str, Any]] = []
    if data:
        records += [as_record_dict(r) for r in prepare(data, limit=limit)[0]]
    records += [{"id": f"prompt-{i}", "text": t, "label": "prompt", "dataset": "--prompt", "tags": {}}
                for i, t in enumerate(prompt or [])]
    guard = _guard_with_model(guard_dir, model, device)
    with progress_bar(f"scoring (layer {guard.layer})", len(records)) as advance:
        res = guard.score([r["text"] for r in records], batch_size=batch_size, progress=advance)
    rows = [{"id": r["id"], "label": r["label"], "dataset": r.get("dataset"), "probability": float(p),
             "malicious": bool(m), "text": r["text"]} for r, p, m in zip(records, res.probability, res.malicious,
                                                                          strict=True)]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
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
    guard_dir: Path = typer.Argument(..., help="Guard directory."),
    store: list[Path] = typer.Option(None, "--store", "-s", help="Evaluate on a store of the guard's model (states read, "
                                     "no forward pass); repeatable. Default: the guard's training store (held-out split)."),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Scored with the model (early exit)."),
    generations: list[Path] = typer.Option(None, "--generations", "-g", help="`ihs generate` output (dir or "
                                           "generations.jsonl) for the refusal baseline; repeatable."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write eval.json (and eval.md) into this directory."),
    no_bow: bool = typer.Option(False, "--no-bow", help="Skip the bag-of-words baseline."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model for --data (default: the card's)."),
    limit: int | None = typer.Option(None, help="With --data: first N distinct prompts per dataset."),
) -> None:
    """AUROC, TPR at 1% FPR and accuracy per dataset and jailbreak family, vs bag-of-words and refusal."""
    from ihs.data.prepare import prepare
    from ihs.extract import as_record_dict
    from ihs.guard.evaluate import (
        BowBaseline,
        check_store,
        evaluate_set,
        exclude_fitted,
        load_generations,
        markdown_table,
        refusal_detector,
    )
    from ihs.guard.guard import Guard
    from ihs.progress import console, progress_bar
    from ihs.store import ActivationStore

    guard = Guard.load(guard_dir)
    card_data = guard.card.get("data", {})
    train_paths = [Path(p) for p in card_data.get("stores") or ([card_data["store"]] if card_data.get("store") else [])]
    stores = list(store or [])
    if not stores and not data:
        if not train_paths:
            raise IhsError("this guard was fitted from --data, not a store; pass --store or --data to evaluate on")
        stores = train_paths
    # the training prompts, for the bag-of-words baseline and for leaving them out
    train_recs: list[dict[str, Any]] = []
    cal_recs: list[dict[str, Any]] = []
    ids = guard.card["splits"]["ids"]
    tr, ca = set(ids["train"]), set(ids["calibration"])
    for tp in train_paths:
        if tp.is_dir():
            tst = ActivationStore.load(tp)
            train_recs += [r for r in tst.records if r["id"] in tr]
            cal_recs += [r for r in tst.records if r["id"] in ca]
    fitted_texts = [r["text"] for r in train_recs + cal_recs]
    bow = None
    notes: list[str] = []
    if not no_bow:
        if train_recs and cal_recs:
            bow = BowBaseline(train_recs, cal_recs, guard)
        else:
            notes.append("bag-of-words baseline skipped: the guard's training store is not available")
    gens = load_generations(generations) if generations else None
    result: dict[str, Any] = {"guard": str(guard_dir), "model": guard.model_name, "layer": guard.layer,
                              "classifier": guard.classifier, "threshold": guard.threshold,
                              "target_fpr": guard.target_fpr, "sets": [], "notes": notes}
    for path in stores:
        st = ActivationStore.load(path)
        check_store(guard, st, str(path))
        keep = exclude_fitted(guard, st.records, fitted_texts)
        recs = [st.records[i] for i in keep]
        name = path.name + (" (held-out)" if Path(path).resolve() in [p.resolve() for p in train_paths] else "")
        result["sets"].append(evaluate_set(guard, name, recs, guard.decision_states(st.hidden[keep, guard.layer]),
                                           bow, gens))
    if data:
        guard = _guard_with_model(guard_dir, model, None) if guard.lm is None else guard
        recs = [as_record_dict(r) for r in prepare(data, limit=limit)[0]]
        keep = exclude_fitted(guard, recs, fitted_texts)
        recs = [recs[i] for i in keep]
        with progress_bar(f"scoring (layer {guard.layer})", len(recs)) as advance:
            states = guard.states([r["text"] for r in recs], progress=advance)
        result["sets"].append(evaluate_set(guard, "data: " + ", ".join(data), recs, guard.decision_states(states),
                                           bow, gens))
    if gens:
        result["refusal"] = refusal_detector(gens, guard)
    if bow is not None:
        result["bow"] = {"n_train": bow.n_train, "threshold": bow.threshold}
    table = markdown_table(result)
    typer.echo(table)
    if out:
        from ihs.guard.guard import _jsonable

        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(_jsonable(result), indent=2, ensure_ascii=False), encoding="utf-8")
        (out / "eval.md").write_text(table + "\n", encoding="utf-8")
        console.print(f"eval: {out / 'eval.json'}")


@app.command("serve")
def serve_cmd(
    guard_dir: Path = typer.Argument(..., help="Guard directory."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (default loopback only)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model (default: the card's; must match)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
    max_prompts: int = typer.Option(64, help="Most prompts per request (413 above)."),
    max_prompt_chars: int = typer.Option(16000, help="Longest prompt in characters (413 above)."),
    max_prompt_tokens: int = typer.Option(2048, help="Longest prompt in tokens after formatting (413 above)."),
    max_body_bytes: int = typer.Option(1_000_000, help="Largest request body (413 above)."),
    batch_window_ms: float = typer.Option(5.0, help="Requests arriving within this window share a forward pass."),
    max_batch_prompts: int = typer.Option(64, help="Most prompts in one forward pass."),
) -> None:
    """Serve the guard over HTTP: POST /v1/score, GET /healthz, OpenAPI at /openapi.json."""
    from ihs.guard.serve import ServeLimits, run_server
    from ihs.progress import console

    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] binding {host}: the service has no authentication")
    guard = _guard_with_model(guard_dir, model, device)
    limits = ServeLimits(max_prompts=max_prompts, max_prompt_chars=max_prompt_chars,
                         max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes,
                         batch_window_ms=batch_window_ms, max_batch_prompts=max_batch_prompts)
    console.print(f"serving guard {guard_dir} ({guard.model_name}, layer {guard.layer}) on http://{host}:{port}")
    run_server(guard, host, port, limits)
