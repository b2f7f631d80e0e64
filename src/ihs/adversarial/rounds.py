"""Adversarial rounds: attack, add the successes (refused) and their benign twins (answered), train, refit, repeat.

A run folder holds everything and resumes after an interruption (every stage writes its file
atomically and is skipped when the file is there; training resumes through ``ihs.align``)::

    OUT/plan.json                      model, options, held-out families / mutations / goal split
    OUT/eval_set.json                  the fixed evaluation and probe prompts
    OUT/round-0/scan.json              the base model's weakness scan on training-side attacks
    OUT/paraphrases.jsonl              with ``paraphrase``: the base model's paraphrases of training-side requests
    OUT/round-0/eval.json              the base model on the evaluation set
    OUT/<arm>/round-K/attacks.jsonl    the round's attacks (targeted: generated from the last scan and measured
                                       on the current model; random: drawn uniformly, as many as the targeted
                                       arm's successes in the same round)
    OUT/<arm>/round-K/scan.json        targeted arm: the scan of this round's measured attacks
    OUT/<arm>/round-K/data.jsonl       the round's new training rows (attack -> refusal, look-alike -> answer)
    OUT/<arm>/round-K/train/           the ihs.align LoRA SFT run (from the previous round's model)
    OUT/<arm>/round-K/eval.json        the trained model on the evaluation set (guard refitted)
    OUT/<arm>/round-K/round.json       the round's counts, budget and wall time; written last (round done)

Each round trains on the arm's training rows so far plus a fixed anchor of plain training-side
prompts (refusals and written answers), starting from the previous round's model. The arms share
round 0, the evaluation set, the anchor and every setting; they differ only in which attacks are added.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ihs.adversarial.evaluate import bow_auroc, build_eval_set, evaluate, guard_training_rows, mid_negative
from ihs.adversarial.generator import Budget, attack_score, random_attacks, recombine, search
from ihs.adversarial.measure import MeasureOptions, measure
from ihs.adversarial.paraphrase import CACHE_FILE, Paraphraser
from ihs.adversarial.pools import Holdout, answer_split, check_training, look_alike, plain
from ihs.adversarial.scan import scan
from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl, write_json, write_jsonl
from ihs.progress import console

FORMAT = "ihs-adversarial/1"
ARMS = ("targeted", "random")


@dataclass(frozen=True)
class RoundsOptions:
    """Everything a rounds run depends on (stored in plan.json; a folder refuses other options)."""

    rounds: int = 3
    budget: Budget = field(default_factory=Budget)
    max_train_attacks: int = 16
    search: bool = False
    search_generations: int = 1
    anchors: int = 8
    steps: int = 12
    batch_size: int = 4
    learning_rate: float = 3e-4
    lora_r: int = 8
    max_length: int = 256
    eval_attacks: int = 32
    eval_benign: int = 16
    probe_per_class: int = 24
    perplexity: int = 12
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    holdout: Holdout = field(default_factory=Holdout)
    seed: int = 0
    threads: int | None = None
    wait_minutes: float = 180.0
    paraphrase: bool = False

    def __post_init__(self) -> None:
        for name in ("max_train_attacks", "steps", "batch_size", "eval_attacks", "eval_benign", "probe_per_class"):
            if int(getattr(self, name)) < 1:
                raise IhsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.rounds) < 0:
            raise IhsError(f"rounds must be 0 or more (0: the base model's round only), got {self.rounds}")
        if self.anchors < 0 or self.perplexity < 0:
            raise IhsError("anchors and perplexity must be 0 or more")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["holdout"] = self.holdout.to_dict()
        for name in ("threads", "wait_minutes", "rounds"):  # these may change between runs of one folder
            d.pop(name)
        if not self.paraphrase:  # plans written before paraphrases existed stay valid
            d.pop("paraphrase")
        return d


def _train_options(o: RoundsOptions, progress: bool) -> Any:
    from ihs.align import LoraOptions, TrainOptions

    return TrainOptions(method="sft", lora=LoraOptions(r=o.lora_r, alpha=2 * o.lora_r), max_steps=o.steps,
                        save_every=o.steps, save_initial=False, batch_size=o.batch_size,
                        learning_rate=o.learning_rate, max_length=o.max_length, seed=o.seed, threads=o.threads,
                        progress=progress)


def start(out: str | Path, model: str, options: RoundsOptions) -> dict[str, Any]:
    """Write (or check) ``plan.json`` and ``eval_set.json``; returns the evaluation set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IhsError(f"{out} is a file; give a folder for the adversarial run")
    plan = {"format": FORMAT, "model": model, "options": options.to_dict()}
    if (out / "plan.json").is_file():
        old = read_json(out / "plan.json")
        if old.get("model") != model or old.get("options") != plan["options"]:
            raise IhsError(f"{out} holds another adversarial run (other model or options); use a new folder")
    elif out.exists() and any(p.name != "plan.json" for p in out.iterdir()):
        raise IhsError(f"{out} exists and is not an adversarial run; use a new or empty folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "plan.json", plan)
    if not (out / "eval_set.json").is_file():
        o = options
        write_json(out / "eval_set.json", build_eval_set(o.holdout, attacks=o.eval_attacks, benign=o.eval_benign,
                                                         probe=o.probe_per_class, perplexity=o.perplexity,
                                                         seed=o.seed))
    return read_json(out / "eval_set.json")


def _anchor(o: RoundsOptions) -> list[dict[str, Any]]:
    """Plain training-side prompts every round trains on: refusals for malicious goals, written answers."""
    from ihs.align.data import refusal_for

    rng = random.Random(f"ihs-adversarial-anchor:{o.seed}")
    mal = sorted(plain(o.holdout, "malicious", "train"), key=lambda r: r.id)
    ben = answer_split(o.holdout, o.perplexity)[0]
    rows = [{**r.to_dict(), "label": "malicious", "completion": refusal_for(r.id, seed=o.seed)}
            for r in rng.sample(mal, min(o.anchors, len(mal)))]
    rows += [{**r.to_dict(), "label": "benign", "completion": a} for r, a in rng.sample(ben, min(o.anchors, len(ben)))]
    for row in rows:
        row["tags"] = {**row["tags"], "goal_id": row["id"], "origin": "anchor", "mutations": []}
    return rows


def training_rows(attacks: list[dict[str, Any]], o: RoundsOptions, seed: int, *,
                  paraphraser: Paraphraser | None = None) -> list[dict[str, Any]]:
    """Each attack paired with a refusal, and a look-alike (a training-side benign request in the same
    wrapper and mutations, paraphrased by ``paraphraser`` when the attack was) paired with its written answer."""
    from ihs.align.data import refusal_for

    rng = random.Random(f"ihs-adversarial-lookalike:{seed}")
    benign = answer_split(o.holdout, o.perplexity)[0]
    rows = []
    for a in attacks:
        rows.append({**{k: a[k] for k in ("id", "text", "label", "dataset", "tags")},
                     "completion": refusal_for(str(a["tags"]["goal_id"]), seed=o.seed)})
        rec, answer = rng.choice(benign)
        twin = look_alike(a, rec, answer, paraphraser=paraphraser)
        twin["completion"] = twin.pop("answer")
        rows.append(twin)
    return rows


def _examples(rows: list[dict[str, Any]]) -> list[Any]:
    from ihs.align import SFTExample

    return [SFTExample(r["text"], r["completion"], "jailbreak" if r["label"] in ("jailbreak", "malicious")
                       and r["tags"].get("origin") != "anchor" else r["label"], str(r["tags"].get("goal_id", "")),
                       f"ihs-adversarial:{r['tags'].get('origin')}", r["id"]) for r in rows]


def _last_loss(run: Path) -> float | None:
    log = run / "log.jsonl"
    losses = [r["loss"] for r in (read_jsonl(log) if log.is_file() else []) if r.get("loss") is not None]
    return round(float(losses[-1]), 4) if losses else None


class Runner:
    """One arm of a rounds run in folder ``out`` (see the module docstring); call :meth:`run`."""

    def __init__(self, out: str | Path, model: str, options: RoundsOptions, *, arm: str = "targeted",
                 progress: bool = True) -> None:
        if arm not in ARMS:
            raise IhsError(f"unknown arm {arm!r}; use {' or '.join(ARMS)}")
        self.out, self.model, self.o, self.arm, self.progress = Path(out), model, options, arm, progress
        self.eval_set = start(self.out, model, options)
        self._lm: tuple[str, Any] | None = None
        self.paraphraser: Paraphraser | None = None
        if options.paraphrase:  # the base model paraphrases, every round, through the folder's cache
            self.paraphraser = Paraphraser.for_model(model, lm=lambda: self.lm(self.model),
                                                     cache=self.out / CACHE_FILE, holdout=options.holdout,
                                                     seed=options.seed)

    # -- helpers ------------------------------------------------------------------------------------------------
    def folder(self, k: int) -> Path:
        return self.out / "round-0" if k == 0 else self.out / self.arm / f"round-{k}"

    def lm(self, ref: str) -> Any:
        from ihs.models.loading import load_model

        if self._lm is None or self._lm[0] != ref:
            self._lm = None
            self._lm = (ref, load_model(ref))
        return self._lm[1]

    def model_after(self, k: int) -> str:
        """The model a round ends with: the base for round 0, else its training's last checkpoint."""
        if k == 0:
            return self.model
        done = read_json(self.folder(k) / "round.json")
        return done["model"]

    def arm_rows(self, upto: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for k in range(1, upto + 1):
            rows += read_jsonl(self.folder(k) / "data.jsonl")
        return rows

    def measure_attacks(self, ref: str, attacks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result = measure(self.lm(ref), probe_rows=self.eval_set["probe"], scored_rows=attacks,
                         guard_rows=self.eval_set["guard_base"], options=self.o.measure, progress=self.progress)
        return result["rows"]

    # -- stages -------------------------------------------------------------------------------------------------
    def round0(self) -> None:
        f = self.folder(0)
        if not (f / "scan.json").is_file():
            started = time.perf_counter()
            attacks = recombine(None, self.o.holdout, self.o.budget.prompts, seed=self.o.seed, origin="scan",
                                paraphraser=self.paraphraser)
            rows = self.measure_attacks(self.model, attacks)
            write_jsonl(f / "attacks.jsonl", rows)
            write_json(f / "scan.json", {**scan(rows, seed=self.o.seed),
                                         "seconds": round(time.perf_counter() - started, 2)})
        if not (f / "eval.json").is_file():
            write_json(f / "eval.json", {"model": self.model, **evaluate(self.lm(self.model), self.eval_set,
                                                                         options=self.o.measure, seed=self.o.seed,
                                                                         progress=self.progress)})

    def attack(self, k: int, ref: str) -> list[dict[str, Any]]:
        """The round's attacks (written to attacks.jsonl) and the successful ones to train on."""
        f = self.folder(k)
        if not (f / "attacks.jsonl").is_file():
            used = {(r["tags"]["template_id"], r["tags"]["goal_id"]) for r in self.arm_rows(k - 1)
                    if r["label"] == "jailbreak"}
            if self.arm == "targeted":
                prev = read_json((self.folder(k - 1) if k > 1 else self.folder(0)) / "scan.json")
                seed = self.o.seed * 1000 + k
                if self.o.search:
                    first = recombine(prev, self.o.holdout, max(1, self.o.budget.prompts // 2), seed=seed, used=used,
                                      paraphraser=self.paraphraser)
                    measured: dict[str, dict[str, Any]] = {}

                    def scorer(batch: list[dict[str, Any]]) -> list[float]:
                        got = self.measure_attacks(ref, batch)
                        measured.update((r["id"], r) for r in got)
                        return [attack_score(r) for r in got]

                    found = search(first, scorer, self.o.holdout, budget=self.o.budget,
                                   generations=self.o.search_generations, seed=seed, paraphraser=self.paraphraser)
                    rows = [{**measured[r["id"]], "score": r["score"], "generation": r["generation"]} for r in found]
                else:
                    cands = recombine(prev, self.o.holdout, self.o.budget.prompts, seed=seed, used=used,
                                      paraphraser=self.paraphraser)
                    rows = [{**r, "score": attack_score(r)} for r in self.measure_attacks(ref, cands)]
                write_json(f / "scan.json", scan(rows, seed=self.o.seed))
            else:
                n = self._wait_for_targeted(k)
                rows = random_attacks(self.o.holdout, n, seed=self.o.seed * 1000 + k + 500,
                                      paraphraser=self.paraphraser)
            write_jsonl(f / "attacks.jsonl", rows)
        rows = read_jsonl(f / "attacks.jsonl")
        if self.arm == "random":
            return rows
        wins = sorted((r for r in rows if not r["refused"]), key=lambda r: (-r["score"], r["id"]))
        return wins[: self.o.max_train_attacks]

    def _wait_for_targeted(self, k: int) -> int:
        path = self.out / "targeted" / f"round-{k}" / "data.jsonl"
        deadline = time.monotonic() + self.o.wait_minutes * 60
        while not path.is_file():
            if time.monotonic() > deadline:
                raise IhsError(f"the random arm needs the targeted arm's round {k} ({path}); run that arm first")
            time.sleep(10)
        return sum(1 for r in read_jsonl(path) if r["label"] == "jailbreak")

    def run_round(self, k: int) -> dict[str, Any]:
        """Run (or finish) round ``k`` of this arm and return its round.json."""
        from ihs.align import list_checkpoints, train

        f = self.folder(k)
        if (f / "round.json").is_file():
            return read_json(f / "round.json")
        f.mkdir(parents=True, exist_ok=True)
        ref = self.model_after(k - 1)
        t0 = time.perf_counter()
        wins = self.attack(k, ref)
        t_attack = time.perf_counter() - t0
        if not (f / "data.jsonl").is_file():
            write_jsonl(f / "data.jsonl", training_rows(wins, self.o, seed=self.o.seed * 1000 + k,
                                                        paraphraser=self.paraphraser))
        rows = self.arm_rows(k) + _anchor(self.o)
        check_training(rows, self.o.holdout)
        new = read_jsonl(f / "data.jsonl")
        t1 = time.perf_counter()
        if new:
            done_steps = [s for s, _ in list_checkpoints(f / "train")] if (f / "train").is_dir() else []
            if self.o.steps not in done_steps:
                self._lm = None
                train(ref, _examples(rows), f / "train", options=_train_options(self.o, self.progress))
            model = str(list_checkpoints(f / "train")[-1][1])
            loss = _last_loss(f / "train")
        else:
            model, loss = ref, None
        t_train = time.perf_counter() - t1
        t2 = time.perf_counter()
        if not (f / "eval.json").is_file():
            guard_rows = [r for r in self.arm_rows(k)]
            write_json(f / "eval.json", {"model": model, **evaluate(self.lm(model), self.eval_set,
                                                                    guard_rows=guard_rows, options=self.o.measure,
                                                                    seed=self.o.seed, progress=self.progress)})
        t_eval = time.perf_counter() - t2
        attacks = read_jsonl(f / "attacks.jsonl")
        done = {"round": k, "arm": self.arm, "model": model, "trained_from": ref,
                "attacks_scored": len(attacks) if self.arm == "targeted" else 0,
                "attacks_generated": len(attacks), "attacks_added": sum(r["label"] == "jailbreak" for r in new),
                "lookalikes_added": sum(r["label"] == "benign" for r in new), "training_rows": len(rows),
                "final_loss": loss, "budget": asdict(self.o.budget),
                "seconds": {"attack": round(t_attack, 2), "train": round(t_train, 2), "eval": round(t_eval, 2),
                            "total": round(time.perf_counter() - t0, 2)}}
        write_json(f / "round.json", done)
        return done

    def run(self, rounds: int | None = None) -> list[dict[str, Any]]:
        """Round 0 (targeted arm) then rounds 1..``rounds`` (None: the options' count; 0: round 0 only);
        finished rounds are read back, not redone."""
        rounds = self.o.rounds if rounds is None else rounds
        if rounds < 0:
            raise IhsError(f"rounds must be 0 or more, got {rounds}")
        if self.arm == "targeted":
            self.round0()
        out = []
        for k in range(1, rounds + 1):
            done = self.run_round(k)
            console.print(f"{self.arm} round {k}: {done['attacks_added']} attacks added, "
                          f"{done['seconds']['total']} s")
            out.append(done)
        return out


def _defense(folder: Path) -> dict[str, Any] | None:
    path = folder / "defense.json"
    if not path.is_file():
        return None
    d = read_json(path)
    return {k: v for k, v in d.items() if k != "answers"}


def summary(out: str | Path) -> dict[str, Any]:
    """Every finished round of a run folder: the headline measures per arm and round (for reports)."""
    out = Path(out)
    if not (out / "plan.json").is_file():
        raise IhsError(f"{out} is not an adversarial run (no plan.json); start one with `ihs attack rounds`")
    plan = read_json(out / "plan.json")
    eval_set = read_json(out / "eval_set.json")
    scored = eval_set["attacks"] + eval_set["contrast"] + eval_set["wrapped"]

    def filled(ev: dict[str, Any], arm_rows: list[dict[str, Any]]) -> dict[str, Any]:
        # folders evaluated before these measures were recorded: they need only the texts and the measured rows
        seed = plan["options"]["seed"]
        if "bow_auroc_heldout" not in ev["summary"]:
            ev["summary"]["bow_auroc_heldout"] = bow_auroc(guard_training_rows(eval_set, arm_rows), scored, seed=seed)
        if "benign_refused" not in ev["summary"]["mid_negative"]:
            ev["summary"]["mid_negative"] = mid_negative(ev["rows"], seed=seed)
        return ev

    base = filled(read_json(out / "round-0" / "eval.json"), []) if (out / "round-0" / "eval.json").is_file() \
        else None
    arms: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        k, arm_rows = 1, []
        while (out / arm / f"round-{k}" / "round.json").is_file():
            done = read_json(out / arm / f"round-{k}" / "round.json")
            arm_rows += read_jsonl(out / arm / f"round-{k}" / "data.jsonl")
            ev = filled(read_json(out / arm / f"round-{k}" / "eval.json"), arm_rows)
            defense = out / arm / f"round-{k}" / "defense.json"
            arms.setdefault(arm, []).append({**done, "eval": ev["summary"], "eval_info": ev["info"],
                                             "defense": _defense(defense.parent)})
            k += 1
    scan0 = read_json(out / "round-0" / "scan.json") if (out / "round-0" / "scan.json").is_file() else None
    return {"run": str(out), "model": plan["model"], "options": plan["options"],
            "base": None if base is None else {"eval": base["summary"], "eval_info": base["info"],
                                               "seconds": base["seconds"], "defense": _defense(out / "round-0")},
            "scan": scan0, "arms": arms}
