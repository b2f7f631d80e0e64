"""Built-in sets: the loading machinery on a fake package folder, and the real files once shipped."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import ihs.data.builtin as builtin
from ihs.data.builtin import BUILTIN_NAMES, list_builtin, load_builtin, load_templates
from ihs.data.jailbreak import GOAL_SLOT
from ihs.data.loaders import load_dataset_spec
from ihs.data.validate import clean
from ihs.errors import DataError

FAKE = Path(__file__).parent / "fixtures" / "data" / "builtin"
REAL = Path(builtin.__file__).parent / "builtin"
REAL_FILES = ["normal.jsonl", "malicious.jsonl", "contrast.jsonl", "jailbreak_templates.jsonl"]


@pytest.fixture
def fake_builtin(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(builtin, "_resource", lambda filename: FAKE / filename)
    return FAKE


def test_load_builtin_on_fake_files(fake_builtin: Path) -> None:
    normal = load_builtin("normal")
    assert len(normal) == 12 and {r.label for r in normal} == {"normal"}
    assert normal[0].dataset == "builtin:normal"
    assert normal[0].tags == {"source_id": "n000", "category": "science", "form": "question"}
    assert load_dataset_spec("builtin:contrast")[0].tags["trigger"] == "kill"
    assert load_dataset_spec("malicious", label="harmful")[0].label == "harmful"
    templates = load_dataset_spec("builtin:jailbreak-templates")
    assert len(templates) == 7 and templates[0].tags["family"] == "role_play"


def test_builtin_jailbreak_is_one_per_goal_and_balanced(fake_builtin: Path) -> None:
    goals = load_builtin("malicious")
    jb = load_builtin("jailbreak")
    assert len(jb) == len(goals)
    assert [r.tags["goal_id"] for r in jb] == [g.id for g in goals]
    fam = Counter(r.tags["family"] for r in jb)
    assert len(fam) == 3 and max(fam.values()) - min(fam.values()) <= 1
    assert [r.to_dict() for r in jb] == [r.to_dict() for r in load_builtin("jailbreak")]  # deterministic
    assert all(r.dataset == "builtin:jailbreak" and r.label == "jailbreak" for r in jb)


def test_list_builtin_on_fake_files(fake_builtin: Path) -> None:
    sets = {s["name"]: s for s in list_builtin()}
    assert list(sets) == list(BUILTIN_NAMES)
    assert sets["normal"]["size"] == 12 and sets["normal"]["version"] == "0.1-test"
    assert sets["contrast"]["version"] == "unversioned"
    assert sets["malicious"]["categories"]["cybercrime"] == 2
    assert sets["jailbreak-templates"]["families"] == {"hypothetical": 2, "prefix_injection": 2, "role_play": 3}
    assert all(s["available"] for s in sets.values())


def test_missing_builtin_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(builtin, "_resource", lambda filename: tmp_path / filename)
    with pytest.raises(DataError, match="missing"):
        load_builtin("normal")
    sets = list_builtin()
    assert not any(s["available"] for s in sets) and all(s["size"] == 0 for s in sets)
    (tmp_path / "normal.jsonl").write_text('{"id": "a", "prompt": "x"}\nnot json\n')
    with pytest.raises(DataError, match="line 2"):
        load_builtin("normal")


# ------------------------------------------------------------------- the real shipped files

needs_real = pytest.mark.skipif(
    not all((REAL / f).exists() for f in REAL_FILES), reason="built-in prompt files not written yet"
)


@needs_real
def test_real_builtin_sets_load_and_are_clean() -> None:
    sets = {s["name"]: s for s in list_builtin()}
    assert all(s["available"] for s in sets.values()), [s.get("error") for s in sets.values()]
    assert all(s["version"] != "unversioned" for s in sets.values())
    records = load_builtin("normal") + load_builtin("malicious") + load_builtin("contrast")
    _, report = clean(records)
    for label, counts in report.items():
        assert counts["kept"] >= 10, label
        assert counts["empty"] == 0, (label, counts)
        assert counts["dup_within"] == 0, (label, counts)
        assert counts["dup_across"] == 0, (label, counts)
    for name in ("normal", "malicious", "contrast"):
        recs = load_builtin(name)
        assert all(r.tags.get("category") for r in recs), name
        assert len({r.tags["source_id"] for r in recs}) == len(recs), f"duplicate ids in {name}"
    assert all(r.tags.get("trigger") for r in load_builtin("contrast"))


@needs_real
def test_real_templates_and_jailbreak_families() -> None:
    templates = load_templates()
    assert all(t["template"].count(GOAL_SLOT) == 1 for t in templates)
    families = {t["family"] for t in templates}
    assert len(families) >= 5
    jb = load_builtin("jailbreak")
    assert len(jb) == len(load_builtin("malicious"))
    fam = Counter(r.tags["family"] for r in jb)
    assert set(fam) == families and max(fam.values()) - min(fam.values()) <= 1
