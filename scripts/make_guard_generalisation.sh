#!/usr/bin/env bash
# The guard's generalisation results of docs/GUARD.md, per zoo model:
#   1. feature banks (the model runs once per prompt set): the eight built-in training sets, the paper's two
#      files (evaluation only) and the multilingual translations (evaluation only);
#   2. today's guard (last token, one layer, linear probe, one threshold) fitted on the four original sets and on
#      all eight sets, and the new guard (kind chosen by leave-group-out CV on the training split, threshold held
#      on every benign kind) on all eight sets;
#   3. their evaluation on the held-out split and the evaluation-only banks, per kind;
#   4. leave-one-group-out on the training pool (families, malicious categories, benign kinds, reformulations,
#      datasets) for the new guard, today's recipe on the new sets and on the old sets, and bag-of-words, with
#      random goal-level folds beside them;
#   5. the cost: early-exit share of the full pass and `ihs guard score` prompts/s, in one run.
# Steps whose output exists are skipped (delete a folder to redo it). Usage:
#   scripts/make_guard_generalisation.sh [smollm2|qwen|gemma ...]     (default: all three, one at a time)
#   TINY_MODEL=folder scripts/make_guard_generalisation.sh tiny         (a dry run of every step on a tiny model)
# The machine is shared: every model job runs under nice, one at a time.
set -eu
cd "$(dirname "$0")/.."
IHS="nice -n 10 .venv/bin/ihs"
PY="nice -n 10 .venv/bin/python"
PAPER=../shared/data/paper
LANGS=zh,es,fr,sw,bn
OLD_SETS=normal,malicious,contrast,jailbreak
TRAIN="--data normal=builtin:normal --data malicious=builtin:malicious --data contrast=builtin:contrast
       --data jailbreak=builtin:jailbreak --data wrapped=builtin:wrapped --data reformulated=builtin:reformulated
       --data alarming=builtin:alarming --data buried=builtin:buried"
HOLDOUT="--holdout family --holdout category:malicious --holdout benign-kind --holdout reformulation
         --holdout dataset --min-group ${MIN_GROUP:-5}"

model_of() { case $1 in tiny) echo "${TINY_MODEL:?}";; smollm2) echo smollm2-135m-instruct;; qwen) echo qwen2.5-coder-0.5b-instruct;;
                        gemma) echo gemma-3-270m;; *) echo "unknown model $1" >&2; exit 2;; esac; }
# sizes: every prompt for SmolLM2; a seeded random sample per set for the larger or slower models (2 shared cores)
sample_of() { case $1 in smollm2) echo "";; tiny) echo "--sample 40";; *) echo "--sample 110";; esac; }
paper_of() { case $1 in smollm2) echo 300;; tiny) echo 20;; *) echo 150;; esac; }
multi_of() { case $1 in smollm2) echo 30;; tiny) echo 2;; *) echo 10;; esac; }

run() {  # run OUT CMD...: skip when OUT exists, log next to it
  local out=$1; shift
  if [ -e "$out" ]; then echo "have $out"; return; fi
  local log="$out.log"; case $out in benchmarks/*) log=runs/guardgen/logs/$(basename "$out").log;; esac
  echo "+ $*"; mkdir -p "$(dirname "$out")" "$(dirname "$log")"
  "$@" > "$log" 2>&1 || { echo "failed: see $log"; tail -3 "$log"; exit 1; }
}

models=("$@")
[ ${#models[@]} -eq 0 ] && models=(smollm2 qwen gemma)
for short in "${models[@]}"; do
  M=$(model_of "$short"); B=runs/guardgen/$short
  run $B/bank-train $IHS guard features --model "$M" $TRAIN $(sample_of "$short") --out $B/bank-train
  run $B/bank-paper $IHS guard features --model "$M" --data normal=$PAPER/normal_prompt.csv \
      --data malicious=$PAPER/malicious_prompt.csv --limit "$(paper_of "$short")" --out $B/bank-paper
  run $B/bank-multi $IHS guard features --model "$M" --data normal=builtin:multilingual:normal:$LANGS \
      --data malicious=builtin:multilingual:malicious:$LANGS --data contrast=builtin:multilingual:contrast:$LANGS \
      --limit "$(multi_of "$short")" --limit-by lang --out $B/bank-multi
  run $B/guard-old4 $IHS guard fit --bank $B/bank-train --kind last --sets $OLD_SETS --out $B/guard-old4
  run $B/guard-old $IHS guard fit --bank $B/bank-train --kind last --out $B/guard-old
  run $B/guard-new $IHS guard fit --bank $B/bank-train --kind auto --out $B/guard-new
  # every guard on the same prompts: the new guard's held-out split (the old guards share its split) and the
  # evaluation-only banks
  for g in new old old4; do
    run $B/eval-$g $IHS guard eval $B/guard-$g --bank $B/bank-train --bank $B/bank-paper --bank $B/bank-multi \
        --exclude $B/guard-new --exclude $B/guard-old --out $B/eval-$g
  done
  run $B/holdout $IHS guard eval $B/guard-new $HOLDOUT --compare "old recipe=$B/guard-old" \
      --compare "old recipe, old sets=$B/guard-old4" --out $B/holdout
  # the kind chosen again inside every training side, so no choice saw the held-out group (slow: one selection
  # a split, so only the dataset and reformulation keys)
  run $B/holdout-nested $IHS guard eval $B/guard-new --holdout dataset --holdout reformulation --nested \
      --min-group ${MIN_GROUP:-5} --random-folds 0 --no-bow --out $B/holdout-nested
  run benchmarks/results/guard_cost_$short.json env OMP_NUM_THREADS=2 $PY benchmarks/guard_cost.py --model "$M" \
      --guard new=$B/guard-new --guard old=$B/guard-old --prompts 32 --repeats 3 \
      --out benchmarks/results/guard_cost_$short.json
  echo "$short done (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
done
[ "${models[*]}" = tiny ] || $PY benchmarks/guard_generalisation.py runs/guardgen > benchmarks/results/guard_generalisation.md
