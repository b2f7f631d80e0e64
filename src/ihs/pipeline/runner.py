"""Run every configured analysis for every model, step by step, cached by key.

For each model the registered steps run in order (``ihs.workflows.REGISTRY``). Each step writes its
outputs under ``OUT/<model>/<step>/`` with a ``step.json`` recording its *key*: a hash of everything
its result depends on (the model's identity and dtype, the exact prompts, the options, the keys of
the steps it reads, the ihs version). A step whose key matches a finished ``step.json`` whose
outputs exist is not recomputed; an interrupted extraction resumes from its finished shards. One
failing analysis is logged (traceback in ``OUT/run.log``) and does not lose the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

import ihs
from ihs.data.prepare import prepare
from ihs.errors import IhsError
from ihs.io import read_json, write_json
from ihs.models.handle import ModelHandle
from ihs.pipeline.config import default_config
from ihs.pipeline.layout import RunLayout, slug
from ihs.progress import console
from ihs.store import MANIFEST, store_problem
from ihs.workflows import steps
from ihs.workflows.base import Skip, Step, StepContext

log = logging.getLogger(__name__)


def step_key(**parts: Any) -> str:
    """A short stable hash of everything a step's result depends on (and the ihs version)."""
    text = json.dumps({"ihs_version": ihs.__version__, **parts}, sort_keys=True, default=str, ensure_ascii=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_step(folder: Path) -> dict[str, Any] | None:
    """A step's ``step.json``, or None when absent or unreadable."""
    try:
        return read_json(Path(folder) / "step.json")
    except IhsError:
        return None


@dataclass
class RunResult:
    out: Path
    index: dict[str, Any]
    report: Path | None = None  # set by whoever writes the report (ihs.run, ihs run)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(m["slug"], step) for m in self.index["models"] for step, s in m["steps"].items()
                if s["status"] == "failed"]


def steps_needed(config: Any) -> list[Step]:
    """The steps to run: the wanted analyses and what they depend on, in registry order."""
    by_name = {s.name: s for s in steps()}
    needed: set[str] = set()
    todo = list(config.wanted)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(by_name[name].depends)
    return [s for s in steps() if s.name in needed]


def choose_threads(requested: int | None) -> tuple[int, str]:
    """CPU threads for torch: the requested number, else torch's default unless other processes already
    keep the cores busy (1-minute load average at least the core count), where one thread is faster:
    threads that wait on each other at every matrix multiply lose most of their time slices."""
    import torch

    if requested is not None:
        if requested < 1:
            raise IhsError(f"config: model.threads must be at least 1, got {requested}")
        return requested, "as configured"
    default = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return default, "torch default"
    cores = os.cpu_count() or default
    if default > 1 and load >= cores:
        return 1, f"load average {load:.1f} on {cores} cores: other work keeps the cores busy"
    return default, f"torch default (load average {load:.1f} on {cores} cores)"


def run(config: Any | None = None, out: str | Path = "ihs-run", *, models: Sequence[Any] | None = None,
        progress: bool = True, force: Sequence[str] | bool = (), command: str | None = None) -> RunResult:
    """Run every configured analysis for every model into ``out`` (the report is written separately,
    by :func:`ihs.report.page.write_report`; the ``ihs run`` command does both).

    ``models`` overrides ``config.models`` and may hold loaded models (:class:`ihs.models.loading.LoadedModel`).
    ``force`` recomputes the named steps (``True``: all).
    """
    from ihs.pipeline.context import RunLog, torch_threads

    config = config if config is not None else default_config()
    config.validate()
    layout = RunLayout(out)
    if layout.out.exists() and not layout.out.is_dir():
        raise IhsError(f"--out {layout.out} is a file; give a folder")
    layout.out.mkdir(parents=True, exist_ok=True)
    todo = steps_needed(config)
    forced = {s.name for s in steps()} if force is True else set(force or ())
    refs = list(models) if models is not None else list(config.models)
    started = time.perf_counter()
    index: dict[str, Any] = {
        "ihs_version": ihs.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command or "ihs.pipeline.run()", "out": str(layout.out), "config": config.to_dict(),
        "steps": [s.name for s in todo], "models": [], "log": layout.run_log.name,
    }
    threads, why = choose_threads(config.model.threads)
    index["threads"] = {"torch": threads, "why": why}
    with RunLog(layout.run_log), torch_threads(threads) as before:
        log.info("ihs run %s into %s: models %s, steps %s", ihs.__version__, layout.out,
                 [str(getattr(r, "name", r)) for r in refs], index["steps"])
        if threads != before:
            console.print(f"torch threads: {threads} ({escape(why)})")
        specs = [f"{name}={spec}" for name, spec in config.data.items()]
        records, data_report = prepare(specs, limit=None)
        index["data"] = {"specs": specs, "cleaning": data_report["cleaning"], "limit": config.limit,
                         "counts": {c: sum(r.label == c for r in records) for c in config.data}}
        for number, ref in enumerate(refs, start=1):
            _run_model(config, layout, index, ModelHandle(ref, config.model), records, todo, forced, progress,
                       f"{number}/{len(refs)}")
        index["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json(layout.run_json, index, indent=2)
        log.info("run finished in %.1f s", time.perf_counter() - started)
    return RunResult(out=layout.out, index=index)


def _run_model(config: Any, layout: RunLayout, index: dict[str, Any], handle: ModelHandle, records: list[Any],
               todo: list[Step], forced: set[str], progress: bool, position: str) -> None:
    used = {m["slug"] for m in index["models"]}
    name = slug(handle.name)
    while name in used:
        name += "_"
    console.rule(f"[bold]model {position}: {escape(handle.name)}")
    log.info("model %s (%s) -> %s", handle.ref, handle.fingerprint, layout.model_dir(name))
    entry: dict[str, Any] = {"slug": name, **handle.describe(), "dir": name, "steps": {}}
    index["models"].append(entry)
    ctx = StepContext(config, handle, layout.model_dir(name), records, {}, progress)
    wanted = {s.name for s in todo}
    for step in steps():
        if step.name not in wanted:
            entry["steps"][step.name] = {"status": "disabled", "message": "not in analyses ("
                                         + ", ".join(config.wanted) + ")"}
            continue
        entry["steps"][step.name] = run_step(ctx, step, step.name in forced, entry["steps"])
        write_json(layout.run_json, index, indent=2)
    entry["model_loads"] = handle.loads


def _cached(folder: Path, key: str) -> dict[str, Any] | None:
    previous = read_step(folder)
    if (previous and previous.get("key") == key and previous.get("status") == "done"
            and all((folder / o).exists() for o in previous.get("outputs", []))
            and not any(store_problem((folder / o).parent) for o in previous.get("outputs", [])
                        if Path(o).name == MANIFEST)):  # a store must be complete and intact to count as cached
        return previous
    return None


def run_step(ctx: StepContext, step: Step, forced: bool, statuses: dict[str, Any]) -> dict[str, Any]:
    """Run one step (or reuse its cached result); returns its status entry for run.json."""
    label = escape(f"{ctx.model_dir.name} · {step.name}")
    blocked = [d for d in step.depends if statuses.get(d, {}).get("status") not in ("done", "cached")]
    if blocked:
        why = ", ".join(f"{d} {statuses.get(d, {}).get('status', 'missing')}" for d in blocked)
        console.print(f"[yellow]{label}: not run ({escape(why)})")
        log.warning("%s: not run (%s)", label, why)
        return {"status": "blocked", "message": f"needs {why.replace(' ', ': ', 1) if len(blocked) == 1 else why}"}
    folder = ctx.folder(step.name)
    try:
        inputs = step.key(ctx)
    except Skip as exc:
        console.print(f"[yellow]{label}: skipped: {escape(str(exc))}")
        log.info("%s: skipped: %s", label, exc)
        return {"status": "skipped", "message": str(exc)}
    key = ctx.keys[step.name] = step_key(step=step.name, **inputs)
    previous = None if forced else _cached(folder, key)
    if previous is not None:
        console.print(f"[green]{label}: cached[/] (computed in {previous.get('seconds', 0):.1f} s)")
        log.info("%s: cached (key %s)", label, key)
        return {"status": "cached", "key": key, "seconds": previous.get("seconds"), "finished": previous.get("finished")}
    if folder.exists() and step.name != "extract":  # extraction resumes from its finished shards
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold cyan]{label}[/]: running")
    log.info("%s: running (key %s)", label, key)
    return _execute(ctx, step, folder, key, inputs, label)


def _execute(ctx: StepContext, step: Step, folder: Path, key: str, inputs: dict[str, Any], label: str) -> dict[str, Any]:
    started = time.perf_counter()
    record: dict[str, Any] = {"step": step.name, "key": key, "inputs": inputs, "ihs_version": ihs.__version__}
    try:
        summary = step.run(ctx, folder)
    except Skip as exc:
        console.print(f"[yellow]{label}: skipped: {escape(str(exc))}")
        log.info("%s: skipped: %s", label, exc)
        return {"status": "skipped", "message": str(exc)}
    except KeyboardInterrupt:
        log.warning("%s: interrupted; re-run the same command to resume", label)
        raise
    except Exception as exc:  # noqa: BLE001 - one failing analysis must not lose the others
        seconds = round(time.perf_counter() - started, 2)
        message = f"{type(exc).__name__}: {exc}"
        log.error("%s failed after %.1f s: %s\n%s", label, seconds, message, traceback.format_exc(),
                  extra={"console": False})  # the traceback goes to run.log; the console gets the line below
        console.print(f"[red]{label} failed:[/] {escape(message)} (details in run.log)")
        write_json(folder / "step.json", {**record, "status": "failed", "error": message, "seconds": seconds})
        return {"status": "failed", "key": key, "message": message, "seconds": seconds}
    seconds = round(time.perf_counter() - started, 2)
    record.update({"status": "done", "seconds": seconds,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary})
    write_json(folder / "step.json", record)
    console.print(f"[green]{label}: done[/] in {seconds:.1f} s")
    log.info("%s: done in %.1f s", label, seconds)
    return {"status": "done", "key": key, "seconds": seconds, "finished": record["finished"]}
