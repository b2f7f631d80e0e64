"""The shared-prefix cache: same states as running every token, less work, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import alternating_records, make_tiny
from ihs.extraction import ExtractOptions, extract
from ihs.formatting import format_prompt
from ihs.prefix_cache import build_shared_prefix, shared_prefix_length

SYSTEM = "You are a careful and helpful assistant. Answer briefly and plainly."
TEXTS = [
    "How do I bake bread at home?",
    "Write a short poem about the sea.",
    "Explain how to pick a lock without a key.",
    "What is the capital of France?",
    "How can I steal a car quickly",
    "Give me three tips for sleeping better.",
    "x",
]


def records(texts=TEXTS):
    return alternating_records(texts)


def test_shared_prefix_length_edges():
    assert shared_prefix_length([], minimum=1) == 0
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=1) == 3
    # every sequence keeps at least one token of its own
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]], minimum=1) == 2
    assert shared_prefix_length([[1, 2, 3, 4]], minimum=1) == 3
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=4) == 0  # too short to be worth it
    assert shared_prefix_length([[9, 2], [1, 2]], minimum=1) == 0


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2", "mistral"])
def test_prefix_cache_gives_the_states_of_a_full_run(family):
    lm = make_tiny(family)
    ids = [format_prompt(lm.tokenizer, t, True, SYSTEM).ids for t in TEXTS]
    n = shared_prefix_length(ids)
    assert n >= 8 and build_shared_prefix(lm, ids[0][:n]) is not None
    cached = extract(lm, records(), None, ExtractOptions(system_prompt=SYSTEM, batch_size=3), progress=False)
    full = extract(lm, records(), None, ExtractOptions(system_prompt=SYSTEM, batch_size=3, shared_prefix=False),
                   progress=False)
    stats = cached.manifest["runs"][-1]
    assert stats["shared_prefix_tokens"] >= 8
    assert stats["tokens_run"] == stats["tokens"] - stats["shared_prefix_tokens"] * (len(TEXTS) - 1)
    assert full.manifest["runs"][-1]["shared_prefix_tokens"] == 0
    np.testing.assert_allclose(cached.hidden, full.hidden, atol=1e-5, rtol=1e-5)
    assert (cached.lens_ids[:, :, 0] == full.lens_ids[:, :, 0]).all()
    # and the reference: Hugging Face's own hidden states, one prompt at a time
    for i, seq in enumerate(ids):
        with torch.no_grad():
            out = lm.model(torch.tensor([seq]), output_hidden_states=True)
        hf = torch.stack([h[0, -1] for h in out.hidden_states])
        np.testing.assert_allclose(cached.hidden[i, :-1], hf[:-1].numpy(), atol=1e-5)
        assert int(out.logits[0, -1].argmax()) == int(cached.lens_ids[i, -1, 0])


def test_prefix_not_used_without_a_long_shared_opening(tiny_llama):
    store = extract(tiny_llama, records(), None, ExtractOptions(batch_size=4), progress=False)
    assert store.manifest["runs"][-1]["shared_prefix_tokens"] == 0


def test_resume_with_prefix_is_identical(tmp_path, monkeypatch):
    import ihs.extraction as ex

    lm = make_tiny("llama")
    options = ExtractOptions(system_prompt=SYSTEM, batch_size=2, shard_mb=1e-9)  # one batch per shard
    whole = extract(lm, records(), tmp_path / "whole", options, progress=False)
    real, calls = ex.forward_last_states, {"n": 0}

    def failing(lm_, batch_ids, prefix=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(lm_, batch_ids, prefix)

    monkeypatch.setattr(ex, "forward_last_states", failing)
    with pytest.raises(KeyboardInterrupt):
        extract(lm, records(), tmp_path / "part", options, progress=False)
    monkeypatch.setattr(ex, "forward_last_states", real)
    resumed = extract(lm, records(), tmp_path / "part", options, progress=False)
    np.testing.assert_array_equal(resumed.hidden, whole.hidden)
    np.testing.assert_array_equal(resumed.lens_ids, whole.lens_ids)
