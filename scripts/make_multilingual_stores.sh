#!/usr/bin/env bash
# Languages: the built-in multilingual parallel set through the zoo models, and greedy answers
# for the refusal rate per language. English + zh, es, fr, sw, bn.
#   stores:      the first 50 normal + 50 malicious prompts of each language (600 prompts per model;
#                the set's order spreads any prefix over the categories)
#   generations: Qwen (then SmolLM2): the first 12 normal + 12 malicious per language, 24 new tokens, greedy
# One torch thread and nice 19: the 2 cores are shared with other jobs (load average 8 while these ran).
set -u
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
mkdir -p runs/lang
N="--data normal=builtin:multilingual:normal --data malicious=builtin:multilingual:malicious"
step() { local name=$1; shift; /usr/bin/time -f "wall %e s" nice -n 19 .venv/bin/ihs "$@" > runs/lang/$name.log 2>&1; echo "$name rc=$?"; }
[ "${SKIP_QWEN_STORE:-0}" = 1 ] || step store-qwen extract --model qwen2.5-coder-0.5b-instruct $N --limit 50 --limit-by lang --batch-size 32 --out runs/lang/store-qwen
step store-smollm2 extract --model smollm2-135m-instruct $N --limit 50 --limit-by lang --batch-size 32 --out runs/lang/store-smollm2
step gen-qwen generate --model qwen2.5-coder-0.5b-instruct $N --limit 12 --limit-by lang --max-new-tokens 24 --batch-size 32 --out runs/lang/gen-qwen
step store-gemma extract --model gemma-3-270m $N --limit 50 --limit-by lang --batch-size 32 --out runs/lang/store-gemma
step gen-smollm2 generate --model smollm2-135m-instruct $N --limit 12 --limit-by lang --max-new-tokens 24 --batch-size 32 --out runs/lang/gen-smollm2
# the analyses quoted in docs/RESULTS.md, "Languages" (figures copied to docs/figures/lang_*.png)
nice -n 19 .venv/bin/ihs lang runs/lang/store-qwen runs/lang/store-smollm2 runs/lang/store-gemma --names qwen,smollm2,gemma \
   --generations runs/lang/gen-qwen --generations runs/lang/gen-smollm2 --out runs/lang/lang > runs/lang/lang.log 2>&1
nice -n 19 .venv/bin/ihs probe runs/lang/store-qwen --classifiers svm --no-bow --out runs/lang/probe-qwen > runs/lang/probe-qwen.log 2>&1
