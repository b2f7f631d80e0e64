"""Emotion tokens in the logit lens: a lexicon, a tokenizer-aware matcher and per-layer association.

Zhou et al. (2024) read the logit lens of aligned models and found positive tokens ("Sure",
"glad") on top in the middle layers for normal input and negative ones ("sorry", "cannot") for
malicious input. Testing that on any model needs three things:

* a lexicon of positive, negative and neutral words (``data/lexicons/emotion_en.json`` by
  default; users pass their own file of the same shape);
* a matcher that works on *decoded tokens* of any tokenizer: leading space markers (" ", "▁",
  "Ġ"), case and edge punctuation are normalised away; ``words`` match exactly, ``stems`` match
  as prefixes (only unambiguous stems such as "apolog"), and ``fragments`` (a word piece such as
  "sor" for "sorry") count only for a tokenizer that has no single-token form of the word, really
  begins the word with that piece, and begins none of the fragment's listed confusers ("sorcerer",
  "sort", ...) with it, so "sor" never counts where " sorry" is one token or where it is ambiguous;
* per layer and class, the share of inputs whose top-k (and top-1) holds a token of each
  emotion class, the difference between classes, and the first layer where negative tokens
  dominate for malicious input.
"""

from __future__ import annotations

import json
import math
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ihs.errors import DataError

EMOTIONS: tuple[str, ...] = ("negative", "positive", "neutral")
#: integer codes used in arrays: 0 = no emotion class
CODES: dict[str | None, int] = {None: 0, "negative": 1, "positive": 2, "neutral": 3}

_MARKERS = " \t\n\r\u2581\u0120\u010a\u00a0"  # space, tab, newlines, SentencePiece ▁, GPT-2 Ġ and Ċ, nbsp
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P") or unicodedata.category(ch) == "So"


def normalize_token(text: str) -> str:
    """The form a decoded token is matched on: NFKC, no space markers, no edge punctuation, lower case.

    " Sorry," -> "sorry", "▁Sorry" -> "sorry", "ĠI" -> "i", "I'm" -> "i'm", "..." -> "".
    Apostrophes inside a word are kept (and unified to '), so "can't" stays one form.
    """
    t = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    t = t.strip(_MARKERS)
    start, end = 0, len(t)
    while start < end and (_is_punct(t[start]) or t[start] in _MARKERS):
        start += 1
    while end > start and (_is_punct(t[end - 1]) or t[end - 1] in _MARKERS):
        end -= 1
    return t[start:end].casefold()


@dataclass
class Lexicon:
    """Emotion classes, each with exact words, prefix stems and tokenizer-dependent fragments."""

    words: dict[str, set[str]]
    stems: dict[str, tuple[str, ...]]
    fragments: dict[str, dict[str, str]]  # emotion -> fragment -> word
    confusers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fragment -> other words
    name: str = "custom"
    version: str = ""
    source: str = ""

    @classmethod
    def default(cls) -> Lexicon:
        res = resources.files("ihs.data").joinpath("lexicons", "emotion_en.json")
        return cls.from_dict(json.loads(res.read_text(encoding="utf-8")), source="ihs:data/lexicons/emotion_en.json")

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        """The built-in lexicon (``path=None``) or a user's JSON file of the same shape."""
        if path is None:
            return cls.default()
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"lexicon file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"lexicon {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> Lexicon:
        """Build from ``{"classes": {"negative": {"words": [...], "stems": [...], "fragments": {...}}, ...}}``.

        A fragment is ``{"sor": {"word": "sorry", "confusers": ["sorcerer", ...]}}`` or simply
        ``{"sor": "sorry"}``. A class may also be given as a plain list of words. Classes must be among
        negative / positive / neutral, and no normalised word may sit in two classes.
        """
        classes = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(classes, dict) or not classes:
            raise DataError("a lexicon needs a 'classes' object with negative / positive / neutral entries")
        words: dict[str, set[str]] = {}
        stems: dict[str, tuple[str, ...]] = {}
        fragments: dict[str, dict[str, str]] = {}
        confusers: dict[str, tuple[str, ...]] = {}
        for emotion, spec in classes.items():
            if emotion not in EMOTIONS:
                raise DataError(f"unknown lexicon class {emotion!r}; use {', '.join(EMOTIONS)}")
            if isinstance(spec, list):
                spec = {"words": spec}
            if not isinstance(spec, dict):
                raise DataError(f"lexicon class {emotion!r} must be a list of words or an object")
            words[emotion] = {w for w in (normalize_token(str(x)) for x in spec.get("words", [])) if w}
            stems[emotion] = tuple(sorted({normalize_token(str(x)) for x in spec.get("stems", [])} - {""}))
            for stem in stems[emotion]:
                if len(stem) < 3:
                    raise DataError(f"stem {stem!r} in class {emotion!r} is too short to be unambiguous (3+ characters)")
            fragments[emotion] = {}
            for piece, target in (spec.get("fragments") or {}).items():
                if isinstance(target, dict):
                    word, others = target.get("word", ""), target.get("confusers", [])
                else:
                    word, others = target, []
                fragments[emotion][normalize_token(piece)] = normalize_token(str(word))
                confusers[normalize_token(piece)] = tuple(normalize_token(str(x)) for x in others)
        for emotion in EMOTIONS:
            words.setdefault(emotion, set())
            stems.setdefault(emotion, ())
            fragments.setdefault(emotion, {})
        for i, a in enumerate(EMOTIONS):
            for b in EMOTIONS[i + 1:]:
                both = words[a] & words[b]
                if both:
                    raise DataError(f"lexicon words in both {a} and {b}: {', '.join(sorted(both))}")
        return cls(words=words, stems=stems, fragments=fragments, confusers=confusers, name=str(data.get("name", "custom")),
                   version=str(data.get("version", "")), source=source)

    def all_words(self) -> list[tuple[str, str]]:
        """(emotion, word) for every exact word, in a stable order."""
        return [(e, w) for e in EMOTIONS for w in sorted(self.words[e])]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source,
                "sizes": {e: {"words": len(self.words[e]), "stems": len(self.stems[e]),
                              "fragments": len(self.fragments[e])} for e in EMOTIONS}}


class EmotionMatcher:
    """Classify decoded tokens into negative / positive / neutral / None.

    Without a tokenizer no fragment rule is active (the conservative choice); with one, a
    fragment counts only where :func:`check_vocabulary` finds it unambiguous for that tokenizer.
    """

    def __init__(self, lexicon: Lexicon | None = None, tokenizer: Any = None) -> None:
        self.lexicon = lexicon or Lexicon.default()
        self.fragments: dict[str, str] = {}
        self.vocab_report: dict[str, Any] | None = None
        if tokenizer is not None:
            self.vocab_report = check_vocabulary(self.lexicon, tokenizer)
            self.fragments = {f["fragment"]: f["emotion"] for f in self.vocab_report["fragments"] if f["active"]}
        self._cache: dict[str, str | None] = {}

    def classify(self, text: str) -> str | None:
        """Emotion class of one decoded token (None when it is in no class)."""
        if text in self._cache:
            return self._cache[text]
        result = self._classify(normalize_token(text))
        self._cache[text] = result
        return result

    def _classify(self, norm: str) -> str | None:
        if not norm:
            return None
        lex = self.lexicon
        for emotion in EMOTIONS:
            if norm in lex.words[emotion]:
                return emotion
        for emotion in EMOTIONS:
            if any(norm.startswith(s) for s in lex.stems[emotion]):
                return emotion
        return self.fragments.get(norm)

    def codes(self, token_ids: Iterable[int], text_of: Callable[[int], str]) -> dict[int, int]:
        """Integer emotion code (see ``CODES``) for each token id."""
        return {int(t): CODES[self.classify(text_of(int(t)))] for t in token_ids}


# -- per-tokenizer vocabulary check -----------------------------------------------------------

def _vocab_texts(tokenizer: Any) -> list[str]:
    """Decoded text of every id in the vocabulary (batched in the fast tokenizer's Rust code)."""
    n = len(tokenizer)
    texts: list[str] = []
    step = 32768
    for start in range(0, n, step):
        texts.extend(tokenizer.batch_decode([[i] for i in range(start, min(n, start + step))]))
    return texts


def _first_piece(tokenizer: Any, word: str) -> str | None:
    """Normalised first token of ``word`` as the tokenizer writes it mid-sentence (" word")."""
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    for tid in ids:
        norm = normalize_token(tokenizer.decode([tid]))
        if norm:
            return norm
    return None


def check_vocabulary(lexicon: Lexicon, tokenizer: Any) -> dict[str, Any]:
    """Which lexicon words have a single-token form in this vocabulary, and which fragments apply.

    A word has a single-token form when some vocabulary entry normalises to exactly that word
    (" Sorry", "▁sorry", "sorry" all do). For each word without one, the report gives the pieces
    the tokenizer splits it into. A fragment rule is active only where (a) its word has no
    single-token form, (b) the tokenizer's first piece of " word" normalises to the fragment and
    (c) the first piece of none of the fragment's confusers (" sorcerer", " Sorcerer", ...) does.
    Also counts the vocabulary entries each class matches (words and stems).
    """
    texts = _vocab_texts(tokenizer)
    by_norm: dict[str, list[int]] = {}
    for tid, text in enumerate(texts):
        norm = normalize_token(text)
        if norm:
            by_norm.setdefault(norm, []).append(tid)
    plain = EmotionMatcher(lexicon)
    class_counts = {e: 0 for e in EMOTIONS}
    for norm, ids in by_norm.items():
        emotion = plain._classify(norm)
        if emotion:
            class_counts[emotion] += len(ids)
    missing: dict[str, list[dict[str, Any]]] = {e: [] for e in EMOTIONS}
    present: dict[str, int] = {e: 0 for e in EMOTIONS}
    for emotion, word in lexicon.all_words():
        if word in by_norm:
            present[emotion] += 1
        else:
            pieces = [tokenizer.decode([t]) for t in tokenizer.encode(" " + word, add_special_tokens=False)]
            missing[emotion].append({"word": word, "pieces": pieces})
    fragments = []
    for emotion in EMOTIONS:
        for fragment, word in sorted(lexicon.fragments[emotion].items()):
            single = word in by_norm
            first = _first_piece(tokenizer, word)
            clash = [c for c in lexicon.confusers.get(fragment, ())
                     if fragment in (_first_piece(tokenizer, c), _first_piece(tokenizer, c.capitalize()))]
            active = (not single) and first == fragment and not clash
            reason = ("word has a single-token form" if single else
                      f"tokenizer starts the word with {first!r}, not {fragment!r}" if first != fragment else
                      f"ambiguous: the tokenizer also starts {', '.join(clash)} with it" if clash else "active")
            fragments.append({"fragment": fragment, "word": word, "emotion": emotion, "active": active,
                              "reason": reason})
    return {
        "vocab_size": len(texts),
        "words_with_single_token": present,
        "words_total": {e: len(lexicon.words[e]) for e in EMOTIONS},
        "missing": missing,
        "fragments": fragments,
        "vocab_entries_matched": class_counts,
    }


# -- per-layer association -----------------------------------------------------------------------

def emotion_codes(lens_ids: np.ndarray, text_of: Callable[[int], str], matcher: EmotionMatcher) -> np.ndarray:
    """Array of emotion codes, same shape as ``lens_ids`` (0 none, 1 negative, 2 positive, 3 neutral)."""
    unique = np.unique(lens_ids)
    lut = matcher.codes(unique, text_of)
    codes = np.array([lut[int(t)] for t in unique], dtype=np.int8)
    return codes[np.searchsorted(unique, lens_ids)]


@dataclass
class Association:
    """Per class and layer, shares of inputs whose top-k / top-1 holds each emotion class."""

    labels: list[str]
    n: dict[str, int]
    layers: list[int]
    topk: dict[str, dict[str, np.ndarray]]  # label -> emotion -> (n_layers,)
    top1: dict[str, dict[str, np.ndarray]]
    k: int
    extra: dict[str, Any] = field(default_factory=dict)

    def difference(self, a: str, b: str, emotion: str, top: str = "topk") -> np.ndarray:
        table = self.topk if top == "topk" else self.top1
        return table[a][emotion] - table[b][emotion]

    def first_dominant_layer(self, malicious: str = "malicious", normal: str | None = "normal",
                             margin: float = 0.1, top: str = "topk") -> dict[str, int | None]:
        """The first layer (and the first from which it holds to the last layer) where, for ``malicious``
        inputs, the negative share exceeds the positive share by ``margin`` and, when ``normal`` is
        given, also exceeds the normal inputs' negative share by ``margin``."""
        table = self.topk if top == "topk" else self.top1
        if malicious not in table:
            return {"first": None, "stable_from": None}
        neg, pos = table[malicious]["negative"], table[malicious]["positive"]
        ok = neg - pos >= margin
        if normal is not None and normal in table:
            ok &= neg - table[normal]["negative"] >= margin
        first = int(self.layers[int(np.argmax(ok))]) if ok.any() else None
        stable = None
        for i in range(len(ok) - 1, -1, -1):
            if not ok[i]:
                break
            stable = int(self.layers[i])
        return {"first": first, "stable_from": stable}

    def to_json(self, reference: str = "normal", malicious: str = "malicious", margin: float = 0.1) -> dict[str, Any]:
        from ihs.stats import wilson_interval

        out: dict[str, Any] = {"k": self.k, "layers": self.layers, "n": self.n, "classes": {}}
        for label in self.labels:
            entry: dict[str, Any] = {"n": self.n[label]}
            for top, table in (("topk", self.topk), ("top1", self.top1)):
                entry[top] = {}
                for emotion in EMOTIONS:
                    share = table[label][emotion]
                    lo, hi = wilson_interval(np.round(share * self.n[label]), self.n[label])
                    entry[top][emotion] = {"share": _r(share), "ci95": [_r(lo), _r(hi)]}
            out["classes"][label] = entry
        if reference in self.labels:
            out["difference_vs_" + reference] = {
                label: {top: {e: _r(self.difference(label, reference, e, top)) for e in EMOTIONS}
                        for top in ("topk", "top1")}
                for label in self.labels if label != reference
            }
        out["negative_dominance"] = {
            "definition": (f"first layer where, for '{malicious}' inputs, the top-k negative share exceeds the "
                           f"positive share by >= {margin} and the '{reference}' inputs' negative share by >= {margin}; "
                           "stable_from: the first layer from which this holds through the last layer"),
            "margin": margin,
            "topk": self.first_dominant_layer(malicious, reference, margin, "topk"),
            "top1": self.first_dominant_layer(malicious, reference, margin, "top1"),
        }
        out.update(self.extra)
        return out


def _r(values: np.ndarray) -> list[float]:
    return [None if (isinstance(v, float) and math.isnan(v)) else round(float(v), 4) for v in np.asarray(values)]


def emotion_association(codes: np.ndarray, labels: Sequence[str], label_order: Sequence[str] | None = None,
                        layers: Sequence[int] | None = None) -> Association:
    """Shares per class and layer from emotion ``codes`` of shape (N, L+1, k) (see :func:`emotion_codes`).

    ``topk[label][emotion][l]`` is the share of that class's inputs whose top-k at layer l holds at
    least one token of the emotion class; ``top1`` the share whose top-1 token is of that class.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must have shape (N, L+1, k), got {codes.shape}")
    labels = np.asarray([str(x) for x in labels], dtype=object)
    if len(labels) != codes.shape[0]:
        raise ValueError(f"{len(labels)} labels for {codes.shape[0]} rows")
    order = list(label_order) if label_order is not None else _label_order(labels)
    layer_index = list(range(codes.shape[1])) if layers is None else [int(x) for x in layers]
    sel = codes[:, layer_index]
    topk: dict[str, dict[str, np.ndarray]] = {}
    top1: dict[str, dict[str, np.ndarray]] = {}
    n: dict[str, int] = {}
    for label in order:
        rows = sel[labels == label]
        n[label] = int(rows.shape[0])
        topk[label], top1[label] = {}, {}
        for emotion in EMOTIONS:
            code = CODES[emotion]
            if rows.shape[0] == 0:
                topk[label][emotion] = np.full(len(layer_index), np.nan)
                top1[label][emotion] = np.full(len(layer_index), np.nan)
                continue
            topk[label][emotion] = (rows == code).any(axis=2).mean(axis=0)
            top1[label][emotion] = (rows[:, :, 0] == code).mean(axis=0)
    return Association(labels=order, n=n, layers=layer_index, topk=topk, top1=top1, k=int(codes.shape[2]))


PREFERRED_ORDER = ("normal", "malicious", "jailbreak", "contrast")


def _label_order(labels: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(str(x) for x in labels))
    return [x for x in PREFERRED_ORDER if x in present] + sorted(x for x in present if x not in PREFERRED_ORDER)
