"""Clean prompt sets before any analysis splits them.

Why this matters: the paper's own files hold duplicates (7 extra copies among 500 normal prompts,
51 among 966 malicious ones); a random train/test split then puts the same prompt on both sides
and inflates probe accuracy. And a prompt found in two classes has no single true label.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from ihs.data.records import PromptRecord, normalise_for_id
from ihs.errors import DataError

ACROSS_POLICIES = ("drop", "keep_first", "keep")

_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newline
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    """Normalise whitespace while keeping paragraph structure.

    CRLF/CR become LF, runs of spaces and tabs become one space, spaces around line breaks go,
    three or more line breaks become two, and the ends are stripped. Single spaces everywhere would
    also do for short prompts, but multi-paragraph jailbreak templates read (and tokenise) as the
    author meant only with their line breaks.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def dedupe_key(text: str) -> str:
    """Two prompts are duplicates when they match ignoring whitespace and case."""
    return normalise_for_id(text).casefold()


def clean(
    records: Iterable[PromptRecord], *, across: str = "drop"
) -> tuple[list[PromptRecord], dict[str, dict[str, int]]]:
    """Normalise whitespace, drop empty prompts and duplicates; return kept records and a report.

    Within a class only the first copy is kept. Across classes (``across``):

    - ``"drop"`` (default): a prompt found in two or more classes is removed from all of them,
      because it has no single true label and keeping it in one class would depend on the order
      the sets were given in;
    - ``"keep_first"``: kept in the first class it appears in, dropped from the later ones;
    - ``"keep"``: left in every class (for sets that are meant to overlap).

    The report maps each label to counts: ``read`` (records in), ``empty`` (blank after
    normalising), ``dup_within`` (later copies inside the class), ``dup_across`` (removed because
    the prompt is in another class) and ``kept``; ``read = empty + dup_within + dup_across + kept``.
    """
    if across not in ACROSS_POLICIES:
        raise DataError(f"unknown duplicate policy {across!r}; use one of {', '.join(ACROSS_POLICIES)}")
    report: dict[str, dict[str, int]] = {}
    first_pass: list[tuple[PromptRecord, str]] = []
    seen: dict[str, set[str]] = {}
    for rec in records:
        counts = report.setdefault(rec.label, {"read": 0, "empty": 0, "dup_within": 0, "dup_across": 0, "kept": 0})
        counts["read"] += 1
        text = normalise_text(rec.text)
        if not text:
            counts["empty"] += 1
            continue
        key = dedupe_key(text)
        label_seen = seen.setdefault(rec.label, set())
        if key in label_seen:
            counts["dup_within"] += 1
            continue
        label_seen.add(key)
        if text != rec.text:
            rec = PromptRecord(id=rec.id, text=text, label=rec.label, dataset=rec.dataset, tags=rec.tags)
        first_pass.append((rec, key))

    labels_of: dict[str, list[str]] = {}
    for rec, key in first_pass:
        labels_of.setdefault(key, []).append(rec.label)
    kept: list[PromptRecord] = []
    for rec, key in first_pass:
        owners = labels_of[key]
        shared = len(owners) > 1
        if shared and (across == "drop" or (across == "keep_first" and owners[0] != rec.label)):
            report[rec.label]["dup_across"] += 1
            continue
        report[rec.label]["kept"] += 1
        kept.append(rec)
    return kept, report


def require_min(records: Iterable[PromptRecord], n: int = 10, labels: Iterable[str] | None = None) -> None:
    """Raise ``DataError`` when a class has fewer than ``n`` prompts.

    Analyses that split (cross-validation, train/test) give meaningless or failing results on
    a handful of examples; better to say so up front. ``labels`` names classes that must be present.
    """
    counts = Counter(r.label for r in records)
    for lab in labels or ():
        counts.setdefault(lab, 0)
    small = {lab: c for lab, c in sorted(counts.items()) if c < n}
    if not counts:
        raise DataError(f"no prompts to analyse (need at least {n} per class)")
    if small:
        detail = ", ".join(f"{lab}: {c}" for lab, c in small.items())
        raise DataError(f"too few prompts per class for a split (need at least {n}): {detail}")


_CLOSERS = "\"'”’)]»"


def ensure_final_punct(records: Iterable[PromptRecord], marks: str = ".?") -> list[PromptRecord]:
    """Append "." to prompts that do not already end in one of ``marks`` (closing quotes allowed).

    Why: at the embedding layer (index 0) the last-position state depends only on the last token.
    If one class tends to end in "." and the other in a bare word (the paper's normal prompts all
    end in "." or "?", most of its malicious ones in a word), a probe separates them at layer 0 by
    the final token alone: a confound, not understanding. The paper's remedy is to end every prompt
    with punctuation. Changed records get a new id and the tag ``punct_added=True``.
    """
    out = []
    for rec in records:
        stripped = rec.text.rstrip()
        core = stripped.rstrip(_CLOSERS)
        if not stripped or (core and core[-1] in marks):
            out.append(rec)
        else:
            out.append(rec.with_text(stripped + ".", punct_added=True))
    return out
