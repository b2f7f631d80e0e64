"""``ihs run``: every analysis for one or more models, cached step by step, and one HTML report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ihs.cli import common
from ihs.errors import IhsError
from ihs.pipeline import config as run_config
from ihs.pipeline.runner import run
from ihs.progress import console
from ihs.workflows import steps


def run_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Model to analyse, repeatable (zoo name, folder, GGUF file or Hugging Face id); "
        f"overrides the config's models. Default: {run_config.DEFAULT_MODEL}.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config (models, data, limit, analyses and their options); "
        "`ihs run --print-config` prints the defaults.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (re-running reuses finished steps).")]
    = Path("ihs-run"),
    limit: Annotated[int | None, typer.Option(help="Distinct prompts per class for extraction, probes, lens.")] = None,
    analyses: Annotated[str | None, typer.Option(
        help="Comma-separated analyses to run, or 'all' (default: the config's, else the default ones).")] = None,
    force: Annotated[str | None, typer.Option(
        help="Recompute these steps even if cached: comma-separated step names, or 'all'.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the config (defaults, or --config merged with them) as YAML and exit.")] = False,
    progress: common.Progress = True,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Only rebuild OUT/report.html from the outputs already in OUT.")] = False,
) -> None:
    """Every analysis for one or more models, cached step by step, and one HTML report (OUT/report.html)."""
    from ihs.report.page import write_report

    cfg = run_config.load(config) if config else run_config.default_config()
    if print_config:
        typer.echo(run_config.config_yaml(cfg))
        return
    if report_only:
        console.print(f"report: {write_report(out).resolve()}")
        return
    if model:
        cfg.models = list(model)
    if limit is not None:
        cfg.limit = limit
    if analyses is not None:
        cfg.analyses = common.csv(analyses) or []
    cfg.validate()
    result = run(cfg, out, progress=progress, force=_forced(force),
                 command=shlex.join(["ihs", *sys.argv[1:]]))
    report = write_report(out, result.index)
    failed = result.failed
    if failed:
        console.print(f"[red]{len(failed)} step(s) failed:[/] " + ", ".join(f"{m}/{s}" for m, s in failed)
                      + f" (see {out / 'run.log'})")
    console.print(f"log: {(out / 'run.log').resolve()}")
    typer.echo(f"report: {report.resolve()}")
    if failed:
        raise typer.Exit(1)


def _forced(force: str | None) -> list[str] | bool:
    if not force:
        return []
    if force.strip() == "all":
        return True
    names = common.csv(force) or []
    known = [s.name for s in steps()]
    unknown = [s for s in names if s not in known]
    if unknown:
        raise IhsError(f"--force: unknown step {unknown[0]!r}; choose from {', '.join(known)} or all")
    return names
