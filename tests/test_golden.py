"""Golden numbers of ``ihs run`` on the tiny test model.

The numbers every analysis gives on the shared tiny run (probe accuracies and controls, lens shares,
TKIC, refusal, jailbreak ASR and early recognition, graft ASR) were recorded once in
``tests/golden/tiny_run.json``. Any change to the code that moves one of them fails here: a
refactor must keep behaviour. After a deliberate change of method, regenerate with
``IHS_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import _config, make_tokenizer, save_tiny
from test_run import tiny_config

GOLDEN = Path(__file__).parent / "golden" / "tiny_run.json"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _r(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else round(x, 6)
    if isinstance(x, list):
        return [_r(v) for v in x]
    if isinstance(x, dict):
        return {k: _r(v) for k, v in x.items()}
    return x


def golden_numbers(out: Path) -> dict[str, Any]:
    """The numbers of one run folder, keyed by analysis (read from the files each step writes)."""
    run = json.loads((out / "run.json").read_text())
    base = out / run["models"][0]["dir"]
    probe = json.loads((base / "probe" / "probe.json").read_text())
    lens = json.loads((base / "lens" / "lens.json").read_text())
    refusal = json.loads((base / "generate" / "refusal.json").read_text())
    jb = json.loads((base / "jailbreak" / "jailbreak.json").read_text())
    graft = json.loads((base / "graft" / "graft.json").read_text())
    entry = probe["stores"][0]
    numbers: dict[str, Any] = {"probe": {
        "layers": entry["layers"], "n": entry["n"],
        "bow": {k: entry["bow"][k] for k in ("accuracy", "ci_low", "ci_high")} if entry.get("bow") else None,
        "classifiers": {clf: {k: res.get(k) for k in ("accuracy", "control_accuracy", "first_layer_95", "best_layer",
                                                        "best_accuracy", "contrast_fpr", "jailbreak_called_malicious")}
                        for clf, res in entry["classifiers"].items()},
    }}
    logit = lens["models"][0]["lenses"]["logit"]
    numbers["lens"] = {
        "layer_range": logit["layer_range"],
        "shares": {label: {e: c["topk"][e]["share"] for e in ("negative", "positive", "neutral")}
                   for label, c in logit["association"]["classes"].items()},
        "tkic": {label: c["scalar"] for label, c in logit["consistency"].items()},
    }
    numbers["refusal"] = {label: {"n": v["n"], "refused": v["refused"], "refusal_rate": v["refusal_rate"],
                                  "asr": v.get("asr")} for label, v in refusal["per_class"].items()}
    numbers["jailbreak"] = {name: {k: g.get(k) for k in ("n", "early_recognised", "asr")}
                            for name, g in jb["groups"].items()}
    fwd = graft["forward"]
    numbers["graft"] = {"baseline": {k: fwd["baseline"][k] for k in ("n", "asr")},
                        "layers": [{k: e[k] for k in ("layer", "n", "asr", "changed_answers")} for e in fwd["layers"]],
                        "reference": ({k: fwd["reference"][k] for k in ("n", "asr")}
                                      if fwd.get("reference") else None)}
    # the answers themselves: generation and grafting must produce the same text, token for token
    for step in ("generate", "graft"):
        rows = [json.loads(line) for line in (base / step / "generations.jsonl").read_text().splitlines() if line]
        answers = sorted(json.dumps([r.get("id"), r.get("layer"), r.get("direction"), r["answer"]]) for r in rows)
        numbers[f"{step}_answers"] = {"n": len(rows), "sha256": hashlib.sha256("\n".join(answers).encode()).hexdigest()}
    return _r(numbers)


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: missing" for k in a.keys() ^ b.keys()]
        for k in a.keys() & b.keys():
            out += _diff(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float | int):
        return [] if abs(a - b) <= 1e-6 else [f"{where}: {a} != {b}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def emotive_tiny(folder: Path) -> Path:
    """A tiny random Llama whose vocabulary holds emotion words (sorry, cannot, glad, sure, ...) and whose
    unembedding rows for them are scaled up, so the lens, TKIC and the refusal judge see non-zero shares
    that differ by prompt."""
    from transformers import AutoModelForCausalLM

    from ihs.analysis.emotion import EmotionMatcher, Lexicon
    from ihs.models.loading import from_modules

    tokenizer = make_tokenizer(vocab_size=700)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config("llama", len(tokenizer)))
    matcher = EmotionMatcher(Lexicon.load(None), tokenizer)
    with torch.no_grad():
        for token_id in range(len(tokenizer)):
            if matcher.classify(tokenizer.decode([token_id])):
                model.lm_head.weight[token_id] *= 4.0
    return save_tiny(from_modules(model, tokenizer, name="tiny-emotive"), folder)


def test_tiny_run_numbers_match_the_golden_record(tmp_path):
    from typer.testing import CliRunner

    from ihs.cli import app

    config = tiny_config(tmp_path, emotive_tiny(tmp_path / "tiny-emotive"))
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    numbers = golden_numbers(tmp_path / "run")
    if os.environ.get("IHS_UPDATE_GOLDEN") or not GOLDEN.exists():
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if not os.environ.get("IHS_UPDATE_GOLDEN"):
            pytest.fail(f"no golden record yet: wrote {GOLDEN}; commit it and re-run")
    expected = json.loads(GOLDEN.read_text())
    differences = _diff(expected, numbers)
    assert not differences, "numbers moved:\n" + "\n".join(differences[:30])
    # the record holds real numbers, not an empty shell
    assert expected["probe"]["classifiers"] and expected["graft"]["layers"] and expected["refusal"]
