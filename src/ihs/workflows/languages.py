"""Languages workflow: does early recognition hold beyond English?

On stores whose prompts carry a language tag (``lang``; ``builtin:multilingual`` sets it), per model:
probe accuracy inside each language (k-fold), transfer from the source language to each other one
and back, and the logit lens's emotion and script by language; refusal per language when
generations are given. Saved as ``lang.json``, ``lang.md`` and the figures ``lang_cv``,
``lang_transfer``, ``lang_lens`` and ``lang_refusal``. The computing is
:mod:`ihs.analysis.multilingual`; this module gives the options, the result, the command line's
function and the ``ihs run`` step.

>>> from ihs.workflows.languages import LanguagesOptions, run_languages
>>> result = run_languages({"smol": "runs/ml/store"}, LanguagesOptions(classifiers=["diffmean"]))  # doctest: +SKIP
>>> result.save("runs/ml/lang")                                                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ihs.errors import IhsError
from ihs.io import read_json, read_jsonl
from ihs.store import ActivationStore
from ihs.workflows.base import Result, Skip, Step, StepContext, opt, records_digest

FIGURE_FORMATS = ("png", "svg", "pdf")
LAYER_CONVENTION = "0 = embedding output, i = output of decoder block i (before the final norm)"


@dataclass(kw_only=True)
class LanguagesOptions:
    """Per-language probes, cross-lingual transfer, lens emotion and script by language."""

    tag: str = opt("lang", "The tag that names the language.")
    source: str = opt("en", "Language the transfer trains on (and tests on in reverse).")
    classes: list[str] = opt(help="The two classes, negative first.", factory=lambda: ["normal", "malicious"])
    classifiers: list[str] = opt(help="Classifiers: svm, mlp, logreg, diffmean (the figures use the first).",
                                 factory=lambda: ["svm"])
    folds: int = opt(5, "Folds of the per-language CV.")
    seed: int = opt(42, "Seed for folds and label shuffles.")
    layers: str | None = opt(None, "Layers in the layer grammar (null: all).")
    control: bool = opt(True, "Shuffled-label controls.")

    def validate(self) -> None:
        from ihs.analysis.probes import parse_classifiers

        parse_classifiers(self.classifiers)
        if len(self.classes) != 2:
            raise IhsError(f"classes needs two classes (negative first), got {','.join(self.classes) or 'none'}")
        if self.folds < 2:
            raise IhsError(f"folds must be at least 2, got {self.folds}")


def check_formats(formats: Sequence[str]) -> list[str]:
    """Figure formats, checked: each one png, svg or pdf."""
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad:
        raise IhsError(f"unknown figure format {bad[0]!r}; choose png, svg or pdf")
    return list(formats)


def command_line(stores: Sequence[str], names: Sequence[str] | None, options: LanguagesOptions,
                 generations: Sequence[str], out: str | Path | None) -> str:
    """The canonical ``ihs lang`` command for these inputs, written into lang.json and under the figures."""
    o, d = options, LanguagesOptions()
    parts = ["ihs", "lang", *stores]
    for path in generations:
        parts += ["--generations", str(path)]
    for flag, name in (("--tag", "tag"), ("--source", "source"), ("--folds", "folds"), ("--seed", "seed"),
                       ("--layers", "layers")):
        if getattr(o, name) != getattr(d, name):
            parts += [flag, str(getattr(o, name))]
    for flag, name in (("--classes", "classes"), ("--classifiers", "classifiers")):
        if getattr(o, name) != getattr(d, name):
            parts += [flag, ",".join(getattr(o, name))]
    if names:
        parts += ["--names", ",".join(names)]
    if not o.control:
        parts.append("--no-control")
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


class LanguagesResult(Result):
    """``lang.json``: per model, CV per language, transfer both ways, lens by language, summary; refusal."""

    FILE = "lang.json"
    MD_FILE = "lang.md"

    @property
    def models(self) -> list[dict[str, Any]]:
        return self.data.get("models") or []

    @property
    def refusal(self) -> dict[str, Any]:
        """Refusal per language, per model named in the generations."""
        return self.data.get("refusal") or {}

    @property
    def classifier(self) -> str | None:
        """The classifier the figures and tables show (the first one run)."""
        return next(iter(self.models[0]["cv"]), None) if self.models else None

    def markdown(self) -> str:
        """Tables in Markdown: accuracy per language with 95% intervals, transfer, lens, refusal."""
        return markdown(self.data, self.classifier)

    def save(self, folder: str | Path, *, figures: Sequence[str] = ("png",)) -> list[Path]:
        """Write lang.json, lang.md and the figures (``figures``: any of png, svg, pdf; empty for none)."""
        check_formats(figures)
        folder = Path(folder)
        written = super().save(folder)
        (folder / self.MD_FILE).write_text(self.markdown(), encoding="utf-8")
        written.append(folder / self.MD_FILE)
        if figures:
            from ihs.plots import lang as plot_lang

            command, fmts = self.data.get("command"), list(figures)
            if self.models:
                written += plot_lang.plot_cv(self.models, folder, self.classifier, command, fmts)
                written += plot_lang.plot_transfer(self.models, folder, self.classifier, command, fmts)
                written += plot_lang.plot_lens(self.models, folder, command, fmts)
            written += plot_lang.plot_refusal(self.refusal, folder, command, fmts)
        return written

    def numbers(self, store: int = 0) -> dict[str, Any] | None:
        """Headline numbers of one store: per language (in report order) n per class, CV and transfer numbers
        of the first classifier, lens numbers (the summary's rows), and malicious refusal per model."""
        if not self.models:
            return None
        res = self.models[store]
        clf = self.classifier
        refusal = {model: {g: (e.get("malicious") or {}).get("refusal_rate") for g, e in r["groups"].items()}
                   for model, r in self.refusal.items()}
        return {"name": res["name"], "classifier": clf, "num_layers": res["num_layers"], "source": res["source"],
                "classes": res["classes"], "groups": res["groups"], "n": res["n"],
                "early_layers": res["summary"]["early_layers"], "middle_layers": res["middle_layers"],
                "rows": res["summary"]["rows"], "refusal_malicious": refusal}


def read_generations(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(model name, rows)`` of a generations.jsonl of ``ihs generate`` (or its folder); the name comes
    from the folder's refusal.json, else the folder's name."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    file = path / "generations.jsonl" if path.is_dir() else path
    if not file.exists():
        raise IhsError(f"no generations file at {file}")
    rows = read_jsonl(file)
    name = folder.name
    meta = folder / "refusal.json"
    if meta.exists():
        try:
            name = read_json(meta).get("model") or name
        except IhsError:
            pass
    return str(name), rows


def run_languages(stores: Mapping[str, str | Path | ActivationStore] | Sequence[str | Path],
                  options: LanguagesOptions | None = None, *, generations: Sequence[str | Path] = (),
                  command: str | None = None, progress: bool = True) -> LanguagesResult:
    """The cross-lingual analysis of each store (``{display name: store or folder}``, or folders named by their
    folder name) and refusal per language of each generations file."""
    from ihs.analysis.multilingual import analyse_store, refusal_by_group
    from ihs.analysis.probes import parse_classifiers
    from ihs.layers import parse_layers
    from ihs.progress import progress_bar

    options = options or LanguagesOptions()
    options.validate()
    if not stores and not generations:
        raise IhsError("give at least one store or --generations")
    if not isinstance(stores, Mapping):
        stores = {Path(s).name: s for s in stores}
    classifiers = parse_classifiers(options.classifiers)
    results = []
    for name, source in stores.items():
        store = source if isinstance(source, ActivationStore) else ActivationStore.load(source)
        layers = parse_layers(options.layers, store.num_layers) if options.layers else None
        n_groups = len({(r.get("tags") or {}).get(options.tag) for r in store.records} - {None})
        total = len(classifiers) * (n_groups + 2 * max(0, n_groups - 1))
        with progress_bar(f"lang {name}", total=total, unit="fits", enabled=progress) as advance:
            res = analyse_store(store, options.tag, options.source, options.classes, classifiers, options.folds,
                                options.seed, layers, options.control, advance)
        res["name"] = name
        results.append(res)
    refusal = {}
    for g in generations:
        model, rows = read_generations(g)
        refusal[model] = refusal_by_group(rows, options.tag)
    return LanguagesResult({"analysis": "lang", "command": command or "ihs lang", "tag": options.tag,
                            "source": options.source, "classes": list(options.classes),
                            "layer_convention": LAYER_CONVENTION, "models": results, "refusal": refusal})


# -- lang.md ------------------------------------------------------------------------------------------------


def fmt_value(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def _acc_ci(entry: dict[str, Any], layers: list[int], layer: int) -> str:
    if not entry or "accuracy" not in entry or layer not in layers:
        return "-"
    i = layers.index(layer)
    return f"{entry['accuracy'][i]:.2f} [{entry['ci_low'][i]:.2f}, {entry['ci_high'][i]:.2f}]"


def markdown(result: dict[str, Any], clf: str | None) -> str:
    """Tables of ``lang.json`` in Markdown: accuracy per language with 95% intervals, transfer, lens, refusal."""
    lines = [f"Command: `{result['command']}`", ""]
    for res in result["models"]:
        L = res["num_layers"]
        early = res["summary"]["early_layers"][-1]
        mid = res["middle_layers"][len(res["middle_layers"]) // 2]
        cv, tr = res["cv"][clf], res["transfer"][clf]
        src = res["source"]
        lines += [f"**{res['name']}** ({res['model'].get('name') or res['model'].get('id', '')}, L = {L}; {clf}; "
                  f"early = block {early}, middle = block {mid}; accuracy [Wilson 95%])", "",
                  f"| lang | n (normal/malicious) | CV block {early} | CV block {mid} | CV first >= 0.95 | CV best (layer) "
                  f"| {src} -> lang, block {early} | {src} -> lang, block {mid} | {src} -> lang first >= 0.95 "
                  f"| lang -> {src}, block {early} | lang -> {src}, block {mid} |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in res["groups"]:
            e = cv["groups"].get(g, {})
            f, r = tr["forward"].get(g), tr["reverse"].get(g)
            n = res["n"].get(g, {})
            best = (f"{e['best_accuracy']:.2f} ({e['best_layer']})" if e.get("best_accuracy") is not None else "-")
            lines.append(
                f"| {g} | {'/'.join(str(n.get(c, 0)) for c in res['classes'])} | {_acc_ci(e, cv['layers'], early)} "
                f"| {_acc_ci(e, cv['layers'], mid)} | {fmt_value(e.get('first_layer_95'))} | {best} "
                f"| {_acc_ci(f, tr['layers'], early) if f else '(source)'} | {_acc_ci(f, tr['layers'], mid) if f else '-'} "
                f"| {fmt_value(f.get('first_layer_95')) if f else '-'} | {_acc_ci(r, tr['layers'], early) if r else '-'} "
                f"| {_acc_ci(r, tr['layers'], mid) if r else '-'} |")
        ctrl = [v for g in res["groups"] for v in (cv["groups"].get(g, {}).get("control_accuracy") or [])]
        tctrl = [v for d in ("forward", "reverse") for e in tr[d].values() for v in (e.get("control_accuracy") or [])]
        if ctrl or tctrl:
            lines += ["", f"Shuffled-label controls: CV mean {sum(ctrl) / max(1, len(ctrl)):.2f} (max {max(ctrl, default=0):.2f}); "
                      f"transfer mean {sum(tctrl) / max(1, len(tctrl)):.2f} (max {max(tctrl, default=0):.2f})."]
        rows = res["summary"]["rows"]
        if res.get("lens"):
            mids = res["middle_layers"]
            ref = next((r.get("neg_ref_layer") for r in rows.values() if r.get("neg_ref_layer") is not None), None)
            lines += ["", f"Logit lens (top-{res['lens']['k']}): share of prompts with a negative emotion token, at the "
                      f"layer where it separates {src} malicious from normal best (block {fmt_value(ref)}), the largest "
                      f"malicious - normal difference at any layer, and the script of the malicious prompts' decoded "
                      f"tokens over the middle third (blocks {mids[0]}-{mids[-1]}) and at the last layer:", "",
                      f"| lang | negative at block {fmt_value(ref)}: malicious / normal | largest difference (block) "
                      "| negative at last layer: malicious / normal | most common script (mid, share) "
                      "| own script (mid / last) |", "|---|---|---|---|---|---|"]
            for g in res["groups"]:
                row = rows.get(g, {})
                top = (f"{row['top_script_mid']} {row['top_script_mid_share']:.2f}" if row.get("top_script_mid") else "-")
                lines.append(f"| {g} | {fmt_value(row.get('neg_malicious_at_ref'))} / {fmt_value(row.get('neg_normal_at_ref'))} "
                             f"| {fmt_value(row.get('neg_diff_max'), '+.2f')} ({fmt_value(row.get('neg_diff_max_layer'))}) "
                             f"| {fmt_value(row.get('neg_last_malicious'))} / {fmt_value(row.get('neg_last_normal'))} | {top} "
                             f"| {fmt_value(row.get('own_script_mid'))} / {fmt_value(row.get('own_script_last'))} |")
        lines.append("")
    if result.get("refusal"):
        lines += ["Refusal (phrase judge with every language's phrases; 'English phrases': what the English list "
                  "alone catches; 'own script': answers written mostly in the prompt's script):", "",
                  "| model | lang | malicious refused [95%] | English phrases | normal refused | answers in own script "
                  "(malicious / normal) |", "|---|---|---|---|---|---|"]
        for model, r in result["refusal"].items():
            for g, entry in r["groups"].items():
                m, n = entry.get("malicious"), entry.get("normal")
                mal = (f"{m['refused']}/{m['n']} = {m['refusal_rate']:.2f} [{m['refusal_ci95'][0]:.2f}, "
                       f"{m['refusal_ci95'][1]:.2f}]" if m else "-")
                nor = f"{n['refused']}/{n['n']}" if n else "-"
                lines.append(f"| {model} | {g} | {mal} | {m['refused_english_phrases'] if m else '-'} | {nor} "
                             f"| {fmt_value(m.get('answer_in_own_script')) if m else '-'} / "
                             f"{fmt_value(n.get('answer_in_own_script')) if n else '-'} |")
        lines.append("")
    return "\n".join(lines)


# -- the ihs run step ----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LanguagesConfig(LanguagesOptions):
    """The languages step of ``ihs run``: the analysis's options, and what to extract when the run's data has
    no language tag."""

    per_language: int = opt(8, "When the run's prompts carry no language tag: prompts per class and language "
                               "extracted from builtin:multilingual.")
    languages: list[str] | None = opt(None, "When the run's prompts carry no language tag: the languages of "
                                            "builtin:multilingual to extract (null: all: en, zh, es, fr, sw, bn).")

    def validate(self) -> None:
        super().validate()
        if self.per_language < 2:
            raise IhsError(f"per_language must be at least 2, got {self.per_language}")


def builtin_records(cfg: LanguagesConfig) -> list[Any]:
    """The prompts the step extracts when the run's data has no language tag: the first ``per_language``
    prompts of each class and language of builtin:multilingual."""
    from ihs.data.multilingual import LANGUAGES
    from ihs.data.prepare import prepare

    langs = cfg.languages or list(LANGUAGES)
    if cfg.source not in langs:
        raise IhsError(f"languages.source {cfg.source!r} is not among languages.languages ({', '.join(langs)})")
    specs = [f"{c}=builtin:multilingual:{c}:{','.join(langs)}" for c in cfg.classes]
    records, _ = prepare(specs, limit=cfg.per_language, limit_by="lang")
    return records


class LanguagesStep(Step):
    name = "languages"
    options = LanguagesConfig
    depends = ("extract",)
    default = False
    help = ("Languages (runs with --analyses all or when listed): probe accuracy inside each language, transfer "
            "from the source language and back, lens emotion and script by language. Uses the run's store when "
            "its prompts carry the tag with two or more languages; otherwise extracts builtin:multilingual on the "
            "run's model into languages/store (per_language prompts per class and language; about a minute on "
            "SmolLM2 with 2 CPU cores at the default 8).")

    @staticmethod
    def own_data(ctx: StepContext, cfg: LanguagesConfig) -> bool:
        """Whether the run's own prompts carry ``cfg.tag`` with two or more values."""
        return len({r.tags.get(cfg.tag) for r in ctx.extract_records()} - {None}) >= 2

    def key(self, ctx: StepContext) -> dict[str, Any]:
        cfg: LanguagesConfig = ctx.options(self.name)
        if self.own_data(ctx, cfg):
            return {"extract": ctx.keys["extract"], "options": asdict(cfg)}
        return {"model": ctx.model_part(), "data": records_digest(self._builtin(cfg)),
                "extract": asdict(ctx.options("extract")), "options": asdict(cfg)}

    @staticmethod
    def _builtin(cfg: LanguagesConfig) -> list[Any]:
        if cfg.tag != "lang":
            raise Skip(f"the run's prompts carry no {cfg.tag!r} tag with two or more values, and "
                       "builtin:multilingual tags languages as 'lang'")
        return builtin_records(cfg)

    def run(self, ctx: StepContext, folder: Path) -> dict[str, Any]:
        cfg: LanguagesConfig = ctx.options(self.name)
        name = ctx.model_dir.name
        if self.own_data(ctx, cfg):
            store, data = ctx.store_dir(), "run"
        else:
            store, data = folder / "store", "builtin:multilingual"
            self._extract(ctx, self._builtin(cfg), store)
        command = command_line([str(store)], [name], cfg, [], folder)
        result = run_languages({name: str(store)}, cfg, command=command, progress=ctx.progress)
        files = result.save(folder, figures=("png",))
        return {"outputs": [LanguagesResult.FILE], "data": data,
                "figures": [p.name for p in files if p.suffix == ".png"]}

    @staticmethod
    def _extract(ctx: StepContext, records: list[Any], store: Path) -> None:
        from ihs.extraction import ExtractOptions, extract

        cfg, fmt = ctx.options("extract"), ctx.config.format
        options = ExtractOptions(chat=fmt.chat, system_prompt=fmt.system_prompt, k=cfg.k, batch_size=cfg.batch_size,
                                 max_batch_tokens=cfg.max_batch_tokens, max_length=cfg.max_length,
                                 store_dtype=cfg.store_dtype)
        extract(ctx.model.get(), records, store, options, progress=ctx.progress, overwrite=True)
