"""The Python API: the few calls a research session needs, each a thin layer over one workflow.

``import ihs`` gives these names (loaded on first use, so ``import ihs`` stays fast)::

    import ihs

    lm = ihs.load_model("smollm2-135m-instruct")                        # zoo name, folder, GGUF or hub id
    store = ihs.extract(lm, {"normal": "builtin:normal",
                             "malicious": "builtin:malicious"}, limit=50)
    ihs.probe(store).numbers()["first_95"]                             # first layer a probe reaches 0.95
    ihs.lens(store, model=lm).numbers()["tkic_top1"]                   # TKIC per class, middle layers
    ihs.generate(lm, "builtin:malicious", limit=8).numbers()["per_class"]
    ihs.graft(lm, targets="builtin:malicious", donors="builtin:normal", layers="L/2", limit=4)

Layers follow :data:`LAYER_CONVENTION` (0 = embedding output, i = output of block i) and
:mod:`ihs.layers`'s grammar everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ihs.layers import LAYER_CONVENTION, parse_layer_range, parse_layers
from ihs.models.loading import LoadedModel, load_model
from ihs.store import ActivationStore

__all__ = ["LAYER_CONVENTION", "ActivationStore", "LoadedModel", "extract", "generate", "graft", "lens", "load_model",
           "parse_layer_range", "parse_layers", "probe", "prompts", "run"]


def prompts(data: str | Sequence[str] | Mapping[str, str], *, limit: int | None = None) -> list[Any]:
    """Cleaned, de-duplicated prompt records from data specs.

    ``data`` is one spec (``"builtin:malicious"``: the class is the set's name), a list of
    ``NAME=SPEC`` strings, or a mapping ``{class: spec}``; ``limit`` keeps the first N per class.

    >>> [r.label for r in prompts({"normal": "builtin:normal"}, limit=2)]
    ['normal', 'normal']
    """
    from ihs.data.prepare import prepare

    if isinstance(data, str):
        specs = [data if "=" in data.split(":", 1)[0] else f"{data.split(':', 1)[-1].split(':')[0]}={data}"]
    elif isinstance(data, Mapping):
        specs = [f"{name}={spec}" for name, spec in data.items()]
    else:
        specs = list(data)
    records, _ = prepare(specs, limit=limit)
    return records


def extract(model: LoadedModel, data: Any, out: str | Path | None = None, *, limit: int | None = None,
            progress: bool = True, **options: Any) -> ActivationStore:
    """Every layer's last-token state (and logit-lens top-k) of the prompts in ``data``.

    ``data``: prompt records, or specs as :func:`prompts` takes them. ``out``: a store folder
    (resumable) or None to keep the store in memory. ``options``: fields of
    :class:`ihs.extraction.ExtractOptions` (``k``, ``batch_size``, ``chat``, ``system_prompt``, ...).

    >>> store = extract(load_model("smollm2-135m-instruct"), "builtin:normal", limit=4)  # doctest: +SKIP
    >>> store.hidden.shape                                                                # doctest: +SKIP
    (4, 31, 576)
    """
    from ihs.extraction import ExtractOptions
    from ihs.extraction import extract as _extract

    records = _records(data, limit)
    return _extract(model, records, out, ExtractOptions(**options), progress=progress)


def probe(store: ActivationStore | str | Path, *, name: str = "store", progress: bool = False, **options: Any) -> Any:
    """Weak classifiers per layer on a store (:class:`ihs.workflows.probe.ProbeOptions` as keywords).

    >>> import numpy as np
    >>> toy = ActivationStore.from_arrays(np.random.default_rng(0).normal(size=(40, 3, 8)).astype("float32"),
    ...                                   ["normal", "malicious"] * 20)
    >>> probe(toy, classifiers=["diffmean"], bow=False).numbers()["best_accuracy"] < 0.8  # noise: no signal
    True
    """
    from ihs.workflows.probe import ProbeOptions, run_probe

    return run_probe({name: store}, ProbeOptions(**options), progress=progress)


def lens(store: ActivationStore | str | Path, *, model: LoadedModel | str | None = None, name: str = "store",
         progress: bool = False, **options: Any) -> Any:
    """Logit lens of a store: emotion tokens per layer and class, TKIC (:class:`ihs.workflows.lens.LensOptions`
    as keywords). ``model`` (loaded, or a reference) gives the tokenizer that decodes token ids, and the
    model for a tuned lens (``tuned=True``); by default the store's own model, from local files.

    >>> store = extract(load_model("smollm2-135m-instruct"), "builtin:malicious", limit=8)  # doctest: +SKIP
    >>> lens(store).numbers()["tkic_top1"]                                                 # doctest: +SKIP
    {'malicious': 0.57}
    """
    from ihs.workflows.lens import LensOptions, run_lens

    return run_lens({name: store}, LensOptions(**options), model=model, progress=progress)


def generate(model: LoadedModel, data: Any, *, limit: int | None = None, progress: bool = False,
             **options: Any) -> Any:
    """Greedy answers to the prompts in ``data``, judged for refusal (:class:`ihs.workflows.generate.GenerateConfig`
    as keywords: ``max_new_tokens``, ``judge``, ...).

    >>> result = generate(load_model("smollm2-135m-instruct"), "builtin:malicious", limit=4)  # doctest: +SKIP
    >>> result.numbers()["per_class"]["malicious"]["refusal_rate"]                           # doctest: +SKIP
    0.0
    """
    from ihs.workflows.generate import GenerateConfig, run_generate

    records = _records(data, limit)
    return run_generate(model, records, GenerateConfig(**options), progress=progress)


def graft(model: LoadedModel, *, targets: Any, donors: Any, layers: str = "0:L:5", limit: int = 24,
          donor_limit: int = 100, progress: bool = False, **options: Any) -> Any:
    """Logit grafting: the targets' last-position state replaced at each layer by the donors' mean state, then
    greedy answers judged (:class:`ihs.workflows.graft.GraftConfig` as keywords).

    >>> result = graft(load_model("smollm2-135m-instruct"), targets="builtin:malicious",  # doctest: +SKIP
    ...                donors="builtin:normal", layers="L/2", limit=4)
    >>> result.numbers()["best_asr"]                                                          # doctest: +SKIP
    """
    from ihs.workflows.graft import GraftConfig, graft_sets, run_graft

    config = GraftConfig(layers=layers, targets=limit, donors=donor_limit, **options)
    target_pool, donor_pool = _records(targets, None), _records(donors, None)
    sets = graft_sets(target_pool, donor_pool, config)
    return run_graft(model, sets.targets, sets.donors, config, progress=progress)


def _records(data: Any, limit: int | None) -> list[Any]:
    if data and not isinstance(data, str | Mapping) and hasattr(data[0], "text"):
        return list(data)[:limit] if limit else list(data)
    return prompts(data, limit=limit)


def run(config: Any = None, out: str | Path = "ihs-run", *, models: Sequence[Any] | None = None,
        progress: bool = True, force: Sequence[str] | bool = (), report: bool = True, **overrides: Any) -> Any:
    """Every configured analysis for every model into ``out`` and, with ``report``, ``out/report.html``.

    ``config``: a RunConfig, a YAML path, a dict, or None for the defaults; ``overrides`` set
    top-level keys (``limit=20``, ``analyses=["probe"]``). Returns the runner's result with
    ``.report`` (the report's path or None).
    """
    from ihs.pipeline import config as run_config
    from ihs.pipeline.runner import run as run_pipeline

    if config is None or isinstance(config, dict):
        cfg = run_config.from_dict({**(config or {}), **overrides})
    elif isinstance(config, str | Path):
        cfg = run_config.load(config)
    else:
        cfg = config
    for key, value in overrides.items() if not (config is None or isinstance(config, dict)) else ():
        setattr(cfg, key, value)
    result = run_pipeline(cfg, out, models=models, progress=progress, force=force)
    if report:
        from ihs.report.page import write_report

        result.report = write_report(out, result.index)
    return result
