"""What every command shares: the Typer class that turns user errors into one line, the options that
several commands take (declared once, with their help), and small parsers.

Every command module builds its Typer app (or functions) with :class:`Typer`; a command raising
:class:`ihs.errors.IhsError` prints ``error: <message>`` on stderr and exits with status 2, wherever
it runs (the ``ihs`` entry point or ``typer.testing.CliRunner``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ihs.errors import IhsError

MODEL_HELP = "Zoo name (see `ihs models list`), local model folder, GGUF file or Hugging Face id."
DATA_HELP = ("NAME=SPEC, repeatable. SPEC: builtin:normal, path.csv[:column], path.jsonl[:field], path.txt, "
             "hf:org/name:split:field.")
LAYERS_HELP = ("Layers in the layer grammar: 12, -1, L/2, 0.5, 0:L, 0:L:5, 4,8,12 (0 = embedding output, "
               "i = output of block i; ends included).")


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with :class:`IhsError` reported as one red line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except IhsError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


class Typer(typer.Typer):
    """A Typer app whose commands and callbacks report user errors in one line (see :func:`guarded`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("pretty_exceptions_enable", False)
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(guarded(fn))

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().callback(*args, **kwargs)
        return lambda fn: register(guarded(fn))


# -- options several commands take ------------------------------------------------------------------------------

Model = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
OptionalModel = Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)]
Data = Annotated[list[str] | None, typer.Option("--data", "-d", help=DATA_HELP)]
Limit = Annotated[int | None, typer.Option(help="Keep the first N distinct prompts of each dataset.")]
Dtype = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 or mps (default: cpu).")]
DeviceMap = Annotated[str | None, typer.Option(
    "--device-map", help="Spread the model over devices (accelerate): auto, balanced, sequential, or a JSON "
    "{module: device}, inline or a .json file.")]
MaxMemory = Annotated[str | None, typer.Option(
    "--max-memory", help="Cap per device with --device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB.")]
OffloadFolder = Annotated[Path | None, typer.Option(help="Where weights that fit nowhere are offloaded.")]
TrustRemoteCode = Annotated[bool, typer.Option(help="Allow model code from the hub (off by default).")]
Chat = Annotated[bool | None, typer.Option(
    "--chat/--no-chat", help="Use the chat template (default: when the tokenizer has one).")]
SystemPrompt = Annotated[str | None, typer.Option(help="System prompt for chat formatting.")]
Layers = Annotated[str | None, typer.Option("--layers", help=LAYERS_HELP)]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]


def load_model(model: str, *, dtype: str = "float32", device: str | None = None, device_map: str | None = None,
               max_memory: str | None = None, offload_folder: Path | None = None,
               trust_remote_code: bool = False) -> Any:
    """Load a model with the shared model options."""
    from ihs.models.loading import load_model as _load

    return _load(model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                 offload_folder=str(offload_folder) if offload_folder else None,
                 trust_remote_code=trust_remote_code)


def csv(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None or empty -> None."""
    items = [x.strip() for x in text.split(",") if x.strip()] if text else []
    return items or None


def out_dir(path: Path) -> Path:
    """An output folder: created if absent; an existing file is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IhsError(f"--out {path} is a file; give a folder (it is created if absent)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cleaning_line(report: dict[str, Any]) -> str:
    """One line saying what data preparation kept and dropped per class."""
    parts = []
    for label, c in report["cleaning"].items():
        dropped = c["empty"] + c["dup_within"] + c["dup_across"]
        parts.append(f"{label}: {c['kept']} kept" + (f" ({dropped} dropped: {c['empty']} empty, "
                     f"{c['dup_within']} duplicate, {c['dup_across']} in another class)" if dropped else ""))
    return "data: " + "; ".join(parts) + (f"; limit {report['limit']} per class" if report["limit"] else "")
