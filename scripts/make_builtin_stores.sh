#!/usr/bin/env bash
# Built-in sets (first 200 of each class) through the three zoo models.
set -u

for m in smollm2:smollm2-135m-instruct qwen:qwen2.5-coder-0.5b-instruct gemma:gemma-3-270m; do
  short=${m%%:*}; name=${m#*:}
  mkdir -p runs; .venv/bin/ihs extract --model $name --data normal=builtin:normal --data malicious=builtin:malicious \
     --data contrast=builtin:contrast --data jailbreak=builtin:jailbreak \
     --limit 200 --out runs/$short-builtin > runs/$short-builtin.log 2>&1
  echo "$short done rc=$?"
done
