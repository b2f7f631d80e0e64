"""From ``NAME=SPEC`` pairs to the clean, labelled prompt list an analysis runs on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ihs.data.loaders import load_dataset_spec, parse_named_spec
from ihs.data.records import PromptRecord
from ihs.data.validate import clean, ensure_final_punct
from ihs.errors import DataError


def prepare(
    data: Sequence[str | tuple[str, str]],
    limit: int | None = None,
    dedupe: str = "drop",
    final_punct: bool = False,
    lang: str | None = None,
    limit_by: str | None = None,
) -> tuple[list[PromptRecord], dict[str, Any]]:
    """Load every ``NAME=SPEC``, clean and de-duplicate, then keep the first ``limit`` per class.

    De-duplication runs before the limit, so ``--limit 100`` gives 100 distinct prompts.
    ``lang`` is the language tag given to records that have none (a file's ``lang`` or ``language``
    column wins); ``limit_by`` (a tag, e.g. ``lang``) applies ``limit`` per class *and* tag value.
    """
    if not data:
        raise DataError("no data given; pass at least one --data NAME=SPEC (e.g. malicious=builtin:malicious)")
    pairs = [parse_named_spec(d) if isinstance(d, str) else d for d in data]
    records: list[PromptRecord] = []
    for name, spec in pairs:
        records.extend(load_dataset_spec(spec, label=name))
    records = [_with_lang(r, lang) for r in records]
    if final_punct:
        records = ensure_final_punct(records)
    kept, report = clean(records, across=dedupe)
    if limit is not None:
        if limit <= 0:
            raise DataError(f"--limit must be positive, got {limit}")
        taken: dict[tuple[str, str], int] = {}
        limited = []
        for rec in kept:
            key = (rec.label, str(rec.tags.get(limit_by)) if limit_by else "")
            if taken.get(key, 0) < limit:
                taken[key] = taken.get(key, 0) + 1
                limited.append(rec)
        kept = limited
    for name, _ in pairs:
        if not any(r.label == name for r in kept):
            raise DataError(f"dataset '{name}' has no prompts left after cleaning (report: {report.get(name)})")
    out = {"specs": [f"{n}={s}" for n, s in pairs], "cleaning": report, "limit": limit,
           "final_punct": final_punct, "dedupe": dedupe}
    if lang:
        out["lang"] = lang
    if limit_by:
        out["limit_by"] = limit_by
    return kept, out


def _with_lang(rec: PromptRecord, lang: str | None) -> PromptRecord:
    """A file's ``language`` column becomes the ``lang`` tag; ``lang`` fills in where neither is set."""
    tags = rec.tags
    if "lang" not in tags and isinstance(tags.get("language"), str) and tags["language"].strip():
        tags = {**tags, "lang": tags["language"].strip()}
    elif "lang" not in tags and lang:
        tags = {**tags, "lang": lang}
    if tags is rec.tags:
        return rec
    return PromptRecord(id=rec.id, text=rec.text, label=rec.label, dataset=rec.dataset, tags=tags)
