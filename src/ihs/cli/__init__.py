"""The ``ihs`` command line: one module per command in this package, each a thin layer over a workflow.

Shared options, error handling (one line, exit status 2) and small parsers live in
:mod:`ihs.cli.common`; a command module declares its options and calls its workflow.
"""

from __future__ import annotations

import logging
import sys

from ihs.cli import common

app = common.Typer(
    name="ihs",
    help="Explain LLM safety through intermediate hidden states: probes, logit lens, emotion tokens, grafting.",
)


def _register() -> None:
    from ihs.cli import bench, extract, probe

    app.command("extract")(extract.extract_cmd)
    app.command("bench")(bench.bench_cmd)
    app.command("probe")(probe.probe_cmd)

    from ihs.cli import data, models

    app.add_typer(data.app, name="data", help="Built-in prompt sets and dataset specs.")
    app.add_typer(models.app, name="models", help="The built-in model zoo: list and pull.")
    from ihs.cli import lens
    app.command("lens")(lens.lens_cmd)
    from ihs.cli import generate, graft, jailbreak
    app.command("generate")(generate.generate_cmd)
    app.command("graft")(graft.graft_cmd)
    app.command("jailbreak")(jailbreak.jailbreak_cmd)
    from ihs.cli.run import run_cmd
    app.command("run")(run_cmd)
    from ihs.cli import lang
    app.command("lang")(lang.lang_cmd)
    from ihs.cli import defend
    app.add_typer(defend.app, name="defend", help="Probe-conditioned steering defense: direction, evaluate, sweep.")
    from ihs.cli import guard
    app.add_typer(guard.app, name="guard", help="Probe-based harmful-request detector: fit, score, eval, serve.")
    from ihs.cli import align
    app.add_typer(align.app, name="align", help="Align models (SFT, DPO) and track their checkpoints.")
    app.command("explain")(__import__("ihs.cli.explain", fromlist=["explain_cmd"]).explain_cmd)
    app.add_typer(__import__("ihs.cli.attack", fromlist=["app"]).app, name="attack", help="Adversarial training: scan, generate, rounds.")


_register()


def expand_ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` with no address (last, or followed by another option) means ``--ray local``."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("local")
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app(args=expand_ray_flag(sys.argv[1:]))


if __name__ == "__main__":
    main()
