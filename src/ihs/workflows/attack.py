"""Adversarial workflow: weakness scan, targeted attack generation and adversarial-training rounds.

The computing lives in :mod:`ihs.adversarial`; this module gives it options with help, three
results and the ``attack`` step of ``ihs run`` (off by default: it summarises a rounds folder made
by ``ihs attack rounds``, it does not train).

>>> from ihs.workflows.attack import AttackOptions, run_rounds
>>> result = run_rounds("smollm2-135m-instruct", "runs/adv", AttackOptions(rounds=3))  # doctest: +SKIP
>>> result.numbers()["rows"][0]["asr"]                                                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import write_jsonl
from ihs.workflows.base import Result, RowsResult, Skip, Step, StepContext, opt

__all__ = ["AttackOptions", "AttackResult", "AttackStep", "GenerateResult", "ScanResult", "run_defenses",
           "run_generate", "run_rounds", "run_scan"]


@dataclass(kw_only=True)
class AttackOptions:
    """Adversarial training: attack budget, training per round, evaluation sizes, held-out families and mutations."""

    rounds: int = opt(3, "Rounds of attack -> train -> evaluate.")
    prompts: int = opt(48, "Attack budget per round: prompts generated and scored on the model.")
    minutes: float = opt(10.0, "Attack budget per round in minutes (the search stops when spent).")
    max_train_attacks: int = opt(16, "At most this many successful attacks per round enter the training data.")
    search: bool = opt(False, "Run the bounded greedy-genetic search (scored by compliance and the early probe).")
    search_generations: int = opt(1, "Generations of the search.")
    anchors: int = opt(8, "Plain training-side malicious and benign prompts (each) every round also trains on.")
    steps: int = opt(12, "LoRA SFT steps per round (ihs.align).")
    batch_size: int = opt(4, "Training examples per step.")
    learning_rate: float = opt(3e-4, "Training learning rate.")
    lora_r: int = opt(8, "LoRA rank (alpha = 2 x rank).")
    max_length: int = opt(256, "Training tokens of prompt + answer.")
    eval_attacks: int = opt(32, "Held-out attacks (held-out families x evaluation goals, half with a held-out mutation).")
    eval_benign: int = opt(16, "Held-out benign prompts of each kind (contrast, wrapped in held-out families).")
    probe_per_class: int = opt(24, "Plain training-side normal and malicious prompts the early probe and guard learn from.")
    perplexity: int = opt(12, "Evaluation-side benign answers scored for perplexity.")
    max_new_tokens: int = opt(32, "Tokens generated per answer.")
    guard_layer: str = opt("L/2", "Layer of the refitted guard (layer grammar).")
    target_fpr: float = opt(0.05, "Guard threshold: this false-positive rate on benign training prompts.")
    classifier: str = opt("svm", "Early probe of the jailbreak analysis: svm, logreg, mlp, diffmean.")
    middle: str | None = opt(None, "Layers of the middle-layer emotion share (layer grammar, e.g. 17:20; null: "
                                   "ceil(L/3)..floor(2L/3)).")
    families: str | None = opt(None, "Held-out jailbreak families, comma-separated (null: ihs's fixed four).")
    mutations: str | None = opt(None, "Held-out mutations, comma-separated (null: one of each kind).")
    seed: int = opt(0, "Seed of generation, sampling and training.")
    threads: int | None = opt(None, "CPU threads for training (null: torch's default).")
    paraphrase: bool = opt(False, "Also paraphrase the request of half the training-side attacks with the model "
                                  "itself (greedy, cached in the folder's paraphrases.jsonl).")

    def rounds_options(self) -> Any:
        """The :class:`ihs.adversarial.RoundsOptions` these options stand for (checks them)."""
        from ihs.adversarial import Budget, Holdout, MeasureOptions, RoundsOptions
        from ihs.adversarial.pools import EVAL_FAMILIES, EVAL_MUTATIONS

        fams = tuple(x.strip() for x in self.families.split(",") if x.strip()) if self.families else EVAL_FAMILIES
        muts = tuple(x.strip() for x in self.mutations.split(",") if x.strip()) if self.mutations else EVAL_MUTATIONS
        measure = MeasureOptions(max_new_tokens=self.max_new_tokens, guard_layer=self.guard_layer,
                                 target_fpr=self.target_fpr, classifier=self.classifier, middle=self.middle)
        return RoundsOptions(rounds=self.rounds, budget=Budget(self.prompts, self.minutes),
                             max_train_attacks=self.max_train_attacks, search=self.search,
                             search_generations=self.search_generations, anchors=self.anchors, steps=self.steps,
                             batch_size=self.batch_size, learning_rate=self.learning_rate, lora_r=self.lora_r,
                             max_length=self.max_length, eval_attacks=self.eval_attacks, eval_benign=self.eval_benign,
                             probe_per_class=self.probe_per_class, perplexity=self.perplexity, measure=measure,
                             holdout=Holdout(fams, muts), seed=self.seed, threads=self.threads,
                             paraphrase=self.paraphrase)


class _RowsFile(RowsResult):
    """A result whose rows are written as ``ROWS`` (JSONL) beside its JSON."""

    ROWS = ""

    def save(self, folder: str | Path, **_: Any) -> list[Path]:
        written = super().save(folder)
        write_jsonl(Path(folder) / self.ROWS, self.rows)
        return [*written, Path(folder) / self.ROWS]


class ScanResult(_RowsFile):
    """``attack_scan.json``: the weakness scan (groups ranked by gap and ASR, with intervals); rows beside it."""

    FILE = "attack_scan.json"
    ROWS = "attack_scan_rows.jsonl"

    def top(self, by: str = "family", n: int = 5) -> list[dict[str, Any]]:
        """The ``n`` weakest groups of a grouping (family, template, kind, mutation)."""
        return self.data.get("groups", {}).get(by, [])[:n]


def run_scan(model: str, options: AttackOptions | None = None, *, side: str = "train", command: str | None = None,
             progress: bool = True) -> ScanResult:
    """Measure ``options.prompts`` attacks of one side (train: training families and mutations; eval: held out)
    on ``model`` and rank the groups."""
    from ihs.adversarial import measure, recombine, scan
    from ihs.adversarial.evaluate import build_eval_set
    from ihs.adversarial.pools import eval_attacks
    from ihs.models.loading import load_model

    options = options or AttackOptions()
    ro = options.rounds_options()
    if side not in ("train", "eval"):
        raise IhsError(f"unknown side {side!r}; use train or eval")
    attacks = (recombine(None, ro.holdout, ro.budget.prompts, seed=ro.seed, origin="scan") if side == "train"
               else eval_attacks(ro.holdout, ro.budget.prompts, seed=ro.seed))
    es = build_eval_set(ro.holdout, attacks=1, benign=1, probe=ro.probe_per_class, perplexity=0, seed=ro.seed)
    result = measure(load_model(model), probe_rows=es["probe"], scored_rows=attacks, guard_rows=es["guard_base"],
                     options=ro.measure, progress=progress)
    data = {"command": command, "model": model, "side": side, **scan(result["rows"], seed=ro.seed),
            "info": result["info"]}
    return ScanResult(data, result["rows"])


class GenerateResult(_RowsFile):
    """``attack_generate.json``: how attacks were generated; ``attacks.jsonl`` holds them."""

    FILE = "attack_generate.json"
    ROWS = "attacks.jsonl"


def _paraphrase_counts(rows: list[dict[str, Any]], model: str | None, digest: str) -> dict[str, Any]:
    tags = [r["tags"].get("paraphrase") for r in rows]
    return {"model": model, "digest": digest, "asked": sum(t is not None for t in tags),
            "fell_back": sum(bool(t and t["fell_back"]) for t in tags)}


def run_generate(scan_file: str | Path | None, options: AttackOptions | None = None, *, random: bool = False,
                 command: str | None = None, model: str | None = None,
                 cache: str | Path | None = None) -> GenerateResult:
    """``options.prompts`` training-side attacks weighted by a scan (``attack_scan.json``), or drawn uniformly;
    with ``options.paraphrase``, ``model`` paraphrases half of their requests (cached in the file ``cache``)."""
    from ihs.adversarial import random_attacks, recombine
    from ihs.adversarial.paraphrase import Paraphraser
    from ihs.io import read_json

    options = options or AttackOptions()
    ro = options.rounds_options()
    if options.paraphrase and not model:
        raise IhsError("paraphrases are made by a model; give --model with --paraphrase")
    para = Paraphraser.for_model(str(model), cache=cache, holdout=ro.holdout, seed=ro.seed) if options.paraphrase else None
    scan_data = None
    if scan_file is not None:
        path = Path(scan_file)
        path = path / ScanResult.FILE if path.is_dir() else path
        if not path.is_file():
            raise IhsError(f"{path} not found; make a scan with `ihs attack scan`")
        scan_data = read_json(path)
        if "groups" not in scan_data:
            raise IhsError(f"{path} is not a weakness scan (no groups)")
    rows = (random_attacks(ro.holdout, ro.budget.prompts, seed=ro.seed, paraphraser=para)
            if random or scan_data is None
            else recombine(scan_data, ro.holdout, ro.budget.prompts, seed=ro.seed, paraphraser=para))
    extra = {} if para is None else {"paraphrase": _paraphrase_counts(rows, model, para.model)}
    return GenerateResult({"command": command, "scan": None if scan_file is None else str(scan_file),
                           "mode": "random" if random or scan_data is None else "targeted", "n": len(rows),
                           "seed": ro.seed, "holdout": ro.holdout.to_dict(), **extra}, rows)


COLUMNS = ("arm", "round", "asr", "asr_mutated", "over_refusal_contrast", "over_refusal_wrapped", "flagged_asr",
           "flagged_over_refusal_wrapped", "guard_auroc", "bow_auroc", "early_recognised", "mid_neg_complied",
           "mid_neg_refused", "perplexity", "attacks_added", "seconds")


def _row(arm: str, k: int, ev: dict[str, Any], done: dict[str, Any] | None) -> dict[str, Any]:
    mid = ev["mid_negative"]
    return {"arm": arm, "round": k, "asr": ev["asr"]["rate"], "asr_ci95": ev["asr"]["ci95"],
            "asr_mutated": ev["asr_mutated"]["rate"], "over_refusal_contrast": ev["over_refusal"]["contrast"]["rate"],
            "over_refusal_wrapped": ev["over_refusal"]["wrapped"]["rate"],
            "flagged_asr": ev["flagged"]["asr"]["rate"],
            "flagged_over_refusal_wrapped": ev["flagged"]["over_refusal_wrapped"]["rate"],
            "guard_auroc": ev["guard_auroc_heldout"], "bow_auroc": ev.get("bow_auroc_heldout"),
            "early_recognised": ev["early_recognised"]["rate"],
            "mid_neg_complied": mid["complied"]["mean"], "mid_neg_refused": mid["refused"]["mean"],
            "perplexity": ev["perplexity"]["value"],
            "attacks_added": None if done is None else done["attacks_added"],
            "seconds": None if done is None else done["seconds"]["total"]}


class AttackResult(Result):
    """``attack.json``: every finished round of a rounds folder, per arm, with its evaluation summary."""

    FILE = "attack.json"

    def numbers(self) -> dict[str, Any]:
        """One row per (arm, round): ASR, over-refusal, refuse-when-flagged, guard AUROC, hidden-state measures."""
        d = self.data
        rows = [_row("base", 0, d["base"]["eval"], None)] if d.get("base") else []
        for arm, rounds in d.get("arms", {}).items():
            rows += [_row(arm, r["round"], r["eval"], r) for r in rounds]
        return {"model": d.get("model"), "run": d.get("run"), "rows": rows}

    def markdown(self) -> str:
        """The rows as a Markdown table."""
        rows = self.numbers()["rows"]

        def cell(v: Any) -> str:
            return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path, *, figures: bool = True, **_: Any) -> list[Path]:
        """Write attack.json, attack.md and (``figures``, when a round or the base model is there) attack_rounds.png."""
        written = super().save(folder)
        (Path(folder) / "attack.md").write_text(self.markdown(), encoding="utf-8")
        written.append(Path(folder) / "attack.md")
        if figures and (self.data.get("base") or self.data.get("arms")):
            from ihs.plots.attack import rounds_figure

            written += rounds_figure(self.data, folder, caption=self.data.get("command"))
        return written


def run_rounds(model: str, out: str | Path, options: AttackOptions | None = None, *, arm: str = "targeted",
               rounds: int | None = None, command: str | None = None, progress: bool = True) -> AttackResult:
    """Run (or resume) adversarial-training rounds of one arm in ``out``; returns the folder's summary."""
    from ihs.adversarial import Runner

    options = options or AttackOptions()
    Runner(out, model, options.rounds_options(), arm=arm, progress=progress).run(rounds)
    return summarise(out, command=command)


def summarise(out: str | Path, *, command: str | None = None) -> AttackResult:
    """The summary of a rounds folder (no computing)."""
    from ihs.adversarial import summary

    return AttackResult({"command": command, **summary(out)})


def run_defenses(run_dir: str | Path, *, layers: str, alpha: float, arm: str = "targeted", round_: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """The steering defense and refuse-when-flagged on a rounds folder's evaluation set, for the model a round
    ended with (round 0: the base model); writes ``defense.json`` into that round's folder."""
    from ihs.adversarial.defenses import compare_defenses
    from ihs.adversarial.measure import MeasureOptions
    from ihs.io import read_json, write_json
    from ihs.models.loading import load_model

    run_dir = Path(run_dir)
    if not (run_dir / "plan.json").is_file() or not (run_dir / "eval_set.json").is_file():
        raise IhsError(f"{run_dir} is not an adversarial run (no plan.json or eval_set.json)")
    plan = read_json(run_dir / "plan.json")
    folder = run_dir / "round-0" if round_ == 0 else run_dir / arm / f"round-{round_}"
    if round_ and not (folder / "round.json").is_file():
        raise IhsError(f"round {round_} of the {arm} arm has not finished in {run_dir}")
    model = plan["model"] if round_ == 0 else read_json(folder / "round.json")["model"]
    measure = MeasureOptions(**plan["options"]["measure"])
    result = compare_defenses(load_model(model), read_json(run_dir / "eval_set.json"), layers=layers, alpha=alpha,
                              options=measure, progress=progress)
    result = {"model": model, "round": round_, "arm": arm if round_ else "base", **result}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "defense.json", result)
    return result


@dataclass(kw_only=True)
class AttackStepOptions:
    """Summarise an adversarial-training folder in ``ihs run`` (the rounds run with ``ihs attack rounds``)."""

    run_dir: str | None = opt(None, "The rounds folder to summarise (made by ihs attack rounds).")


class AttackStep(Step):
    name = "attack"
    options = AttackStepOptions
    default = False
    help = ("Summarise adversarial-training rounds made by `ihs attack rounds` (attack.run_dir): held-out ASR, "
            "over-refusal, refuse-when-flagged, guard AUROC and middle-layer emotion per round and arm.")

    def key(self, ctx: StepContext) -> dict[str, Any]:
        options: AttackStepOptions = ctx.options(self.name)
        found = sorted(str(p.relative_to(options.run_dir)) for p in Path(options.run_dir).glob("**/round.json")) \
            if options.run_dir and Path(options.run_dir).is_dir() else []
        return {"options": asdict(options), "rounds": found}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        options: AttackStepOptions = ctx.options(self.name)
        if not options.run_dir:
            raise Skip("attack.run_dir is not set (run `ihs attack rounds` first)")
        summarise(options.run_dir).save(folder)
        return {"outputs": [AttackResult.FILE]}
