"""`ihs bench`: the agreement checks can fail, the ratios are computed from what was timed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import CORPUS, make_tiny, save_tiny
from ihs import bench
from ihs.bench import _padding_share, bench_extract, bench_generate, matmul_ceiling_gflops
from ihs.cli import app

TEXTS = [s for line in CORPUS for s in line.split(". ") if s][:12]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny("llama", seed=3)


def test_ceiling_is_positive_and_dtype_specific():
    assert matmul_ceiling_gflops(torch.float32, seconds=0.05, sizes=(64,)) > 0
    assert matmul_ceiling_gflops(torch.bfloat16, seconds=0.05, sizes=(64,)) > 0


def test_padding_share():
    assert _padding_share({}) is None
    # 10 prompts of which 4 tokens each are the cached prefix: 40 real suffix tokens of 50 run
    assert _padding_share({"tokens": 80, "prompts": 10, "shared_prefix_tokens": 4, "tokens_padded": 50}) == 0.2


def test_bench_extract_agrees_with_the_reference(tiny, monkeypatch):
    monkeypatch.setattr(bench, "matmul_ceiling_gflops", lambda dtype: 10.0)  # fast and known
    result = bench_extract(tiny, TEXTS, reference_prompts=4, rounds=2)
    assert result["top1_lens_mismatches"] == 0
    assert result["top1_lens_compared"] == 4 * (tiny.num_layers + 1)
    assert result["max_state_diff_vs_reference"] < 1e-4
    assert result["fraction_of_ceiling"] == pytest.approx(result["gflops"] / 10.0, abs=0.006)  # gflops is rounded to 0.1
    assert result["speedup"] == pytest.approx(result["ihs_prompts_per_s"] / result["reference_prompts_per_s"], rel=1e-2)
    assert 0 <= result["padding_share"] < 1
    for key in ("ihs_prompts_per_s", "reference_prompts_per_s", "speedup", "gflops", "ceiling_gflops",
                "fraction_of_ceiling", "peak_rss_mb"):
        assert result[key] > 0, key


def test_bench_extract_counts_a_planted_lens_disagreement(tiny, monkeypatch):
    real = bench.reference_lens_top1

    def off_by_one(lm, ids, k=5):
        top, last = real(lm, ids, k)
        top = top.copy()
        top[1, 0] = (top[1, 0] + 1) % len(lm.tokenizer)  # one layer's top-1 token changed
        return top, last

    monkeypatch.setattr(bench, "reference_lens_top1", off_by_one)
    monkeypatch.setattr(bench, "matmul_ceiling_gflops", lambda dtype: 10.0)
    result = bench_extract(tiny, TEXTS, reference_prompts=3, rounds=1)
    assert result["top1_lens_mismatches"] == 3


def test_bench_generate_pools_the_reference_and_compares_answers(tiny, monkeypatch):
    result = bench_generate(tiny, TEXTS[:6], reference_prompts=4, max_new_tokens=5, batch_size=4, rounds=2)
    assert result["same_answer_share"] == 1.0  # float32: batched greedy = one by one
    assert result["speedup"] == pytest.approx(result["ihs_prompts_per_s"] / result["reference_prompts_per_s"],
                                              rel=1e-2)

    monkeypatch.setattr(bench, "_reference_generate", lambda lm, ids, n, stops: [0] * n)
    planted = bench_generate(tiny, TEXTS[:6], reference_prompts=4, max_new_tokens=5, batch_size=4, rounds=2)
    assert planted["same_answer_share"] < 1.0


def test_bench_cli_json_on_a_local_model(tmp_path, tiny):
    folder = save_tiny(tiny, tmp_path / "tiny")
    data = tmp_path / "p.csv"
    data.write_text("prompt\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    out = CliRunner().invoke(app, ["bench", "--model", str(folder), "--data", f"normal={data}", "--prompts", "6",
                                   "--reference-prompts", "2", "--rounds", "1", "--generate-prompts", "2",
                                   "--reference-generations", "1", "--max-new-tokens", "3", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output[out.output.index("{"):])
    assert {"ihs_prompts_per_s", "reference_prompts_per_s", "speedup", "gflops", "ceiling_gflops",
            "fraction_of_ceiling", "peak_rss_mb", "generation"} <= set(result)
    assert result["prompts"] == 6 and result["top1_lens_mismatches"] == 0
    assert np.isfinite(result["generation"]["speedup"])


def test_bench_cli_rejects_an_unknown_model():
    out = CliRunner().invoke(app, ["bench", "--model", "no-such-model-xyz", "--prompts", "2", "--json"])
    assert out.exit_code != 0
