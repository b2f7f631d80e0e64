"""The report's sections, one by one, from hand-made results in a hand-made run folder (no model, no run).

Each section must render from its step's result (saved where the step saves it, read back through
the workflow's Result class), show the result's own numbers, escape hostile text wherever it comes
from (prompts, answers, token strings, group, family and language names, model names, warnings), and
say why when its step did not run. The page finds the sections by step name.
"""

from __future__ import annotations

import html
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ihs.io import write_json, write_jsonl
from ihs.pipeline.layout import RunLayout
from ihs.report import page
from ihs.report.context import ModelResults, load_context
from ihs.report.html import display_token, esc, num, pct, table, text_block
from ihs.report.sections import defense, guard, languages
from ihs.report.svg import line_chart
from ihs.store import PROMPTS

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
STEP_SECTIONS = {"probe": ["probe"], "lens": ["lens", "consistency"], "generate": ["generate"],
                 "jailbreak": ["jailbreak"], "graft": ["graft"], "guard": ["guard"], "defense": ["defense"],
                 "languages": ["languages"]}
LAYERS = [0, 1, 2]


# -- hand-made results --------------------------------------------------------------------------------------


def probe_data() -> dict[str, Any]:
    svm = {"accuracy": [0.55, 0.97, 0.99], "ci_low": [0.4, 0.9, 0.95], "ci_high": [0.7, 1.0, 1.0],
           "control_accuracy": [0.5, 0.52, 0.48], "first_layer_95": 1, "first_layer_95_depth": 0.5, "best_layer": 2,
           "best_accuracy": 0.99, "contrast_fpr": [0.5, 0.25, 0.0], "jailbreak_called_malicious": [0.5, 0.75, 1.0]}
    store = {"layers": LAYERS, "depth": [0.0, 0.5, 1.0], "num_layers": 2, "classes": ["normal", "malicious"],
             "n": {"normal": 8, "malicious": 8}, "chance": 0.5, "classifiers": {"svm": svm}, "bow": {"accuracy": 0.625},
             "confound": {"layer0_accuracy": {"svm": 0.55}}, "warnings": [f"warning {XSS}"]}
    return {"mode": "cv", "folds": 3, "stores": [store], "warnings": []}


def _consistency(n: int, top1: float) -> dict[str, Any]:
    tokens = [[" sorry", IMG], ["\n", XSS], ["sure", " "]]
    return {"n": n, "layers": LAYERS, "text": tokens, "shares": [[0.5, 0.25]] * 3,
            "emotion": [["negative", None]] * 3, "scalar": {"top1": top1, "topk": top1 / 2}}


def lens_data(model: str) -> dict[str, Any]:
    def cls(n: int, neg: list[float]) -> dict[str, Any]:
        return {"n": n, "topk": {"negative": {"share": neg}, "positive": {"share": [0.1, 0.2, 0.3]},
                                 "neutral": {"share": [0.0, 0.0, 0.1]}}}

    assoc = {"layers": LAYERS, "k": 2, "classes": {"normal": cls(4, [0.0, 0.25, 0.5]),
                                                     "malicious": cls(4, [0.25, 0.75, 1.0])},
             "negative_dominance": {"topk": {"first": 1, "stable_from": 1}, "definition": "margin 0.1"}}
    logit = {"layer_range": [1, 1], "association": assoc,
             "consistency": {"normal": _consistency(4, 0.25), "malicious": _consistency(4, 0.625)}}
    entry = {"store_name": model, "store": f"{model}/extract/store", "model": {"name": model}, "num_layers": 2, "k": 2, "lenses": {"logit": logit},
             "vocab_check": {"words_with_single_token": {"negative": 3}, "words_total": {"negative": 5}}}
    return {"models": [entry], "lexicon": {"name": "lexicon", "version": "1"}, "tkic_definition": "mean top-1 share"}


def refusal_data() -> dict[str, Any]:
    def rate(n: int, refused: int) -> dict[str, Any]:
        return {"n": n, "refused": refused, "refusal_rate": refused / n, "refusal_ci95": [0.1, 0.9],
                "asr": 1 - refused / n, "asr_ci95": [0.1, 0.9]}

    return {"per_class": {"normal": rate(4, 1), "malicious": rate(4, 3), "jailbreak": rate(4, 2)},
            "per_family": {f"family {IMG}": {"n": 4, "refusal_rate": 0.5, "asr": 0.5}}, "asr": 0.375,
            "judge": "phrases", "options": {"max_new_tokens": 8}, "seconds": 1.5, "model": "tiny"}


def generations() -> list[dict[str, Any]]:
    return [{"id": f"g{i}", "label": label, "prompt": f"{label} prompt {XSS}", "answer": f"answer {IMG}",
             "refused": i % 2 == 0, "tags": {"family": f"fam {XSS}"}}
            for i, label in enumerate(["malicious", "jailbreak", "normal"])]


def jailbreak_data() -> dict[str, Any]:
    def group(n: int, early: float) -> dict[str, Any]:
        return {"n": n, "early_recognised": early, "mid_negative_share": {"mean": 0.5},
                "mid_positive_share": {"mean": 0.25}, "middle_negative": 0.5, "refusal_rate": 0.75,
                "negative_by_layer": [0.0, 0.5, 1.0], "predicted_malicious_by_layer": [0.5, 0.75, 1.0]}

    return {"groups": {"normal": group(4, 0.25), "malicious": group(4, 0.75), "jailbreak (all)": group(4, 0.5),
                       f"group {XSS}": group(2, 0.5)},
            "early_layer": 1, "layers": LAYERS, "middle": [1, 1], "definitions": {"early": f"probe {IMG}"},
            "refused_vs_complied": {"mid_negative_difference": 0.25, "mid_negative_mannwhitney_p": 0.5},
            "families": {f"fam {XSS}": {"n": 2, "early_recognised": 0.5, "mid_negative_share": 0.5,
                                        "mid_positive_share": 0.5, "refusal_rate": 0.5}}}


def graft_data() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    layers = [{"layer": 0, "n": 4, "asr": 0.25, "asr_ci95": [0.0, 0.5], "changed_answers": 1},
              {"layer": 1, "n": 4, "asr": 0.75, "asr_ci95": [0.5, 1.0], "changed_answers": 3}]
    fwd = {"layers": layers, "baseline": {"n": 4, "asr": 0.25}, "reference": {"n": 4, "asr": 0.5, "label": "jailbreak"},
           "n_targets": 4, "n_donors": 4, "donor_labels": ["normal"], "target_labels": ["malicious"], "per_pair": False}
    rows = [{"id": "t1", "graft_layer": layer, "direction": "forward", "prompt": f"target {XSS}",
             "answer": f"grafted {IMG}", "refused": False} for layer in (None, 1)]
    return {"forward": fwd, "reverse": None, "target_donor_split": "disjoint"}, rows


def guard_data() -> tuple[dict[str, Any], dict[str, Any]]:
    overall = {"n_malicious": 6, "n_benign": 10, "auroc": 0.875, "tpr_at_1pct_fpr": 0.5, "tpr": 0.8333, "fpr": 0.1,
               "accuracy": 0.875}
    bow = {"n_malicious": 6, "n_benign": 10, "auroc": 0.625, "tpr_at_1pct_fpr": 0.1667, "tpr": 0.5, "fpr": 0.2,
           "accuracy": 0.6875}
    fam = {"n_malicious": 2, "n_benign": 10, "auroc": 1.0, "tpr_at_1pct_fpr": 1.0, "tpr": 1.0, "fpr": 0.1,
           "accuracy": 0.9}
    held = {"name": "store (held-out)", "n": 16,
            "guard": {"overall": overall, "by_label": {"normal": {"n_benign": 10, "fpr": 0.1}},
                      "by_family": {f"fam {XSS}": fam}},
            "bow": {"overall": bow, "by_label": {}, "by_family": {}}}
    evaluation = {"layer": 1, "classifier": "logreg", "threshold": 0.7, "target_fpr": 0.01, "sets": [held]}
    card = {"model": {"num_layers": 2}, "selection": {"chosen": {"cv_auroc": 0.9}}, "calibration_fpr": 0.0,
            "warnings": [f"card warning {IMG}"]}
    return evaluation, card


def defense_data() -> dict[str, Any]:
    def variant(name: str, mode: str, asr: float, refusal: float, layers: list[int] | None) -> dict[str, Any]:
        per = {"malicious": {"n": 4, "asr": asr, "refusal_rate": 1 - asr, "steered": 2},
               "normal": {"n": 4, "asr": 1 - refusal, "refusal_rate": refusal, "steered": 0}}
        return {"name": name, "mode": mode, "asr_attack": asr, "refusal_benign": refusal, "layers": layers,
                "alpha": 0.2 if layers else None, "per_class": per, "normal_ppl_ratio": 1.01 if layers else None}

    best = f"cond L1:1 a0.2 {XSS}"
    return {"variants": [variant("undefended", "none", 0.875, 0.0, None),
                         variant("refuse when flagged", "refuse", 0.25, 0.125, None),
                         variant(best, "conditional", 0.375, 0.0625, [1]), variant("always", "always", 0.125, 0.5, [1])],
            "best": best, "tuned_best": best, "n": 16, "selection": {"split": "eval"}, "judge": "phrases",
            "best_rule": "largest drop", "guard": {"layer": 1, "threshold": 0.6}}


def languages_data() -> dict[str, Any]:
    groups = ["en", f"xx{XSS}"]
    acc = {"accuracy": [0.5, 0.9, 0.95]}
    rows = {"en": {"svm_cv_first_95": 2, "svm_cv_early_mean": 0.9, "svm_cv_best": 0.95},
            groups[1]: {"svm_cv_first_95": None, "svm_cv_early_mean": 0.7, "svm_cv_best": 0.8125,
                        "svm_forward_first_95": None, "svm_forward_early_mean": 0.6875, "svm_reverse_best": 0.75}}
    res = {"name": "tiny", "num_layers": 2, "source": "en", "classes": ["normal", "malicious"], "groups": groups,
           "n": {g: {"normal": 8, "malicious": 8} for g in groups}, "middle_layers": [1],
           "cv": {"svm": {"layers": LAYERS, "groups": {g: acc for g in groups}}},
           "transfer": {"svm": {"layers": LAYERS, "forward": {groups[1]: acc}, "reverse": {groups[1]: acc}}},
           "summary": {"early_layers": [1], "rows": rows}}
    mal = {"n": 8, "refused": 6, "refusal_rate": 0.75, "refusal_ci95": [0.4, 0.9]}
    return {"tag": "lang", "models": [res], "refusal": {"tiny": {"groups": {groups[1]: {"malicious": mal}}}}}


def write_results(layout: RunLayout, model: str) -> None:
    """Every step's output where the step saves it, under the Result classes' file names."""
    from ihs.workflows.defense import DefenseResult
    from ihs.workflows.generate import GENERATIONS, GenerateResult
    from ihs.workflows.graft import GraftResult
    from ihs.workflows.guard import GuardResult
    from ihs.workflows.jailbreak import JailbreakResult
    from ihs.workflows.languages import LanguagesResult
    from ihs.workflows.lens import LensResult
    from ihs.workflows.probe import ProbeResult

    def folder(step: str) -> Path:
        return layout.step_dir(model, step)

    write_jsonl(layout.store_dir(model) / PROMPTS, [{"id": "p1", "label": "normal", "text": f"hello {XSS}"},
                                                    {"id": "p2", "label": "malicious", "text": f"bad {IMG}"}])
    write_json(folder("probe") / ProbeResult.FILE, probe_data())
    write_json(folder("lens") / LensResult.FILE, lens_data(model))
    write_json(folder("generate") / GenerateResult.FILE, refusal_data())
    write_jsonl(folder("generate") / GENERATIONS, generations())
    write_json(folder("jailbreak") / JailbreakResult.FILE, jailbreak_data())
    graft, rows = graft_data()
    write_json(folder("graft") / GraftResult.FILE, graft)
    write_jsonl(folder("graft") / "generations.jsonl", rows)
    evaluation, card = guard_data()
    write_json(folder("guard") / GuardResult.FILE, evaluation)
    write_json(folder("guard") / "guard.json", card)
    write_json(folder("defense") / DefenseResult.FILE, defense_data())
    write_json(folder("languages") / LanguagesResult.FILE, languages_data())


def make_index(models: list[str], status: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    steps = {s: {"status": "done", "key": "k", "seconds": 0.5} for s in ["extract", *STEP_SECTIONS]}
    steps.update(status or {})
    entries = [{"slug": m, "name": f"{m} {IMG}", "dir": m, "ref": m, "fingerprint": "f", "dtype": "float32",
                "steps": dict(steps)} for m in models]
    return {"ihs_version": "0", "created": "2026-01-01T00:00:00Z", "command": f"ihs run {XSS}",
            "config": {"report": {"examples": 2, "title": f"title {XSS}"}},
            "data": {"specs": [f"normal=file {IMG}.txt"], "counts": {"normal": 2}, "limit": 4, "cleaning": {}},
            "steps": list(steps), "models": entries, "log": "run.log"}


def run_folder(tmp_path: Path, models: tuple[str, ...] = ("tiny",), **status: dict[str, Any]) -> tuple[Path, dict]:
    layout = RunLayout(tmp_path / "run")
    for m in models:
        write_results(layout, m)
    index = make_index(list(models), status)
    write_json(layout.run_json, index)
    return layout.out, index


def sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in
            re.finditer(r'<section class="sec" id="sec-(\w+)" data-section="\w+">(.*?)</section>', text, re.S)}


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


@pytest.fixture
def report(tmp_path, monkeypatch) -> dict[str, str]:
    ids = np.zeros((2, 3, 2), dtype=int)
    ids[:, :, 1] = 1
    examples = {"ids": ids, "num_layers": 2, "text": {0: XSS, 1: f" {IMG}\n"}.get,
                "records": [{"label": "normal", "text": f"hi {XSS}"}, {"label": "malicious", "text": f"x {IMG}"}]}
    monkeypatch.setattr(ModelResults, "lens_examples", lambda self: examples)
    out, _ = run_folder(tmp_path)
    return {"page": page.build_report(out)}


# -- the tests --------------------------------------------------------------------------------------------------


def test_every_section_renders_its_results_numbers(report):
    secs = sections(report["page"])
    # in run order; one model: no comparison; explain is registered but did not run here: its section says so
    expected = ["summary", "data", *[s for group in STEP_SECTIONS.values() for s in group], "explain", "run"]
    assert list(secs) == expected
    text = {k: text_of(v) for k, v in secs.items()}
    assert len(re.findall(r'data-finding="(\w+)"', secs["summary"])) == 5
    assert 'class="finding missing"' not in secs["summary"]
    assert "layer 1 of 2" in text["summary"] and "layer 1: ASR 75%" in text["summary"]
    assert f"{num(0.99, 3)} at layer 2" in text["probe"] and 'class="chart"' in secs["probe"]
    assert re.search(r"malicious\s+4\s+75%", text["lens"])  # the middle-layer (1) negative share
    assert "TKIC top-1 over layers 1-1 = 0.625" in text["consistency"]
    assert re.search(r"malicious\s+4\s+3\s+75%", text["generate"])
    assert re.search(r"jailbreak \(all\)\s+4\s+50%", text["jailbreak"])
    assert re.search(r"layer 1\s+4\s+75%", text["graft"]) and "real jailbreaks" in text["graft"]
    assert re.search(r"guard \(layer 1, logreg\)\s+6 / 10\s+0\.875\s+50%\s+83%\s+10%", text["guard"])
    assert re.search(r"bag-of-words on the raw text\s+6 / 10\s+0\.625", text["guard"])
    assert "layer 1 of 2" in text["guard"] and "50% of one prompt pass" in text["guard"]
    assert re.search(r"no defense\s+88%\s+0%", text["defense"])
    assert re.search(r"chosen setting, when flagged\s+layers 1, alpha 0.2\s+38%\s+6%", text["defense"])
    assert "from 88% to 38%" in text["defense"]
    assert re.search(r"en\s+8 / 8\s+0.90\s+2\s+0.95\s+\(source\)", text["languages"])
    assert re.search(r"malicious refused.*6 of 8\s+75%", text["languages"], re.S)
    for step in ("probe", "guard", "defense", "languages"):
        assert re.search(rf"{step}\s+done", text["run"])


def test_hostile_text_is_escaped_in_every_section(report):
    text = report["page"]
    assert XSS not in text and IMG not in text
    assert len(re.findall(r"<script\b", text)) == 1  # only the report's own script
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    secs = sections(text)
    hostile = {"data": [XSS, IMG], "probe": [XSS], "lens": [XSS, IMG], "consistency": [XSS, IMG],
               "generate": [XSS, IMG], "jailbreak": [XSS, IMG], "graft": [XSS, IMG], "guard": [XSS, IMG],
               "defense": [XSS], "languages": [XSS], "run": [XSS]}
    for key, strings in hostile.items():
        for s in strings:
            assert html.escape(s) in secs[key] or display_token(s, 12) in text_of(secs[key]), (key, s)
    assert f"<title>{esc('title ' + XSS)}</title>" in text


@pytest.mark.parametrize("step", list(STEP_SECTIONS))
@pytest.mark.parametrize("status, says", [
    ({"status": "disabled", "message": "not in analyses (probe)"}, "switched off in the run's config"),
    ({"status": "failed", "message": f"RuntimeError: {XSS}"}, f"This step failed: RuntimeError: {XSS}"),
    ({"status": "skipped", "message": "needs jailbreak data"}, "Not run: needs jailbreak data."),
])
def test_a_step_that_did_not_run_gives_its_notice(tmp_path, step, status, says):
    out, _ = run_folder(tmp_path, **{step: status})
    text = page.build_report(out)
    assert XSS not in text
    secs = sections(text)
    for key in STEP_SECTIONS[step]:
        assert 'class="notice' in secs[key] and says in text_of(secs[key]), key
        assert 'class="chart"' not in secs[key]


def test_a_missing_output_or_unknown_step_says_so(tmp_path):
    out, index = run_folder(tmp_path)
    (RunLayout(out).step_dir("tiny", "guard") / "eval.json").unlink()
    for entry in index["models"]:
        del entry["steps"]["defense"]
    secs = sections(page.build_report(out, index))
    assert "No output found for this step." in text_of(secs["guard"])
    assert "No output found for this step." in text_of(secs["defense"])  # registered, absent from this run


def test_sections_are_found_by_step_name(tmp_path, monkeypatch):
    module = types.ModuleType("ihs.report.sections.planted")
    module.TITLE = "Planted"
    module.section = lambda ctx: f'<section class="sec" id="sec-planted" data-section="planted">{len(ctx.models)}</section>'
    monkeypatch.setitem(sys.modules, "ihs.report.sections.planted", module)
    out, index = run_folder(tmp_path)
    index["models"][0]["steps"]["planted"] = {"status": "done"}
    index["models"][0]["steps"]["nosection"] = {"status": "done"}
    names = page.section_names(index)
    assert names[:2] == ["summary", "data"] and names[-2:] == ["compare", "run"]
    assert names.index("lens") + 1 == names.index("consistency")
    assert "planted" in names and "nosection" not in names
    text = page.build_report(out, index)
    assert '<a href="#sec-planted">Planted</a>' in text and sections(text)["planted"] == "1"


def test_two_models_get_a_comparison(tmp_path):
    out, _ = run_folder(tmp_path, models=("one", "two"))
    secs = sections(page.build_report(out))
    compare = text_of(secs["compare"])
    assert f"one {IMG}" in compare and f"two {IMG}" in compare
    assert re.search(r"1 \(0.50\)\s+\+50 pts", compare)  # first layer >= 0.95 (depth), middle negative contrast
    assert 'data-dim="model"' in secs["compare"]
    assert secs["probe"].count('class="model-block"') == 2


def test_new_sections_render_alone_from_a_context(tmp_path):
    out, index = run_folder(tmp_path)
    ctx = load_context(out, index)
    for module in (guard, defense, languages):
        body = module.section(ctx)
        assert body.startswith(f'<section class="sec" id="sec-{module.__name__.rsplit(".", 1)[1]}"')
        assert XSS not in body and IMG not in body


def test_primitives_escape():
    assert esc('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"
    assert XSS not in table([XSS], [[XSS, IMG]]) and XSS not in text_block(XSS * 100, 10)
    chart = line_chart([{"name": XSS, "x": [0, 1], "y": [0.5, None], "color": '"red'}], x_label=IMG, y_label=XSS,
                       title=XSS, toggles=[("d", XSS, [(XSS, IMG, "", True)])], hlines=[{"y": 0.5, "label": IMG}])
    assert XSS not in chart and IMG not in chart and 'stroke=""red' not in chart
    assert display_token(" a\n\u200b ") == "␣a\\n\\u200b␣" and display_token("") == "∅"
    assert pct(None) == "n/a" and pct(0.125, 1) == "12.5%" and num(float("nan")) == "n/a"
