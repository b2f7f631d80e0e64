"""Markdown tables for docs/PERFORMANCE.md from the JSON that `benchmarks/performance.sh` wrote.

Usage: .venv/bin/python benchmarks/perf_tables.py [benchmarks/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = [("smollm2", "SmolLM2-135M-Instruct"), ("qwen", "Qwen2.5-Coder-0.5B-Instruct"), ("gemma", "Gemma-3-270M (base)")]


def main(folder: Path) -> None:
    rows, gen_rows = [], []
    for short, title in MODELS:
        for dtype in ("float32", "bfloat16"):
            path = folder / f"bench_{short}_{dtype}.json"
            if not path.exists() or path.stat().st_size == 0:
                continue
            d = json.loads(path.read_text())
            rows.append(
                f"| {title} | {dtype} | {d['prompts']} ({d['mean_tokens']} tok, prefix {d['shared_prefix_tokens']}) "
                f"| {d['ihs_prompts_per_s']:.2f} ({d['ihs_prompts_per_s_median']:.2f}) "
                f"| {d['reference_prompts_per_s']:.3f} (n={d['reference_prompts']}) "
                f"| **{d['speedup']:.1f}x** ({d['speedup_median']:.1f}x) "
                f"| {d['gflops']:.0f} / {d['ceiling_gflops']:.0f} = **{d['fraction_of_ceiling']:.2f}** "
                f"({d['fraction_of_ceiling_median']:.2f}) | {d['padding_share']:.2f} "
                f"| {d['effective_gflops']:.0f} "
                f"| {d['top1_lens_mismatches']}/{d['top1_lens_compared']} | {d['peak_rss_mb']:.0f} |")
            g = d.get("generation")
            if g:
                gen_rows.append(
                    f"| {title} | {dtype} | {g['prompts']} x {g['max_new_tokens']} | {g['ihs_prompts_per_s']:.2f} "
                    f"({g['ihs_new_tokens_per_s']:.0f} tok/s) | {g['reference_prompts_per_s']:.3f} "
                    f"({g['reference_new_tokens_per_s']:.1f} tok/s, n={g['reference_prompts']}) "
                    f"| **{g['speedup']:.1f}x** ({g['speedup_median']:.1f}x) | {g['same_answer_share']:.2f} |")
    print("| model | dtype | prompts (mean tokens, shared prefix) | ihs prompts/s best (median) "
          "| reference prompts/s | speed-up best (median) "
          "| executed GFLOP/s / ceiling = fraction, best / best (paired median) | padding share "
          "| effective GFLOP/s | top-1 lens mismatches | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("| model | dtype | prompts x new tokens | ihs batched prompts/s | reference (one generate per prompt) "
          "| speed-up best (median) | same answers |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(gen_rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/results"))
