"""Lens workflow: emotion tokens in the logit lens, Top-K Intermediate Consistency, the cross-model table
(claim 2: middle layers decode to emotion words), optionally beside a tuned lens.

Reads stores written by ``ihs extract`` (their logit-lens top-k is in the store) and gives a
:class:`LensResult`, saved as

* ``lens.json``: per model and lens (logit, and tuned with ``tuned``): per-layer emotion
  association with 95% Wilson intervals, the first layer of negative dominance for malicious
  input, TKIC lists per class and layer and the TKIC scalar over the layer range; the per-tokenizer
  lexicon check; the cross-model table (TKIC next to refusal rate);
* ``lens_models.md``: the cross-model table as Markdown;
* ``lens_<store>_heatmap.png``, ``lens_<store>_trajectory.png`` and, with a tuned lens,
  ``lens_<store>_tuned_heatmap.png``, ``lens_<store>_tuned_trajectory.png``, ``lens_<store>_tuned_kl.png``.

>>> from ihs.workflows.lens import LensOptions, run_lens
>>> result = run_lens({"smol": "runs/smol/store"}, LensOptions(layers="0.4:0.6"))  # doctest: +SKIP
>>> result.numbers()["tkic_top1"], result.save("runs/smol/lens")                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.analysis.emotion import EmotionMatcher, Lexicon
from ihs.analysis.lens import (
    LAYER_CONVENTION,
    TKIC_DEFINITION,
    analyze_store,
    cross_model_table,
    read_refusal,
    slug,
    table_markdown,
    text_of,
)
from ihs.errors import IhsError, StoreError
from ihs.layers import parse_layer_range
from ihs.models.handle import ModelHandle
from ihs.models.loading import LoadedModel, load_tokenizer
from ihs.store import ActivationStore
from ihs.workflows.base import Result, Step, StepContext, file_digest, opt

log = logging.getLogger(__name__)

ModelArg = str | LoadedModel | ModelHandle | None


@dataclass(kw_only=True)
class LensOptions:
    """Logit lens (and tuned lens): emotion tokens per layer and class, TKIC, the cross-model table."""

    layers: str | None = opt(None, "Layer range a:b, inclusive, over 0..L (or fractions of depth, 0.4:0.6), for "
                                   "the TKIC scalar and the heatmap (null: the middle third of depth, "
                                   "ceil(L/3):floor(2L/3)).")
    heatmap_layers: str | None = opt(None, "Layer range of the heatmaps only (null: layers); fractions of depth "
                                           "such as 0.5:0.85 fit models of different depth.")
    lexicon: str | None = opt(None, "Emotion lexicon JSON (null: the built-in emotion_en).")
    margin: float = opt(0.1, "Margin for 'negative dominates' (share difference).")
    tuned: bool = opt(False, "Also analyse with a tuned lens (trained and saved in STORE/tuned_lens on first use, "
                             "reused while model and training settings match; needs the model).")
    tuned_data: list[str] | None = opt(None, "NAME=SPEC text sets for training the tuned lens (null: built-in "
                                             "normal and malicious).")
    tuned_limit: int | None = opt(100, "At most this many texts per tuned-lens set.")
    tuned_epochs: int = opt(3, "Tuned-lens training epochs.")
    tuned_positions: int = opt(12, "Positions drawn per tuned-lens training sequence.")
    tuned_continue: int = opt(24, "Tokens of the model's own greedy continuation appended to each tuned-lens "
                                  "training text (0: prompts only).")
    retrain: bool = opt(False, "Retrain the tuned lens even if the store has one.")
    refusal: list[str] | None = opt(None, "Refusal-rate files for the cross-model table: refusal_rates.json from "
                                          "`ihs generate` ({model: {class: rate}}) or {store/model name: rate on "
                                          "malicious prompts}.")
    classes: list[str] | None = opt(None, "Classes drawn in the figures, in order (null: all; the analysis always "
                                          "covers all).")

    def validate(self) -> None:
        if not 0 <= self.margin < 1:
            raise IhsError(f"margin must be in [0, 1), got {self.margin}")
        for name in ("tuned_epochs", "tuned_positions", "tuned_limit"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise IhsError(f"{name} must be positive, got {value}")
        if self.tuned_continue < 0:
            raise IhsError(f"tuned_continue must be 0 or more, got {self.tuned_continue}")


def command_line(stores: Sequence[str], names: Sequence[str] | None, options: LensOptions,
                 out: str | Path | None, model: str | None = None) -> str:
    """The canonical ``ihs lens`` command for these inputs, written into lens.json."""
    o, d = options, LensOptions()
    parts = ["ihs", "lens", *stores]
    for flag, name in (("--layers", "layers"), ("--heatmap-layers", "heatmap_layers"), ("--lexicon", "lexicon"),
                       ("--margin", "margin"), ("--tuned-limit", "tuned_limit"), ("--tuned-epochs", "tuned_epochs"),
                       ("--tuned-positions", "tuned_positions"), ("--tuned-continue", "tuned_continue")):
        value = getattr(o, name)
        if value != getattr(d, name) and (o.tuned or not name.startswith("tuned")):
            parts += [flag, str(value)]
    if o.tuned:
        parts.append("--tuned")
        for spec in o.tuned_data or []:
            parts += ["--tuned-data", spec]
        if o.retrain:
            parts.append("--retrain")
    for path in o.refusal or []:
        parts += ["--refusal", str(path)]
    if o.classes:
        parts += ["--classes", ",".join(o.classes)]
    if names:
        parts += ["--names", ",".join(names)]
    if model:
        parts += ["--model", model]
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


class LensResult(Result):
    """``lens.json``: per model, per lens, emotion association and TKIC; the cross-model tables."""

    FILE = "lens.json"
    TABLE_FILE = "lens_models.md"

    def __init__(self, data: dict[str, Any], classes: Sequence[str] | None = None) -> None:
        super().__init__(data)
        self.classes = list(classes) if classes else None

    @property
    def models(self) -> list[dict[str, Any]]:
        """One entry per store: store, store_name, model, num_layers, k, labels, vocab_check, lenses, ..."""
        return self.data["models"]

    @property
    def tables(self) -> dict[str, Any]:
        """The cross-model table per lens (``logit``, and ``tuned`` with a tuned lens)."""
        return self.data.get("table") or {}

    def markdown(self) -> str:
        """The cross-model tables as Markdown (``lens_models.md``)."""
        return "\n".join(f"### {name} lens\n\n{table_markdown(t)}" for name, t in self.tables.items())

    def save(self, folder: str | Path, *, figures: bool = True, classes: Sequence[str] | None = None) -> list[Path]:
        """Write lens.json, lens_models.md and (``figures``) each store's PNG figures, drawing ``classes``
        (default: the classes the result was computed with, else all)."""
        written = super().save(folder)
        folder = Path(folder)
        (folder / self.TABLE_FILE).write_text(self.markdown(), encoding="utf-8")
        written.append(folder / self.TABLE_FILE)
        if figures:
            from ihs.plots.lens import lens_figures

            for entry in self.models:
                written += lens_figures(entry, folder, classes or self.classes)
        return written

    def numbers(self, store: int = 0) -> dict[str, Any] | None:
        """Headline numbers of one store's logit lens: layer range, emotion shares averaged over it per class,
        TKIC scalars, first layer where negative dominates for malicious input."""
        if not self.data.get("models"):
            return None
        entry = self.models[store]
        logit = entry["lenses"]["logit"]
        lo, hi = logit["layer_range"]
        assoc = logit["association"]
        layers = assoc["layers"]
        shares = {label: {e: _mean_over(c["topk"][e]["share"], layers, lo, hi)
                          for e in ("negative", "positive", "neutral")}
                  for label, c in assoc["classes"].items()}
        dom = assoc.get("negative_dominance", {}).get("topk", {})
        return {"range": (lo, hi), "k": assoc.get("k"), "shares": shares,
                "tkic_top1": {label: c["scalar"]["top1"] for label, c in logit["consistency"].items()},
                "tkic_topk": {label: c["scalar"]["topk"] for label, c in logit["consistency"].items()},
                "negative_first": dom.get("first"), "negative_stable": dom.get("stable_from"),
                "num_layers": entry.get("num_layers")}


def _mean_over(values: Sequence[float | None], layers: Sequence[int], lo: int, hi: int) -> float | None:
    picked = [v for v, layer in zip(values, layers, strict=True) if lo <= layer <= hi and v is not None]
    return sum(picked) / len(picked) if picked else None


def store_names(paths: Sequence[str | Path]) -> list[str]:
    """Display names of stores given by path: the folder's name made file-safe, '_' appended to repeats."""
    names: list[str] = []
    for path in paths:
        name = slug(Path(path).resolve().name)
        while name in names:
            name += "_"
        names.append(name)
    return names


def _tokenizer(store: ActivationStore, model: ModelArg) -> Any:
    if isinstance(model, ModelHandle):
        model = model.loaded
        if model is None:
            return load_tokenizer(store.manifest)
    if isinstance(model, LoadedModel):
        return model.tokenizer
    return load_tokenizer(store.manifest, model)


def _tuned(entry: dict[str, Any], store: ActivationStore, lex: Lexicon, matcher: EmotionMatcher,
           layer_range: tuple[int, int], options: LensOptions, model: ModelArg, progress: bool,
           say: Callable[[str], None]) -> None:
    from ihs.analysis.tuned_lens import lens_kl, tuned_topk
    from ihs.analysis.tuned_lens_fit import DEFAULT_TUNED_DATA, model_for_store, tuned_for_store

    lm = model_for_store(store, model.get() if isinstance(model, ModelHandle) else model)
    lens = tuned_for_store(store, lm, options.tuned_data or DEFAULT_TUNED_DATA, retrain=options.retrain,
                           epochs=options.tuned_epochs, positions=options.tuned_positions,
                           continue_tokens=options.tuned_continue, limit=options.tuned_limit, progress=progress,
                           log=say)
    if matcher.vocab_report is None:
        matcher = EmotionMatcher(lex, lm.tokenizer)
    ids, _ = tuned_topk(lm, lens, store.hidden, entry["k"] or 5)
    entry["lenses"]["tuned"] = analyze_store(store, matcher, layer_range, lens_ids=ids,
                                             text_of=text_of(store, lm.tokenizer), margin=options.margin)
    entry["tuned_lens"] = {k: v for k, v in lens.meta.items() if k not in ("translator", "text_ids")}
    entry["tuned_lens"]["store_kl"] = {
        "what": "mean KL(final layer || lens at layer l) over the store's last positions, nats",
        "logit": [round(float(x), 4) for x in lens_kl(lm, store.hidden)],
        "tuned": [round(float(x), 4) for x in lens_kl(lm, store.hidden, lens)],
    }


def analyse_one(name: str, source: str | Path | ActivationStore, lex: Lexicon, options: LensOptions, *,
                model: ModelArg = None, progress: bool = True,
                say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The ``lens.json`` entry of one store (``source``: a store or its folder) shown as ``name``."""
    store = source if isinstance(source, ActivationStore) else ActivationStore.load(source)
    if store.manifest.get("status") not in (None, "complete"):
        raise StoreError(f"store {store.path} is not complete (status {store.manifest.get('status')})")
    tokenizer = _tokenizer(store, model)
    matcher = EmotionMatcher(lex, tokenizer)
    layer_range = parse_layer_range(options.layers, store.num_layers)
    heat_range = parse_layer_range(options.heatmap_layers, store.num_layers) if options.heatmap_layers else layer_range
    entry: dict[str, Any] = {
        "store": str(source if not isinstance(source, ActivationStore) else store.path or name), "store_name": name,
        "model": store.manifest.get("model", {}), "num_layers": store.num_layers,
        "k": int(store.lens_ids.shape[2]) if store.lens_ids is not None else None,
        "labels": {label: int((store.labels == label).sum()) for label in dict.fromkeys(store.labels)},
        "vocab_check": matcher.vocab_report,
        "lenses": {"logit": analyze_store(store, matcher, layer_range, text_of=text_of(store, tokenizer),
                                          margin=options.margin)},
    }
    if tokenizer is None:
        entry["vocab_check_note"] = "tokenizer not available locally: no vocabulary check, fragment rules off"
    if options.tuned:
        _tuned(entry, store, lex, matcher, layer_range, options, model, progress, say or log.info)
    entry["heatmap_layers"] = list(heat_range)
    return entry


def run_lens(stores: Mapping[str, str | Path | ActivationStore] | Sequence[str | Path],
             options: LensOptions | None = None, *, model: ModelArg = None, command: str | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None) -> LensResult:
    """Logit lens (and with ``options.tuned`` a tuned lens) of each store: ``{display name: store or folder}``,
    or a list of folders (named by :func:`store_names`).

    ``model`` names the model for the tokenizer and the tuned lens when it is not the store's own
    (a reference), or gives it loaded (a :class:`LoadedModel`, or the run's :class:`ModelHandle`,
    whose tokenizer is used when it is loaded and whose model loads only for a tuned lens).
    ``log`` receives one-line notes (tuned lens loaded, trained, saved).
    """
    options = options or LensOptions()
    options.validate()
    if not stores:
        raise IhsError("no store given")
    if not isinstance(stores, Mapping):
        stores = dict(zip(store_names(stores), stores, strict=True))
    lex = Lexicon.load(options.lexicon)
    refusal = read_refusal(options.refusal)
    models = [analyse_one(name, source, lex, options, model=model, progress=progress, say=log)
              for name, source in stores.items()]
    tables = {"logit": cross_model_table(models, refusal, "logit")}
    if options.tuned:
        tables["tuned"] = cross_model_table(models, refusal, "tuned")
    from ihs import __version__

    payload: dict[str, Any] = {
        "ihs_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"command": command} if command else {}),
        "layer_convention": LAYER_CONVENTION,
        "lexicon": lex.describe(),
        "tkic_definition": TKIC_DEFINITION,
        "models": models,
        "table": tables,
    }
    return LensResult(payload, classes=options.classes)


class LensStep(Step):
    name = "lens"
    options = LensOptions
    depends = ("extract",)
    help = ("Logit lens, emotion tokens and Top-K Intermediate Consistency; layers a:b is the middle range (null: "
            "the middle third of depth); margin for 'negative dominates'; lexicon JSON (null: built-in); tuned: "
            "also a tuned lens; refusal: refusal_rates.json files for the cross-model table.")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        options: LensOptions = ctx.options(self.name)
        key = {"extract": ctx.keys["extract"], "options": asdict(options), "lexicon": file_digest(options.lexicon)}
        if options.refusal:
            key["refusal"] = [file_digest(p) for p in options.refusal]
        return key

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        options: LensOptions = ctx.options(self.name)
        name, store = ctx.model_dir.name, str(ctx.store_dir())
        command = command_line([store], [name], options, folder)
        result = run_lens({name: store}, options, model=ctx.model, command=command, progress=ctx.progress,
                          log=log.info)
        files = result.save(folder)
        return {"outputs": [LensResult.FILE], "layer_range": result.models[0]["lenses"]["logit"]["layer_range"],
                "figures": [p.name for p in files if p.suffix == ".png"]}
