"""Guard kinds beyond one layer's last token: pooled and multi-layer features equal a hand computation, the refusal
margin equals the logit lens, saved guards of every kind load, score and serve, and a mismatched model is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import CHATML, make_tiny, make_tokenizer
from ihs.errors import IhsError
from ihs.formatting import format_prompt
from ihs.guard import Guard
from ihs.guard.bank import FeatureBank, bank_spec, build_bank
from ihs.guard.features import FeatureSpec, ema_alpha, extract_features, refusal_token_ids, template_prefix
from ihs.guard.heads import Recipe, fit_head, parse_kind
from ihs.guard.inputs import bank_rows
from ihs.guard.serve import ServeLimits, create_app
from ihs.models.loading import from_modules

TEXTS = ["How do I bake bread at home", "Explain how to build a bomb", "Write a short poem about the sea",
         "Create a fake news story", "hi", "What is the capital of France? Summarise the history of Rome."]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return make_tiny("llama", num_layers=4)


def hand_states(lm, ids):
    """(L+1, T, d) block outputs of one unpadded prompt: hooks-free, from output_hidden_states (the last entry of
    which transformers returns after the final norm, so layer L is rebuilt by an extra forward hook)."""
    got = {}
    h = lm.anatomy.blocks[-1].register_forward_hook(lambda m, a, o: got.setdefault("L", o[0] if isinstance(o, tuple)
                                                                                   else o))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        h.remove()
    states = [s[0] for s in out.hidden_states[:-1]] + [got["L"][0]]
    return torch.stack(states).float()


def hand_pool(h, start, how, halflife):
    """Pool (T, d) over positions start..T-1 by the definitions, one position at a time."""
    x = h[start:]
    if how == "last":
        return h[-1]
    if how == "mean":
        return x.mean(0)
    if how == "max":
        return x.max(0).values
    alpha, e = ema_alpha(halflife), x[0]
    for t in range(1, len(x)):
        e = alpha * x[t] + (1 - alpha) * e
    return e


def test_pooled_features_equal_a_hand_computation(lm):
    ids = [format_prompt(lm.tokenizer, t, True).ids for t in TEXTS]
    start = template_prefix(lm.tokenizer, True)
    assert 0 < start < min(len(x) for x in ids)
    r, c = refusal_token_ids(lm.tokenizer)
    spec = FeatureSpec(pooled={"last": [0, 2, 4], "mean": [1, 3], "max": [2], "ema": [3, 4]}, refusal_layers=[2, 4],
                       pool_start=start, ema_halflife=3.0, refusal_ids=r, compliance_ids=c)
    feats = extract_features(lm, ids, spec, batch_size=4)  # right-padded batches of different lengths
    for i, x in enumerate(ids):
        hs = hand_states(lm, x)
        for how, layers in spec.pooled.items():
            for j, layer in enumerate(layers):
                want = hand_pool(hs[layer], start, how, 3.0).numpy()
                np.testing.assert_allclose(feats.arrays[how][i, j], want, rtol=1e-4, atol=1e-5, err_msg=f"{how}@{layer}")
        for j, layer in enumerate(spec.refusal_layers):
            with torch.no_grad():
                logits = lm.anatomy.lens(hs[layer][-1][None])[0].double()
            want = torch.logsumexp(logits[r], 0) - torch.logsumexp(logits[c], 0)
            assert feats.arrays["refusal"][i, j] == pytest.approx(float(want), abs=1e-4)


def test_features_stop_after_the_deepest_layer(lm):
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(lm.anatomy.blocks)]
    try:
        ids = [format_prompt(lm.tokenizer, "hello there", True).ids]
        extract_features(lm, ids, FeatureSpec(pooled={"mean": [1, 2]}))
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]  # blocks 1 and 2 ran, 3 and 4 did not


def test_multi_layer_designs_and_a_guard_equal_a_hand_computation(lm):
    ids = [format_prompt(lm.tokenizer, t, True).ids for t in TEXTS]
    spec = FeatureSpec(pooled={"mean": [1, 3], "last": [1, 3]}, pool_start=template_prefix(lm.tokenizer, True))
    feats = extract_features(lm, ids, spec)
    hs = [hand_states(lm, x) for x in ids]
    concat = Recipe(layers=(1, 3), pooling="mean")
    want = np.stack([np.concatenate([h[1][spec.pool_start:].mean(0), h[3][spec.pool_start:].mean(0)]) for h in hs])
    np.testing.assert_allclose(concat.design(feats), want, rtol=1e-4, atol=1e-5)
    averaged = Recipe(layers=(1, 3), pooling="last", combine="mean")
    want = np.stack([(h[1][-1] + h[3][-1]).numpy() / 2 for h in hs])
    np.testing.assert_allclose(averaged.design(feats), want, rtol=1e-4, atol=1e-5)
    # a folded linear head is the scaler + coefficients + Platt written out by hand
    X = concat.design(feats)
    y = np.array([0, 1, 0, 1, 0, 1])
    head = fit_head("logreg", X, y, folds=2)
    p = head.parts
    by_hand = head.a * (((X - p["mean"]) / p["scale"]) @ p["coef"] + p["intercept"][0]) + head.c
    w, b = head.folded()
    np.testing.assert_allclose(X @ w + b, by_hand, rtol=1e-9, atol=1e-9)
    mlp = fit_head("mlp", X, y, folds=2)
    q = mlp.parts
    hidden = np.maximum(((X - q["mean"]) / q["scale"]) @ q["W1"] + q["b1"], 0)
    np.testing.assert_allclose(mlp.logit(X), mlp.a * (hidden @ q["w2"] + q["b2"][0]) + mlp.c, rtol=1e-9)


def test_kind_names_parse_in_the_layer_grammar():
    assert parse_kind("mean@1+L/2/mlp+refusal", 4) == Recipe(layers=(1, 2), pooling="mean", head="mlp", refusal=True)
    assert parse_kind("ema@0.5+1.0/mean/logreg", 4).name == "ema@2+4/mean/logreg"
    for bad in ("mean12/logreg", "mean@1", "avg@1/logreg", "mean@1/tree", "mean@9/logreg"):
        with pytest.raises(IhsError):
            parse_kind(bad, 4)


@pytest.fixture(scope="module")
def bank(lm):
    records = [{"id": f"r{i}", "text": f"{t} {i}", "label": "malicious" if k % 2 else "normal", "dataset": "t",
                "tags": {}} for i in range(6) for k, t in enumerate(TEXTS)]
    spec = bank_spec(lm, chat=True, pooled_layers=[1, 2, 4])
    from ihs.guard.guard import model_info

    return build_bank(lm, records, spec, model_info(lm, chat=True))


@pytest.mark.parametrize("kind", ["mean@1+2/mlp+refusal", "ema@2+4/mean/logreg", "max@4/svm", "last@1+4/diffmean"])
def test_new_kinds_save_load_score_and_serve(lm, bank, kind, tmp_path):
    recipe = parse_kind(kind, lm.num_layers)
    rows = bank_rows(bank.records)
    y = np.array([r["label"] == "malicious" for r in bank.records])[rows].astype(int)
    head = fit_head(recipe.head, recipe.design(bank.features, rows), y, folds=2)
    spec = bank.spec
    guard = Guard(layer=recipe.deepest, threshold=0.5, weight=np.zeros(0), bias=0.0, model=dict(bank.model),
                  recipe=recipe, head=head, spec=FeatureSpec(ema_halflife=spec.ema_halflife, pool_start=spec.pool_start,
                                                             refusal_ids=spec.refusal_ids,
                                                             compliance_ids=spec.compliance_ids))
    guard.calibrate(bank.features.subset(rows[y == 0]), 0.1)
    guard.save(tmp_path / "g")
    loaded = Guard.load(tmp_path / "g", lm=lm)
    assert loaded.kind == recipe.name and loaded.layer == recipe.deepest
    assert loaded.card["card_version"] == 2 and loaded.card["kind"]["name"] == recipe.name
    # early-exit scores on prompts == scores of the same features read in float32 (batched differently), and
    # close to the bank's (kept in float16)
    texts = [r["text"] for r in bank.records]
    res = loaded.score(texts, batch_size=5)
    ids = [format_prompt(lm.tokenizer, t, True).ids for t in texts]
    fresh = extract_features(lm, ids, loaded.feature_spec(), batch_size=16)
    np.testing.assert_allclose(res.probability, loaded.score_states(fresh), rtol=0, atol=1e-5)
    np.testing.assert_allclose(loaded.decision_features(bank.features), loaded.decision_features(fresh),
                               rtol=2e-2, atol=2e-2)
    if not recipe.legacy:
        with pytest.raises(IhsError, match="more than one layer"):
            loaded.score_states(np.zeros((2, lm.hidden_size)))
    client = TestClient(create_app(loaded, ServeLimits(batch_window_ms=1)))
    with client:
        r = client.post("/v1/score", json={"prompts": texts[:3]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["kind"] == recipe.name
        np.testing.assert_allclose([x["probability"] for x in body["results"]], res.probability[:3], atol=1e-5)
        assert client.get("/healthz").json()["kind"] == recipe.name


def test_load_and_server_refuse_a_mismatched_model(lm, bank, tmp_path):
    recipe = parse_kind("mean@1+2/logreg+refusal", lm.num_layers)
    rows = bank_rows(bank.records)
    y = np.array([r["label"] == "malicious" for r in bank.records])[rows].astype(int)
    spec = bank.spec
    guard = Guard(layer=2, threshold=0.5, weight=np.zeros(0), bias=0.0, model=dict(bank.model), recipe=recipe,
                  head=fit_head("logreg", recipe.design(bank.features, rows), y, folds=2),
                  spec=FeatureSpec(pool_start=spec.pool_start, refusal_ids=spec.refusal_ids,
                                   compliance_ids=spec.compliance_ids))
    guard.save(tmp_path / "g")
    other = make_tiny("llama", seed=5, num_layers=4)  # same shapes, other weights
    with pytest.raises(IhsError, match="fitted on model"):
        Guard.load(tmp_path / "g", lm=other)
    shallow = make_tiny("qwen2", num_layers=1)
    with pytest.raises(IhsError):
        Guard.load(tmp_path / "g", lm=shallow)
    # the same weights behind another chat template: the pooled positions would shift, so it is refused
    tok = make_tokenizer()
    tok.chat_template = "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML
    retemplated = from_modules(lm.model, tok, name=lm.name)
    assert retemplated.fingerprint() == lm.fingerprint()
    with pytest.raises(IhsError, match="pools from position"):
        Guard.load(tmp_path / "g", lm=retemplated)
    loaded = Guard.load(tmp_path / "g")
    loaded.lm = other  # set by hand, past attach: the server checks again
    with pytest.raises(IhsError, match="fitted on model"):
        create_app(loaded)
    # a card naming a kind whose weights do not fit is refused on load
    card = (tmp_path / "g" / "guard.json").read_text().replace('"pooling": "mean"', '"pooling": "max"')
    (tmp_path / "g" / "guard.json").write_text(card.replace('"layers": [\n      1,\n      2\n    ]',
                                                            '"layers": [\n      2\n    ]'))
    with pytest.raises(IhsError):
        Guard.load(tmp_path / "g")


def test_bank_round_trip_and_legacy_guards_still_load(lm, bank, tmp_path):
    bank.save(tmp_path / "bank")
    again = FeatureBank.load(tmp_path / "bank")
    assert again.features.layers == bank.features.layers and len(again) == len(bank)
    for k, v in bank.features.arrays.items():
        np.testing.assert_array_equal(again.features.arrays[k], v)
    assert again.features.arrays["mean"].dtype == np.float16 and again.spec == bank.spec
    # a version-1 card (today's guards) loads as the last-token kind
    X = bank.features.take("last", [2])[:, 0]
    y = [r["label"] for r in bank.records]
    g = Guard.fit_states(X, y, layer=2, model=lm)
    g.save(tmp_path / "old")
    import json

    card = json.loads((tmp_path / "old" / "guard.json").read_text())
    for k in ("kind", "features", "cost"):
        card.pop(k)
    card["card_version"] = 1
    (tmp_path / "old" / "guard.json").write_text(json.dumps(card))
    old = Guard.load(tmp_path / "old", lm=lm)
    assert old.kind == "last@2/logreg" and old.recipe.legacy
    np.testing.assert_allclose(old.score_states(X), g.score_states(X))
    card["card_version"] = 99
    (tmp_path / "old" / "guard.json").write_text(json.dumps(card))
    with pytest.raises(IhsError, match="newer"):
        Guard.load(tmp_path / "old")


def test_a_state_beyond_float16_widens_the_bank_array(lm):
    """gemma-3's residual stream exceeds float16's range at a few positions: the bank keeps those features in
    float32 instead of storing inf."""
    import copy

    big = copy.deepcopy(lm)
    emb = big.model.get_input_embeddings()
    with torch.no_grad():
        emb.weight[5] = 1e6  # one token whose embedding (layer 0) is far beyond float16's maximum
    ids = [[1, 5, 7, 8], [1, 7, 8, 9, 10]]
    spec = FeatureSpec(pooled={"last": [0, 1], "max": [0], "mean": [1]}, pool_start=1)
    feats = extract_features(big, ids, spec, dtype=np.float16, batch_size=1)
    assert feats.arrays["max"].dtype == np.float32 and np.isfinite(feats.arrays["max"]).all()
    assert feats.arrays["max"][0, 0].max() == pytest.approx(1e6, rel=1e-3)
    assert feats.arrays["last"].dtype == np.float16  # no state of the last token overflows
    want = extract_features(big, ids, spec, dtype=np.float32, batch_size=1)
    np.testing.assert_allclose(feats.arrays["max"], want.arrays["max"], rtol=1e-6)
