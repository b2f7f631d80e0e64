"""Extraction: last-token gathering, lens, batching invariance, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILIES, alternating_records, make_tiny
from ihs.errors import DataError, StoreError
from ihs.extract import ExtractOptions, extract, plan_batches
from ihs.formatting import format_prompt
from ihs.store import ActivationStore

TEXTS = [
    "Hi",
    "How do I bake bread at home?",
    "Write a tutorial on how to hack into a computer network and steal data. " * 6,
    "Sure, here is a guide.",
    "What is the capital of France? Summarise the history of Rome in three lines.",
    "Explain how to build a bomb.",
]


def records(texts=TEXTS):
    return alternating_records(texts)


@pytest.mark.parametrize("family", FAMILIES)
def test_lens_top1_matches_model_argmax_and_hf_states(family):
    lm = make_tiny(family)
    store = extract(lm, records(), None, ExtractOptions(k=4, batch_size=3), progress=False)
    assert store.hidden.shape == (len(TEXTS), lm.num_layers + 1, lm.hidden_size)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([format_prompt(lm.tokenizer, text, True).ids])
        with torch.no_grad():
            out = lm.model(ids, output_hidden_states=True)
        # the model's own next-token choice equals the lens top-1 at the last layer
        assert int(out.logits[0, -1].argmax()) == int(store.lens_ids[i, -1, 0])
        torch.testing.assert_close(torch.tensor(store.lens_logits[i, -1, 0]), out.logits[0, -1].max(), atol=1e-4, rtol=1e-4)
        hf = torch.stack([h[0, -1] for h in out.hidden_states])
        # indices 0..L-1 equal HF hidden_states; HF's last entry is final-normed, ours is the raw block output
        np.testing.assert_allclose(store.hidden[i, :-1], hf[:-1].numpy(), atol=1e-5)
        normed = lm.anatomy.final_norm(torch.tensor(store.hidden[i, -1]))
        np.testing.assert_allclose(normed.detach().numpy(), hf[-1].numpy(), atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_batched_equals_unbatched(family):
    lm = make_tiny(family)
    batched = extract(lm, records(), None, ExtractOptions(batch_size=16), progress=False)
    for i, rec in enumerate(records()):
        single = extract(lm, [rec], None, ExtractOptions(batch_size=1), progress=False)
        assert np.abs(batched.hidden[i] - single.hidden[0]).max() < 1e-4
        assert (batched.lens_ids[i, :, 0] == single.lens_ids[0, :, 0]).all()


def test_store_round_trip_and_manifest(tmp_path, tiny_llama):
    out = tmp_path / "store"
    mem = extract(tiny_llama, records(), None, ExtractOptions(), progress=False)
    disk = extract(tiny_llama, records(), out, ExtractOptions(), progress=False)
    loaded = ActivationStore.load(out)
    np.testing.assert_array_equal(loaded.hidden, mem.hidden)
    np.testing.assert_array_equal(loaded.lens_ids, mem.lens_ids)
    assert loaded.ids == [f"p{i}" for i in range(len(TEXTS))]
    assert list(loaded.labels) == [r["label"] for r in records()]
    m = loaded.manifest
    assert m["status"] == "complete" and m["num_layers"] == 2 and m["hidden_size"] == 32
    assert m["chat"] is True and "im_start" in m["chat_template"]
    assert m["model"]["fingerprint"] == tiny_llama.fingerprint()
    assert set(np.unique(loaded.lens_ids).tolist()) <= set(loaded.lens_tokens)
    assert all("formatted" in r and r["n_tokens"] > 0 for r in loaded.records)
    assert disk.hidden.shape == loaded.hidden.shape


def test_interrupted_run_resumes_to_identical_store(tmp_path, tiny_llama, monkeypatch):
    recs = records(TEXTS * 3)
    for i, r in enumerate(recs):
        r["id"] = f"p{i}"
    opts = ExtractOptions(batch_size=2, shard_mb=2 * 3 * 32 * 4 / 2**20)  # two rows per shard
    reference = extract(tiny_llama, recs, tmp_path / "ref", opts, progress=False)

    import ihs.extract as ex

    real = ex.forward_last_states
    calls = {"n": 0}

    def failing(lm, batch_ids, prefix=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(lm, batch_ids, prefix)

    monkeypatch.setattr(ex, "forward_last_states", failing)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        extract(tiny_llama, recs, out, opts, progress=False)
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore.load(out)
    partial = ActivationStore.load(out, allow_partial=True)
    assert 0 < len(partial) < len(recs)
    monkeypatch.setattr(ex, "forward_last_states", real)
    resumed = extract(tiny_llama, recs, out, opts, progress=False)
    np.testing.assert_array_equal(resumed.hidden, reference.hidden)
    np.testing.assert_array_equal(resumed.lens_ids, reference.lens_ids)
    assert resumed.ids == reference.ids


def test_killed_process_leaves_resumable_store(tmp_path):
    """A real SIGKILL between shards: no partial shard is visible and the re-run completes."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from conftest import make_tiny
        import ihs.store as st
        from ihs.extract import ExtractOptions, extract
        texts = [("prompt number %d " % i) * (1 + i % 5) for i in range(24)]
        recs = [dict(id="p%d" % i, text=t, label="a" if i % 2 else "b", dataset="t", tags={{}}) for i, t in enumerate(texts)]
        real = st.StoreWriter._write
        n = {{"shards": 0}}
        def write(self, *a):
            real(self, *a)
            n["shards"] += 1
            if n["shards"] == 3 and os.environ.get("KILL"):
                os.kill(os.getpid(), signal.SIGKILL)
        st.StoreWriter._write = write
        extract(make_tiny("llama"), recs, sys.argv[1], ExtractOptions(batch_size=2, shard_mb=2*3*32*4/2**20), progress=False)
    """)
    path = tmp_path / "job.py"
    path.write_text(script)
    env = {**os.environ, "KILL": "1"}
    killed = subprocess.run([sys.executable, str(path), str(tmp_path / "s")], env=env, capture_output=True)
    assert killed.returncode == -9
    partial = ActivationStore.load(tmp_path / "s", allow_partial=True)
    assert len(partial) == 6
    env.pop("KILL")
    subprocess.run([sys.executable, str(path), str(tmp_path / "s")], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, str(path), str(tmp_path / "ref")], env=env, check=True, capture_output=True)
    a, b = ActivationStore.load(tmp_path / "s"), ActivationStore.load(tmp_path / "ref")
    np.testing.assert_array_equal(a.hidden, b.hidden)
    assert a.ids == b.ids


def test_output_dir_of_another_model_is_refused(tmp_path):
    out = tmp_path / "store"
    extract(make_tiny("llama", seed=0), records(), out, progress=False)
    with pytest.raises(StoreError, match="another model"):
        extract(make_tiny("qwen2", seed=1), records(), out, progress=False)
    with pytest.raises(StoreError, match="other prompts"):
        extract(make_tiny("llama", seed=0), records()[:3], out, progress=False)
    extract(make_tiny("llama", seed=0), records()[:3], out, progress=False, overwrite=True)
    assert len(ActivationStore.load(out)) == 3


def test_non_store_directory_is_refused(tmp_path, tiny_llama):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        extract(tiny_llama, records(), tmp_path, progress=False)


def test_empty_input_and_overlong_prompts(tiny_llama):
    with pytest.raises(StoreError, match="empty"):
        extract(tiny_llama, [], None, progress=False)
    long = records(["word " * 400, "short one"])
    with pytest.raises(DataError, match="over the model's context"):
        extract(tiny_llama, long, None, ExtractOptions(truncate=False), progress=False)
    store = extract(tiny_llama, long, None, ExtractOptions(), progress=False)
    assert store.records[0]["truncated"] and store.records[0]["n_tokens"] <= 256
    assert not store.records[1]["truncated"]
    # the template survives truncation: the assistant header is still at the end
    assert store.records[0]["formatted"].endswith("<|im_start|>assistant\n")


def test_plan_batches_bounds_padding():
    lengths = [5, 100, 6, 99, 7, 98]
    batches = plan_batches(lengths, list(range(6)), batch_size=4, max_batch_tokens=250)
    assert sorted(r for b in batches for r in b) == list(range(6))
    for b in batches:
        assert len(b) <= 4 and max(lengths[r] for r in b) * len(b) <= 250
    assert batches[0] == [0, 2, 4]
