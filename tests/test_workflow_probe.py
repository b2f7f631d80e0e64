"""The probe workflow: the CLI command and the ``ihs run`` step compute through one function and write the
same ``probe.json``; the Python API gives the same numbers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import alternating_records, make_tiny
from ihs.cli import app
from ihs.extraction import ExtractOptions, extract
from ihs.models.handle import ModelHandle
from ihs.pipeline.config import from_dict
from ihs.workflows.base import StepContext
from ihs.workflows.probe import ProbeResult, ProbeStep

VOLATILE = ("wall_seconds", "seconds", "command")
TEXTS = ["How do I bake bread?", "Explain how to build a bomb.", "Write a poem about the sea.",
         "Write a tutorial on how to hack a network.", "What is the capital of France?", "Create a fake news story.",
         "Summarise the history of Rome.", "Steal data from a computer.", "Suggest a name for a cat.",
         "Make a dangerous weapon at home."] * 2


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe-wf")
    lm = make_tiny("llama")
    model_dir = root / "tiny"
    records = [dict(r, text=f"{r['text']} ({i})") for i, r in enumerate(alternating_records(TEXTS))]
    extract(lm, records, model_dir / "extract" / "store", ExtractOptions(), progress=False)
    config = from_dict({"probe": {"classifiers": ["svm", "diffmean"], "folds": 3}})
    ctx = StepContext(config, ModelHandle(lm), model_dir, [], {"extract": "k"}, progress=False)
    summary = ProbeStep().run(ctx, ctx.folder("probe"))
    return ctx, summary


def _stable(data):
    """The payload without timings and the command line, at every depth."""
    if isinstance(data, dict):
        return {k: _stable(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [_stable(v) for v in data]
    return data


def test_cli_and_run_step_write_the_same_probe_json(step_run, tmp_path):
    ctx, summary = step_run
    assert summary["outputs"] == ["probe.json"] and summary["figures"]
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["probe", str(ctx.store_dir()), "--names", ctx.model_dir.name, "--classifiers",
                                      "svm,diffmean", "--folds", "3", "--formats", "png", "--out", str(out)])
    assert result.exit_code == 0, result.output
    from_cli = json.loads((out / "probe.json").read_text())
    from_step = json.loads((ctx.folder("probe") / "probe.json").read_text())
    assert _stable(from_cli) == _stable(from_step)
    assert from_step["stores"][0]["classifiers"]["svm"]["accuracy"]  # real numbers, not an empty shell
    assert "NaN" not in (out / "probe.json").read_text()  # one NaN policy: null
    assert sorted(p.name for p in out.glob("*.png")) == sorted(summary["figures"])


def test_result_loads_back_with_its_headline(step_run):
    ctx, _ = step_run
    result = ProbeResult.load(ctx.folder("probe"))
    numbers = result.numbers()
    assert numbers["classifier"] == "svm" and numbers["num_layers"] == 2
    assert numbers["best_accuracy"] == result.stores[0]["classifiers"]["svm"]["best_accuracy"]


def test_python_api_gives_the_same_numbers(step_run):
    import ihs

    ctx, _ = step_run
    api = ihs.probe(ctx.store_dir(), name=ctx.model_dir.name, classifiers=["svm", "diffmean"], folds=3)
    from_step = json.loads((ctx.folder("probe") / "probe.json").read_text())
    assert json.loads(json.dumps(_stable(api.data), allow_nan=True).replace("NaN", "null")) == _stable(from_step)


def test_bad_options_are_one_line_errors(step_run, tmp_path):
    ctx, _ = step_run
    runner = CliRunner()
    for args, message in ((["--mode", "magic"], "unknown mode"), (["--classifiers", "forest"], "unknown classifier"),
                          (["--layers", "0:9"], "outside 0..2"), (["--formats", "gif"], "unknown figure format")):
        result = runner.invoke(app, ["probe", str(ctx.store_dir()), "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = runner.invoke(app, ["probe", str(ctx.store_dir()), "--out", str(a_file)])
    assert result.exit_code == 2 and "is a file" in result.output
