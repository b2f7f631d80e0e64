"""Concept activation vectors: harm and emotion directions per layer, their pull on refusal, and how they line up.

The concept sets (``concepts.json`` in this package, written for ihs) hold, per concept, words and
short sentences: five harm concepts (weapons, drugs, cyber, self_harm, hate), two emotion concepts
(negative_emotion, positive_emotion), a ``neutral`` reference set and a ``random`` pool of everyday
texts. Every text is formatted like a prompt (chat template by default) and read at the last token.

- **Directions** (:func:`concept_directions`): per layer, the mean last-token state of a concept's
  texts minus the mean of the neutral texts. Controls: the same with sets of the same size and the
  same words/sentences composition drawn at random (seeded) from the ``random`` pool ("random": is the
  concept more than "any words vs neutral"?) and from the union of all concept sets ("shuffled": is it
  more than a generic harmful/emotional mixture?).
- **TCAV** (:func:`tcav`): for each prompt, the directional derivative of a target (the refusal margin
  by default) along the unit concept direction at layer l, taken at the last token's state:
  ``grad_{h_l} f(x) . v_l / |v_l|``. The TCAV score is the share of prompts where it is positive; it is
  set against the scores of the control directions (mean, spread and a permutation-style p-value:
  the share of controls at least as far from 0.5).
- **Cosines** (:func:`direction_cosines`): per layer, the cosine between the malicious-vs-normal
  direction (difference of class means of the prompts' states: the diff-of-means probe), the refusal
  direction (refused minus complied prompts; by verdicts the caller gives, else by the sign of the
  refusal margin at the first answer token) and every concept direction, with each concept's control
  directions as the yardstick for what a cosine of that size means.

Layer numbering: index 0 is the embedding output, index l the output of decoder block l. At index 0
the last token is the template's, identical for every text, so directions there are zero (cosines and
scores NaN).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ihs.errors import DataError, IhsError
from ihs.explain.gradients import state_gradients
from ihs.explain.targets import length_batches, refusal_target
from ihs.explain.tokens import prompt_text, tokenize_prompts
from ihs.extraction import forward_last_states
from ihs.io import write_json
from ihs.layers import parse_layers
from ihs.progress import progress_bar

HARM_CONCEPTS: tuple[str, ...] = ("weapons", "drugs", "cyber", "self_harm", "hate")
EMOTION_CONCEPTS: tuple[str, ...] = ("negative_emotion", "positive_emotion")
CONTROL_KINDS: tuple[str, ...] = ("random", "shuffled")
_EPS = 1e-12


@dataclass(frozen=True)
class ConceptSet:
    """One concept's words and sentences."""

    name: str
    words: tuple[str, ...]
    sentences: tuple[str, ...]

    @property
    def texts(self) -> list[str]:
        return list(self.words) + list(self.sentences)


@dataclass(frozen=True)
class ConceptLibrary:
    """Concept sets, the neutral reference set they are contrasted with, and the random pool for controls."""

    concepts: dict[str, ConceptSet]
    reference: ConceptSet
    random: ConceptSet
    name: str = "custom"
    version: str = ""
    source: str = ""

    @classmethod
    def default(cls) -> ConceptLibrary:
        """The sets shipped with ihs (``ihs/explain/concepts.json``)."""
        res = resources.files("ihs.explain").joinpath("concepts.json")
        return cls.from_dict(json.loads(res.read_text(encoding="utf-8")), source="ihs:explain/concepts.json")

    @classmethod
    def load(cls, path: str | Path | None = None) -> ConceptLibrary:
        """The shipped sets (``path=None``) or a JSON file of the same shape."""
        if path is None:
            return cls.default()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"concept file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"concept file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> ConceptLibrary:
        """Build from ``{"concepts": {name: {"words": [...], "sentences": [...]}}, "sets": {"neutral": ..., "random": ...}}``."""
        if not isinstance(data, dict) or not isinstance(data.get("concepts"), dict) or not data["concepts"]:
            raise DataError("a concept file needs a non-empty 'concepts' object")
        sets = data.get("sets") or {}

        def one(name: str, spec: Any) -> ConceptSet:
            if not isinstance(spec, dict):
                raise DataError(f"concept {name!r} must be an object with 'words' and/or 'sentences'")
            words = tuple(str(w).strip() for w in spec.get("words", []) if str(w).strip())
            sentences = tuple(str(s).strip() for s in spec.get("sentences", []) if str(s).strip())
            if not words and not sentences:
                raise DataError(f"concept {name!r} has no words and no sentences")
            return ConceptSet(name, words, sentences)

        concepts = {name: one(name, spec) for name, spec in data["concepts"].items()}
        ref_name, pool_name = data.get("reference", "neutral"), data.get("random_pool", "random")
        if ref_name not in sets or pool_name not in sets:
            raise DataError(f"a concept file needs the sets {ref_name!r} (reference) and {pool_name!r} (random pool)")
        reference, pool = one(ref_name, sets[ref_name]), one(pool_name, sets[pool_name])
        for c in concepts.values():
            if len(c.words) > len(pool.words) or len(c.sentences) > len(pool.sentences):
                raise DataError(f"the random pool is smaller than concept {c.name!r}; controls need as many texts")
        return cls(concepts=concepts, reference=reference, random=pool, name=str(data.get("name", "custom")),
                   version=str(data.get("version", "")), source=source)


@dataclass(frozen=True)
class ConceptOptions:
    """``layers``: a layer spec (``ihs.layers.parse_layers``; default all); ``controls``: control sets per
    concept and kind; formatting and batching as in extraction."""

    layers: str | Sequence[int] | None = None
    controls: int = 10
    seed: int = 0
    batch_size: int = 16
    max_batch_tokens: int = 4096
    chat: bool | None = None
    system_prompt: str | None = None
    progress: bool = True


def last_token_states(lm: Any, texts: Sequence[Any], *, options: ConceptOptions | None = None,
                      description: str = "states") -> np.ndarray:
    """Last-token states (N, L+1, d) float32 of texts formatted like prompts."""
    options = options or ConceptOptions()
    pts = tokenize_prompts(lm, texts, chat=options.chat, system_prompt=options.system_prompt)
    out = np.zeros((len(pts), lm.num_layers + 1, lm.hidden_size), dtype=np.float32)
    batches = length_batches([len(p) for p in pts], batch_size=options.batch_size,
                             max_batch_tokens=options.max_batch_tokens)
    with progress_bar(description, total=len(pts), enabled=options.progress) as advance:
        for batch in batches:
            states = forward_last_states(lm, [list(pts[i].ids) for i in batch])
            out[batch] = states.float().numpy()
            advance(len(batch))
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > _EPS, v / np.maximum(n, _EPS), np.nan)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine along the last axis; NaN where either vector is zero."""
    return np.sum(_unit(np.asarray(a, np.float64)) * _unit(np.asarray(b, np.float64)), axis=-1)


@dataclass
class ConceptDirections:
    """Per-layer concept directions (concept mean minus neutral mean) and their control directions."""

    layers: list[int]
    directions: dict[str, np.ndarray]            # name -> (n_layers, d)
    controls: dict[str, dict[str, np.ndarray]]   # kind -> name -> (controls, n_layers, d)
    sizes: dict[str, dict[str, int]]
    library: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Norms per layer and the control set counts (JSON-ready)."""
        return {"layers": self.layers, "sizes": self.sizes, "library": self.library, "options": self.options,
                "norms": {k: np.linalg.norm(v, axis=-1).tolist() for k, v in self.directions.items()},
                "controls": {kind: {k: int(v.shape[0]) for k, v in per.items()} for kind, per in self.controls.items()}}

    def save(self, path: str | Path) -> Path:
        """Write the summary as JSON and the directions beside it (``<stem>.npz``)."""
        path = Path(path)
        write_json(path, self.summary())
        arrays = {f"direction.{k}": v for k, v in self.directions.items()}
        arrays.update({f"control.{kind}.{k}": v for kind, per in self.controls.items() for k, v in per.items()})
        np.savez_compressed(path.with_suffix(".npz"), layers=np.asarray(self.layers), **arrays)
        return path


def _draw(rng: np.random.Generator, words: Sequence[int], sentences: Sequence[int], n_words: int,
          n_sentences: int) -> list[int]:
    return (list(rng.choice(words, size=n_words, replace=False)) if n_words else []) + \
        (list(rng.choice(sentences, size=n_sentences, replace=False)) if n_sentences else [])


def concept_directions(lm: Any, *, library: ConceptLibrary | None = None,
                       options: ConceptOptions | None = None) -> ConceptDirections:
    """Directions per layer for every concept of ``library`` (default: the shipped sets), with controls."""
    library = library or ConceptLibrary.default()
    options = options or ConceptOptions()
    if options.controls < 0:
        raise IhsError(f"controls must be >= 0, got {options.controls}")
    layers = parse_layers(options.layers, lm.num_layers)
    texts: list[str] = []
    index: dict[str, tuple[list[int], list[int]]] = {}
    for c in [*library.concepts.values(), library.reference, library.random]:
        w0 = len(texts)
        texts += list(c.words)
        s0 = len(texts)
        texts += list(c.sentences)
        index[c.name] = (list(range(w0, s0)), list(range(s0, len(texts))))
    states = last_token_states(lm, texts, options=options, description="concept states")[:, layers].astype(np.float64)
    ref_w, ref_s = index[library.reference.name]
    ref_mean = states[ref_w + ref_s].mean(0)
    directions = {name: states[sum(index[name], [])].mean(0) - ref_mean for name in library.concepts}
    rng = np.random.default_rng(options.seed)
    pool_w, pool_s = index[library.random.name]
    union_w = [i for name in library.concepts for i in index[name][0]]
    union_s = [i for name in library.concepts for i in index[name][1]]
    controls: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in CONTROL_KINDS}
    for name, c in library.concepts.items():
        nw, ns = len(c.words), len(c.sentences)
        for kind, (pw, ps) in {"random": (pool_w, pool_s), "shuffled": (union_w, union_s)}.items():
            draws = [_draw(rng, pw, ps, nw, ns) for _ in range(options.controls)]
            controls[kind][name] = (np.stack([states[d].mean(0) - ref_mean for d in draws]) if draws
                                    else np.zeros((0, len(layers), states.shape[-1])))
    sizes = {name: {"words": len(c.words), "sentences": len(c.sentences)} for name, c in library.concepts.items()}
    sizes[library.reference.name] = {"words": len(library.reference.words), "sentences": len(library.reference.sentences)}
    return ConceptDirections(layers=layers, directions=directions, controls=controls, sizes=sizes,
                             library={"name": library.name, "version": library.version, "source": library.source},
                             options=asdict(options))


@dataclass
class TcavResult:
    """TCAV scores per concept and layer, with the control distribution and a p-value."""

    layers: list[int]
    target: dict[str, Any]
    scores: dict[str, list[float]]
    mean_sensitivity: dict[str, list[float]]
    controls: dict[str, dict[str, dict[str, list[float]]]]
    prompts: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"format": "ihs-explain-tcav", **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        write_json(path, self.to_dict())
        return Path(path)


def _share_positive(grads: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """grads (N, nL, d), directions (..., nL, d) -> share of positive derivatives and mean derivative (..., nL)."""
    unit = _unit(directions)
    deriv = np.einsum("nld,...ld->...nl", grads, np.nan_to_num(unit))
    share = (deriv > 0).mean(axis=-2)
    bad = ~np.isfinite(unit).all(-1)
    share = np.where(bad, np.nan, share)
    mean = np.where(bad, np.nan, deriv.mean(axis=-2))
    return share, mean


def _nan_stat(func: Any, values: np.ndarray, **kwargs: Any) -> np.ndarray:
    """``func`` (nanmean, nanstd, nanquantile) without the warnings all-NaN columns (layer 0) raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(values, **kwargs)


def _p_value(score: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Per layer: (1 + #controls at least as far from 0.5 as the score) / (1 + #controls)."""
    if controls.shape[0] == 0:
        return np.full(score.shape, np.nan)
    far = np.abs(controls - 0.5) >= np.abs(score - 0.5)[None, :] - 1e-12
    p = (1 + far.sum(0)) / (1 + controls.shape[0])
    return np.where(np.isfinite(score), p, np.nan)


def tcav(lm: Any, prompts: Sequence[Any], directions: ConceptDirections, *, target: Any = None,
         options: ConceptOptions | None = None) -> TcavResult:
    """TCAV scores of ``target`` (default: the refusal margin) for each concept direction and layer
    (NaN at layers above the target's own, which it does not read, and where a direction is zero)."""
    options = options or ConceptOptions()
    if not prompts:
        raise IhsError("no prompts for TCAV")
    target = target if target is not None else refusal_target(lm)
    grads, _ = state_gradients(lm, prompts, target, directions.layers, batch_size=options.batch_size,
                               max_batch_tokens=options.max_batch_tokens, chat=options.chat,
                               system_prompt=options.system_prompt, progress=options.progress)
    scores, sens, controls = {}, {}, {}
    above = np.asarray(directions.layers) > int(target.layer)  # the target does not read these layers
    for name, v in directions.directions.items():
        s, m = _share_positive(grads, v)
        s, m = np.where(above, np.nan, s), np.where(above, np.nan, m)
        scores[name], sens[name] = s.tolist(), m.tolist()
        per_kind = {}
        for kind, per in directions.controls.items():
            cs, _ = _share_positive(grads, per[name])
            cs = np.where(above[None, :], np.nan, cs)
            per_kind[kind] = {"mean": _nan_stat(np.nanmean, cs, axis=0).tolist() if len(cs) else [],
                              "std": _nan_stat(np.nanstd, cs, axis=0).tolist() if len(cs) else [],
                              "p_value": _p_value(s, cs).tolist()}
        controls[name] = per_kind
    return TcavResult(layers=list(directions.layers), target=target.describe(), scores=scores,
                      mean_sensitivity=sens, controls=controls, prompts=len(prompts), options=asdict(options))


# -- how the directions line up --------------------------------------------------------------


@dataclass
class CosineResult:
    """Per-layer cosines among the malicious-vs-normal, refusal and concept directions, with controls."""

    layers: list[int]
    names: list[str]
    cosines: np.ndarray          # (n_layers, k, k)
    controls: dict[str, Any]
    refusal: dict[str, Any]
    sizes: dict[str, int]
    seconds: float = 0.0

    def pair(self, a: str, b: str) -> list[float]:
        """Cosine per layer between two named directions."""
        try:
            i, j = self.names.index(a), self.names.index(b)
        except ValueError:
            raise IhsError(f"unknown direction; have {', '.join(self.names)}") from None
        return self.cosines[:, i, j].tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as null when written with ``ihs.io``)."""
        return {"format": "ihs-explain-cosines", "layers": self.layers, "names": self.names,
                "cosines": self.cosines.tolist(), "controls": self.controls, "refusal": self.refusal,
                "sizes": self.sizes, "seconds": self.seconds}

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        write_json(path, self.to_dict())
        return Path(path)


def direction_cosines(
    lm: Any,
    *,
    malicious: Sequence[Any],
    normal: Sequence[Any],
    directions: ConceptDirections,
    refused: Sequence[bool] | None = None,
    target: Any = None,
    options: ConceptOptions | None = None,
) -> CosineResult:
    """Cosines per layer between the malicious-vs-normal direction, the refusal direction and the concepts.

    ``refused``: one verdict per prompt of ``malicious`` then ``normal`` (e.g. from the refusal judge on
    generated answers); without it a prompt counts as refused when the refusal margin (``target``,
    default :func:`refusal_target`) is positive at the first answer token.
    """
    options = options or ConceptOptions()
    started = time.perf_counter()
    if not malicious or not normal:
        raise IhsError("need malicious and normal prompts for the malicious-vs-normal direction")
    texts = [prompt_text(p) for p in [*malicious, *normal]]
    states = last_token_states(lm, texts, options=options, description="prompt states").astype(np.float64)
    layers = directions.layers
    nm = len(malicious)
    sel = states[:, layers]
    named: dict[str, np.ndarray] = {"malicious_vs_normal": sel[:nm].mean(0) - sel[nm:].mean(0)}
    if refused is not None:
        verdict = np.asarray(list(refused), dtype=bool)
        if len(verdict) != len(texts):
            raise IhsError(f"got {len(verdict)} refusal verdicts for {len(texts)} prompts (malicious, then normal)")
        source = "given verdicts"
    else:
        target = target if target is not None else refusal_target(lm)
        with torch.no_grad():
            margin = target.readout(lm, torch.as_tensor(states[:, target.layer], dtype=lm.dtype,
                                                         device=lm.input_device)).double().cpu().numpy()
        verdict = margin > 0
        source = "refusal margin > 0 at the first answer token"
    refusal_info = {"source": source, "refused": int(verdict.sum()), "complied": int((~verdict).sum())}
    if verdict.any() and (~verdict).any():
        named["refusal"] = sel[verdict].mean(0) - sel[~verdict].mean(0)
    else:
        refusal_info["note"] = "all prompts fall on one side, so there is no refusal direction"
    named.update(directions.directions)
    names = list(named)
    stack = np.stack([named[n] for n in names], axis=1)  # (nL, k, d)
    unit = _unit(stack)
    cos = np.einsum("lid,ljd->lij", unit, unit)
    controls: dict[str, Any] = {}
    for anchor in ("malicious_vs_normal", "refusal"):
        if anchor not in named:
            continue
        per_concept: dict[str, Any] = {}
        for name in directions.directions:
            entry: dict[str, Any] = {"cosine": cosine(named[name], named[anchor]).tolist()}
            for kind, per in directions.controls.items():
                c = np.abs(cosine(per[name], named[anchor][None]))  # (controls, nL)
                if c.shape[0] == 0:
                    continue
                q95 = _nan_stat(np.nanquantile, c, q=0.95, axis=0)
                entry[kind] = {"mean_abs": _nan_stat(np.nanmean, c, axis=0).tolist(), "q95_abs": q95.tolist(),
                               "exceeds_q95": (np.abs(np.asarray(entry["cosine"])) > q95).tolist()}
            per_concept[name] = entry
        controls[anchor] = per_concept
    return CosineResult(layers=list(layers), names=names, cosines=cos, controls=controls, refusal=refusal_info,
                        sizes={"malicious": nm, "normal": len(normal)}, seconds=time.perf_counter() - started)
