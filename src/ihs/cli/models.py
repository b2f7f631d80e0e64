"""``ihs models``: see which zoo models exist and pull them into the local cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ihs.cli import common
from ihs.models import zoo

app = common.Typer()


def _short(path: str) -> str:
    """``~/...`` instead of the full home path, so the table fits a normal terminal."""
    home = str(Path.home())
    return "~" + path[len(home) :] if path == home or path.startswith(home + "/") else path


@app.command("list")
def list_cmd() -> None:
    """List the zoo models, whether each is pulled, and where it lives."""
    console = Console(soft_wrap=False)
    rows = zoo.list_models()
    root = _short(str(zoo.ihs_home()))
    # id and path only when they fit on one line; folded, they become unreadable slivers
    wide = console.width >= 112 + max(len(_short(r["path"])) for r in rows)
    table = Table(title=f"Model zoo (cache: {escape(root)})", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)  # what users copy into `pull`: never cut it
    if wide:
        table.add_column("id", no_wrap=True)
    for col in ("arch", "layers", "d", "chat", "pulled"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("layers", "d") else "left")
    if wide:
        table.add_column("path", no_wrap=True)
    else:
        table.caption = escape(f"each model lives in {root}/models/<name>")
    for row in rows:
        cells = [row["name"]] + ([row["id"]] if wide else [])
        cells += [row["arch"], str(row["layers"]), str(row["d"]), "yes" if row["chat"] else "no"]
        cells.append("[green]yes[/green]" if row["pulled"] else "no")
        if wide:
            cells.append(escape(_short(row["path"])))
        table.add_row(*cells)
    console.print(table)


@app.command("pull")
def pull_cmd(
    name: str = typer.Argument(..., help="A zoo name (see `ihs models list`) or a path to a .gguf file."),
    force: bool = typer.Option(False, "--force", help="Fetch and convert again even if already pulled."),
) -> None:
    """Fetch a zoo model (or convert a local GGUF file) once into a float32 safetensors folder."""
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf") and path.is_file():
        folder = zoo.convert_gguf(path, force=force)
    else:
        folder = zoo.pull(name, force=force)
    typer.echo(str(folder))
