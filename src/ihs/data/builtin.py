"""The built-in prompt sets shipped inside the package (``ihs/data/builtin/``).

They are read with ``importlib.resources`` so they work from a wheel, a zip or an editable install.
``jailbreak`` is not a file: it is built from the malicious goals and the template library (one
template per goal, families dealt round-robin; see ``jailbreak.build_jailbreak``), so it always
matches the shipped goals and templates. Each set's version lives in ``VERSION.json``; bump it
whenever a set's content changes, so results can say which prompts they used.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

from ihs.data.jailbreak import build_jailbreak, check_templates
from ihs.data.records import PromptRecord
from ihs.errors import DataError

#: name -> (file, label, description). ``jailbreak`` has no file of its own.
_SETS: dict[str, tuple[str | None, str, str]] = {
    "normal": ("normal.jsonl", "normal", "Benign requests of many kinds and forms (questions, instructions, tasks)."),
    "malicious": ("malicious.jsonl", "malicious", "Harmful requests (goals) across harm categories."),
    "contrast": (
        "contrast.jsonl",
        "contrast",
        "Benign requests that contain trigger words ('kill a process'): tests surface-word shortcuts.",
    ),
    "jailbreak": (None, "jailbreak", "Malicious goals wrapped in jailbreak templates, one per goal, families balanced."),
    "jailbreak-templates": (
        "jailbreak_templates.jsonl",
        "jailbreak-template",
        "Jailbreak templates by family, each with one {goal} slot.",
    ),
    "multilingual": (
        "multilingual.jsonl",
        "(its class)",
        "100 normal, 100 malicious and 50 contrast prompts in English, Chinese, Spanish, French, Swahili and "
        "Bengali, each linked to its English original (builtin:multilingual[:CLASS[:LANG,LANG]]).",
    ),
}

BUILTIN_NAMES: tuple[str, ...] = tuple(_SETS)


def _resource(filename: str):
    return resources.files("ihs.data").joinpath("builtin", filename)


def _versions() -> dict[str, str]:
    res = _resource("VERSION.json")
    try:
        return json.loads(res.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _check_name(name: str) -> None:
    if name not in _SETS:
        raise DataError(f"unknown built-in set {name!r}; available: {', '.join(BUILTIN_NAMES)}")


def _read_rows(filename: str) -> list[dict]:
    res = _resource(filename)
    if not res.is_file():
        raise DataError(f"built-in file {filename} is missing from this installation of ihs")
    rows = []
    for n, line in enumerate(res.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"built-in file {filename}: malformed JSON on line {n}: {exc.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"built-in file {filename}: line {n} is not an object")
        rows.append(row)
    return rows


def load_templates() -> list[dict]:
    """The built-in jailbreak templates: dicts with ``id``, ``family``, ``template`` (one ``{goal}``)."""
    rows = _read_rows("jailbreak_templates.jsonl")
    check_templates(rows)
    return rows


def load_builtin(name: str, label: str | None = None) -> list[PromptRecord]:
    """Load a built-in set as records; ``label`` overrides the set's own label.

    ``multilingual`` takes an optional ``:CLASS[:LANG,LANG]`` (see ``ihs.data.multilingual``).
    """
    if name == "multilingual" or name.startswith("multilingual:"):
        return _load_multilingual(name, label)
    _check_name(name)
    filename, own_label, _ = _SETS[name]
    lab = label or own_label
    dataset = f"builtin:{name}"
    if name == "jailbreak":
        goals = load_builtin("malicious")
        return build_jailbreak(goals, load_templates(), per_goal=1, seed=0, label=lab, dataset=dataset)
    assert filename is not None
    rows = load_templates() if name == "jailbreak-templates" else _read_rows(filename)
    text_key = "template" if name == "jailbreak-templates" else "prompt"
    records = []
    for n, row in enumerate(rows, start=1):
        text = row.get(text_key)
        if not isinstance(text, str):
            raise DataError(f"built-in file {filename}: row {n} has no string {text_key!r}")
        tags = {("source_id" if k == "id" else k): v for k, v in row.items() if k != text_key}
        records.append(PromptRecord.make(text, lab, dataset, tags))
    return records


def _load_multilingual(name: str, label: str | None) -> list[PromptRecord]:
    from ihs.data import multilingual as ml

    cls, langs = ml.parse_multilingual_spec(name.partition(":")[2])
    originals = {c: _read_rows(_SETS[c][0] or "") for c in ml.CLASSES}
    return ml.build_records(originals, _read_rows(ml.FILENAME), cls, langs, label, f"builtin:{name}")


def list_builtin() -> list[dict]:
    """One dict per built-in set: name, size, version, description, categories, families, available.

    A set whose file is missing is listed with ``available=False`` and size 0 rather than failing,
    so ``ihs data list`` still works on a broken install and says what is missing.
    """
    versions = _versions()
    out = []
    for name, (_, _, description) in _SETS.items():
        entry: dict = {
            "name": name,
            "spec": f"builtin:{name}",
            "size": 0,
            "version": versions.get(name, "unversioned"),
            "description": description,
            "categories": {},
            "families": {},
            "available": True,
        }
        try:
            records = load_builtin(name)
        except DataError as exc:
            entry["available"] = False
            entry["error"] = str(exc)
            out.append(entry)
            continue
        entry["size"] = len(records)
        entry["categories"] = dict(sorted(Counter(str(r.tags["category"]) for r in records if "category" in r.tags).items()))
        entry["families"] = dict(sorted(Counter(str(r.tags["family"]) for r in records if "family" in r.tags).items()))
        if name == "multilingual":
            entry["categories"] = dict(Counter(f"{r.tags['class']}/{r.tags['lang']}" for r in records))
        out.append(entry)
    return out
