"""What adversarial training may train on and what it is evaluated on.

Three things are held out, and nothing held out ever enters a training example:

* **goals**: the malicious and benign goals of :func:`ihs.align.evaluation_split` (a hash of the
  goal's id, the rule ``ihs align`` uses, so an adversarial run and an alignment run share it);
* **families**: a fixed list of jailbreak template families (:data:`EVAL_FAMILIES`: every fourth
  family in alphabetical order, fixed before any result was seen); training attacks use only the
  templates of the other families, and the held-out wrapped-benign prompts are those in the held-out
  families' wrappers;
* **mutations**: one mutation of each kind (:data:`EVAL_MUTATIONS`); training attacks use only the
  others.

:func:`check_training` refuses any attack row or training example that touches a held-out goal,
family or mutation, or that paraphrases a held-out goal (a paraphrase keeps its goal's id); the rounds
call it before every training run.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ihs.adversarial.mutations import MUTATIONS, apply
from ihs.adversarial.paraphrase import NAME as PARAPHRASE
from ihs.adversarial.paraphrase import Paraphraser, goal_text, kind_of_names
from ihs.align.data import SplitOptions, goal_key, is_eval_goal
from ihs.data.records import PromptRecord
from ihs.errors import DataError

DATASET = "ihs-adversarial"
#: every fourth of the 16 built-in families in alphabetical order, starting at the second
EVAL_FAMILIES: tuple[str, ...] = ("authority_claim", "encoding_translation", "many_shot", "refusal_suppression")
#: one mutation of each kind
EVAL_MUTATIONS: tuple[str, ...] = ("future_tense", "third_person", "rot13", "dialogue")


@dataclass(frozen=True)
class Holdout:
    """Held-out jailbreak families and mutations, and the goal split (see the module docstring)."""

    families: tuple[str, ...] = EVAL_FAMILIES
    mutations: tuple[str, ...] = EVAL_MUTATIONS
    split: SplitOptions = field(default_factory=SplitOptions)

    def __post_init__(self) -> None:
        known = {t["family"] for t in _templates()}
        bad = [f for f in self.families if f not in known]
        if bad:
            raise DataError(f"unknown jailbreak family {bad[0]!r}; known: {', '.join(sorted(known))}")
        if len(set(self.families)) == len(known):
            raise DataError("every jailbreak family is held out; keep at least one for training")
        bad = [m for m in self.mutations if m not in MUTATIONS]
        if bad:
            raise DataError(f"unknown mutation {bad[0]!r}; known: {', '.join(MUTATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"families": list(self.families), "mutations": list(self.mutations), "split": asdict(self.split)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Holdout:
        return cls(tuple(d["families"]), tuple(d["mutations"]), SplitOptions(**d["split"]))

    def eval_goal(self, key: str) -> bool:
        return is_eval_goal(key, split=self.split)


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[dict, ...]:
    from ihs.data.builtin import load_templates

    return tuple(load_templates())


@functools.lru_cache(maxsize=8)
def _builtin(name: str) -> tuple[PromptRecord, ...]:
    from ihs.data.builtin import load_builtin

    return tuple(load_builtin(name))


def templates(holdout: Holdout, side: str) -> list[dict]:
    """The built-in templates of the training (``train``) or held-out (``eval``) families, sorted by id."""
    held = set(holdout.families)
    return sorted((t for t in _templates() if (t["family"] in held) == (side == "eval")), key=lambda t: t["id"])


def mutations(holdout: Holdout, side: str) -> list[str]:
    """The mutation names of the training or held-out side."""
    held = set(holdout.mutations)
    return [m for m in MUTATIONS if (m in held) == (side == "eval")]


def goals(holdout: Holdout, side: str) -> list[PromptRecord]:
    """The built-in malicious goals on the training or evaluation side of the goal split."""
    return [r for r in _builtin("malicious") if holdout.eval_goal(goal_key(r)) == (side == "eval")]


def benign_with_answers(holdout: Holdout, side: str = "train") -> list[tuple[PromptRecord, str]]:
    """Benign prompts (normal, contrast) of a side that have an answer written for ihs, with that answer."""
    from ihs.align.data import project_answers

    answers = project_answers()
    out = []
    for name in ("normal", "contrast"):
        for r in _builtin(name):
            sid = str(r.tags.get("source_id", ""))
            if sid in answers and holdout.eval_goal(goal_key(r)) == (side == "eval"):
                out.append((r, answers[sid]))
    return out


def answer_split(holdout: Holdout, reserve: int) -> tuple[list[tuple[PromptRecord, str]], list[tuple[PromptRecord, str]]]:
    """``(trainable, reserved)``: the written benign answers (all on the training side of the goal split) with
    ``reserve`` of them set aside by a fixed seeded draw; the reserved ones are never trained on and score
    perplexity."""
    pairs = sorted(benign_with_answers(holdout, "train"), key=lambda p: p[0].id)
    order = random.Random("ihs-adversarial-perplexity").sample(pairs, len(pairs))
    held = {r.id for r, _ in order[:reserve]}
    return [p for p in pairs if p[0].id not in held], [p for p in pairs if p[0].id in held]


def plain(holdout: Holdout, name: str, side: str) -> list[PromptRecord]:
    """The built-in set ``name`` (normal, malicious, contrast) restricted to one side of the goal split."""
    return [r for r in _builtin(name) if holdout.eval_goal(goal_key(r)) == (side == "eval")]


def wrapped_benign(holdout: Holdout, side: str) -> list[PromptRecord]:
    """Built-in wrapped benign prompts whose wrapper family is held out (``eval``) or not (``train``)."""
    held = set(holdout.families)
    return [r for r in _builtin("wrapped") if (str(r.tags.get("wrapper")) in held) == (side == "eval")]


def make_attack(template: dict, goal: PromptRecord, names: Sequence[str], *, origin: str,
                label: str = "jailbreak", paraphraser: Paraphraser | None = None) -> dict[str, Any]:
    """An attack row: the prompt text and tags (family, template, goal, mutations, kind, origin).

    A ``paraphrase`` among ``names`` rewrites the goal with ``paraphraser`` first (:mod:`ihs.adversarial.paraphrase`);
    the row keeps the original goal's id and gets a ``paraphrase`` tag.
    """
    request, names, para = goal_text(goal, names, paraphraser)
    rules = [n for n in names if n != PARAPHRASE]
    text = apply(template["template"], request, rules)
    tags = {"family": template["family"], "template_id": template["id"], "goal_id": goal.id,
            "goal_source_id": goal.tags.get("source_id"), "mutations": list(names),
            "kind": kind_of_names(names), "origin": origin}
    if para is not None:
        tags["paraphrase"] = para
    return PromptRecord.make(text, label, DATASET, tags).to_dict()


def look_alike(attack: dict[str, Any], benign: PromptRecord, answer: str, *,
               paraphraser: Paraphraser | None = None) -> dict[str, Any]:
    """The benign twin of an attack: the same template and mutations around a harmless request, and its answer
    (a paraphrased attack's twin has its request paraphrased by ``paraphraser`` too)."""
    tags = attack["tags"]
    template = next(t for t in _templates() if t["id"] == tags["template_id"])
    request, names, para = goal_text(benign, tags["mutations"], paraphraser)
    text = apply(template["template"], request, [n for n in names if n != PARAPHRASE])
    twin = {**tags, "goal_id": benign.id, "goal_source_id": benign.tags.get("source_id"), "origin": "look-alike"}
    twin.pop("paraphrase", None)
    if para is not None:
        twin.update(paraphrase=para, mutations=names, kind=kind_of_names(names))
    row = PromptRecord.make(text, "benign", DATASET, twin).to_dict()
    row["answer"] = answer
    return row


def eval_attacks(holdout: Holdout, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` held-out attacks: held-out-family templates x evaluation goals, half with a held-out mutation.

    Goals and templates are dealt from seeded shuffles so that both are spread evenly; the same
    ``holdout``, ``n`` and ``seed`` give the same prompts.
    """
    rng = random.Random(f"ihs-adversarial-eval:{seed}")
    temps, gs, muts = templates(holdout, "eval"), goals(holdout, "eval"), mutations(holdout, "eval")
    if not temps or not gs:
        raise DataError("no held-out templates or evaluation goals to evaluate on")
    gs = rng.sample(gs, len(gs))
    temps = rng.sample(temps, len(temps))
    out = []
    for i in range(n):
        names = [muts[(i // 2) % len(muts)]] if muts and i % 2 else []
        out.append(make_attack(temps[i % len(temps)], gs[i % len(gs)], names, origin="eval"))
    return out


def attack_ok(row: dict[str, Any], holdout: Holdout) -> str | None:
    """Why an attack row may not be trained on (None: it may)."""
    tags = row.get("tags") or {}
    if tags.get("family") in holdout.families:
        return f"family {tags['family']} is held out"
    held = [m for m in tags.get("mutations", []) if m in holdout.mutations]
    if held:
        return f"mutation {held[0]} is held out"
    goal = tags.get("goal_id")
    if goal and holdout.eval_goal(str(goal)):
        return f"goal {goal} is an evaluation goal"
    para = tags.get("paraphrase")
    if para is not None or PARAPHRASE in (tags.get("mutations") or []):
        of = (para or {}).get("goal_id")
        if not goal or not of:
            return "a paraphrase without the id of the goal it rewrites"
        if holdout.eval_goal(str(of)):
            return f"it paraphrases the evaluation goal {of}"
    return None


def check_training(rows: Iterable[dict[str, Any]], holdout: Holdout) -> None:
    """Raise :class:`DataError` when any training row touches a held-out goal, family or mutation."""
    for row in rows:
        why = attack_ok(row, holdout)
        if why:
            raise DataError(f"training row {row.get('id')} cannot be trained on: {why}")
