"""Chat template and tokenization of alignment examples, shared by the trainers and tracking.

Prompts are tokenized with :func:`ihs.formatting.format_prompt` (the code every analysis uses); the
answer follows as the chat template renders an assistant turn, cut after its first end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ihs.align.data import DPOPair, SFTExample
from ihs.align.texts import IHS_CHAT_TEMPLATE
from ihs.errors import IhsError


def resolve_chat_template(tokenizer: Any, choice: str, model_name: str = "the model") -> str:
    """Set the template training uses on ``tokenizer``; returns ``model`` or ``ihs`` (whose template it is)."""
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if choice == "ihs" or (choice == "auto" and not has_own):
        tokenizer.chat_template = IHS_CHAT_TEMPLATE
        return "ihs"
    if not has_own:
        raise IhsError(f"{model_name} has no chat template (a base model?) and chat_template='model' allows no "
                       "other; use chat_template='auto' or 'ihs' for ihs's plain User:/Assistant: template")
    return "model"


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*msgs, {"role": "user", "content": prompt}]


def answer_ids(tokenizer: Any, prompt_text: str, prompt: str, answer: str, *, system_prompt: str | None,
               stop_ids: Sequence[int]) -> list[int]:
    """Token ids of ``answer`` as the chat template renders an assistant turn after the prompt, cut after
    its first end-of-turn token (or ended with EOS when the template adds none)."""
    full = tokenizer.apply_chat_template([*_messages(prompt, system_prompt), {"role": "assistant", "content": answer}],
                                         tokenize=False)
    rest = full[len(prompt_text):] if full.startswith(prompt_text) else answer
    ids = list(tokenizer(rest, add_special_tokens=False)["input_ids"])
    stops = set(stop_ids)
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    eos = tokenizer.eos_token_id
    return [*ids, eos] if eos is not None else ids


@dataclass
class Encoded:
    """Tokenized examples: prompt ids (exactly as the analyses format them), answers, and which are malicious."""

    prompts: list[list[int]]
    answers: list[list[int]]
    rejected: list[list[int]] | None
    malicious: list[bool]
    kept: list[int]
    dropped: int


def encode(examples: Sequence[SFTExample] | Sequence[DPOPair], tokenizer: Any, *, max_length: int,
           system_prompt: str | None, stop_ids: Sequence[int]) -> Encoded:
    """Tokenize examples for training; an example that cannot fit ``max_length`` is dropped (and counted)."""
    from ihs.formatting import format_prompt

    prompts, answers, rejected, malicious, kept = [], [], [], [], []
    is_dpo = bool(examples) and isinstance(examples[0], DPOPair)
    dropped = 0
    for n, ex in enumerate(examples):
        first = format_prompt(tokenizer, ex.prompt, True, system_prompt)
        good = answer_ids(tokenizer, first.text, ex.prompt, ex.chosen if is_dpo else ex.completion,
                          system_prompt=system_prompt, stop_ids=stop_ids)
        bad = (answer_ids(tokenizer, first.text, ex.prompt, ex.rejected, system_prompt=system_prompt,
                          stop_ids=stop_ids) if is_dpo else [])
        longest = max(len(good), len(bad))
        budget = max_length - min(longest, max_length // 2)
        fp = first if len(first.ids) <= budget else format_prompt(tokenizer, ex.prompt, True, system_prompt, budget)
        room = max_length - len(fp.ids)
        if room < 1 or len(fp.ids) < 1:
            dropped += 1
            continue
        prompts.append(list(fp.ids))
        answers.append(good[:room])
        rejected.append(bad[:room])
        malicious.append(ex.malicious)
        kept.append(n)
    return Encoded(prompts, answers, rejected if is_dpo else None, malicious, kept, dropped)


def trainer_rows(enc: Encoded) -> list[dict[str, Any]]:
    rows = []
    for i, prompt in enumerate(enc.prompts):
        extra = {"assoc_pos": len(prompt) - 1, "assoc_flag": int(enc.malicious[i])}
        if enc.rejected is None:
            rows.append({"input_ids": prompt + enc.answers[i], "labels": [-100] * len(prompt) + enc.answers[i], **extra})
        else:
            rows.append({"prompt_ids": prompt, "chosen_ids": enc.answers[i], "rejected_ids": enc.rejected[i], **extra})
    return rows
