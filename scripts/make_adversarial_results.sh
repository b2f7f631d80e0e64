#!/usr/bin/env bash
# Adversarial-training rounds (ihs attack rounds), the defenses on the same held-out prompts, and the summary,
# sized for a 2-core CPU host.
#
#   scripts/make_adversarial_results.sh [MODEL] [NAME]
#
# MODEL defaults to smollm2-135m-instruct, NAME (the results file's suffix) to smollm2.
# One job per round: the targeted arm's round K (round 0, the base model's scan and evaluation, comes
# first), then the random-examples control arm's round K (as many untargeted attacks as the targeted
# arm added). Every call of `ihs attack rounds` resumes what the folder already holds, so the script
# can be re-run after an interruption. HEAVY names a wrapper that queues CPU-heavy commands (default:
# none); ROUNDS (3), OUT (runs/adversarial/NAME) and THREADS (1) can be set in the environment.
# DEFENSE_LAYERS / DEFENSE_ALPHA: the steering setting `ihs defend sweep` chose on its own tune split
# (docs/RESULTS.md, "Defense": SmolLM2 18:21 at 0.05, Qwen 13:16 at 0.2); the base model is measured
# with it and with refuse-when-flagged on the rounds' held-out prompts (round-0/defense.json).
# MIDDLE: the blocks of the middle-layer emotion share (default: the middle third; Qwen2.5-Coder-0.5B
# uses 17:20, the blocks where docs/RESULTS.md found its association).
# Writes benchmarks/results/adversarial_NAME.json and .md (the rounds summary) and its figure,
# docs/figures/adversarial_NAME.png.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m-instruct}
NAME=${2:-smollm2}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-runs/adversarial/$NAME}
HEAVY=${HEAVY:-}
IHS=${IHS:-.venv/bin/ihs}
SIZES="--prompts 32 --max-train-attacks 12 --anchors 8 --steps 10 --batch-size 4 --learning-rate 3e-4 --lora-r 8"
SIZES+=" --max-length 256 --eval-attacks 32 --eval-benign 16 --probe-per-class 24 --perplexity 12 --max-new-tokens 32"
SIZES+=" --seed 0 --threads ${THREADS:-1} --no-progress${MIDDLE:+ --middle $MIDDLE}"
ROUND="$IHS attack rounds --model $MODEL --out $OUT $SIZES"

# One queued job runs round after round (targeted then random arm) while it has run under JOB_MINUTES
# (default 10), so a job stays near 20 minutes; the next job resumes at the first unfinished round.
next_round() {
  local k=1
  while [ "$k" -le "$ROUNDS" ] && [ -f "$OUT/random/round-$k/round.json" ]; do k=$((k + 1)); done
  echo "$k"
}
while [ "$(next_round)" -le "$ROUNDS" ]; do
  k=$(next_round)
  $HEAVY bash -c "start=\$(date +%s); for k in \$(seq $k $ROUNDS); do
      $ROUND --arm targeted --rounds \$k && $ROUND --arm random --rounds \$k || exit 1
      [ \$(( \$(date +%s) - start )) -lt $(( ${JOB_MINUTES:-10} * 60 )) ] || break
    done"
done
if [ ! -f "$OUT/round-0/defense.json" ]; then
  $HEAVY "$IHS" attack defend "$OUT" --layers "${DEFENSE_LAYERS:-18:21}" --alpha "${DEFENSE_ALPHA:-0.05}" --no-progress
fi
# every round is done: this only reads the folder back and writes the summary
$ROUND --arm targeted --rounds "$ROUNDS"
mkdir -p benchmarks/results
cp "$OUT/attack.json" "benchmarks/results/adversarial_$NAME.json"
cp "$OUT/attack.md" "benchmarks/results/adversarial_$NAME.md"
cp "$OUT/attack_rounds.png" "docs/figures/adversarial_$NAME.png"
echo "wrote benchmarks/results/adversarial_$NAME.json and .md, docs/figures/adversarial_$NAME.png"
