"""``ihs defend``: probe-conditioned steering as a defense, its evaluation and its sweep.

* ``ihs defend direction STORE --out DIR``: per-layer steering directions from a store's training ids.
* ``ihs defend --model M --guard G --direction D --layers a:b --alpha A --data ... --out DIR``: one
  setting against the undefended model, unconditional steering and refuse-when-flagged.
* ``ihs defend sweep ... --layers a:b --layers c:d --alpha A --alpha B ...``: every layer range x alpha,
  the trade-off figure and the best setting under an over-refusal budget.

Outputs: ``defense.json`` (one summary per variant, guard, direction, options, command),
``generations.jsonl`` (every answer with its variant), ``table.md`` and ``tradeoff.png``.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import typer

from ihs.errors import IhsError

app = typer.Typer(no_args_is_help=False, invoke_without_command=True, pretty_exceptions_enable=False,
                  help="Probe-conditioned steering: steer toward refusal when an early-layer guard flags the input.")

MODEL_HELP = "Zoo name, local model folder, GGUF file or Hugging Face id."
DATA_HELP = "NAME=SPEC, repeatable (builtin:jailbreak, builtin:malicious, builtin:normal, builtin:contrast, files)."


def goal_key(rec: dict[str, Any]) -> str:
    """A jailbreak prompt belongs to its goal (tags.goal_id = the plain malicious prompt's id)."""
    return str((rec.get("tags") or {}).get("goal_id") or rec["id"])


def in_tune(rec: dict[str, Any], fraction: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"tune{seed}:{goal_key(rec)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def parse_limit(spec: str | None) -> dict[str, int] | None:
    """``32`` (every class) or ``jailbreak=48,32`` (48 jailbreaks, 32 of every other class) -> {label or '*': N}."""
    if spec is None:
        return None
    out: dict[str, int] = {}
    for part in str(spec).split(","):
        name, _, value = part.strip().rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise IhsError(f"bad --limit part {part!r}: use N or LABEL=N, comma-separated") from None
        if n <= 0:
            raise IhsError(f"--limit must be positive, got {part!r}")
        out[name.strip() or "*"] = n
    return out


def excluded_keys(stores: list[Path]) -> set[str]:
    """Prompt ids and goal keys of every prompt in these stores."""
    from ihs.store import ActivationStore

    keys: set[str] = set()
    for path in stores:
        store = ActivationStore.load(path)
        keys |= {goal_key(r) for r in store.records} | set(store.ids)
    return keys


def select_records(records: list[dict[str, Any]], exclude_stores: list[Path], split: str, tune_fraction: float,
                   limit: str | None, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop prompts that are in (or share a goal with) a store; keep the tune or eval side; first ``limit`` per class."""
    if split not in ("tune", "eval", "all"):
        raise IhsError(f"--split must be tune, eval or all, got {split!r}")
    excluded = excluded_keys(exclude_stores)
    kept = [r for r in records if r["id"] not in excluded and goal_key(r) not in excluded]
    n_after_exclude = len(kept)
    if split != "all":
        kept = [r for r in kept if in_tune(r, tune_fraction, seed) == (split == "tune")]
    limits = parse_limit(limit)
    if limits is not None:
        taken: dict[str, int] = {}
        limited = []
        for r in kept:
            cap = limits.get(r["label"], limits.get("*"))
            if cap is None or taken.get(r["label"], 0) < cap:
                taken[r["label"]] = taken.get(r["label"], 0) + 1
                limited.append(r)
        kept = limited
    if not kept:
        raise IhsError("no prompts left after --exclude-store / --split / --limit")
    counts: dict[str, int] = {}
    for r in kept:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return kept, {"excluded_stores": [str(p) for p in exclude_stores], "n_loaded": len(records),
                  "n_after_exclude": n_after_exclude, "split": split, "tune_fraction": tune_fraction,
                  "split_rule": "sha256('tune<seed>:' + goal key) < tune_fraction -> tune; goal key = tags.goal_id "
                                "for jailbreaks, else the prompt id", "counts": counts, "limit": limit}


def _guard(lm: Any, guard: Path | None, probe_store: Path | None, probe_layer: int | None, threshold: float | None) -> Any:
    from ihs.interventions.defense import StoreProbe, load_guard
    from ihs.store import ActivationStore

    if (guard is None) == (probe_store is None):
        raise IhsError("give either --guard DIR (from `ihs guard fit`) or --probe-store STORE --probe-layer L")
    if guard is not None:
        g = load_guard(str(guard))
    else:
        if probe_layer is None:
            raise IhsError("--probe-store needs --probe-layer")
        g = StoreProbe.fit(ActivationStore.load(probe_store), probe_layer)
    if threshold is not None:
        if not 0 < threshold < 1:
            raise IhsError(f"--threshold must be a probability in (0, 1), got {threshold}")
        g.threshold = float(threshold)
        if hasattr(g, "threshold_logit"):
            import math
            g.threshold_logit = math.log(threshold) - math.log1p(-threshold)
    return g


def _run(model: str, guard: Path | None, probe_store: Path | None, probe_layer: int | None, threshold: float | None,
         direction: Path, layer_specs: list[str], alphas: list[float], data: list[str], exclude_store: list[Path],
         split: str, tune_fraction: float, limit: str | None, max_new_tokens: int, batch_size: int, prompt_only: bool,
         positions: str, always: str, full: bool, quality: bool, judge: str, max_over_refusal: float | None, out: Path,
         dtype: str, device: str | None, sweep: bool) -> None:
    import sys
    import time

    from ihs.data.prepare import prepare
    from ihs.extract import as_record_dict
    from ihs.generation import GenerateOptions
    from ihs.interventions.defense import DefenseSetting, EvalOptions, check_same_model, choose_best, evaluate
    from ihs.interventions.graft_cli import _write_json, _write_jsonl
    from ihs.interventions.steering import SteeringDirections
    from ihs.layers import parse_layers
    from ihs.models.loading import load_model
    from ihs.plots.defense import plot_tradeoff, table_markdown
    from ihs.progress import console

    if always not in ("all", "best", "none"):
        raise IhsError(f"--always must be all, best or none, got {always!r}")
    if not alphas:
        raise IhsError("give at least one --alpha")
    if not layer_specs:
        raise IhsError("give at least one --layers a:b")
    started = time.perf_counter()
    directions = SteeringDirections.load(direction)
    records, _ = prepare(data or ["jailbreak=builtin:jailbreak", "malicious=builtin:malicious",
                                  "normal=builtin:normal", "contrast=builtin:contrast"])
    recs, selection = select_records([as_record_dict(r) for r in records], exclude_store, split, tune_fraction, limit)
    console.print("prompts: " + ", ".join(f"{k} {v}" for k, v in selection["counts"].items()) + f" ({split} split)")
    lm = load_model(model, dtype=dtype, device=device)
    g = _guard(lm, guard, probe_store, probe_layer, threshold)
    check_same_model(lm, g, directions)
    settings = [DefenseSetting(parse_layers(spec, lm.num_layers), float(a), "conditional",
                               "prompt" if prompt_only else "all", positions)  # type: ignore[arg-type]
                for spec, a in itertools.product(layer_specs, alphas)]
    for s in settings:
        for layer in s.layers:
            directions.unit(layer)  # clear error for a layer the direction lacks
    options = GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
    ev = EvalOptions(reuse_unflagged=not full, quality=quality, always=(always == "all"))
    result = evaluate(lm, recs, g, directions, settings, options, judge, ev)
    best = choose_best(result["variants"], max_over_refusal)
    if always == "best" and best is not None:
        extra = evaluate(lm, recs, g, directions, [DefenseSetting(best["layers"], best["alpha"], "always",
                                                                   best["when"], best["positions"])],
                         options, judge, EvalOptions(reuse_unflagged=True, quality=quality, always=False))
        uncond = extra["variants"][2]
        result["variants"].append(uncond)
        result["rows"].extend(r for r in extra["rows"] if r.get("setting") == uncond["name"])
    out.mkdir(parents=True, exist_ok=True)
    rows = result.pop("rows")
    command = " ".join(["ihs", *sys.argv[1:]])
    result.update({"model": lm.name, "model_identity": lm.identity, "direction_path": str(direction),
                   "guard_path": str(guard) if guard else None,
                   "probe_store": str(probe_store) if probe_store else None, "probe_layer": probe_layer,
                   "selection": selection, "best": best["name"] if best else None,
                   "max_over_refusal": max_over_refusal, "command": command, "sweep": sweep,
                   "seconds": round(time.perf_counter() - started, 1)})
    _write_json(out / "defense.json", result)
    _write_jsonl(out / "generations.jsonl", rows)
    table = table_markdown(result)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    plot_tradeoff(result, out / "tradeoff.png", title=f"{lm.name}: {command}")
    console.print(table)
    rule = (f"lowest attack ASR with benign refusal rise <= {max_over_refusal:g}" if max_over_refusal is not None
            else "largest attack-ASR drop minus benign-refusal rise")
    result["best_rule"] = rule
    _write_json(out / "defense.json", result)
    console.print(f"best ({rule}): {result['best']}")
    console.print(f"wrote {out}/defense.json, generations.jsonl, table.md, tradeoff.png ({result['seconds']:.0f} s)")


@app.callback()
def defend_cmd(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    guard: Path | None = typer.Option(None, "--guard", "-g", help="Guard directory from `ihs guard fit`."),
    probe_store: Path | None = typer.Option(None, help="Instead of --guard: fit a logreg probe on this store's training ids."),
    probe_layer: int | None = typer.Option(None, help="Layer of the --probe-store probe (0 = embedding output)."),
    threshold: float | None = typer.Option(None, help="Override the guard's threshold (a probability)."),
    direction: Path = typer.Option(None, "--direction", help="Directory from `ihs defend direction`."),
    layers: str = typer.Option(None, "--layers", help="Steered layers, a:b (both ends) or a,b,c."),
    alpha: float = typer.Option(None, "--alpha", help="Strength, in units of each layer's mean last-token norm."),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " Default: the four built-in sets."),
    exclude_store: list[Path] = typer.Option(None, "--exclude-store", help="Drop prompts in this store or sharing a goal with one (repeatable)."),
    split: str = typer.Option("all", help="tune, eval or all: which side of the goal-hash split to use."),
    tune_fraction: float = typer.Option(0.3, help="Share of goals on the tune side."),
    limit: str | None = typer.Option(None, help="First N prompts per class after exclusion and split: N or LABEL=N,N."),
    max_new_tokens: int = typer.Option(24, help="New tokens per answer."),
    batch_size: int = typer.Option(16, help="Generation batch size."),
    prompt_only: bool = typer.Option(False, "--prompt-only", help="Steer only the prompt pass (default: every generated token too)."),
    positions: str = typer.Option("all", help="Prompt positions steered: all or last."),
    always: str = typer.Option("all", help="Unconditional-steering baseline: all (every setting), best, none."),
    full: bool = typer.Option(False, "--full", help="Regenerate unflagged prompts too (default: reuse their undefended answers, identical by design)."),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Perplexity of undefended normal answers under the defense."),
    judge: str = typer.Option("phrases", help="Refusal judge (see ihs generate)."),
    max_over_refusal: float | None = typer.Option(
        None, help="Best setting = lowest attack ASR whose benign refusal rate rises by at most this; "
        "default: the largest (attack-ASR drop - benign-refusal rise)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Evaluate one defense setting: undefended, conditional steering, unconditional steering, refuse-when-flagged."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--model", model), ("--direction", direction), ("--layers", layers),
                              ("--alpha", alpha), ("--out", out)) if v is None]
    if missing:
        raise IhsError(f"ihs defend needs {', '.join(missing)} (or a subcommand: direction, sweep)")
    _run(model, guard, probe_store, probe_layer, threshold, direction, [layers], [alpha], data or [],
         exclude_store or [], split, tune_fraction, limit, max_new_tokens, batch_size, prompt_only, positions,
         always, full, quality, judge, max_over_refusal, out, dtype, device, sweep=False)


@app.command("sweep")
def sweep_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    direction: Path = typer.Option(..., "--direction", help="Directory from `ihs defend direction`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    layers: list[str] = typer.Option(..., "--layers", help="Layer range, repeatable (a:b or a,b,c)."),
    alpha: list[float] = typer.Option(..., "--alpha", help="Strength, repeatable."),
    guard: Path | None = typer.Option(None, "--guard", "-g", help="Guard directory from `ihs guard fit`."),
    probe_store: Path | None = typer.Option(None, help="Instead of --guard: a logreg probe on this store."),
    probe_layer: int | None = typer.Option(None, help="Layer of the --probe-store probe."),
    threshold: float | None = typer.Option(None, help="Override the guard's threshold."),
    data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    exclude_store: list[Path] = typer.Option(None, "--exclude-store", help="Drop prompts in (or sharing a goal with) this store."),
    split: str = typer.Option("tune", help="tune (default for a sweep), eval or all."),
    tune_fraction: float = typer.Option(0.3, help="Share of goals on the tune side."),
    limit: str | None = typer.Option(None, help="First N prompts per class: N or LABEL=N,N (e.g. jailbreak=48,32)."),
    max_new_tokens: int = typer.Option(24, help="New tokens per answer."),
    batch_size: int = typer.Option(16, help="Generation batch size."),
    prompt_only: bool = typer.Option(False, "--prompt-only", help="Steer only the prompt pass."),
    positions: str = typer.Option("all", help="Prompt positions steered: all or last."),
    always: str = typer.Option("best", help="Unconditional baseline: all, best (default), none."),
    full: bool = typer.Option(False, "--full", help="Regenerate unflagged prompts too."),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Perplexity check on normal prompts."),
    judge: str = typer.Option("phrases", help="Refusal judge."),
    max_over_refusal: float | None = typer.Option(
        None, help="Best setting = lowest attack ASR whose benign refusal rate rises by at most this; "
        "default: the largest (attack-ASR drop - benign-refusal rise)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str | None = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Every --layers x --alpha setting; trade-off figure; best setting under the over-refusal budget."""
    _run(model, guard, probe_store, probe_layer, threshold, direction, list(layers), list(alpha), data or [],
         exclude_store or [], split, tune_fraction, limit, max_new_tokens, batch_size, prompt_only, positions,
         always, full, quality, judge, max_over_refusal, out, dtype, device, sweep=True)


@app.command("direction")
def direction_cmd(
    store: Path = typer.Argument(..., help="Activation store (from `ihs extract`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for direction.json + directions.safetensors."),
    layers: str | None = typer.Option(None, help="Layers to keep (default: all), a:b or a,b,c."),
    positive: str = typer.Option("malicious", help="Positive classes, comma-separated."),
    negative: str = typer.Option("normal", help="Negative classes, comma-separated."),
    generations: Path | None = typer.Option(None, help="generations.jsonl: refused minus complied prompts of the positive classes instead."),
    train_fraction: float = typer.Option(0.75, help="Share of the store's ids (by hash) the means use."),
    seed: int = typer.Option(0, help="Seed of the id hash split."),
) -> None:
    """Difference-of-means directions (positive - negative, or refused - complied) on the store's training ids."""
    from ihs.interventions.graft_cli import read_jsonl
    from ihs.interventions.steering import compute_directions
    from ihs.layers import parse_layers
    from ihs.progress import console
    from ihs.store import ActivationStore

    st = ActivationStore.load(store)
    chosen = parse_layers(layers, st.num_layers) if layers else None
    refused = None
    if generations is not None:
        rows = read_jsonl(generations)
        if any("refused" not in r for r in rows):
            raise IhsError(f"{generations} has rows without a 'refused' verdict (judge them first)")
        refused = {r["id"]: bool(r["refused"]) for r in rows}
    dirs = compute_directions(st, chosen, [p.strip() for p in positive.split(",") if p.strip()],
                              [n.strip() for n in negative.split(",") if n.strip()], train_fraction, seed, refused)
    dirs.save(out)
    ratio = dirs.diff_norm / dirs.mean_norm
    mid = len(dirs.layers) // 2
    console.print(f"direction ({dirs.method}): {dirs.info['n_positive']} {dirs.positive} vs {dirs.info['n_negative']} "
                  f"{dirs.negative} training prompts, {len(dirs.heldout_ids)} held out; layers {dirs.layers[0]}..{dirs.layers[-1]}; "
                  f"|diff| / mean |h| at layer {dirs.layers[mid]}: {ratio[mid]:.3f}")
    console.print(f"saved: {out}")
