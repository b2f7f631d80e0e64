"""Languages: the built-in parallel set, language tags, per-language probes, transfer, scripts, refusal."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ihs.analysis.multilingual import (
    lens_by_group,
    per_group_cv,
    refusal_by_group,
    text_script,
    token_script,
    transfer,
)
from ihs.data.loaders import load_dataset_spec
from ihs.data.multilingual import CLASSES, LANGUAGES, SOURCE_COUNTS, select_sources
from ihs.data.prepare import prepare
from ihs.errors import DataError
from ihs.generation import REFUSAL_PHRASES, PhraseJudge
from ihs.store import ActivationStore


def _rows(name: str) -> list[dict]:
    text = resources.files("ihs.data").joinpath("builtin", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- the built-in parallel set -----------------------------------------------------------------------


def test_counts_per_language_and_class() -> None:
    recs = load_dataset_spec("builtin:multilingual")
    counts = Counter((r.label, r.tags["lang"]) for r in recs)
    assert len(LANGUAGES) >= 6 and {"en", "zh", "es", "sw", "bn"} <= set(LANGUAGES)
    for lang in LANGUAGES:
        for cls, n in SOURCE_COUNTS.items():
            assert counts[(cls, lang)] == n, (cls, lang)
    assert len(recs) == sum(SOURCE_COUNTS.values()) * len(LANGUAGES)
    assert len({r.id for r in recs}) == len(recs)  # no prompt twice


def test_every_translation_links_to_an_english_id_of_the_seeded_selection() -> None:
    originals = {c: _rows(f"{c}.jsonl") for c in CLASSES}
    english = {r["id"]: (c, r) for c, rows in originals.items() for r in rows}
    rows = _rows("multilingual.jsonl")
    selection = select_sources(originals)
    for lang in LANGUAGES:
        if lang == "en":
            continue
        mine = [r for r in rows if r["lang"] == lang]
        assert all(r["src_id"] in english for r in mine)
        # exactly the seeded selection, in draw order, once per language
        assert [r["src_id"] for r in mine] == [i for c in CLASSES for i in selection[c]]
        assert all(r["prompt"] != english[r["src_id"]][1]["prompt"] for r in mine)
    # the selection is spread: every category of every class is represented
    for cls, ids in selection.items():
        cats = {english[i][1]["category"] for i in ids}
        assert cats == {r["category"] for r in originals[cls]}


def test_scripts_of_the_translations() -> None:
    recs = load_dataset_spec("builtin:multilingual")
    want = {"en": "latin", "es": "latin", "fr": "latin", "sw": "latin", "zh": "han", "bn": "bengali"}
    for lang, script in want.items():
        got = Counter(text_script(r.text) for r in recs if r.tags["lang"] == lang)
        assert got.most_common(1)[0][0] == script and got[script] >= 0.95 * sum(got.values()), (lang, got)


def test_spec_filters_labels_and_bad_specs() -> None:
    mal = load_dataset_spec("builtin:multilingual:malicious:en,sw", label="bad")
    assert len(mal) == 200 and {r.label for r in mal} == {"bad"}
    assert Counter(r.tags["lang"] for r in mal) == {"en": 100, "sw": 100}
    assert all(r.tags["class"] == "malicious" and r.tags["src_id"].startswith("malicious-") for r in mal)
    en = {r.tags["src_id"]: r for r in mal if r.tags["lang"] == "en"}
    sw = [r for r in mal if r.tags["lang"] == "sw"]
    assert all(en[r.tags["src_id"]].tags["category"] == r.tags["category"] for r in sw)
    for spec, needle in (("builtin:multilingual:evil", "unknown class"),
                         ("builtin:multilingual:normal:xx", "unknown language"),
                         ("builtin:multilingual:normal:en:5", "bad spec")):
        with pytest.raises(DataError, match=needle):
            load_dataset_spec(spec)


def test_prepare_lang_default_column_and_limit_by(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("prompt,language\nhola amigo,es\nhello friend,\n", encoding="utf-8")
    recs, report = prepare([("normal", str(f))], lang="en")
    assert [r.tags["lang"] for r in recs] == ["es", "en"] and report["lang"] == "en"
    recs, _ = prepare(["normal=builtin:multilingual:normal", "malicious=builtin:multilingual:malicious"],
                      limit=3, limit_by="lang")
    assert Counter((r.label, r.tags["lang"]) for r in recs) == {(c, g): 3 for c in CLASSES[:2] for g in LANGUAGES}
    # the first prompts of a class are spread over categories
    cats = [r.tags["category"] for r in recs if r.label == "malicious" and r.tags["lang"] == "bn"]
    assert len(set(cats)) == 3


# -- Unicode script of tokens ----------------------------------------------------------------------


@pytest.mark.parametrize("token, script", [
    (" hello", "latin"), ("\u0120the", "latin"), ("\u2581Sorry", "latin"), ("ｈｅｌｌｏ", "latin"), ("ñandú", "latin"),
    ("你好", "han"), ("抱歉", "han"), ("বাংলা", "bengali"), ("দুঃখিত", "bengali"), ("नमस्ते", "devanagari"),
    ("Привет", "cyrillic"), ("مرحبا", "arabic"), ("こんにちは", "kana"), ("한국", "hangul"),
    ("\ufffd", "bytes"), ("ab\ufffd", "bytes"), ("123", "none"), (" ", "none"), ("।", "none"), ("<|im_end|>", "latin"),
])
def test_token_script(token: str, script: str) -> None:
    assert token_script(token) == script


# -- per-language probes and transfer on planted signals ---------------------------------------------

D, L = 12, 3


def _planted(n_per: int = 40, seed: int = 0) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """en, xx, yy share one malicious direction (from layer 1) with their own offsets; zz separates the
    classes along an orthogonal direction, so it is learnable inside zz but does not transfer."""
    rng = np.random.default_rng(seed)
    shared = np.zeros(D)
    shared[0] = 1.0
    other = np.zeros(D)
    other[1] = 1.0
    H, labels, langs, texts = [], [], [], []
    for g in ("en", "xx", "yy", "zz"):
        offset = rng.normal(scale=1.0, size=D)
        offset[:2] = 0.0
        direction = other if g == "zz" else shared
        for c in ("normal", "malicious"):
            for i in range(n_per):
                h = rng.normal(size=(L + 1, D)) + offset
                h[1:] += (4.0 if c == "malicious" else -4.0) * direction
                H.append(h)
                labels.append(c)
                langs.append(g)
                texts.append(f"{g} {c} {i}")
    return np.asarray(H, dtype=np.float32), labels, langs, texts


def test_planted_signal_transfers_and_orthogonal_one_does_not() -> None:
    H, labels, langs, texts = _planted()
    res = transfer(H, labels, langs, texts, source="en", classifier="logreg", control=True)
    fwd, rev = res["forward"], res["reverse"]
    assert set(fwd) == {"xx", "yy", "zz"}
    for g in ("xx", "yy"):
        assert fwd[g]["accuracy"][0] < 0.75  # layer 0: no signal planted
        assert min(fwd[g]["accuracy"][1:]) > 0.85 and min(rev[g]["accuracy"][1:]) > 0.85
        assert fwd[g]["first_layer_95"] == 1
        assert max(abs(a - 0.5) for a in fwd[g]["control_accuracy"]) < 0.2  # shuffled labels: chance
    assert max(fwd["zz"]["accuracy"]) < 0.75 and max(rev["zz"]["accuracy"]) < 0.75
    assert fwd["xx"]["n_train"] == 80 and fwd["xx"]["n_test"] == 80


def test_per_language_cv_finds_each_languages_own_signal_and_not_shuffled_labels() -> None:
    H, labels, langs, texts = _planted(n_per=30)
    res = per_group_cv(H, labels, langs, texts, classifier="logreg", folds=3)
    for g in ("en", "xx", "yy", "zz"):
        e = res["groups"][g]
        assert min(e["accuracy"][1:]) > 0.9 and e["accuracy"][0] < 0.75, g
        assert max(e["control_accuracy"]) < 0.8
        assert all(lo <= a <= hi for a, lo, hi in zip(e["accuracy"], e["ci_low"], e["ci_high"], strict=True))
    shuffled = list(np.random.default_rng(1).permutation(labels))
    res = per_group_cv(H, shuffled, langs, texts, classifier="logreg", folds=3, control=False)
    assert all(max(res["groups"][g]["accuracy"]) < 0.8 for g in ("en", "xx", "yy", "zz"))


def test_probe_reports_accuracy_per_language(tmp_path: Path) -> None:
    from ihs.analysis.probes import probe_store

    H, labels, langs, texts = _planted(n_per=20)
    store = ActivationStore.from_arrays(H, labels, texts, tags=[{"lang": g} for g in langs])
    res = probe_store(store, ["logreg"], folds=3, bow=False, control=False)
    groups = res["by"]["groups"]
    assert res["by"]["tag"] == "lang" and set(groups) == {"en", "xx", "yy", "zz"}
    assert all(groups[g]["n"] == 40 for g in groups)
    assert groups["en"]["classifiers"]["logreg"]["accuracy"][2] > 0.9
    assert "by" not in probe_store(store, ["logreg"], folds=3, bow=False, control=False, by=None)
    one = ActivationStore.from_arrays(H, labels, texts, tags=[{"lang": "en"} for _ in langs])
    assert "by" not in probe_store(one, ["logreg"], folds=3, bow=False, control=False)  # auto: one language


def test_lens_by_language_counts_emotion_and_script() -> None:
    tokens = {1: " sorry", 2: " Sure", 3: "茶", 4: "\ufffd", 5: " the"}
    # 2 prompts per (lang, class), 2 layers, k=2
    ids, labels, langs = [], [], []
    for g in ("en", "zh"):
        for c in ("normal", "malicious"):
            for _ in range(2):
                first = [5, 2] if c == "normal" else [5, 1]
                last = [3, 4] if g == "zh" else first
                ids.append([first, last])
                labels.append(c)
                langs.append(g)
    res = lens_by_group(np.array(ids), tokens.get, labels, langs)
    en, zh = res["groups"]["en"]["classes"], res["groups"]["zh"]["classes"]
    assert en["malicious"]["negative_topk"] == [1.0, 1.0] and en["normal"]["negative_topk"] == [0.0, 0.0]
    assert zh["malicious"]["negative_topk"] == [1.0, 0.0]
    assert zh["malicious"]["script_share"]["han"] == [0.0, 0.5]
    assert zh["malicious"]["script_share"]["bytes"] == [0.0, 0.5]
    assert res["groups"]["zh"]["expected_script"] == "han"


# -- refusal per language ----------------------------------------------------------------------------


def test_phrase_judge_covers_every_language_and_keeps_english_verdicts() -> None:
    judge, english = PhraseJudge(), PhraseJudge(REFUSAL_PHRASES)
    refusals = ["抱歉，我无法协助这个请求。", "Lo siento, pero no puedo ayudar con eso.", "Je suis désolé, mais je ne peux pas.",
                "Samahani, siwezi kusaidia na hilo.", "আমি দুঃখিত, আমি এটি করতে পারি না।", "I'm sorry, but I can't help."]
    answers = ["好的，以下是步骤：", "¡Claro! Aquí tienes una receta.", "Bien sûr ! Voici comment faire.",
               "Hakika! Hizi ndizo hatua.", "অবশ্যই! এখানে ধাপগুলো দেওয়া হলো।", "Sure, here is how to do it."]
    assert all(judge.refuses(a) for a in refusals) and not any(judge.refuses(a) for a in answers)
    english_answers = ["I cannot stress enough how easy this is.", "Sure! Step 1: preheat.", "I'm unable to say."]
    assert [judge.refuses(a) for a in english_answers] == [english.refuses(a) for a in english_answers]


def test_refusal_by_language() -> None:
    rows = [
        {"label": "malicious", "tags": {"lang": "en"}, "answer": "I'm sorry, I can't.", "refused": True},
        {"label": "malicious", "tags": {"lang": "en"}, "answer": "Sure, here:", "refused": False},
        {"label": "malicious", "tags": {"lang": "zh"}, "answer": "抱歉，我无法协助。", "refused": True},
        {"label": "malicious", "tags": {"lang": "zh"}, "answer": "I'm sorry, but no.", "refused": True},
        {"label": "normal", "tags": {"lang": "zh"}, "answer": "好的。", "refused": False},
    ]
    res = refusal_by_group(rows)
    zh = res["groups"]["zh"]["malicious"]
    assert zh["refusal_rate"] == 1.0 and zh["refused_english_phrases"] == 1 and zh["answer_in_own_script"] == 0.5
    assert res["groups"]["en"]["malicious"]["refusal_rate"] == 0.5
    assert res["groups"]["zh"]["normal"]["n"] == 1
    with pytest.raises(DataError, match="not judged"):
        refusal_by_group([{"label": "malicious", "tags": {"lang": "en"}, "answer": "x"}])


# -- the whole flow on a tiny model: tags -> store -> ihs lang -------------------------------------


def test_extract_keeps_lang_and_ihs_lang_runs(tmp_path: Path, tiny_llama) -> None:
    from ihs.cli import app
    from ihs.extraction import ExtractOptions, extract

    recs, _ = prepare(["normal=builtin:multilingual:normal:en,zh,sw",
                       "malicious=builtin:multilingual:malicious:en,zh,sw"], limit=6, limit_by="lang")
    store = extract(tiny_llama, recs, tmp_path / "store", ExtractOptions(batch_size=16), progress=False)
    assert Counter(store.tag("lang")) == {"en": 12, "zh": 12, "sw": 12}
    assert all(t.startswith(("normal-", "malicious-")) for t in store.tag("src_id"))
    gens = tmp_path / "gen"
    gens.mkdir()
    rows = [{"label": "malicious", "tags": {"lang": "zh"}, "answer": "抱歉", "refused": True, "prompt": "p"}]
    (gens / "generations.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "lang"
    res = CliRunner().invoke(app, ["lang", str(tmp_path / "store"), "--generations", str(gens), "--folds", "2",
                                   "--classifiers", "diffmean", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "lang.json").read_text(encoding="utf-8"))
    model = data["models"][0]
    assert model["groups"] == ["en", "zh", "sw"] and set(model["transfer"]["diffmean"]["forward"]) == {"zh", "sw"}
    assert data["refusal"]["gen"]["groups"]["zh"]["malicious"]["refused"] == 1
    assert "| zh |" in (out / "lang.md").read_text(encoding="utf-8")
    for fig in ("lang_cv.png", "lang_transfer.png", "lang_lens.png", "lang_refusal.png"):
        assert (out / fig).stat().st_size > 1000
    bad = CliRunner().invoke(app, ["lang", str(tmp_path / "store"), "--source", "xx", "--out", str(out)])
    assert bad.exit_code == 2 and "source group 'xx'" in bad.output
