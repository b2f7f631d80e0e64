"""The Python API: the README's session runs as written on SmolLM2, and every call works on a tiny model."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, make_tiny, save_tiny
from ihs import api
from ihs.pipeline.context import torch_threads

README = REPO / "README.md"
SMOL_LAYERS = 30


def readme_session() -> str:
    """The first ```python block of README.md's "Python API" section."""
    text = README.read_text(encoding="utf-8")
    assert "\n## Python API\n" in text, "README.md has no 'Python API' section"
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Python API section has no python code block"
    return match.group(1)


def printed(out: str, label: str) -> str:
    """What the session printed after ``label:`` on its own line."""
    for line in out.splitlines():
        if line.startswith(label + ":"):
            return line[len(label) + 1:].strip()
    raise AssertionError(f"the session printed no line starting {label!r}:\n{out}")


def test_readme_session_is_short_commented_and_compiles():
    code = readme_session()
    lines = [line for line in code.splitlines() if line.strip()]
    assert 8 <= len(lines) <= 12, len(lines)
    assert all(re.search(r"\s#\s\S", line) for line in lines), "every line of the session carries a comment"
    compile(code, "README.md", "exec")
    for call in ("load_model", "extract", "probe", "lens", "graft"):
        assert f"ihs.{call}(" in code


FACTS = """
import json as _json
print("FACTS:", _json.dumps({"probe": probe, "lens_range": list(lens["range"]), "graft_layers": graft["layers"],
                            "n_targets": graft["n_targets"], "shape": list(store.hidden.shape)}))
"""


@pytest.mark.slow
def test_readme_session_runs_on_smollm2():
    # a fresh interpreter, as a reader runs it; one torch thread: on two shared cores, two threads that wait on
    # each other at every matrix multiply run up to ten times slower when anything else runs (alone, one
    # thread costs little here)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", readme_session() + FACTS], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout

    first = ast.literal_eval(printed(out, "first layer >= 0.95"))
    assert first is None or isinstance(first, int) and 1 <= first <= SMOL_LAYERS, first
    facts = json.loads(printed(out, "FACTS"))
    probe = facts["probe"]
    assert probe["num_layers"] == SMOL_LAYERS and probe["first_95"] == first
    assert probe["best_accuracy"] >= 0.9 and probe["control"] < 0.75, probe  # a real signal, a chance control

    tkic = ast.literal_eval(printed(out, "TKIC top-1"))
    negative = ast.literal_eval(printed(out, "negative share"))
    assert set(tkic) == set(negative) == {"normal", "malicious"}
    assert all(0.0 <= v <= 1.0 for v in [*tkic.values(), *negative.values()]), (tkic, negative)
    lo, hi = facts["lens_range"]
    assert 0 <= lo <= hi <= SMOL_LAYERS

    asr = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", printed(out, "ASR grafted at L/2"))]
    assert len(asr) == 2 and all(0.0 <= v <= 1.0 for v in asr), asr
    assert facts["graft_layers"] == [SMOL_LAYERS // 2] and facts["n_targets"] == 8
    assert facts["shape"] == [80, SMOL_LAYERS + 1, 576]
    print(f"README session: {seconds:.1f} s in a fresh interpreter with one torch thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny(make_tiny("llama"), tmp_path_factory.mktemp("api") / "tiny")
    with torch_threads(1):
        yield api.load_model(str(folder))


def test_every_api_name_resolves_from_import_ihs():
    code = ("import ihs, ihs.api as api\n"
            "print([n for n in api.__all__ if getattr(ihs, n) is not getattr(api, n)])\n"
            "print(ihs.parse_layers('L/2,-1', 30), ihs.parse_layer_range('0.5:0.85', 30))\n"
            "print(hasattr(ihs, 'no_such_name'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:3] == ["[]", "[15, 30] (15, 26)", "False"], proc.stdout


def test_ihs_extract_stays_the_api_function_after_the_extractor_is_imported():
    """No module of ihs is named like an API call, so importing the extractor cannot rebind ``ihs.extract``."""
    import importlib
    import pkgutil

    import ihs
    import ihs.extraction  # noqa: F401 - what any code using the extractor does

    assert ihs.extract is api.extract
    modules = {m.name for m in pkgutil.iter_modules(ihs.__path__)}
    assert not modules & set(api.__all__), modules & set(api.__all__)
    assert importlib.import_module("ihs.extraction").extract is not api.extract


def test_extract_probe_lens_on_a_tiny_model(tiny, tmp_path):
    records = api.prompts({"normal": "builtin:normal", "malicious": "builtin:malicious"}, limit=6)
    assert [r.label for r in records].count("malicious") == 6
    store = api.extract(tiny, records, tmp_path / "store", progress=False)
    assert isinstance(store, api.ActivationStore)
    assert store.hidden.shape == (12, tiny.num_layers + 1, 32)

    probe = api.probe(tmp_path / "store", classifiers=["diffmean"], folds=3, bow=False)  # a folder works too
    numbers = probe.numbers()
    assert numbers["num_layers"] == tiny.num_layers and numbers["n"] == {"normal": 6, "malicious": 6}

    lens = api.lens(store, model=tiny).numbers()
    lo, hi = lens["range"]
    assert 0 <= lo <= hi <= tiny.num_layers
    assert set(lens["tkic_top1"]) == {"normal", "malicious"}
    assert all(0.0 <= v <= 1.0 for v in lens["tkic_top1"].values())


def test_probe_finds_a_planted_direction_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    labels = np.array(["normal", "malicious"] * 30)
    hidden = rng.normal(size=(60, 4, 16)).astype("float32")
    hidden[labels == "malicious", 2:, 0] += 6.0  # layers 2 and 3 carry the class
    planted = api.probe(api.ActivationStore.from_arrays(hidden, list(labels)), classifiers=["logreg"], bow=False)
    assert planted.numbers()["first_95"] == 2
    shuffled = api.probe(api.ActivationStore.from_arrays(hidden, list(rng.permutation(labels))),
                         classifiers=["logreg"], bow=False)
    assert shuffled.numbers()["first_95"] is None and shuffled.numbers()["best_accuracy"] < 0.8


def test_generate_and_graft_on_a_tiny_model(tiny):
    answers = api.generate(tiny, "builtin:malicious", limit=3, max_new_tokens=4).numbers()
    assert answers["per_class"]["malicious"]["n"] == 3
    assert 0.0 <= answers["asr"] <= 1.0

    result = api.graft(tiny, targets="builtin:malicious", donors="builtin:normal", layers="L/2", limit=3,
                       donor_limit=4, max_new_tokens=4)
    graft = result.numbers()
    assert graft["layers"] == [tiny.num_layers // 2]
    assert graft["n_targets"] == 3 and graft["n_donors"] == 4
    assert 0.0 <= graft["best_asr"] <= 1.0 and 0.0 <= graft["baseline_asr"] <= 1.0
    assert len(result.rows) == 2 * 3  # the baseline and one grafted layer, three answers each
