"""Throughput of extraction and generation against the paper's code path and the machine's matmul ceiling.

Everything is measured in one run, on the same prompts, dtype and threads. The
machine is shared and noisy, so the measurements are interleaved in rounds
(ceiling, ihs, a slice of the reference, then again) and each rate is the best
round: a neighbour's burst then slows one round rather than one side of the
ratio. The reference reproduces what the paper's code did per prompt: one
forward pass with ``output_hidden_states``, final norm and unembedding over
every position of every layer, top-k of the last; for generation, one
``generate`` call per prompt, its rate pooled over all its prompts (answer
lengths differ too much for a round's slice to stand for the set).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import numpy as np
import torch

from ihs.extraction import ExtractOptions, extract
from ihs.formatting import format_prompt, uses_chat
from ihs.models.loading import LoadedModel
from ihs.progress import progress_bar


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_ceiling_gflops(dtype: torch.dtype, seconds: float = 1.0, sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """Best sustained GFLOP/s of square matmuls in ``dtype`` with the current thread settings.

    The best of a few sizes, so the ceiling is the machine's, not one shape's.
    """
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        for _ in range(2):
            a @ b
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / len(sizes):
            a @ b
            n += 1
        best = max(best, 2 * size**3 * n / (time.perf_counter() - started) / 1e9)
    return best


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


def _matmul_params(lm: LoadedModel) -> tuple[int, int]:
    """(parameters in matmuls per token outside the unembedding, unembedding parameters)."""
    embed = lm.model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in lm.model.parameters()) - embed
    unembed = lm.anatomy.unembed.weight.numel()
    tied = lm.anatomy.unembed.weight.data_ptr() == lm.model.get_input_embeddings().weight.data_ptr()
    return params - (0 if tied else unembed), unembed


def _spread(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)``."""
    if n >= n_total:
        return list(range(n_total))
    return [int(i * n_total / n) for i in range(n)]


def _padding_share(stats: dict[str, Any]) -> float | None:
    """Share of the tokens pushed through the backbone that were padding (the shared prefix aside)."""
    if not stats.get("tokens_padded"):
        return None
    real = stats["tokens"] - stats.get("shared_prefix_tokens", 0) * stats["prompts"]
    return round(1 - real / stats["tokens_padded"], 3)


def _rate_summary(rates: list[float]) -> tuple[float, float]:
    return max(rates), statistics.median(rates)


def bench_extract(lm: LoadedModel, texts: list[str], reference_prompts: int | None = None,
                  options: ExtractOptions | None = None, rounds: int = 3, progress: bool = False) -> dict[str, Any]:
    """Measure ihs extraction and the reference path on the same prompts; check they agree.

    Each round extracts every prompt with ihs and runs a slice of the reference
    prompts; the rates reported are the best round's (medians alongside).
    """
    options = options or ExtractOptions()
    rounds = max(1, rounds)
    chat = uses_chat(lm.tokenizer, options.chat)
    records = [{"id": f"b{i}", "text": t, "label": "bench", "dataset": "bench", "tags": {}} for i, t in enumerate(texts)]
    formatted = [format_prompt(lm.tokenizer, t, chat, options.system_prompt).ids for t in texts]
    n_tokens = sum(len(f) for f in formatted)
    body, unembed = _matmul_params(lm)
    n_ref = len(texts) if reference_prompts is None else max(1, min(reference_prompts, len(texts)))
    ref_rows = _spread(len(texts), n_ref)
    ref_slices = [ref_rows[r::rounds] for r in range(rounds)]

    extract(lm, records[: min(8, len(records))], None, options, progress=False)  # warm-up
    reference_lens_top1(lm, formatted[0])
    ceilings, ihs_rates, ihs_gflops, ref_rates, fractions = [], [], [], [], []
    mismatches, max_state_diff, store, stats = 0, 0.0, None, {}
    with progress_bar("bench extract", total=rounds * (len(texts) + n_ref), enabled=progress) as advance:
        for r in range(rounds):
            ceilings.append(matmul_ceiling_gflops(lm.dtype))
            started = time.perf_counter()
            store = extract(lm, records, None, options, progress=False)
            seconds = time.perf_counter() - started
            stats = store.manifest["runs"][-1]
            ihs_rates.append(len(texts) / seconds)
            # executed matmul work: the tokens actually run (a shared prefix runs once) plus the lens rows
            run_tokens = stats.get("tokens_run", n_tokens)
            ihs_gflops.append((2.0 * body * run_tokens + 2.0 * unembed * len(texts) * (lm.num_layers + 1)) / seconds / 1e9)
            fractions.append(ihs_gflops[-1] / ceilings[-1])
            advance(len(texts))
            started = time.perf_counter()
            for i in ref_slices[r]:
                ref_top, ref_last = reference_lens_top1(lm, formatted[i], options.k)
                mismatches += int((ref_top[:, 0] != store.lens_ids[i, :, 0]).sum())
                # the last layer differs by the final norm (HF normalises it); compare the others
                max_state_diff = max(max_state_diff, float(np.abs(ref_last[:-1] - store.hidden[i, :-1]).max()))
                advance(1)
            if ref_slices[r]:
                ref_rates.append(len(ref_slices[r]) / (time.perf_counter() - started))

    best_ihs, median_ihs = _rate_summary(ihs_rates)
    best_ref, median_ref = _rate_summary(ref_rates)
    ceiling = max(ceilings)
    gflops = max(ihs_gflops)
    # what the same outputs cost without the shared-prefix cache: every token of every prompt
    naive = (2.0 * body * n_tokens + 2.0 * unembed * len(texts) * (lm.num_layers + 1)) / len(texts)
    return {
        "model": lm.name,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "prompts": len(texts),
        "reference_prompts": n_ref,
        "mean_tokens": round(n_tokens / len(texts), 1),
        "shared_prefix_tokens": stats.get("shared_prefix_tokens", 0),
        "ihs_prompts_per_s": round(best_ihs, 3),
        "ihs_prompts_per_s_median": round(median_ihs, 3),
        "ihs_tokens_per_s": round(best_ihs * n_tokens / len(texts), 1),
        "reference_prompts_per_s": round(best_ref, 3),
        "reference_prompts_per_s_median": round(median_ref, 3),
        "speedup": round(best_ihs / best_ref, 2),
        "speedup_median": round(median_ihs / median_ref, 2),
        "gflops": round(gflops, 1),
        "effective_gflops": round(best_ihs * naive / 1e9, 1),
        "ceiling_gflops": round(ceiling, 1),
        "fraction_of_ceiling": round(gflops / ceiling, 3),
        # each round's GFLOP/s over the ceiling measured just before it: the paired view of the same ratio
        "fraction_of_ceiling_median": round(statistics.median(fractions), 3),
        "padding_share": _padding_share(stats),
        "top1_lens_mismatches": mismatches,
        "top1_lens_compared": n_ref * (lm.num_layers + 1),
        "max_state_diff_vs_reference": max_state_diff,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "batch_size": options.batch_size,
        "max_batch_tokens": stats.get("max_batch_tokens"),
    }


@torch.inference_mode()
def _reference_generate(lm: LoadedModel, ids: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
    """One prompt, one ``generate`` call, greedy: how the paper's code produced answers."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([ids], device=lm.input_device)
    out = lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            eos_token_id=stops or None, pad_token_id=pad_id)
    kept = []
    for token in out[0, len(ids):].tolist():
        if token in stops:
            break
        kept.append(token)
    return kept


def bench_generate(lm: LoadedModel, texts: list[str], reference_prompts: int | None = None,
                   max_new_tokens: int = 32, batch_size: int = 16, rounds: int = 3,
                   progress: bool = False) -> dict[str, Any]:
    """Batched greedy generation (``ihs.generation.generate``) against one ``generate`` call per prompt."""
    from ihs.generation import GenerateOptions, eos_ids, generate

    rounds = max(1, rounds)
    options = GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
    chat = uses_chat(lm.tokenizer, options.chat)
    records = [{"id": f"g{i}", "text": t, "label": "bench"} for i, t in enumerate(texts)]
    formatted = [format_prompt(lm.tokenizer, t, chat).ids for t in texts]
    stops = eos_ids(lm)
    n_ref = len(texts) if reference_prompts is None else max(1, min(reference_prompts, len(texts)))
    ref_rows = _spread(len(texts), n_ref)
    ref_slices = [ref_rows[r::rounds] for r in range(rounds)]

    generate(lm, records[:2], GenerateOptions(max_new_tokens=4), judge=None, progress=False)  # warm-up
    ihs_rates, ihs_tok_rates = [], []
    ref_seconds, ref_tokens = 0.0, 0
    same, compared, run = 0, 0, None
    with progress_bar("bench generate", total=rounds * (len(texts) + n_ref), enabled=progress) as advance:
        for r in range(rounds):
            run = generate(lm, records, options, judge=None, progress=False)
            ihs_rates.append(len(texts) / run.seconds)
            ihs_tok_rates.append(run.new_tokens / run.seconds)
            advance(len(texts))
            started, new_tokens = time.perf_counter(), 0
            for i in ref_slices[r]:
                ref = _reference_generate(lm, formatted[i], max_new_tokens, stops)
                new_tokens += len(ref)
                compared += 1
                same += int(ref == run.rows[i]["new_ids"])
                advance(1)
            ref_seconds += time.perf_counter() - started
            ref_tokens += new_tokens
    best_ihs, median_ihs = _rate_summary(ihs_rates)
    # Answers differ in length (one token to max_new_tokens), so a round's slice of one or two
    # reference prompts is no rate for the set: the reference is pooled over all its prompts.
    ref_rate = compared / ref_seconds
    return {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "prompts": len(texts),
        "reference_prompts": n_ref,
        "ihs_prompts_per_s": round(best_ihs, 3),
        "ihs_new_tokens_per_s": round(max(ihs_tok_rates), 1),
        "reference_prompts_per_s": round(ref_rate, 3),
        "reference_new_tokens_per_s": round(ref_tokens / ref_seconds, 1),
        "speedup": round(best_ihs / ref_rate, 2),
        "speedup_median": round(median_ihs / ref_rate, 2),
        "speedup_new_tokens": round(max(ihs_tok_rates) / (ref_tokens / ref_seconds), 2),
        "same_answer_share": round(same / compared, 3) if compared else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
