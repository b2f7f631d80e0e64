"""Model loading and anatomy: families, overrides, clear errors, BOS handling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import FAMILIES, make_tiny, make_tokenizer, save_tiny
from ihs.errors import ModelError
from ihs.formatting import format_prompt, uses_chat
from ihs.models.anatomy import block_output, replace_block_output, resolve_anatomy
from ihs.models.loading import load_model


@pytest.mark.parametrize("family", FAMILIES)
def test_anatomy_resolves_every_family(family):
    lm = make_tiny(family)
    a = lm.anatomy
    assert a.num_layers == 2 and isinstance(a.blocks, nn.ModuleList)
    assert a.unembed is lm.model.get_output_embeddings()
    x = torch.randn(3, lm.hidden_size)
    assert a.lens(x).shape == (3, lm.model.config.vocab_size)


def test_unknown_architecture_is_an_error_and_overrides_work(tiny_llama):
    model = tiny_llama.model
    model.config.model_type = "brand_new_arch"
    try:
        with pytest.raises(ModelError, match="not in ihs's family table"):
            resolve_anatomy(model)
        a = resolve_anatomy(model, blocks_path="model.layers", norm_path="model.norm", backbone_path="model")
        assert a.num_layers == 2
        with pytest.raises(ModelError, match="not found"):
            resolve_anatomy(model, blocks_path="model.blocks", norm_path="model.norm", backbone_path="model")
    finally:
        model.config.model_type = "llama"


def test_block_output_accepts_tensor_and_tuple():
    h = torch.ones(2, 3)
    assert block_output(h) is h
    assert block_output((h, None)) is h
    new = torch.zeros(2, 3)
    assert replace_block_output(h, new) is new
    out = replace_block_output((h, "cache"), new)
    assert out[0] is new and out[1] == "cache"
    with pytest.raises(TypeError):
        block_output("nope")


def test_chat_template_adds_no_second_bos():
    tok = make_tokenizer()
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    fp = format_prompt(tok, "How do I bake bread?", chat=True)
    assert fp.ids.count(tok.bos_token_id) == 1
    naive = tok(fp.text)["input_ids"]  # what re-tokenizing with special tokens would do
    assert naive.count(tok.bos_token_id) >= 1


def test_chat_flag_resolution():
    with_template, without = make_tokenizer(chat=True), make_tokenizer(chat=False)
    assert uses_chat(with_template, None) is True
    assert uses_chat(without, None) is False
    assert uses_chat(with_template, False) is False
    with pytest.raises(ModelError, match="no chat template"):
        uses_chat(without, True)
    raw = format_prompt(without, "plain text", chat=False)
    assert raw.text == "plain text"


def test_load_local_folder_round_trip(tmp_path, tiny_llama):
    folder = save_tiny(tiny_llama, tmp_path / "m")
    lm = load_model(str(folder))
    assert lm.num_layers == 2 and lm.identity["source"] == "folder"
    assert lm.identity["revision"].startswith("folder-")
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(lm.model(ids).logits, tiny_llama.model(ids).logits)
    assert lm.chat_template == tiny_llama.chat_template


@pytest.mark.parametrize("bad,match", [
    ("no-such-model", "unknown model"),
    ("./missing/folder", "unknown model"),
    ("missing.gguf", "GGUF file not found"),
])
def test_bad_model_names(bad, match):
    with pytest.raises(ModelError, match=match):
        load_model(bad)


def test_folder_without_config_and_plain_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        load_model(str(tmp_path / "weights.bin"))


def test_unknown_dtype():
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model("whatever", dtype="int3")


def test_folder_identity_tells_same_shaped_models_apart(tmp_path):
    # two "fine-tunes": same architecture, config and file sizes, other weights
    a = save_tiny(make_tiny("llama", seed=0), tmp_path / "a")
    b = save_tiny(make_tiny("llama", seed=1), tmp_path / "b")
    a_again = load_model(str(a), pull=False)
    assert load_model(str(b), pull=False).fingerprint() != a_again.fingerprint()
    assert load_model(str(a), pull=False).fingerprint() == a_again.fingerprint()
