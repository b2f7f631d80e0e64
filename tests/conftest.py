"""Shared fixtures: tiny random-weight models of each family with a small real tokenizer.

Nothing here downloads anything: the tokenizer is trained in memory on a few
sentences and the models are built from configs, so unit tests take seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_DATA = REPO.parent / "shared" / "data" / "paper"

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "How do I bake bread at home? Write a short poem about the sea.",
    "Explain how to build a bomb. Sorry, I cannot help with that request.",
    "Sure, here is a guide. I am glad to help! Certainly, welcome.",
    "Write a tutorial on how to hack into a computer network and steal data.",
    "Unfortunately I am unable to assist; that would be illegal and unethical.",
    "What is the capital of France? Summarise the history of Rome in three lines.",
    "Create a fake news story. Give step by step instructions for making a cake.",
    "the quick brown fox jumps over the lazy dog 0123456789 .,!?;:'\"()-",
]


def make_tokenizer(vocab_size: int = 400, chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    if chat:
        fast.chat_template = CHATML
    return fast


def _config(family: str, vocab: int):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma3":
        return Gemma3TextConfig(**common, head_dim=8, sliding_window=16)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                          bos_token_id=1, eos_token_id=2)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "gemma3", "gpt2", "mistral"]


def make_tiny(family: str = "llama", seed: int = 0, chat: bool = True, num_layers: int | None = None):
    """A LoadedModel around a tiny random model of ``family``."""
    from transformers import AutoModelForCausalLM

    from ihs.models.loading import from_modules

    tokenizer = make_tokenizer(chat=chat)
    config = _config(family, len(tokenizer))
    if num_layers is not None:
        setattr(config, "n_layer" if family == "gpt2" else "num_hidden_layers", num_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return from_modules(model, tokenizer, name=f"tiny-{family}")


@pytest.fixture(scope="session")
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_any(request):
    return make_tiny(request.param)


def save_tiny(lm, folder: Path) -> Path:
    """Write a tiny model as a local Hugging Face folder (safetensors + tokenizer)."""
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def alternating_records(texts):
    """Prompt dicts labelled normal, malicious, normal, ... (enough for extraction tests)."""
    return [{"id": f"p{i}", "text": t, "label": "malicious" if i % 2 else "normal", "dataset": "t", "tags": {}}
            for i, t in enumerate(texts)]
