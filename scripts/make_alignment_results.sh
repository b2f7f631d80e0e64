#!/usr/bin/env bash
# Every number in docs/ALIGNMENT.md: align gemma-3-270m (base) ourselves and track each checkpoint.
#
# Run from the repo root on CPU, one job at a time (the measured runs shared 2 cores with other work:
# wall times depend on the load average, which each summary records). Outputs go to runs/align/.
#
#   bash scripts/make_alignment_results.sh            # SFT run + tracking + claims
#   STAGES="sft assoc dpo" bash scripts/make_alignment_results.sh   # also the association and DPO runs
set -euo pipefail

OUT=runs/align
MODEL=gemma-3-270m
STEPS=40
EVERY=10
STOP=20
TRACK=(--per-class 24 --max-new-tokens 20)
STAGES=${STAGES:-sft}
mkdir -p "$OUT"

nice -n 10 .venv/bin/ihs models pull "$MODEL"

claims=()
for stage in $STAGES; do
  case $stage in
    sft)
      # LoRA SFT from the base model on the default data (written refusals + answers, training goals only);
      # align_measure.py is `ihs align sft --steps 40 --save-every 10` with the defaults (LoRA r 16, alpha 32,
      # lr 2e-4 linear, batch 4, max length 256) plus a record of wall time, CPU time and peak memory
      # The measured run was stopped once step $STOP was exported (under a load average of 7-12 on 2 cores a
      # step took 60-90 s, and 40 steps did not fit the deadline): align_stop.py records its time and peak
      # memory; the learning-rate schedule is the 40-step one. Checkpoints 0 and 10 were tracked while it
      # trained (the tracker reuses rows already measured with the same options).
      nice -n 10 .venv/bin/python scripts/align_measure.py --model "$MODEL" --steps $STEPS --save-every $EVERY \
        --batch-size 4 --max-length 256 --out "$OUT/gemma-sft" &
      pid=$!
      .venv/bin/python scripts/align_stop.py --run-dir "$OUT/gemma-sft/run" --pid $pid --step $STOP \
        --out "$OUT/gemma-sft/stopped.json"
      wait $pid || true
      nice -n 10 .venv/bin/ihs align track "$OUT/gemma-sft/run" --out "$OUT/gemma-sft-track" "${TRACK[@]}"
      claims+=("sft=$OUT/gemma-sft-track:$OUT/gemma-sft/stopped.json")
      ;;
    assoc)
      # the same steps and data with the emotion association term on the middle layers
      nice -n 10 .venv/bin/ihs align sft --model "$MODEL" --out "$OUT/gemma-assoc" --steps $STEPS \
        --save-every $EVERY --association emotion --assoc-layers L/3:L/2 --assoc-weight 1.0
      nice -n 10 .venv/bin/ihs align track "$OUT/gemma-assoc" --out "$OUT/gemma-assoc-track" "${TRACK[@]}"
      claims+=("assoc=$OUT/gemma-assoc-track:$OUT/gemma-assoc/align_run.json")
      ;;
    dpo)
      nice -n 10 .venv/bin/ihs align dpo --model "$MODEL" --out "$OUT/gemma-dpo" --steps $STEPS --save-every $EVERY
      nice -n 10 .venv/bin/ihs align track "$OUT/gemma-dpo" --out "$OUT/gemma-dpo-track" "${TRACK[@]}"
      claims+=("dpo=$OUT/gemma-dpo-track:$OUT/gemma-dpo/align_run.json")
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done

.venv/bin/python scripts/align_claims.py "${claims[@]}" --out "$OUT/claims.json" | tee "$OUT/claims.md"
