"""Memory and disk arithmetic behind docs/SCALING.md: weights, KV / activation margins, store size per prompts.

    .venv/bin/python benchmarks/scale_memory.py            # markdown tables
    .venv/bin/python benchmarks/scale_memory.py --json     # the same numbers as JSON

Parameter counts are computed from the published architecture shapes (vocabulary, width,
MLP width, blocks, attention and key/value heads, tied or untied unembedding), not
quoted. Weights = params x bytes per parameter. The margins use the same per-token formula
as ihs.extraction.auto_batch_tokens (extraction keeps no KV cache) and, for generation, the
KV cache of a batch: 2 x L x kv_heads x head_dim x bytes per token.
"""

from __future__ import annotations

import argparse
import json

GiB = 2**30
GB = 10**9

# name: (vocab, d, mlp, layers, heads, kv_heads, tied embedding/unembedding)
SHAPES = {
    "Llama-2-7B": (32000, 4096, 11008, 32, 32, 32, False),
    "Llama-2-13B": (32000, 5120, 13824, 40, 40, 40, False),
    "Llama-2-70B": (32000, 8192, 28672, 80, 64, 8, False),
    "SmolLM2-135M": (49152, 576, 1536, 30, 9, 3, True),
}
TOKENS = 8192  # tokens in flight: a batch of 16 prompts x 512 tokens (ihs's CPU budget cap is 8192)
LONGEST = 512


def params(vocab: int, d: int, mlp: int, layers: int, heads: int, kv: int, tied: bool) -> int:
    head = d // heads
    attn = 2 * d * d + 2 * d * kv * head  # q, o and k, v projections
    block = attn + 3 * d * mlp + 2 * d  # gated MLP, two norms
    return (1 if tied else 2) * vocab * d + layers * block + d  # embedding, blocks, final norm, unembedding


def rows() -> list[dict]:
    out = []
    for name, (vocab, d, mlp, layers, heads, kv, tied) in SHAPES.items():
        p = params(vocab, d, mlp, layers, heads, kv, tied)
        head = d // heads
        act = 2 * (8 * d + 3 * mlp + 2 * heads * LONGEST) * TOKENS  # bf16, as auto_batch_tokens counts it
        kv_cache = 2 * layers * kv * head * 2 * TOKENS  # bf16
        out.append({
            "model": name, "params_B": round(p / 1e9, 3), "layers": layers, "d": d,
            "weights_bf16_GiB": round(p * 2 / GiB, 1), "weights_fp32_GiB": round(p * 4 / GiB, 1),
            "extract_activation_GiB": round(act / GiB, 2), "generate_kv_GiB": round(kv_cache / GiB, 2),
            "store_per_million_fp16_GB": round(1e6 * (layers + 1) * d * 2 / GB, 1),
            "store_per_million_fp32_GB": round(1e6 * (layers + 1) * d * 4 / GB, 1),
            "lens_per_million_GB": round(1e6 * (layers + 1) * 5 * 8 / GB, 2),  # k=5 ids (int32) + logits (fp32)
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"| model | params | weights bf16/fp16 | weights fp32 | extraction activations ({TOKENS} tokens) "
          f"| generation KV cache ({TOKENS} tokens) |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['params_B']} B | {r['weights_bf16_GiB']} GiB | {r['weights_fp32_GiB']} GiB "
              f"| {r['extract_activation_GiB']} GiB | {r['generate_kv_GiB']} GiB |")
    print()
    print("| model | L+1 | d | store per 1M prompts, float16 | float32 | lens top-5 per 1M |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['layers'] + 1} | {r['d']} | {r['store_per_million_fp16_GB']} GB "
              f"| {r['store_per_million_fp32_GB']} GB | {r['lens_per_million_GB']} GB |")


if __name__ == "__main__":
    main()
