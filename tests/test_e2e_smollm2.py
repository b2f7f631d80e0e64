"""End to end on the real SmolLM2-135M-Instruct (pulled into the zoo cache on first use)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import PAPER_DATA
from ihs.cli import app
from ihs.formatting import format_prompt
from ihs.store import ActivationStore

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    from ihs.models.loading import load_model

    return load_model(MODEL)


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory, smollm2):
    if not PAPER_DATA.is_dir():
        pytest.skip(f"paper prompt sets not found at {PAPER_DATA}")
    out = tmp_path_factory.mktemp("smol") / "store"
    result = CliRunner().invoke(app, [
        "extract", "--model", MODEL,
        "--data", f"normal={PAPER_DATA / 'normal_prompt.csv'}",
        "--data", f"malicious={PAPER_DATA / 'malicious_prompt.csv'}",
        "--limit", "100", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    return ActivationStore.load(out)


def test_store_shape_and_manifest(paper_store):
    assert paper_store.hidden.shape == (200, 31, 576)
    assert (paper_store.labels == "normal").sum() == 100
    m = paper_store.manifest
    assert m["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert m["chat"] is True and m["chat_template"]
    assert all(r["formatted"].startswith("<|im_start|>") for r in paper_store.records)


def test_last_layer_lens_top1_is_the_models_next_token(paper_store, smollm2):
    for i, record in enumerate(paper_store.records):
        ids = format_prompt(smollm2.tokenizer, record["text"], chat=True).ids
        with torch.inference_mode():
            logits = smollm2.model(torch.tensor([ids])).logits[0, -1]
        assert int(logits.argmax()) == int(paper_store.lens_ids[i, -1, 0]), record["text"]


def test_batched_equals_unbatched_on_real_model(smollm2):
    from ihs.extraction import ExtractOptions, extract

    texts = ["Hi", "Write a long and detailed essay about the French revolution, its causes, "
             "its main events, the people who led it and what it changed in Europe afterwards. " * 3,
             "How do I make a bomb?"]
    recs = [{"id": str(i), "text": t, "label": "x", "dataset": "t", "tags": {}} for i, t in enumerate(texts)]
    batched = extract(smollm2, recs, None, ExtractOptions(batch_size=8), progress=False)
    for i, rec in enumerate(recs):
        single = extract(smollm2, [rec], None, ExtractOptions(batch_size=1), progress=False)
        # SmolLM2's late layers carry "massive activation" dimensions (|h| ~ 540): float32 rounding of
        # differently shaped matmuls then reaches ~1e-3 there with the shared-prefix cache (1.9e-6 of the
        # layer's scale, measured the same on the code before and after the hook engine). So the bound is
        # 1e-4 plus 4e-6 of each layer's largest magnitude; early layers meet 1e-4 outright.
        diff = np.abs(batched.hidden[i] - single.hidden[0]).max(axis=1)
        scale = np.abs(single.hidden[0]).max(axis=1)
        assert (diff <= 1e-4 + 4e-6 * scale).all(), (diff.max(), scale.max())
        assert diff[:20].max() < 1e-4
        assert (batched.lens_ids[i] == single.lens_ids[0]).all()
