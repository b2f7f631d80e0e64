#!/usr/bin/env bash
# The tables of docs/PERFORMANCE.md: `ihs bench` for the three zoo models in float32 and bfloat16,
# peak memory at two dataset sizes, and what bfloat16 changes in probe accuracy.
# Usage (repo root, ../shared/data/paper present): benchmarks/performance.sh [bench|ablation|memory|bf16-probes|all]
# Results land in benchmarks/results/. Run on a quiet machine: rates are best-of-5 interleaved rounds.
set -euo pipefail
P=../shared/data/paper
R=benchmarks/results
mkdir -p "$R"
PAPER=(--data normal=$P/normal_prompt.csv --data malicious=$P/malicious_prompt.csv)
what=${1:-all}

bench() {  # model short dtype prompts reference_prompts generate_prompts reference_generations
  .venv/bin/ihs bench --model "$1" --dtype "$3" "${PAPER[@]}" --prompts "$4" --reference-prompts "$5" --rounds 5 \
    --generate-prompts "$6" --reference-generations "$7" --json > "$R/bench_$2_$3.json"
  echo "bench $2 $3 -> $R/bench_$2_$3.json"
}

if [[ $what == bench || $what == all ]]; then
  for dtype in float32 bfloat16; do
    bench smollm2-135m-instruct smollm2 $dtype 200 40 48 12
    bench qwen2.5-coder-0.5b-instruct qwen $dtype 100 20 24 6
    bench gemma-3-270m gemma $dtype 100 20 24 6
  done
fi

if [[ $what == ablation || $what == all ]]; then
  # what the batch cut and the tiled lens are each worth (SmolLM2: chat prefix; Gemma: 262k vocabulary)
  .venv/bin/python benchmarks/extract_ablation.py --model smollm2-135m-instruct --prompts 200 \
    --json "$R/extract_ablation_smollm2.json" > /dev/null
  .venv/bin/python benchmarks/extract_ablation.py --model gemma-3-270m --prompts 100 \
    --json "$R/extract_ablation_gemma.json" > /dev/null
  echo "ablation -> $R/extract_ablation_{smollm2,gemma}.json"
fi

if [[ $what == memory || $what == all ]]; then
  benchmarks/memory.sh smollm2-135m-instruct | tee "$R/memory_smollm2.txt"
fi

if [[ $what == bf16-probes || $what == all ]]; then
  # the built-in normal/malicious sets through SmolLM2 in both dtypes, then the same probes on each
  for dtype in float32 bfloat16; do
    .venv/bin/ihs extract --model smollm2-135m-instruct --dtype $dtype --data normal=builtin:normal \
      --data malicious=builtin:malicious --out runs/perf-smollm2-$dtype --overwrite > /dev/null
  done
  .venv/bin/ihs probe runs/perf-smollm2-float32 runs/perf-smollm2-bfloat16 --names float32,bfloat16 \
    --classifiers svm,logreg --no-bow --no-control --out runs/perf-bf16-probes > /dev/null
  cp runs/perf-bf16-probes/probe.json "$R/probes_bf16_vs_f32.json"
  echo "probes -> $R/probes_bf16_vs_f32.json"
fi
