#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B-Instruct (zoo name qwen2.5-coder-1.5b-instruct, 28 blocks) in the claim tables of
# docs/RESULTS.md: probes, lens emotion shares and TKIC, refusal rates, jailbreak analysis, per-pair grafting,
# and the claim-4 point (TKIC vs 1 - ASR) in benchmarks/results/zoo_tkic_asr.json.
#
# The 1.5B model costs about 3.6x the compute of the 0.5B one per token, so the samples are smaller than the
# other models' (2 shared CPU cores): one built-in store of 64 prompts per class (the same prompts that are
# generated for), paper prompts 100 per class, grafting 24 targets at three depths.
#
# usage: scripts/make_qwen15_results.sh STEP [STEP ...]
#   pull      fetch the 22 wheels, check the sha256, convert once to a float32 safetensors folder
#   store     ihs extract of the four built-in sets, 64 per class (resumable: run again to continue; 256
#             prompts took 488 s on one shared core)
#   paper     ihs extract of the paper's CSVs, 100 per class (resumable)
#   gen-CLASS ihs generate for one built-in class (malicious, jailbreak, normal, contrast), 64 prompts:
#             one class per process keeps each run within about 15 minutes
#   graft     ihs graft, per-pair normal donors into 24 malicious targets at blocks 14, 21, 28
#   analyse   join the generations, probes, lens, jailbreak analysis, the claim-4 point (light: no model load
#             except the tokenizer)
# Each model step is one process; run it through the shared machine's heavy-job wrapper, one at a time.
set -eu
M=qwen2.5-coder-1.5b-instruct
P=../shared/data/paper
B="--data normal=builtin:normal --data malicious=builtin:malicious --data contrast=builtin:contrast --data jailbreak=builtin:jailbreak"
IHS=.venv/bin/ihs
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p runs benchmarks/results

for step in "$@"; do
  case $step in
    pull)
      $IHS models pull $M ;;
    store)
      $IHS extract --model $M $B --limit 64 --batch-size 16 --out runs/qwen15-builtin ;;
    paper)
      $IHS extract --model $M --data normal=$P/normal_prompt.csv --data malicious=$P/malicious_prompt.csv \
        --limit 100 --batch-size 16 --out runs/qwen15-paper ;;
    gen-malicious|gen-jailbreak|gen-normal|gen-contrast)
      c=${step#gen-}
      $IHS generate --model $M --data $c=builtin:$c --limit 64 --max-new-tokens 32 --batch-size 16 \
        --out runs/gen-qwen15-$c ;;
    graft)
      $IHS graft --model $M --target builtin:malicious --donor builtin:normal --layers 14:L:7 --limit 24 \
        --donor-limit 100 --per-pair --jailbreak none --max-new-tokens 24 --batch-size 12 --out runs/graft-qwen15-pair ;;
    analyse)
      mkdir -p runs/gen-qwen15
      cat runs/gen-qwen15-*/generations.jsonl > runs/gen-qwen15/generations.jsonl  # the classes generated so far
      $IHS generate --rejudge runs/gen-qwen15/generations.jsonl --model $M --out runs/gen-qwen15
      stores=runs/qwen15-builtin; [ -d runs/qwen15-paper ] && stores="runs/qwen15-paper $stores"
      $IHS probe $stores --out runs/probe-qwen15
      $IHS lens runs/qwen15-builtin --out runs/lens-qwen15 --heatmap-layers 0.5:0.85 \
        --classes normal,malicious,jailbreak --refusal runs/gen-qwen15/refusal_rates.json
      $IHS jailbreak runs/qwen15-builtin --generations runs/gen-qwen15/generations.jsonl --out runs/jb-qwen15
      # blocks 19-23: where the lens shows negative tokens for malicious input (chosen after looking: descriptive)
      $IHS jailbreak runs/qwen15-builtin --generations runs/gen-qwen15/generations.jsonl --middle 19:23 \
        --out runs/jb-qwen15-19-23
      .venv/bin/python scripts/qwen15_summary.py ;;
    *)
      echo "unknown step '$step' (pull, store, paper, gen-CLASS, graft, analyse)" >&2; exit 2 ;;
  esac
done
