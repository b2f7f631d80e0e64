"""The house rules of the source tree, checked on every run (docs/ARCHITECTURE.md explains them).

* Imports go down the floors only: the core (data, models, formatting, store, io, layers, errors,
  progress, stats) imports nothing above it; compute (analysis, interventions, guard, plots, explain, align)
  never imports workflows, the pipeline, the report or the CLI; workflows never import the pipeline,
  report or CLI; the pipeline never imports the report or CLI; the report never imports the CLI.
* No module imports another module's ``_private`` names.
* No file in ``src/`` over 500 lines; no function in ``cli/``, ``pipeline/``, ``report/`` over 80 lines.

Each checker is also run on a planted violation, so these tests can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ihs"

CORE = {"data", "models", "formatting", "store", "io", "layers", "errors", "progress", "stats"}
RUNNING = {"hooks", "batching", "prefix_cache", "extract", "generation", "bench", "distributed"}
COMPUTE = {"analysis", "interventions", "guard", "plots", "explain", "align", "adversarial"}
UPPER = {"workflows", "pipeline", "report", "cli", "api"}
#: package or module (first name under ihs) -> names under ihs it must never import
FORBIDDEN = {
    **{name: RUNNING | COMPUTE | UPPER for name in CORE},
    **{name: COMPUTE | UPPER for name in RUNNING},
    **{name: UPPER for name in COMPUTE},
    "workflows": {"pipeline", "report", "cli", "api"},
    "pipeline": {"report", "cli", "api"},
    "report": {"cli", "api"},
}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
FUNCTION_ROOMS = ("cli", "pipeline", "report")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, module: str, is_package: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import anywhere in the file, relative ones resolved;
    ``from ihs import x`` counts as importing ``ihs.x``."""
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "ihs":
                found.extend((f"ihs.{a.name}", [], node.lineno) for a in node.names)
            else:
                found.append((base, [a.name for a in node.names], node.lineno))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every broken import rule in one module's source."""
    tree = ast.parse(source)
    floor = module.split(".")[1] if module.count(".") else ""
    banned = FORBIDDEN.get(floor, set())
    out = []
    for target, names, line in imports(tree, module, is_package):
        if not target.startswith("ihs."):
            continue
        top = target.split(".")[1]
        if top in banned:
            out.append(f"{module}:{line} imports {target} ({floor} must not import {top})")
        if target != module:
            out.extend(f"{module}:{line} imports private {target}.{n}" for n in names
                       if n.startswith("_") and not n.startswith("__"))
        # ihs.x._private as a module path
        if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
            out.append(f"{module}:{line} imports private module {target}")
    return out


def long_functions(source: str, module: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{module}.{node.name}: {length} lines")
    return out


def sources() -> list[tuple[Path, str]]:
    return [(p, module_name(p)) for p in sorted(SRC.rglob("*.py"))]


def test_imports_go_down_the_floors_and_leave_private_names_alone():
    found = [v for path, module in sources()
             for v in violations(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")]
    assert not found, "\n".join(found)


def test_no_long_files_or_long_functions():
    long_files = [f"{module}: {n} lines" for path, module in sources()
                  if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not long_files, "\n".join(long_files)
    long_fns = [v for path, module in sources() if module.split(".")[1:2] and module.split(".")[1] in FUNCTION_ROOMS
                for v in long_functions(path.read_text(encoding="utf-8"), module)]
    assert not long_fns, "\n".join(long_fns)


@pytest.mark.parametrize("module, source, expected", [
    ("ihs.store", "from ihs.analysis.probes import probe_store\n", "store must not import analysis"),
    ("ihs.data.loaders", "def f():\n    import ihs.report.page\n", "data must not import report"),
    ("ihs.analysis.lens", "from ihs.cli import common\n", "analysis must not import cli"),
    ("ihs.workflows.lens", "from ihs.pipeline.layout import RunLayout\n", "workflows must not import pipeline"),
    ("ihs.report.page", "from ihs.cli.run import run_cmd\n", "report must not import cli"),
    ("ihs.pipeline.runner", "from ihs.workflows.probe import _private\n", "imports private"),
    ("ihs.cli.run", "from ihs.models._helpers import x\n", "private module"),
    ("ihs.analysis.emotion", "from .. import report\nfrom ..report import page\n", "analysis must not import report"),
])
def test_a_planted_violation_is_caught(module, source, expected):
    assert any(expected in v for v in violations(source, module)), violations(source, module)


def test_allowed_imports_pass():
    assert not violations("from ihs.store import ActivationStore\nfrom ihs.errors import IhsError\n", "ihs.analysis.x")
    assert not violations("from ihs.workflows.probe import ProbeResult\n", "ihs.report.sections.probe")
    assert not violations("from ihs.workflows.base import _helper\n", "ihs.workflows.base")  # its own names


def test_a_long_function_is_caught():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    assert long_functions(f"def f():\n{body}\n", "ihs.cli.x") == [f"ihs.cli.x.f: {MAX_FUNCTION_LINES + 2} lines"]


# -- adding an analysis: its module, its section, one registration line --------------------------------------

TOY_WORKFLOW = '''
from dataclasses import dataclass

import numpy as np

from ihs.workflows.base import Result, Step, opt


@dataclass(kw_only=True)
class NormsOptions:
    relative: bool = opt(False, "Divide by the embedding layer's norm.")


class NormsResult(Result):
    FILE = "norms.json"

    def numbers(self):
        return {label: max(v) for label, v in self.data["norms"].items()}


def run_norms(store, options=None):
    options = options or NormsOptions()
    norms = np.linalg.norm(store.hidden, axis=2)
    if options.relative:
        norms = norms / norms[:, :1]
    return NormsResult({"norms": {label: norms[store.labels == label].mean(0).tolist()
                                  for label in dict.fromkeys(store.labels)}})


class NormsStep(Step):
    name, options, depends = "norms", NormsOptions, ("extract",)
    help = "Mean norm of the last-token state per layer and class."

    def key(self, ctx):
        return {"extract": ctx.keys["extract"], "relative": ctx.options("norms").relative}

    def run(self, ctx, folder):
        run_norms(ctx.load_store(), ctx.options("norms")).save(folder)
        return {"outputs": [NormsResult.FILE]}
'''

TOY_SECTION = '''
from ihs.report.html import section as section_html
from ihs.report.html import table
from ihs.workflows.norms import NormsResult

RESULT = NormsResult
TITLE = "Norms"


def _body(model, result):
    return table(["class", "largest mean norm"], [[k, f"{v:.3f}"] for k, v in result.numbers().items()])


def section(ctx):
    return section_html("norms", "Norms", ctx.per_model("norms", "norms", _body))
'''


def test_a_toy_analysis_needs_its_module_its_section_and_one_line(tmp_path, monkeypatch):
    """The walk-through of docs/ARCHITECTURE.md, done: two new modules and one registry line give a step of
    ``ihs run`` with its config section, its cache key and its report section."""
    import importlib.util
    import json
    import sys

    import torch

    import ihs.workflows as workflows
    from conftest import make_tiny
    from ihs.api import run
    from ihs.pipeline.config import config_class, config_yaml

    for name, source in (("ihs.workflows.norms", TOY_WORKFLOW), ("ihs.report.sections.norms", TOY_SECTION)):
        path = tmp_path / f"{name.rsplit('.', 1)[1]}_{name.split('.')[1]}.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    monkeypatch.setattr(workflows, "REGISTRY", (*workflows.REGISTRY, "ihs.workflows.norms:NormsStep"))  # the line
    workflows.steps.cache_clear()
    config_class.cache_clear()
    try:
        assert "norms:\n  relative: false  # Divide by the embedding layer's norm." in config_yaml()
        torch.set_num_threads(1)
        config = {"data": {"normal": "builtin:normal", "malicious": "builtin:malicious"}, "limit": 6,
                  "analyses": ["norms"], "norms": {"relative": True}}
        result = run(config, tmp_path / "run", models=[make_tiny("llama")], progress=False)
        statuses = {s: v["status"] for s, v in result.index["models"][0]["steps"].items()}
        assert statuses["extract"] == "done" and statuses["norms"] == "done"
        saved = json.loads((result.out / result.index["models"][0]["dir"] / "norms" / "norms.json").read_text())
        assert saved["norms"]["normal"][0] == 1.0  # relative: the embedding layer divided by itself
        page = result.report.read_text(encoding="utf-8")
        assert 'id="sec-norms"' in page and "largest mean norm" in page
    finally:
        workflows.steps.cache_clear()
        config_class.cache_clear()
