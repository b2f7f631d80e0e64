#!/usr/bin/env bash
# Peak resident memory of `ihs extract` at two dataset sizes (200 and ~2,000 prompts).
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
run small --data normal=$P/normal_prompt.csv --data malicious=$P/malicious_prompt.csv --limit 100
run large --data normal=$P/normal_prompt.csv --data malicious=$P/malicious_prompt.csv \
          --data normal2=builtin:normal --data malicious2=builtin:malicious --data contrast=builtin:contrast
