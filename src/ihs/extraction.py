"""Batched forward passes that keep only what the analyses read: last-position states and lens top-k.

Hooks on the decoder blocks (:mod:`ihs.hooks`) gather the last real token of every
prompt as the batch flows through, so no full-sequence activations are ever kept;
the logit lens decodes only those L+1 vectors per prompt. Prompts are sorted by
length and cut into batches under a token budget (:mod:`ihs.batching`), so padding
stays small. Batches are
right-padded and the last real token is gathered by index, which keeps
positions identical to an unbatched run.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ihs
from ihs.batching import EXTRACT_BATCH_COST, as_record_dict, auto_batch_tokens, plan_batches
from ihs.errors import StoreError
from ihs.formatting import FormattedPrompt, format_prompt, uses_chat
from ihs.hooks import Edit, Hooks
from ihs.models.devices import execution_device
from ihs.models.loading import LoadedModel
from ihs.prefix_cache import SharedPrefix, build_shared_prefix, shared_prefix_length
from ihs.progress import console, progress_bar
from ihs.store import FORMAT_VERSION, ActivationStore, StoreWriter, read_manifest, shard_files
from ihs.store_integrity import LOCK

log = logging.getLogger(__name__)
_clock = time.monotonic  # the shards' time bound reads this clock (tests replace it)


@dataclass
class ExtractOptions:
    chat: bool | None = None
    system_prompt: str | None = None
    k: int = 5
    batch_size: int = 32
    max_batch_tokens: int | None = None  # None: chosen from free memory (auto_batch_tokens)
    max_length: int | None = None
    truncate: bool = True
    store_dtype: str = "float32"
    shard_mb: float = 32.0
    shard_rows: int = 64  # a shard also ends after this many rows, so a kill loses little work
    shard_seconds: float = 30.0  # ... or once this much work (s) has gone into it since it opened; 0 = no time bound
    shared_prefix: bool = True  # run the tokens every prompt opens with once (see ihs.prefix_cache)


def lens_topk(lm: LoadedModel, states: torch.Tensor, k: int, row_block: int = 2048,
              vocab_block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k token ids and logits of the logit lens for states of shape (B, L+1, d).

    All layers of all rows are decoded together, in tiles of ``row_block`` rows
    by ``vocab_block`` vocabulary entries: each tile's logits are still in cache
    when its top-k reads them, and only k candidates per tile are kept and
    merged. Writing the full (rows, vocab) logits and reading them back would
    make the unembedding memory-bound (measured in docs/PERFORMANCE.md).
    """
    batch, layers, width = states.shape
    flat = states.reshape(batch * layers, width)
    if not _plain_linear(lm.anatomy.unembed):  # hooked (device map, offload) or unusual head: the module's own path
        ids, logits = _lens_topk_rows(lm, flat, k)
    else:
        ids, logits = _lens_topk_tiled(lm, flat, k, row_block, vocab_block)
    return ids.reshape(batch, layers, k), logits.reshape(batch, layers, k)


def _plain_linear(module: torch.nn.Module) -> bool:
    """An unhooked ``nn.Linear`` with real weights: safe to call as a matmul on slices of its weight."""
    return (type(module) is torch.nn.Linear and not hasattr(module, "_hf_hook")
            and not module._forward_hooks and not module._forward_pre_hooks
            and module.weight.device.type != "meta")


@torch.inference_mode()
def _lens_topk_rows(lm: LoadedModel, flat: torch.Tensor, k: int,
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-vocabulary rows through the module's own lens, ``chunk`` rows (default: 64 MB of logits) at a time."""
    if chunk is None:
        chunk = max(1, (64 * 2**20) // (4 * lm.anatomy.unembed.weight.shape[0]))
    device = execution_device(lm.anatomy.final_norm)
    ids, logits = [], []
    for start in range(0, flat.shape[0], chunk):
        top = torch.topk(lm.anatomy.lens(flat[start : start + chunk].to(device)).float(), k, dim=-1)
        ids.append(top.indices.cpu())
        logits.append(top.values.cpu())
    return torch.cat(ids), torch.cat(logits)


@torch.inference_mode()
def _lens_topk_tiled(lm: LoadedModel, flat: torch.Tensor, k: int, row_block: int,
                     vocab_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    anatomy = lm.anatomy
    weight, bias = anatomy.unembed.weight, anatomy.unembed.bias
    device = weight.device
    if device.type != "cpu":  # accelerators have the bandwidth: wide tiles, few launches
        row_block, vocab_block = max(row_block, 4096), max(vocab_block, 65536)
    vocab = weight.shape[0]
    vocab_block = min(vocab_block, vocab)
    kk = min(k, vocab_block)
    normed = anatomy.final_norm(flat.to(execution_device(anatomy.final_norm), weight.dtype)).to(device)
    tile = torch.empty((min(row_block, normed.shape[0]), vocab_block), dtype=weight.dtype, device=device)
    ids, logits = [], []
    for start in range(0, normed.shape[0], row_block):
        rows = normed[start : start + row_block]
        cand_values, cand_ids = [], []
        for v0 in range(0, vocab, vocab_block):
            w = weight[v0 : v0 + vocab_block]
            out = tile[: rows.shape[0], : w.shape[0]]
            torch.matmul(rows, w.T, out=out)
            if bias is not None:
                out += bias[v0 : v0 + vocab_block]
            top = torch.topk(out.float(), min(kk, w.shape[0]), dim=-1)
            cand_values.append(top.values)
            cand_ids.append(top.indices + v0)
        values, where = torch.topk(torch.cat(cand_values, dim=1), k, dim=-1)
        ids.append(torch.gather(torch.cat(cand_ids, dim=1), 1, where).cpu())
        if anatomy.logit_softcap:  # monotonic: the same ids; capped in the model's dtype, as lens() does
            cap = anatomy.logit_softcap
            values = (torch.tanh(values.to(weight.dtype) / cap) * cap).float()
        logits.append(values.cpu())
    return torch.cat(ids), torch.cat(logits)


@torch.inference_mode()
def forward_last_states(lm: LoadedModel, batch_ids: Sequence[Sequence[int]],
                        prefix: SharedPrefix | None = None) -> torch.Tensor:
    """Run one right-padded batch through the backbone; return last-position states (B, L+1, d).

    With ``prefix`` (the cached opening every sequence shares) only the rest of
    each sequence is run, on top of the cached keys and values.
    """
    offset = 0
    if prefix is not None:
        if not all(prefix.matches(ids) for ids in batch_ids):
            raise ValueError("a sequence does not start with the shared prefix")
        offset = prefix.length
        batch_ids = [ids[offset:] for ids in batch_ids]
    lengths = torch.tensor([len(ids) for ids in batch_ids])
    width = int(lengths.max())
    pad_id = lm.tokenizer.pad_token_id or 0
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch_ids), offset + width), dtype=torch.long)
    attention[:, :offset] = 1
    for row, ids in enumerate(batch_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, offset : offset + len(ids)] = 1
    device = lm.input_device
    kwargs: dict[str, Any] = {"use_cache": False}
    if prefix is not None:
        positions = (offset + torch.arange(width)).unsqueeze(0).expand(len(batch_ids), -1)
        kwargs = {"use_cache": True, "position_ids": positions.to(device),
                  **prefix.batch_kwargs(len(batch_ids))}
    with Hooks(lm, _record_every_layer(lm.num_layers), last_index=lengths - 1) as hooks:
        lm.anatomy.backbone(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    return hooks.stacked("cpu")


@functools.cache
def _record_every_layer(num_layers: int) -> tuple[Edit, ...]:
    """Record the last real token's state at layers 0..L (built once per depth, not per batch)."""
    return tuple(Edit(layer, "record") for layer in range(num_layers + 1))


def shared_prefix_ids(plan: ExtractPlan, options: ExtractOptions) -> list[int] | None:
    """The opening every prompt of the plan shares, when the options allow and it is worth caching.

    Taken over the whole plan (not only the rows left to do), so a resumed run,
    and every Ray actor, splits each prompt exactly as an uninterrupted run does.
    """
    if not options.shared_prefix:
        return None
    n = shared_prefix_length([f.ids for f in plan.formatted])
    return list(plan.formatted[0].ids[:n]) if n else None


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; elsewhere a no-op).

    Batches of different shapes leave the heap fragmented, and glibc keeps what
    was freed: without this, resident memory creeps up shard after shard and a
    long extraction looks as if it held its results (measured in docs/PERFORMANCE.md).
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _plan_fingerprint(lm: LoadedModel, records: list[dict[str, Any]], formatted: list[FormattedPrompt],
                      options: ExtractOptions, chat: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"chat": chat, "system": options.system_prompt, "k": options.k,
                              "dtype": str(lm.dtype), "store_dtype": options.store_dtype}).encode())
    for record, fmt in zip(records, formatted, strict=True):
        digest.update(record["id"].encode())
        digest.update(record["label"].encode())
        digest.update(hashlib.sha1(str(fmt.ids).encode()).digest())
    return digest.hexdigest()[:24]


def build_manifest(lm: LoadedModel, options: ExtractOptions, chat: bool, n: int, plan_fp: str,
                   datasets: list[str]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "ihs_version": ihs.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {**lm.identity, "name": lm.name, "fingerprint": lm.fingerprint(), "dtype": str(lm.dtype).replace("torch.", "")},
        "num_layers": lm.num_layers,
        "hidden_size": lm.hidden_size,
        "layer_convention": "index 0 = embedding output; index i = output of decoder block i (before the final norm)",
        "chat": chat,
        "chat_template": lm.chat_template if chat else None,
        "system_prompt": options.system_prompt,
        "lens_k": options.k,
        "store_dtype": options.store_dtype,
        "max_length": options.max_length or lm.max_length,
        "n_planned": n,
        "datasets": datasets,
        "plan_fingerprint": plan_fp,
    }


@dataclass
class ExtractPlan:
    """Everything decided before the first forward pass: rows, exact ids, manifest."""

    planned: list[dict[str, Any]]  # prompts.jsonl, one row per prompt, in row order
    formatted: list[FormattedPrompt]
    lengths: list[int]
    manifest: dict[str, Any]

    def rows_info(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Per-row formatting details kept in a shard's metadata."""
        return [{"formatted": self.formatted[r].text, "n_tokens": len(self.formatted[r].ids),
                 "truncated": self.formatted[r].truncated} for r in rows]


def plan_extraction(lm: LoadedModel, records: Sequence[Any], options: ExtractOptions) -> ExtractPlan:
    """Format every prompt exactly as the model will see it and build the store's manifest."""
    records = [as_record_dict(r) for r in records]
    if not records:
        raise StoreError("nothing to extract: the prompt set is empty")
    chat = uses_chat(lm.tokenizer, options.chat)
    max_length = options.max_length or lm.max_length
    formatted = [
        format_prompt(lm.tokenizer, r["text"], chat, options.system_prompt, max_length, options.truncate)
        for r in records
    ]
    n_truncated = sum(f.truncated for f in formatted)
    if n_truncated:
        log.warning("%d prompt(s) exceeded %d tokens and were truncated from the left", n_truncated, max_length)
        console.print(f"[yellow]warning:[/] {n_truncated} prompt(s) longer than {max_length} tokens were truncated from the left")
    lengths = [len(f.ids) for f in formatted]
    plan_fp = _plan_fingerprint(lm, records, formatted, options, chat)
    datasets = sorted({r.get("dataset", "") for r in records})
    manifest = build_manifest(lm, options, chat, len(records), plan_fp, datasets)
    planned = [
        {"id": r["id"], "text": r["text"], "label": r["label"], "dataset": r.get("dataset", ""), "tags": r.get("tags", {})}
        for r in records
    ]
    return ExtractPlan(planned, formatted, lengths, manifest)


def open_store(out: str | Path, plan: ExtractPlan, options: ExtractOptions, overwrite: bool = False) -> StoreWriter:
    """A writer on ``out``: a new store, or the same plan's partial store to resume; anything else is refused."""
    out = Path(out)
    existing = read_manifest(out)
    if existing is not None:
        reason = StoreWriter.compatible(existing, plan.manifest)
        if reason and not overwrite:
            raise StoreError(f"output directory {out} cannot be used: {reason}; choose another --out or pass --overwrite")
        if reason and overwrite:
            _clear_store(out)
    elif out.exists() and any(p.name != LOCK for p in out.iterdir()) and not overwrite:
        raise StoreError(f"output directory {out} is not empty and holds no store; choose another --out")
    return StoreWriter(out, plan.manifest, plan.planned, store_dtype=options.store_dtype)


def rows_per_shard(num_layers: int, hidden_size: int, options: ExtractOptions) -> int:
    """Rows per shard: under ``shard_mb`` megabytes and at most ``shard_rows`` rows."""
    bytes_per_row = (num_layers + 1) * hidden_size * np.dtype(options.store_dtype).itemsize
    return max(1, min(int(options.shard_rows or 10**9), int(options.shard_mb * 2**20 // bytes_per_row)))


def extract(
    lm: LoadedModel,
    records: Sequence[Any],
    out: str | Path | None = None,
    options: ExtractOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ActivationStore:
    """Extract last-position states and lens top-k for ``records`` into a store at ``out``.

    Re-running the same call on the same directory resumes: finished shards are
    kept and only missing rows are computed. ``out=None`` keeps everything in memory.
    """
    options = options or ExtractOptions()
    if out is None:
        plan = plan_extraction(lm, records, options)
        return _extract_in_memory(lm, plan, options, progress)
    extract_to(lm, records, out, options, progress, overwrite)
    return ActivationStore.load(out)


def extract_to(
    lm: LoadedModel,
    records: Sequence[Any],
    out: str | Path,
    options: ExtractOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """:func:`extract` without loading the result: returns the finished store's manifest.

    Peak memory then stays that of one shard in flight, however many prompts the store holds.
    """
    options = options or ExtractOptions()
    plan = plan_extraction(lm, records, options)
    planned = plan.planned
    out = Path(out)
    writer = open_store(out, plan, options, overwrite)
    done = writer.done_rows()
    todo = [r for r in range(len(planned)) if r not in done]
    if done:
        console.print(f"resuming: {len(done)} of {len(planned)} prompts already in {out}")
    writer.start()
    try:
        stats = _run(lm, plan, todo, options, progress, writer, rows_per_shard(lm.num_layers, lm.hidden_size, options))
    except BaseException:
        # Keep every finished shard so that a re-run resumes; never mark the store complete.
        writer.close(complete=False)
        raise
    writer.flush()
    lens_tokens = decode_tokens(lm, all_lens_ids(out))
    writer.close(lens_tokens=lens_tokens, complete=True, stats=stats)
    return read_manifest(out)


def _clear_store(out: Path) -> None:
    for shard in shard_files(out / "shards"):
        shard.unlink()
        shard.with_suffix(".sha256").unlink(missing_ok=True)
    for name in ("manifest.json", "prompts.jsonl", "lens_tokens.json"):
        (out / name).unlink(missing_ok=True)


def _run(lm, plan: ExtractPlan, todo, options, progress, sink, rows_per_shard) -> dict[str, Any]:
    formatted, lengths = plan.formatted, plan.lengths
    longest = max((lengths[r] for r in todo), default=1)
    budget = options.max_batch_tokens or auto_batch_tokens(lm, longest)
    batches = plan_batches(lengths, todo, options.batch_size, budget, EXTRACT_BATCH_COST)
    started = time.perf_counter()
    prefix = build_shared_prefix(lm, shared_prefix_ids(plan, options) or []) if todo else None
    n_tokens = n_padded = 0
    pending: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = []
    shard_seconds = options.shard_seconds if rows_per_shard < 10**9 else 0.0  # in memory: no shards to cut
    opened = 0.0

    def flush() -> None:
        if not pending:
            return
        rows = [r for p in pending for r in p[0]]
        sink.put(np.array(rows), torch.cat([p[1] for p in pending]).float().numpy(),
                 torch.cat([p[2] for p in pending]).numpy(), torch.cat([p[3] for p in pending]).numpy(),
                 plan.rows_info(rows))
        pending.clear()
        release_free_memory()

    with progress_bar("extract", total=len(todo), enabled=progress) as advance, torch.inference_mode():
        for batch in batches:
            began = _clock()
            states = forward_last_states(lm, [formatted[r].ids for r in batch], prefix)
            ids, logits = lens_topk(lm, states, options.k)
            if pending and sum(len(p[0]) for p in pending) + len(batch) > rows_per_shard:
                flush()  # shards end on batch boundaries: a resumed run batches the rest as an uninterrupted one
            if not pending:
                opened = began  # the shard's work starts with its first batch's forward pass
            pending.append((batch, states, ids, logits))
            n_tokens += sum(lengths[r] for r in batch)
            n_padded += len(batch) * (max(lengths[r] for r in batch) - (prefix.length if prefix is not None else 0))
            if sum(len(p[0]) for p in pending) >= rows_per_shard or (
                    shard_seconds > 0 and _clock() - opened >= shard_seconds):
                flush()  # whichever bound comes first: rows (and bytes, in rows_per_shard) or seconds of work
            advance(len(batch))
        flush()
    elapsed = time.perf_counter() - started
    skipped = prefix.length * len(todo) - prefix.length if prefix is not None else 0
    return {"prompts": len(todo), "tokens": n_tokens, "tokens_run": n_tokens - skipped,
            "tokens_padded": n_padded,  # pushed through the backbone per batch, padding included
            "shared_prefix_tokens": prefix.length if prefix is not None else 0, "seconds": round(elapsed, 3),
            "prompts_per_s": round(len(todo) / elapsed, 3) if elapsed > 0 and todo else None,
            "batch_size": options.batch_size, "max_batch_tokens": budget}


class _MemorySink:
    def __init__(self) -> None:
        self.parts: list[tuple] = []

    def put(self, rows, hidden, lens_ids, lens_logits, info) -> None:
        self.parts.append((rows, hidden, lens_ids, lens_logits, info))


def _extract_in_memory(lm, plan: ExtractPlan, options, progress) -> ActivationStore:
    planned, manifest = plan.planned, plan.manifest
    sink = _MemorySink()
    stats = _run(lm, plan, list(range(len(planned))), options, progress, sink, rows_per_shard=10**9)
    rows = np.concatenate([p[0] for p in sink.parts])
    order = np.argsort(rows)
    info = [i for p in sink.parts for i in p[4]]
    records = []
    for pos in order:
        record = dict(planned[int(rows[pos])])
        record.update(info[int(pos)])
        record["row"] = int(rows[pos])
        records.append(record)
    lens_ids = np.concatenate([p[2] for p in sink.parts])[order]
    manifest = {**manifest, "status": "complete", "runs": [stats], "n_prompts": len(planned)}
    return ActivationStore(
        hidden=np.concatenate([p[1] for p in sink.parts])[order],
        records=records,
        manifest=manifest,
        lens_ids=lens_ids,
        lens_logits=np.concatenate([p[3] for p in sink.parts])[order],
        lens_tokens=decode_tokens(lm, np.unique(lens_ids)),
    )


def all_lens_ids(out: Path) -> np.ndarray:
    from safetensors import safe_open

    found: list[np.ndarray] = []
    for shard in shard_files(out / "shards"):
        with safe_open(str(shard), framework="numpy") as fh:
            found.append(np.unique(fh.get_tensor("lens_ids")))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def decode_tokens(lm: LoadedModel, token_ids: np.ndarray) -> dict[int, str]:
    return {int(t): lm.tokenizer.decode([int(t)]) for t in token_ids}
