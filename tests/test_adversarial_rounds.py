"""Adversarial rounds on a tiny random model: they run, resume after an interruption, keep held-out data out of
training, give the control arm as many attacks as the targeted one, and refuse bad input in one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import ihs.adversarial.rounds as rounds_mod
from conftest import make_tiny, save_tiny
from ihs.adversarial import Budget, MeasureOptions, RoundsOptions, Runner, summary
from ihs.adversarial.pools import attack_ok
from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl
from ihs.workflows.attack import AttackResult, summarise

OPTIONS = RoundsOptions(rounds=2, budget=Budget(prompts=4), max_train_attacks=2, anchors=2, steps=1, batch_size=2,
                        max_length=64, eval_attacks=4, eval_benign=2, probe_per_class=4, perplexity=2,
                        measure=MeasureOptions(max_new_tokens=4))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny(make_tiny("llama"), tmp_path_factory.mktemp("adv") / "base")


@pytest.fixture(scope="module")
def interrupted_run(base, tmp_path_factory):
    """A targeted run killed during round 2's evaluation, then resumed; returns (folder, calls)."""
    out = tmp_path_factory.mktemp("adv") / "run"
    real_evaluate = rounds_mod.evaluate
    import ihs.align

    real_train = ihs.align.train
    calls = {"evaluate": 0, "train": 0}

    def crashing(*args, **kwargs):
        calls["evaluate"] += 1
        if calls["evaluate"] == 3:  # round 0, round 1, then round 2: interrupted
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    def counting(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(rounds_mod, "evaluate", crashing)
    mp.setattr(ihs.align, "train", counting)
    try:
        with pytest.raises(KeyboardInterrupt):
            Runner(out, str(base), OPTIONS, progress=False).run()
        assert (out / "targeted" / "round-1" / "round.json").is_file()
        assert not (out / "targeted" / "round-2" / "round.json").is_file()
        stamps = {p: p.stat().st_mtime_ns for p in (out / "targeted" / "round-1").glob("*.json*")}
        stamps[out / "round-0" / "eval.json"] = (out / "round-0" / "eval.json").stat().st_mtime_ns
        trained_before = calls["train"]
        Runner(out, str(base), OPTIONS, progress=False).run()
        calls["train_on_resume"] = calls["train"] - trained_before
        calls["stamps_kept"] = all(p.stat().st_mtime_ns == t for p, t in stamps.items())
        Runner(out, str(base), OPTIONS, arm="random", progress=False).run()
    finally:
        mp.undo()
    return out, calls


def test_rounds_resume_after_an_interruption(interrupted_run):
    out, calls = interrupted_run
    assert calls["stamps_kept"]  # round 0 and round 1 were read back, not redone
    assert calls["train_on_resume"] == 0  # round 2 had finished training: only its evaluation ran again
    for k in (1, 2):
        done = read_json(out / "targeted" / f"round-{k}" / "round.json")
        assert done["round"] == k and set(done["seconds"]) == {"attack", "train", "eval", "total"}
        assert (out / "targeted" / f"round-{k}" / "eval.json").is_file()
    assert read_json(out / "targeted" / "round-2" / "round.json")["trained_from"] == \
        read_json(out / "targeted" / "round-1" / "round.json")["model"]


def test_training_data_never_holds_held_out_data_and_the_control_matches_in_size(interrupted_run):
    out, _ = interrupted_run
    eval_set = read_json(out / "eval_set.json")
    held_ids = {r["id"] for key in ("attacks", "contrast", "wrapped") for r in eval_set[key]}
    for k in (1, 2):
        targeted = read_jsonl(out / "targeted" / f"round-{k}" / "data.jsonl")
        control = read_jsonl(out / "random" / f"round-{k}" / "data.jsonl")
        assert sum(r["label"] == "jailbreak" for r in targeted) == sum(r["label"] == "jailbreak" for r in control)
        for row in targeted + control:
            assert attack_ok(row, OPTIONS.holdout) is None and row["id"] not in held_ids
        trained = read_jsonl(out / "targeted" / f"round-{k}" / "train" / "data" / "sft.jsonl")
        assert not {r["id"] for r in trained} & held_ids


def test_summary_result_and_markdown(interrupted_run):
    out, _ = interrupted_run
    s = summary(out)
    assert [r["round"] for r in s["arms"]["targeted"]] == [1, 2] and len(s["arms"]["random"]) == 2
    result = summarise(out, command="ihs attack rounds")
    rows = result.numbers()["rows"]
    assert [(r["arm"], r["round"]) for r in rows] == [("base", 0), ("targeted", 1), ("targeted", 2),
                                                      ("random", 1), ("random", 2)]
    assert all(0.0 <= r["asr"] <= 1.0 and r["perplexity"] > 0 and 0.0 <= r["bow_auroc"] <= 1.0 for r in rows)
    result.save(out / "summary")
    assert AttackResult.load(out / "summary").numbers() == result.numbers()
    assert (out / "summary" / "attack.md").read_text().count("\n") == 2 + len(rows)
    assert (out / "summary" / "attack_rounds.png").stat().st_size > 10_000


def test_a_folder_refuses_another_run_and_bad_cli_input_is_one_line(interrupted_run, base, tmp_path):
    from ihs.cli import app

    out, _ = interrupted_run
    with pytest.raises(IhsError, match="holds another adversarial run"):
        Runner(out, str(base), RoundsOptions(steps=3), progress=False)
    with pytest.raises(IhsError, match="unknown arm"):
        Runner(tmp_path / "x", str(base), OPTIONS, arm="both")
    runner = CliRunner()
    for args, message in ((["attack", "rounds", "--model", str(base), "--out", str(tmp_path / "y"), "--arm", "both"],
                           "unknown --arm"),
                          (["attack", "generate", "--out", str(tmp_path / "g"), "--scan", str(tmp_path / "none.json")],
                           "not found"),
                          (["attack", "generate", "--out", str(tmp_path / "g2"), "--families", "nope"],
                           "unknown jailbreak family")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_generate_cli_writes_seeded_attacks(tmp_path):
    from ihs.cli import app

    runner = CliRunner()
    for name in ("a", "b"):
        res = runner.invoke(app, ["attack", "generate", "--out", str(tmp_path / name), "--random", "--prompts", "5"])
        assert res.exit_code == 0, res.output
    assert read_jsonl(tmp_path / "a" / "attacks.jsonl") == read_jsonl(tmp_path / "b" / "attacks.jsonl")


def test_defenses_on_the_same_held_out_prompts(interrupted_run):
    from ihs.workflows.attack import run_defenses

    out, _ = interrupted_run
    result = run_defenses(out, layers="2", alpha=0.5, progress=False)
    v = result["variants"]
    assert set(v) == {"undefended", "steer_if_flagged", "refuse_when_flagged"}
    n = len(read_json(out / "eval_set.json")["attacks"])
    assert all(x["asr"]["n"] == n for x in v.values())
    # refusing flagged prompts can only lower ASR and raise over-refusal
    assert v["refuse_when_flagged"]["asr"]["k"] == v["undefended"]["asr"]["k"] - sum(
        a["flagged"] and not a["refused"] for a in result["answers"]["undefended"] if a["label"] == "jailbreak")
    assert summary(out)["base"]["defense"]["alpha"] == 0.5
    with pytest.raises(IhsError, match="has not finished"):
        run_defenses(out, layers="2", alpha=0.5, round_=7, progress=False)


def test_the_run_step_summarises_a_rounds_folder(interrupted_run, tmp_path):
    from ihs.workflows import steps
    from ihs.workflows.attack import AttackStepOptions
    from ihs.workflows.base import Skip

    out, _ = interrupted_run
    step = next(s for s in steps() if s.name == "attack")
    assert step.default is False

    class Ctx:
        def __init__(self, run_dir):
            self.run_dir = run_dir

        def options(self, name):
            return AttackStepOptions(run_dir=self.run_dir)

    assert step.key(Ctx(str(out)))["rounds"]  # the finished rounds are part of the cache key
    step.run(Ctx(str(out)), tmp_path / "step")
    assert AttackResult.load(tmp_path / "step").numbers() == summarise(out).numbers()
    with pytest.raises(Skip, match="run_dir is not set"):
        step.run(Ctx(None), tmp_path / "none")


def test_zero_rounds_measure_the_base_model_only(base, tmp_path):
    out = tmp_path / "r0"
    assert Runner(out, str(base), OPTIONS, progress=False).run(0) == []
    assert (out / "round-0" / "eval.json").is_file() and not (out / "targeted" / "round-1").exists()
    with pytest.raises(IhsError, match="rounds must be 0 or more"):
        Runner(out, str(base), OPTIONS, progress=False).run(-1)
    with pytest.raises(IhsError, match="rounds must be 0 or more"):
        RoundsOptions(rounds=-1)
    assert RoundsOptions(rounds=0).rounds == 0  # the CLI's --rounds 0
