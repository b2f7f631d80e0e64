"""``ihs lang``: the cross-lingual analysis of one or more stores in one go.

Writes ``lang.json`` (per model: per-language CV, transfer both ways, lens emotion and script by
language, summary; refusal per language when generations are given) and the figures
``lang_cv``, ``lang_transfer``, ``lang_lens`` and ``lang_refusal``.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ihs.errors import IhsError


def lang_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for lang.json and figures.")],
    stores: Annotated[list[Path] | None, typer.Argument(
        help="Store directories made by `ihs extract` with a lang tag (none: refusal from --generations only).")] = None,
    generations: Annotated[list[Path] | None, typer.Option(
        "--generations", "-g", help="generations.jsonl of `ihs generate` (or its folder), repeatable; "
        "refusal per language. Named by the model in its refusal.json.")] = None,
    tag: Annotated[str, typer.Option(help="The tag that names the language.")] = "lang",
    source: Annotated[str, typer.Option(help="Language the transfer trains on (and tests on in reverse).")] = "en",
    classes: Annotated[str, typer.Option(help="The two classes, negative first.")] = "normal,malicious",
    classifiers: Annotated[str, typer.Option("--classifiers", "-c", help="svm, mlp, logreg, diffmean.")] = "svm",
    folds: Annotated[int, typer.Option(help="Folds of the per-language CV.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for folds and label shuffles.")] = 42,
    layers: Annotated[str | None, typer.Option(help="Layers, e.g. 0-10,15 (default: all).")] = None,
    names: Annotated[str | None, typer.Option(help="Display names, comma-separated, one per store.")] = None,
    control: Annotated[bool, typer.Option("--control/--no-control", help="Shuffled-label controls.")] = True,
    formats: Annotated[str, typer.Option(help="Figure formats: png, svg, pdf.")] = "png",
) -> None:
    """Languages: per-language probe accuracy, cross-lingual transfer, lens emotion/script and refusal by language."""
    try:
        _run(stores or [], out, generations or [], tag, source, classes, classifiers, folds, seed, layers, names, control,
             formats)
    except IhsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _read_generations(path: Path) -> tuple[str, list[dict[str, Any]]]:
    folder = path if path.is_dir() else path.parent
    file = path / "generations.jsonl" if path.is_dir() else path
    if not file.exists():
        raise IhsError(f"no generations file at {file}")
    try:
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise IhsError(f"{file}: malformed JSON line: {exc.msg}") from None
    name = folder.name
    meta = folder / "refusal.json"
    if meta.exists():
        try:
            name = json.loads(meta.read_text(encoding="utf-8")).get("model") or name
        except json.JSONDecodeError:
            pass
    return str(name), rows


def _run(stores, out, generations, tag, source, classes, classifiers, folds, seed, layers, names, control,
         formats) -> None:
    from ihs.analysis.multilingual import analyse_store, refusal_by_group
    from ihs.analysis.probes import parse_classifiers
    from ihs.layers import parse_layers
    from ihs.progress import console, progress_bar
    from ihs.report import plot_lang
    from ihs.store import ActivationStore

    clf_list = parse_classifiers(classifiers)
    class_list = [c.strip() for c in classes.split(",") if c.strip()]
    if len(class_list) != 2:
        raise IhsError(f"--classes needs two classes (negative first), got {classes!r}")
    fmt_list = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmt_list if f not in ("png", "svg", "pdf")]
    if bad or not fmt_list:
        raise IhsError(f"unknown figure format {bad[0] if bad else '(none)'!r}; choose png, svg or pdf")
    if not stores and not generations:
        raise IhsError("give at least one store or --generations")
    name_list = [n.strip() for n in names.split(",")] if names else [Path(s).name for s in stores]
    if len(name_list) != len(stores):
        raise IhsError(f"--names has {len(name_list)} names for {len(stores)} stores")
    command = shlex.join(["ihs", "lang", *sys.argv[2:]]) if len(sys.argv) > 2 else "ihs lang"

    results = []
    for path, name in zip(stores, name_list, strict=True):
        store = ActivationStore.load(path)
        layer_list = parse_layers(layers, store.num_layers) if layers else None
        n_groups = len({(r.get("tags") or {}).get(tag) for r in store.records} - {None})
        total = len(clf_list) * (n_groups + 2 * max(0, n_groups - 1))
        with progress_bar(f"lang {name}", total=total, unit="fits") as advance:
            res = analyse_store(store, tag, source, class_list, clf_list, folds, seed, layer_list, control, advance)
        res["name"] = name
        results.append(res)
    refusal = {}
    for g in generations:
        model, rows = _read_generations(Path(g))
        refusal[model] = refusal_by_group(rows, tag)

    out.mkdir(parents=True, exist_ok=True)
    result = {"analysis": "lang", "command": command, "tag": tag, "source": source, "classes": class_list,
              "layer_convention": "0 = embedding output, i = output of decoder block i (before the final norm)",
              "models": results, "refusal": refusal}
    (out / "lang.json").write_text(json.dumps(_clean(result), indent=1, ensure_ascii=False), encoding="utf-8")
    figures = []
    if results:
        figures += plot_lang.plot_cv(results, out, clf_list[0], command, fmt_list)
        figures += plot_lang.plot_transfer(results, out, clf_list[0], command, fmt_list)
        figures += plot_lang.plot_lens(results, out, command, fmt_list)
    figures += plot_lang.plot_refusal(refusal, out, command, fmt_list)
    (out / "lang.md").write_text(markdown(result, clf_list[0]), encoding="utf-8")
    _print_summary(results, refusal, clf_list[0], console)
    console.print(f"wrote {out / 'lang.json'}, lang.md and {len(figures)} figure file(s) in {out}")


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def _print_summary(results, refusal, clf, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    for res in results:
        s = res["summary"]
        early = s["early_layers"]
        table = Table(title=escape(f"{res['name']} (L={res['num_layers']}; early = blocks {early[0]}-{early[-1]}; "
                                   f"{clf})"), title_justify="left")
        for col in ("lang", "n", "CV 1st>=.95", "CV early", f"{res['source']}->X 1st", f"{res['source']}->X early",
                    f"X->{res['source']} early", "neg mid mal/norm", "own script mid"):
            table.add_column(col)
        for g, row in s["rows"].items():
            n = res["n"].get(g, {})
            table.add_row(
                escape(g), "/".join(str(n.get(c, 0)) for c in res["classes"]),
                _fmt(row.get(f"{clf}_cv_first_95")), _fmt(row.get(f"{clf}_cv_early_mean")),
                _fmt(row.get(f"{clf}_forward_first_95")), _fmt(row.get(f"{clf}_forward_early_mean")),
                _fmt(row.get(f"{clf}_reverse_early_mean")),
                f"{_fmt(row.get('neg_mid_malicious'))}/{_fmt(row.get('neg_mid_normal'))}",
                _fmt(row.get("own_script_mid")),
            )
        console.print(table)
    for model, r in refusal.items():
        parts = []
        for g, entry in r["groups"].items():
            m = entry.get("malicious")
            if m:
                parts.append(f"{g} {m['refusal_rate']:.2f} ({m['refused']}/{m['n']}; English phrases "
                             f"{m['refused_english_phrases']})")
        console.print(escape(f"refusal of malicious prompts, {model}: " + "; ".join(parts)))


def _acc_ci(entry: dict[str, Any], layers: list[int], layer: int) -> str:
    if not entry or "accuracy" not in entry or layer not in layers:
        return "-"
    i = layers.index(layer)
    return f"{entry['accuracy'][i]:.2f} [{entry['ci_low'][i]:.2f}, {entry['ci_high'][i]:.2f}]"


def markdown(result: dict[str, Any], clf: str) -> str:
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
                f"| {_acc_ci(e, cv['layers'], mid)} | {_fmt(e.get('first_layer_95'))} | {best} "
                f"| {_acc_ci(f, tr['layers'], early) if f else '(source)'} | {_acc_ci(f, tr['layers'], mid) if f else '-'} "
                f"| {_fmt(f.get('first_layer_95')) if f else '-'} | {_acc_ci(r, tr['layers'], early) if r else '-'} "
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
                      f"layer where it separates {src} malicious from normal best (block {_fmt(ref)}), the largest "
                      f"malicious - normal difference at any layer, and the script of the malicious prompts' decoded "
                      f"tokens over the middle third (blocks {mids[0]}-{mids[-1]}) and at the last layer:", "",
                      f"| lang | negative at block {_fmt(ref)}: malicious / normal | largest difference (block) "
                      "| negative at last layer: malicious / normal | most common script (mid, share) "
                      "| own script (mid / last) |", "|---|---|---|---|---|---|"]
            for g in res["groups"]:
                row = rows.get(g, {})
                top = (f"{row['top_script_mid']} {row['top_script_mid_share']:.2f}" if row.get("top_script_mid") else "-")
                lines.append(f"| {g} | {_fmt(row.get('neg_malicious_at_ref'))} / {_fmt(row.get('neg_normal_at_ref'))} "
                             f"| {_fmt(row.get('neg_diff_max'), '+.2f')} ({_fmt(row.get('neg_diff_max_layer'))}) "
                             f"| {_fmt(row.get('neg_last_malicious'))} / {_fmt(row.get('neg_last_normal'))} | {top} "
                             f"| {_fmt(row.get('own_script_mid'))} / {_fmt(row.get('own_script_last'))} |")
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
                             f"| {_fmt(m.get('answer_in_own_script')) if m else '-'} / "
                             f"{_fmt(n.get('answer_in_own_script')) if n else '-'} |")
        lines.append("")
    return "\n".join(lines)
