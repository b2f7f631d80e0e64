"""Defense workflow: probe-conditioned steering (steer toward refusal when an early-layer guard flags the input).

The computing lives in :mod:`ihs.interventions.defense` (the one-pass guard read + conditional
steering, its evaluation against the undefended model, unconditional steering and
refuse-when-flagged, ``choose_best``) and :mod:`ihs.interventions.steering` (difference-of-means
directions); this module gives them options with help, the prompt selection (goal-hash tune / eval
split, exclusion of the prompts a guard or direction saw), :class:`DefenseResult` (``defense.json``,
``generations.jsonl``, ``table.md``, ``tradeoff.png``) and the ``defense`` step of ``ihs run``.

The step, on the run's own prompts: the goal-hash split puts each goal (with its jailbreaks) on the
tune or the eval side; on the tune side a guard is fitted (layer by cross-validation, threshold
calibrated for ``target_fpr``) and the direction averaged (malicious - normal); every steered
layer range x alpha is generated on tune prompts and the best setting chosen there; only that
setting runs on the eval prompts, against no defense, unconditional steering and refuse-when-flagged.

>>> from ihs.workflows.defense import DefenseOptions, run_defense
>>> result = run_defense(lm, records, guard, directions, DefenseOptions(layers=["14:17"], alphas=[0.1]))  # doctest: +SKIP
>>> result.numbers()["best"]["asr_attack"]                                                             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl, write_jsonl
from ihs.workflows.base import Result, Skip, Step, StepContext, opt

ATTACK = ("malicious", "jailbreak")
BENIGN = ("normal", "contrast")
ALWAYS = ("all", "best", "none")
SPLITS = ("tune", "eval", "all")


# -- prompt selection ----------------------------------------------------------------------------------------------


def goal_key(rec: dict[str, Any]) -> str:
    """A jailbreak prompt belongs to its goal (tags.goal_id = the plain malicious prompt's id)."""
    return str((rec.get("tags") or {}).get("goal_id") or rec["id"])


def in_tune(rec: dict[str, Any], fraction: float, seed: int = 0) -> bool:
    """Whether the prompt's goal falls on the tune side of the goal-hash split."""
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


def excluded_keys(stores: Sequence[str | Path]) -> set[str]:
    """Prompt ids and goal keys of every prompt in these stores."""
    from ihs.store import ActivationStore

    keys: set[str] = set()
    for path in stores:
        store = ActivationStore.load(path)
        keys |= {goal_key(r) for r in store.records} | set(store.ids)
    return keys


def select_records(records: list[dict[str, Any]], exclude_stores: Sequence[str | Path], split: str,
                   tune_fraction: float, limit: str | None, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop prompts that are in (or share a goal with) a store; keep the tune or eval side; first ``limit`` per class."""
    if split not in SPLITS:
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


def load_records(data: Sequence[str] | None) -> list[dict[str, Any]]:
    """Prompt records from ``NAME=SPEC`` sets (default: the four built-in sets)."""
    from ihs.batching import as_record_dict
    from ihs.data.prepare import prepare

    records, _ = prepare(list(data) if data else ["jailbreak=builtin:jailbreak", "malicious=builtin:malicious",
                                                  "normal=builtin:normal", "contrast=builtin:contrast"])
    return [as_record_dict(r) for r in records]


# -- guard and direction -------------------------------------------------------------------------------------------


def load_scorer(guard: str | Path | None = None, probe_store: str | Path | None = None, probe_layer: int | None = None,
                threshold: float | None = None) -> Any:
    """The defense's guard: a saved ``ihs guard`` folder, or a logreg probe on a store's training ids."""
    from ihs.interventions.defense import StoreProbe
    from ihs.interventions.defense import load_guard as load_saved_guard
    from ihs.store import ActivationStore

    if (guard is None) == (probe_store is None):
        raise IhsError("give either --guard DIR (from `ihs guard fit`) or --probe-store STORE --probe-layer L")
    if guard is not None:
        g = load_saved_guard(str(guard))
    else:
        if probe_layer is None:
            raise IhsError("--probe-store needs --probe-layer")
        g = StoreProbe.fit(ActivationStore.load(probe_store), probe_layer)
    if threshold is not None:
        if not 0 < threshold < 1:
            raise IhsError(f"--threshold must be a probability in (0, 1), got {threshold}")
        g.threshold = float(threshold)
        if hasattr(g, "threshold_logit"):
            g.threshold_logit = math.log(threshold) - math.log1p(-threshold)
    return g


@dataclass(kw_only=True)
class DirectionOptions:
    """Difference-of-means steering directions from a store."""

    layers: str | None = opt(None, "Layers to keep, in the layer grammar (null: all).")
    positive: list[str] = opt(help="Positive classes.", factory=lambda: ["malicious"])
    negative: list[str] = opt(help="Negative classes.", factory=lambda: ["normal"])
    train_fraction: float = opt(0.75, "Share of the store's ids (by hash) the means use.")
    seed: int = opt(0, "Seed of the id hash split.")


def run_direction(store: Any, options: DirectionOptions | None = None, *,
                  generations: str | Path | None = None) -> Any:
    """Steering directions (positive - negative, or with ``generations`` refused - complied prompts of the
    positive classes) over a store's (an ActivationStore or its folder) training ids."""
    from ihs.interventions.steering import compute_directions
    from ihs.layers import parse_layers
    from ihs.store import ActivationStore

    options = options or DirectionOptions()
    if not isinstance(store, ActivationStore):
        store = ActivationStore.load(store)
    chosen = parse_layers(options.layers, store.num_layers) if options.layers else None
    refused = None
    if generations is not None:
        rows = read_jsonl(generations)
        if any("refused" not in r for r in rows):
            raise IhsError(f"{generations} has rows without a 'refused' verdict (judge them first)")
        refused = {r["id"]: bool(r["refused"]) for r in rows}
    return compute_directions(store, chosen, list(options.positive), list(options.negative), options.train_fraction,
                              options.seed, refused)


def load_direction(path: str | Path) -> Any:
    """Steering directions saved by ``ihs defend direction`` (or the defense step)."""
    from ihs.interventions.steering import SteeringDirections

    return SteeringDirections.load(path)


# -- evaluation ----------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DefenseOptions:
    """Which defense settings are generated and how they are judged."""

    layers: list[str] = opt(help="Steered layer ranges, one per setting, in the layer grammar (e.g. 14:17).",
                            factory=list)
    alphas: list[float] = opt(help="Strengths, in units of each layer's mean last-token norm.", factory=list)
    max_new_tokens: int = opt(24, "New tokens per answer.")
    batch_size: int = opt(16, "Generation batch size.")
    prompt_only: bool = opt(False, "Steer only the prompt pass (default: every generated token too).")
    positions: str = opt("all", "Prompt positions steered: all or last.")
    always: str = opt("all", "Unconditional-steering baseline: all (every setting), best, none.")
    full: bool = opt(False, "Regenerate unflagged prompts too (default: reuse their undefended answers, identical "
                            "by design).")
    quality: bool = opt(True, "Perplexity of undefended normal answers under the defense.")
    judge: str = opt("phrases", "Refusal judge (see ihs generate).")
    max_over_refusal: float | None = opt(None, "Best setting = lowest attack ASR whose benign refusal rate rises by "
                                               "at most this; null: the largest (attack-ASR drop - benign-refusal "
                                               "rise).")

    def validate(self) -> None:
        if self.always not in ALWAYS:
            raise IhsError(f"--always must be all, best or none, got {self.always!r}")
        if not self.alphas:
            raise IhsError("give at least one --alpha")
        if not self.layers:
            raise IhsError("give at least one --layers a:b")
        if self.positions not in ("all", "last"):
            raise IhsError(f"--positions must be all or last, got {self.positions!r}")


class DefenseResult(Result):
    """``defense.json`` (one summary per variant, guard, direction, selection, best setting, command), with
    every answer (``generations.jsonl``), the table (``table.md``) and the trade-off figure."""

    FILE = "defense.json"
    GENERATIONS = "generations.jsonl"

    def __init__(self, data: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
        super().__init__(data)
        self.rows = rows if rows is not None else []

    @property
    def variants(self) -> list[dict[str, Any]]:
        return self.data.get("variants", [])

    def table(self) -> str:
        from ihs.plots.defense import table_markdown

        return table_markdown(self.data)

    def save(self, folder: str | Path, *, figures: bool = True, title: str | None = None) -> list[Path]:
        """Write defense.json, generations.jsonl, table.md and (with ``figures``) tradeoff.png."""
        folder = Path(folder)
        written = super().save(folder)
        write_jsonl(folder / self.GENERATIONS, self.rows)
        (folder / "table.md").write_text(self.table() + "\n", encoding="utf-8")
        written += [folder / self.GENERATIONS, folder / "table.md"]
        if figures:
            from ihs.plots.defense import plot_tradeoff

            title = title or f"{self.data.get('model', '')}: {self.data.get('command', '')}"
            written.append(plot_tradeoff(self.data, folder / "tradeoff.png", title=title))
        return written

    @classmethod
    def load(cls, folder: str | Path) -> DefenseResult:
        folder = Path(folder)
        rows = read_jsonl(folder / cls.GENERATIONS) if (folder / cls.GENERATIONS).is_file() else []
        return cls(read_json(folder / cls.FILE), rows)

    def best(self) -> dict[str, Any] | None:
        return next((v for v in self.variants if v["name"] == self.data.get("best")), None)

    def numbers(self) -> dict[str, Any] | None:
        """ASR of the attack classes and benign refusal per variant (undefended, refuse when flagged, the best
        conditional setting and its unconditional twin), with the guard's flags per class."""
        if not self.variants:
            return None

        def brief(v: dict[str, Any] | None) -> dict[str, Any] | None:
            if v is None:
                return None
            return {"name": v["name"], "mode": v["mode"], "asr_attack": v.get("asr_attack"),
                    "refusal_benign": v.get("refusal_benign"), "layers": v.get("layers"), "alpha": v.get("alpha"),
                    "per_class": {c: {k: r.get(k) for k in ("n", "asr", "refusal_rate", "steered")}
                                  for c, r in v["per_class"].items()},
                    "normal_ppl_ratio": v.get("normal_ppl_ratio")}

        best = self.best()
        twin = next((v for v in self.variants if best and v["mode"] == "always" and v["layers"] == best["layers"]
                     and v["alpha"] == best["alpha"]), None)
        by_mode = {v["mode"]: v for v in self.variants if v["mode"] in ("none", "refuse")}
        return {"n": self.data.get("n"), "split": (self.data.get("selection") or {}).get("split"),
                "undefended": brief(by_mode.get("none")), "refuse": brief(by_mode.get("refuse")),
                "best": brief(best), "always": brief(twin), "best_rule": self.data.get("best_rule"),
                "guard": self.data.get("guard"), "judge": self.data.get("judge")}


def best_rule(max_over_refusal: float | None) -> str:
    return (f"lowest attack ASR with benign refusal rise <= {max_over_refusal:g}" if max_over_refusal is not None
            else "largest attack-ASR drop minus benign-refusal rise")


def run_defense(lm: Any, records: Sequence[dict[str, Any]], guard: Any, directions: Any,
                options: DefenseOptions, *, chat: bool | None = None, system_prompt: str | None = None,
                meta: dict[str, Any] | None = None, command: str | None = None,
                progress: bool = True) -> DefenseResult:
    """Every ``options.layers`` x ``options.alphas`` setting generated under the defense on ``records``, against
    the undefended model, refuse-when-flagged and (``options.always``) unconditional steering; best setting chosen
    by ``options.max_over_refusal``. ``meta`` is merged into defense.json (paths, selection)."""
    from ihs.generation import GenerateOptions
    from ihs.interventions.defense import DefenseSetting, EvalOptions, check_same_model, choose_best, evaluate
    from ihs.layers import parse_layers

    options.validate()
    started = time.perf_counter()
    check_same_model(lm, guard, directions)
    when = "prompt" if options.prompt_only else "all"
    settings = []
    for spec, alpha in itertools.product(options.layers, options.alphas):
        setting = DefenseSetting(parse_layers(spec, lm.num_layers), float(alpha), "conditional", when,
                                 options.positions)  # type: ignore[arg-type]
        if setting.name not in {s.name for s in settings}:
            settings.append(setting)
    for s in settings:
        for layer in s.layers:
            directions.unit(layer)  # clear error for a layer the direction lacks
    gen = GenerateOptions(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, chat=chat,
                          system_prompt=system_prompt)
    result = evaluate(lm, records, guard, directions, settings, gen, options.judge,
                      EvalOptions(reuse_unflagged=not options.full, quality=options.quality,
                                  always=options.always == "all"), progress=progress)
    best = choose_best(result["variants"], options.max_over_refusal)
    if options.always == "best" and best is not None:
        twin = DefenseSetting(best["layers"], best["alpha"], "always", best["when"], best["positions"])
        extra = evaluate(lm, records, guard, directions, [twin], gen, options.judge,
                         EvalOptions(reuse_unflagged=True, quality=options.quality, always=False), progress=progress)
        result["variants"].append(extra["variants"][2])
        result["rows"].extend(r for r in extra["rows"] if r.get("setting") == twin.name)
    rows = result.pop("rows")
    result.update({"model": lm.name, "model_identity": lm.identity, **(meta or {}),
                   "best": best["name"] if best else None, "max_over_refusal": options.max_over_refusal,
                   "command": command, "seconds": round(time.perf_counter() - started, 1),
                   "best_rule": best_rule(options.max_over_refusal)})
    return DefenseResult(result, rows)


# -- the step of ihs run -------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DefenseConfig:
    """The defense section of ``ihs run`` (small by default: a couple of ranges and alphas, few prompts)."""

    guard_layers: str = opt("0.1:0.4", "Candidate guard layers (layer grammar); the guard must read at or before "
                                       "the first steered layer.")
    target_fpr: float = opt(0.05, "False-positive rate the guard's threshold is calibrated for (on tune prompts).")
    folds: int = opt(3, "Cross-validation folds for the guard's layer.")
    steer_layers: list[str] = opt(help="Steered layer ranges to try, one per setting (layer grammar).",
                                  factory=lambda: ["0.45:0.55", "0.6:0.7"])
    alphas: list[float] = opt(help="Strengths to try.", factory=lambda: [0.1, 0.2])
    tune_fraction: float = opt(0.5, "Share of goals (a goal with its jailbreaks) on the tune side.")
    tune_limit: int = opt(6, "Prompts per class generated on the tune side (the setting is chosen there).")
    eval_limit: int = opt(12, "Prompts per class generated on the eval side (reported).")
    max_new_tokens: int = opt(16, "New tokens per answer.")
    batch_size: int = opt(16, "Generation batch size.")
    quality: bool = opt(True, "Perplexity of undefended normal answers under the defense.")
    judge: str = opt("phrases", "Refusal judge (see ihs generate).")
    max_over_refusal: float | None = opt(None, "Best setting = lowest attack ASR whose benign refusal rate rises "
                                               "by at most this (null: the largest ASR drop minus refusal rise).")
    seed: int = opt(0, "Seed of the goal-hash split.")

    def validate(self) -> None:
        if not self.steer_layers or not self.alphas:
            raise IhsError("steer_layers and alphas need at least one entry each")
        if not 0 < self.tune_fraction < 1:
            raise IhsError(f"tune_fraction must be in (0, 1), got {self.tune_fraction}")
        for name in ("tune_limit", "eval_limit", "max_new_tokens", "batch_size", "folds"):
            if getattr(self, name) <= 0:
                raise IhsError(f"{name} must be positive, got {getattr(self, name)}")


def run_defense_split(lm: Any, store: Any, records: Sequence[dict[str, Any]], folder: str | Path,
                      options: DefenseConfig | None = None, *, chat: bool | None = None,
                      system_prompt: str | None = None, progress: bool = True) -> tuple[DefenseResult, DefenseResult]:
    """The ``defense`` step: guard and direction fitted on the tune side of ``records`` (their states in
    ``store``), the setting chosen on tune prompts, then run on the disjoint eval prompts. Writes the guard
    (``guard/``), the direction (``direction/``) and the tune sweep (``tune/``) into ``folder``; returns
    (tune, eval) results."""
    from ihs.layers import parse_layers
    from ihs.workflows.guard import GuardFitOptions, run_guard_fit

    options = options or DefenseConfig()
    options.validate()
    folder = Path(folder)
    tune = [r for r in records if in_tune(r, options.tune_fraction, options.seed)]
    tune_ids = {r["id"] for r in tune}
    tune_store = store.subset([i for i, rid in enumerate(store.ids) if rid in tune_ids])
    steer = sorted({x for spec in options.steer_layers for x in parse_layers(spec, store.num_layers)})
    directions = run_direction(tune_store, DirectionOptions(layers=",".join(map(str, steer)), train_fraction=1.0,
                                                            seed=options.seed))
    directions.save(folder / "direction")
    guard = run_guard_fit(tune_store, GuardFitOptions(layers=options.guard_layers, classifiers=["logreg"],
                                                      folds=options.folds, target_fpr=options.target_fpr,
                                                      test_frac=0.0, seed=options.seed),
                          data_info={"store": "the tune side of the run's store"}, progress=progress)
    guard.save(folder / "guard")
    ranges = [spec for spec in options.steer_layers if min(parse_layers(spec, store.num_layers)) >= guard.layer]
    if not ranges:
        raise IhsError(f"the guard reads layer {guard.layer}, after every steered range "
                       f"({', '.join(options.steer_layers)}); steer later or choose earlier guard_layers")
    common = dict(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, quality=options.quality,
                  judge=options.judge, max_over_refusal=options.max_over_refusal)
    meta = {"direction_path": str(folder / "direction"), "guard_path": str(folder / "guard"), "probe_store": None,
            "probe_layer": None}
    recs, selection = select_records(list(records), [], "tune", options.tune_fraction, str(options.tune_limit),
                                     options.seed)
    swept = run_defense(lm, recs, guard, directions,
                        DefenseOptions(layers=ranges, alphas=list(options.alphas), always="none", **common),
                        chat=chat, system_prompt=system_prompt, meta={**meta, "selection": selection, "sweep": True},
                        command="ihs run (defense step, tune side)", progress=progress)
    swept.save(folder / "tune")
    best = swept.best()
    recs, selection = select_records(list(records), [], "eval", options.tune_fraction, str(options.eval_limit),
                                     options.seed)
    span = [",".join(map(str, best["layers"]))] if best else ranges[:1]
    alpha = [best["alpha"]] if best else list(options.alphas[:1])
    result = run_defense(lm, recs, guard, directions, DefenseOptions(layers=span, alphas=alpha, always="all", **common),
                         chat=chat, system_prompt=system_prompt,
                         meta={**meta, "selection": selection, "sweep": False, "tuned_best": swept.data["best"]},
                         command="ihs run (defense step, eval side)", progress=progress)
    return swept, result


class DefenseStep(Step):
    name = "defense"
    options = DefenseConfig
    depends = ("extract",)
    default = False
    help = ("Probe-conditioned steering on the run's prompts: guard and direction fitted on the tune side of a "
            "goal-hash split, the best steered range x alpha chosen there, reported on the disjoint eval side "
            "against no defense, unconditional steering and refuse-when-flagged.")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        return {"extract": ctx.keys["extract"], "model": ctx.model_part(), "options": asdict(ctx.options(self.name))}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        from ihs.batching import as_record_dict

        labels = set(ctx.config.data)
        if not {"malicious", "normal"} <= labels:
            raise Skip("needs normal and malicious data (the direction is malicious - normal)")
        options: DefenseConfig = ctx.options(self.name)
        fmt = ctx.config.format
        records = [as_record_dict(r) for r in ctx.extract_records()]
        tune, result = run_defense_split(ctx.model.get(), ctx.load_store(), records, folder, options, chat=fmt.chat,
                                         system_prompt=fmt.system_prompt, progress=ctx.progress)
        result.save(folder)
        numbers = result.numbers() or {}
        return {"outputs": [DefenseResult.FILE, f"tune/{DefenseResult.FILE}"], "best": tune.data.get("best"),
                "asr_attack": {k: (numbers.get(k) or {}).get("asr_attack") for k in ("undefended", "best")}}
