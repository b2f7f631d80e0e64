#!/usr/bin/env bash
# Peak resident memory of `ihs extract` at three dataset sizes (200, ~1,000 and ~2,400 prompts).
# The store streams to shards, so peak memory should not grow with the number of prompts.
# Usage: benchmarks/memory.sh [MODEL]   (from the repo root; needs ../shared/data/paper)
set -euo pipefail
MODEL=${1:-smollm2-135m-instruct}
P=../shared/data/paper
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
run() {  # $1 label, rest: data args
  local label=$1; shift
  /usr/bin/time -f "%M" -o "$OUT/rss" .venv/bin/ihs extract --model "$MODEL" "$@" --out "$OUT/$label" >/dev/null 2>"$OUT/log" \
    || { cat "$OUT/log"; exit 1; }
  local n
  n=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['n_prompts'])" "$OUT/$label/manifest.json")
  echo "$label prompts=$n peak_rss_mb=$(( $(cat "$OUT/rss") / 1024 ))"
}
# the same five sets in both runs (the first 40 of each class, then all of them), so prompt lengths
# and batch shapes are alike and only the number of prompts changes
SETS=(--data normal=$P/normal_prompt.csv --data malicious=$P/malicious_prompt.csv
      --data normal2=builtin:normal --data malicious2=builtin:malicious --data contrast=builtin:contrast)
# One padded-token budget for all three (the default comes from free memory and is filled only by
# the longest prompts, which the larger sets have): activations are then bounded alike, and what is
# left to differ is whatever grows with the number of prompts.
BUDGET=(--max-batch-tokens 4096)
run small "${SETS[@]}" "${BUDGET[@]}" --limit 40
run medium "${SETS[@]}" "${BUDGET[@]}" --limit 200
run large "${SETS[@]}" "${BUDGET[@]}"
# the large set again with every prompt cut to 68 tokens (the longest prompt of the smaller runs):
# separates "more prompts" from "longer prompts" (the large set alone has prompts up to 224 tokens)
run large-cut68 "${SETS[@]}" "${BUDGET[@]}" --max-length 68
