"""Integrity of a store on disk: shard checksums, verification, quarantine of damaged shards, the writer lock.

The file format these serve is described in :mod:`ihs.store`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from ihs.errors import StoreError

SHARDS = "shards"
LOCK = ".lock"
QUARANTINE = "quarantine"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_file(shard: Path) -> Path:
    return shard.with_suffix(".sha256")


def recorded_sha256(shard: Path, manifest: dict[str, Any] | None = None) -> str | None:
    """The checksum recorded for ``shard``: the manifest's table first, then the shard's .sha256 file."""
    entry = ((manifest or {}).get("shards") or {}).get(shard.name)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    side = checksum_file(shard)
    try:
        return side.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def shard_problem(shard: Path, manifest: dict[str, Any] | None = None) -> str | None:
    """Why ``shard`` cannot be trusted (no checksum, checksum mismatch, unreadable), or None."""
    expected = recorded_sha256(shard, manifest)
    if expected is None:
        return "no checksum recorded"
    try:
        actual = file_sha256(shard)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if actual == expected else "checksum mismatch (damaged or truncated)"


def shard_files(shard_dir: Path) -> list[Path]:
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.glob("shard-*.safetensors"))


def read_done_rows(shard_dir: Path) -> set[int]:
    """Rows already present in shards (unreadable shards are a one-line :class:`StoreError`)."""
    done: set[int] = set()
    for shard in shard_files(shard_dir):
        done.update(int(r) for r in shard_rows(shard))
    return done


def quarantine_damaged(path: Path, manifest: dict[str, Any] | None = None,
                       say: Any = None) -> list[str]:
    """Move every shard that fails its checksum (or repeats rows) to ``quarantine/``; returns their names."""
    path = Path(path)
    moved: list[str] = []
    seen: set[int] = set()
    for shard in shard_files(path / SHARDS):
        problem = shard_problem(shard, manifest)
        if problem is None:
            try:
                rows = {int(r) for r in shard_rows(shard)}
            except StoreError:
                rows, problem = set(), "unreadable"
            if problem is None and rows & seen:
                problem = "rows already in another shard"
            seen |= rows
        if problem is None:
            continue
        target = path / QUARANTINE
        target.mkdir(exist_ok=True)
        os.replace(shard, target / f"{shard.name}.{int(time.time())}")
        checksum_file(shard).unlink(missing_ok=True)
        moved.append(shard.name)
        if say is not None:
            say(f"shard {shard.name} is damaged ({problem}): moved to {target}; its rows are recomputed")
    return moved


def verify_shards(path: Path, manifest: dict[str, Any]) -> None:
    """Every shard matches the manifest's checksum table (stores of format 1 have none: nothing to check)."""
    table = manifest.get("shards")
    if table is None:
        return
    present = {s.name: s for s in shard_files(path / SHARDS)}
    for name in sorted(set(table) - set(present)):
        raise StoreError(f"store {path}: shard {name} is missing; re-run the extract command to recompute it")
    for name, shard in present.items():
        if name not in table:
            raise StoreError(f"store {path}: shard {name} is not in the manifest; re-run the extract command")
        problem = shard_problem(shard, manifest)
        if problem:
            raise StoreError(f"store {path}: shard {name} is damaged ({problem}); re-run the extract command "
                             "to recompute it")


def shard_rows(shard: Path) -> np.ndarray:
    try:
        with safe_open(str(shard), framework="numpy") as fh:
            return fh.get_tensor("rows")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise StoreError(f"shard {shard} is unreadable ({one_line(exc)}); re-run the extract command "
                         "to recompute it") from None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class StoreLock:
    """``.lock`` in a store directory while a writer runs: one writer at a time; a dead holder's lock is taken over."""

    def __init__(self, path: Path) -> None:
        self.file = Path(path) / LOCK
        self.held = False

    def acquire(self) -> StoreLock:
        """Take the lock, or raise :class:`StoreError` naming the live holder's pid."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder_alive(holder):
                    raise StoreError(f"store {self.file.parent} is being written by pid {holder.get('pid')} on "
                                     f"{holder.get('host')} (lock {self.file}); wait for it to finish") from None
                stale = self.file.with_name(f"{LOCK}.stale-{os.getpid()}")  # take over a dead holder's lock
                try:
                    os.replace(self.file, stale)
                    stale.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(me))
            self.held = True
            return self
        raise StoreError(f"could not lock store {self.file.parent} (lock {self.file} keeps changing hands)")

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # unreadable or half written: treated as stale
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        """Drop the lock (only if this object holds it)."""
        if self.held:
            self.file.unlink(missing_ok=True)
            self.held = False


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether a lock holder still runs (a holder on another host is assumed alive; our own pid is stale)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    if pid == os.getpid():
        return False  # a writer of this process that ended without closing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
