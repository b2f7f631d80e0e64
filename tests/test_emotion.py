"""Emotion lexicon, tokenizer-aware matching and per-layer association."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_tokenizer
from ihs.analysis.emotion import (
    CODES,
    EmotionMatcher,
    Lexicon,
    check_vocabulary,
    emotion_association,
    emotion_codes,
    normalize_token,
)
from ihs.errors import DataError

ZOO_NAMES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]


@pytest.mark.parametrize("text, norm", [
    (" sorry", "sorry"), ("▁Sorry", "sorry"), ("ĠSorry", "sorry"), ("Sorry,", "sorry"), (" I", "i"),
    ("I’m", "i'm"), ("can't", "can't"), ("...", ""), (" \n", ""), ("«Sure»", "sure"), ("抱歉", "抱歉"),
])
def test_normalize_token(text, norm):
    assert normalize_token(text) == norm


def test_default_lexicon_has_the_papers_examples():
    lex = Lexicon.default()
    m = EmotionMatcher(lex)
    for word in ["sorry", "cannot", "unfortunately", "apology", "unable", "illegal", "unethical", "warning",
                 "refuse", "dangerous", "caution", "disclaimer"]:
        assert m.classify(" " + word.capitalize()) == "negative", word
    for word in ["sure", "certainly", "glad", "delighted", "pleasure", "welcome", "great", "thank", "step", "title"]:
        assert m.classify(word) == "positive", word
    for word in ["I", "as", "here", "hello", "hi", "please", "absolutely"]:
        assert m.classify(" " + word) == "neutral", word


def test_stems_and_non_matches():
    m = EmotionMatcher()
    assert m.classify(" apologize") == m.classify("Apologies") == m.classify("apolog") == "negative"
    assert m.classify(" refusing") == "negative"
    for text in [" sorting", "sort", " sor", "Sor", " harmony", " surely-not", " stepping", " I-", " Ian", " the", ""]:
        assert m.classify(text) in (None, "neutral") and m.classify(text) != "negative", text
    assert m.classify(" sorting") is None
    assert m.classify(" sor") is None  # fragments are off without a tokenizer


class FakeTokenizer:
    """A tokenizer over a fixed vocabulary with greedy longest-match encoding (leading space kept)."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)

    def batch_decode(self, batch) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            match = [j for j, v in enumerate(self.vocab) if text.startswith(v, i)]
            if not match:  # unknown character: token 0
                ids.append(0)
                i += 1
                continue
            best = max(match, key=lambda j: len(self.vocab[j]))
            ids.append(best)
            i += len(self.vocab[best])
        return ids


BASE = ["\ufffd", " ", "s", "o", "r", "y", "t", "i", "n", "g", "a", "c", "e", " I", " sort", "ing", " sure"]


def test_fragment_only_where_word_has_no_single_token():
    # " sorry" -> " sor" + "ry"; the confusers (" sorcerer", " sorrento", ...) start with other pieces
    split = FakeTokenizer(BASE + [" sor", "ry", " sorc", " soro", " sore", " sorb", " sorg", " sord", " sorrento"])
    m = EmotionMatcher(tokenizer=split)
    assert m.classify(" sor") == "negative"
    assert m.classify(" sorting") is None and m.classify(" sort") is None
    report = m.vocab_report
    assert any(x["word"] == "sorry" and x["pieces"] == [" sor", "ry"] for x in report["missing"]["negative"])
    frag = next(f for f in report["fragments"] if f["fragment"] == "sor")
    assert frag["active"] and frag["reason"] == "active"

    whole = FakeTokenizer(BASE + [" sor", "ry", " sorry"])  # a single-token form exists: "sor" is ambiguous
    m2 = EmotionMatcher(tokenizer=whole)
    assert m2.classify(" sorry") == "negative"
    assert m2.classify(" sor") is None
    assert not next(f for f in m2.vocab_report["fragments"] if f["fragment"] == "sor")["active"]

    other = FakeTokenizer(BASE + [" so", "rry"])  # the tokenizer does not start "sorry" with "sor"
    assert EmotionMatcher(tokenizer=other).classify(" sor") is None

    ambiguous = FakeTokenizer(BASE + [" sor", "ry", "cer"])  # " sorcerer" -> " sor" + "cer" + ...: ambiguous
    m3 = EmotionMatcher(tokenizer=ambiguous)
    assert m3.classify(" sor") is None
    assert next(f for f in m3.vocab_report["fragments"] if f["fragment"] == "sor")["reason"].startswith("ambiguous")


def test_matcher_on_tiny_real_tokenizer():
    tok = make_tokenizer()
    m = EmotionMatcher(tokenizer=tok)
    texts = {tok.decode([i]) for i in range(len(tok))}
    assert m.vocab_report["vocab_size"] == len(tok)
    # every decoded vocabulary entry that normalises to a lexicon word is classified as that word's class
    lex = m.lexicon
    for text in texts:
        norm = normalize_token(text)
        for emotion in ("negative", "positive", "neutral"):
            if norm in lex.words[emotion]:
                assert m.classify(text) == emotion
    pieces = [tok.decode([i]) for i in tok.encode(" Sorry, I cannot", add_special_tokens=False)]
    assert any(m.classify(p) == "neutral" for p in pieces)  # " I"


def _zoo_tokenizer(name: str):
    from transformers import AutoTokenizer

    from ihs.models import zoo

    folder = zoo.model_dir(name)
    if not (folder / "tokenizer_config.json").exists() and not (folder / "tokenizer.json").exists():
        pytest.skip(f"zoo model {name} not pulled ({folder})")
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_matcher_on_zoo_tokenizers(name):
    tok = _zoo_tokenizer(name)
    m = EmotionMatcher(tokenizer=tok)

    def pieces(text):
        return [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False)]

    # these are single tokens in all three vocabularies; both the decoded text (" Sorry") and the raw
    # vocabulary entry ("ĠSorry", "▁Sorry") must match
    for text, emotion in [(" sorry", "negative"), ("Sorry", "negative"), (" cannot", "negative"),
                          (" Unfortunately", "negative"), (" Sure", "positive"), ("Sure", "positive"),
                          (" Certainly", "positive"), (" I", "neutral")]:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{name}: {text!r} is {pieces(text)}"
        assert m.classify(tok.decode(ids)) == emotion, (name, text)
        assert m.classify(tok.convert_ids_to_tokens(ids)[0]) == emotion, (name, tok.convert_ids_to_tokens(ids))
    # " Sorry" is one token in Qwen and Gemma; SmolLM2 splits it into " Sor" + "ry", and " Sor" also
    # begins " Sorcerer", so it must not count there
    sorry = tok.encode(" Sorry", add_special_tokens=False)
    if len(sorry) == 1:
        assert m.classify(tok.decode(sorry)) == "negative"
    else:
        assert all(m.classify(p) != "negative" for p in pieces(" Sorry"))
    for text in (" sorting", " sort", " Sorting", "sorting", " Sorcerer"):
        assert not any(m.classify(p) == "negative" for p in pieces(text)), (name, pieces(text))
    report = m.vocab_report
    assert report["vocab_size"] == len(tok)
    assert report["words_with_single_token"]["negative"] >= 10
    missing_negative = {x["word"] for x in report["missing"]["negative"]}
    assert not {"sorry", "cannot", "illegal"} & missing_negative
    assert not any(f["active"] and f["fragment"] == "sor" for f in report["fragments"])


def test_user_lexicon_file(tmp_path):
    path = tmp_path / "lex.json"
    path.write_text(json.dumps({"name": "mine", "classes": {"negative": ["nope"], "positive": {"words": ["yay"],
                                                                                               "stems": ["woo"]}}}))
    m = EmotionMatcher(Lexicon.load(path))
    assert m.classify(" Nope!") == "negative" and m.classify("Woohoo") == "positive" and m.classify(" sorry") is None
    with pytest.raises(DataError, match="both"):
        Lexicon.from_dict({"classes": {"negative": ["x"], "positive": ["X"]}})
    with pytest.raises(DataError, match="unknown lexicon class"):
        Lexicon.from_dict({"classes": {"angry": ["x"]}})
    with pytest.raises(DataError, match="too short"):
        Lexicon.from_dict({"classes": {"negative": {"stems": ["so"]}}})
    with pytest.raises(DataError, match="not found"):
        Lexicon.load(tmp_path / "missing.json")


TEXTS = {0: " the", 1: " Sorry", 2: " Sure", 3: " I", 4: " cannot", 5: " glad", 6: " and", 7: ","}


def planted_codes(n: int = 60, layers: int = 12, k: int = 5, onset: int = 5, seed: int = 0):
    """Top-k ids where, from layer ``onset``, malicious inputs hold negative tokens and normal ones positive."""
    rng = np.random.default_rng(seed)
    ids = rng.choice([0, 6, 7], size=(2 * n, layers + 1, k))
    labels = np.array(["normal"] * n + ["malicious"] * n)
    ids[:n, onset:, 0] = rng.choice([2, 5], size=(n, layers + 1 - onset))
    ids[n:, onset:, 0] = rng.choice([1, 4], size=(n, layers + 1 - onset))
    return ids, labels


def test_planted_emotion_pattern_found_and_shuffled_not():
    ids, labels = planted_codes()
    codes = emotion_codes(ids, TEXTS.get, EmotionMatcher())
    assert codes.shape == ids.shape and set(np.unique(codes)) <= {CODES[None], CODES["negative"], CODES["positive"]}
    assoc = emotion_association(codes, labels)
    assert assoc.labels == ["normal", "malicious"]
    np.testing.assert_allclose(assoc.topk["malicious"]["negative"][5:], 1.0)
    np.testing.assert_allclose(assoc.topk["malicious"]["negative"][:5], 0.0)
    np.testing.assert_allclose(assoc.top1["normal"]["positive"][5:], 1.0)
    assert assoc.first_dominant_layer() == {"first": 5, "stable_from": 5}
    js = assoc.to_json()
    assert js["negative_dominance"]["topk"]["first"] == 5
    assert js["difference_vs_normal"]["malicious"]["topk"]["negative"][6] == 1.0
    lo, hi = js["classes"]["malicious"]["topk"]["negative"]["ci95"]
    assert lo[6] > 0.9 and hi[0] < 0.1

    shuffled = np.random.default_rng(1).permutation(labels)
    null = emotion_association(codes, shuffled)
    diff = null.difference("malicious", "normal", "negative")
    assert np.abs(diff).max() < 0.35
    assert null.first_dominant_layer(margin=0.4)["first"] is None


def test_association_rejects_bad_shapes():
    with pytest.raises(ValueError):
        emotion_association(np.zeros((3, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError):
        emotion_association(np.zeros((3, 4, 2)), ["a", "b"])


def test_check_vocabulary_counts_on_tiny_tokenizer():
    tok = make_tokenizer()
    report = check_vocabulary(Lexicon.default(), tok)
    total = report["words_total"]
    for emotion in ("negative", "positive", "neutral"):
        assert report["words_with_single_token"][emotion] + len(report["missing"][emotion]) == total[emotion]
