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
            check_arguments(fn, kwargs)
            return fn(*args, **kwargs)
        except IhsError as exc:
            typer.secho(f"error: {one_line(str(exc))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if type(exc).__name__ != "SafetensorError":  # a damaged weights file is the user's, not a bug
                raise
            typer.secho(f"error: a .safetensors file is damaged or truncated ({one_line(str(exc))}); "
                        "re-create it", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


# -- checks every command gets, by parameter name ---------------------------------------------------------------

POSITIVE = frozenset({"k", "batch_size", "limit", "max_batch_tokens", "max_length", "max_new_tokens", "max_prompts",
                      "max_prompt_chars", "max_prompt_tokens", "max_body_bytes", "max_batch_prompts", "ray_actors",
                      "ray_threads", "per_class", "donor_limit", "tuned_limit", "gen_batch"})
FILE_OUTS = frozenset({"ihs.cli.guard.score_cmd"})  # commands whose --out is a file, not a folder


def one_line(text: str) -> str:
    """``text`` on one line (an error message must not spill a traceback-like block)."""
    return " ".join(text.split())


def check_arguments(fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """The shared rules for a command's arguments, applied before it runs (see :func:`guarded`)."""
    for name in POSITIVE & kwargs.keys():
        value = kwargs[name]
        if value is not None and not isinstance(value, bool) and value <= 0:
            raise IhsError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if kwargs.get("device") is not None:
        check_device(kwargs["device"])
    if kwargs.get("port") is not None:
        check_port(kwargs["port"])
    if isinstance(kwargs.get("data"), list | tuple) and kwargs["data"]:  # NAME=SPEC lists (align's is a folder)
        from ihs.data.classes import check_data_specs

        check_data_specs(kwargs["data"])
    out = kwargs.get("out")
    if isinstance(out, Path):
        if f"{fn.__module__}.{fn.__qualname__}" in FILE_OUTS:
            out_file(out)
        else:
            check_out_dir(out)


def available_devices() -> list[str]:
    """The devices torch can use here: cpu, cuda:0.. and mps when present."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str) -> str:
    """``device`` when torch has it here; else a one-line error naming the devices that exist."""
    found = available_devices()
    if device not in found:
        raise IhsError(f"--device {device!r} is not available here; available: {', '.join(found)}")
    return device


def check_port(port: int) -> int:
    """A TCP port number, 1..65535."""
    if not 1 <= int(port) <= 65535:
        raise IhsError(f"--port must be between 1 and 65535, got {port}")
    return int(port)


def check_out_dir(path: Path) -> Path:
    """An output folder that is absent or a folder (nothing is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IhsError(f"--out {path} is a file; give a folder (it is created if absent)")
    return path


def out_file(path: Path) -> Path:
    """An output file: absent or a file, in a folder that exists (or can be created)."""
    path = Path(path)
    if path.is_dir():
        raise IhsError(f"--out {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise IhsError(f"--out {path}: {parent} is a file, not a folder")
            break
    return path


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
    path = check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IhsError(f"--out {path} cannot be created: {exc.strerror or exc}") from None
    return path


def cleaning_line(report: dict[str, Any]) -> str:
    """One line saying what data preparation kept and dropped per class."""
    from rich.markup import escape

    parts = []
    for label, c in report["cleaning"].items():
        label = escape(str(label))
        dropped = c["empty"] + c["dup_within"] + c["dup_across"]
        parts.append(f"{label}: {c['kept']} kept" + (f" ({dropped} dropped: {c['empty']} empty, "
                     f"{c['dup_within']} duplicate, {c['dup_across']} in another class)" if dropped else ""))
    return "data: " + "; ".join(parts) + (f"; limit {report['limit']} per class" if report["limit"] else "")
