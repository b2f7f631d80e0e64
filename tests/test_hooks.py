"""Intervention engine: hooks always come off, edits land exactly where and when asked."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, make_tiny
from ihs.errors import IhsError
from ihs.formatting import format_prompt
from ihs.interventions.hooks import Edit, Intervention, active_hooks

PROMPT = "Write a tutorial on how to hack into a computer network and steal data."


def ids_of(lm, text=PROMPT):
    return torch.tensor([format_prompt(lm.tokenizer, text, True).ids])


def logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids).logits


def read_all(lm, ids, extra=(), positions="all"):
    """Every layer's state (all positions) under ``extra`` edits, as (L+1, T, d)."""
    reads = [Edit(layer=i, op="read", positions=positions) for i in range(lm.num_layers + 1)]
    with Intervention(lm, [*extra, *reads]) as iv:
        out = logits(lm, ids)
    return torch.stack([iv.reads[i][0][0] for i in range(lm.num_layers + 1)]), out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hooks_removed_after_exception(family):
    lm = make_tiny(family)
    ids = ids_of(lm)
    before = logits(lm, ids)
    assert active_hooks(lm) == 0
    noise = torch.randn(lm.hidden_size) * 100
    with pytest.raises(RuntimeError, match="boom"):
        with Intervention(lm, [Edit(layer=1, op="replace", value=noise, when="all")]):
            assert active_hooks(lm) == 2  # the pass counter and one block hook
            assert not torch.allclose(logits(lm, ids), before)
            raise RuntimeError("boom")
    assert active_hooks(lm) == 0
    torch.testing.assert_close(logits(lm, ids), before, rtol=0, atol=0)


def test_bad_layer_is_a_clear_error_and_leaves_no_hooks(tiny_llama):
    with pytest.raises(IhsError, match="outside 0..2"):
        Intervention(tiny_llama, [Edit(layer=3, op="read")])
    with pytest.raises(IhsError, match="needs a value"):
        Edit(layer=1, op="add")
    assert active_hooks(tiny_llama) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_graft_changes_no_logits(family):
    lm = make_tiny(family)
    ids = ids_of(lm)
    states, before = read_all(lm, ids)
    for layer in range(lm.num_layers + 1):
        edit = Edit(layer=layer, op="replace", value=states[layer, -1].clone(), positions="last")
        with Intervention(lm, [edit]):
            after = logits(lm, ids)
        torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_graft_changes_only_from_grafted_layer_on(family):
    lm = make_tiny(family)  # 2 blocks: layers 0, 1, 2; graft at 1
    ids = ids_of(lm)
    base, base_logits = read_all(lm, ids)
    torch.manual_seed(1)
    donor = torch.randn(lm.hidden_size) * base[1, -1].norm()
    grafted, graft_logits = read_all(lm, ids, [Edit(layer=1, op="replace", value=donor, positions="last")])
    # layers before the graft: untouched everywhere
    torch.testing.assert_close(grafted[:1], base[:1], rtol=0, atol=0)
    # the grafted layer holds the donor at the last position only
    torch.testing.assert_close(grafted[1, -1], donor)
    # causal attention: earlier positions never see the last one, at any layer
    torch.testing.assert_close(grafted[:, :-1], base[:, :-1], rtol=0, atol=0)
    for layer in range(1, lm.num_layers + 1):
        assert (grafted[layer, -1] - base[layer, -1]).abs().max() > 1e-3, layer
    torch.testing.assert_close(graft_logits[0, :-1], base_logits[0, :-1], rtol=0, atol=0)
    assert not torch.allclose(graft_logits[0, -1], base_logits[0, -1])


def test_embedding_layer_graft_uses_block_input(tiny_llama):
    lm = tiny_llama
    ids = ids_of(lm)
    base, _ = read_all(lm, ids)
    donor = torch.randn(lm.hidden_size)
    grafted, _ = read_all(lm, ids, [Edit(layer=0, op="replace", value=donor)])
    torch.testing.assert_close(grafted[0, -1], donor)
    assert (grafted[1, -1] - base[1, -1]).abs().max() > 1e-4


def test_add_and_ablate(tiny_llama):
    lm = tiny_llama
    ids = ids_of(lm)
    base, _ = read_all(lm, ids)
    direction = torch.randn(lm.hidden_size)
    added, _ = read_all(lm, ids, [Edit(layer=1, op="add", value=direction, scale=2.0, positions="all")])
    torch.testing.assert_close(added[1], base[1] + 2.0 * direction, rtol=1e-5, atol=1e-5)
    ablated, _ = read_all(lm, ids, [Edit(layer=1, op="ablate", value=direction, positions="all")])
    unit = direction / direction.norm()
    assert (ablated[1] @ unit).abs().max() < 1e-4
    assert (base[1] @ unit).abs().max() > 1e-2
    # explicit positions: only column 2 moves
    moved, _ = read_all(lm, ids, [Edit(layer=1, op="add", value=direction, positions=[2])])
    changed = (moved[1] - base[1]).abs().amax(-1) > 1e-6
    assert changed.tolist() == [i == 2 for i in range(ids.shape[1])]


def test_prompt_edits_hit_only_the_first_pass(tiny_llama):
    lm = tiny_llama
    ids = ids_of(lm)
    reads = [Edit(layer=1, op="read", when="all"), Edit(layer=2, op="read", when="prompt")]
    with Intervention(lm, reads) as iv:
        with torch.no_grad():
            lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                              pad_token_id=3, eos_token_id=None)
    assert len(iv.reads[1]) == 4 and len(iv.reads[2]) == 1
    assert active_hooks(lm) == 0
