"""Tuned lens: training lowers KL to the final layer, save/load, top-k, and `ihs lens --tuned`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import CORPUS, make_tiny, save_tiny
from ihs.analysis.tuned_lens import TunedLens, collect_states, lens_kl, train_tuned_lens, tuned_topk
from ihs.errors import StoreError


@pytest.fixture(scope="module")
def sharp_lm():
    """A tiny 3-block Llama whose outputs are peaked (scaled unembedding), so KL has room to fall."""
    lm = make_tiny("llama", seed=1, num_layers=3)
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(25.0)
    return lm


@pytest.fixture(scope="module")
def trained(sharp_lm):
    states = collect_states(sharp_lm, CORPUS * 3, positions_per_sequence=12, continue_tokens=0, progress=False)
    lens, report = train_tuned_lens(sharp_lm, states, epochs=8, lr=5e-3, batch=96, progress=False)
    return states, lens, report


def test_collect_states_shape_and_no_first_position(sharp_lm):
    states = collect_states(sharp_lm, CORPUS[:3], positions_per_sequence=4, continue_tokens=3, progress=False)
    assert states.shape == (12, sharp_lm.num_layers + 1, sharp_lm.hidden_size)
    assert torch.isfinite(states).all()


def test_tuned_lens_reduces_kl(sharp_lm, trained):
    states, lens, report = trained
    logit, tuned = np.array(report["val_kl"]["logit"]), np.array(report["val_kl"]["tuned"])
    assert logit[-1] == pytest.approx(0.0, abs=1e-5) and tuned[-1] == pytest.approx(0.0, abs=1e-5)
    assert logit[:-1].mean() > 0.2  # the logit lens is far from the final layer in early layers
    assert tuned[:-1].mean() < 0.6 * logit[:-1].mean()
    assert all(t < lg for t, lg in zip(tuned[:-1], logit[:-1], strict=True))
    assert report["train_seconds"] >= 0 and len(report["train_loss_by_epoch"]) == 8


def test_identity_lens_is_the_logit_lens(sharp_lm, trained):
    states, _, _ = trained
    ident = TunedLens.identity(sharp_lm.num_layers, sharp_lm.hidden_size)
    np.testing.assert_allclose(lens_kl(sharp_lm, states[:50], ident), lens_kl(sharp_lm, states[:50]), rtol=1e-5, atol=1e-6)


def test_tuned_topk_and_round_trip(tmp_path, sharp_lm, trained):
    states, lens, _ = trained
    hidden = states[:7].numpy()
    ids, logits = tuned_topk(sharp_lm, lens, hidden, k=3)
    assert ids.shape == (7, sharp_lm.num_layers + 1, 3)
    # the last layer has no translator: its top-k is the model's own output
    with torch.no_grad():
        final = sharp_lm.anatomy.lens(torch.tensor(hidden[:, -1])).topk(3).indices.numpy()
    assert (ids[:, -1] == final).all()
    assert (np.diff(logits, axis=-1) <= 1e-6).all()
    lens.meta["model_fingerprint"] = sharp_lm.fingerprint()
    lens.save(tmp_path / "tl")
    again = TunedLens.load(tmp_path / "tl", fingerprint=sharp_lm.fingerprint())
    torch.testing.assert_close(again.weight, lens.weight)
    with pytest.raises(StoreError, match="another model"):
        TunedLens.load(tmp_path / "tl", fingerprint="something-else")
    with pytest.raises(StoreError, match="no tuned lens"):
        TunedLens.load(tmp_path / "nothing")


def test_lens_cli_tuned(tmp_path, sharp_lm):
    from ihs.cli import app
    from ihs.extraction import ExtractOptions, extract
    from ihs.models.loading import load_model

    folder = save_tiny(sharp_lm, tmp_path / "model")
    lm = load_model(str(folder))
    records = [{"id": f"p{i}", "text": t, "label": "malicious" if i % 2 else "normal", "dataset": "t", "tags": {}}
               for i, t in enumerate(CORPUS[:6])]
    store = tmp_path / "store"
    extract(lm, records, store, ExtractOptions(k=3), progress=False)
    text = tmp_path / "train.txt"
    text.write_text("\n".join(CORPUS), encoding="utf-8")
    out = tmp_path / "lens"
    args = ["lens", str(store), "--out", str(out), "--tuned", "--tuned-data", f"normal={text}",
            "--tuned-epochs", "1", "--tuned-continue", "2", "--tuned-positions", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (store / "tuned_lens" / "tuned_lens.safetensors").exists()
    model = json.loads((out / "lens.json").read_text())["models"][0]
    assert set(model["lenses"]) == {"logit", "tuned"}
    kl = model["tuned_lens"]["store_kl"]
    assert len(kl["logit"]) == len(kl["tuned"]) == 4 and kl["tuned"][-1] == pytest.approx(0.0, abs=1e-5)
    assert model["tuned_lens"]["training"]["epochs"] == 1
    for name in ("heatmap", "tuned_heatmap", "trajectory", "tuned_trajectory", "tuned_kl"):
        assert (out / f"lens_store_{name}.png").exists(), name
    # a second run loads the saved lens instead of training again
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "loaded" in result.output
