"""The contract every analysis follows: options, a result, a workflow function and a pipeline step.

An analysis ``X`` lives in one module ``ihs/workflows/X.py`` holding:

* ``XOptions``: a keyword-only dataclass; each field declared with :func:`opt` carries its help
  text, which the CLI shows (``--help``) and ``ihs run --print-config`` writes as a comment.
* ``XResult``: a :class:`Result` (the JSON payload plus typed accessors) with ``save(folder)`` and
  ``load(folder)``; the report's section reads it, never the raw file.
* ``run_X(inputs, options) -> XResult``: the one function that computes. The CLI command
  (``ihs/cli/X.py``) and the ``ihs run`` step both call it and nothing else computes.
* ``XStep``: a :class:`Step` telling the pipeline its name, options, dependencies, cache key and
  how to run inside ``ihs run``. It is registered by one line in ``ihs/workflows/__init__.py``.

The pipeline gives each step a :class:`StepContext` (what the run knows: config, model handle,
prompts, the keys of steps already run, where to write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ihs.errors import IhsError
from ihs.io import read_json, write_json

R = TypeVar("R", bound="Result")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text (the one place an option is documented)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def help_of(cls: type, name: str) -> str:
    """The help text of option ``name`` of the options dataclass ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no option {name!r}")


@dataclass(kw_only=True)
class FormatOptions:
    """How prompts are formatted for the model."""

    chat: bool | None = opt(None, "Use the chat template (null: when the tokenizer has one).")
    system_prompt: str | None = opt(None, "System prompt for chat formatting.")


def format_flags(fmt: FormatOptions | None) -> list[str]:
    """The command-line flags that give ``fmt`` (for the canonical command a result records)."""
    flags: list[str] = []
    if fmt is not None and fmt.chat is not None:
        flags.append("--chat" if fmt.chat else "--no-chat")
    if fmt is not None and fmt.system_prompt:
        flags += ["--system-prompt", fmt.system_prompt]
    return flags


class Skip(Exception):
    """A step that does not apply to this run (e.g. no jailbreak data); its message says why."""


class Result:
    """A workflow's result: a JSON-ready payload in ``data``, saved as ``FILE`` in a folder.

    Subclasses add typed accessors for what a reader (the report, the CLI summary) needs, and may
    write figures in :meth:`save`.
    """

    FILE: ClassVar[str] = "result.json"

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def save(self, folder: str | Path, **_: Any) -> list[Path]:
        """Write the payload to ``folder/FILE``; returns the files written."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise IhsError(f"--out {folder} is a file; give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / self.FILE, self.data)
        return [folder / self.FILE]

    @classmethod
    def load(cls: type[R], folder: str | Path) -> R:
        return cls(read_json(Path(folder) / cls.FILE))

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return (Path(folder) / cls.FILE).is_file()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(list(self.data)[:6])}{', ...' if len(self.data) > 6 else ''})"


class RowsResult(Result):
    """A result that also carries per-prompt rows (generations), saved beside its JSON by the subclass."""

    def __init__(self, data: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
        super().__init__(data)
        self.rows = rows if rows is not None else []


@dataclass
class StepContext:
    """What a step of ``ihs run`` may use: the run's config, the model, the prompts, earlier keys, folders."""

    config: Any  # ihs.pipeline.config.RunConfig
    model: Any  # ihs.models.handle.ModelHandle
    model_dir: Path
    records: list[Any]  # all prompts, cleaned, in data order
    keys: dict[str, str] = field(default_factory=dict)
    progress: bool = True

    def folder(self, step: str) -> Path:
        return self.model_dir / step

    def options(self, step: str) -> Any:
        """The options dataclass of ``step`` in this run's config."""
        return getattr(self.config, step)

    def select(self, classes: Sequence[str], per_class: int | None, skip: int = 0) -> list[Any]:
        """The prompts of ``classes`` after the first ``skip`` of each class, at most ``per_class`` each."""
        seen: dict[str, int] = {}
        chosen = []
        for r in self.records:
            if r.label not in classes:
                continue
            i = seen.get(r.label, 0)
            seen[r.label] = i + 1
            if i >= skip and (per_class is None or i < skip + per_class):
                chosen.append(r)
        return chosen

    def extract_records(self) -> list[Any]:
        return self.select(list(self.config.data), self.config.limit)

    def store_dir(self) -> Path:
        return self.folder("extract") / "store"

    def load_store(self) -> Any:
        from ihs.store import ActivationStore

        return ActivationStore.load(self.store_dir())

    def tokenizer(self, manifest: dict[str, Any]) -> Any:
        """The model's tokenizer: the loaded model's if loaded, else from local files (never loads weights)."""
        if self.model.loaded is not None:
            return self.model.loaded.tokenizer
        from ihs.models.loading import load_tokenizer

        return load_tokenizer(manifest)

    def gen_options(self, max_new_tokens: int, batch_size: int) -> Any:
        from ihs.generation import GenerateOptions

        fmt = self.config.format
        return GenerateOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=fmt.chat,
                               system_prompt=fmt.system_prompt)

    def model_part(self) -> dict[str, Any]:
        """The part of a cache key that names the model, its dtype and the prompt formatting."""
        return {"fingerprint": self.model.fingerprint, "dtype": self.model.dtype,
                "format": dataclasses.asdict(self.config.format)}

    @staticmethod
    def command(*parts: str) -> str:
        return shlex.join(["ihs", *parts])


class Step:
    """One analysis inside ``ihs run``.

    ``name`` is the step's folder and config section; ``options`` its options dataclass (None: no
    section); ``depends`` the steps whose outputs it reads; ``default`` whether it runs when the
    config does not list analyses (slow steps say False and run with ``--analyses all``);
    ``help`` the config section's comment. :meth:`key` returns everything the result depends on
    besides the model and prompts named there (hashed with the ihs version into the cache key);
    :meth:`run` writes the outputs into ``folder`` and returns a small summary for ``step.json``
    whose ``outputs`` lists the files that must exist for the step to count as cached.
    """

    name: ClassVar[str]
    options: ClassVar[type | None] = None
    depends: ClassVar[tuple[str, ...]] = ()
    default: ClassVar[bool] = True
    help: ClassVar[str] = ""

    def key(self, ctx: StepContext) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        raise NotImplementedError


def records_digest(records: Sequence[Any]) -> str:
    """A short hash of the exact prompts (ids, labels, texts, tags), for cache keys."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.id, r.label, r.text, r.tags], sort_keys=True, default=str,
                                 ensure_ascii=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:20]


def file_digest(path: str | Path | None) -> str | None:
    """A short hash of a file's bytes (a lexicon, a config), or None when there is no file."""
    if path and Path(path).is_file():
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return None
