#!/usr/bin/env bash
# Defense results: directions, guards, a tuning sweep on the tune split, then the chosen
# setting on the disjoint eval split. All prompts outside the stores (and their goals) the guard and
# the direction were fitted on. One torch thread (shared 2-core machine).
set -eu
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
IHS=".venv/bin/ihs"
OUT=runs/defense
mkdir -p $OUT
run() {  # short model name, zoo name, guard layers, sweep layer ranges (space separated)
  short=$1; model=$2; glayers=$3; ranges=$4
  [ -f $OUT/$short-dir/direction.json ] || $IHS defend direction runs/$short-builtin --out $OUT/$short-dir
  [ -f $OUT/$short-guard/guard.json ] || $IHS guard fit --store runs/$short-builtin --layers $glayers \
      --classifiers logreg --target-fpr 0.05 --out $OUT/$short-guard
  L=""; for r in $ranges; do L="$L --layers $r"; done
  common="--model $model --guard $OUT/$short-guard --direction $OUT/$short-dir --exclude-store runs/$short-builtin"
  [ -f $OUT/$short-tune/defense.json ] || /usr/bin/time -f "$short tune wall %e s" $IHS defend sweep $common $L \
      --alpha 0.05 --alpha 0.1 --alpha 0.2 --split tune --limit jailbreak=24,16 --max-new-tokens 16 \
      --out $OUT/$short-tune
  # best on the tune split: largest (attack-ASR drop - benign-refusal rise); see choose_best
  best=$(.venv/bin/python -c "import json; from ihs.interventions.defense import choose_best; \
v=choose_best(json.load(open('$OUT/$short-tune/defense.json'))['variants']); \
print(f\"{v['layers'][0]}:{v['layers'][-1]} {v['alpha']}\" if v else '')")
  if [ -z "$best" ]; then echo "$short: no conditional setting"; return; fi
  set -- $best
  [ -f $OUT/$short-eval/defense.json ] || /usr/bin/time -f "$short eval wall %e s" $IHS defend $common \
      --layers $1 --alpha $2 --split eval --limit jailbreak=48,32 --max-new-tokens 24 --out $OUT/$short-eval
}
run qwen qwen2.5-coder-0.5b-instruct 4-12 "13:16 16:19"
run smollm2 smollm2-135m-instruct 4-12 "14:17 18:21"
