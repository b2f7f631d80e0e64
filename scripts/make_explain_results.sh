#!/usr/bin/env bash
# The numbers and figures of docs/EXPLAIN.md: ihs explain on the three zoo models, in small resumable pieces.
#
# Usage: bash scripts/make_explain_results.sh [smollm2|qwen|gemma|tiny[:ig|:cos|:gxi ...]|examples|speed|summary ...]
#        (default: the order below; MODEL:KIND runs only those pieces, e.g. qwen:ig:cos)
# Every piece is one `ihs explain` (or script) run with its own folder under $OUT (default runs/explain-zoo);
# a piece whose result exists is skipped, so an interrupted run resumes where it stopped. RUNNER (default
# "nice -n 10") prefixes every model job: on a shared host give it a job queue (e.g. a slot wrapper), so each
# piece (a few minutes) queues on its own. Each piece's log holds the load average before and after it.
#
# Pieces per model (the probe: logistic regression on the last-token states at the middle layer round(L/2),
# fitted on a seeded sample of 32 normal + 32 malicious prompts that are never explained; --sample draws the
# training prompts first, so every piece of a model fits the same probe):
#   ig-CLASS   integrated gradients (32 Gauss-Legendre steps) of the probe logit for N seeded random prompts of
#              CLASS (malicious, contrast, jailbreak; wrapped too on SmolLM2; at most 160 tokens), with
#              deletion/insertion curves against 3 random orders and the bag-of-words order (8-point curves)
#   gxi-CLASS  the same prompts with gradient x input (one random order: the ig pieces hold three for them)
#   cosines    per-layer cosines (every layer) between the malicious-vs-normal, refusal and concept directions,
#              64 + 64 training prompts, 10 random-word and 10 shuffled-concept controls per concept
# examples: scripts/explain_examples.py (guard verdicts, heat maps, layer-by-layer stories; SmolLM2)
# speed:    ihs explain, IG with 32 steps, batched (up to 8 prompts per group), 8 malicious + 8 normal prompts on
#           SmolLM2, attribution only: prompts/s (explain.json timing) with the load average in its log
# step:     ihs explain with the run step's default options on the run's default data (SmolLM2), timed
# summary:  scripts/explain_summary.py -> benchmarks/results/explain_zoo.{json,md} and the figures in docs/figures
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/explain-zoo}
RUNNER=${RUNNER:-nice -n 10}
IHS=".venv/bin/ihs"
PY=".venv/bin/python"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
DATA=(--data normal=builtin:normal --data malicious=builtin:malicious --data contrast=builtin:contrast
      --data jailbreak=builtin:jailbreak --data wrapped=builtin:wrapped)

model_of() { case $1 in smollm2) echo smollm2-135m-instruct;; qwen) echo qwen2.5-coder-0.5b-instruct;;
                        gemma) echo gemma-3-270m;; tiny) echo "${TINY_MODEL:?set TINY_MODEL to a tiny model folder}";;
                        *) echo "unknown model $1" >&2; exit 2;; esac; }
# prompts explained per class: what fits the shared 2-core host (Qwen is about 3.5x SmolLM2's cost per token)
n_of() { case $1 in smollm2) echo "${N_SMOLLM2:-10}";; gemma) echo "${N_GEMMA:-6}";; qwen) echo "${N_QWEN:-4}";;
                    tiny) echo 2;; esac; }
# integration steps: 32; Qwen 16 (its pieces would not fit the shared host's time otherwise; the completeness
# gap says what that costs)
steps_of() { case $1 in tiny) echo 4;; qwen) echo "${STEPS_QWEN:-16}";; *) echo 32;; esac; }
# explained classes: contrast, malicious and jailbreak (harmful requests in jailbreak templates) everywhere; the
# benign requests in jailbreak-style wrappers (wrapped) on SmolLM2 only (time on the shared host)
classes_of() { case $1 in smollm2|tiny) echo "malicious contrast jailbreak wrapped";; *) echo "malicious contrast jailbreak";;
                          esac; }

piece() {  # piece DIR CMD...: skip when DIR/explain.json (or DIR/done) exists; log beside DIR with the load
  local dir=$1; shift
  if [ -e "$dir/explain.json" ] || [ -e "$dir/done" ]; then echo "have $dir"; return 0; fi
  mkdir -p "$(dirname "$dir")"
  local log="$dir.log" t0; t0=$(date +%s)
  echo "== $dir  load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$log"
  echo "+ $*" >> "$log"
  if ! $RUNNER "$@" >> "$log" 2>&1; then echo "failed: see $log"; tail -3 "$log"; return 1; fi
  echo "== $dir  wall $(( $(date +%s) - t0 )) s, load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
  mkdir -p "$dir" && touch "$dir/done"
}

run_model() {  # run_model SHORT [ig|gxi|cos ...]: the model's pieces of those kinds (default all)
  local short=$1 M N S; shift
  local kinds=("$@"); [ ${#kinds[@]} -eq 0 ] && kinds=(ig cos gxi)
  M=$(model_of "$short"); N=$(n_of "$short"); S=$(steps_of "$short")
  local classes; read -r -a classes <<< "$(classes_of "$short")"
  local common=(--model "$M" "${DATA[@]}" --target probe --sample --limit "$N" --train-limit 32 --max-tokens 160
                --faith-steps 8 --no-cosines --no-progress)
  for kind in "${kinds[@]}"; do
    case $kind in
      ig) for c in "${classes[@]}"; do
            piece "$OUT/$short/ig-$c" "$IHS" explain "${common[@]}" --classes "$c" --method ig --steps "$S" \
                --random-orders 3 --out "$OUT/$short/ig-$c"
          done;;
      # gradient x input on the same prompts and probe; one random order (the ig pieces hold three for them)
      gxi) for c in "${classes[@]}"; do
             piece "$OUT/$short/gxi-$c" "$IHS" explain "${common[@]}" --classes "$c" --method gxi \
                 --random-orders 1 --out "$OUT/$short/gxi-$c"
           done;;
      cos) piece "$OUT/$short/cosines" "$IHS" explain --model "$M" "${DATA[@]}" --target probe --sample \
               --classes normal --limit 1 --train-limit 64 --steps 4 --no-faithfulness --cosines \
               --cosine-layers 0:L --controls 10 --no-progress --out "$OUT/$short/cosines";;
      *) echo "unknown piece kind $kind" >&2; exit 2;;
    esac
  done
}

targets=("$@")
# default order: what docs/EXPLAIN.md needs first (a shared host may not give time for all)
[ ${#targets[@]} -eq 0 ] && targets=(smollm2:ig smollm2:cos examples gemma:ig gemma:cos qwen:ig qwen:cos speed step
                                     smollm2:gxi gemma:gxi qwen:gxi summary)
for t in "${targets[@]}"; do
  case $t in
    smollm2|qwen|gemma|tiny) run_model "$t";;
    *:*) IFS=: read -r -a parts <<< "$t"; run_model "${parts[@]}";;
    examples) piece "$OUT/examples" "$PY" scripts/explain_examples.py --model smollm2-135m-instruct \
                  --guard "${GUARD:-runs/guardgen/smollm2/guard-old4}" --out "$OUT/examples";;
    speed) piece "$OUT/speed" "$IHS" explain --model smollm2-135m-instruct "${DATA[@]}" --target probe --sample \
               --classes malicious,normal --limit 8 --method ig --steps 32 --no-faithfulness --no-cosines \
               --no-progress --out "$OUT/speed";;
    # the run step's defaults (ihs run --analyses explain) on the default run data, timed
    step) piece "$OUT/step-default" "$IHS" explain --model smollm2-135m-instruct --data normal=builtin:normal \
              --data malicious=builtin:malicious --data contrast=builtin:contrast --data jailbreak=builtin:jailbreak \
              --no-progress --out "$OUT/step-default";;
    summary) $PY scripts/explain_summary.py --runs "$OUT" --out benchmarks/results/explain_zoo \
                 --figures docs/figures;;
    *) echo "unknown target $t" >&2; exit 2;;
  esac
done
