#!/usr/bin/env bash
# The numbers in docs/EXPLAIN.md: ihs explain on SmolLM2-135M-Instruct (CPU, one job at a time, niced).
# Usage: bash scripts/make_explain_results.sh [OUT]   (default OUT=runs/explain)
# Each run prints the load average before it starts; the host is shared (2 cores), so speeds are lower bounds.
set -euo pipefail
OUT=${1:-runs/explain}
MODEL=${MODEL:-smollm2-135m-instruct}
IHS=".venv/bin/ihs"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
DATA=(--data normal=builtin:normal --data malicious=builtin:malicious --data contrast=builtin:contrast
      --data wrapped=builtin:wrapped --data reformulated=builtin:reformulated)
mkdir -p "$OUT"
run() {  # run NAME ARGS...: one ihs explain job, its load average and wall time in OUT/NAME.log
  local name=$1; shift
  echo "== $name  load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/$name.log"
  local t0; t0=$(date +%s)
  nice -n 10 "$IHS" explain --model "$MODEL" "${DATA[@]}" "$@" --no-progress --out "$OUT/$name" 2>&1 \
    | grep --line-buffered -v "Loading weights" | tee -a "$OUT/$name.log"
  echo "== $name  wall $(( $(date +%s) - t0 )) s, load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/$name.log"
}
# Small samples: the host is shared and loaded (load average 7-12 on 2 cores), so 2 prompts per class of five
# classes are explained (jailbreak wrappers are covered by builtin:wrapped: benign requests in jailbreak wrappers).
CLASSES=normal,malicious,contrast,wrapped,reformulated
# 1. the probe at the middle layer (15 of 30), integrated gradients, 32 steps, faithfulness against random (3
#    orders) and bag-of-words orders, direction cosines at layers 0,5,...,30 with 5 controls per concept and kind.
run probe-ig --target probe --method ig --steps 32 --classes $CLASSES --limit 2 --train-limit 32 \
    --random-orders 3 --cosine-layers 0:L:5 --controls 5
# 2. the same prompts and probe with gradient x input (faithfulness only).
run probe-gxi --target probe --method gxi --classes $CLASSES --limit 2 --train-limit 32 --random-orders 3 --no-cosines
# 3. the worked examples: heat maps of the first wrapped (benign request in a jailbreak-style wrapper) and the
#    first two reformulated (harmful request in another tense) prompts, and one contrast prompt, as a small page.
.venv/bin/python - "$OUT/probe-ig/explain.json" docs/figures/explain_examples.html <<'PY'
import html, json, sys
from ihs.plots.explain import CSS, heatmap_block
data = json.load(open(sys.argv[1]))
picked = [it for it in data["items"] if it["label"] in ("wrapped", "reformulated", "contrast")]
body = "".join(f"<h2>{html.escape(it['label'])}: {html.escape(str(it['tags'].get('wrapper') or it['tags'].get('reformulation') or it['tags'].get('trigger')))}</h2>"
               + heatmap_block(it) for it in picked)
cmd = html.escape(data.get("command", ""))
open(sys.argv[2], "w").write(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>ihs explain: worked examples</title>'
                             f"<style>{CSS}</style></head><body><p><code>{cmd}</code></p>{body}</body></html>")
PY
# 4. the refusal margin (the whole model runs), integrated gradients, 32 steps, 2 prompts per class.
run refusal-ig --target refusal --method ig --steps 32 --classes $CLASSES --limit 2 --train-limit 32 \
    --random-orders 3 --no-cosines
