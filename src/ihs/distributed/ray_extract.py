"""Distributed extraction on Ray: actors load the model once, compute length-sorted work units, write shards.

The driver plans exactly as :func:`ihs.extraction.extract` does (same formatting,
same length-sorted batches from :func:`ihs.batching.plan_batches`, same token
budget), groups consecutive batches into work units of about a shard each, and
hands units to a pool of actors, longest first, one at a time per actor. Each
actor runs :func:`ihs.extraction.forward_last_states` and the logit lens on its
units and writes every unit as one shard straight into ``OUT/shards/``
(atomically, as the single-process writer does), so the store directory must be
on a filesystem that the driver and every worker see. The driver then writes the
lens tokens and marks the manifest complete: the result is an ordinary store,
read back in row order, equal to what a single-process run writes.

Resuming works as for ``ihs extract``: rows already in shards are skipped. An
actor that dies has its unit handed to the surviving actors; when none survive,
the driver stops with every finished shard kept, and re-running the same command
computes only the rest.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ihs.batching import EXTRACT_BATCH_COST, as_record_dict, plan_batches
from ihs.errors import IhsError, StoreError
from ihs.extraction import (
    ExtractOptions,
    ExtractPlan,
    all_lens_ids,
    open_store,
    rows_per_shard,
    shared_prefix_ids,
)
from ihs.progress import console, progress_bar
from ihs.store import ActivationStore

LOCAL = "local"


@dataclass
class RayOptions:
    """Where and how wide to run. ``address`` None or ``"local"`` starts a private cluster on this machine."""

    address: str | None = None
    actors: int = 2
    threads: int = 1  # CPUs (and torch threads) per actor
    gpus: float = 0.0  # GPUs per actor; with gpus > 0 the model loads on the actor's GPU
    unit_rows: int | None = None  # rows per work unit (= per shard); default: a shard, split so each actor gets >= 4
    object_store_mb: int = 256  # only for a local cluster; shards go to disk, not through the object store
    exit_after_units: dict[int, int] = field(default_factory=dict)  # tests only: actor i exits after n units


def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports
    try:
        import ray
    except ImportError:
        raise IhsError("--ray needs Ray: pip install -e '.[ray]' (or pip install ray)") from None
    return ray


def connect(address: str | None, num_cpus: int, object_store_mb: int = 256) -> bool:
    """Join the cluster at ``address``, or start a local one on loopback; True when this call started it."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address in (None, "", LOCAL):
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=object_store_mb * 2**20, configure_logging=False, log_to_driver=False)
        return True
    try:
        ray.init(address=address, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IhsError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return False


class ExtractWorker:
    """One actor: loads the model once, then computes work units and writes them as shards."""

    def __init__(self, model: dict[str, Any] | Callable[[], Any], options: ExtractOptions, threads: int,
                 exit_after_units: int | None = None) -> None:
        import torch

        from ihs.models.loading import load_model

        torch.set_num_threads(max(1, int(threads)))
        if callable(model):
            self.lm = model()
        else:
            spec = dict(model)
            if spec.get("device") is None and spec.get("device_map") is None and torch.cuda.is_available():
                spec["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPUs
            self.lm = load_model(spec.pop("name"), **spec)
        self.options = options
        self.exit_after_units = exit_after_units
        self.units_done = 0
        self.prefix = None  # the plan's shared opening, built once per actor

    def describe(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.lm.input_device),
                "num_layers": self.lm.num_layers, "hidden_size": self.lm.hidden_size}

    def plan(self, records: list[dict[str, Any]]) -> ExtractPlan:
        from ihs.extraction import plan_extraction

        return plan_extraction(self.lm, records, self.options)

    def batch_budget(self, longest: int) -> int:
        from ihs.batching import auto_batch_tokens

        return self.options.max_batch_tokens or auto_batch_tokens(self.lm, longest)

    def _prefix(self, prefix_ids: list[int] | None):
        from ihs.prefix_cache import build_shared_prefix

        if not prefix_ids:
            return None
        if self.prefix is None or self.prefix.ids != list(prefix_ids):
            # the same fallback as a single process: no cache if the model cannot take one
            self.prefix = build_shared_prefix(self.lm, prefix_ids)
        return self.prefix

    def run_unit(self, shard_dir: str, index: int, batches: list[list[int]], ids: dict[int, list[int]],
                 rows_info: list[dict[str, Any]], prefix_ids: list[int] | None = None) -> dict[str, Any]:
        import torch

        from ihs.extraction import forward_last_states, lens_topk, release_free_memory
        from ihs.store import write_shard

        if self.exit_after_units is not None and self.units_done >= self.exit_after_units:
            os._exit(1)  # tests: a worker that dies midway, with a unit in flight
        started = time.perf_counter()
        rows, hidden, lens_ids, lens_logits = [], [], [], []
        with torch.inference_mode():
            for batch in batches:
                states = forward_last_states(self.lm, [ids[r] for r in batch], self._prefix(prefix_ids))
                top_ids, top_logits = lens_topk(self.lm, states, self.options.k)
                rows.extend(batch)
                hidden.append(states.float().numpy())
                lens_ids.append(top_ids.numpy())
                lens_logits.append(top_logits.numpy())
        path = write_shard(Path(shard_dir), index, np.array(rows), np.concatenate(hidden), np.concatenate(lens_ids),
                           np.concatenate(lens_logits), rows_info, self.options.store_dtype)
        self.units_done += 1
        release_free_memory()
        return {"index": index, "path": str(path), "rows": len(rows), "host": socket.gethostname(),
                "tokens": sum(len(ids[r]) for r in rows), "seconds": time.perf_counter() - started}

    def decode(self, token_ids: list[int]) -> dict[int, str]:
        from ihs.extraction import decode_tokens

        return decode_tokens(self.lm, np.asarray(token_ids, dtype=np.int64))


def _cause(exc: BaseException) -> str:
    """The innermost "SomeError: message" line of a Ray error (whose text wraps the remote traceback)."""
    found = re.findall(r"^\s*(?:[\w.]+\.)?(\w*Error): (.+)$", str(exc), flags=re.MULTILINE)
    if found:
        name, message = found[-1]
        return f"{name}: {message.strip()}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def work_units(batches: list[list[int]], unit_rows: int) -> list[list[list[int]]]:
    """Consecutive batches grouped into units of at least ``unit_rows`` rows (the last may be smaller)."""
    units: list[list[list[int]]] = []
    current: list[list[int]] = []
    for batch in batches:
        current.append(batch)
        if sum(len(b) for b in current) >= unit_rows:
            units.append(current)
            current = []
    if current:
        units.append(current)
    return units


def ray_extract(
    model: dict[str, Any] | Callable[[], Any],
    records: Sequence[Any],
    out: str | Path,
    options: ExtractOptions | None = None,
    ray_options: RayOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ActivationStore:
    """Extract like :func:`ihs.extraction.extract`, on a pool of Ray actors; returns the merged store.

    ``model`` is the keyword arguments of :func:`ihs.models.loading.load_model` with the model
    under ``"name"`` (each actor loads it), or a picklable function returning a ``LoadedModel``.
    """
    options = options or ExtractOptions()
    ray_options = ray_options or RayOptions()
    if ray_options.actors < 1 or ray_options.threads < 1:
        raise IhsError("--ray-actors and --ray-threads must be at least 1")
    recs = [as_record_dict(r) for r in records]
    if not recs:
        raise StoreError("nothing to extract: the prompt set is empty")
    ray = _import_ray()
    out = Path(out)
    started_here = connect(ray_options.address, ray_options.actors * ray_options.threads, ray_options.object_store_mb)
    remote_worker = ray.remote(ExtractWorker)
    actors: list[Any] = []
    try:
        for i in range(ray_options.actors):
            actors.append(remote_worker.options(num_cpus=ray_options.threads, num_gpus=ray_options.gpus,
                                                max_restarts=0).remote(
                model, options, ray_options.threads, ray_options.exit_after_units.get(i)))
        try:
            first = ray.get(actors[0].describe.remote())
        except ray.exceptions.RayError as exc:
            raise IhsError(f"the Ray actor could not load the model: {_cause(exc)}") from None
        plan: ExtractPlan = ray.get(actors[0].plan.remote(recs))
        writer = open_store(out, plan, options, overwrite)
        done = writer.done_rows()
        todo = [r for r in range(len(plan.planned)) if r not in done]
        if done:
            console.print(f"resuming: {len(done)} of {len(plan.planned)} prompts already in {out}")
        stats = _dispatch(ray, actors, plan, todo, out, writer.next_shard, options, ray_options, first, progress)
        lens_ids = all_lens_ids(out)
        live = [a for a in actors if a is not None]
        lens_tokens = ray.get(live[0].decode.remote(lens_ids.tolist()))
        writer.close(lens_tokens=lens_tokens, complete=True, stats=stats)
    finally:
        for actor in actors:
            if actor is not None:
                ray.kill(actor)
        if started_here:
            ray.shutdown()
    return ActivationStore.load(out)


def _dispatch(ray, actors: list[Any], plan: ExtractPlan, todo: list[int], out: Path, first_index: int,
              options: ExtractOptions, ray_options: RayOptions, first: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Hand units to idle actors (longest first) until all are written; survive actor deaths while any is left."""
    from ray.exceptions import RayActorError

    started = time.perf_counter()
    longest = max((plan.lengths[r] for r in todo), default=1)
    budget = ray.get(actors[0].batch_budget.remote(longest))
    batches = plan_batches(plan.lengths, todo, options.batch_size, budget, EXTRACT_BATCH_COST)
    shard_rows = rows_per_shard(first["num_layers"], first["hidden_size"], options)
    spread = -(-len(todo) // (4 * len(actors))) if todo else 1  # >= 4 units per actor when the set is small
    unit_rows = ray_options.unit_rows or max(1, min(shard_rows, spread))
    units = work_units(batches, unit_rows)
    # the same shared opening as a single-process run (computed over the whole plan), built once per actor
    prefix_ids = shared_prefix_ids(plan, options)
    n_prefix = len(prefix_ids or [])
    # Longest units first so that the last ones to finish are short (they come last in length order).
    queue = [(first_index + i, unit) for i, unit in reversed(list(enumerate(units)))]
    shard_dir = str(out / "shards")
    live = list(range(len(actors)))
    running: dict[Any, tuple[int, int, list[list[int]]]] = {}  # ref -> (actor, index, unit)
    failures: list[str] = []
    n_tokens = 0

    def submit(actor_no: int) -> None:
        index, unit = queue.pop(0)
        rows = [r for b in unit for r in b]
        ids = {r: plan.formatted[r].ids for r in rows}
        ref = actors[actor_no].run_unit.remote(shard_dir, index, unit, ids, plan.rows_info(rows), prefix_ids)
        running[ref] = (actor_no, index, unit)

    with progress_bar(f"extract (ray, {len(actors)} actors)", total=len(todo), enabled=progress) as advance:
        for actor_no in live:
            if queue:
                submit(actor_no)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            actor_no, index, unit = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                failures.append(f"actor {actor_no} died ({type(exc).__name__})")
                live.remove(actor_no)
                actors[actor_no] = None
                console.print(f"[yellow]warning:[/] Ray actor {actor_no} died; {len(live)} left")
                # Its unit goes to a survivor (same shard index, so a shard it did finish is just rewritten).
                queue.insert(0, (index, unit))
                for idle in [a for a in live if a not in {r[0] for r in running.values()}]:
                    if queue:
                        submit(idle)
                continue
            if not Path(result["path"]).exists():
                raise StoreError(f"shard {result['path']} written on {result['host']} is not visible here: "
                                 "--out must be on a filesystem shared by the driver and every Ray worker")
            n_tokens += result["tokens"]
            advance(result["rows"])
            if queue:
                submit(actor_no)
    if queue:
        left = sum(len(b) for _, unit in queue for b in unit)
        raise StoreError(f"every Ray actor died ({'; '.join(failures)}); {len(todo) - left} of {len(todo)} prompts "
                         f"are in {out}; re-run the same command to resume")
    elapsed = time.perf_counter() - started
    return {"prompts": len(todo), "tokens": n_tokens, "shared_prefix_tokens": n_prefix, "seconds": round(elapsed, 3),
            "prompts_per_s": round(len(todo) / elapsed, 3) if elapsed > 0 and todo else None,
            "batch_size": options.batch_size, "max_batch_tokens": budget,
            "ray": {"address": ray_options.address or LOCAL, "actors": len(actors), "threads_per_actor": ray_options.threads,
                    "gpus_per_actor": ray_options.gpus, "units": len(units), "unit_rows": unit_rows,
                    "actor_failures": failures}}
