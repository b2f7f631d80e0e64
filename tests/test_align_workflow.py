"""``ihs align sft|dpo|track`` end to end on a tiny saved model, bad input, and the rank statistic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ihs.align import build_data
from ihs.align.measures import spearman, spearman_bootstrap
from ihs.cli import app
from ihs.io import read_json
from test_align import few_dpo, few_sft, tiny


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def built():
    return build_data(progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from conftest import save_tiny

    return save_tiny(tiny(), tmp_path_factory.mktemp("wf-base") / "tiny")


FAST = ["--steps", "2", "--save-every", "1", "--batch-size", "4", "--max-length", "64", "--lora-r", "4",
        "--lora-alpha", "8", "--learning-rate", "0.01", "--no-progress"]


@pytest.fixture(scope="module")
def sft_run(base, built, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wf-sft")
    data = _jsonl(folder / "sft.jsonl", [e.to_dict() for e in few_sft(built)])
    out = folder / "run"
    res = CliRunner().invoke(app, ["align", "sft", "--model", str(base), "--out", str(out), "--data", str(data), *FAST])
    assert res.exit_code == 0, res.output
    return out


def test_cli_sft_writes_checkpoints(sft_run):
    steps = sorted(p.name for p in (sft_run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-000000", "step-000001", "step-000002"]
    summary = read_json(sft_run / "align_run.json")
    assert summary["method"] == "sft" and summary["checkpoints"] == [0, 1, 2] and summary["steps"] == 2
    assert summary["peak_rss_mib"] > 0 and summary["command"].startswith("ihs align sft")
    assert (sft_run / "checkpoints" / "step-000002" / "ihs_align.json").is_file()


TRACK_FAST = ["--per-class", "4", "--max-new-tokens", "3", "--perplexity-answers", "2", "--folds", "2",
              "--no-progress"]


@pytest.fixture(scope="module")
def tracked(sft_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wf-track") / "track"
    res = CliRunner().invoke(app, ["align", "track", str(sft_run), "--out", str(out), *TRACK_FAST, "--steps", "0,2"])
    assert res.exit_code == 0, res.output
    return out


def test_cli_track_writes_one_row_per_checkpoint(sft_run, tracked):
    out = tracked
    data = read_json(out / "align_track.json")
    assert [r["step"] for r in data["rows"]] == [0, 2]
    assert data["method"] == "sft" and len(data["evaluation"]["malicious"]) == 4
    row = data["rows"][1]
    assert set(row["seconds_parts"]) == {"load", "extract", "probe", "lens", "generate", "perplexity"}
    assert len(row["weights"]) == 64 and row["weights"] != data["rows"][0]["weights"]
    assert 0 <= row["probe"]["acc_L4"] <= 1 and row["probe"]["layer_L4"] == 1  # L = 4 -> L/4 = 1
    assert set(row["generate"]["refusal"]) == {"normal", "malicious", "contrast", "jailbreak"}
    assert row["perplexity"]["n"] == 2 and row["perplexity"]["perplexity"] > 1
    assert len(row["lens"]["share"]["negative"]["malicious"]) == len(row["lens"]["layers"])
    table = (out / "align_track.md").read_text().strip().splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per checkpoint
    assert data["bow"]["n"] == 8 and 0 <= data["bow"]["accuracy"] <= 1  # the text baseline beside the probe
    assert "bow_accuracy" in table[0]
    for name in ("align_probe.png", "align_lens.png", "align_behaviour.png"):
        assert (out / name).is_file()
    assert (out / "step-000002" / "generate" / "refusal.json").is_file()
    # a second call reuses the rows measured with the same options (no checkpoint measured twice)
    cached = out / "step-000002" / "track_row.json"
    stamp = cached.stat().st_mtime_ns
    res = CliRunner().invoke(app, ["align", "track", str(sft_run), "--out", str(out), *TRACK_FAST, "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert cached.stat().st_mtime_ns == stamp
    again = read_json(out / "align_track.json")
    assert again["rows"][0] == data["rows"][1]
    assert again["peak_rss_mib"] >= data["peak_rss_mib"]  # the measuring call's peak survives a cached re-run
    # the evaluation set is the held-out side of the goal split: none of it was trained on
    trained = {json.loads(line)["prompt"] for line in (sft_run / "data" / "sft.jsonl").read_text().splitlines()}
    from ihs.align.data import evaluation_records

    held = evaluation_records(4)
    assert not trained & {r.text for recs in held.values() for r in recs}


def test_track_reuses_rows_only_for_identical_weights(base, built, sft_run, tracked, tmp_path):
    """Another run of the same base: its step 0 (the base model) is taken from the first run's rows, its
    trained step is measured (other weights), and a folder that is not a tracking output is refused."""
    data = _jsonl(tmp_path / "sft.jsonl", [e.to_dict() for e in few_sft(built)])
    run2 = tmp_path / "run2"
    res = CliRunner().invoke(app, ["align", "sft", "--model", str(base), "--out", str(run2), "--data", str(data),
                                   *FAST[:2], "--save-every", "2", *FAST[4:], "--seed", "7"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "track2"
    res = CliRunner().invoke(app, ["align", "track", str(run2), "--out", str(out), *TRACK_FAST, "--reuse", str(tracked)])
    assert res.exit_code == 0, res.output
    rows = read_json(out / "align_track.json")["rows"]
    first = [read_json(tracked / f"step-{step:06d}" / "track_row.json")["row"] for step in (0, 2)]
    assert [r["step"] for r in rows] == [0, 2]
    assert rows[0]["reused_from"] == str(tracked / "step-000000" / "track_row.json")
    assert rows[0]["probe"] == first[0]["probe"] and rows[0]["checkpoint"].startswith(str(run2))
    assert not (out / "step-000000" / "probe").exists()  # nothing measured for the shared step
    assert "reused_from" not in rows[1] and (out / "step-000002" / "probe").is_dir()
    assert rows[1]["weights"] != first[1]["weights"]  # another seed, other weights: measured, not reused
    line = _error(CliRunner().invoke(app, ["align", "track", str(run2), "--out", str(out), "--reuse",
                                           str(tmp_path / "nowhere")]))
    assert "--reuse" in line


def test_resumed_run_records_every_segment(sft_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    before = read_json(run / "align_run.json")
    data = run / "data" / "sft.jsonl"
    res = CliRunner().invoke(app, ["align", "sft", "--model", before["model"], "--out", str(run), "--data", str(data),
                                   "--steps", "3", *FAST[2:]])
    assert res.exit_code == 0, res.output
    after = read_json(run / "align_run.json")
    assert after["resumed_from"] == 2 and after["steps"] == 3 and after["checkpoints"] == [0, 1, 2, 3]
    assert [(s["from_step"], s["to_step"]) for s in after["segments"]] == [(0, 2), (2, 3)]
    assert after["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in after["segments"]), abs=0.2)
    assert after["wall_seconds"] > before["wall_seconds"]


def _error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(base, built, tmp_path):
    runner = CliRunner()
    no_answer = _jsonl(tmp_path / "q.jsonl", [{"prompt": "How do I bake bread?"}])
    line = _error(runner.invoke(app, ["align", "sft", "--model", str(base), "--out", str(tmp_path / "a"),
                                      "--data", str(no_answer), *FAST]))
    assert "no answer" in line
    no_rejected = _jsonl(tmp_path / "d.jsonl", [{"prompt": "How do I bake bread?", "chosen": "Mix flour."}])
    line = _error(runner.invoke(app, ["align", "dpo", "--model", str(base), "--out", str(tmp_path / "b"),
                                      "--data", str(no_rejected), *FAST]))
    assert "no rejected answer" in line
    from conftest import save_tiny

    bare = save_tiny(tiny(chat=False), tmp_path / "bare")
    data = _jsonl(tmp_path / "s.jsonl", [e.to_dict() for e in few_sft(built)])
    line = _error(runner.invoke(app, ["align", "sft", "--model", str(bare), "--out", str(tmp_path / "c"),
                                      "--data", str(data), "--chat-template", "model", *FAST]))
    assert "no chat template" in line
    line = _error(runner.invoke(app, ["align", "track", str(tmp_path), "--out", str(tmp_path / "t")]))
    assert "not an alignment run" in line
    line = _error(runner.invoke(app, ["align", "sft", "--model", str(base), "--out", str(tmp_path / "e"),
                                      "--association", "joy", *FAST]))
    assert "association" in line


def test_cli_dpo_runs(base, built, tmp_path):
    data = _jsonl(tmp_path / "dpo.jsonl", [p.to_dict() for p in few_dpo(built)])
    res = CliRunner().invoke(app, ["align", "dpo", "--model", str(base), "--out", str(tmp_path / "run"), "--data",
                                   str(data), *FAST[:2], "--save-every", "2", *FAST[4:]])
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "run" / "align_run.json")["checkpoints"] == [0, 2]


def test_text_baseline_finds_a_planted_word_and_not_one_unrelated_to_the_class():
    from types import SimpleNamespace

    from ihs.workflows.align import TrackOptions, text_baseline

    rng = random.Random(0)
    words = ["river", "lamp", "garden", "violin", "paper", "window", "orange", "cloud", "stone", "bread"]

    def records(cue: str) -> dict:
        def text(i: int, on: bool) -> SimpleNamespace:
            return SimpleNamespace(text=" ".join(rng.sample(words, 5) + [str(i)] + (["zorblat"] if on else [])))
        planted = cue == "class"
        return {"normal": [text(i, not planted and i % 2 == 0) for i in range(20)],
                "malicious": [text(i, planted or i % 2 == 0) for i in range(20)]}

    found = text_baseline(records("class"), TrackOptions(folds=5))
    assert found["accuracy"] >= 0.95 and found["n"] == 40
    assert text_baseline(records("alternate"), TrackOptions(folds=5))["ci_low"] < 0.5


def test_spearman_finds_a_planted_order_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    planted = spearman_bootstrap(x, x + 0.1 * rng.normal(size=40), draws=300)
    assert planted["rho"] > 0.9 and planted["ci95"][0] > 0.8 and planted["n"] == 40
    noise = spearman_bootstrap(x, rng.normal(size=40), draws=300)
    assert abs(noise["rho"]) < 0.4 and noise["ci95"][0] < 0 < noise["ci95"][1]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
