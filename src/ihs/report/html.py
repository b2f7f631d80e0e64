"""The run report: one self-contained HTML file built only from the JSON and PNG outputs of ``ihs run``.

Self-contained: styles and the small script are inlined, figures are inline SVG (interactive:
hover for values, toggles for series) with the analyses' PNGs embedded as base64 as a static
fallback; nothing is fetched from anywhere (a Content-Security-Policy forbids it, and allows only
the report's own script by nonce). Every piece of text that comes from prompts, answers, token
strings, model or dataset names goes through :func:`esc`: the prompt sets are adversarial by
nature, so a prompt such as ``<script>alert(1)</script>`` must show as text and run nothing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import secrets
import time
import unicodedata
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ihs.report.summary import (
    CLASSIFIER_NAMES,
    Finding,
    findings,
    graft_numbers,
    lens_numbers,
    num,
    pct,
    primary_classifier,
    probe_numbers,
)

CLASS_COLORS = {"normal": "#1e8449", "malicious": "#c0392b", "jailbreak": "#8e44ad", "contrast": "#d68910"}
FALLBACK_COLORS = ["#2c3e50", "#16a085", "#7f8c8d", "#e67e22", "#2d5fa8", "#b03a8c"]
EMOTION_STYLE = {"negative": "", "positive": "6 4", "neutral": "2 3"}
EMOTION_SWATCH = {"negative": "", "positive": "dash", "neutral": "dot"}
CLF_COLORS = {"svm": "#2d5fa8", "mlp": "#c0392b", "logreg": "#1e8449", "diffmean": "#8e44ad"}
LAYER_AXIS = "layer (0 = embedding output, i = output of block i)"
SECTIONS = [
    ("summary", "Summary"), ("data", "Data"), ("probe", "Probes"), ("lens", "Logit lens and emotion"),
    ("consistency", "Consistency"), ("generate", "Generation and refusal"), ("jailbreak", "Jailbreaks"),
    ("graft", "Grafting"), ("compare", "Model comparison"), ("run", "Run details"),
]
STATUS_TEXT = {
    "disabled": "Not run: this analysis is switched off in the run's config ({message}).",
    "unavailable": "Not available in this version of ihs ({message}).",
    "failed": "This step failed: {message}. The details are in run.log; re-running the same command retries it.",
    "skipped": "Not run: {message}.",
    "blocked": "Not run: it {message}.",
    "missing": "No output found for this step.",
}


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _asset(name: str) -> str:
    return resources.files("ihs.report").joinpath("assets", name).read_text(encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def _color(label: str, order: Sequence[str]) -> str:
    if label in CLASS_COLORS:
        return CLASS_COLORS[label]
    others = [x for x in order if x not in CLASS_COLORS]
    return FALLBACK_COLORS[others.index(label) % len(FALLBACK_COLORS)] if label in others else "#555"


def _class_order(labels: Any) -> list[str]:
    """Classes in the report's order: normal, malicious, jailbreak, contrast, then the rest as given."""
    labels = list(labels)
    first = [x for x in ("normal", "malicious", "jailbreak", "contrast") if x in labels]
    return first + [x for x in labels if x not in first]


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:02.0f} s"


# -- loading a run -----------------------------------------------------------------------------------------


def load_model_outputs(out: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Every output of one model's steps that the report reads (missing ones are None)."""
    base = out / entry["dir"]
    ok = {s for s, v in entry["steps"].items() if v.get("status") in ("done", "cached")}
    got: dict[str, Any] = {"entry": entry, "base": base, "steps": entry["steps"]}
    got["manifest"] = _read_json(base / "extract" / "store" / "manifest.json") if "extract" in ok else None
    got["probe"] = _read_json(base / "probe" / "probe.json") if "probe" in ok else None
    got["lens"] = _read_json(base / "lens" / "lens.json") if "lens" in ok else None
    got["refusal"] = _read_json(base / "generate" / "refusal.json") if "generate" in ok else None
    got["generations"] = _read_jsonl(base / "generate" / "generations.jsonl") if "generate" in ok else []
    got["jailbreak"] = _read_json(base / "jailbreak" / "jailbreak.json") if "jailbreak" in ok else None
    got["graft"] = _read_json(base / "graft" / "graft.json") if "graft" in ok else None
    got["graft_rows"] = _read_jsonl(base / "graft" / "generations.jsonl") if "graft" in ok else []
    got["prompts"] = _read_jsonl(base / "extract" / "store" / "prompts.jsonl") if "extract" in ok else []
    got["lens_examples"] = _lens_examples(base / "extract" / "store") if "extract" in ok else None
    return got


def _lens_examples(store_dir: Path) -> dict[str, Any] | None:
    """Top-k lens tokens per prompt (for the example table); None when the store cannot be read."""
    try:
        from ihs.store import ActivationStore

        store = ActivationStore.load(store_dir)
    except Exception:  # noqa: BLE001 - the report shows what it can
        return None
    if store.lens_ids is None:
        return None
    return {"ids": store.lens_ids, "records": store.records, "text": store.token_text, "num_layers": store.num_layers}


def _why_missing(steps: dict[str, Any]) -> dict[str, str]:
    out = {}
    for step, s in steps.items():
        if s.get("status") not in ("done", "cached"):
            out[step] = _status_sentence(s)
    return out


def _status_sentence(s: dict[str, Any]) -> str:
    status = s.get("status", "missing")
    return STATUS_TEXT.get(status, "{message}").format(message=s.get("message") or status).replace("..", ".")


# -- small HTML pieces -----------------------------------------------------------------------------------------


def _png(path: Path, alt: str, caption: str | None = None, open_: bool = False) -> str:
    """An embedded PNG inside a <details> (the static version of an interactive figure)."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{data}">'
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<details class="static"{" open" if open_ else ""}><summary>Static figure (PNG): {esc(alt)}</summary>'
            f"<figure>{img}{cap}</figure></details>")


def _png_figure(path: Path, alt: str, caption: str | None = None) -> str:
    """An embedded PNG shown directly (figures that have no interactive version)."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (), cls: str = "",
           widths: Sequence[str] | None = None) -> str:
    """A table; cells are escaped unless given as ``_Raw``; ``widths`` (CSS widths) fix the column sizes."""
    numeric = set(numeric)
    cols = "<colgroup>" + "".join(f'<col style="width:{esc(w)}">' for w in widths) + "</colgroup>" if widths else ""
    h = "".join(f'<th{" class=n" if i in numeric else ""}>{esc(c)}</th>' for i, c in enumerate(head))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            content = c.html if isinstance(c, _Raw) else esc(c)
            cells.append(f'<td{" class=n" if i in numeric else ""}>{content}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="{cls}">{cols}<thead><tr>{h}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


class _Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def _notice(text: str, failed: bool = False) -> str:
    return f'<div class="notice{" failed" if failed else ""}">{esc(text)}</div>'


def _text_block(text: str, limit: int = 600) -> str:
    text = text or ""
    if len(text) > limit:
        return (f'<details><summary><span class="txt-short">{esc(text[:limit])}…</span></summary>'
                f'<div class="txt">{esc(text)}</div></details>')
    return f'<div class="txt">{esc(text)}</div>'


def _verdict(refused: Any) -> str:
    if refused is True:
        return '<span class="tag refused">refused</span>'
    if refused is False:
        return '<span class="tag complied">complied</span>'
    return '<span class="tag">not judged</span>'


def display_token(text: str | None, max_chars: int = 14) -> str:
    """A token as shown in a cell: edge spaces as ␣, newlines and invisible characters as escapes."""
    if text is None:
        return "·"
    if text == "":
        return "∅"
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch != " " and unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cs", "Cn"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    shown = "".join(out)
    lead = len(shown) - len(shown.lstrip(" "))
    trail = len(shown) - len(shown.rstrip(" ")) if shown.strip(" ") else 0
    shown = "␣" * lead + shown.strip(" ") + "␣" * trail if shown.strip(" ") else "␣" * len(shown)
    return shown if len(shown) <= max_chars else shown[: max_chars - 1] + "…"


# -- interactive SVG line chart ----------------------------------------------------------------------------------


def line_chart(
    series: Sequence[dict[str, Any]],
    *,
    x_label: str,
    y_label: str,
    y_min: float = 0.0,
    y_max: float = 1.0,
    y_percent: bool = False,
    hlines: Sequence[dict[str, Any]] = (),
    shade: tuple[float, float] | None = None,
    shade_label: str = "",
    toggles: Sequence[tuple[str, str, Sequence[tuple[str, str, str, bool]]]] = (),
    legend: Sequence[tuple[str, str, str]] = (),
    title: str = "",
    width: int = 720,
    height: int = 300,
    figure_id: str = "",
) -> str:
    """A line chart as inline SVG: every point has a hover tooltip (``data-tip``), series carry
    ``data-<dim>`` attributes that the toggles (checkboxes) show and hide.

    ``series``: dicts with ``name``, ``x``, ``y`` (None breaks the line), ``color``, optional
    ``dash`` (SVG dasharray), ``lo``/``hi`` (a band), ``attrs`` ({dim: value}).
    ``toggles``: (dim, caption, [(value, label, swatch_html, checked)]).
    """
    left, right, top, bottom = 58, 18, 14 + (16 if title else 0), 42
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in series for x in s["x"]] or [0, 1]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        y = min(max(y, y_min), y_max)
        return top + (1 - (y - y_min) / (y_max - y_min)) * ph

    def fy(y: float) -> str:
        return f"{100 * y:.1f}%" if y_percent else f"{y:.3f}"

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title or y_label)}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    if title:
        parts.append(f'<text x="{left}" y="14" font-weight="600">{esc(title)}</text>')
    if shade is not None:
        a, b = sx(max(shade[0] - 0.5, x0)), sx(min(shade[1] + 0.5, x1))
        parts.append(f'<rect class="shade" x="{a:.1f}" y="{top}" width="{max(b - a, 1):.1f}" height="{ph}">'
                     f"<title>{esc(shade_label)}</title></rect>")
    for i in range(5):
        v = y_min + (y_max - y_min) * i / 4
        y = sy(v)
        parts.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
        label = f"{100 * v:.0f}%" if y_percent else f"{v:.2f}"
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    span = x1 - x0
    step = next((n for n in (1, 2, 3, 5, 10, 20, 25, 50, 100, 200, 500) if span / n <= 12), math.ceil(span / 12))
    first_tick = math.ceil(x0)
    for t in range(first_tick, int(math.floor(x1)) + 1):
        if (t - first_tick) % step:
            continue
        x = sx(t)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{t}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}"/>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{esc(y_label)}</text>')
    for h in hlines:
        y = sy(h["y"])
        dash = h.get("dash", "5 4")
        tip = f"{h['label']}: {fy(h['y'])}"
        parts.append(f'<g data-series="1"{_data_attrs(h.get("attrs", {}))} data-tip="{esc(tip)}">'
                     f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{esc(h.get("color", "#555"))}" '
                     f'stroke-width="2" stroke-dasharray="{esc(dash)}"/>'
                     f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="transparent" stroke-width="9"/>'
                     f"</g>")
    for s in series:
        attrs = _data_attrs(s.get("attrs", {}))
        color = esc(s.get("color", "#333"))
        parts.append(f'<g data-series="1"{attrs}>')
        if s.get("lo") is not None and s.get("hi") is not None:
            for seg in _segments(s["x"], s["lo"], s["hi"]):
                upper = " ".join(f"{sx(x):.1f},{sy(h):.1f}" for x, _, h in seg)
                lower = " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(seg))
                parts.append(f'<polygon points="{upper} {lower}" fill="{color}" fill-opacity="0.12" stroke="none"/>')
        for seg in _segments(s["x"], s["y"]):
            d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(seg))
            dash = f' stroke-dasharray="{esc(s["dash"])}"' if s.get("dash") else ""
            parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y in zip(s["x"], s["y"], strict=True):
            if y is None:
                continue
            tip = f"{s['name']}\n{x_label.split(' (')[0]} {x}: {fy(y)}"
            parts.append(f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.2" fill="{color}" '
                         f'data-tip="{esc(tip)}"><title>{esc(tip)}</title></circle>')
        parts.append("</g>")
    parts.append("</svg>")
    controls = []
    for dim, caption, options in toggles:
        boxes = "".join(
            f'<label><input type="checkbox" data-dim="{esc(dim)}" value="{esc(value)}"{" checked" if checked else ""}>'
            f"{swatch}{esc(label)}</label>" for value, label, swatch, checked in options)
        controls.append(f'<div class="toggles"><span class="dim">{esc(caption)}:</span>{boxes}</div>')
    if legend:
        items = "".join(f'<label>{_swatch(color, style)}{esc(label)}</label>' for label, color, style in legend)
        controls.append(f'<div class="toggles">{items}</div>')
    fid = f' id="{esc(figure_id)}"' if figure_id else ""
    data_toggles = " data-toggles" if toggles else ""
    return f'<div class="ifig"{fid}{data_toggles}>{"".join(controls)}{"".join(parts)}</div>'


def _data_attrs(attrs: dict[str, str]) -> str:
    return "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in attrs.items())


def _swatch(color: str, style: str = "") -> str:
    return f'<span class="sw {esc(style)}" style="border-top-color:{esc(color)}"></span>'


def _segments(xs: Sequence[Any], *ys: Sequence[Any]) -> list[list[tuple]]:
    """Runs of consecutive points where every y value is present."""
    segs: list[list[tuple]] = []
    cur: list[tuple] = []
    for i, x in enumerate(xs):
        vals = [y[i] for y in ys]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
            if cur:
                segs.append(cur)
            cur = []
            continue
        cur.append((x, *vals))
    if cur:
        segs.append(cur)
    return segs


# -- sections ------------------------------------------------------------------------------------------------------


def _section(key: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section class="sec" id="sec-{key}" data-section="{key}"><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def _model_block(m: dict[str, Any], many: bool, body: str, key: str) -> str:
    head = f"<h3>{esc(m['entry']['name'])}</h3>" if many else ""
    return f'<div class="model-block" data-model="{esc(m["entry"]["slug"])}" data-part="{esc(key)}">{head}{body}</div>'


def _step_ok(m: dict[str, Any], step: str) -> tuple[bool, str]:
    s = m["steps"].get(step, {"status": "missing"})
    if s.get("status") in ("done", "cached"):
        return True, ""
    return False, _notice(_status_sentence(s), failed=s.get("status") == "failed")


def _summary_section(models: list[dict[str, Any]]) -> str:
    blocks = []
    for m in models:
        items = []
        for f in m["findings"]:
            items.append(
                f'<div class="finding{"" if f.available else " missing"}" data-finding="{esc(f.key)}">'
                f'<div class="claim">{esc(f.title)}</div><div class="headline">{esc(f.headline)}</div>'
                f'<p class="text">{esc(f.text)}</p></div>')
        head = f"<h3>{esc(m['entry']['name'])}</h3>" if len(models) > 1 else ""
        blocks.append(f'<div class="model-block" data-model="{esc(m["entry"]["slug"])}" data-part="summary">{head}'
                      f'<div class="findings">{"".join(items)}</div></div>')
    lead = ("What the run found, claim by claim of Zhou et al. (2024), in the run's own numbers. Layer indices: 0 is the "
            "embedding output, i the output of decoder block i.")
    return _section("summary", "Summary of findings", "".join(blocks), lead)


def _data_section(index: dict[str, Any], models: list[dict[str, Any]], examples: int) -> str:
    data = index.get("data", {})
    rows = []
    cleaning = data.get("cleaning", {})
    counts = data.get("counts", {})
    limit = data.get("limit")
    for spec in data.get("specs", []):
        name, _, source = spec.partition("=")
        c = cleaning.get(name, {})
        used = min(counts.get(name, 0), limit) if limit else counts.get(name, 0)
        rows.append([name, source, c.get("kept", counts.get(name, "")),
                     (c.get("empty", 0) + c.get("dup_within", 0) + c.get("dup_across", 0)) if c else "", used])
    body = _table(["class", "source", "distinct prompts", "dropped (empty / duplicate)", "used for extraction"], rows,
                  numeric=[2, 3, 4])
    prompts = models[0]["prompts"] if models and models[0]["prompts"] else []
    if prompts:
        ex_rows = []
        by_class: dict[str, list[dict[str, Any]]] = {}
        for p in prompts:
            by_class.setdefault(p["label"], []).append(p)
        for label, items in by_class.items():
            for p in items[:examples]:
                tags = ", ".join(f"{k}: {v}" for k, v in (p.get("tags") or {}).items() if k in ("category", "family"))
                ex_rows.append([label, _Raw(_text_block(p["text"], 400)), tags])
        body += "<h3>Example prompts</h3>" + _table(["class", "prompt", "tags"], ex_rows, cls="examples",
                                                    widths=["12%", "63%", "25%"])
    lead = ("The prompt sets, after cleaning (empty prompts and duplicates dropped, also across classes) and the "
            "per-class limit. Prompts are shown as text, exactly as they are.")
    return _section("data", "Data", body, lead)


def _probe_section(models: list[dict[str, Any]]) -> str:
    blocks = []
    for m in models:
        ok, notice = _step_ok(m, "probe")
        if not ok:
            blocks.append(_model_block(m, len(models) > 1, notice, "probe"))
            continue
        probe = m["probe"]
        entry = probe["stores"][0]
        nums = probe_numbers(probe)
        series, legend = [], []
        for clf, res in entry["classifiers"].items():
            color = CLF_COLORS.get(clf, "#555")
            series.append({"name": f"{CLASSIFIER_NAMES.get(clf, clf)} accuracy", "x": entry["layers"],
                           "y": res["accuracy"], "lo": res.get("ci_low"), "hi": res.get("ci_high"), "color": color,
                           "attrs": {"clf": clf, "kind": "accuracy"}})
            if res.get("control_accuracy"):
                series.append({"name": f"{CLASSIFIER_NAMES.get(clf, clf)}, shuffled labels (control)",
                               "x": entry["layers"], "y": res["control_accuracy"], "color": color, "dash": "3 3",
                               "attrs": {"clf": clf, "kind": "control"}})
        toggles = [("clf", "classifier", [(c, CLASSIFIER_NAMES.get(c, c), _swatch(CLF_COLORS.get(c, "#555")), True)
                                          for c in entry["classifiers"]]),
                   ("kind", "show", [("accuracy", "accuracy (band: 95% CI)", _swatch("#333"), True),
                                     ("control", "shuffled-label control", _swatch("#333", "dot"), True)])]
        hlines = [{"y": entry["chance"], "label": "chance (majority class)", "color": "#999", "dash": "2 4"}]
        if entry.get("bow"):
            hlines.append({"y": entry["bow"]["accuracy"], "label": "bag-of-words baseline on the raw text",
                           "color": "#d68910", "dash": "8 4"})
        legend.append(("chance", "#999", "dot"))
        if entry.get("bow"):
            legend.append(("bag-of-words on raw text", "#d68910", "dash"))
        chart = line_chart(series, x_label=LAYER_AXIS, y_label="accuracy", y_min=min(0.4, entry["chance"] - 0.05),
                           y_max=1.0, hlines=hlines, toggles=toggles, legend=legend,
                           title=f"{probe['mode']} accuracy by layer ({', '.join(f'{c} {n}' for c, n in entry['n'].items())})",
                           figure_id=f"probe-chart-{m['entry']['slug']}")
        rows = []
        for clf, res in entry["classifiers"].items():
            ctrl = res.get("control_accuracy")
            first = res.get("first_layer_95")
            pos = entry["layers"].index(first) if first is not None else None
            rows.append([
                CLASSIFIER_NAMES.get(clf, clf),
                f"{first} (depth {num(res['first_layer_95_depth'])})" if first is not None else "never",
                f"{num(res['best_accuracy'], 3)} at layer {res['best_layer']}",
                num(entry.get("confound", {}).get("layer0_accuracy", {}).get(clf), 3),
                num(sum(ctrl) / len(ctrl), 3) if ctrl else "-",
                pct(res["contrast_fpr"][pos]) if pos is not None and "contrast_fpr" in res else "-",
                pct(res["jailbreak_called_malicious"][pos]) if pos is not None and "jailbreak_called_malicious" in res else "-",
            ])
        table = _table(["probe", "first layer >= 0.95", "best", "layer 0", "control (mean)", "contrast called malicious*",
                        "jailbreak called malicious*"], rows, numeric=[3, 4, 5, 6])
        notes = ('<p class="lead">* at the first layer reaching 0.95. Contrast prompts are benign prompts with alarming '
                 "words; jailbreak prompts are scored by probes trained only on normal vs malicious.</p>")
        warns = "".join(f'<p class="warning">{esc(w)}</p>' for w in entry.get("warnings", []) + probe.get("warnings", []))
        figs = "".join(_png(m["base"] / "probe" / f"{stem}.png", alt) for stem, alt in
                       (("probe_accuracy", "accuracy by layer"), ("probe_transfer", "transfer sets by layer"),
                        ("probe_confusion", "confusion matrices")))
        text = (f"Per layer, weak classifiers on the last-token hidden state ({probe['mode']} mode"
                + (f", {probe['folds']}-fold cross-validation on de-duplicated prompts" if probe.get("folds") else "")
                + "). Hover a point for its value; tick the boxes to show or hide series.")
        body = f'<p class="lead">{esc(text)}</p>{chart}{table}{notes}{warns}{figs}'
        if nums and entry.get("bow"):
            body += f'<p>Bag-of-words baseline on the raw prompts: {esc(num(entry["bow"]["accuracy"], 3))}.</p>'
        blocks.append(_model_block(m, len(models) > 1, body, "probe"))
    lead = ("Claim 1: ethical concepts are learned in pre-training, so weak classifiers separate malicious from normal "
            "input already in early layers.")
    return _section("probe", "Weak-to-strong probes", "".join(blocks), lead)


def _lens_section(models: list[dict[str, Any]], examples: int) -> str:
    blocks = []
    for m in models:
        ok, notice = _step_ok(m, "lens")
        if not ok:
            blocks.append(_model_block(m, len(models) > 1, notice, "lens"))
            continue
        entry = m["lens"]["models"][0]
        logit = entry["lenses"]["logit"]
        assoc = logit["association"]
        lo, hi = logit["layer_range"]
        layers = assoc["layers"]
        labels = list(assoc["classes"])
        series = []
        for label in labels:
            c = assoc["classes"][label]
            if not c["n"]:
                continue
            for emo in ("negative", "positive", "neutral"):
                series.append({"name": f"{label}: {emo} token in top-{assoc['k']} (n={c['n']})", "x": layers,
                               "y": c["topk"][emo]["share"], "color": _color(label, labels),
                               "dash": EMOTION_STYLE[emo], "attrs": {"class": label, "emotion": emo}})
        toggles = [("class", "classes", [(lab, lab, _swatch(_color(lab, labels)), True) for lab in labels]),
                   ("emotion", "emotion", [(e, e, _swatch("#333", EMOTION_SWATCH[e]), e != "neutral")
                                           for e in ("negative", "positive", "neutral")])]
        chart = line_chart(series, x_label=LAYER_AXIS, y_label=f"share of prompts (top-{assoc['k']})", y_percent=True,
                           shade=(lo, hi), shade_label=f"middle layers {lo}-{hi}", toggles=toggles,
                           title="Emotion tokens in the logit-lens top-k, by layer",
                           figure_id=f"trajectory-{m['entry']['slug']}")
        nums = lens_numbers(m["lens"])
        rows = []
        for label in labels:
            s = nums["shares"].get(label, {})
            rows.append([label, assoc["classes"][label]["n"], pct(s.get("negative")), pct(s.get("positive")),
                         pct(s.get("neutral"))])
        table = _table([f"class (layers {lo}-{hi})", "n", "negative", "positive", "neutral"], rows, numeric=[1, 2, 3, 4])
        dom = assoc.get("negative_dominance", {})
        first = dom.get("topk", {}).get("first")
        dom_text = (f"Negative tokens first dominate for malicious input at layer {first}"
                    + (f" and hold from layer {dom['topk']['stable_from']} on" if dom.get("topk", {}).get("stable_from") is not None else "")
                    + "." if first is not None else "Negative tokens never dominate for malicious input.")
        dom_text += f" ({dom.get('definition', '')})"
        vocab = entry.get("vocab_check") or {}
        vocab_text = ""
        if vocab:
            single = vocab.get("words_with_single_token", {})
            total = vocab.get("words_total", {})
            vocab_text = ("Lexicon words that are one token in this tokenizer: "
                          + ", ".join(f"{e} {single.get(e, 0)} of {total.get(e, 0)}" for e in total) + ".")
        elif entry.get("vocab_check_note"):
            vocab_text = entry["vocab_check_note"]
        lex = m["lens"].get("lexicon", {})
        k = assoc["k"]
        intro = (f"Shaded: the middle layers {lo}-{hi}. Lines: share of each class whose top-{k} decoded tokens hold a "
                 "negative (solid), positive (dashed) or neutral (dotted) lexicon token. Hover a point for its value; "
                 "tick classes and emotions to compare.")
        traj_png = m["base"] / "lens" / ("lens_" + entry["store_name"] + "_trajectory.png")
        body = (f'<p class="lead">{esc(intro)}</p>'
                f"{chart}{_png(traj_png, 'emotion trajectory')}"
                f"<h4>Middle layers, mean share</h4>{table}<p>{esc(dom_text)}</p>"
                f'<p class="lead">{esc(vocab_text)} Lexicon: {esc(lex.get("name", ""))} {esc(lex.get("version", ""))}.</p>')
        body += _lens_example_table(m, lo, hi, examples)
        blocks.append(_model_block(m, len(models) > 1, body, "lens"))
    lead = ("Claim 2: aligned models' middle layers decode (logit lens) to positive tokens for normal input and negative "
            "ones for malicious input; claim 3: jailbreaks weaken the negative association.")
    return _section("lens", "Logit lens and emotion tokens", "".join(blocks), lead)


def _lens_example_table(m: dict[str, Any], lo: int, hi: int, examples: int) -> str:
    ex = m.get("lens_examples")
    if not ex:
        return ""
    mid = (lo + hi) // 2
    last = ex["num_layers"]
    rows = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(ex["records"]):
        if seen.get(rec["label"], 0) >= max(1, examples // 2):
            continue
        seen[rec["label"]] = seen.get(rec["label"], 0) + 1
        mid_tokens = " · ".join(display_token(ex["text"](t), 12) for t in ex["ids"][i, mid])
        last_tokens = " · ".join(display_token(ex["text"](t), 12) for t in ex["ids"][i, last])
        rows.append([rec["label"], _Raw(_text_block(rec["text"], 240)), mid_tokens, last_tokens])
    return (f"<h4>Examples: top tokens at the middle layer {mid} and the last layer {last}</h4>"
            + _table(["class", "prompt", f"layer {mid}", f"layer {last}"], rows, cls="examples",
                     widths=["11%", "41%", "24%", "24%"]))


def _heatmap(label: str, c: dict[str, Any], lo: int, hi: int, k: int) -> str:
    layers = c["layers"]
    cols = list(range(len(layers)))
    head = "".join(f'<th class="{"mid" if lo <= layers[j] <= hi else ""}">{layers[j]}</th>' for j in cols)
    rows = []
    for r in range(k):
        cells = []
        for j in cols:
            text = c["text"][j][r] if c.get("text") else None
            share = c["shares"][j][r]
            emo = c["emotion"][j][r] if c.get("emotion") else None
            count = round((share or 0) * c["n"])
            tip = (f"{label} · layer {layers[j]} · rank {r + 1}\ntoken {text!r}" + (f" ({emo})" if emo else "")
                   + f"\nshare {pct(share, 1)} ({count} of {c['n']} prompts)")
            alpha = 0.08 + 0.8 * (share or 0)
            style = f"background:rgba(224,184,92,{alpha:.2f})"
            cls = f"emo-{emo}" if emo else ""
            cells.append(f'<td class="{cls}" style="{style}" data-tip="{esc(tip)}" title="{esc(tip)}">'
                         f"{esc(display_token(text, 10))}</td>")
        rows.append(f"<tr><th>{r + 1}</th>{''.join(cells)}</tr>")
    return (f'<h4>{esc(label)} (n={c["n"]}): TKIC top-1 over layers {lo}-{hi} = {esc(num(c["scalar"]["top1"], 3))}</h4>'
            f'<div class="scroll"><table class="heat" data-heatmap="{esc(label)}"><thead><tr><th>rank</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _consistency_section(models: list[dict[str, Any]]) -> str:
    blocks = []
    for m in models:
        ok, notice = _step_ok(m, "lens")
        if not ok:
            blocks.append(_model_block(m, len(models) > 1, notice, "consistency"))
            continue
        entry = m["lens"]["models"][0]
        logit = entry["lenses"]["logit"]
        lo, hi = logit["layer_range"]
        k = entry.get("k") or 5
        rows = [[label, c["n"], num(c["scalar"]["top1"], 3), num(c["scalar"]["topk"], 3)]
                for label, c in logit["consistency"].items()]
        table = _table(["class", "n", f"TKIC top-1 (layers {lo}-{hi})", "TKIC top-k"], rows, numeric=[1, 2, 3])
        legend = ('<p class="legend-emo">Token colour: <span class="neg">negative</span><span class="pos">positive</span>'
                  '<span class="neu">neutral</span><span>other</span> · cell shade: share of prompts · middle '
                  "layers have a shaded header · hover a cell for its token and share.</p>")
        heat = "".join(_heatmap(label, c, lo, hi, k) for label, c in logit["consistency"].items() if c["n"])
        png = _png(m["base"] / "lens" / ("lens_" + entry["store_name"] + "_heatmap.png"), "consistency heatmap (middle layers)")
        definition = m["lens"].get("tkic_definition", "")
        body = f"{table}<p class=\"lead\">{esc(definition)}.</p>{legend}{heat}{png}"
        blocks.append(_model_block(m, len(models) > 1, body, "consistency"))
    lead = ("Claim 4: how consistently the middle layers' top-k decoded tokens agree across the prompts of a class; "
            "the paper finds more consistent models more harmless.")
    return _section("consistency", "Top-K Intermediate Consistency", "".join(blocks), lead)


def _example_rows(rows: list[dict[str, Any]], n: int) -> list[list[Any]]:
    return [[r.get("label", ""), (r.get("tags") or {}).get("family", ""), _Raw(_text_block(r.get("prompt", ""), 360)),
             _Raw(_text_block(r.get("answer", ""), 360)), _Raw(_verdict(r.get("refused")))] for r in rows[:n]]


def _generate_section(models: list[dict[str, Any]], examples: int) -> str:
    blocks = []
    for m in models:
        ok, notice = _step_ok(m, "generate")
        if not ok:
            blocks.append(_model_block(m, len(models) > 1, notice, "generate"))
            continue
        ref = m["refusal"]
        rows = []
        for label in _class_order(ref["per_class"]):
            v = ref["per_class"][label]
            lo_ci, hi_ci = v["refusal_ci95"]
            rows.append([label, v["n"], v["refused"], pct(v["refusal_rate"]), f"{pct(lo_ci)}-{pct(hi_ci)}", pct(v["asr"])])
        table = _table(["class", "n", "refused", "refusal rate", "95% CI", "ASR (answered)"], rows, numeric=[1, 2, 3, 4, 5])
        fam_rows = [[fam, v["n"], pct(v["refusal_rate"]), pct(v["asr"])] for fam, v in
                    sorted(ref.get("per_family", {}).items(), key=lambda kv: -kv[1]["asr"])]
        fams = ("<h4>Jailbreak families</h4>" + _table(["family", "n", "refusal rate", "ASR"], fam_rows, numeric=[1, 2, 3])
                if fam_rows else "")
        opts = ref.get("options", {})
        text = (f"Greedy answers of at most {opts.get('max_new_tokens', '?')} new tokens, judged by the "
                f"'{ref.get('judge')}' judge (refusal phrases in the opening of the answer). ASR = share not refused. "
                f"{len(m['generations'])} answers in {_fmt_seconds(ref.get('seconds'))}.")
        gens = m["generations"]
        picked = []
        for label in ("malicious", "jailbreak", "normal", "contrast"):
            picked += [r for r in gens if r.get("label") == label][:max(1, examples // 2)]
        ex = ("<h4>Example answers</h4>"
              + _table(["class", "family", "prompt", "answer", "verdict"], _example_rows(picked, len(picked)),
                       cls="examples", widths=["10%", "13%", "36%", "31%", "10%"])) if picked else ""
        body = (f'<p class="lead">{esc(text)}</p>{table}{fams}'
                f"{_png_figure(m['base'] / 'generate' / 'refusal.png', 'refusal rate per class and family')}{ex}")
        blocks.append(_model_block(m, len(models) > 1, body, "generate"))
    lead = "Does the model refuse? Attack success rate (ASR) on malicious and jailbreak prompts, over-refusal on benign ones."
    return _section("generate", "Generation and refusal", "".join(blocks), lead)


def _jailbreak_section(models: list[dict[str, Any]]) -> str:
    blocks = []
    for m in models:
        ok, notice = _step_ok(m, "jailbreak")
        if not ok:
            blocks.append(_model_block(m, len(models) > 1, notice, "jailbreak"))
            continue
        jb = m["jailbreak"]
        rows = []
        for name, g in jb["groups"].items():
            if not g["n"]:
                continue
            rows.append([name, g["n"], pct(g["early_recognised"]), pct(g["mid_negative_share"]["mean"]),
                         pct(g["mid_positive_share"]["mean"]), pct(g["middle_negative"]), pct(g["refusal_rate"])])
        table = _table(["group", "n", f"early probe says malicious (layer {jb['early_layer']})",
                        "middle layers with a negative token", "… with a positive token", "middle turned negative",
                        "refusal rate"], rows, numeric=[1, 2, 3, 4, 5, 6])
        defs = "; ".join(f"{k}: {v}" for k, v in jb.get("definitions", {}).items())
        series = []
        names = [n for n, g in jb["groups"].items() if g["n"] and g.get("negative_by_layer")]
        palette = {"normal": CLASS_COLORS["normal"], "malicious": CLASS_COLORS["malicious"],
                   "jailbreak (all)": CLASS_COLORS["jailbreak"], "jailbreak refused": "#2d5fa8",
                   "jailbreak complied": "#b03a8c"}
        for i, name in enumerate(names):
            g = jb["groups"][name]
            color = palette.get(name, FALLBACK_COLORS[i % len(FALLBACK_COLORS)])
            series.append({"name": f"{name}: negative token (n={g['n']})", "x": jb["layers"], "y": g["negative_by_layer"],
                           "color": color, "attrs": {"group": name, "kind": "negative"}})
            series.append({"name": f"{name}: probe says malicious", "x": jb["layers"], "y": g["predicted_malicious_by_layer"],
                           "color": color, "dash": "6 4", "attrs": {"group": name, "kind": "probe"}})
        default_on = {"normal", "malicious", "jailbreak (all)"}
        toggles = [("group", "groups", [(n, n, _swatch(palette.get(n, "#555")), n in default_on) for n in names]),
                   ("kind", "show", [("negative", "negative lens token", _swatch("#333"), True),
                                     ("probe", "probe verdict 'malicious'", _swatch("#333", "dash"), True)])]
        lo, hi = jb["middle"]
        chart = line_chart(series, x_label=LAYER_AXIS, y_label="share of prompts", y_percent=True, shade=(lo, hi),
                           shade_label=f"middle layers {lo}-{hi}", toggles=toggles,
                           title="Jailbreak inputs: recognised early, negative in the middle?",
                           figure_id=f"jailbreak-chart-{m['entry']['slug']}")
        rvc = jb.get("refused_vs_complied", {})
        rvc_text = ""
        if rvc.get("mid_negative_difference") is not None:
            rvc_text = (f"Refused minus complied jailbreak prompts, middle-layer negative share: "
                        f"{rvc['mid_negative_difference']:+.3f} (Mann-Whitney p = {rvc.get('mid_negative_mannwhitney_p')}).")
        fam_rows = [[f, v["n"], pct(v["early_recognised"]), pct(v["mid_negative_share"]), pct(v["mid_positive_share"]),
                     pct(v["refusal_rate"])] for f, v in jb.get("families", {}).items()]
        fams = ("<h4>By jailbreak family</h4>" + _table(["family", "n", "early: malicious", "mid negative", "mid positive",
                                                         "refusal rate"], fam_rows, numeric=[1, 2, 3, 4, 5])
                if fam_rows else "")
        note = (f"{jb.get('n_without_generation')} prompts of the store have no generation (the generate step covers "
                "fewer prompts than extraction); their refusal is unknown." if jb.get("n_without_generation") else "")
        body = (f"{chart}{table}<p class=\"lead\">{esc(defs)}. {esc(note)}</p><p>{esc(rvc_text)}</p>{fams}"
                f"{_png(m['base'] / 'jailbreak' / 'jailbreak.png', 'jailbreak analysis')}")
        blocks.append(_model_block(m, len(models) > 1, body, "jailbreak"))
    lead = ("Claim 3: jailbreaks do not fool the early classification (jailbreak inputs still look malicious to early "
            "probes) but disturb the middle-layer association (negative emotion weakens).")
    return _section("jailbreak", "Jailbreaks: early recognition, middle-layer emotion, refusal", "".join(blocks), lead)


def _graft_section(models: list[dict[str, Any]], examples: int) -> str:
    blocks = []
    for m in models:
        ok, notice = _step_ok(m, "graft")
        if not ok:
            blocks.append(_model_block(m, len(models) > 1, notice, "graft"))
            continue
        graft = m["graft"]
        fwd = graft["forward"]
        g = graft_numbers(graft)
        layers = [e["layer"] for e in fwd["layers"]]
        series = [{"name": f"grafted (n={fwd['n_targets']} targets)", "x": layers, "y": [e["asr"] for e in fwd["layers"]],
                   "lo": [e["asr_ci95"][0] for e in fwd["layers"]], "hi": [e["asr_ci95"][1] for e in fwd["layers"]],
                   "color": "#c0392b", "attrs": {"kind": "graft"}}]
        hlines = [{"y": fwd["baseline"]["asr"], "label": "no graft", "color": "#555", "attrs": {"kind": "baseline"}}]
        toggles_opts = [("graft", "grafted (band: 95% CI)", _swatch("#c0392b"), True),
                        ("baseline", "no graft", _swatch("#555", "dash"), True)]
        if fwd.get("reference"):
            hlines.append({"y": fwd["reference"]["asr"], "label": f"real jailbreaks (n={fwd['reference']['n']})",
                           "color": "#2d5fa8", "dash": "2 3", "attrs": {"kind": "reference"}})
            toggles_opts.append(("reference", "real jailbreaks", _swatch("#2d5fa8", "dot"), True))
        chart = line_chart(series, x_label="grafted " + LAYER_AXIS, y_label="attack success rate", y_percent=True,
                           hlines=hlines, toggles=[("kind", "show", toggles_opts)],
                           title=f"{'+'.join(fwd['donor_labels'])} state grafted into {'+'.join(fwd['target_labels'])} prompts",
                           figure_id=f"graft-chart-{m['entry']['slug']}")
        rows = [["no graft", fwd["baseline"]["n"], pct(fwd["baseline"]["asr"]), "", ""]]
        for e in fwd["layers"]:
            rows.append([f"layer {e['layer']}", e["n"], pct(e["asr"]), f"{pct(e['asr_ci95'][0])}-{pct(e['asr_ci95'][1])}",
                         e.get("changed_answers", "")])
        if fwd.get("reference"):
            rows.append([f"real jailbreaks ({fwd['reference'].get('label', '')})", fwd["reference"]["n"],
                         pct(fwd["reference"]["asr"]), "", ""])
        table = _table(["condition", "n", "ASR", "95% CI", "answers changed vs no graft"], rows, numeric=[1, 2, 4])
        text = (f"During the prompt pass of each target, the last-position state at layer l is replaced by the "
                f"{'per-pair' if fwd.get('per_pair') else 'mean'} state of {fwd['n_donors']} donor prompts "
                f"({'+'.join(fwd['donor_labels'])}); then the model answers greedily. {graft.get('target_donor_split', '')}.")
        ex = ""
        if g is not None:
            base_rows = {r["id"]: r for r in m["graft_rows"] if r.get("graft_layer") is None and r.get("direction") == "forward"}
            best_rows = [r for r in m["graft_rows"] if r.get("graft_layer") == g["best_layer"] and r.get("direction") == "forward"]
            ex_rows = []
            for r in best_rows[:examples]:
                b = base_rows.get(r["id"], {})
                ex_rows.append([_Raw(_text_block(r["prompt"], 300)),
                                _Raw(_text_block(b.get("answer", ""), 300) + _verdict(b.get("refused"))),
                                _Raw(_text_block(r["answer"], 300) + _verdict(r.get("refused")))])
            if ex_rows:
                ex = (f"<h4>Examples: no graft vs graft at layer {g['best_layer']}</h4>"
                      + _table(["target prompt", "no graft", f"graft at layer {g['best_layer']}"], ex_rows,
                               cls="examples", widths=["34%", "33%", "33%"]))
        rev = ""
        if graft.get("reverse"):
            back = graft["reverse"]
            rev_rows = [["no graft", pct(back["baseline"]["refusal_rate"])]] + [
                [f"layer {e['layer']}", pct(e["refusal_rate"])] for e in back["layers"]]
            rev = "<h4>Reverse graft: refusal rate of benign targets</h4>" + _table(["condition", "refusal rate"], rev_rows,
                                                                                     numeric=[1])
        body = (f'<p class="lead">{esc(text)}</p>{chart}{table}{rev}'
                f"{_png(m['base'] / 'graft' / 'graft_asr.png', 'ASR by grafted layer')}{ex}")
        blocks.append(_model_block(m, len(models) > 1, body, "graft"))
    lead = ("Claim 5: replacing a malicious prompt's middle-layer state with a 'positive emotion' state from normal "
            "prompts makes the model comply, approximating a jailbreak.")
    return _section("graft", "Logit grafting", "".join(blocks), lead)


def _compare_section(models: list[dict[str, Any]]) -> str:
    if len(models) < 2:
        return ""
    rows = []
    series = []
    for i, m in enumerate(models):
        p = probe_numbers(m["probe"]) if m["probe"] else None
        lens = lens_numbers(m["lens"]) if m["lens"] else None
        ref = m["refusal"]
        g = graft_numbers(m["graft"]) if m["graft"] else None
        per = (ref or {}).get("per_class", {})
        contrast = None
        if lens and lens["shares"].get("malicious") and lens["shares"].get("normal"):
            a, b = lens["shares"]["malicious"]["negative"], lens["shares"]["normal"]["negative"]
            contrast = None if a is None or b is None else a - b
        rows.append([
            m["entry"]["name"], p["num_layers"] if p else "",
            (f"{p['first_95']} ({num(p['first_95_depth'])})" if p["first_95"] is not None else "never") if p else "n/a",
            f"{contrast * 100:+.0f} pts" if contrast is not None else "n/a",
            num(lens["tkic_top1"].get("malicious")) if lens else "n/a",
            num(lens["tkic_top1"].get("jailbreak")) if lens else "n/a",
            pct(per["malicious"]["refusal_rate"]) if "malicious" in per else "n/a",
            pct(per["jailbreak"]["asr"]) if "jailbreak" in per else "n/a",
            f"{g['best_layer']} ({pct(g['best_asr'])})" if g else "n/a",
        ])
        if m["probe"]:
            entry = m["probe"]["stores"][0]
            clf = primary_classifier(list(entry["classifiers"]))
            series.append({"name": f"{m['entry']['name']} ({clf})", "x": [round(d, 3) for d in entry["depth"]],
                           "y": entry["classifiers"][clf]["accuracy"], "color": FALLBACK_COLORS[i % len(FALLBACK_COLORS)],
                           "attrs": {"model": m["entry"]["slug"]}})
    table = _table(["model", "L", "first layer >= 0.95 (depth)", "middle negative contrast", "TKIC top-1 malicious",
                    "TKIC top-1 jailbreak", "refusal rate malicious", "jailbreak ASR", "best graft layer (ASR)"], rows)
    chart = ""
    if series:
        toggles = [("model", "models", [(m["entry"]["slug"], m["entry"]["name"],
                                         _swatch(FALLBACK_COLORS[i % len(FALLBACK_COLORS)]), True)
                                        for i, m in enumerate(models) if m["probe"]])]
        chart = _depth_chart(series, toggles)
    corr = _correlation(models)
    return _section("compare", "Model comparison", f"{table}{chart}{corr}",
                    "The same analyses on every model: depth = layer / L puts models of different depth on one axis.")


def _depth_chart(series: list[dict[str, Any]], toggles: list) -> str:
    scaled = [{**s, "x": [x * 100 for x in s["x"]]} for s in series]
    return line_chart(scaled, x_label="depth (% of blocks; 0 = embedding output)", y_label="probe accuracy", y_min=0.4,
                      toggles=toggles, title="Probe accuracy by relative depth", figure_id="compare-depth")


def _correlation(models: list[dict[str, Any]]) -> str:
    try:
        from ihs.analysis.lens_cli import cross_model_table
    except ImportError:
        return ""
    entries, refusal = [], {}
    for m in models:
        if not m["lens"]:
            continue
        e = m["lens"]["models"][0]
        entries.append(e)
        if m["refusal"]:
            refusal[e["store_name"]] = {k: v["refusal_rate"] for k, v in m["refusal"]["per_class"].items()}
    if len(entries) < 2:
        return ""
    table = cross_model_table(entries, refusal, "logit")
    parts = []
    for label, c in (table.get("correlation") or {}).items():
        parts.append(f"Spearman rank correlation, TKIC top-1 vs refusal rate on {label} prompts over {c['n_models']} models: "
                     f"rho = {c['rho']} (p = {c['p']}).")
    if table.get("note"):
        parts.append(table["note"])
    return "".join(f"<p>{esc(p)}</p>" for p in parts)


def _run_section(index: dict[str, Any], out: Path) -> str:
    rows = []
    for m in index["models"]:
        for step, s in m["steps"].items():
            status = s.get("status", "")
            rows.append([m["name"], step, _Raw(f'<span class="status-{esc(status)}">{esc(status)}</span>'),
                         _fmt_seconds(s.get("seconds")) if status in ("done", "cached", "failed") else "",
                         s.get("key", ""), s.get("message", "")])
    steps = _table(["model", "step", "status", "time (when computed)", "cache key", "note"], rows)
    try:
        import yaml

        config_text = yaml.safe_dump(index.get("config", {}), sort_keys=False, allow_unicode=True)
    except Exception:  # noqa: BLE001
        config_text = json.dumps(index.get("config", {}), indent=2)
    versions = _versions()
    models = _table(["model", "reference", "fingerprint", "dtype"],
                    [[m["name"], m["ref"], m["fingerprint"], m["dtype"]] for m in index["models"]])
    compute = sum(s.get("seconds") or 0 for m in index["models"] for s in m["steps"].values()
                  if s.get("status") in ("done", "cached"))
    body = (f"<p>Command: <code>{esc(index.get('command', ''))}</code>. Output folder: <code>{esc(str(out))}</code>; "
            f"log: <code>{esc(index.get('log', 'run.log'))}</code>. This invocation took "
            f"{esc(_fmt_seconds(index.get('wall_seconds')))}; the steps took {esc(_fmt_seconds(compute))} when they were "
            f"computed (steps marked cached were reused from an earlier run).</p>{models}{steps}"
            f"<h4>Configuration</h4><pre class=\"txt\">{esc(config_text)}</pre>"
            f"<p class=\"lead\">{esc(versions)}</p>")
    return _section("run", "Run details", body, "What ran, with which options, and what was reused from the cache.")


def _versions() -> str:
    import platform

    parts = [f"ihs {index_version()}", f"Python {platform.python_version()}"]
    for name in ("torch", "transformers", "sklearn"):
        try:
            mod = __import__(name)
            parts.append(f"{name} {mod.__version__}")
        except Exception:  # noqa: BLE001
            continue
    return "Versions: " + ", ".join(parts) + "."


def index_version() -> str:
    import ihs

    return ihs.__version__


# -- the page --------------------------------------------------------------------------------------------------------


def build_report(out: str | Path, index: dict[str, Any] | None = None) -> str:
    """The report's HTML for the run in ``out`` (reads ``out/run.json`` unless ``index`` is given)."""
    out = Path(out)
    if index is None:
        index = _read_json(out / "run.json")
        if index is None:
            from ihs.errors import IhsError

            raise IhsError(f"{out} holds no run.json; run `ihs run --out {out}` first")
    config = index.get("config", {})
    examples = int(config.get("report", {}).get("examples", 4) or 4)
    models = [load_model_outputs(out, entry) for entry in index["models"]]
    for m in models:
        m["findings"] = findings({"probe": m["probe"], "lens": m["lens"], "refusal": m["refusal"],
                                  "jailbreak": m["jailbreak"], "graft": m["graft"]}, _why_missing(m["steps"]))
    names = ", ".join(m["entry"]["name"] for m in models)
    title = config.get("report", {}).get("title") or f"ihs report: {names}"
    sections = [
        _summary_section(models),
        _data_section(index, models, examples),
        _probe_section(models),
        _lens_section(models, examples),
        _consistency_section(models),
        _generate_section(models, examples),
        _jailbreak_section(models),
        _graft_section(models, examples),
        _compare_section(models),
        _run_section(index, out),
    ]
    present = [(k, t) for k, t in SECTIONS if k != "compare" or len(models) > 1]
    nav = "".join(f'<a href="#sec-{k}">{esc(t)}</a>' for k, t in present)
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
           "base-uri 'none'; form-action 'none'")
    created = index.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    subtitle = (f"{len(models)} model{'s' if len(models) != 1 else ''}: {names} · data: "
                + ", ".join(f"{k} {v}" for k, v in index.get("data", {}).get("counts", {}).items())
                + f" distinct prompts (limit {index.get('data', {}).get('limit')} per class) · {created} · ihs {index.get('ihs_version', '')}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="generator" content="ihs {esc(index.get('ihs_version', ''))}">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{_asset("report.css")}</style>
</head>
<body>
<header class="top"><div class="wrap"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></div></header>
<nav class="toc"><div class="wrap">{nav}</div></nav>
<main class="wrap">
{"".join(sections)}
</main>
<footer class="wrap">Made by <code>ihs run</code>. Self-contained: figures are embedded and nothing is loaded from the network.
Interactive figures need JavaScript; each has a static PNG below it.</footer>
<div id="ihs-tip" role="tooltip" hidden></div>
<script nonce="{nonce}">{_asset("report.js")}</script>
</body>
</html>
"""


def write_report(out: str | Path, index: dict[str, Any] | None = None) -> Path:
    """Write ``out/report.html`` and return its path."""
    out = Path(out)
    page = build_report(out, index)
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["build_report", "write_report", "esc", "line_chart", "display_token", "Finding"]
