"""Jailbreak workflow (claim 3): per jailbreak input, recognised as malicious early? middle layers negative?
refused?

The computing lives in :func:`ihs.analysis.jailbreak.jailbreak_analysis`; this module joins a store
(``ihs extract``) and judged generations (``ihs generate``) through it, saves ``jailbreak.json``
(group summaries), ``jailbreak_table.jsonl`` and ``jailbreak_table.csv`` (one row per input) and
``jailbreak.png``, and gives ``ihs run`` its ``jailbreak`` step.

>>> from ihs.workflows.jailbreak import JailbreakOptions, run_jailbreak
>>> result = run_jailbreak("runs/smol/store", "runs/smol/gen/generations.jsonl", JailbreakOptions())  # doctest: +SKIP
>>> result.save("runs/smol/jailbreak")                                                             # doctest: +SKIP
"""

from __future__ import annotations

import csv
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ihs.analysis.lens import text_of as lens_text_of
from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl, write_jsonl
from ihs.workflows.base import Result, Skip, Step, StepContext, file_digest, opt

CLASSES = ("normal", "malicious", "jailbreak")
TABLE = "jailbreak_table.jsonl"
TABLE_CSV = "jailbreak_table.csv"
FIGURE = "jailbreak.png"


@dataclass(kw_only=True)
class JailbreakOptions:
    """The per-input jailbreak analysis."""

    middle: str | None = opt(None, "Middle layers a:b, inclusive (null: in ihs run the lens's layers, else the "
                                   "middle third ceil(L/3):floor(2L/3)).")
    early_layer: int | None = opt(None, "Layer of the early probe verdict (null: ceil(L/6)).")
    classifier: str = opt("svm", "Probe: svm, logreg, mlp, diffmean.")

    def validate(self) -> None:
        from ihs.analysis.probes import parse_classifiers

        parse_classifiers([self.classifier])


def command_line(store: str | Path, generations: str | Path, options: JailbreakOptions, out: str | Path | None, *,
                 lexicon: str | Path | None = None) -> str:
    """The canonical ``ihs jailbreak`` command for these inputs, written into jailbreak.json."""
    parts = ["ihs", "jailbreak", str(store), "--generations", str(generations)]
    if options.middle:
        parts += ["--middle", options.middle]
    if options.early_layer is not None:
        parts += ["--early-layer", str(options.early_layer)]
    parts += ["--classifier", options.classifier]
    if lexicon:
        parts += ["--lexicon", str(lexicon)]
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


class JailbreakResult(Result):
    """``jailbreak.json``: groups (normal, malicious, jailbreak refused / complied, families), the early
    layer, the middle span and the refused-vs-complied comparison; ``table`` holds one row per input."""

    FILE = "jailbreak.json"

    def __init__(self, data: dict[str, Any], table: list[dict[str, Any]] | None = None) -> None:
        super().__init__(data)
        self.table = table if table is not None else []

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        return self.data.get("groups", {})

    def save(self, folder: str | Path, *, figures: bool = True) -> list[Path]:
        """Write jailbreak.json, the per-input table (JSON Lines and CSV) and (with ``figures``) jailbreak.png."""
        written = super().save(folder)
        folder = Path(folder)
        write_jsonl(folder / TABLE, self.table)
        written.append(folder / TABLE)
        if self.table:
            with (folder / TABLE_CSV).open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=[k for k in self.table[0] if k != "answer"] + ["answer"])
                writer.writeheader()
                writer.writerows(self.table)
            written.append(folder / TABLE_CSV)
        if figures:
            from ihs.plots.graft import plot_jailbreak

            written.append(plot_jailbreak(self.data, folder / FIGURE, title=f"{self.data.get('model', '')}: "
                                          "jailbreak inputs, early probe vs middle-layer emotion"))
        return written

    @classmethod
    def load(cls, folder: str | Path) -> JailbreakResult:
        folder = Path(folder)
        table = read_jsonl(folder / TABLE) if (folder / TABLE).is_file() else []
        return cls(read_json(folder / cls.FILE), table)


def run_jailbreak(store: Any, generations: str | Path | Sequence[dict[str, Any]],
                  options: JailbreakOptions | None = None, *, lexicon: str | Path | None = None,
                  tokenizer: Any = None, command: str | None = None) -> JailbreakResult:
    """Join a store (an ActivationStore or its folder) and judged generations (rows or a generations.jsonl).

    ``lexicon`` is an emotion lexicon JSON (None: the built-in one); ``tokenizer`` decodes lens tokens
    the store does not name (None: the model's tokenizer from local files, when there).
    """
    from ihs.analysis.emotion import EmotionMatcher, Lexicon
    from ihs.analysis.jailbreak import jailbreak_analysis
    from ihs.layers import parse_layer_range
    from ihs.store import ActivationStore

    options = options or JailbreakOptions()
    options.validate()
    store_path = None if isinstance(store, ActivationStore) else Path(store)
    if store_path is not None:
        store = ActivationStore.load(store_path)
    gen_path = Path(generations) if isinstance(generations, str | Path) else None
    rows = read_jsonl(gen_path) if gen_path is not None else list(generations)
    if tokenizer is None:
        from ihs.models.loading import load_tokenizer

        tokenizer = load_tokenizer(store.manifest)
    matcher = EmotionMatcher(Lexicon.load(lexicon), tokenizer)
    span = parse_layer_range(options.middle, store.num_layers) if options.middle else None
    result = jailbreak_analysis(store, rows, lens_text_of(store, tokenizer), matcher, span, options.early_layer,
                                options.classifier)
    table = result.pop("table")
    model = store.manifest.get("model", {}).get("name") or (store_path.name if store_path else "model")
    head: dict[str, Any] = {"model": model}
    if store_path is not None:
        head["store"] = str(store_path)
    if gen_path is not None:
        head["generations"] = str(gen_path)
    if command:
        head["command"] = command
    return JailbreakResult({**head, **result}, table)


def _lens_option(ctx: StepContext, name: str) -> Any:
    return getattr(getattr(ctx.config, "lens", None), name, None)


class JailbreakStep(Step):
    name = "jailbreak"
    options = JailbreakOptions
    depends = ("extract", "generate")
    help = ("Per jailbreak input: early probe verdict, middle-layer emotion, refusal (needs normal, malicious and "
            "jailbreak data and the generate step); middle null: the lens's layers.")

    @staticmethod
    def resolved(ctx: StepContext) -> JailbreakOptions:
        """The step's options with ``middle`` defaulting to the lens's layers."""
        cfg: JailbreakOptions = ctx.options("jailbreak")
        return replace(cfg, middle=cfg.middle or _lens_option(ctx, "layers"))

    def key(self, ctx: StepContext) -> dict[str, Any]:
        lexicon = _lens_option(ctx, "lexicon")
        return {"extract": ctx.keys["extract"], "generate": ctx.keys["generate"],
                "options": asdict(self.resolved(ctx)), "lexicon": [lexicon, file_digest(lexicon)]}

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        missing = [c for c in CLASSES if c not in ctx.config.data]
        if missing:
            raise Skip(f"needs normal, malicious and jailbreak data (missing: {', '.join(missing)})")
        options = self.resolved(ctx)
        lexicon = _lens_option(ctx, "lexicon")
        store = ctx.store_dir()
        generations = ctx.folder("generate") / "generations.jsonl"
        if not generations.is_file():
            raise IhsError(f"{generations} not found; the generate step writes it")
        loaded = ctx.model.loaded  # its tokenizer if the model is loaded; else from local files, never the weights
        result = run_jailbreak(store, generations, options, lexicon=lexicon,
                               tokenizer=loaded.tokenizer if loaded is not None else None,
                               command=command_line(store, generations, options, folder, lexicon=lexicon))
        result.save(folder)
        return {"outputs": [JailbreakResult.FILE]}
