"""The built-in multilingual parallel set: English originals and their translations.

``multilingual.jsonl`` holds only translations; each row links to its English original by
``src_id`` (an id of ``normal.jsonl``, ``malicious.jsonl`` or ``contrast.jsonl``) and records its
``lang``. The English rows are read from the original sets at load time, so the English text lives
in one place. Which English prompts were translated is not a hand pick: :func:`select_sources`
draws them with a fixed seed, spread over each set's categories, and the tests check that the file
covers exactly that selection in every language.

Spec grammar (through ``builtin:``)::

    builtin:multilingual                     every class, every language (label = the prompt's class)
    builtin:multilingual:malicious           one class (normal, malicious, contrast, or all)
    builtin:multilingual:malicious:en,zh,sw  one class, some languages

Every record carries the tags ``lang``, ``src_id`` (the English original's id, also on the
English rows), ``class`` and the original's ``category``.
"""

from __future__ import annotations

import random
from collections import defaultdict

from ihs.data.records import PromptRecord
from ihs.errors import DataError

#: class -> how many English prompts were translated
SOURCE_COUNTS: dict[str, int] = {"normal": 100, "malicious": 100, "contrast": 50}
SELECTION_SEED = 11
#: language code -> name, in the order results are reported (English first)
LANGUAGES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese (Simplified)",
    "es": "Spanish",
    "fr": "French",
    "sw": "Swahili",
    "bn": "Bengali",
}
HIGH_RESOURCE = ("en", "zh", "es", "fr")
LOW_RESOURCE = ("sw", "bn")
FILENAME = "multilingual.jsonl"
CLASSES = tuple(SOURCE_COUNTS)


def select_sources(rows_by_class: dict[str, list[dict]], counts: dict[str, int] | None = None,
                   seed: int = SELECTION_SEED) -> dict[str, list[str]]:
    """The English ids to translate, per class: a seeded draw spread evenly over categories.

    Per class: shuffle each category's ids with ``random.Random(seed)``, order the categories by
    name, then take one id per category in turn (round robin) until ``counts[class]`` are drawn.
    So every category is represented and none more than once above another. Ids come in draw order,
    which is also the file's order, so the first N prompts of a class in any language are themselves
    spread over categories (``--limit`` and ``--limit-by lang`` take such a prefix).
    """
    counts = counts or SOURCE_COUNTS
    out: dict[str, list[str]] = {}
    for cls, want in counts.items():
        rng = random.Random(f"{seed}:{cls}")
        by_cat: dict[str, list[str]] = defaultdict(list)
        for row in rows_by_class[cls]:
            by_cat[str(row.get("category", ""))].append(str(row["id"]))
        queues = {c: rng.sample(ids, len(ids)) for c, ids in sorted(by_cat.items())}
        picked: list[str] = []
        while len(picked) < want and any(queues.values()):
            for cat in sorted(queues):
                if queues[cat] and len(picked) < want:
                    picked.append(queues[cat].pop())
        out[cls] = picked
    return out


def parse_multilingual_spec(rest: str) -> tuple[str | None, list[str] | None]:
    """``""`` / ``"malicious"`` / ``"malicious:en,zh"`` -> (class or None for all, languages or None)."""
    parts = rest.split(":") if rest else []
    if len(parts) > 2:
        raise DataError(f"bad spec builtin:multilingual:{rest}; expected builtin:multilingual[:CLASS[:LANG,LANG]]")
    cls = parts[0].strip() if parts and parts[0].strip() else None
    if cls == "all":
        cls = None
    if cls is not None and cls not in CLASSES:
        raise DataError(f"unknown class {cls!r} in builtin:multilingual; use one of {', '.join(CLASSES)} or all")
    langs = None
    if len(parts) == 2:
        langs = [x.strip() for x in parts[1].split(",") if x.strip()]
        bad = [x for x in langs if x not in LANGUAGES]
        if bad or not langs:
            raise DataError(f"unknown language {bad[0] if bad else '(none)'!r} in builtin:multilingual; "
                            f"available: {', '.join(LANGUAGES)}")
    return cls, langs


def build_records(originals: dict[str, list[dict]], translations: list[dict], cls: str | None,
                  langs: list[str] | None, label: str | None, dataset: str) -> list[PromptRecord]:
    """Records for the English originals that were translated, then each translation (file order).

    ``originals`` maps class -> rows of the English set; ``translations`` are the rows of
    ``multilingual.jsonl``. A translation whose ``src_id`` is not an English id is an error.
    """
    by_id = {str(r["id"]): (c, r) for c, rows in originals.items() for r in rows}
    translated: dict[str, set[str]] = defaultdict(set)
    for n, row in enumerate(translations, start=1):
        for key in ("src_id", "lang", "prompt"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"built-in file {FILENAME}: row {n} has no string {key!r}")
        if row["src_id"] not in by_id:
            raise DataError(f"built-in file {FILENAME}: row {n} links to unknown English id {row['src_id']!r}")
        if row["lang"] not in LANGUAGES or row["lang"] == "en":
            raise DataError(f"built-in file {FILENAME}: row {n} has unknown language {row['lang']!r}")
        translated[row["src_id"]].add(row["lang"])
    want_langs = set(langs) if langs else set(LANGUAGES)
    records: list[PromptRecord] = []

    def tags_for(src_id: str, lang: str, extra: dict) -> dict:
        c, orig = by_id[src_id]
        tags = {"lang": lang, "src_id": src_id, "class": c}
        if "category" in orig:
            tags["category"] = orig["category"]
        tags.update(extra)
        return tags

    if "en" in want_langs:  # English originals in the order the file first lists them
        for src_id in dict.fromkeys(str(row["src_id"]) for row in translations):
            c, orig = by_id[src_id]
            if cls is None or c == cls:
                records.append(PromptRecord.make(orig["prompt"], label or c, dataset, tags_for(src_id, "en", {})))
    for row in translations:
        c, _ = by_id[row["src_id"]]
        if (cls is not None and c != cls) or row["lang"] not in want_langs:
            continue
        extra = {"source_id": row["id"]} if "id" in row else {}
        records.append(PromptRecord.make(row["prompt"], label or c, dataset, tags_for(row["src_id"], row["lang"], extra)))
    if not records:
        raise DataError(f"{dataset}: no prompts match")
    return records
