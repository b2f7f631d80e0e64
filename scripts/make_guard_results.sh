#!/usr/bin/env bash
# Guards for the three zoo models from the existing stores (scripts/make_builtin_stores.sh, make_paper_stores.sh),
# then their evaluation: held-out split, cross-dataset (built-in <-> paper), bag-of-words and refusal baselines.
set -u
cd "$(dirname "$0")/.."
only=${1:-all}   # "both": only the pooled fits
IHS="nice -n 19 .venv/bin/ihs"
mkdir -p runs/guard
for short in smollm2 qwen gemma; do
  gen=""; [ -d runs/gen-$short ] && gen="--generations runs/gen-$short"
  if [ "$only" != both ]; then
  $IHS guard fit --store runs/$short-builtin --benign normal,contrast --malicious malicious,jailbreak \
      --out runs/guard/$short-builtin > runs/guard/fit-$short-builtin.log 2>&1
  $IHS guard fit --store runs/$short-paper --benign normal --malicious malicious \
      --out runs/guard/$short-paper > runs/guard/fit-$short-paper.log 2>&1
  $IHS guard eval runs/guard/$short-builtin --store runs/$short-builtin --store runs/$short-paper $gen \
      --out runs/guard/eval-$short-builtin > runs/guard/eval-$short-builtin.log 2>&1
  $IHS guard eval runs/guard/$short-paper --store runs/$short-paper --store runs/$short-builtin $gen \
      --out runs/guard/eval-$short-paper > runs/guard/eval-$short-paper.log 2>&1
  fi
  # both prompt sets pooled (held-out rows of both are the test split)
  $IHS guard fit --store runs/$short-builtin --store runs/$short-paper --benign normal,contrast \
      --malicious malicious,jailbreak --out runs/guard/$short-both > runs/guard/fit-$short-both.log 2>&1
  $IHS guard eval runs/guard/$short-both $gen --out runs/guard/eval-$short-both > runs/guard/eval-$short-both.log 2>&1
  echo "$short done"
done
