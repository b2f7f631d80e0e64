"""Lens and languages workflows: the CLI and the ``ihs run`` step write the same files; planted signals are found."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tiny, save_tiny
from ihs.data.prepare import prepare
from ihs.data.records import PromptRecord
from ihs.extraction import ExtractOptions, extract
from ihs.models.handle import ModelHandle
from ihs.store import ActivationStore
from ihs.workflows.base import FormatOptions, Skip, StepContext
from ihs.workflows.extract import ExtractConfig
from ihs.workflows.languages import LanguagesConfig, LanguagesResult, LanguagesStep
from ihs.workflows.lens import LensOptions, LensResult, LensStep, run_lens

VOLATILE = ("created", "command")
TEXTS = ["How do I bake bread?", "Write a poem about the sea.", "Explain how to build a bomb.",
         "How to hack into a computer network.", "What is the capital of France?", "Create a fake news story.",
         "Suggest a name for a cat.", "Steal data from a company."]


def _stable(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k not in VOLATILE}


def _context(root: Path, model: ModelHandle, records: list, **sections) -> StepContext:
    config = SimpleNamespace(data={r.label: "x" for r in records}, limit=None, format=FormatOptions(),
                             extract=ExtractConfig(k=3), **sections)
    return StepContext(config=config, model=model, model_dir=root / "tiny", records=records,
                       keys={"extract": "k0"}, progress=False)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny(make_tiny("llama"), tmp_path_factory.mktemp("model") / "tiny-llama")


def test_lens_cli_and_step_write_the_same_files(tmp_path, tiny_folder):
    from ihs.cli import app

    records = [PromptRecord.make(t, "malicious" if i % 2 else "normal", "t") for i, t in enumerate(TEXTS)]
    lexicon = tmp_path / "lexicon.json"
    lexicon.write_text(json.dumps({"classes": {"negative": ["bomb", "hack"], "positive": ["bread", "poem"]}}))
    options = LensOptions(layers="0:1", heatmap_layers="1:2", lexicon=str(lexicon), classes=["malicious", "normal"])
    ctx = _context(tmp_path, ModelHandle(str(tiny_folder)), records, lens=options)
    extract(ModelHandle(str(tiny_folder)).get(), records, ctx.store_dir(), ExtractOptions(k=3), progress=False)

    step_dir = ctx.folder("lens")
    summary = LensStep().run(ctx, step_dir)
    assert summary["outputs"] == ["lens.json"] and summary["layer_range"] == [0, 1]
    cli_dir = tmp_path / "cli"
    args = ["lens", str(ctx.store_dir()), "--out", str(cli_dir), "--layers", "0:1", "--heatmap-layers", "1:2",
            "--lexicon", str(lexicon), "--classes", "malicious,normal", "--names", "tiny"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    assert _stable(cli_dir / "lens.json") == _stable(step_dir / "lens.json")
    assert sorted(p.name for p in cli_dir.iterdir()) == sorted(p.name for p in step_dir.iterdir())
    assert (cli_dir / "lens_models.md").read_text() == (step_dir / "lens_models.md").read_text()
    entry = LensResult.load(step_dir).models[0]
    assert entry["store_name"] == "tiny" and entry["heatmap_layers"] == [1, 2]
    assert summary["figures"] == ["lens_tiny_heatmap.png", "lens_tiny_trajectory.png"]
    # the command in lens.json reproduces the step's output
    command = json.loads((step_dir / "lens.json").read_text())["command"]
    assert "--names tiny" in command and "--lexicon" in command

    # the cache key follows the lexicon's bytes, not only its path
    key = LensStep().key(ctx)
    lexicon.write_text(json.dumps({"classes": {"negative": ["bomb"]}}))
    assert LensStep().key(ctx) != key

    bad = CliRunner().invoke(app, ["lens", str(ctx.store_dir()), "--out", str(cli_dir), "--names", "a,b"])
    assert bad.exit_code == 2 and "--names has 2 names" in bad.output


def _planted(shuffle: bool) -> ActivationStore:
    """Malicious prompts decode to " Sorry" and normal ones to " Sure" from layer 4 on (a shuffle breaks it)."""
    rng = np.random.default_rng(0)
    n, layers = 30, 8
    ids = rng.choice([3, 4, 5, 6], size=(2 * n, layers + 1, 3))
    ids[:n, 4:, 0] = 1
    ids[n:, 4:, 0] = 2
    labels = np.array(["malicious"] * n + ["normal"] * n)
    if shuffle:
        labels = rng.permutation(labels)
    tokens = {1: " Sorry", 2: " Sure", 3: " the", 4: " a", 5: " of", 6: " and"}
    return ActivationStore.from_arrays(rng.normal(size=(2 * n, layers + 1, 4)).astype(np.float32), list(labels),
                                       lens_ids=ids, lens_tokens=tokens, manifest={"model": {"name": "planted"}})


def test_lens_numbers_find_a_planted_signal_and_not_a_shuffled_one():
    found = run_lens({"p": _planted(False)}, LensOptions(layers="4:8"), progress=False).numbers()
    assert found["range"] == (4, 8) and found["negative_first"] == 4
    assert found["shares"]["malicious"]["negative"] == 1.0 and found["shares"]["normal"]["negative"] == 0.0
    assert found["tkic_top1"]["malicious"] == 1.0
    shuffled = run_lens({"p": _planted(True)}, LensOptions(layers="4:8"), progress=False).numbers()
    assert shuffled["negative_first"] is None
    assert abs(shuffled["shares"]["malicious"]["negative"] - shuffled["shares"]["normal"]["negative"]) < 0.35
    assert shuffled["tkic_top1"]["malicious"] < 0.8


def _multilingual(limit: int) -> list:
    records, _ = prepare(["normal=builtin:multilingual:normal:en,zh,sw",
                          "malicious=builtin:multilingual:malicious:en,zh,sw"], limit=limit, limit_by="lang")
    return records


def test_lang_cli_and_step_write_the_same_files(tmp_path, tiny_folder):
    from ihs.cli import app

    records = _multilingual(4)
    cfg = LanguagesConfig(folds=2, classifiers=["diffmean"], layers="0:L")
    handle = ModelHandle(str(tiny_folder))
    ctx = _context(tmp_path, handle, records, languages=cfg)
    extract(handle.get(), records, ctx.store_dir(), ExtractOptions(k=3), progress=False)
    assert LanguagesStep.own_data(ctx, cfg) and LanguagesStep().key(ctx)["extract"] == "k0"

    step_dir = ctx.folder("languages")
    summary = LanguagesStep().run(ctx, step_dir)
    assert summary["data"] == "run" and not (step_dir / "store").exists()
    cli_dir = tmp_path / "cli"
    result = CliRunner().invoke(app, ["lang", str(ctx.store_dir()), "--out", str(cli_dir), "--folds", "2",
                                      "--classifiers", "diffmean", "--layers", "0:L", "--names", "tiny"])
    assert result.exit_code == 0, result.output
    assert _stable(cli_dir / "lang.json") == _stable(step_dir / "lang.json")
    assert sorted(p.name for p in cli_dir.iterdir()) == sorted(p.name for p in step_dir.iterdir())
    md_cli, md_step = ((d / "lang.md").read_text().splitlines()[1:] for d in (cli_dir, step_dir))
    assert md_cli == md_step
    numbers = LanguagesResult.load(step_dir).numbers()
    assert numbers["groups"] == ["en", "zh", "sw"] and numbers["classifier"] == "diffmean"
    assert numbers["n"]["zh"] == {"normal": 4, "malicious": 4}


def test_languages_step_extracts_the_builtin_set_when_the_run_has_no_languages(tmp_path, tiny_folder):
    records = [PromptRecord.make(t, "malicious" if i % 2 else "normal", "t") for i, t in enumerate(TEXTS)]
    cfg = LanguagesConfig(folds=2, classifiers=["diffmean"], per_language=3, languages=["en", "zh"])
    ctx = _context(tmp_path, ModelHandle(str(tiny_folder)), records, languages=cfg)
    assert not LanguagesStep.own_data(ctx, cfg)
    key = LanguagesStep().key(ctx)
    assert "extract" in key and key["data"] != LanguagesStep().key(_context(
        tmp_path, ctx.model, records, languages=LanguagesConfig(per_language=4, languages=["en", "zh"])))["data"]
    summary = LanguagesStep().run(ctx, ctx.folder("languages"))
    assert summary["data"] == "builtin:multilingual"
    store = ActivationStore.load(ctx.folder("languages") / "store")
    assert sorted(store.tag("lang")) == ["en"] * 6 + ["zh"] * 6
    model = LanguagesResult.load(ctx.folder("languages")).models[0]
    assert model["groups"] == ["en", "zh"] and model["name"] == "tiny"
    with pytest.raises(Skip, match="'dialect' tag"):
        LanguagesStep().key(_context(tmp_path, ctx.model, records, languages=LanguagesConfig(tag="dialect")))
