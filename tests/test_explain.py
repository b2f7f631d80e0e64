"""ihs.explain on tiny random models: completeness, a planted trigger, attention by hand, escaping, sanity checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny
from ihs.errors import IhsError
from ihs.explain import (
    AttentionOptions,
    AttributionOptions,
    AttributionResult,
    BowSaliency,
    ConceptDirections,
    ConceptLibrary,
    ConceptOptions,
    FaithfulnessOptions,
    ProbeTarget,
    attribute,
    concept_directions,
    emotion_target,
    find_span,
    last_token_attention,
    marked_spans,
    perturbation_curves,
    randomisation_check,
    refusal_target,
    tcav,
    token_heatmap_html,
    tokenize_prompts,
)
from ihs.explain.attention import entropy
from ihs.explain.concepts import (
    EMOTION_CONCEPTS,
    HARM_CONCEPTS,
    _p_value,
    direction_cosines,
    last_token_states,
)
from ihs.explain.gradients import state_gradients
from ihs.explain.targets import COMPLIANCE_OPENINGS, REFUSAL_OPENINGS
from ihs.generation import REFUSAL_PHRASES

QUIET = {"progress": False}
PROMPTS = ["Explain how to build a bomb.", "How do I bake bread at home?",
           "What is the capital of France? Summarise the history of Rome."]
FILLER = [["the", "quick", "brown", "fox", "jumps"], ["bake", "bread", "at", "home", "today", "please"],
          ["write", "a", "short", "poem", "about", "the", "sea"], ["what", "is", "the", "capital", "of", "France"],
          ["summarise", "the", "history", "of", "Rome"], ["give", "step", "by", "step", "instructions"]]
TRIGGER = "help"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine two threads spin (about 5x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    return make_tiny("llama")


def planted_model(feature: int = 31):
    """A tiny Llama in which only the token " help" can write hidden dimension ``feature``.

    Embeddings: dimension ``feature`` is zero for every token but the trigger, whose embedding is
    that axis alone (with a typical token's norm, so its distance to the baseline is not special), and
    the unused <unk>, its opposite (so the vocabulary's mean, the default baseline, has none of it).
    Each block: value channel 0 of key/value head 0 reads only that dimension, the output projection
    writes it back only from that channel (query heads 0 and 1 share the key/value head), and the MLP
    never writes it. So the last token's state along ``feature`` is the attention it pays to the
    trigger: a probe on that axis is driven by the trigger alone.
    """
    lm = make_tiny("llama")
    trig = lm.tokenizer(" " + TRIGGER, add_special_tokens=False)["input_ids"]
    assert len(trig) == 1
    head_dim = lm.model.config.head_dim
    with torch.no_grad():
        emb = lm.model.get_input_embeddings().weight
        typical = float(emb.norm(dim=1).median())
        emb[:, feature] = 0
        emb[trig[0]] = 0
        emb[trig[0], feature] = typical
        unk = lm.tokenizer.unk_token_id  # never in a prompt: it cancels the trigger in the vocabulary's mean,
        emb[unk] = 0                     # so the "mean" baseline carries no trace of the feature
        emb[unk, feature] = -typical
        for block in lm.anatomy.blocks:
            v, o = block.self_attn.v_proj.weight, block.self_attn.o_proj.weight
            v[:, feature] = 0
            v[0, :] = 0
            v[0, feature] = 1.0
            o[feature, :] = 0
            o[:, 0] = 0
            o[:, head_dim] = 0
            o[feature, 0] = 1.0
            o[feature, head_dim] = 1.0
            block.mlp.down_proj.weight[feature, :] = 0
    return lm, trig[0]


def trigger_prompts() -> list[str]:
    out = []
    for i, words in enumerate(FILLER):
        w = list(words)
        w.insert(1 + i % (len(w) - 1), TRIGGER)
        out.append(" ".join(w))
    return out


# -- tokens ------------------------------------------------------------------------------------


def test_user_tokens_are_the_prompt_and_spans_map_to_tokens(lm):
    pts = tokenize_prompts(lm, PROMPTS, system_prompt="You are terse.")
    for pt in pts:
        user_text = "".join(t for t, u in zip(pt.tokens, pt.user, strict=True) if u)
        assert user_text.strip() == pt.prompt
        assert not pt.user[0] and not pt.user[-1]  # template around the prompt
        assert list(pt.ids) == list(lm.tokenizer(pt.text, add_special_tokens=False)["input_ids"])
    mask = pts[0].char_mask([find_span(PROMPTS[0], "a bomb")])
    assert "".join(t for t, m in zip(pts[0].tokens, mask, strict=True) if m).strip() == "a bomb"
    with pytest.raises(IhsError):
        pts[0].char_mask([(5, 500)])
    with pytest.raises(IhsError):
        find_span(PROMPTS[0], "not there")
    from ihs.data import load_builtin

    goals = load_builtin("malicious")[:3]
    jail = [r for r in load_builtin("jailbreak") if r.tags["goal_id"] in {g.id for g in goals}]
    contrast = load_builtin("contrast")[:2]
    spans = marked_spans(jail + contrast + PROMPTS[:1], goals)
    assert spans[-1] is None and all(s is not None for s in spans[:-1])
    for record, (a, b) in zip(jail + contrast, spans[:-1], strict=False):
        marked = record.text[a:b]
        assert marked in {g.text for g in goals} or marked.casefold() == record.tags["trigger"].casefold()
    raw = tokenize_prompts(lm, PROMPTS[:1], chat=False)[0]
    assert all(raw.user) and "".join(raw.tokens) == PROMPTS[0]


def test_a_guard_becomes_a_probe_target(lm):
    from ihs.guard.guard import Guard

    texts = PROMPTS + ["Write a short poem about the sea.", "Create a fake news story.", "Hack into a network."]
    states = last_token_states(lm, texts, options=ConceptOptions(**QUIET))[:, 1]
    guard = Guard.fit_states(states, [0, 1, 0, 1, 0, 1], layer=1, classifier="diffmean", folds=2)
    probe = ProbeTarget.from_guard(guard)
    assert probe.layer == 1
    got = probe.readout(lm, torch.as_tensor(states)).numpy()
    np.testing.assert_allclose(got, guard.decision_states(states), rtol=1e-4, atol=1e-4)
    with pytest.raises(IhsError):
        ProbeTarget.from_guard(object())


# -- integrated gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_integrated_gradients_are_complete(family):
    model = make_tiny(family)
    rng = np.random.default_rng(0)
    targets = [refusal_target(model), emotion_target(model, "sorry", layer=1),
               ProbeTarget(rng.normal(size=model.hidden_size), 0.3, 2)]
    for target in targets:
        res = attribute(model, PROMPTS, target, options=AttributionOptions(steps=64, **QUIET))
        for it in res.items:
            assert abs(it.target - it.baseline_target) > 1e-4
            assert it.relative_gap < 1e-2, (family, target.name, it.relative_gap)
            assert all(s == 0.0 for s, u in zip(it.scores, it.user, strict=True) if not u)
    # gradient x input is not complete: its gap is reported, and it is not small here
    gxi = attribute(model, PROMPTS, targets[0], options=AttributionOptions(method="grad_x_input", **QUIET))
    assert max(it.relative_gap for it in gxi.items) > 1e-2


def test_integrated_gradients_match_captum(lm):
    from captum.attr import IntegratedGradients

    from ihs.explain.attribution import baseline_rows, input_rows
    from ihs.explain.targets import target_values

    target = refusal_target(lm)
    pts = tokenize_prompts(lm, PROMPTS[:1])
    x = input_rows(lm, pts)[0][None]
    xb = baseline_rows(lm, pts, [x[0]], baseline="mean", scope="user")[0][None]
    n = x.shape[1]

    def forward(e):
        return target_values(lm, target, e, torch.ones(e.shape[:2], dtype=torch.long),
                             torch.full((e.shape[0],), n - 1))

    ref = IntegratedGradients(forward).attribute(x, baselines=xb, n_steps=16, method="gausslegendre")
    ours = attribute(lm, PROMPTS[:1], target, options=AttributionOptions(steps=16, **QUIET)).items[0].scores
    np.testing.assert_allclose(ours, ref.sum(-1)[0].detach().numpy(), atol=1e-5)


def test_shared_prefix_and_batching_do_not_change_scores(lm):
    target = refusal_target(lm)
    common = {"steps": 8, "system_prompt": "You are a careful, helpful and honest assistant.", **QUIET}
    a = attribute(lm, PROMPTS, target, options=AttributionOptions(share_prefix=True, batch_size=3, **common))
    b = attribute(lm, PROMPTS, target, options=AttributionOptions(share_prefix=False, batch_size=1,
                                                                  max_batch_tokens=64, **common))
    for x, y in zip(a.items, b.items, strict=True):
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
        assert x.target == pytest.approx(y.target, abs=1e-5)


def test_planted_trigger_gets_the_largest_attribution_and_deletion_falls_below_random():
    model, trig = planted_model()
    probe = ProbeTarget(np.eye(model.hidden_size)[31], 0.0, 2)
    prompts = trigger_prompts()
    for method in ("ig", "grad_x_input"):
        res = attribute(model, prompts, probe, options=AttributionOptions(method=method, steps=16, **QUIET))
        for it in res.items:
            assert it.token_ids[it.top(1)[0]["position"]] == trig, (method, it.top(3))
    curves = perturbation_curves(model, res, probe, options=FaithfulnessOptions(random_orders=8, **QUIET))
    for item in curves.items:
        assert item["auc"]["deletion"]["attribution"] < item["auc"]["deletion"]["random"]
        assert item["auc"]["insertion"]["attribution"] > item["auc"]["insertion"]["random"]
    assert curves.summary()["attribution_beats_random"] == {"deletion": 1.0, "insertion": 1.0}
    # control: a probe on an axis the trigger does not own does not single the trigger out
    control = ProbeTarget(np.eye(model.hidden_size)[5], 0.0, 2)
    res = attribute(model, prompts, control, options=AttributionOptions(steps=16, **QUIET))
    hits = [it.token_ids[it.top(1)[0]["position"]] == trig for it in res.items]
    assert np.mean(hits) < 0.5


def test_drop_mode_and_bag_of_words_order():
    model, trig = planted_model()
    probe = ProbeTarget(np.eye(model.hidden_size)[31], 0.0, 2)
    prompts = trigger_prompts()
    res = attribute(model, prompts, probe, options=AttributionOptions(steps=8, **QUIET))
    train = [f"{TRIGGER} with the {w}" for w in ("cake", "sea", "map", "poem")] + \
            [f"tell me about the {w}" for w in ("cake", "sea", "map", "poem")] + [prompts[0]]
    bow = BowSaliency.fit(train, [1, 1, 1, 1, 0, 0, 0, 0, 1], exclude=prompts)
    assert bow.excluded == 1 and bow.n_train == 8
    pts = tokenize_prompts(model, prompts)
    for pt in pts:
        w = bow.token_scores(pt)
        assert pt.ids[int(np.argmax(w))] == trig
    curves = perturbation_curves(model, res, probe, bow=bow, options=FaithfulnessOptions(mode="drop", **QUIET))
    summary = curves.summary()
    assert curves.orders == ["attribution", "random", "bow"]
    assert summary["deletion"]["bow"]["auc"] < summary["deletion"]["random"]["auc"]
    assert summary["attribution_beats_random"]["deletion"] == 1.0


def test_randomised_weights_change_attributions_and_are_restored():
    model, _ = planted_model()
    probe = ProbeTarget(np.eye(model.hidden_size)[31], 0.0, 2)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    check = randomisation_check(model, trigger_prompts(), probe, options=AttributionOptions(steps=8, **QUIET))
    assert check.summary()["mean_spearman"] < 0.5
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_result_round_trip_and_bad_options(lm, tmp_path):
    target = refusal_target(lm)
    res = attribute(lm, PROMPTS[:2], target, options=AttributionOptions(steps=4, **QUIET))
    back = AttributionResult.load(res.save(tmp_path / "attr.json"))
    assert back.items[1].scores == pytest.approx(res.items[1].scores)
    assert back.target["kind"] == "refusal_margin"
    for bad in ({"method": "lime"}, {"steps": 0}, {"baseline": "noise"}, {"scope": "half"}):
        with pytest.raises(IhsError):
            attribute(lm, PROMPTS[:1], target, options=AttributionOptions(**bad, **QUIET))
    with pytest.raises(IhsError):
        attribute(lm, PROMPTS[:1], ProbeTarget(np.ones(7), 0.0, 1), options=AttributionOptions(**QUIET))
    with pytest.raises(IhsError):
        attribute(lm, PROMPTS[:1], ProbeTarget(np.ones(lm.hidden_size), 0.0, 9), options=AttributionOptions(**QUIET))


def test_refusal_openings_come_from_the_judge_phrases(lm):
    for opening in REFUSAL_OPENINGS:
        assert opening.lower() in REFUSAL_PHRASES or opening == "Unfortunately"
    target = refusal_target(lm)
    assert not set(target.refusal_ids) & set(target.compliance_ids)
    first = lm.tokenizer("I", add_special_tokens=False)["input_ids"][0]
    sure = lm.tokenizer(COMPLIANCE_OPENINGS[0], add_special_tokens=False)["input_ids"][0]
    assert first in target.refusal_ids and sure in target.compliance_ids


# -- attention ---------------------------------------------------------------------------------


def test_attention_summaries_equal_a_hand_computation(lm):
    spans = [find_span(PROMPTS[0], "a bomb"), None, (0, 4)]
    res = last_token_attention(lm, PROMPTS, spans=spans, options=AttentionOptions(batch_size=3, **QUIET))
    assert lm.model.config._attn_implementation != "eager"  # switched back
    pts = tokenize_prompts(lm, PROMPTS)
    lm.model.set_attn_implementation("eager")
    try:
        for i, pt in enumerate(pts):
            with torch.no_grad():
                out = lm.anatomy.backbone(input_ids=torch.tensor([pt.ids]), output_attentions=True)
            raw = np.stack([a[0, :, -1, :].numpy() for a in out.attentions])  # (L, H, T), unpadded
            item = res.items[i]
            np.testing.assert_allclose(item.weights, raw, atol=1e-5)
            summary = item.summary(top_heads=2)
            user = np.array(pt.user)
            np.testing.assert_allclose(summary["user_share"], raw[:, :, user].sum(-1).mean(-1), atol=1e-5)
            ent = np.array([[-(p[p > 0] * np.log(p[p > 0])).sum() for p in layer] for layer in raw])
            np.testing.assert_allclose(summary["entropy"], ent.mean(-1), atol=1e-5)
            if spans[i] is None:
                assert summary["span_share"] is None
                continue
            span = np.array(pt.char_mask([spans[i]]))
            by_head = raw[:, :, span].sum(-1)
            np.testing.assert_allclose(summary["span_share"], by_head.mean(-1), atol=1e-5)
            assert [h["head"] for h in summary["top_heads"][0]] == list(np.argsort(-by_head[0], kind="stable")[:2])
    finally:
        lm.model.set_attn_implementation("sdpa")
    agg = res.aggregate()
    assert agg["prompts_with_span"] == 2 and len(agg["span_share"]) == lm.num_layers
    assert entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(np.log(2))


# -- heat map ----------------------------------------------------------------------------------


def test_heatmap_escapes_tokens():
    out = token_heatmap_html(["<script>", "alert('x')", "</script>", '"q"&', "\n"], [1.0, -2.0, 0.5, float("nan"), 0.0],
                             user=[True, True, True, True, False])
    assert "<script>" not in out and "</script>" not in out
    assert "&lt;script&gt;" in out and "alert(&#x27;x&#x27;)" in out and "&quot;q&quot;&amp;" in out
    assert out.count("<span") == 5 and "ihs-template" in out
    assert "rgba(30, 80, 200, 1.000)" in out  # the largest |score| is full strength
    with pytest.raises(IhsError):
        token_heatmap_html(["a"], [1.0, 2.0])


# -- concepts ----------------------------------------------------------------------------------


def test_shipped_concepts_are_complete_and_disjoint_from_the_reference():
    lib = ConceptLibrary.default()
    assert set(HARM_CONCEPTS + EMOTION_CONCEPTS) <= set(lib.concepts)
    pool = set(lib.reference.texts) | set(lib.random.texts)
    for c in lib.concepts.values():
        assert len(c.words) >= 10 and len(c.sentences) >= 5
        assert not set(c.texts) & pool, c.name
    assert not set(lib.reference.texts) & set(lib.random.texts)


def _small_library() -> ConceptLibrary:
    return ConceptLibrary.from_dict({
        "concepts": {"weapons": {"words": ["bomb", "gun"], "sentences": ["He hid the gun."]},
                     "negative_emotion": {"words": ["sorry", "sad"], "sentences": ["I am sorry."]}},
        "sets": {"neutral": {"words": ["table", "river"], "sentences": ["The bus is late."]},
                 "random": {"words": ["apple", "lamp", "spoon"], "sentences": ["A boat sailed.", "Snow fell."]}},
    })


def test_concept_directions_are_mean_differences(lm):
    lib = _small_library()
    opts = ConceptOptions(controls=3, **QUIET)
    dirs = concept_directions(lm, library=lib, options=opts)
    states = last_token_states(lm, lib.concepts["weapons"].texts + lib.reference.texts, options=opts)
    manual = states[:3].mean(0) - states[3:].mean(0)
    np.testing.assert_allclose(dirs.directions["weapons"], manual, atol=1e-5)
    assert dirs.controls["random"]["weapons"].shape == (3, lm.num_layers + 1, lm.hidden_size)
    assert np.allclose(dirs.directions["weapons"][0], 0, atol=1e-6)  # layer 0: the same last token for all


def test_tcav_finds_a_planted_direction_and_not_its_opposite(lm):
    rng = np.random.default_rng(0)
    w = rng.normal(size=lm.hidden_size)
    probe = ProbeTarget(w, 0.0, 2)
    grads, _ = state_gradients(lm, PROMPTS, probe, [1, 2], **QUIET)
    np.testing.assert_allclose(grads[:, 1], np.tile(w, (3, 1)), rtol=1e-5)  # d(h.w)/dh = w
    layers = [2]
    ctrl = rng.normal(size=(20, 1, lm.hidden_size))
    dirs = ConceptDirections(layers=layers, directions={"planted": w[None], "opposite": -w[None]},
                             controls={"random": {"planted": ctrl, "opposite": ctrl}}, sizes={})
    res = tcav(lm, PROMPTS, dirs, target=probe, options=ConceptOptions(**QUIET))
    assert res.scores["planted"] == [1.0] and res.scores["opposite"] == [0.0]
    above = ConceptDirections(layers=[1, 2], directions={"d": np.stack([w, w])}, controls={}, sizes={})
    low = tcav(lm, PROMPTS, above, target=ProbeTarget(w, 0.0, 1), options=ConceptOptions(**QUIET))
    assert low.scores["d"][0] in (0.0, 1.0) and np.isnan(low.scores["d"][1])  # layer 2 is above the probe
    # a constant gradient puts every control at 0 or 1 too, so none is closer to 0.5 than the planted one
    assert res.controls["planted"]["random"]["p_value"] == [1.0]
    assert _p_value(np.array([0.9]), np.array([[0.5], [0.6], [0.4], [0.95]])).tolist() == [0.4]


def test_direction_cosines_against_a_hand_computation(lm):
    dirs = concept_directions(lm, library=_small_library(), options=ConceptOptions(controls=2, layers="1:2", **QUIET))
    malicious, normal = PROMPTS[:2], [PROMPTS[2], "Write a short poem about the sea."]
    res = direction_cosines(lm, malicious=malicious, normal=normal, directions=dirs,
                            refused=[True, False, False, True], options=ConceptOptions(**QUIET))
    assert res.names[:2] == ["malicious_vs_normal", "refusal"] and res.layers == [1, 2]
    states = last_token_states(lm, malicious + normal, options=ConceptOptions(**QUIET))[:, [1, 2]]
    probe = states[:2].mean(0) - states[2:].mean(0)
    refusal = states[[0, 3]].mean(0) - states[[1, 2]].mean(0)
    manual = (probe * refusal).sum(-1) / np.linalg.norm(probe, axis=-1) / np.linalg.norm(refusal, axis=-1)
    np.testing.assert_allclose(res.pair("malicious_vs_normal", "refusal"), manual, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(res.cosines, axis1=1, axis2=2), 1.0, atol=1e-6)
    entry = res.controls["malicious_vs_normal"]["weapons"]
    assert len(entry["cosine"]) == 2 and len(entry["random"]["q95_abs"]) == 2
