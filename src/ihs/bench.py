"""Throughput of extraction against the paper's code path and the machine's matmul ceiling.

Everything is measured in one run, on the same prompts, dtype and threads, so
ratios survive a noisy shared machine. The reference reproduces what the
paper's code did per prompt: one forward pass with ``output_hidden_states``,
final norm and unembedding over every position of every layer, top-k of the
last position.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import torch

from ihs.extract import ExtractOptions, extract
from ihs.formatting import format_prompt, uses_chat
from ihs.models.loading import LoadedModel


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_ceiling_gflops(dtype: torch.dtype, size: int = 1024, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of square matmuls in ``dtype`` with the current thread settings."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        n += 1
    elapsed = time.perf_counter() - started
    return 2 * size**3 * n / elapsed / 1e9


@torch.inference_mode()
def reference_lens_top1(lm: LoadedModel, ids: list[int], k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The paper's path for one prompt: all hidden states, lens over every position, top-k of the last."""
    out = lm.model(torch.tensor([ids], device=lm.input_device), output_hidden_states=True)
    states = out.hidden_states
    top_ids = []
    for layer, h in enumerate(states):
        # Hugging Face's last entry is already final-normed: do not norm it twice.
        normed = h if layer == len(states) - 1 else lm.anatomy.final_norm(h)
        logits = lm.anatomy.unembed(normed)[0]  # (T, V): every position, as the paper's code did
        top_ids.append(torch.topk(logits[-1].float(), k).indices)
    last = torch.stack([h[0, -1] for h in states]).float().cpu().numpy()
    return torch.stack(top_ids).cpu().numpy(), last


def _flops_per_prompt(lm: LoadedModel, n_tokens: float, lens_positions: float) -> float:
    """Matmul FLOPs: 2 x non-embedding params x tokens, plus the lens projections actually done."""
    embed = lm.model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in lm.model.parameters()) - embed
    unembed = lm.anatomy.unembed.weight.numel()
    tied = lm.anatomy.unembed.weight.data_ptr() == lm.model.get_input_embeddings().weight.data_ptr()
    body = params - (0 if tied else unembed)
    return 2.0 * body * n_tokens + 2.0 * unembed * lens_positions


def bench_extract(lm: LoadedModel, texts: list[str], reference_prompts: int | None = None,
                  options: ExtractOptions | None = None, progress: bool = False) -> dict[str, Any]:
    """Measure ihs extraction and the reference path on the same prompts; check they agree."""
    options = options or ExtractOptions()
    chat = uses_chat(lm.tokenizer, options.chat)
    records = [{"id": f"b{i}", "text": t, "label": "bench", "dataset": "bench", "tags": {}} for i, t in enumerate(texts)]
    ceiling = matmul_ceiling_gflops(lm.dtype)
    formatted = [format_prompt(lm.tokenizer, t, chat).ids for t in texts]
    n_tokens = sum(len(f) for f in formatted)
    num_layers = lm.num_layers

    extract(lm, records[: min(8, len(records))], None, options, progress=False)  # warm-up
    started = time.perf_counter()
    store = extract(lm, records, None, options, progress=progress)
    ihs_seconds = time.perf_counter() - started

    n_ref = len(texts) if reference_prompts is None else min(reference_prompts, len(texts))
    reference_lens_top1(lm, formatted[0])  # warm-up
    started = time.perf_counter()
    mismatches = 0
    max_state_diff = 0.0
    for i in range(n_ref):
        ref_top, ref_last = reference_lens_top1(lm, formatted[i], options.k)
        mismatches += int((ref_top[:, 0] != store.lens_ids[i, :, 0]).sum())
        # the last layer differs by the final norm (HF normalises it); compare the others
        max_state_diff = max(max_state_diff, float(np.abs(ref_last[:-1] - store.hidden[i, :-1]).max()))
    ref_seconds = time.perf_counter() - started

    ihs_rate = len(texts) / ihs_seconds
    ref_rate = n_ref / ref_seconds
    ihs_flops = _flops_per_prompt(lm, n_tokens / len(texts), num_layers + 1) * len(texts)
    return {
        "model": lm.name,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "prompts": len(texts),
        "reference_prompts": n_ref,
        "mean_tokens": round(n_tokens / len(texts), 1),
        "ihs_prompts_per_s": round(ihs_rate, 3),
        "ihs_tokens_per_s": round(n_tokens / ihs_seconds, 1),
        "reference_prompts_per_s": round(ref_rate, 3),
        "speedup": round(ihs_rate / ref_rate, 2),
        "gflops": round(ihs_flops / ihs_seconds / 1e9, 1),
        "ceiling_gflops": round(ceiling, 1),
        "fraction_of_ceiling": round(ihs_flops / ihs_seconds / 1e9 / ceiling, 3),
        "top1_lens_mismatches": mismatches,
        "max_state_diff_vs_reference": max_state_diff,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "batch_size": options.batch_size,
        "max_batch_tokens": store.manifest["runs"][-1]["max_batch_tokens"],
    }
