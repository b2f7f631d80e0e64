"""Turn raw prompts into the exact token ids the model sees.

Chat models see each prompt through the tokenizer's own chat template (with
the generation prompt, so the last position is where the answer starts); base
models see raw text. Rendered templates already contain BOS, so they are
tokenized with ``add_special_tokens=False``: tokenizing them again with special
tokens would add a second BOS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ihs.errors import DataError, ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FormattedPrompt:
    text: str
    ids: list[int]
    truncated: bool = False


def uses_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Resolve the chat flag: ``None`` means "use the template if the tokenizer has one"."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is None:
        return has_template
    if chat and not has_template:
        raise ModelError("this tokenizer has no chat template; pass --no-chat to feed raw text")
    return chat


def render(tokenizer: Any, prompt: str, chat: bool, system_prompt: str | None = None) -> str:
    if not chat:
        return prompt
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _tokenize(tokenizer: Any, text: str, chat: bool) -> list[int]:
    # Rendered chat text carries its own BOS; raw text gets the tokenizer's usual specials.
    return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])


def format_prompt(
    tokenizer: Any,
    prompt: str,
    chat: bool,
    system_prompt: str | None = None,
    max_length: int | None = None,
    truncate: bool = True,
) -> FormattedPrompt:
    """Format and tokenize one prompt; over-long prompts lose their *beginning*.

    Truncation cuts the user's text, not the template, so the end of the
    prompt and the assistant header (where the decision is read) survive.
    """
    text = render(tokenizer, prompt, chat, system_prompt)
    ids = _tokenize(tokenizer, text, chat)
    if max_length is None or len(ids) <= max_length:
        return FormattedPrompt(text, ids)
    if not truncate:
        raise DataError(
            f"a prompt is {len(ids)} tokens long, over the model's context of {max_length} "
            f"(it starts: {prompt[:60]!r}); shorten it or allow truncation"
        )
    content_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    overhead = len(ids) - len(content_ids)
    budget = max_length - overhead
    if budget <= 0:
        raise DataError(f"the chat template alone ({overhead} tokens) exceeds the context of {max_length}")
    for _ in range(8):
        kept = tokenizer.decode(content_ids[-budget:], skip_special_tokens=True)
        text = render(tokenizer, kept, chat, system_prompt)
        ids = _tokenize(tokenizer, text, chat)
        if len(ids) <= max_length:
            return FormattedPrompt(text, ids, truncated=True)
        budget -= len(ids) - max_length
        if budget <= 0:
            break
    return FormattedPrompt(text, ids[-max_length:], truncated=True)
