#!/usr/bin/env bash
# Every number in docs/ALIGNMENT.md: align gemma-3-270m (base) three ways at equal steps and data and track
# every checkpoint on the held-out goals.
#
# Run from the repo root on CPU. Each stage is one job (under ~20 minutes on one thread); RUN is put in front
# of every real-model job (default: one torch thread at nice 10; on a shared machine a queue such as
# RUN=/path/to/slot-wrapper). Outputs go to runs/align/; the small result files to benchmarks/results/.
#
#   bash scripts/make_alignment_results.sh                      # everything, in order
#   STAGES="train-sft track-sft" bash scripts/make_alignment_results.sh   # some stages
#
# Stages (any order after their inputs exist; every stage resumes: training from the last trainer
# checkpoint of its run folder, tracking from the rows already measured):
#   train-sft    LoRA SFT (refusals for training-side malicious goals, ihs's written answers for benign ones)
#   train-assoc  the same with the association term (emotion directions, blocks L/3..L/2, weight 1)
#   train-dpo    DPO on the same prompts (chosen: refusal / answer; rejected: compliant opening / refusal)
#   calibrate    the association term's setting, chosen on training batches only: 6 steps of SFT + association
#                at each weight of CAL_WEIGHTS (default 10 100 1000) with the raw cosine, and of CAL_CENTRED
#                (default 1 10) with the centred one (--assoc-center); scripts/align_calibration.py reads
#                each run's trainer log (the term at steps 1 and 6, the task loss) into
#                benchmarks/results/align_calibration.md
#   train-assoc-strong   SFT + association at ASSOC_WEIGHT, centred when ASSOC_CENTER=1 (the calibrated
#                setting: the smallest weight whose term fell by at least 0.05 within 6 steps), otherwise as
#                train-assoc; runs/align/assoc-c<weight> (or assoc-w<weight> uncentred)
#   train-smollm2  the same plain LoRA SFT on SmolLM2-135M-Instruct (an instruct model, weakly aligned:
#                strengthened rather than aligned from scratch); runs/align/smollm2-sft
#   track-sft, track-assoc, track-dpo, track-smollm2   `ihs align track` of every checkpoint (step 0 measured once:
#                every run's step 0 is the base model, identical weights, reused through --reuse)
#   tuned-lens   scripts/align_tuned_lens.py: claim 2 under a tuned lens trained once on gemma's step 0 (training-side
#                prompts) and applied to steps 0, 10 and 40 of the plain SFT and the calibrated association runs
#   claims       scripts/align_claims.py: tables, claim 4 (Spearman + bootstrap), figures
set -euo pipefail

OUT=runs/align
MODEL=gemma-3-270m
STEPS=40
EVERY=10
TRACK=(--per-class 24 --max-new-tokens 20)
# the tracked step 0 of the base model (measured once, with the same options, in an earlier SFT run's tracking)
BASE_TRACK=${BASE_TRACK:-$OUT/gemma-sft-track}
ASSOC_WEIGHT=${ASSOC_WEIGHT:-10}   # the calibrated weight (benchmarks/results/align_calibration.md)
CAL_WEIGHTS=${CAL_WEIGHTS:-"10 100 1000"}
CAL_CENTRED=${CAL_CENTRED:-"1 10"}
ASSOC_CENTER=${ASSOC_CENTER:-1}   # 1: the strong run uses the centred term (--assoc-center)
STRONG=assoc-$([[ $ASSOC_CENTER == 1 ]] && echo c || echo w)${ASSOC_WEIGHT}
STAGES=${STAGES:-"train-sft train-assoc train-dpo calibrate train-assoc-strong train-smollm2 track-sft track-assoc
track-dpo track-assoc-strong track-smollm2 tuned-lens claims"}
read -r -a RUNNER <<< "${RUN:-env OMP_NUM_THREADS=1 nice -n 10}"
TRAIN=(--model "$MODEL" --steps $STEPS --save-every $EVERY --threads 1)
mkdir -p "$OUT"

trained() {  # trained NAME: wait until runs/align/NAME has trained all its steps (another job may be training it)
  until [[ -f $OUT/$1/align_run.json ]] && grep -q "\"steps\": $STEPS," "$OUT/$1/align_run.json"; do sleep 30; done
}

track() {  # track NAME: every exported checkpoint of runs/align/NAME in one job (some 15 minutes on one thread)
  local name=$1 reuse=() steps
  for dir in "$BASE_TRACK" "$OUT"/sft-track "$OUT"/assoc-track "$OUT"/dpo-track "$OUT/$STRONG-track"; do
    [[ -d $dir && $dir != "$OUT/$name-track" ]] && reuse+=(--reuse "$dir")
  done
  trained "$name"
  steps=$(ls "$OUT/$name/checkpoints" | sed -n 's/^step-0*\([0-9][0-9]*\)$/\1/p' | sort -n | paste -sd,)
  "${RUNNER[@]}" .venv/bin/ihs align track "$OUT/$name" --out "$OUT/$name-track" "${TRACK[@]}" \
    --steps "$steps" "${reuse[@]}" --no-progress
}

for stage in $STAGES; do
  case $stage in
    train-sft)
      "${RUNNER[@]}" .venv/bin/ihs align sft "${TRAIN[@]}" --out "$OUT/sft" --no-progress ;;
    train-assoc)
      "${RUNNER[@]}" .venv/bin/ihs align sft "${TRAIN[@]}" --out "$OUT/assoc" --association emotion \
        --assoc-layers L/3:L/2 --assoc-weight 1.0 --no-progress ;;
    train-dpo)
      "${RUNNER[@]}" .venv/bin/ihs align dpo "${TRAIN[@]}" --out "$OUT/dpo" --no-progress ;;
    calibrate)
      # wW: the term as first built (cosine of the raw state); cW: centred on the training prompts' mean state
      for run in $(for w in $CAL_WEIGHTS; do echo "w$w"; done) $(for w in $CAL_CENTRED; do echo "c$w"; done); do
        center=(); [[ $run == c* ]] && center=(--assoc-center)
        [[ -f $OUT/calibrate/$run/align_run.json ]] || "${RUNNER[@]}" .venv/bin/ihs align sft --model "$MODEL" \
          --steps 6 --save-every 1000 --threads 1 --out "$OUT/calibrate/$run" --association emotion \
          --assoc-layers L/3:L/2 --assoc-weight "${run:1}" "${center[@]}" --no-progress
        rm -rf "$OUT/calibrate/$run/checkpoints" "$OUT/calibrate/$run/trainer"  # weights are not needed
      done
      .venv/bin/python scripts/align_calibration.py "$OUT"/calibrate/* --markdown benchmarks/results/align_calibration.md ;;
    train-assoc-strong)
      "${RUNNER[@]}" .venv/bin/ihs align sft "${TRAIN[@]}" --out "$OUT/$STRONG" --association emotion \
        --assoc-layers L/3:L/2 --assoc-weight "$ASSOC_WEIGHT" $([[ $ASSOC_CENTER == 1 ]] && echo --assoc-center) \
        --no-progress ;;
    track-assoc-strong) track "$STRONG" ;;
    train-smollm2)
      "${RUNNER[@]}" .venv/bin/ihs align sft --model smollm2-135m-instruct --steps $STEPS --save-every $EVERY \
        --threads 1 --out "$OUT/smollm2-sft" --no-progress ;;
    track-smollm2) track smollm2-sft ;;
    tuned-lens)
      for name in sft "$STRONG"; do
        trained "$name"
        "${RUNNER[@]}" .venv/bin/python scripts/align_tuned_lens.py "$OUT/$name" --steps 0,10,$STEPS \
          --lens "$OUT/tuned-lens-gemma" --out "benchmarks/results/align_tuned_lens_$name.json"
      done ;;
    track-sft) track sft ;;
    track-assoc) track assoc ;;
    track-dpo) track dpo ;;
    claims)
      .venv/bin/python scripts/align_claims.py \
        sft="$OUT/sft-track:$OUT/sft/align_run.json" \
        assoc="$OUT/assoc-track:$OUT/assoc/align_run.json" \
        dpo="$OUT/dpo-track:$OUT/dpo/align_run.json" \
        "$STRONG=$OUT/$STRONG-track:$OUT/$STRONG/align_run.json" \
        smollm2-sft="$OUT/smollm2-sft-track:$OUT/smollm2-sft/align_run.json" \
        --out benchmarks/results/align_claims.json --markdown benchmarks/results/align_claims.md \
        --figures docs/figures ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
