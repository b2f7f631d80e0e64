"""ActivationStore: every layer's last-token state and logit-lens top-k, on disk.

Layout of a store directory (format version 2)::

    manifest.json        model identity, formatting, shapes, options, status; when complete, ``shards``:
                         {file name: {"sha256": hex digest of the file, "rows": n}} for every shard
    prompts.jsonl        the planned prompts, one record per row, in row order
    shards/*.safetensors rows, hidden (n, L+1, d), lens_ids / lens_logits (n, L+1, k);
                         per-row formatting details in the file's metadata
    shards/*.sha256      the sha256 of the shard of the same name (written before the shard appears)
    lens_tokens.json     decoded text of every token id that appears in lens_ids
    .lock                while a writer runs: its pid and host (JSON); a second writer refuses
    quarantine/          shards found damaged on resume, moved aside (their rows are recomputed)

Each shard is written to a temporary name, its checksum file is written, and the
shard is renamed into place, so a killed process leaves either a whole, checksummed
shard or none. A shard closes at whichever bound comes first: rows
(``ExtractOptions.shard_rows``, 64), bytes (``shard_mb``, 32) or seconds of work since it
opened (``shard_seconds``, 30), so a kill loses at most one shard, about 30 s, of work
(more only when one batch alone takes longer). A re-run verifies every shard
against its checksum, moves a damaged or unverifiable one to ``quarantine/`` (naming
it), and computes only the missing rows. Loading a complete store verifies every
shard against the manifest's table; any difference is a one-line :class:`StoreError`.
The manifest must be a JSON object with at least ``model``, ``num_layers``,
``hidden_size`` and ``status``. Stores of format version 1 (no checksums) still load.

Layer index 0 is the embedding output (the input of block 1) and index i the output
of decoder block i, before the final norm.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ihs.errors import StoreError
from ihs.store_integrity import (
    SHARDS,
    StoreLock,
    checksum_file,
    file_sha256,
    one_line,
    quarantine_damaged,
    read_done_rows,
    recorded_sha256,
    shard_files,
    shard_rows,
    verify_shards,
)

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PROMPTS = "prompts.jsonl"
LENS_TOKENS = "lens_tokens.json"
REQUIRED_KEYS = {"model": dict, "num_layers": int, "hidden_size": int, "status": str}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The store's manifest (None when there is none); a malformed one is a one-line :class:`StoreError`."""
    manifest = Path(path) / MANIFEST
    if not manifest.exists():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{manifest} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise StoreError(f"{manifest} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{manifest} must hold a JSON object, not a {type(data).__name__}; "
                         "the store is damaged: re-extract it")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise StoreError(f"{manifest} has no valid {key!r} ({kind.__name__}); the store is damaged: "
                             "re-extract it")
    if not isinstance(data.get("shards", {}), dict):
        raise StoreError(f"{manifest}: 'shards' must be an object; the store is damaged: re-extract it")
    return data


def store_problem(path: str | Path) -> str | None:
    """Why the store at ``path`` is not complete and intact (None when it is): what a cache check asks."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
        if manifest is None:
            return f"no {MANIFEST}"
        if manifest.get("status") != "complete":
            return f"status {manifest.get('status')!r}"
        n_planned = len(_read_prompts(path / PROMPTS))
        verify_shards(path, manifest)
        n_rows = sum(len(shard_rows(s)) for s in shard_files(path / SHARDS))
    except StoreError as exc:
        return str(exc)
    return None if n_rows == n_planned else f"{n_rows} of {n_planned} rows present"


@dataclass
class ActivationStore:
    """Last-position states of N prompts at every layer boundary, with labels and lens top-k.

    ``hidden`` has shape (N, L+1, d); ``lens_ids`` and ``lens_logits`` (N, L+1, k);
    ``records`` holds one dict per prompt (id, text, label, dataset, tags, formatted,
    n_tokens, truncated).
    """

    hidden: np.ndarray
    records: list[dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)
    lens_ids: np.ndarray | None = None
    lens_logits: np.ndarray | None = None
    lens_tokens: dict[int, str] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.hidden.ndim != 3:
            raise StoreError(f"hidden must have shape (N, L+1, d), got {self.hidden.shape}")
        if len(self.records) != self.hidden.shape[0]:
            raise StoreError(f"{len(self.records)} records for {self.hidden.shape[0]} rows of hidden states")

    # -- views -------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        return np.array([r["label"] for r in self.records], dtype=object)

    @property
    def prompts(self) -> list[str]:
        return [r["text"] for r in self.records]

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def num_layers(self) -> int:
        """Number of decoder blocks L (the store has L+1 layer indices)."""
        return self.hidden.shape[1] - 1

    @property
    def hidden_size(self) -> int:
        return self.hidden.shape[2]

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def tag(self, key: str, default: Any = None) -> list[Any]:
        return [r.get("tags", {}).get(key, default) for r in self.records]

    def token_text(self, token_id: int) -> str:
        return self.lens_tokens.get(int(token_id), f"<{int(token_id)}>")

    def subset(self, index: np.ndarray | Sequence[int] | Sequence[bool]) -> ActivationStore:
        """Rows selected by an index or boolean mask, as a new in-memory store."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return ActivationStore(
            hidden=self.hidden[idx],
            records=[self.records[i] for i in idx],
            manifest=dict(self.manifest),
            lens_ids=None if self.lens_ids is None else self.lens_ids[idx],
            lens_logits=None if self.lens_logits is None else self.lens_logits[idx],
            lens_tokens=self.lens_tokens,
            path=self.path,
        )

    def where_label(self, *labels: str) -> ActivationStore:
        return self.subset(np.isin(self.labels, list(labels)))

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        hidden: np.ndarray,
        labels: Sequence[str],
        prompts: Sequence[str] | None = None,
        lens_ids: np.ndarray | None = None,
        lens_logits: np.ndarray | None = None,
        lens_tokens: dict[int, str] | None = None,
        manifest: dict[str, Any] | None = None,
        tags: Sequence[dict[str, Any]] | None = None,
    ) -> ActivationStore:
        """An in-memory store from plain arrays (tests, synthetic data, other tools' output)."""
        from ihs.data.records import prompt_id

        n = hidden.shape[0]
        prompts = list(prompts) if prompts is not None else [f"prompt {i}" for i in range(n)]
        records = [
            {
                "id": prompt_id(prompts[i]),
                "text": prompts[i],
                "label": str(labels[i]),
                "dataset": "arrays",
                "tags": dict(tags[i]) if tags is not None else {},
                "row": i,
            }
            for i in range(n)
        ]
        base = {"num_layers": hidden.shape[1] - 1, "hidden_size": hidden.shape[2], "model": {"id": "arrays"}}
        base.update(manifest or {})
        return cls(hidden=np.asarray(hidden), records=records, manifest=base, lens_ids=lens_ids,
                   lens_logits=lens_logits, lens_tokens=dict(lens_tokens or {}))

    @classmethod
    def load(cls, path: str | Path, allow_partial: bool = False) -> ActivationStore:
        """Read a store written by ``ihs extract``; refuses incomplete stores unless asked."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"no activation store at {path} (directory not found)")
        manifest = read_manifest(path)
        if manifest is None:
            raise StoreError(f"{path} is not an activation store (no {MANIFEST})")
        planned = _read_prompts(path / PROMPTS)
        if manifest.get("status") == "complete":
            verify_shards(path, manifest)
        rows, hidden, lens_ids, lens_logits, extras = _read_shards(path / SHARDS)
        n_planned = len(planned)
        if len(rows) != len(set(rows.tolist())):
            raise StoreError(f"store {path} has duplicate rows across shards")
        if len(rows) < n_planned and not allow_partial:
            raise StoreError(
                f"store {path} is incomplete: {len(rows)} of {n_planned} prompts extracted; "
                "re-run the same extract command to resume"
            )
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        records = []
        for position, row in zip(order, rows, strict=True):
            record = dict(planned[int(row)])
            record.update(extras[int(position)])
            record["row"] = int(row)
            records.append(record)
        tokens_file = path / LENS_TOKENS
        lens_tokens: dict[int, str] = {}
        if tokens_file.exists():
            lens_tokens = {int(k): v for k, v in json.loads(tokens_file.read_text(encoding="utf-8")).items()}
        return cls(
            hidden=hidden[order],
            records=records,
            manifest={k: v for k, v in manifest.items() if k != "shards"},  # the shard table is file layout
            lens_ids=lens_ids[order] if lens_ids is not None else None,
            lens_logits=lens_logits[order] if lens_logits is not None else None,
            lens_tokens=lens_tokens,
            path=path,
        )


def _read_prompts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise StoreError(f"store is missing {path.name}")
    try:
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as exc:
        raise StoreError(f"store file {path} is unreadable ({one_line(exc)}); re-extract the store") from None
    if not all(isinstance(r, dict) and "text" in r and "label" in r for r in rows):
        raise StoreError(f"store file {path} holds a row that is not a prompt record; re-extract the store")
    return rows


def _read_shards(shard_dir: Path):
    rows, hidden, lens_ids, lens_logits, extras = [], [], [], [], []
    for shard in shard_files(shard_dir):
        try:
            with safe_open(str(shard), framework="numpy") as fh:
                keys = set(fh.keys())
                rows.append(fh.get_tensor("rows"))
                hidden.append(fh.get_tensor("hidden").astype(np.float32, copy=False))
                if "lens_ids" in keys:
                    lens_ids.append(fh.get_tensor("lens_ids"))
                    lens_logits.append(fh.get_tensor("lens_logits"))
                meta = fh.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
            raise StoreError(f"shard {shard} is unreadable ({one_line(exc)}); re-run the extract command "
                             "to recompute it") from None
        extras.extend(json.loads(meta.get("rows_info", "[]")))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0, 0), np.float32), None, None, []
    return (
        np.concatenate(rows),
        np.concatenate(hidden),
        np.concatenate(lens_ids) if lens_ids else None,
        np.concatenate(lens_logits) if lens_logits else None,
        extras,
    )


class StoreWriter:
    """Writes a store shard by shard on a background thread, so the forward loop never waits on disk."""

    def __init__(self, path: Path, manifest: dict[str, Any], records: Sequence[dict[str, Any]],
                 store_dtype: str = "float32") -> None:
        self.path = Path(path)
        self.shard_dir = self.path / SHARDS
        self.manifest = manifest
        self.store_dtype = np.dtype(store_dtype)
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._next_shard = 0
        self._thread: threading.Thread | None = None
        self.lock = StoreLock(self.path).acquire()
        try:
            self._prepare(records)
        except BaseException:
            self.lock.release()
            raise

    @staticmethod
    def compatible(existing: dict[str, Any], manifest: dict[str, Any]) -> str | None:
        """Why an existing store cannot be resumed with ``manifest`` (None when it can)."""
        old_model, new_model = existing.get("model", {}), manifest.get("model", {})
        if old_model.get("fingerprint") != new_model.get("fingerprint"):
            return (f"it holds a store of another model ({old_model.get('id')}, "
                    f"{old_model.get('fingerprint')}) than {new_model.get('id')} ({new_model.get('fingerprint')})")
        if existing.get("plan_fingerprint") != manifest.get("plan_fingerprint"):
            return "it holds a store of the same model with other prompts or options"
        return None

    def _prepare(self, records: Sequence[dict[str, Any]]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard_dir.mkdir(exist_ok=True)
        for stale in self.shard_dir.glob(".*tmp*"):
            stale.unlink(missing_ok=True)
        existing = read_manifest(self.path)
        if existing is None:
            _atomic_write_text(self.path / PROMPTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self.manifest["status"] = "in_progress"
            _atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2))
        else:
            from ihs.progress import console

            moved = quarantine_damaged(self.path, existing, say=lambda m: console.print(f"warning: {m}",
                                                                                       markup=False))
            if moved:
                existing["status"] = "in_progress"
                existing.pop("shards", None)
                _atomic_write_text(self.path / MANIFEST, json.dumps(existing, indent=2))
        existing_shards = shard_files(self.shard_dir)
        if existing_shards:
            self._next_shard = int(existing_shards[-1].stem.split("-")[1]) + 1

    def done_rows(self) -> set[int]:
        return read_done_rows(self.shard_dir)

    def start(self) -> StoreWriter:
        self._thread = threading.Thread(target=self._run, name="ihs-store-writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as exc:  # surfaced on the main thread by put()/close()
                self._error = exc

    def put(self, rows: np.ndarray, hidden: np.ndarray, lens_ids: np.ndarray, lens_logits: np.ndarray,
            rows_info: list[dict[str, Any]]) -> None:
        if self._error is not None:
            raise StoreError(f"writing the store failed: {self._error}") from self._error
        index = self._next_shard
        self._next_shard += 1
        self._queue.put((index, rows, hidden, lens_ids, lens_logits, rows_info))

    def _write(self, index, rows, hidden, lens_ids, lens_logits, rows_info) -> None:
        write_shard(self.shard_dir, index, rows, hidden, lens_ids, lens_logits, rows_info, self.store_dtype)

    @property
    def next_shard(self) -> int:
        """Index the next shard gets (one past the highest shard on disk when resuming)."""
        return self._next_shard

    def flush(self) -> None:
        """Wait until every queued shard is on disk (stops the writer thread)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise StoreError(f"writing the store failed: {self._error}") from self._error

    def close(self, lens_tokens: dict[int, str] | None = None, complete: bool = True,
              stats: dict[str, Any] | None = None) -> None:
        """Flush pending shards; when complete, write lens tokens, the shards' checksums and mark it complete.

        The lock is released in every case."""
        try:
            self.flush()
            if complete:
                self._complete(lens_tokens, stats)
        finally:
            self.lock.release()

    def _complete(self, lens_tokens: dict[int, str] | None, stats: dict[str, Any] | None) -> None:
        if lens_tokens is not None:
            tokens_path = self.path / LENS_TOKENS
            merged: dict[str, str] = {}
            if tokens_path.exists():
                merged.update(json.loads(tokens_path.read_text(encoding="utf-8")))
            merged.update({str(k): v for k, v in lens_tokens.items()})
            _atomic_write_text(tokens_path, json.dumps(merged, ensure_ascii=False))
        manifest = read_manifest(self.path) or self.manifest
        manifest["status"] = "complete"
        manifest["completed"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["n_prompts"] = len(_read_prompts(self.path / PROMPTS))
        manifest["format_version"] = FORMAT_VERSION
        table = {}
        for shard in shard_files(self.shard_dir):
            digest = recorded_sha256(shard) or file_sha256(shard)
            table[shard.name] = {"sha256": digest, "rows": len(shard_rows(shard))}
        manifest["shards"] = table
        if stats:
            manifest.setdefault("runs", []).append(stats)
        _atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=2))


def write_shard(shard_dir: Path, index: int, rows: np.ndarray, hidden: np.ndarray, lens_ids: np.ndarray,
                lens_logits: np.ndarray, rows_info: list[dict[str, Any]], store_dtype: str | np.dtype = "float32") -> Path:
    """Write one shard atomically (temporary name, then rename): a killed writer leaves all of it or none."""
    final = Path(shard_dir) / f"shard-{index:06d}.safetensors"
    tmp = Path(shard_dir) / f".shard-{index:06d}.tmp-{os.getpid()}"
    tensors = {
        "rows": np.ascontiguousarray(rows, dtype=np.int64),
        "hidden": np.ascontiguousarray(hidden, dtype=np.dtype(store_dtype)),
        "lens_ids": np.ascontiguousarray(lens_ids, dtype=np.int32),
        "lens_logits": np.ascontiguousarray(lens_logits, dtype=np.float32),
    }
    save_file(tensors, str(tmp), metadata={"rows_info": json.dumps(rows_info, ensure_ascii=False)})
    _atomic_write_text(checksum_file(final), file_sha256(tmp) + "\n")  # the checksum lands before the shard
    os.replace(tmp, final)
    return final


def iter_batches(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])
