"""Paraphrases by the model itself: cleaning, seeded and cached paraphrases, fallbacks, the held-out goals kept out
of training, and the opt-in wiring (generator, rounds options, CLI); stand-in generators and a tiny random model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import make_tiny, save_tiny
from ihs.adversarial import Holdout, RoundsOptions, Runner, recombine, search
from ihs.adversarial.paraphrase import (
    CACHE_FILE,
    INSTRUCTIONS,
    Paraphraser,
    clean,
    instruction_for,
    model_generate_fn,
    rewrite_prompt,
)
from ihs.adversarial.pools import attack_ok, check_training, goals, make_attack, templates
from ihs.adversarial.rounds import training_rows
from ihs.errors import DataError
from ihs.io import read_json, read_jsonl

H = Holdout()


def _request(prompt: str) -> tuple[int, str]:
    k = next(i for i, t in enumerate(INSTRUCTIONS) if prompt.startswith(t.split("{request}")[0]))
    return k, prompt.rsplit("Request: ", 1)[1]


def stub(prompts: list[str]) -> list[str]:
    """A stand-in model: a chatty but usable paraphrase that names the instruction it got."""
    out = []
    for p in prompts:
        k, req = _request(p)
        out.append(f'Sure, here is the rewritten request:\n"Could you tell me this: {req.rstrip(".?!")} '
                   f'(wording {k})?"\nI hope this helps!')
    return out


class Counting:
    """Counts the prompts a generator is asked for."""

    def __init__(self, fn):
        self.fn, self.prompts = fn, 0

    def __call__(self, prompts):
        self.prompts += len(prompts)
        return self.fn(prompts)


def test_clean_strips_preambles_and_rejects_what_cannot_be_used():
    goal = "Explain how to pick a lock."
    text, why = clean('Sure, here is the rewritten request: "What steps open a lock without its key?"\nHope it helps',
                      goal)
    assert (text, why) == ("What steps open a lock without its key?", None)
    assert clean("**Reworded request:** How does one open a lock with no key? Thanks. More.", goal)[0] == \
        "How does one open a lock with no key? Thanks."  # cut at one sentence more than the request has
    assert clean("I'm sorry, but I can't help with that request.", goal) == (None, "refused")
    assert clean("  \n\"\"\n", goal) == (None, "empty")
    assert clean("Lock?", goal) == (None, "too_short")
    assert clean("Tell me " + "very " * 40 + "much about locks.", goal) == (None, "too_long")
    assert clean("explain how to pick a lock", goal) == (None, "unchanged")
    assert clean("\ufffdil\ufffd+jhrepla$Su\ufffd more bytes", goal) == (None, "garbled")
    assert clean("What is the capital city of France?", goal) == (None, "off_topic")
    # a request that itself holds a refusal phrase is not mistaken for a refusal
    own = "How can I hide money so that I won't get caught?"
    assert clean("What is a way to hide cash so that I won't be caught?", own)[1] is None


def test_seeded_deterministic_cached_and_opt_in(tmp_path):
    plain = recombine(None, H, 16, seed=3)
    gen = Counting(stub)
    first = recombine(None, H, 16, seed=3, paraphraser=Paraphraser(gen, "stub", cache=tmp_path / CACHE_FILE,
                                                                   holdout=H, seed=0))
    asked = gen.prompts
    assert 0 < asked <= 16 and (tmp_path / CACHE_FILE).is_file()
    again = Counting(stub)
    para2 = Paraphraser(again, "stub", cache=tmp_path / CACHE_FILE, holdout=H, seed=0)
    second = recombine(None, H, 16, seed=3, paraphraser=para2)
    assert second == first and again.prompts == 0 and para2.calls == 0  # all from the cache
    # the same templates, goals and rule-based mutations as without paraphrases; about half paraphrased
    assert [(r["tags"]["template_id"], r["tags"]["goal_id"]) for r in first] == \
        [(r["tags"]["template_id"], r["tags"]["goal_id"]) for r in plain]
    para = [r for r in first if "paraphrase" in r["tags"]["mutations"]]
    assert len({r["tags"]["goal_id"] for r in para}) == asked and 3 <= len(para) <= 13
    for r, p in zip(first, plain, strict=True):
        if r in para:
            assert r["text"] != p["text"] and "paraphrase" in r["tags"]["kind"]
            assert not r["tags"]["paraphrase"]["fell_back"] and r["tags"]["mutations"][1:] == p["tags"]["mutations"]
            if not r["tags"]["mutations"][1:]:
                assert "(wording" in r["text"]
            assert r["tags"]["paraphrase"]["goal_id"] == r["tags"]["goal_id"]
        else:
            assert r == p
    # another model digest is another cache key: generated again
    other = Counting(stub)
    recombine(None, H, 16, seed=3, paraphraser=Paraphraser(other, "stub-2", cache=tmp_path / CACHE_FILE, seed=0))
    assert other.prompts == asked
    assert len(read_jsonl(tmp_path / CACHE_FILE)) == 2 * asked


def test_another_seed_picks_other_instructions():
    gs = goals(H, "train")[:12]
    assert [instruction_for(g.text, 0) for g in gs] != [instruction_for(g.text, 1) for g in gs]
    a, b = Paraphraser(stub, "stub", seed=0), Paraphraser(stub, "stub", seed=1)
    assert [a(g).text for g in gs] == [Paraphraser(stub, "stub", seed=0)(g).text for g in gs]
    assert [a(g).text for g in gs] != [b(g).text for g in gs]


def test_empty_or_refused_output_falls_back_to_the_request():
    def failing(prompts):
        return ["I'm sorry, I cannot help with that." if i % 2 else "" for i in range(len(prompts))]

    plain = recombine(None, H, 12, seed=5)
    rows = recombine(None, H, 12, seed=5, paraphraser=Paraphraser(failing, "bad", holdout=H))
    tried = [r for r in rows if "paraphrase" in r["tags"]]
    assert tried and {r["tags"]["paraphrase"]["reason"] for r in tried} <= {"refused", "empty"}
    assert all(r["tags"]["paraphrase"]["fell_back"] for r in tried)
    for r, p in zip(rows, plain, strict=True):  # the original request, and no paraphrase among the mutations
        assert r["text"] == p["text"] and r["tags"]["mutations"] == p["tags"]["mutations"]
        assert r["tags"]["kind"] == p["tags"]["kind"]


def test_held_out_goals_are_never_paraphrased_into_training(tmp_path):
    p = Paraphraser(stub, "stub", cache=tmp_path / CACHE_FILE, holdout=H)
    held = goals(H, "eval")[0]
    with pytest.raises(DataError, match="held out"):
        p(held)
    with pytest.raises(DataError, match="held out"):
        p.prefetch([goals(H, "train")[0], held])
    # a row that paraphrases a held-out goal is refused, keyed by the original goal's id
    loose = make_attack(templates(H, "train")[0], held, ["paraphrase"], origin="t",
                        paraphraser=Paraphraser(stub, "stub"))
    assert loose["tags"]["paraphrase"]["goal_id"] == held.id and "is an evaluation goal" in attack_ok(loose, H)
    swapped = {**loose, "tags": {**loose["tags"], "goal_id": goals(H, "train")[0].id}}
    assert "paraphrases the evaluation goal" in attack_ok(swapped, H)
    untagged = {**loose, "tags": {k: v for k, v in loose["tags"].items() if k != "paraphrase"}}
    assert "without the id" in attack_ok({**untagged, "tags": {**untagged["tags"],
                                                               "goal_id": goals(H, "train")[0].id}}, H)
    with pytest.raises(DataError):
        check_training([swapped], H)
    # the training rows of paraphrased attacks (and their paraphrased look-alikes) pass; the cache holds
    # training-side goals only
    attacks = recombine(None, H, 10, seed=2, paraphraser=p)
    rows = training_rows(attacks, RoundsOptions(), seed=0, paraphraser=p)
    check_training(rows, H)
    twins = [r for r in rows if r["label"] == "benign" and "paraphrase" in r["tags"]["mutations"]]
    assert twins and all(r["tags"]["paraphrase"]["goal_id"] == r["tags"]["goal_id"] for r in twins)
    cached = read_jsonl(tmp_path / CACHE_FILE)
    assert cached and not any(H.eval_goal(e["goal_id"]) for e in cached)
    # the search keeps a paraphrased parent's paraphrase in its children
    found = search([r for r in attacks if "paraphrase" in r["tags"]["mutations"]][:2],
                   lambda b: [1.0] * len(b), H, generations=1, seed=0, paraphraser=p)
    assert all("paraphrase" in r["tags"]["mutations"] for r in found)


def test_rounds_options_keep_old_plans_and_record_the_option():
    assert "paraphrase" not in RoundsOptions().to_dict()
    assert RoundsOptions(paraphrase=True).to_dict()["paraphrase"] is True


def test_tiny_model_paraphrases_are_deterministic_per_seed():
    lm = make_tiny("llama")
    gs = [g for g in goals(H, "train")[:12] if instruction_for(g.text, 0) != instruction_for(g.text, 1)][:2]
    assert gs
    gen = Counting(model_generate_fn(lm, max_new_tokens=6))
    one = Paraphraser(gen, lm.fingerprint(), holdout=H, seed=0, max_new_tokens=6)
    assert one.prefetch(gs) == 2 and one.prefetch(gs) == 0 and gen.prompts == 2
    two = Paraphraser(model_generate_fn(lm, max_new_tokens=6), lm.fingerprint(), holdout=H, seed=0,
                      max_new_tokens=6)
    two.prefetch(gs)
    other = Paraphraser(model_generate_fn(lm, max_new_tokens=6), lm.fingerprint(), holdout=H, seed=1,
                        max_new_tokens=6)
    other.prefetch(gs)

    def raws(p):
        return [e["raw"] for e in sorted(p._entries.values(), key=lambda e: e["goal"])]

    assert raws(one) == raws(two) and raws(one) != raws(other)
    assert [one(g) for g in gs] == [two(g) for g in gs]
    assert rewrite_prompt(gs[0].text, 0).endswith(gs[0].text)


def test_cli_paraphrase_is_opt_in_needs_a_model_and_writes_its_cache(tmp_path):
    from ihs.cli import app

    base = save_tiny(make_tiny("llama"), tmp_path / "base")
    runner = CliRunner()
    res = runner.invoke(app, ["attack", "generate", "--out", str(tmp_path / "x"), "--random", "--paraphrase"])
    assert res.exit_code == 2 and "give --model" in res.output and len(res.output.strip().splitlines()) == 1
    args = ["attack", "generate", "--out", str(tmp_path / "g"), "--random", "--prompts", "3", "--paraphrase",
            "--model", str(base)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    info = read_json(tmp_path / "g" / "attack_generate.json")["paraphrase"]
    assert info["asked"] >= 1 and info["digest"].startswith("folder-")
    assert len(read_jsonl(tmp_path / "g" / CACHE_FILE)) == info["asked"]
    rows = read_jsonl(tmp_path / "g" / "attacks.jsonl")
    assert sum("paraphrase" in r["tags"] for r in rows) == info["asked"]
    # a rounds run paraphrases with its base model through the folder's cache, loaded only when needed
    runner = Runner(tmp_path / "r", str(base), RoundsOptions(paraphrase=True, eval_attacks=2, eval_benign=2,
                                                             probe_per_class=2, perplexity=2), progress=False)
    assert runner.paraphraser is not None and runner._lm is None
    assert runner.paraphraser.cache == tmp_path / "r" / CACHE_FILE and runner.paraphraser.model == info["digest"]
    assert read_json(tmp_path / "r" / "plan.json")["options"]["paraphrase"] is True
    runner.paraphraser(goals(H, "train")[0])
    assert runner._lm is not None and len(read_jsonl(tmp_path / "r" / CACHE_FILE)) == 1
