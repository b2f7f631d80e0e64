"""``ihs generate``, ``ihs graft`` and ``ihs jailbreak``: generation with refusal judging, logit grafting,
and the per-input jailbreak analysis.

* ``ihs generate`` writes ``generations.jsonl`` (one judged answer per prompt, keyed by prompt id),
  ``refusal.json`` (refusal rate per class and jailbreak family, ASR), ``refusal_rates.json``
  (``{model: {class: rate}}``, the file ``ihs lens --refusal`` reads) and ``refusal.png``.
* ``ihs graft`` writes ``graft.json`` (ASR per grafted layer, no-graft baseline, real-jailbreak
  reference, examples; the reverse graft with ``--reverse``), ``generations.jsonl`` and
  ``graft_asr.png``.
* ``ihs jailbreak`` joins a store and generations: ``jailbreak.json``, ``jailbreak_table.csv``,
  ``jailbreak.png``.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ihs.errors import IhsError

MODEL_HELP = "Zoo name (see `ihs models list`), local model folder, GGUF file or Hugging Face id."
SET_HELP = "A prompt set: SPEC (builtin:malicious, file.csv:goal, ...) or NAME=SPEC to name its class."
DEVICE_MAP_HELP = ("Spread the model over devices with accelerate: auto, balanced, sequential, or a JSON "
                   "{module: device} (inline or a .json file). See docs/SCALING.md.")
MAX_MEMORY_HELP = "Memory cap per device with --device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB."
JUDGE_HELP = ("Refusal judge: phrases (default; refusal phrases in the first 160 characters, case-insensitive), "
              "phrases:N, gcg (GCG prefixes verbatim), py:module:function, classifier:MODEL[:LABELS].")


def _command() -> str:
    return " ".join(shlex.quote(a) for a in ["ihs", *sys.argv[1:]])


def _clean(value: Any) -> Any:
    """JSON without NaN (written as null)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise IhsError(f"cannot read {path}: {exc}") from None


def _load_set(spec: str, default_label: str, limit: int | None) -> list[Any]:
    from ihs.data.prepare import prepare

    if "=" in spec.split(":", 1)[0]:
        pair = spec.split("=", 1)
        name, body = pair[0].strip(), pair[1].strip()
    else:
        name, body = (spec.split(":", 1)[1] if spec.startswith("builtin:") else default_label), spec
    records, _ = prepare([(name, body)], limit=limit)
    return records


def _load_model(model: str, dtype: str, device: str | None, trust_remote_code: bool,
                device_map: str | None = None, max_memory: str | None = None):
    from ihs.models.loading import load_model

    return load_model(model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                      trust_remote_code=trust_remote_code)


def _guard(fn, *args) -> None:
    try:
        fn(*args)
    except IhsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


# -- ihs generate ----------------------------------------------------------------------------------


def generate_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "smollm2-135m-instruct",
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="NAME=SPEC, repeatable.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N distinct prompts of each set.")] = None,
    limit_by: Annotated[str | None, typer.Option(
        "--limit-by", help="Apply --limit per value of this tag too, e.g. lang (N per class and language).")] = None,
    lang: Annotated[str | None, typer.Option(
        "--lang", help="Language tag for prompts without one (a lang/language column wins).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per answer (greedy; stops at EOS).")] = 32,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    judge: Annotated[str, typer.Option(help=JUDGE_HELP)] = "phrases",
    rejudge: Annotated[Path | None, typer.Option(
        help="Re-judge an existing generations.jsonl with --judge instead of generating.")] = None,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Chat template (default: if present).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt for chat formatting.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, mps (default: cpu).")] = None,
    device_map: Annotated[str | None, typer.Option(
        "--device-map", help=DEVICE_MAP_HELP)] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", help=MAX_MEMORY_HELP)] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow model code from the hub.")] = False,
) -> None:
    """Generate greedy answers for prompt sets, judge refusal, report refusal rate per class and family and ASR."""
    _guard(_generate, out, model, data, limit, max_new_tokens, batch_size, judge, rejudge, chat, system_prompt,
           dtype, device, trust_remote_code, device_map, max_memory, limit_by, lang)


def _generate(out, model, data, limit, max_new_tokens, batch_size, judge, rejudge, chat, system_prompt, dtype,
              device, trust_remote_code, device_map=None, max_memory=None, limit_by=None, lang=None) -> None:
    from ihs.data.prepare import prepare
    from ihs.generation import (
        GenerateOptions,
        GenerationRun,
        generate,
        judge_rows,
        load_judge,
        refusal_summary,
    )
    from ihs.plots.graft import plot_refusal
    from ihs.progress import console

    out.mkdir(parents=True, exist_ok=True)
    if rejudge is not None:
        rows = read_jsonl(rejudge)
        old = json.loads((rejudge.parent / "refusal.json").read_text()) if (rejudge.parent / "refusal.json").exists() else {}
        run = judge_rows(GenerationRun(rows, 0.0, sum(len(r.get("new_ids", [])) for r in rows)), load_judge(judge))
        name = old.get("model", model)
        meta = {k: old.get(k) for k in ("model", "identity", "options", "seconds", "new_tokens_per_s") if k in old}
    else:
        records, _ = prepare(data or [], limit=limit, lang=lang, limit_by=limit_by)
        lm = _load_model(model, dtype, device, trust_remote_code, device_map, max_memory)
        options = GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                                  system_prompt=system_prompt)
        run = generate(lm, records, options, judge)
        name = lm.name
        meta = {"model": lm.name, "identity": lm.identity, "options": {**run.options, "dtype": dtype},
                "seconds": round(run.seconds, 2),
                "new_tokens_per_s": round(run.new_tokens / run.seconds, 2) if run.seconds else None}
    summary = refusal_summary(run.rows)
    _write_jsonl(out / "generations.jsonl", run.rows)
    _write_json(out / "refusal.json", {**meta, "command": _command(), "judge": run.judge, **summary})
    _write_json(out / "refusal_rates.json",
                {name: {label: v["refusal_rate"] for label, v in summary["per_class"].items()}})
    plot_refusal(summary, out / "refusal.png", title=f"{name}: refusal rate ({run.judge} judge)")
    for label, v in summary["per_class"].items():
        console.print(f"{label:>12}: refusal {v['refusal_rate']:.2f} ({v['refused']}/{v['n']})  ASR {v['asr']:.2f}")
    console.print(f"wrote {out}/generations.jsonl, refusal.json, refusal.png"
                  + (f"  ({meta['seconds']} s)" if meta.get("seconds") else ""))


# -- ihs graft --------------------------------------------------------------------------------------


def graft_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "smollm2-135m-instruct",
    target: Annotated[str, typer.Option(help="Targets (grafted into). " + SET_HELP)] = "builtin:malicious",
    donor: Annotated[str, typer.Option(help="Donors (states taken from). " + SET_HELP)] = "builtin:normal",
    layers: Annotated[str, typer.Option(
        help="Layers to graft: a:b[:step] (inclusive; L = last block), or a,b,c. 0 = embedding output.")] = "0:L",
    limit: Annotated[int, typer.Option(help="Target prompts (the first N of the target set).")] = 40,
    donor_limit: Annotated[int, typer.Option(
        help="Donor prompts, taken after the first --limit of the donor set (so reverse targets never donate).")] = 100,
    per_pair: Annotated[bool, typer.Option(
        "--per-pair/--mean", help="One donor per target (cycling) instead of the donors' mean state.")] = False,
    jailbreak: Annotated[str | None, typer.Option(
        help="Real jailbreak set for the reference ASR ('none' to skip); prompts wrapping the targets' goals "
             "are used when the set tags goal_id.")] = "builtin:jailbreak",
    reverse: Annotated[bool, typer.Option(
        "--reverse/--no-reverse", help="Also graft target-set states into donor-set prompts.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per answer (greedy).")] = 32,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    judge: Annotated[str, typer.Option(help=JUDGE_HELP)] = "phrases",
    examples: Annotated[int, typer.Option(help="Example generations kept per layer in graft.json.")] = 3,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Chat template (default: if present).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt for chat formatting.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, mps (default: cpu).")] = None,
    device_map: Annotated[str | None, typer.Option(
        "--device-map", help=DEVICE_MAP_HELP)] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", help=MAX_MEMORY_HELP)] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow model code from the hub.")] = False,
) -> None:
    """Logit grafting: replace the targets' last-position state at each layer with a donor state, generate, judge."""
    _guard(_graft, out, model, target, donor, layers, limit, donor_limit, per_pair, jailbreak, reverse,
           max_new_tokens, batch_size, judge, examples, chat, system_prompt, dtype, device, trust_remote_code,
           device_map, max_memory)


def _split(records: list[Any], limit: int, donor_limit: int, what: str) -> tuple[list[Any], list[Any]]:
    head, tail = records[:limit], records[limit:limit + donor_limit]
    if not head:
        raise IhsError(f"the {what} set is empty")
    return head, tail


def _graft(out, model, target, donor, layers, limit, donor_limit, per_pair, jailbreak, reverse, max_new_tokens,
           batch_size, judge, examples, chat, system_prompt, dtype, device, trust_remote_code,
           device_map=None, max_memory=None) -> None:
    from ihs.generation import GenerateOptions
    from ihs.interventions.grafting import graft_sweep
    from ihs.layers import parse_layers
    from ihs.plots.graft import plot_graft
    from ihs.progress import console

    if limit <= 0 or donor_limit <= 0:
        raise IhsError("--limit and --donor-limit must be positive")
    targets_all = _load_set(target, "target", limit + donor_limit)
    donors_all = _load_set(donor, "donor", limit + donor_limit)
    targets, reverse_donors = _split(targets_all, limit, donor_limit, "target")
    reverse_targets, donors = _split(donors_all, limit, donor_limit, "donor")
    if not donors:
        raise IhsError(f"the donor set has no prompts after its first {limit} (kept for the reverse graft)")
    reference = None
    if jailbreak and jailbreak.lower() != "none":
        pool = _load_set(jailbreak, "jailbreak", None)
        goals = {t.id for t in targets}
        matched = [r for r in pool if r.tags.get("goal_id") in goals]
        reference = matched or pool[:limit]
    lm = _load_model(model, dtype, device, trust_remote_code, device_map, max_memory)
    chosen = parse_layers(layers, lm.num_layers)
    options = GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                              system_prompt=system_prompt)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    console.print(f"graft: {len(targets)} targets, {len(donors)} donors, layers {chosen}")
    forward = graft_sweep(lm, targets, donors, chosen, judge, options, per_pair, examples, reference)
    rows = [{**r, "direction": "forward"} for r in forward.pop("rows")]
    result: dict[str, Any] = {"model": lm.name, "identity": lm.identity, "command": _command(),
                              "forward": forward, "reverse": None}
    if reverse:
        if not reverse_donors:
            raise IhsError(f"the target set has no prompts after its first {limit} to donate for the reverse graft")
        console.print(f"reverse graft: {len(reverse_targets)} targets, {len(reverse_donors)} donors")
        back = graft_sweep(lm, reverse_targets, reverse_donors, chosen, judge, options, per_pair, examples, None)
        rows += [{**r, "direction": "reverse"} for r in back.pop("rows")]
        result["reverse"] = back
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["target_donor_split"] = (f"targets: the first {limit} prompts of each set; donors: the next "
                                    f"{donor_limit} of the other set, so no prompt is both")
    _write_json(out / "graft.json", result)
    _write_jsonl(out / "generations.jsonl", rows)
    plot_graft(result, out / "graft_asr.png")
    base = forward["baseline"]["asr"]
    best = max(forward["layers"], key=lambda e: e["asr"])
    ref = forward.get("reference")
    console.print(f"ASR no graft {base:.2f}; best graft layer {best['layer']}: {best['asr']:.2f}"
                  + (f"; real jailbreaks {ref['asr']:.2f}" if ref else ""))
    console.print(f"wrote {out}/graft.json, generations.jsonl, graft_asr.png ({result['seconds']} s)")


# -- ihs jailbreak ----------------------------------------------------------------------------------


def jailbreak_cmd(
    store: Annotated[Path, typer.Argument(help="Store (ihs extract) holding normal, malicious and jailbreak rows.")],
    generations: Annotated[Path, typer.Option(help="generations.jsonl from ihs generate on the same prompts.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    middle: Annotated[str | None, typer.Option(
        help="Middle layers a:b, inclusive (default: the middle third, ceil(L/3):floor(2L/3)).")] = None,
    early_layer: Annotated[int | None, typer.Option(help="Layer of the early probe verdict (default ceil(L/6)).")] = None,
    classifier: Annotated[str, typer.Option(help="Probe: svm, logreg, mlp, diffmean.")] = "svm",
    lexicon: Annotated[Path | None, typer.Option(help="Emotion lexicon JSON (default: the built-in one).")] = None,
) -> None:
    """Per jailbreak input: recognised as malicious early? middle layers negative? refused? (claim 3)."""
    _guard(_jailbreak, store, generations, out, middle, early_layer, classifier, lexicon)


def _jailbreak(store_path, generations, out, middle, early_layer, classifier, lexicon) -> None:
    from ihs.analysis.emotion import EmotionMatcher, Lexicon
    from ihs.analysis.jailbreak import jailbreak_analysis
    from ihs.analysis.lens_cli import _text_of
    from ihs.layers import parse_layer_range
    from ihs.models.loading import load_tokenizer
    from ihs.plots.graft import plot_jailbreak
    from ihs.progress import console
    from ihs.store import ActivationStore

    store = ActivationStore.load(store_path)
    rows = read_jsonl(generations)
    tokenizer = load_tokenizer(store.manifest)
    matcher = EmotionMatcher(Lexicon.load(lexicon) if lexicon else Lexicon.default(), tokenizer)
    span = parse_layer_range(middle, store.num_layers) if middle else None
    result = jailbreak_analysis(store, rows, _text_of(store, tokenizer), matcher, span, early_layer, classifier)
    model = store.manifest.get("model", {}).get("name", store_path.name)
    out.mkdir(parents=True, exist_ok=True)
    table = result.pop("table")
    _write_json(out / "jailbreak.json", {"model": model, "store": str(store_path), "generations": str(generations),
                                         "command": _command(), **result})
    with (out / "jailbreak_table.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in table[0] if k != "answer"] + ["answer"])
        writer.writeheader()
        writer.writerows(table)
    plot_jailbreak(result, out / "jailbreak.png", title=f"{model}: jailbreak inputs, early probe vs middle-layer emotion")
    for name, g in result["groups"].items():
        neg = g["mid_negative_share"]["mean"]
        console.print(f"{name:>22}: n={g['n']:<4} early-recognised {g['early_recognised']}  "
                      f"mid-negative {neg}  refusal {g['refusal_rate']}")
    console.print(f"wrote {out}/jailbreak.json, jailbreak_table.csv, jailbreak.png")
