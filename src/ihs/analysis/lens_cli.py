"""``ihs lens``: emotion association, Top-K Intermediate Consistency and the cross-model table.

Reads one or more stores written by ``ihs extract`` (their logit-lens top-k is already in the
store), and writes ``lens.json`` plus figures into ``--out``:

* ``lens.json``: per model and lens (logit, and tuned with ``--tuned``): per-layer emotion
  association with 95% Wilson intervals, differences against the normal class, the first layer of
  negative dominance for malicious input, TKIC lists per class and layer, and the TKIC scalar
  over the layer range; the per-tokenizer lexicon check; the cross-model table.
* ``lens_<store>_heatmap.png`` (TKIC heatmap over the layer range, one panel per class),
  ``lens_<store>_trajectory.png`` (negative / positive shares across layers, one line per class),
  with ``--tuned`` also ``lens_<store>_tuned_heatmap.png``, ``lens_<store>_tuned_trajectory.png``
  (logit lens solid, tuned lens dashed) and ``lens_<store>_tuned_kl.png``;
* ``lens_models.md``: the cross-model table (TKIC next to refusal rate) as Markdown.

The Python entry point is :func:`analyze_store`; the command is :func:`lens_cmd`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ihs.analysis.consistency import PAD, top_k_consistency
from ihs.analysis.emotion import EMOTIONS, EmotionMatcher, Lexicon, emotion_association, emotion_codes
from ihs.errors import IhsError, StoreError
from ihs.layers import parse_layer_range
from ihs.models.loading import load_tokenizer, model_ref
from ihs.store import ActivationStore

log = logging.getLogger(__name__)

DEFAULT_TUNED_DATA = ["normal=builtin:normal", "malicious=builtin:malicious"]
REFUSAL_NOTE = ("refusal rate: not available (it comes from the generation stage: pass --refusal with the "
                "refusal_rates.json that `ihs generate` writes)")


# -- analysis of one store ---------------------------------------------------------------------------

def analyze_store(
    store: ActivationStore,
    matcher: EmotionMatcher,
    layer_range: tuple[int, int],
    lens_ids: np.ndarray | None = None,
    text_of=None,
    margin: float = 0.1,
) -> dict[str, Any]:
    """Emotion association and TKIC of one store (``lens_ids`` defaults to the store's logit lens).

    Returns a JSON-ready dict with ``association``, ``consistency`` (per class: lists, shares and
    the scalar over ``layer_range``) and ``layer_range``.
    """
    ids = store.lens_ids if lens_ids is None else lens_ids
    if ids is None:
        raise StoreError("this store has no logit-lens top-k (lens_ids); re-extract it with ihs extract")
    text_of = text_of or store.token_text
    labels = store.labels
    codes = emotion_codes(ids, text_of, matcher)
    assoc = emotion_association(codes, labels)
    consistency: dict[str, Any] = {}
    lists = {label: top_k_consistency(ids[labels == label]) for label in assoc.labels}
    reference = lists.get("normal")
    lo, hi = layer_range
    for label, tk in lists.items():
        entry = tk.to_json(text_of)
        entry["emotion"] = [[None if t == PAD else matcher.classify(text_of(int(t))) for t in row] for row in tk.tokens]
        entry["scalar"] = tk.scalar(layer_range)
        if reference is not None and label != "normal":
            # how much of this class's consistency list it shares with the normal class's: high TKIC with
            # full overlap means the layers decode the same tokens whatever the input (not class-specific)
            overlap = [len(set(a[a != PAD]) & set(b[b != PAD])) / tk.k
                       for a, b in zip(tk.tokens, reference.tokens, strict=True)]
            entry["overlap_with_normal"] = [round(x, 4) for x in overlap]
            in_range = [x for layer, x in zip(tk.layers, overlap, strict=True) if lo <= layer <= hi]
            entry["scalar"]["overlap_with_normal"] = round(float(np.mean(in_range)), 4) if in_range else None
        consistency[label] = entry
    return {
        "layer_range": list(layer_range),
        "association": assoc.to_json(margin=margin),
        "consistency": consistency,
    }


def _text_of(store: ActivationStore, tokenizer: Any = None):
    """Decoded text of a token id: the store's own table first, else the tokenizer, else "<id>"."""
    cache: dict[int, str] = {}

    def text_of(token_id: int) -> str:
        token_id = int(token_id)
        if token_id in store.lens_tokens:
            return store.lens_tokens[token_id]
        if token_id not in cache:
            cache[token_id] = tokenizer.decode([token_id]) if tokenizer is not None else f"<{token_id}>"
        return cache[token_id]

    return text_of


def _heatmap_panels(result: dict[str, Any], layer_range: tuple[int, int], classes: list[str] | None = None):
    from ihs.plots.lens import HeatmapPanel

    lo, hi = layer_range
    panels = []
    for label in classes or list(result["consistency"]):
        entry = result["consistency"].get(label)
        if entry is None:
            continue
        cols = [i for i, layer in enumerate(entry["layers"]) if lo <= layer <= hi]
        if not cols or not entry["n"]:
            continue
        k = len(entry["tokens"][0])
        panels.append(HeatmapPanel(
            label=label,
            layers=[entry["layers"][c] for c in cols],
            texts=[[entry["text"][c][r] for c in cols] for r in range(k)],
            shares=np.array([[entry["shares"][c][r] for c in cols] for r in range(k)], dtype=float),
            emotions=[[entry["emotion"][c][r] for c in cols] for r in range(k)],
            n=entry["n"],
        ))
    return panels


def _trajectory_series(result: dict[str, Any], top: str = "topk",
                       classes: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    table = result["association"]["classes"]
    return {label: {e: table[label][top][e]["share"] for e in EMOTIONS}
            for label in (classes or list(table)) if label in table and table[label]["n"]}


# -- model, tokenizer, tuned lens ------------------------------------------------------------------------

def build_tuned_lens(lm, data: list[str], chat: bool | None = None, limit: int | None = 100, positions: int = 12,
                     continue_tokens: int = 24, epochs: int = 3, progress: bool = True):
    """Train a tuned lens for ``lm`` on the text sets ``data`` (NAME=SPEC); returns (lens, report).

    The recipe behind ``ihs lens --tuned``: each text is formatted as the store's prompts were
    (``chat``), extended by the model's own greedy continuation of ``continue_tokens`` tokens, and
    ``positions`` positions per sequence are drawn (never the first); see
    :func:`ihs.analysis.tuned_lens.train_tuned_lens` for the optimisation.
    """
    from ihs.analysis.tuned_lens import collect_states, train_tuned_lens
    from ihs.data.prepare import prepare

    records, _ = prepare(data, limit=limit)
    texts = [r.text for r in records]
    started = time.perf_counter()
    states = collect_states(lm, texts, chat=chat, positions_per_sequence=positions,
                            continue_tokens=continue_tokens, progress=progress)
    collect_seconds = time.perf_counter() - started
    return train_tuned_lens(lm, states, epochs=epochs, progress=progress, meta={
        "data": list(data), "limit": limit, "texts": len(texts), "text_ids": sorted(r.id for r in records),
        "chat": chat, "positions_per_sequence": positions, "continue_tokens": continue_tokens,
        "collect_seconds": round(collect_seconds, 1),
    })


def _tuned_for_store(store: ActivationStore, model: str | None, data: list[str], retrain: bool, epochs: int,
                     positions: int, continue_tokens: int, limit: int | None, progress: bool):
    """Load (or train and save) the store's tuned lens; returns (lm, lens)."""
    from ihs.analysis.tuned_lens import TunedLens, tuned_lens_dir
    from ihs.models.loading import load_model
    from ihs.progress import console

    ref = model or model_ref(store.manifest.get("model", {}))
    if ref is None:
        raise IhsError(f"cannot tell which model made {store.path}; pass --model for the tuned lens")
    lm = load_model(ref, dtype="float32")
    expected = store.manifest.get("model", {}).get("fingerprint")
    if expected and lm.fingerprint() != expected:
        raise IhsError(f"--model {ref} is not the model of {store.path} ({lm.fingerprint()} != {expected})")
    folder = tuned_lens_dir(store.path) if store.path else None
    if folder is not None and (folder / "tuned_lens.safetensors").exists() and not retrain:
        lens = TunedLens.load(folder, fingerprint=lm.fingerprint())
        console.print(f"tuned lens: loaded {folder}")
    else:
        console.print(f"tuned lens: training on {', '.join(data)} (at most {limit} texts each), {positions} positions "
                      f"per sequence, {continue_tokens} continuation tokens, {epochs} epochs")
        lens, report = build_tuned_lens(lm, data, chat=store.manifest.get("chat"), limit=limit, positions=positions,
                                        continue_tokens=continue_tokens, epochs=epochs, progress=progress)
        if folder is not None:
            lens.save(folder)
            console.print(f"tuned lens: saved to {folder} ({report['train_seconds']} s training)")
    lens.meta["texts_in_store"] = len(set(lens.meta.get("text_ids", [])) & set(store.ids))
    return lm, lens


# -- cross-model table -------------------------------------------------------------------------------------

def _refusal_lookup(paths: list[Path] | None) -> dict[str, Any]:
    """Merge refusal-rate files: ``{model or store name: rate}`` or ``{name: {class: rate}}``
    (``ihs generate`` writes the latter as ``refusal_rates.json``)."""
    merged: dict[str, Any] = {}
    for path in paths or []:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise IhsError(f"cannot read refusal rates from {path}: {exc}") from None
        if not isinstance(data, dict):
            raise IhsError(f"{path} must hold a JSON object {{model or store name: refusal rate}}")
        merged.update(data)
    return merged


def _refusal_for(lookup: dict[str, Any], keys: list[str]) -> dict[str, float]:
    """Refusal rate per class for the first key found; a bare number means the malicious class."""
    for key in keys:
        if key and key in lookup:
            value = lookup[key]
            if not isinstance(value, dict):
                value = {"malicious": value}
            return {str(k): float(v) for k, v in value.items()
                    if isinstance(v, int | float) and not (isinstance(v, float) and np.isnan(v))}
    return {}


ATTACK_CLASSES = ("malicious", "jailbreak")


def cross_model_table(models: list[dict[str, Any]], refusal: dict[str, Any], lens: str = "logit") -> dict[str, Any]:
    """One row per model: TKIC scalars per class next to refusal rates, with Spearman's rank
    correlation across models (TKIC top-1 on class c vs refusal rate on c, for malicious and
    jailbreak) wherever at least 3 models have both values."""
    from scipy.stats import spearmanr

    rows = []
    for m in models:
        result = m["lenses"].get(lens)
        if result is None:
            continue
        model = m.get("model", {})
        keys = [m["store_name"], str(m["store"]), model.get("name"), model.get("id"), model.get("zoo_name")]
        rows.append({"model": model.get("name") or model.get("id"), "store": m["store"],
                     "layer_range": result["layer_range"],
                     "tkic_top1": {label: c["scalar"]["top1"] for label, c in result["consistency"].items()},
                     "tkic_topk": {label: c["scalar"]["topk"] for label, c in result["consistency"].items()},
                     "refusal_rate": _refusal_for(refusal, keys)})
    out: dict[str, Any] = {"lens": lens, "rows": rows, "correlation": {}}
    notes = []
    if not any(r["refusal_rate"] for r in rows):
        notes.append(REFUSAL_NOTE)
    else:
        for label in ATTACK_CLASSES:
            pairs = [(r["tkic_top1"].get(label), r["refusal_rate"].get(label)) for r in rows]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if len(pairs) >= 3:
                rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
                out["correlation"][label] = {
                    "method": "spearman", "x": f"TKIC top-1 on {label} input", "y": f"refusal rate on {label}",
                    "n_models": len(pairs), "rho": None if np.isnan(rho) else round(float(rho), 4),
                    "p": None if np.isnan(p) else round(float(p), 4)}
            elif any(r["refusal_rate"].get(label) is not None for r in rows):
                notes.append(f"{label}: rank correlation needs at least 3 models with a refusal rate ({len(pairs)} here)")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def table_markdown(table: dict[str, Any]) -> str:
    labels: list[str] = []
    for r in table["rows"]:
        labels.extend(x for x in r["tkic_top1"] if x not in labels)
    refusal_labels = [x for x in ATTACK_CLASSES if x in labels or any(x in r["refusal_rate"] for r in table["rows"])]
    head = (["model", "layers"] + [f"TKIC top-1 {x}" for x in labels] + [f"TKIC top-k {x}" for x in labels]
            + [f"refusal rate {x}" for x in refusal_labels])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v):
        return "" if v is None else f"{v:.3f}"

    for r in table["rows"]:
        cells = [_md(str(r["model"])), f"{r['layer_range'][0]}-{r['layer_range'][1]}"]
        cells += [fmt(r["tkic_top1"].get(x)) for x in labels] + [fmt(r["tkic_topk"].get(x)) for x in labels]
        cells += [fmt(r["refusal_rate"].get(x)) for x in refusal_labels]
        lines.append("| " + " | ".join(cells) + " |")
    for label, c in (table.get("correlation") or {}).items():
        lines.append(f"\nSpearman rho, TKIC top-1 vs refusal rate on {label} ({c['n_models']} models): "
                     f"{c['rho']} (p = {c['p']})")
    if table.get("note"):
        lines.append(f"\nNote: {table['note']}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return re.sub(r"([|\\`*_<>\[\]])", r"\\\1", text)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "store"


# -- the command ---------------------------------------------------------------------------------------------

def lens_cmd(
    stores: Annotated[list[Path], typer.Argument(help="Store directories written by `ihs extract`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for lens.json and figures.")],
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Layer range a:b, inclusive, over 0..L (or fractions of depth, 0.4:0.6), for the TKIC "
        "scalar and the heatmap (default: the middle third of depth, ceil(L/3):floor(2L/3)).")] = None,
    heatmap_layers: Annotated[str | None, typer.Option(
        "--heatmap-layers", help="Layer range of the heatmaps only (default: --layers); fractions of depth "
        "such as 0.5:0.85 fit models of different depth.")] = None,
    lexicon: Annotated[Path | None, typer.Option(
        "--lexicon", help="Emotion lexicon JSON (default: the built-in emotion_en).")] = None,
    tuned: Annotated[bool, typer.Option(
        "--tuned", help="Also analyse with a tuned lens (trained and saved in STORE/tuned_lens on first use; "
        "needs the model).")] = False,
    tuned_data: Annotated[list[str] | None, typer.Option(
        "--tuned-data", help="NAME=SPEC text sets for training the tuned lens (default: built-in normal and "
        "malicious).")] = None,
    tuned_limit: Annotated[int | None, typer.Option(
        "--tuned-limit", help="At most this many texts per tuned-lens set.")] = 100,
    tuned_epochs: Annotated[int, typer.Option("--tuned-epochs", help="Tuned-lens training epochs.")] = 3,
    tuned_positions: Annotated[int, typer.Option(
        "--tuned-positions", help="Positions drawn per training sequence.")] = 12,
    tuned_continue: Annotated[int, typer.Option(
        "--tuned-continue", help="Tokens of the model's own greedy continuation appended to each training text "
        "(0: prompts only).")] = 24,
    retrain: Annotated[bool, typer.Option("--retrain", help="Retrain the tuned lens even if the store has one.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model for the tuned lens and tokenizer (default: the store's).")] = None,
    refusal: Annotated[list[Path] | None, typer.Option(
        "--refusal", help="Refusal rates, repeatable: refusal_rates.json from `ihs generate` ({model: {class: "
        "rate}}) or {store/model name: rate on malicious prompts}.")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Margin for 'negative dominates' (share difference).")] = 0.1,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write figures.")] = True,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated classes to draw in the figures, in order (default: all; the "
        "analysis always covers all).")] = None,
) -> None:
    """Logit lens: emotion tokens per layer and class, Top-K Intermediate Consistency, cross-model table."""
    from ihs.progress import console

    lex = Lexicon.load(lexicon)
    out.mkdir(parents=True, exist_ok=True)
    refusal_lookup = _refusal_lookup(refusal)
    progress = sys.stderr.isatty()
    models: list[dict[str, Any]] = []
    used_names: set[str] = set()
    for path in stores:
        store = ActivationStore.load(path)
        if store.manifest.get("status") not in (None, "complete"):
            raise StoreError(f"store {path} is not complete (status {store.manifest.get('status')})")
        name = _slug(Path(path).resolve().name)
        while name in used_names:
            name += "_"
        used_names.add(name)
        tokenizer = load_tokenizer(store.manifest, model)
        matcher = EmotionMatcher(lex, tokenizer)
        layer_range = parse_layer_range(layers, store.num_layers)
        heat_range = parse_layer_range(heatmap_layers, store.num_layers) if heatmap_layers else layer_range
        entry: dict[str, Any] = {
            "store": str(path), "store_name": name, "model": store.manifest.get("model", {}),
            "num_layers": store.num_layers, "k": int(store.lens_ids.shape[2]) if store.lens_ids is not None else None,
            "labels": {label: int((store.labels == label).sum()) for label in dict.fromkeys(store.labels)},
            "vocab_check": matcher.vocab_report,
            "lenses": {"logit": analyze_store(store, matcher, layer_range, text_of=_text_of(store, tokenizer),
                                              margin=margin)},
        }
        if tokenizer is None:
            entry["vocab_check_note"] = "tokenizer not available locally: no vocabulary check, fragment rules off"
        if tuned:
            lm, lens = _tuned_for_store(store, model, tuned_data or DEFAULT_TUNED_DATA, retrain, tuned_epochs,
                                        tuned_positions, tuned_continue, tuned_limit, progress)
            from ihs.analysis.tuned_lens import lens_kl, tuned_topk

            if matcher.vocab_report is None:
                matcher = EmotionMatcher(lex, lm.tokenizer)
            ids, _ = tuned_topk(lm, lens, store.hidden, entry["k"] or 5)
            entry["lenses"]["tuned"] = analyze_store(store, matcher, layer_range, lens_ids=ids,
                                                     text_of=_text_of(store, lm.tokenizer), margin=margin)
            entry["tuned_lens"] = {k: v for k, v in lens.meta.items() if k not in ("translator", "text_ids")}
            entry["tuned_lens"]["store_kl"] = {
                "what": "mean KL(final layer || lens at layer l) over the store's last positions, nats",
                "logit": [round(float(x), 4) for x in lens_kl(lm, store.hidden)],
                "tuned": [round(float(x), 4) for x in lens_kl(lm, store.hidden, lens)],
            }
        models.append(entry)
        if figures:
            _figures(entry, out, layer_range, heat_range, _split(classes))
        console.print(_summary_line(entry))
    tables = {"logit": cross_model_table(models, refusal_lookup, "logit")}
    if tuned:
        tables["tuned"] = cross_model_table(models, refusal_lookup, "tuned")
    from ihs import __version__

    payload = {
        "ihs_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "layer_convention": "index 0 = embedding output; index i = output of decoder block i",
        "lexicon": lex.describe(),
        "tkic_definition": ("per class and layer: count each token once per input among all inputs' top-k lists, keep the "
                            "k most frequent, share = count / N; scalar top1 = mean over the layer range (inclusive) of the "
                            "top-1 share, topk = mean over the range of the mean of the k shares"),
        "models": models,
        "table": tables,
    }
    (out / "lens.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    md = "\n".join(f"### {name} lens\n\n{table_markdown(t)}" for name, t in tables.items())
    (out / "lens_models.md").write_text(md, encoding="utf-8")
    console.print(f"wrote {out / 'lens.json'} and {out / 'lens_models.md'}")


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _figures(entry: dict[str, Any], out: Path, layer_range: tuple[int, int],
             heat_range: tuple[int, int] | None = None, classes: list[str] | None = None) -> None:
    from ihs.plots.lens import plot_consistency_heatmap, plot_emotion_trajectory, plot_kl_by_layer

    name = entry["store_name"]
    model = entry["model"].get("name") or entry["model"].get("id") or name
    logit = entry["lenses"]["logit"]
    heat_range = heat_range or layer_range
    lo, hi = heat_range
    k = entry["k"]
    entry["heatmap_layers"] = list(heat_range)
    panels = _heatmap_panels(logit, heat_range, classes)
    if panels:
        plot_consistency_heatmap(panels, out / f"lens_{name}_heatmap.png",
                                 f"{model}: logit-lens top-{k} consistency, layers {lo}-{hi}")
    tuned = entry["lenses"].get("tuned")
    layers = logit["association"]["layers"]
    plot_emotion_trajectory(_trajectory_series(logit, classes=classes), layers, out / f"lens_{name}_trajectory.png",
                            f"{model}: emotion tokens in the logit-lens top-{k} per layer", layer_range=layer_range,
                            top=f"top-{k}")
    if tuned:
        plot_emotion_trajectory(_trajectory_series(logit, classes=classes), layers,
                                out / f"lens_{name}_tuned_trajectory.png",
                                f"{model}: emotion tokens in the top-{k} per layer, logit vs tuned lens",
                                layer_range=layer_range, dashed=_trajectory_series(tuned, classes=classes),
                                top=f"top-{k}")
        panels = _heatmap_panels(tuned, heat_range, classes)
        if panels:
            plot_consistency_heatmap(panels, out / f"lens_{name}_tuned_heatmap.png",
                                     f"{model}: tuned-lens top-{k} consistency, layers {lo}-{hi}")
        kl = entry["tuned_lens"]["store_kl"]
        plot_kl_by_layer({"logit lens": kl["logit"], "tuned lens": kl["tuned"]}, layers,
                         out / f"lens_{name}_tuned_kl.png", f"{model}: KL to the final layer, store's last positions")


def _summary_line(entry: dict[str, Any]) -> str:
    parts = [f"{entry['store_name']}:"]
    for lens_name, result in entry["lenses"].items():
        scal = {label: c["scalar"]["top1"] for label, c in result["consistency"].items()}
        dom = result["association"]["negative_dominance"]["topk"]
        parts.append(f"\\[{lens_name}] TKIC top-1 " + ", ".join(f"{k}={v}" for k, v in scal.items())
                     + f"; negative dominates for malicious from layer {dom['first']}")
    return " ".join(parts)
