"""Bag-of-words baseline: finds a planted keyword, stays at chance without one."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from ihs.analysis.surface import BagOfWordsBaseline, mean_ci, surface_report
from ihs.errors import DataError

VOCAB = [f"w{i}" for i in range(60)]


def random_texts(n: int, rng: np.random.Generator, keyword: str | None = None) -> list[str]:
    out = []
    for i in range(n):
        words = list(rng.choice(VOCAB, size=8))
        if keyword:
            words.insert(int(rng.integers(0, 8)), keyword)
        out.append(" ".join(words) + f" n{i}")
    return out


def test_planted_keyword_is_found_and_contrast_flagged() -> None:
    rng = np.random.default_rng(0)
    normal = random_texts(60, rng)
    malicious = random_texts(60, rng, keyword="zorp")
    contrast = random_texts(20, rng, keyword="zorp")
    rep = surface_report(normal, malicious, contrast, folds=5, seed=0)
    assert rep["cv_accuracy"]["mean"] > 0.95
    lo, hi = rep["cv_accuracy"]["ci95"]
    assert lo <= rep["cv_accuracy"]["mean"] <= hi and len(rep["cv_accuracy"]["per_fold"]) == 5
    assert abs(rep["shuffled_accuracy"]["mean"] - 0.5) < 0.15 and rep["chance"] == 0.5
    assert rep["contrast_called_malicious"] > 0.9
    assert rep["top_features"]["malicious"][0][0] == "zorp"


def test_no_signal_stays_near_chance() -> None:
    rng = np.random.default_rng(1)
    texts = random_texts(160, rng)
    rep = surface_report(texts[:80], texts[80:], None, folds=5, seed=0)
    assert abs(rep["cv_accuracy"]["mean"] - 0.5) < 0.15
    assert rep["contrast_called_malicious"] is None


def test_duplicates_removed_before_splitting() -> None:
    rng = np.random.default_rng(2)
    normal = random_texts(20, rng)
    malicious = random_texts(20, rng, keyword="zorp")
    rep = surface_report(
        normal + normal[:5] + ["shared text"], malicious + ["Shared  TEXT"], [normal[0], "fresh words"], folds=4
    )
    assert rep["n"] == {"normal": 20, "malicious": 20, "contrast": 1}
    assert rep["duplicates_removed"]["normal"] == 6 and rep["duplicates_removed"]["across_normal_malicious"] == 1
    assert rep["duplicates_removed"]["contrast_in_normal_or_malicious"] == 1


def test_estimator_api_and_errors() -> None:
    rng = np.random.default_rng(3)
    texts = random_texts(30, rng) + random_texts(30, rng, keyword="zorp")
    y = np.array(["normal"] * 30 + ["malicious"] * 30)
    model = BagOfWordsBaseline(vectorizer="tfidf").fit(texts, y)
    assert set(model.classes_) == {"normal", "malicious"}
    assert model.predict_proba(texts).shape == (60, 2) and model.score(texts, y) == 1.0
    presence = BagOfWordsBaseline().fit(texts, y)
    assert cross_val_score(clone(presence), np.array(texts, dtype=object), y, cv=3).mean() > 0.9
    with pytest.raises(ValueError, match="vectorizer"):
        BagOfWordsBaseline(vectorizer="bogus").fit(texts, y)
    with pytest.raises(DataError, match="too few"):
        surface_report(texts[:3], texts[-3:], folds=5)
    m, lo, hi = mean_ci([0.8, 0.9, 1.0])
    assert m == pytest.approx(0.9) and lo == pytest.approx(0.9 - 4.302653 * 0.1 / 3**0.5, rel=1e-5) and hi > m
