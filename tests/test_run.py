"""``ihs run``: config, cache keys, and the whole pipeline end to end on a tiny random model.

The end-to-end run goes through the command line on a tiny Llama saved as a local folder, on a
small subset of the built-in sets plus a file of hostile prompts; it checks that every section of
the report is present and filled with the numbers of the run's own JSON outputs, and that a
re-run reuses every step.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import make_tiny, save_tiny
from ihs.api import run
from ihs.cli import app
from ihs.errors import IhsError
from ihs.pipeline.config import analyses_default, config_yaml, default_config, from_dict, load
from ihs.pipeline.runner import choose_threads, step_key
from ihs.report.html import num, pct
from ihs.workflows import steps

STEPS = [s.name for s in steps()]

XSS_PROMPTS = [
    "<script>alert(1)</script> How do I bake bread at home?",
    "Describe this tag: <img src=x onerror=alert(1)> in one sentence.",
]
SECTIONS = ["summary", "data", "probe", "lens", "consistency", "generate", "jailbreak", "graft", "run"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on shared cores: one BLAS thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the shared tiny run (the browser test reuses it) -------------------------------------------------------


@dataclass
class TinyRun:
    out: Path
    model_dir: Path
    config: Path
    first: object  # CLI result of a run with only probe and lens
    second: object  # CLI result of the full run (probe and lens cached)
    first_seconds: float
    second_seconds: float


_CACHE: dict[str, TinyRun] = {}


def tiny_config(root: Path, model_dir: Path) -> Path:
    normal = root / "normal.txt"
    lines = XSS_PROMPTS + [
        "How long should I boil an egg?", "Write a short poem about the sea.", "What is the capital of France?",
        "Summarise the history of Rome in three lines.", "Give step by step instructions for making a cake.",
        "How do I plant tomatoes on a balcony?", "Explain photosynthesis to a child.", "Suggest a name for a cat.",
        "How do I fix a flat bicycle tyre?", "Recommend a book about the ocean.",
    ]
    normal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "models": [str(model_dir)],
        "data": {"normal": str(normal), "malicious": "builtin:malicious", "contrast": "builtin:contrast",
                 "jailbreak": "builtin:jailbreak"},
        "limit": 10,
        "probe": {"classifiers": ["svm", "diffmean"], "folds": 3},
        "generate": {"limit": 5, "max_new_tokens": 6},
        "graft": {"targets": 4, "donors": 4, "layers": "0:L", "max_new_tokens": 6},
        "report": {"examples": 3},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def tiny_run(root_factory) -> TinyRun:
    """Build (once per test session) a tiny-model run through the CLI: first probe+lens, then everything."""
    if "run" in _CACHE:
        return _CACHE["run"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = root_factory()
        model_dir = save_tiny(make_tiny("llama"), root / "tiny-llama")
        config = tiny_config(root, model_dir)
        out = root / "run"
        runner = CliRunner()
        t0 = time.perf_counter()
        first = runner.invoke(app, ["run", "--config", str(config), "--analyses", "probe,lens", "--out", str(out),
                                    "--no-progress"])
        t1 = time.perf_counter()
        second = runner.invoke(app, ["run", "--config", str(config), "--out", str(out), "--no-progress"])
        t2 = time.perf_counter()
    finally:
        torch.set_num_threads(before)
    _CACHE["run"] = TinyRun(out, model_dir, config, first, second, t1 - t0, t2 - t1)
    return _CACHE["run"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyRun:
    result = tiny_run(lambda: tmp_path_factory.mktemp("ihs-run"))
    assert result.first.exit_code == 0, result.first.output
    assert result.second.exit_code == 0, result.second.output
    return result


def sections(page: str) -> dict[str, str]:
    """Section key -> its text (tags stripped, entities decoded)."""
    found = {}
    for m in re.finditer(r'<section class="sec" id="sec-(\w+)" data-section="\w+">(.*?)</section>', page, re.S):
        found[m.group(1)] = m.group(2)
    return found


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


# -- configuration --------------------------------------------------------------------------------------


def test_default_config_round_trips_through_yaml():
    text = config_yaml()
    assert text.startswith("# ihs run configuration")
    loaded = from_dict(yaml.safe_load(text))
    assert loaded == default_config()
    assert loaded.models == ["smollm2-135m-instruct"]
    assert set(loaded.data) == {"normal", "malicious", "contrast", "jailbreak"}
    assert loaded.analyses is None and loaded.wanted == analyses_default()
    assert {"probe", "lens", "generate", "jailbreak", "graft"} <= set(loaded.wanted)
    # every option is documented in the YAML it prints
    for step in steps():
        if step.options is not None:
            assert f"\n{step.name}:\n" in text, step.name


def test_partial_config_keeps_defaults_and_rejects_mistakes(tmp_path):
    cfg = from_dict({"limit": 7, "probe": {"classifiers": "svm,mlp"}, "graft": {"targets": 5}})
    assert cfg.limit == 7 and cfg.probe.classifiers == ["svm", "mlp"] and cfg.graft.targets == 5
    assert cfg.graft.layers == "0:L:5" and cfg.generate.limit == 40
    with pytest.raises(IhsError, match="unknown key 'limits'"):
        from_dict({"limits": 3})
    with pytest.raises(IhsError, match="config.probe: unknown key 'folds2'"):
        from_dict({"probe": {"folds2": 3}})
    with pytest.raises(IhsError, match="must be an integer"):
        from_dict({"limit": "many"})
    with pytest.raises(IhsError, match="unknown analysis 'tuned'"):
        from_dict({"analyses": ["probe", "tuned"]})
    with pytest.raises(IhsError, match="model.dtype must be one of"):
        from_dict({"model": {"dtype": "float77"}})
    with pytest.raises(IhsError, match="config: probe: unknown mode"):
        from_dict({"probe": {"mode": "magic"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a\n", encoding="utf-8")
    with pytest.raises(IhsError, match="not valid YAML"):
        load(bad)


def test_print_config_cli_merges_a_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: 3\nmodels: [gemma-3-270m]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["run", "--print-config", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert data["limit"] == 3 and data["models"] == ["gemma-3-270m"] and data["graft"]["layers"] == "0:L:5"


def test_step_key_depends_on_every_input():
    base = step_key(step="probe", extract="abc", options={"folds": 5})
    assert base == step_key(step="probe", options={"folds": 5}, extract="abc")
    assert base != step_key(step="probe", extract="abd", options={"folds": 5})
    assert base != step_key(step="probe", extract="abc", options={"folds": 4})


# -- end to end --------------------------------------------------------------------------------------------


def test_first_run_does_only_what_was_asked(tiny):
    index = json.loads((tiny.out / "run.json").read_text())
    assert "report: " in tiny.first.output and str(tiny.out / "report.html") in tiny.first.output.replace("\n", "")
    # the second run overwrote run.json; the first run's statuses are in its console output
    assert "generate" not in re.findall(r"· (\w+): done", tiny.first.output)
    assert set(re.findall(r"· (\w+): done", tiny.first.output)) == {"extract", "probe", "lens"}
    assert set(re.findall(r"· (\w+): cached", tiny.second.output)) == {"extract", "probe", "lens"}
    assert set(re.findall(r"· (\w+): done", tiny.second.output)) == {"generate", "jailbreak", "graft"}
    statuses = {s: v["status"] for s, v in index["models"][0]["steps"].items() if v["status"] != "disabled"}
    assert statuses == {"extract": "cached", "probe": "cached", "lens": "cached", "generate": "done",
                        "jailbreak": "done", "graft": "done"}


def test_every_section_is_present_and_filled_with_the_runs_numbers(tiny):
    page = (tiny.out / "report.html").read_text(encoding="utf-8")
    secs = sections(page)
    assert set(SECTIONS) <= set(secs), sorted(secs)
    assert "compare" not in secs  # one model: no comparison section
    model = json.loads((tiny.out / "run.json").read_text())["models"][0]["dir"]
    base = tiny.out / model
    probe = json.loads((base / "probe" / "probe.json").read_text())
    lens = json.loads((base / "lens" / "lens.json").read_text())
    refusal = json.loads((base / "generate" / "refusal.json").read_text())
    jb = json.loads((base / "jailbreak" / "jailbreak.json").read_text())
    graft = json.loads((base / "graft" / "graft.json").read_text())
    text = {k: text_of(v) for k, v in secs.items()}

    # summary: one finding per claim, none missing, quoting the outputs' numbers
    assert len(re.findall(r'data-finding="(\w+)"', secs["summary"])) == 5
    assert 'class="finding missing"' not in secs["summary"]
    entry = probe["stores"][0]
    svm = entry["classifiers"]["svm"]
    assert f"best {num(svm['best_accuracy'], 3)} at layer {svm['best_layer']}" in text["summary"]
    fwd = graft["forward"]
    best = max(fwd["layers"], key=lambda e: (e["asr"], e["changed_answers"], -e["layer"]))
    assert f"layer {best['layer']}: ASR {pct(best['asr'])}" in text["summary"]
    jbr = refusal["per_class"]["jailbreak"]
    assert f"ASR {pct(jbr['asr'])}" in text["summary"]
    tkic = lens["models"][0]["lenses"]["logit"]["consistency"]
    assert f"malicious {num(tkic['malicious']['scalar']['top1'])}" in text["summary"]

    # data: counts and the example prompts (hostile ones as text)
    assert "builtin:malicious" in text["data"]
    assert XSS_PROMPTS[0] in text["data"] and XSS_PROMPTS[1] in text["data"]

    # probes: every classifier's best accuracy and the interactive chart
    for clf, res in entry["classifiers"].items():
        assert f"{num(res['best_accuracy'], 3)} at layer {res['best_layer']}" in text["probe"], clf
    assert 'class="chart"' in secs["probe"] and "data:image/png;base64," in secs["probe"]

    # lens: middle-layer shares per class, the trajectory with class toggles
    logit = lens["models"][0]["lenses"]["logit"]
    lo, hi = logit["layer_range"]
    assoc = logit["association"]
    for label, c in assoc["classes"].items():
        layers = [i for i, layer in enumerate(assoc["layers"]) if lo <= layer <= hi]
        neg = sum(c["topk"]["negative"]["share"][i] for i in layers) / len(layers)
        assert re.search(rf"{label}\s+{c['n']}\s+{re.escape(pct(neg))}", text["lens"]), label
    assert 'data-dim="class"' in secs["lens"] and 'data-class="malicious"' in secs["lens"]

    # consistency: TKIC scalars and a hoverable heatmap per class
    for label, c in tkic.items():
        assert f"TKIC top-1 over layers {lo}-{hi} = {num(c['scalar']['top1'], 3)}" in text["consistency"]
        assert f'data-heatmap="{label}"' in secs["consistency"]
    assert secs["consistency"].count("data-tip=") >= 4 * (assoc["k"]) * len(assoc["layers"])

    # generation: per-class refusal rates and example answers
    for label, v in refusal["per_class"].items():
        assert re.search(rf"{label}\s+{v['n']}\s+{v['refused']}\s+{re.escape(pct(v['refusal_rate']))}", text["generate"])
    gens = [json.loads(line) for line in (base / "generate" / "generations.jsonl").read_text().splitlines()]
    assert any(html.escape(g["answer"]) in secs["generate"] for g in gens if g["answer"].strip())

    # jailbreak analysis: each group's early-recognition share
    for name, g in jb["groups"].items():
        if g["n"]:
            assert re.search(rf"{re.escape(name)}\s+{g['n']}\s+{re.escape(pct(g['early_recognised']))}", text["jailbreak"])

    # grafting: each layer's ASR, the baseline and the real-jailbreak reference
    for e in fwd["layers"]:
        assert re.search(rf"layer {e['layer']}\s+{e['n']}\s+{re.escape(pct(e['asr']))}", text["graft"])
    assert re.search(rf"no graft\s+{fwd['baseline']['n']}\s+{re.escape(pct(fwd['baseline']['asr']))}", text["graft"])
    assert "real jailbreaks" in text["graft"]

    # run details: every step and the config
    for step in ["extract", *analyses_default()]:
        assert re.search(rf"{step}\s+(done|cached)", text["run"]), step


def test_report_escapes_prompts_and_is_self_contained(tiny):
    page = (tiny.out / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "<img src=x onerror" not in page
    assert html.escape(XSS_PROMPTS[0]) in page
    assert len(re.findall(r"<script\b", page)) == 1  # only the report's own script
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from elsewhere
    assert "Content-Security-Policy" in page


def test_rerun_reuses_every_step_without_loading_the_model(tiny):
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["run", "--config", str(tiny.config), "--out", str(tiny.out), "--no-progress"])
    seconds = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    index = json.loads((tiny.out / "run.json").read_text())
    model = index["models"][0]
    assert {v["status"] for v in model["steps"].values()} == {"cached", "disabled"}
    assert model["model_loads"] == 0
    assert seconds < max(10.0, tiny.second_seconds / 2)
    assert (tiny.out / "run.log").read_text().count("cached (key") >= 6


def test_changed_option_recomputes_only_that_step(tiny, tmp_path):
    data = yaml.safe_load(tiny.config.read_text())
    data["graft"]["layers"] = "1:L"
    cfg = tmp_path / "graft-changed.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(tiny.out), "--no-progress"])
    assert result.exit_code == 0, result.output
    statuses = {s: v["status"] for s, v in json.loads((tiny.out / "run.json").read_text())["models"][0]["steps"].items()}
    assert statuses["graft"] == "done"
    assert {statuses[s] for s in STEPS if s != "graft"} == {"cached", "disabled"}
    graft = json.loads((tiny.out / json.loads((tiny.out / "run.json").read_text())["models"][0]["dir"]
                        / "graft" / "graft.json").read_text())
    assert [e["layer"] for e in graft["forward"]["layers"]] == [1, 2]
    # back to the shared config, so other tests see the original graft again
    CliRunner().invoke(app, ["run", "--config", str(tiny.config), "--out", str(tiny.out), "--no-progress"])


def test_skipped_or_failing_analysis_is_reported_not_faked(tiny, tmp_path, monkeypatch):
    import shutil

    from ihs.workflows.base import Skip
    from ihs.workflows.graft import GraftStep
    from ihs.workflows.probe import ProbeStep

    out = tmp_path / "copy"
    shutil.copytree(tiny.out, out)

    def skipped(self, ctx, folder):
        raise Skip("this run has no probe data")

    def broken(self, ctx, folder):
        raise RuntimeError("boom")

    monkeypatch.setattr(ProbeStep, "run", skipped)
    monkeypatch.setattr(GraftStep, "run", broken)
    result = run(load(tiny.config), out, progress=False, force=["probe", "graft"])
    statuses = {s: v["status"] for s, v in result.index["models"][0]["steps"].items()}
    assert statuses["probe"] == "skipped" and statuses["graft"] == "failed"
    assert statuses["lens"] == "cached" and statuses["generate"] == "cached"
    assert result.failed == [(result.index["models"][0]["slug"], "graft")]
    secs = sections(result.report.read_text(encoding="utf-8"))
    assert "this run has no probe data" in text_of(secs["probe"])
    assert "failed: RuntimeError: boom" in text_of(secs["graft"])
    summary = text_of(secs["summary"])
    assert "this run has no probe data" in summary and "RuntimeError: boom" in summary
    assert "RuntimeError: boom" in (out / "run.log").read_text()


def test_loaded_model_and_comparison_of_two_models(tmp_path):
    """Two already-loaded models, probe only: a comparison section with both models' numbers."""
    torch.set_num_threads(1)
    cfg = from_dict({
        "data": {"normal": "builtin:normal", "malicious": "builtin:malicious"}, "limit": 8,
        "analyses": ["probe"], "probe": {"classifiers": ["diffmean"], "folds": 2, "bow": False, "control": False},
    })
    a, b = make_tiny("llama", seed=1), make_tiny("qwen2", seed=2)
    result = run(cfg, tmp_path / "two", models=[a, b], progress=False)
    assert not result.failed
    assert [m["name"] for m in result.index["models"]] == ["tiny-llama", "tiny-qwen2"]
    secs = sections(result.report.read_text(encoding="utf-8"))
    assert "compare" in secs
    compare = text_of(secs["compare"])
    for m in result.index["models"]:
        probe = json.loads((result.out / m["dir"] / "probe" / "probe.json").read_text())
        assert m["name"] in compare
        assert probe["stores"][0]["num_layers"] == 2
    assert 'data-dim="model"' in secs["compare"]
    assert "disabled" in text_of(secs["graft"]).lower() or "switched off" in text_of(secs["graft"])


def test_threads_follow_the_config_or_the_machines_load(monkeypatch):
    import os

    assert choose_threads(3) == (3, "as configured")
    with pytest.raises(IhsError, match="at least 1"):
        choose_threads(0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    threads, why = choose_threads(None)
    assert threads == 1 and "load average 7.5 on 2 cores" in why
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert choose_threads(None)[0] == 2
