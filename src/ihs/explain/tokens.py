"""The exact tokens a model sees for a prompt, with which of them are the user's and which the template's.

Explanations are per token, so they need what ``ihs.formatting.format_prompt`` produces (the ids the
analyses saw: chat template with the generation prompt, one BOS) plus, per token, its decoded text,
its character span in the rendered text and whether it belongs to the user's prompt or to the chat
template around it. The user's part is found by rendering the template once around a sentinel: the
text before the sentinel is the template's opening, the text after it the template's closing (system
prompt, role headers, generation prompt), so the prompt's span in the rendered text is exact even
when truncation shortened it. A token whose character span overlaps the user's span is a user token;
special tokens (BOS, ``<|im_start|>``) have empty spans and are template tokens.

A *marked span* (say, the harmful goal inside a jailbreak prompt) is given as character offsets in
the prompt text and mapped to a token mask with :meth:`PromptTokens.char_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ihs.errors import IhsError
from ihs.formatting import format_prompt, render, uses_chat

_SENTINEL = "\u2063IHS\u2063SENTINEL\u2063"


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as the model sees it: ids, decoded tokens, character spans and the user mask.

    ``offsets`` are (start, end) character spans in ``text`` (the rendered prompt); ``user_span`` is the
    user's prompt inside ``text``; ``shift`` is how many leading characters of ``prompt`` truncation cut
    (0 when the prompt is whole), so prompt offset ``c`` sits at ``user_span[0] + c - shift``.
    """

    prompt: str
    text: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    user: tuple[bool, ...]
    user_span: tuple[int, int]
    shift: int = 0
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_user(self) -> int:
        return sum(self.user)

    @property
    def user_positions(self) -> list[int]:
        return [i for i, u in enumerate(self.user) if u]

    def char_mask(self, spans: Sequence[tuple[int, int]] | None) -> list[bool]:
        """Token mask of the tokens overlapping any of ``spans`` (character offsets in ``prompt``).

        Parts of a span that truncation cut away are ignored; a span outside the prompt is an error.
        """
        mask = [False] * len(self.ids)
        for span in spans or ():
            try:
                start, end = int(span[0]), int(span[1])
            except (TypeError, ValueError, IndexError):
                raise IhsError(f"a marked span must be (start, end) character offsets, got {span!r}") from None
            if not 0 <= start < end <= len(self.prompt):
                raise IhsError(f"marked span ({start}, {end}) is outside the prompt of {len(self.prompt)} characters")
            lo = self.user_span[0] + max(start - self.shift, 0)
            hi = self.user_span[0] + end - self.shift
            if hi <= lo:
                continue
            for i, (s, e) in enumerate(self.offsets):
                if self.user[i] and s < hi and e > lo:
                    mask[i] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tokens, ids, user mask, truncation), JSON-ready."""
        return {"tokens": list(self.tokens), "token_ids": list(self.ids), "user": list(self.user),
                "truncated": self.truncated}


def find_span(prompt: str, needle: str) -> tuple[int, int]:
    """Character offsets of the last occurrence of ``needle`` in ``prompt`` (e.g. a goal inside a jailbreak)."""
    if not needle:
        raise IhsError("cannot mark an empty span")
    start = prompt.rfind(needle)
    if start < 0:
        raise IhsError(f"the text to mark ({needle[:40]!r}) does not occur in the prompt")
    return start, start + len(needle)


def marked_spans(records: Sequence[Any], goals: Sequence[Any] = ()) -> list[tuple[int, int] | None]:
    """The span to mark in each record, from what the built-in data already says.

    A jailbreak record (tag ``goal_id``) marks its goal's text, looked up among ``goals`` (the malicious
    records it was built from); a contrast record (tag ``trigger``) marks its trigger word (case-insensitive,
    first occurrence). Anything else, or a text that cannot be found, gets ``None``.
    """
    by_id = {getattr(g, "id", None): prompt_text(g) for g in goals}
    out: list[tuple[int, int] | None] = []
    for record in records:
        text = prompt_text(record)
        tags = getattr(record, "tags", None) or (record.get("tags", {}) if isinstance(record, dict) else {})
        span = None
        goal = by_id.get(tags.get("goal_id"))
        if goal and goal in text:
            span = find_span(text, goal)
        elif isinstance(tags.get("trigger"), str) and tags["trigger"]:
            at = text.casefold().find(tags["trigger"].casefold())
            span = (at, at + len(tags["trigger"])) if at >= 0 else None
        out.append(span)
    return out


def prompt_text(prompt: Any) -> str:
    """The text of a prompt given as a string, a ``PromptRecord`` or a dict with ``text``/``prompt``."""
    if isinstance(prompt, str):
        return prompt
    text = getattr(prompt, "text", None)
    if text is None and isinstance(prompt, dict):
        text = prompt.get("text", prompt.get("prompt"))
    if not isinstance(text, str):
        raise IhsError(f"a prompt must be a string, a record or a dict with 'text'; got {type(prompt).__name__}")
    return text


def _user_span(tokenizer: Any, text: str, prompt: str, chat: bool, system_prompt: str | None) -> tuple[int, int]:
    if not chat:
        return 0, len(text)
    frame = render(tokenizer, _SENTINEL, chat, system_prompt)
    if frame.count(_SENTINEL) == 1:
        head, tail = frame.split(_SENTINEL)
        if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
            return len(head), len(text) - len(tail)
    start = text.rfind(prompt)
    if start < 0:
        raise IhsError("could not find the prompt inside the rendered chat template; "
                       "this template changes the user's text, so user tokens cannot be told apart")
    return start, start + len(prompt)


def _display(tokenizer: Any, token_id: int, text: str, span: tuple[int, int]) -> str:
    shown = tokenizer.decode([token_id])
    if "\ufffd" in shown and span[1] > span[0]:
        return text[span[0]:span[1]]
    return shown


def _offsets(tokenizer: Any, text: str, ids: list[int], chat: bool) -> list[tuple[int, int]]:
    """Character spans of ``ids`` in ``text``: the fast tokenizer's offsets, or prefix decoding."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    # Slow tokenizer, or ids cut by truncation: decode growing prefixes and locate each token's text.
    spans, pos = [], 0
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid in ids:
        piece = "" if tid in special else tokenizer.decode([tid])
        stripped = piece.strip()
        at = text.find(stripped, pos) if stripped else -1
        if at < 0:
            spans.append((pos, pos))
            continue
        spans.append((at, at + len(stripped)))
        pos = at + len(stripped)
    return spans


def tokenize_prompts(
    lm: Any,
    prompts: Sequence[Any],
    *,
    chat: bool | None = None,
    system_prompt: str | None = None,
) -> list[PromptTokens]:
    """Format and tokenize prompts exactly as the analyses do, keeping decoded tokens and the user mask."""
    tokenizer = lm.tokenizer
    use_chat = uses_chat(tokenizer, chat)
    out = []
    for prompt in prompts:
        raw = prompt_text(prompt)
        formatted = format_prompt(tokenizer, raw, use_chat, system_prompt, lm.max_length)
        text, ids = formatted.text, list(formatted.ids)
        lo, hi = _user_span(tokenizer, text, raw, use_chat, system_prompt)
        offsets = _offsets(tokenizer, text, ids, use_chat)
        user = tuple(bool(e > s and s < hi and e > lo) for s, e in offsets)
        kept = text[lo:hi]
        # truncation keeps the prompt's end; if decoding changed the kept text slightly, the shift is approximate
        shift = max(len(raw) - len(kept), 0) if formatted.truncated else 0
        tokens = tuple(_display(tokenizer, t, text, span) for t, span in zip(ids, offsets, strict=True))
        out.append(PromptTokens(prompt=raw, text=text, ids=tuple(ids), tokens=tokens, offsets=tuple(offsets),
                                user=user, user_span=(lo, hi), shift=shift, truncated=formatted.truncated))
    return out
