#!/usr/bin/env bash
# Refusal, grafting and jailbreak results of docs/RESULTS.md ("Refusal and grafting", "Jailbreaks") and the
# refusal rates the lens and guard tables quote: the built-in sets, 64 prompts per class, on the two chat
# models of the zoo (gemma-3-270m is a base model and is not generated for). One torch thread per run.
set -u
export OMP_NUM_THREADS=1
D="--data normal=builtin:normal --data malicious=builtin:malicious --data contrast=builtin:contrast --data jailbreak=builtin:jailbreak"
mkdir -p runs
for m in smollm2:smollm2-135m-instruct qwen:qwen2.5-coder-0.5b-instruct; do
  short=${m%%:*}; name=${m#*:}
  .venv/bin/ihs generate --model $name $D --limit 64 --max-new-tokens 32 --batch-size 32 --out runs/gen-$short
  if [ $short = qwen ]; then data="--data normal=builtin:normal --data malicious=builtin:malicious --data jailbreak=builtin:jailbreak";
  else data=$D; fi
  .venv/bin/ihs extract --model $name $data --limit 64 --batch-size 32 --out runs/store-$short
done
.venv/bin/ihs graft --model smollm2-135m-instruct --target builtin:malicious --donor builtin:normal --layers 0:L:3 \
  --limit 32 --donor-limit 100 --reverse --max-new-tokens 24 --batch-size 32 --out runs/graft-smollm2
.venv/bin/ihs graft --model qwen2.5-coder-0.5b-instruct --target builtin:malicious --donor builtin:normal --layers 4:L:4 \
  --limit 32 --donor-limit 100 --reverse --max-new-tokens 24 --batch-size 32 --out runs/graft-qwen
.venv/bin/ihs graft --model qwen2.5-coder-0.5b-instruct --target builtin:malicious --donor builtin:normal --layers 12:L:4 \
  --limit 32 --donor-limit 100 --per-pair --jailbreak none --max-new-tokens 24 --batch-size 32 --out runs/graft-qwen-pair
.venv/bin/ihs jailbreak runs/store-qwen --generations runs/gen-qwen/generations.jsonl --out runs/jb-qwen
.venv/bin/ihs jailbreak runs/store-qwen --generations runs/gen-qwen/generations.jsonl --middle 17:20 --out runs/jb-qwen-17-20
