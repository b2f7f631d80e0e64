"""Explain workflow: which input tokens move a probe, a guard, the refusal margin or an emotion lens logit.

For each explained prompt: integrated gradients (or gradient x input) of the target on the input
embeddings, the share of the attribution that lands on alarming words and on the marked span (a
contrast prompt's trigger word, a wrapped or jailbreak prompt's goal), deletion/insertion
faithfulness against random and bag-of-words orders, and per-layer cosines between the
malicious-vs-normal, refusal and concept directions with their controls (:mod:`ihs.explain`).

Held out: for target ``probe`` the logistic probe is fitted on training prompts only (normal and
malicious prompts that are not explained), at the layer the options name (default: the middle).

>>> from ihs.workflows.explain import ExplainOptions, run_explain
>>> result = run_explain(lm, records, ExplainOptions(target="refusal", limit=2))  # doctest: +SKIP
>>> result.numbers()["share"], result.save("out/explain")                          # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ihs.errors import IhsError
from ihs.explain.shares import alarming_words, class_shares, token_share, word_spans
from ihs.layers import parse_layers
from ihs.workflows.base import Result, Step, StepContext, opt, records_digest

TARGETS = ("probe", "guard", "refusal", "emotion")
METHODS = {"ig": "ig", "gxi": "grad_x_input"}
TRAIN_CLASSES = ("normal", "malicious")
FIGURE_FORMATS = ("png", "svg", "pdf")
VOLATILE = ("timing", "command")
DEFAULT_COSINE_LAYERS = "0.2,0.4,0.5,0.6,0.8,L"


@dataclass(kw_only=True)
class ExplainOptions:
    """Token attributions of one target, their faithfulness, and direction cosines."""

    target: str = opt("probe", "What to explain: probe (a logistic probe fitted on the training prompts), guard "
                               "(a fitted guard's logit; needs guard), refusal (the refusal margin at the first "
                               "answer token) or emotion (an emotion word's logit-lens logit).")
    method: str = opt("ig", "Attribution method: ig (integrated gradients) or gxi (gradient x input).")
    steps: int = opt(32, "Integration steps for ig.")
    layer: str | None = opt(None, "The layer the probe or emotion target reads, in the layer grammar "
                                  "(null: the middle layer, round(L/2)).")
    guard: str | None = opt(None, "Guard folder (made by `ihs guard fit`) for target guard.")
    word: str = opt("sorry", "The emotion word for target emotion.")
    classes: list[str] | None = opt(None, "Classes to explain (null: every class in the data).")
    limit: int = opt(2, "Prompts explained per class (the first ones of each class, or a seeded sample with "
                        "sample).")
    sample: bool = opt(False, "Draw the explained prompts and the training prompts as seeded random samples of "
                              "each class (training first, so it does not depend on which classes are explained) "
                              "instead of taking the first ones; the built-in files are ordered by category.")
    train_limit: int = opt(32, "Training prompts per class for the probe and the bag-of-words order "
                               "(never the explained ones).")
    faithfulness: bool = opt(True, "Deletion/insertion curves against random and bag-of-words orders.")
    faith_steps: int = opt(8, "Points on each deletion/insertion curve.")
    random_orders: int = opt(3, "Random orders averaged per prompt.")
    cosines: bool = opt(True, "Per-layer cosines of the malicious-vs-normal, refusal and concept directions.")
    cosine_layers: str | None = opt(DEFAULT_COSINE_LAYERS, "Layers for the cosines, in the layer grammar "
                                                           "(0:L or null: all).")
    controls: int = opt(5, "Random and shuffled control directions per concept.")
    sanity: bool = opt(False, "Randomised-weights check: Spearman correlation of attributions after "
                              "re-initialising the decoder blocks (one more attribution pass).")
    batch_size: int = opt(8, "Prompts grouped in one attribution pass.")
    max_batch_tokens: int = opt(2048, "Padded tokens per forward/backward pass (bounds memory).")
    max_tokens: int | None = opt(None, "Skip explained prompts longer than this many tokens after formatting "
                                       "(null: keep all); attribution cost grows with length.")
    seed: int = opt(0, "Seed for random orders, controls and the probe.")

    def validate(self) -> None:
        """Raise ``IhsError`` on a bad option."""
        if self.target not in TARGETS:
            raise IhsError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.method not in METHODS:
            raise IhsError(f"unknown method {self.method!r}; choose ig or gxi")
        if self.target == "guard" and not self.guard:
            raise IhsError("target guard needs a guard folder (--guard DIR)")
        for name in ("steps", "limit", "train_limit", "faith_steps", "random_orders", "batch_size",
                     "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise IhsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.controls < 0:
            raise IhsError(f"controls must be >= 0, got {self.controls}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise IhsError(f"max_tokens must be at least 1, got {self.max_tokens}")


class ExplainResult(Result):
    """``explain.json``: per prompt tokens and scores, shares on alarming words, faithfulness, cosines."""

    FILE = "explain.json"
    HTML = "explain.html"

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.data["items"]

    def save(self, folder: str | Path, *, figures: Sequence[str] = ("png",)) -> list[Path]:
        """Write explain.json, the token heat map page explain.html and the figures."""
        bad = [f for f in figures if f not in FIGURE_FORMATS]
        if bad:
            raise IhsError(f"unknown figure format {bad[0]!r}; choose png, svg or pdf")
        written = super().save(folder)
        from ihs.plots.explain import heatmap_page, plot_all

        page = Path(folder) / self.HTML
        page.write_text(heatmap_page(self.data), encoding="utf-8")
        written.append(page)
        if figures:
            written += plot_all(self.data, folder, caption=self.data.get("command"), formats=list(figures))
        return written

    def numbers(self) -> dict[str, Any]:
        """Headline numbers: attribution shares per class, completeness, faithfulness areas, speed."""
        faith = self.data.get("faithfulness") or {}
        timing = self.data.get("timing") or {}
        return {"target": self.data["target"].get("kind"), "layer": self.data["target"].get("layer"),
                "method": self.data["options"]["method"], "share": self.data["shares"],
                "completeness": self.data["completeness"],
                "faithfulness": faith.get("summary"), "probe": self.data.get("probe"),
                "prompts_per_second": timing.get("prompts_per_second"),
                "cosines_at_layer": (self.data.get("cosines") or {}).get("at_layer")}


# -- selection -------------------------------------------------------------------------------------


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def split_records(records: Sequence[Any], options: ExplainOptions,
                  length: Any = None) -> tuple[list[Any], list[Any]]:
    """(explained, training): ``limit`` prompts of each explained class, and up to ``train_limit`` normal and
    malicious prompts per class whose text is not explained.

    Without ``sample``: the first ``limit`` prompts of each class are explained and the first other ones train.
    With ``sample``: the training prompts are a seeded random sample of each training class drawn first (so they
    are the same whichever classes are explained), and the explained prompts a seeded random sample of each
    class among the rest. ``length(text)`` (token count) with ``max_tokens`` leaves longer prompts unexplained.
    """
    classes = options.classes or list(dict.fromkeys(r.label for r in records))

    def fits(r: Any) -> bool:
        return options.max_tokens is None or length is None or length(r.text) <= options.max_tokens

    if options.sample:
        rng = np.random.default_rng(options.seed)
        training = []
        for label in TRAIN_CLASSES:
            pool = list({_key(r.text): r for r in records if r.label == label}.values())
            picked = sorted(rng.permutation(len(pool))[: options.train_limit].tolist())
            training += [pool[i] for i in picked]
        held = {_key(r.text) for r in training}
        explained = []
        draw = np.random.default_rng([options.seed, 1])
        for label in classes:
            pool = [r for r in records if r.label == label and _key(r.text) not in held]
            chosen: list[int] = []
            for i in draw.permutation(len(pool)).tolist():
                if len(chosen) >= options.limit:
                    break
                if fits(pool[i]):
                    chosen.append(i)
            explained += [pool[i] for i in sorted(chosen)]
        if not explained:
            raise IhsError(f"no prompts of the classes {', '.join(classes)} to explain")
        return explained, training
    explained = []
    seen: dict[str, int] = {}
    for r in records:
        if r.label in classes and seen.get(r.label, 0) < options.limit and fits(r):
            explained.append(r)
            seen[r.label] = seen.get(r.label, 0) + 1
    if not explained:
        raise IhsError(f"no prompts of the classes {', '.join(classes)} to explain")
    held = {_key(r.text) for r in explained}
    training = []
    counts: dict[str, int] = {}
    for r in records:
        if r.label in TRAIN_CLASSES and _key(r.text) not in held and counts.get(r.label, 0) < options.train_limit:
            training.append(r)
            counts[r.label] = counts.get(r.label, 0) + 1
    return explained, training


# -- targets ---------------------------------------------------------------------------------------


def one_layer(spec: str | None, num_layers: int) -> int:
    """The single layer ``spec`` names (default round(L/2)); ``IhsError`` when out of range or several."""
    if spec is None:
        return int(round(num_layers / 2))
    chosen = parse_layers(spec, num_layers)
    if len(chosen) != 1:
        raise IhsError(f"--layer names {len(chosen)} layers; the target reads one")
    return chosen[0]


def fit_probe(lm: Any, training: Sequence[Any], layer: int, options: ExplainOptions,
              fmt: dict[str, Any], progress: bool) -> tuple[Any, dict[str, Any]]:
    """A logistic probe on the training prompts' last-token states at ``layer``, folded to raw states."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ihs.explain import ConceptOptions, ProbeTarget
    from ihs.explain.concepts import last_token_states

    y = np.asarray([1 if r.label == "malicious" else 0 for r in training])
    if len(np.unique(y)) < 2:
        raise IhsError("target probe needs normal and malicious training prompts besides the explained ones")
    states = last_token_states(lm, [r.text for r in training], options=ConceptOptions(progress=progress, **fmt),
                               description="probe states")[:, layer].astype(np.float64)
    scaler = StandardScaler().fit(states)
    clf = LogisticRegression(max_iter=2000, random_state=options.seed).fit(scaler.transform(states), y)
    weight = clf.coef_[0] / scaler.scale_
    bias = float(clf.intercept_[0] - np.sum(clf.coef_[0] * scaler.mean_ / scaler.scale_))
    info = {"layer": layer, "n_train": {c: int((y == i).sum()) for i, c in enumerate(TRAIN_CLASSES)},
            "train_accuracy": float(clf.score(scaler.transform(states), y)), "classifier": "logistic regression"}
    return ProbeTarget(weight=weight, bias=bias, layer=layer, name="probe"), info


def make_target(lm: Any, training: Sequence[Any], options: ExplainOptions, fmt: dict[str, Any],
                progress: bool) -> tuple[Any, dict[str, Any] | None]:
    """The target object for ``options.target`` (and the probe's fitting info for target probe)."""
    from ihs.explain import ProbeTarget, emotion_target, refusal_target

    if options.target == "probe":
        return fit_probe(lm, training, one_layer(options.layer, lm.num_layers), options, fmt, progress)
    if options.target == "guard":
        from ihs.guard.guard import Guard

        guard = Guard.load(options.guard, lm)
        recipe = guard.recipe
        if not recipe.linear or len(recipe.layers) != 1 or recipe.pooling != "last" or recipe.refusal:
            raise IhsError(f"guard {options.guard} is {guard.kind}; explain reads linear last-token guards only")
        return ProbeTarget.from_guard(guard), {"guard": str(options.guard), "kind": guard.kind}
    if options.target == "refusal":
        return refusal_target(lm), None
    layer = one_layer(options.layer, lm.num_layers)
    return emotion_target(lm, options.word, layer=str(layer)), None


# -- shares ----------------------------------------------------------------------------------------


_share = token_share


def _items(attr: Any, explained: Sequence[Any], pts: Sequence[Any], spans: Sequence[Any],
           words: Sequence[str]) -> list[dict[str, Any]]:
    items = []
    for r, pt, it, span in zip(explained, pts, attr.items, spans, strict=True):
        scores = np.asarray(it.scores, dtype=np.float64)
        user = np.asarray(pt.user, dtype=bool)
        alarm = np.asarray(pt.char_mask(word_spans(r.text, words)), dtype=bool)
        marked = np.asarray(pt.char_mask([span] if span else []), dtype=bool)
        a_share, a_tok = _share(scores, user, alarm)
        m_share, m_tok = _share(scores, user, marked)
        items.append({"id": r.id, "label": r.label, "dataset": r.dataset, "tags": dict(r.tags or {}),
                      **it.to_dict(), "alarm": alarm.tolist(), "marked": marked.tolist(),
                      "alarm_share": a_share, "alarm_tokens": a_tok, "marked_share": m_share, "marked_tokens": m_tok})
    return items


def _goals(records: Sequence[Any]) -> list[Any]:
    """Every record as a possible goal, under its source id and under its record id (wrapped prompts name
    their goal by the one, jailbreak prompts by the other)."""
    out = [SimpleNamespace(id=r.id, text=r.text) for r in records]
    out += [SimpleNamespace(id=r.tags["source_id"], text=r.text) for r in records if (r.tags or {}).get("source_id")]
    return out


# -- the workflow ----------------------------------------------------------------------------------


def _completeness(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rel = np.asarray([it["relative_gap"] for it in items], dtype=np.float64)
    gaps = np.abs([it["gap"] for it in items])
    span = np.abs([it["target"] - it["baseline_target"] for it in items])
    return {"prompts": len(items), "max_abs_gap": float(gaps.max()), "median_abs_gap": float(np.median(gaps)),
            "median_relative_gap": float(np.nanmedian(rel)), "max_relative_gap": float(np.nanmax(rel)),
            "median_abs_target_change": float(np.median(span))}


def _cosines(lm: Any, training: Sequence[Any], options: ExplainOptions, fmt: dict[str, Any], progress: bool,
             probe: Any, layer: int | None) -> dict[str, Any] | None:
    from ihs.explain import ConceptOptions, concept_directions, direction_cosines

    mal = [r.text for r in training if r.label == "malicious"]
    nor = [r.text for r in training if r.label == "normal"]
    if not mal or not nor:
        return None
    copts = ConceptOptions(layers=options.cosine_layers, controls=options.controls, seed=options.seed,
                           batch_size=16, progress=progress, **fmt)
    directions = concept_directions(lm, options=copts)
    res = direction_cosines(lm, malicious=mal, normal=nor, directions=directions, options=copts)
    data = res.to_dict()
    data.pop("seconds", None)
    if probe is not None and layer in res.layers:
        pos = res.layers.index(layer)
        w = np.asarray(probe.weight, dtype=np.float64)
        named = {"malicious_vs_normal": None, **{k: v[pos] for k, v in directions.directions.items()}}
        at: dict[str, Any] = {"layer": layer, "probe_weight": {}}
        for name in named:
            if name in res.names:
                i = res.names.index(name)
                at[name] = {n: float(res.cosines[pos, i, j]) for j, n in enumerate(res.names)}
        for name, vec in directions.directions.items():
            v = vec[pos]
            at["probe_weight"][name] = float(v @ w / max(np.linalg.norm(v) * np.linalg.norm(w), 1e-12))
        data["at_layer"] = at
    return data


def run_explain(lm: Any, records: Sequence[Any], options: ExplainOptions | None = None, *,
                chat: bool | None = None, system_prompt: str | None = None, command: str | None = None,
                progress: bool = True) -> ExplainResult:
    """Explain ``options.target`` on the first ``limit`` prompts of each class of ``records`` (PromptRecords)."""
    from ihs.explain import (
        AttributionOptions,
        BowSaliency,
        FaithfulnessOptions,
        attribute_tokens,
        marked_spans,
        perturbation_curves,
        randomisation_check,
        tokenize_prompts,
    )

    options = options or ExplainOptions()
    options.validate()
    if options.layer is not None:
        one_layer(options.layer, lm.num_layers)
    fmt = {"chat": chat, "system_prompt": system_prompt}

    def length(text: str) -> int:
        return len(tokenize_prompts(lm, [text], **fmt)[0])

    explained, training = split_records(records, options, length)
    target, probe_info = make_target(lm, training, options, fmt, progress)
    aopts = AttributionOptions(method=METHODS[options.method], steps=options.steps, batch_size=options.batch_size,
                               max_batch_tokens=options.max_batch_tokens, progress=progress, **fmt)
    pts = tokenize_prompts(lm, [r.text for r in explained], **fmt)
    started = time.perf_counter()
    attr = attribute_tokens(lm, pts, target, options=aopts)
    seconds = time.perf_counter() - started
    spans = marked_spans(explained, _goals(records))
    items = _items(attr, explained, pts, spans, alarming_words(records))
    data: dict[str, Any] = {
        "format": "ihs-explain", "model": {"name": getattr(lm, "name", "unknown"), "num_layers": lm.num_layers},
        "target": target.describe(), "options": asdict(options), "format_options": fmt, "probe": probe_info,
        "n_train": len(training), "items": items, "shares": class_shares(items), "completeness": _completeness(items),
        "timing": {"attribution_seconds": seconds, "prompts_per_second": len(items) / seconds if seconds else None}}
    if options.faithfulness:
        bow = None
        labels = [r.label for r in training]
        if len(set(labels)) == 2:
            bow = BowSaliency.fit([r.text for r in training], labels, exclude=[r.text for r in explained],
                                  seed=options.seed)
        fo = FaithfulnessOptions(steps=options.faith_steps, random_orders=options.random_orders, seed=options.seed,
                                 progress=progress)
        faith = perturbation_curves(lm, attr, target, bow=bow, options=fo).to_dict()
        data["timing"]["faithfulness_seconds"] = faith.pop("seconds", None)
        data["faithfulness"] = faith
    if options.sanity:
        check = randomisation_check(lm, [r.text for r in explained], target, options=aopts, seed=options.seed,
                                    original=attr)
        data["sanity"] = check.to_dict()
    if options.cosines:
        probe_target = target if options.target in ("probe", "guard") else None
        data["cosines"] = _cosines(lm, training, options, fmt, progress, probe_target, getattr(target, "layer", None))
    if command:
        data["command"] = command
    return ExplainResult(data)


def command_line(model: str, data: Sequence[str], options: ExplainOptions, out: str | Path | None) -> str:
    """The canonical ``ihs explain`` command for these inputs (written under figures and into explain.json)."""
    import shlex

    o, d = options, ExplainOptions()
    parts = ["ihs", "explain", "--model", model]
    for spec in data:
        parts += ["--data", spec]
    parts += ["--target", o.target, "--method", o.method]
    for name in ("steps", "layer", "guard", "word", "limit", "train_limit", "faith_steps", "random_orders",
                 "cosine_layers", "controls", "max_tokens", "seed"):
        if getattr(o, name) != getattr(d, name):
            parts += [f"--{name.replace('_', '-')}", str(getattr(o, name))]
    if o.classes:
        parts += ["--classes", ",".join(o.classes)]
    parts += [flag for flag, on in (("--no-faithfulness", not o.faithfulness), ("--no-cosines", not o.cosines),
                                    ("--sanity", o.sanity), ("--sample", o.sample)) if on]
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


class ExplainStep(Step):
    name = "explain"
    options = ExplainOptions
    default = False
    help = ("Token attributions (integrated gradients or gradient x input) of a probe fitted on the training "
            "prompts, a guard, the refusal margin or an emotion lens logit; faithfulness against random and "
            "bag-of-words orders; direction cosines with controls. Sized to take a few minutes on a CPU by "
            "default: 2 prompts per class, 32 training prompts per class, 3 random orders on 8-point curves, "
            "cosines at 6 layers (0.2,0.4,0.5,0.6,0.8,L) with 5 controls. Cheaper still: explain: {limit: 1, "
            "steps: 16, faithfulness: false, cosines: false} (or classes: [...]); larger samples: raise limit "
            "and train_limit, sample: true.")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        from ihs.workflows.base import file_digest

        options: ExplainOptions = ctx.options(self.name)
        guard = file_digest(Path(options.guard) / "guard.json") if options.guard else None
        return {"model": ctx.model_part(), "data": records_digest(ctx.records), "options": asdict(options),
                "guard": guard}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        options: ExplainOptions = ctx.options(self.name)
        fmt = ctx.config.format
        command = StepContext.command("explain", "--model", ctx.model_dir.name, "--target", options.target,
                                      "--out", str(folder))
        result = run_explain(ctx.model.get(), ctx.records, options, chat=fmt.chat, system_prompt=fmt.system_prompt,
                             command=command, progress=ctx.progress)
        files = result.save(folder, figures=("png",))
        return {"outputs": [ExplainResult.FILE, ExplainResult.HTML],
                "figures": [p.name for p in files if p.suffix == ".png"]}


# -- the guard's verdicts, explained ---------------------------------------------------------------


def explain_guard_rows(guard: Any, records: Sequence[dict[str, Any]], rows: list[dict[str, Any]], *,
                       html: str | Path | None = None, top: int = 5, steps: int = 32,
                       progress: bool = True) -> list[str]:
    """Add an ``explanation`` to each scored row (``ihs guard score --explain``) and return one printable line
    per prompt: its verdict and the tokens that pushed the guard's logit most each way. With ``html``, also
    write a self-contained token heat map page there (every token escaped)."""
    from ihs.explain.guard import explain_guard

    found = explain_guard(guard, [r["text"] for r in records], steps=steps, top=top, progress=progress)
    lines = []
    for row, exp in zip(rows, found, strict=True):
        row["explanation"] = exp
        if row.get("malicious") is not None and bool(row["malicious"]) != exp["malicious"] and \
                abs(exp["logit"] - exp["threshold_logit"]) > 1e-3:
            raise IhsError("the attributed logit disagrees with the guard's verdict; the formatting differs")
        up = ", ".join(f"{t['token'].strip() or repr(t['token'])} {t['score']:+.2f}" for t in exp["toward_malicious"])
        down = ", ".join(f"{t['token'].strip() or repr(t['token'])} {t['score']:+.2f}" for t in exp["toward_benign"])
        lines.append(f"{'MALICIOUS' if exp['malicious'] else 'ok'} logit {exp['logit']:+.2f} (threshold "
                     f"{exp['threshold_logit']:+.2f}, baseline {exp['baseline_logit']:+.2f}, gap "
                     f"{exp['relative_gap']:.2f})  {row['text'][:60]!r}\n    toward malicious: {up or '-'}\n"
                     f"    toward benign: {down or '-'}")
    if html is not None:
        from ihs.plots.explain import guard_page

        Path(html).write_text(guard_page(rows, guard_name=str(guard.kind)), encoding="utf-8")
    return lines
