"""The hook engine: names, recorded states equal Hugging Face's, edits land exactly where and when asked,
early exit runs only the blocks it needs, and hooks always come off."""

from __future__ import annotations

import doctest

import pytest
import torch

import ihs.hooks
from conftest import FAMILIES, make_tiny
from ihs.errors import IhsError
from ihs.formatting import format_prompt
from ihs.hooks import Edit, Hooks, active_hooks, hook_names, layer_index, run_with_hooks

PROMPT = "Write a tutorial on how to hack into a computer network and steal data."
BATCH = ["Hi", "How do I bake bread at home?", PROMPT]


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return make_tiny(request.param)


def ids_of(lm, text=PROMPT):
    return torch.tensor([format_prompt(lm.tokenizer, text, True).ids])


def padded(lm, texts=BATCH, side="left"):
    """(input_ids, attention_mask, lengths) of ``texts`` padded on ``side``."""
    seqs = [format_prompt(lm.tokenizer, t, True).ids for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[row, cols] = torch.tensor(s)
        mask[row, cols] = 1
    return ids, mask, torch.tensor([len(s) for s in seqs])


def logits(lm, ids, mask=None):
    with torch.no_grad():
        return lm.model(ids, attention_mask=mask).logits


def every_state(lm, ids, mask=None, extra=()):
    """Every layer's states at every position under ``extra`` edits: (B, L+1, T, d)."""
    record = [Edit(layer, "record", positions="all") for layer in range(lm.num_layers + 1)]
    with torch.no_grad(), Hooks(lm, [*extra, *record]) as hooks:
        lm.model(ids, attention_mask=mask)
    return hooks.stacked()


# -- names ---------------------------------------------------------------------------------------


def test_hook_point_names_follow_the_layer_convention(tiny_llama):
    assert hook_names(tiny_llama) == ["embed", "blocks.1", "blocks.2"]
    assert [layer_index(n, 2) for n in ("embed", "blocks.1", "blocks.2", 0, 2)] == [0, 1, 2, 0, 2]
    for bad, message in [("blocks.3", "outside 0..2"), (3, "outside 0..2"), (-1, "outside 0..2"),
                         ("blocks.0", "layer 0 is 'embed'"), ("resid", "unknown hook point"),
                         ("blocks.x", "unknown hook point")]:
        with pytest.raises(IhsError, match=message):
            layer_index(bad, 2)
    with pytest.raises(IhsError, match="outside 0..2"):
        Hooks(tiny_llama, [Edit(layer=3, op="read")])
    with pytest.raises(IhsError, match="outside 0..2"):
        Hooks(tiny_llama, [], stop_after="blocks.3")
    assert active_hooks(tiny_llama) == 0


def test_bad_edits_are_clear_errors():
    with pytest.raises(IhsError, match="needs a value"):
        Edit(layer=1, op="add")
    with pytest.raises(IhsError, match="needs a value"):
        Edit(layer=1, op="ablate")
    with pytest.raises(IhsError, match="unknown hook op"):
        Edit(layer=1, op="steer")
    with pytest.raises(IhsError, match="for op 'ablate'"):
        Edit(layer=1, op="add", value=torch.ones(3), how="zero")
    with pytest.raises(IhsError, match="unknown hook timing"):
        Edit(layer=1, op="read", when="later")
    assert Edit(layer=1, op="ablate", value=torch.ones(3)).how == "direction"


def test_the_docstring_example_runs():
    result = doctest.testmod(ihs.hooks, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


# -- record: equal to Hugging Face's hidden states ---------------------------------------------


def test_recorded_last_tokens_equal_hf_hidden_states_with_left_padding(lm):
    ids, mask, _ = padded(lm, side="left")
    edits = [Edit(name, "record") for name in hook_names(lm)]
    with torch.no_grad(), Hooks(lm, edits) as hooks:
        out = lm.model(ids, attention_mask=mask, output_hidden_states=True)
    got = hooks.stacked()  # (B, L+1, d)
    assert got.shape == (len(BATCH), lm.num_layers + 1, lm.hidden_size)
    hf = torch.stack([h[:, -1] for h in out.hidden_states], dim=1)
    # 0..L-1 equal HF's entries; HF's last entry is final-normed, the hook point is the raw block output
    torch.testing.assert_close(got[:, :-1], hf[:, :-1], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(lm.anatomy.final_norm(got[:, -1]), hf[:, -1], rtol=1e-6, atol=1e-6)
    assert active_hooks(lm) == 0


def test_recorded_last_tokens_with_right_padding_use_last_index(lm):
    ids, mask, lengths = padded(lm, side="right")
    rows = torch.arange(len(BATCH))
    edits = [Edit(layer, "record") for layer in range(lm.num_layers + 1)]
    with torch.no_grad():
        out, hooks = run_with_hooks(lm, edits, last_index=lengths - 1, forward=lm.model, input_ids=ids,
                                    attention_mask=mask, output_hidden_states=True)
    hf = torch.stack([h[rows, lengths - 1] for h in out.hidden_states], dim=1)
    torch.testing.assert_close(hooks.stacked()[:, :-1], hf[:, :-1], rtol=0, atol=0)
    # without last_index the last column is taken: a pad position for the shorter rows
    _, plain = run_with_hooks(lm, [Edit(1, "record")], input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(plain.recorded[1], out.hidden_states[1][:, -1].detach(), rtol=0, atol=0)


def test_read_keeps_every_pass_on_the_cpu_and_mask_positions(tiny_llama):
    lm = tiny_llama
    ids, mask, lengths = padded(lm, side="right")
    states = every_state(lm, ids, mask)  # (B, L+1, T, d)
    picked = torch.zeros(ids.shape, dtype=torch.bool)
    picked[0, 1] = picked[2, 0] = picked[2, 3] = True
    edits = [Edit("blocks.1", "read", positions=picked), Edit("blocks.1", "read", positions=[1, -1])]
    with torch.no_grad(), Hooks(lm, edits) as hooks:
        lm.model(ids, attention_mask=mask)
    masked, columns = hooks.reads[1]
    torch.testing.assert_close(masked, states[:, 1][picked], rtol=0, atol=0)
    want = torch.stack([states[r, 1, c] for r in range(len(BATCH)) for c in (1, ids.shape[1] - 1)])
    torch.testing.assert_close(columns, want, rtol=0, atol=0)
    assert masked.device.type == "cpu"


# -- writes: exactly the targeted rows and positions ---------------------------------------------


def _changed(after, before):
    """(B, T) mask of the states that moved."""
    return (after - before).abs().amax(-1) > 0


def test_writes_touch_exactly_the_targeted_rows_and_positions(lm):
    ids, mask, _ = padded(lm, side="left")
    base = every_state(lm, ids, mask)  # (B, L+1, T, d)
    batch, width, d = ids.shape[0], ids.shape[1], lm.hidden_size
    torch.manual_seed(3)
    vec = torch.randn(d) * 3
    layer = 1
    cases = [
        (Edit(layer, "replace", vec, positions="last"), [(r, width - 1) for r in range(batch)]),
        (Edit(layer, "add", vec, positions=[2, 4], rows=[1], scale=2.0), [(1, 2), (1, 4)]),
        (Edit(layer, "ablate", how="zero", positions="all", rows=[0, 2]),
         [(r, c) for r in (0, 2) for c in range(width)]),
        (Edit(layer, "ablate", vec, positions=[-2]), [(r, width - 2) for r in range(batch)]),
        (Edit(layer, "ablate", how="mean", positions="last", rows=torch.tensor([0, 1])), [(0, width - 1), (1, width - 1)]),
    ]
    for edit, targets in cases:
        got = every_state(lm, ids, mask, [edit])
        want = torch.zeros(batch, width, dtype=torch.bool)
        for r, c in targets:
            want[r, c] = True
        changed = _changed(got[:, layer], base[:, layer])
        assert changed.any() and not (changed & ~want).any(), edit  # the targeted states hold the new values (below)
        torch.testing.assert_close(got[:, :layer], base[:, :layer], rtol=0, atol=0)  # earlier layers untouched
        untouched = ~want.any(0)  # causal attention: columns before the first edited one never move, at any layer
        first = int(untouched.logical_not().nonzero()[0])
        torch.testing.assert_close(got[:, :, :first], base[:, :, :first], rtol=0, atol=0)
        other_rows = ~want.any(1)  # rows never interact: untargeted rows are the same at every layer
        torch.testing.assert_close(got[other_rows], base[other_rows], rtol=0, atol=0)
        new, old = got[:, layer][want], base[:, layer][want]
        if edit.op == "replace":
            torch.testing.assert_close(new, vec.expand_as(new), rtol=0, atol=0)
        elif edit.op == "add":
            torch.testing.assert_close(new, old + 2.0 * vec, rtol=0, atol=0)
        elif edit.how == "zero":
            assert not new.any()
        elif edit.how == "direction":
            assert (new @ (vec / vec.norm())).abs().max() < 1e-4 < (old @ (vec / vec.norm())).abs().max()
        else:
            torch.testing.assert_close(new, old.mean(0).expand_as(new), rtol=1e-6, atol=1e-6)
    assert active_hooks(lm) == 0


def test_per_row_values_and_mean_over_rows_by_column(tiny_llama):
    lm = tiny_llama
    ids, mask, _ = padded(lm, side="left")
    base = every_state(lm, ids, mask)
    donors = torch.randn(ids.shape[0], lm.hidden_size)
    got = every_state(lm, ids, mask, [Edit(2, "replace", donors, positions="last")])
    torch.testing.assert_close(got[:, 2, -1], donors, rtol=0, atol=0)
    got = every_state(lm, ids, mask, [Edit(2, "ablate", how="mean", positions="all")])
    torch.testing.assert_close(got[:, 2], base[:, 2].mean(0, keepdim=True).expand_as(base[:, 2]), rtol=0, atol=1e-6)
    got = every_state(lm, ids, mask, [Edit(2, "ablate", how="mean", positions=[1, 3])])
    for c in (1, 3):
        torch.testing.assert_close(got[:, 2, c], base[:, 2, c].mean(0).expand(ids.shape[0], -1), rtol=0, atol=1e-6)
    with pytest.raises(IhsError, match="2 rows for a batch of 3"):
        every_state(lm, ids, mask, [Edit(2, "add", donors[:2])])
    assert active_hooks(lm) == 0


def test_identity_graft_changes_no_logits(lm):
    ids = ids_of(lm)
    states = every_state(lm, ids)[0]
    before = logits(lm, ids)
    for layer in range(lm.num_layers + 1):
        with Hooks(lm, [Edit(layer, "replace", states[layer, -1].clone(), positions="last")]):
            after = logits(lm, ids)
        torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_graft_changes_only_from_grafted_layer_on(lm):
    ids = ids_of(lm)
    base, base_logits = every_state(lm, ids)[0], logits(lm, ids)
    torch.manual_seed(1)
    donor = torch.randn(lm.hidden_size) * base[1, -1].norm()
    edit = Edit(layer=1, op="replace", value=donor, positions="last")
    grafted = every_state(lm, ids, extra=[edit])[0]
    with Hooks(lm, [edit]):
        graft_logits = logits(lm, ids)
    torch.testing.assert_close(grafted[:1], base[:1], rtol=0, atol=0)
    torch.testing.assert_close(grafted[1, -1], donor)
    torch.testing.assert_close(grafted[:, :-1], base[:, :-1], rtol=0, atol=0)
    for layer in range(1, lm.num_layers + 1):
        assert (grafted[layer, -1] - base[layer, -1]).abs().max() > 1e-3, layer
    torch.testing.assert_close(graft_logits[0, :-1], base_logits[0, :-1], rtol=0, atol=0)
    assert not torch.allclose(graft_logits[0, -1], base_logits[0, -1])


def test_embedding_edit_uses_the_block_input(tiny_llama):
    lm = tiny_llama
    ids = ids_of(lm)
    base = every_state(lm, ids)[0]
    donor = torch.randn(lm.hidden_size)
    grafted = every_state(lm, ids, extra=[Edit("embed", "replace", donor)])[0]
    torch.testing.assert_close(grafted[0, -1], donor)
    assert (grafted[1, -1] - base[1, -1]).abs().max() > 1e-4


def test_prompt_edits_hit_only_the_first_pass(tiny_llama):
    lm = tiny_llama
    ids = ids_of(lm)
    edits = [Edit(layer=1, op="read", when="all"), Edit(layer=2, op="read", when="prompt"),
             Edit(layer=2, op="read", positions=[0], when="all")]  # column indices refer to the prompt
    with Hooks(lm, edits) as hooks, torch.no_grad():
        lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                          pad_token_id=3, eos_token_id=None)
        assert hooks.step == 3
        hooks.new_pass()
        lm.model(ids)
    assert len(hooks.reads[1]) == 5 and len(hooks.reads[2]) == 4
    assert active_hooks(lm) == 0


# -- early exit ----------------------------------------------------------------------------------


def test_stop_after_runs_only_the_blocks_up_to_it_and_equals_the_full_pass(lm):
    ids, mask, lengths = padded(lm, side="right")
    _, full = run_with_hooks(lm, [Edit(layer, "record") for layer in range(lm.num_layers + 1)],
                             last_index=lengths - 1, input_ids=ids, attention_mask=mask)
    ran: list[int] = []
    counters = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(lm.anatomy.blocks)]
    norm_calls: list[int] = []
    counters.append(lm.anatomy.final_norm.register_forward_hook(lambda *a: norm_calls.append(1)))
    try:
        for layer in range(lm.num_layers + 1):
            ran.clear()
            out, early = run_with_hooks(lm, [Edit(layer, "record")], last_index=lengths - 1, stop_after=layer,
                                        forward=lm.model, input_ids=ids, attention_mask=mask)
            assert out is None and ran == list(range(layer)) and not norm_calls
            torch.testing.assert_close(early.recorded[layer], full.recorded[layer], rtol=0, atol=1e-6)
            assert active_hooks(lm) == 0  # the engine's are off; this test's own counters are not counted
        # the context manager alone ends the with-block at the stop, hooks off
        with Hooks(lm, [Edit("blocks.1", "record")], stop_after="blocks.1") as hooks:
            lm.anatomy.backbone(input_ids=ids, attention_mask=mask)
            raise AssertionError("not reached: the pass stopped")  # pragma: no cover
        assert 1 in hooks.recorded
    finally:
        for handle in counters:
            handle.remove()
    assert active_hooks(lm) == 0


# -- hooks come off ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hooks_removed_after_normal_exit_and_after_an_exception(family):
    lm = make_tiny(family)
    ids = ids_of(lm)
    before = logits(lm, ids)
    assert active_hooks(lm) == 0
    noise = torch.randn(lm.hidden_size) * 100
    with Hooks(lm, [Edit(0, "record"), Edit(1, "replace", noise, when="all")]):
        assert active_hooks(lm) == 3  # the pass counter and two hook points
        assert not torch.allclose(logits(lm, ids), before)
    assert active_hooks(lm) == 0
    torch.testing.assert_close(logits(lm, ids), before, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"):
        with Hooks(lm, [Edit(layer=1, op="replace", value=noise, when="all")]):
            assert not torch.allclose(logits(lm, ids), before)
            raise RuntimeError("boom")
    assert active_hooks(lm) == 0
    # an error inside a hook (a value of the wrong width) also leaves the model clean
    with pytest.raises(RuntimeError):
        run_with_hooks(lm, [Edit(2, "add", torch.ones(lm.hidden_size + 1), positions="all")], input_ids=ids)
    assert active_hooks(lm) == 0
    torch.testing.assert_close(logits(lm, ids), before, rtol=0, atol=0)
