"""A bag-of-words baseline: how far do surface words alone separate the classes?

If n-gram counts already separate normal from malicious prompts, a hidden-state probe doing the
same proves little about "ethical concepts"; the probe must be read against this baseline. The
contrast set (benign prompts that contain trigger words, "kill a Python process") shows whether
a classifier is keyed on words rather than on meaning: a surface model calls many of them malicious.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from ihs.errors import DataError

NORMAL, MALICIOUS = 0, 1


class BagOfWordsBaseline(ClassifierMixin, BaseEstimator):
    """Unigram+bigram presence features into a logistic regression, sklearn-compatible.

    ``vectorizer="count"`` (default) uses binary presence of each n-gram; ``"tfidf"`` is offered
    too, but it shrinks a word that occurs in a whole class (low idf) below rare noise n-grams, and
    on a planted one-keyword signal it reaches only ~0.8 cross-validated accuracy where presence
    features reach 1.0; a baseline meant to bound what surface words can do should not miss that.
    Works with ``cross_val_score`` and ``clone``; labels may be any hashable values.
    """

    def __init__(
        self,
        vectorizer: str = "count",
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int = 1,
        C: float = 1.0,
        max_iter: int = 2000,
        random_state: int = 0,
    ) -> None:
        self.vectorizer = vectorizer
        self.ngram_range = ngram_range
        self.min_df = min_df
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _pipeline(self) -> Pipeline:
        if self.vectorizer == "tfidf":
            vec = TfidfVectorizer(ngram_range=self.ngram_range, min_df=self.min_df, sublinear_tf=True)
        elif self.vectorizer == "count":
            vec = CountVectorizer(ngram_range=self.ngram_range, min_df=self.min_df, binary=True)
        else:
            raise ValueError(f"vectorizer must be 'tfidf' or 'count', got {self.vectorizer!r}")
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        return Pipeline([("vec", vec), ("clf", clf)])

    def fit(self, texts: Sequence[str], y: Sequence) -> BagOfWordsBaseline:
        """Fit vectorizer and classifier on the texts."""
        self.pipeline_ = self._pipeline().fit(list(texts), np.asarray(y))
        self.classes_ = self.pipeline_.classes_
        return self

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted labels."""
        return self.pipeline_.predict(list(texts))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        return self.pipeline_.predict_proba(list(texts))

    def score(self, texts: Sequence[str], y: Sequence, sample_weight=None) -> float:
        """Accuracy."""
        return float(np.mean(self.predict(texts) == np.asarray(y)))

    def top_features(self, n: int = 10) -> dict[str, list[tuple[str, float]]]:
        """The n-grams with the largest weights toward each side (binary problems only)."""
        vec = self.pipeline_.named_steps["vec"]
        coef = self.pipeline_.named_steps["clf"].coef_
        if coef.shape[0] != 1:
            raise ValueError("top_features needs a binary classifier")
        names = vec.get_feature_names_out()
        w = coef[0]
        order = np.argsort(w)
        neg, pos = self.classes_[0], self.classes_[1]
        return {
            str(pos): [(str(names[i]), round(float(w[i]), 4)) for i in order[::-1][:n]],
            str(neg): [(str(names[i]), round(float(w[i]), 4)) for i in order[:n]],
        }


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a t-interval over folds (a rough interval: folds share training data)."""
    a = np.asarray(values, dtype=float)
    m = float(a.mean())
    if len(a) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return m, m - half, m + half


def _dedupe(texts: Sequence[str]) -> list[str]:
    """Unique texts (ignoring whitespace and case), first copy kept, order kept."""
    seen, out = set(), []
    for t in texts:
        key = " ".join(t.split()).casefold()
        if key and key not in seen:
            seen.add(key)
            out.append(" ".join(t.split()))
    return out


def cv_accuracy(texts: Sequence[str], y: Sequence, folds: int = 5, seed: int = 0) -> list[float]:
    """Stratified k-fold accuracies of ``BagOfWordsBaseline``."""
    texts, y = np.asarray(list(texts), dtype=object), np.asarray(y)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for train, test in skf.split(texts, y):
        model = BagOfWordsBaseline(random_state=seed).fit(texts[train], y[train])
        scores.append(model.score(texts[test], y[test]))
    return scores


def surface_report(
    normal_texts: Sequence[str],
    malicious_texts: Sequence[str],
    contrast_texts: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
) -> dict:
    """Cross-validated accuracy of the bag-of-words baseline on normal vs malicious, and its
    verdict on the contrast prompts.

    Texts are de-duplicated first (within each set, and a text in both normal and malicious is
    dropped from both; contrast texts found in either are dropped from contrast), so no prompt
    sits on both sides of a split. Returns: sizes, duplicates removed, ``cv_accuracy`` (mean,
    95% t-interval over folds, per fold), ``chance`` (the majority-class share), ``shuffled_accuracy``
    (the same with permuted labels: should be near chance, at most the majority share), ``contrast_called_malicious`` (share of contrast prompts the model fitted
    on all normal+malicious calls malicious, ``None`` without contrast) and the top n-grams.
    """
    if folds < 2:
        raise DataError(f"folds must be at least 2, got {folds}")
    normal, malicious = _dedupe(normal_texts), _dedupe(malicious_texts)
    nk = {t.casefold() for t in normal}
    mk = {t.casefold() for t in malicious}
    both = nk & mk
    normal = [t for t in normal if t.casefold() not in both]
    malicious = [t for t in malicious if t.casefold() not in both]
    contrast = _dedupe(contrast_texts or [])
    contrast_in = [t for t in contrast if t.casefold() in nk | mk]
    contrast = [t for t in contrast if t.casefold() not in nk | mk]
    smallest = min(len(normal), len(malicious))
    if smallest < max(folds, 2):
        raise DataError(
            f"too few prompts for {folds}-fold cross-validation after de-duplication: "
            f"normal {len(normal)}, malicious {len(malicious)}"
        )
    texts = normal + malicious
    y = np.array([NORMAL] * len(normal) + [MALICIOUS] * len(malicious))
    scores = cv_accuracy(texts, y, folds, seed)
    shuffled = cv_accuracy(texts, np.random.default_rng(seed).permutation(y), folds, seed)
    m, lo, hi = mean_ci(scores)
    sm, slo, shi = mean_ci(shuffled)

    full = BagOfWordsBaseline(random_state=seed).fit(texts, y)
    top = full.top_features(10)
    report: dict = {
        "model": "unigram+bigram presence -> logistic regression",
        "folds": folds,
        "seed": seed,
        "n": {"normal": len(normal), "malicious": len(malicious), "contrast": len(contrast)},
        "duplicates_removed": {
            "normal": len(normal_texts) - len(normal),
            "malicious": len(malicious_texts) - len(malicious),
            "across_normal_malicious": len(both),
            "contrast": len(contrast_texts or []) - len(contrast),
            "contrast_in_normal_or_malicious": len(contrast_in),
        },
        "chance": max(len(normal), len(malicious)) / len(texts),
        "cv_accuracy": {"mean": m, "ci95": [lo, hi], "per_fold": scores},
        "shuffled_accuracy": {"mean": sm, "ci95": [slo, shi], "per_fold": shuffled},
        "contrast_called_malicious": None,
        "top_features": {"malicious": top[str(MALICIOUS)], "normal": top[str(NORMAL)]},
    }
    if contrast:
        pred = full.predict(contrast)
        report["contrast_called_malicious"] = float(np.mean(pred == MALICIOUS))
        report["contrast_mean_p_malicious"] = float(full.predict_proba(contrast)[:, 1].mean())
    return report
