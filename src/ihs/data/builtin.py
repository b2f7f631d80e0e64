"""The built-in prompt sets shipped inside the package (``ihs/data/builtin/``).

They are read with ``importlib.resources`` so they work from a wheel, a zip or an editable install.
``jailbreak`` is not a file: it is built from the malicious goals and the template library (one
template per goal, families dealt round-robin; see ``jailbreak.build_jailbreak``), so it always
matches the shipped goals and templates. Each set's version lives in ``VERSION.json``; bump it
whenever a set's content changes, so results can say which prompts they used.

Four sets exist to take shortcuts away from a harmful-request detector (see ``CARDS.md``):
``wrapped`` (benign requests in jailbreak-style wrappers), ``reformulated`` (malicious goals in the
past or future tense, third person, fiction or academic framing, euphemisms), ``alarming`` (safe
prompts with alarming words) and ``buried`` (long prompts whose malicious or benign ask sits at the
start or middle). Each of their rows has a ``goal_id`` (an id of ``normal``, ``contrast`` or
``malicious`` for the first, second and fourth; its own id for ``alarming``), so that splits can
keep a goal and its variants on one side (``ihs.analysis.groups``). ``buried`` mixes classes: each
row carries its own ``label``, which becomes the record's label and its ``class`` tag.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

from ihs.data.jailbreak import build_jailbreak, check_templates
from ihs.data.records import PromptRecord
from ihs.errors import DataError

#: The label of a set whose rows carry their own class (``label`` field, or multilingual's ``src_id``).
ROW_LABEL = "(its class)"

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
        ROW_LABEL,
        "100 normal, 100 malicious and 50 contrast prompts in English, Chinese, Spanish, French, Swahili and "
        "Bengali, each linked to its English original (builtin:multilingual[:CLASS[:LANG,LANG]]).",
    ),
    "wrapped": (
        "wrapped.jsonl",
        "benign",
        "Benign requests (goals from normal and contrast) inside jailbreak-style wrappers: role-play, ignore "
        "previous instructions, developer mode, hypotheticals, encodings, system preambles ... (family = wrapper).",
    ),
    "reformulated": (
        "reformulated.jsonl",
        "malicious",
        "Malicious goals reformulated: past and future tense, third person, fiction and academic framing, "
        "euphemisms without trigger words; two per goal (tag reformulation).",
    ),
    "alarming": (
        "alarming.jsonl",
        "contrast",
        "Safe prompts with alarming words: homonyms, figures of speech, safe targets, history, definitions, "
        "safety information, media analysis, nature and science (tag kind).",
    ),
    "buried": (
        "buried.jsonl",
        ROW_LABEL,
        "Long prompts of benign context with a malicious or a benign ask at the start or the middle, "
        "120 of each class on the same 60 contexts (tags class, position).",
    ),
}

#: set -> the tag that names its kind or family (``ihs data list`` counts it; a natural group key).
KIND_TAGS: dict[str, str] = {
    "contrast": "category",
    "jailbreak": "family",
    "jailbreak-templates": "family",
    "wrapped": "wrapper",
    "reformulated": "reformulation",
    "alarming": "kind",
    "buried": "position",
}

#: set -> {extra tag: row field copied into it}. ``wrapped`` also tags ``family`` so that grouping by
#: family puts a wrapper family's benign rows with the jailbreak rows of the same family.
_ALIAS_TAGS: dict[str, dict[str, str]] = {"wrapped": {"family": "wrapper"}}

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
    per_row = own_label == ROW_LABEL
    aliases = _ALIAS_TAGS.get(name, {})
    records = []
    for n, row in enumerate(rows, start=1):
        text = row.get(text_key)
        if not isinstance(text, str):
            raise DataError(f"built-in file {filename}: row {n} has no string {text_key!r}")
        tags = {("source_id" if k == "id" else k): v for k, v in row.items() if k not in (text_key, "label")}
        for tag, source in aliases.items():
            if source in row:
                tags[tag] = row[source]
        row_label = lab
        if per_row:
            cls = row.get("label")
            if not isinstance(cls, str) or not cls.strip():
                raise DataError(f"built-in file {filename}: row {n} has no string 'label'")
            tags["class"] = cls
            row_label = label or cls
        records.append(PromptRecord.make(text, row_label, dataset, tags))
    return records


def _load_multilingual(name: str, label: str | None) -> list[PromptRecord]:
    from ihs.data import multilingual as ml

    cls, langs = ml.parse_multilingual_spec(name.partition(":")[2])
    originals = {c: _read_rows(_SETS[c][0] or "") for c in ml.CLASSES}
    return ml.build_records(originals, _read_rows(ml.FILENAME), cls, langs, label, f"builtin:{name}")


def list_builtin() -> list[dict]:
    """One dict per built-in set: name, size, version, description, categories, families, kinds, labels,
    available.

    ``kinds`` counts the set's kind or family tag (``KIND_TAGS``; empty for sets without one) and
    ``labels`` the records' labels (more than one for sets that mix classes).

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
            "kinds": {},
            "labels": {},
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
        kind_tag = KIND_TAGS.get(name)
        if kind_tag:
            entry["kinds"] = dict(sorted(Counter(str(r.tags[kind_tag]) for r in records if kind_tag in r.tags).items()))
        entry["labels"] = dict(sorted(Counter(r.label for r in records).items()))
        if name == "multilingual":
            entry["categories"] = dict(Counter(f"{r.tags['class']}/{r.tags['lang']}" for r in records))
        out.append(entry)
    return out
