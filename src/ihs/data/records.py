"""The one record type every prompt set is turned into, and its stable id.

Every loader (built-in sets, CSV/JSON/JSONL/TXT files, Hugging Face datasets) and the jailbreak
builder yield ``PromptRecord`` objects, so later stages (extraction, probes, reports) never care
where a prompt came from. The id is a hash of the normalised text rather than a row number, so the
same prompt gets the same id in every file, run and model, and results can be joined on it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

_WS = re.compile(r"\s+")


def normalise_for_id(text: str) -> str:
    """Unicode NFC, all whitespace runs collapsed to one space, stripped.

    Whitespace differences (a trailing newline, CRLF, double spaces) should not make a prompt a
    different prompt; case and punctuation do, because the model sees them.
    """
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def prompt_id(text: str) -> str:
    """Stable 16-hex-digit id of a prompt: sha1 of its normalised text (see ``normalise_for_id``)."""
    return hashlib.sha1(normalise_for_id(text).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its class label and provenance.

    ``label`` is the class an analysis uses ("normal", "malicious", "jailbreak", ...);
    ``dataset`` is the spec it was loaded from ("builtin:normal", "data/x.csv:goal", ...);
    ``tags`` holds everything else worth splitting results by (category, family, template_id,
    goal_id, language, source row, ...).
    """

    id: str
    text: str
    label: str
    dataset: str
    tags: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def make(cls, text: str, label: str, dataset: str, tags: dict | None = None) -> PromptRecord:
        """Build a record whose id is ``prompt_id(text)``."""
        return cls(id=prompt_id(text), text=text, label=label, dataset=dataset, tags=dict(tags or {}))

    def with_text(self, text: str, **extra_tags: object) -> PromptRecord:
        """A copy with new text (and a new id, since it is a different prompt) and extra tags."""
        return PromptRecord(
            id=prompt_id(text),
            text=text,
            label=self.label,
            dataset=self.dataset,
            tags={**self.tags, **extra_tags},
        )

    def to_dict(self) -> dict:
        """Plain dict for JSON output."""
        return {"id": self.id, "text": self.text, "label": self.label, "dataset": self.dataset, "tags": dict(self.tags)}
