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
) -> tuple[list[PromptRecord], dict[str, Any]]:
    """Load every ``NAME=SPEC``, clean and de-duplicate, then keep the first ``limit`` per class.

    De-duplication runs before the limit, so ``--limit 100`` gives 100 distinct prompts.
    """
    if not data:
        raise DataError("no data given; pass at least one --data NAME=SPEC (e.g. malicious=builtin:malicious)")
    pairs = [parse_named_spec(d) if isinstance(d, str) else d for d in data]
    records: list[PromptRecord] = []
    for name, spec in pairs:
        records.extend(load_dataset_spec(spec, label=name))
    if final_punct:
        records = ensure_final_punct(records)
    kept, report = clean(records, across=dedupe)
    if limit is not None:
        if limit <= 0:
            raise DataError(f"--limit must be positive, got {limit}")
        taken: dict[str, int] = {}
        limited = []
        for rec in kept:
            if taken.get(rec.label, 0) < limit:
                taken[rec.label] = taken.get(rec.label, 0) + 1
                limited.append(rec)
        kept = limited
    for name, _ in pairs:
        if not any(r.label == name for r in kept):
            raise DataError(f"dataset '{name}' has no prompts left after cleaning (report: {report.get(name)})")
    return kept, {"specs": [f"{n}={s}" for n, s in pairs], "cleaning": report, "limit": limit,
                  "final_punct": final_punct, "dedupe": dedupe}
