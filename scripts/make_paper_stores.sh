#!/usr/bin/env bash
# Paper prompt sets (de-duplicated, first 300 of each class) through the three zoo models.
set -u
P=../shared/data/paper
for m in smollm2:smollm2-135m-instruct gemma:gemma-3-270m qwen:qwen2.5-coder-0.5b-instruct; do
  short=${m%%:*}; name=${m#*:}
  mkdir -p runs; .venv/bin/ihs extract --model $name --data normal=$P/normal_prompt.csv --data malicious=$P/malicious_prompt.csv \
     --limit 300 --out runs/$short-paper > runs/$short-paper.log 2>&1
  echo "$short done rc=$?"
done
