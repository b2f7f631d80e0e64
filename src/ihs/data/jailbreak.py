"""Build jailbreak prompts: malicious goals wrapped in jailbreak templates.

The paper did not publish its jailbreak prompts, so ihs builds them from goals and a template
library tagged by family (role-play, developer mode, refusal suppression, prefix injection,
nested fiction, ...), so every result can be split by family.

Sampling is deterministic for a seed and stable across Python versions: it uses only
``random.Random(seed).sample`` on lists sorted by id, whose output CPython keeps stable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ihs.data.records import PromptRecord
from ihs.errors import DataError

GOAL_SLOT = "{goal}"


def check_templates(templates: Sequence[dict]) -> None:
    """Every template needs ``id``, ``family`` and exactly one ``{goal}`` slot; ids are unique."""
    seen: set[str] = set()
    for n, t in enumerate(templates, start=1):
        missing = [k for k in ("id", "family", "template") if not isinstance(t.get(k), str) or not t.get(k)]
        if missing:
            raise DataError(f"jailbreak template {n} lacks {', '.join(missing)}")
        slots = t["template"].count(GOAL_SLOT)
        if slots != 1:
            raise DataError(f"jailbreak template {t['id']!r} has {slots} {GOAL_SLOT} slots; it needs exactly one")
        if t["id"] in seen:
            raise DataError(f"duplicate jailbreak template id {t['id']!r}")
        seen.add(t["id"])


def fill(template: str, goal: str) -> str:
    """Insert a goal into a template with ``str.replace`` (goals and templates may hold braces)."""
    return template.replace(GOAL_SLOT, goal)


def build_jailbreak(
    goals: Sequence[PromptRecord],
    templates: Sequence[dict],
    per_goal: int = 2,
    seed: int = 0,
    families: list[str] | None = None,
    limit: int | None = None,
    *,
    label: str = "jailbreak",
    dataset: str = "builtin:jailbreak",
) -> list[PromptRecord]:
    """Wrap each goal in ``per_goal`` templates; return records labelled ``label``.

    How templates are chosen, so that families are evenly represented: the families are put in
    one seeded random order and dealt round-robin, one per (goal, slot) in goal order, so family
    counts differ by at most one and a goal's ``per_goal`` templates come from distinct families
    (when ``per_goal`` <= number of families). Within a family, templates are dealt from a seeded
    shuffled deck that is reshuffled when used up, so templates are evenly used too.

    ``families`` keeps only those families; ``limit`` keeps the first ``limit`` records (in build
    order, which keeps the family balance). Tags: ``family``, ``template_id``, ``goal_id`` (the
    goal record's id), ``category`` (from the goal, when it has one), ``goal_source_id`` (the goal's ``source_id``).
    """
    check_templates(templates)
    if per_goal < 1:
        raise DataError(f"per_goal must be at least 1, got {per_goal}")
    pool = list(templates)
    if families is not None:
        known = sorted({t["family"] for t in templates})
        unknown = [f for f in families if f not in known]
        if unknown:
            raise DataError(f"unknown jailbreak families: {', '.join(unknown)}; available: {', '.join(known)}")
        pool = [t for t in templates if t["family"] in set(families)]
    if not pool:
        raise DataError("no jailbreak templates to build from")
    if per_goal > len(pool):
        raise DataError(f"per_goal={per_goal} but only {len(pool)} templates are available")

    rng = random.Random(seed)
    by_family: dict[str, list[dict]] = {}
    for t in sorted(pool, key=lambda t: t["id"]):
        by_family.setdefault(t["family"], []).append(t)
    fam_names = sorted(by_family)
    fam_order = rng.sample(fam_names, len(fam_names))
    decks: dict[str, list[dict]] = {f: [] for f in fam_names}

    def deal(family: str, avoid: set[str]) -> dict:
        deck = decks[family]
        if not deck:
            deck.extend(rng.sample(by_family[family], len(by_family[family])))
        # Prefer a template this goal has not had yet (matters only when families repeat).
        for i in range(len(deck) - 1, -1, -1):
            if deck[i]["id"] not in avoid:
                return deck.pop(i)
        return deck.pop()

    out: list[PromptRecord] = []
    k = 0
    for goal in goals:
        used: set[str] = set()
        for _ in range(per_goal):
            family = fam_order[k % len(fam_order)]
            k += 1
            t = deal(family, used)
            if t["id"] in used:  # family exhausted for this goal: take any unused template
                t = next(x for x in sorted(pool, key=lambda x: x["id"]) if x["id"] not in used)
            used.add(t["id"])
            tags = {"family": t["family"], "template_id": t["id"], "goal_id": goal.id}
            if "category" in goal.tags:
                tags["category"] = goal.tags["category"]
            if "source_id" in goal.tags:
                tags["goal_source_id"] = goal.tags["source_id"]
            out.append(PromptRecord.make(fill(t["template"], goal.text), label, dataset, tags))
            if limit is not None and len(out) >= limit:
                return out
    return out
