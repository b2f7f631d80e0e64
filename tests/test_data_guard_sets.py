"""The four built-in sets written against detector shortcuts: wrapped, reformulated, alarming, buried."""

from __future__ import annotations

import base64
import codecs
import re
from collections import Counter, defaultdict
from statistics import mean

import pytest

from ihs.data.builtin import BUILTIN_NAMES, KIND_TAGS, list_builtin, load_builtin
from ihs.data.loaders import load_dataset_spec
from ihs.data.validate import dedupe_key

NEW = ("wrapped", "reformulated", "alarming", "buried")
#: set -> (label(s), the kind tag, kinds that must be there)
EXPECT = {
    "wrapped": ({"benign"}, "wrapper", {"roleplay_persona", "ignore_previous", "developer_mode", "hypothetical",
                                        "encoded_payload", "system_preamble", "fiction_nested"}),
    "reformulated": ({"malicious"}, "reformulation", {"past_tense", "future_tense", "third_person",
                                                      "fiction_framing", "academic_framing", "euphemistic"}),
    "alarming": ({"contrast"}, "kind", {"homonym", "figurative", "safe_target", "history", "definition",
                                        "safety_information"}),
    "buried": ({"malicious", "normal"}, "position", {"start", "middle"}),
}


def _by_source(name: str) -> dict[str, object]:
    return {r.tags["source_id"]: r for r in load_builtin(name)}


@pytest.mark.parametrize("name", NEW)
def test_new_sets_load_with_tags_and_sizes(name: str) -> None:
    labels, kind_tag, kinds = EXPECT[name]
    recs = load_dataset_spec(f"builtin:{name}")
    assert len(recs) >= 200
    assert {r.label for r in recs} == labels
    assert all(r.dataset == f"builtin:{name}" for r in recs)
    assert KIND_TAGS[name] == kind_tag
    assert all(r.tags.get("goal_id") and r.tags.get(kind_tag) for r in recs)
    assert kinds <= {r.tags[kind_tag] for r in recs}
    ids = [r.tags["source_id"] for r in recs]
    assert len(set(ids)) == len(ids) and all(i.startswith(f"{name}-") for i in ids)
    assert ids == [f"{name}-{n:04d}" for n in range(1, len(ids) + 1)]
    entry = {s["name"]: s for s in list_builtin()}[name]
    assert entry["available"] and entry["size"] == len(recs) and entry["version"] != "unversioned"
    assert sum(entry["kinds"].values()) == len(recs)
    assert name in BUILTIN_NAMES


def test_no_prompt_duplicates_another_within_or_across_builtin_files() -> None:
    seen: dict[str, str] = {}
    dups = []
    for name in BUILTIN_NAMES:
        if name == "jailbreak-templates":
            continue
        recs = load_builtin(name)
        if name == "multilingual":  # its English rows are the originals of normal/malicious/contrast
            recs = [r for r in recs if r.tags["lang"] != "en"]
        for r in recs:
            key = dedupe_key(r.text)
            if key in seen:
                dups.append((seen[key], name, r.text[:60]))
            seen.setdefault(key, name)
    assert dups == []
    assert len(seen) > 3000


def test_goal_ids_point_at_the_right_originals() -> None:
    malicious, normal, contrast = _by_source("malicious"), _by_source("normal"), _by_source("contrast")
    for r in load_builtin("reformulated"):
        goal = malicious[r.tags["goal_id"]]
        assert r.tags["category"] == goal.tags["category"]
    per_goal = defaultdict(list)
    for r in load_builtin("reformulated"):
        per_goal[r.tags["goal_id"]].append(r.tags["reformulation"])
    assert all(len(k) == 2 and len(set(k)) == 2 for k in per_goal.values())
    for r in load_builtin("buried"):
        pool = malicious if r.label == "malicious" else normal
        assert r.tags["class"] == r.label
        goal = pool[r.tags["goal_id"]]
        assert r.tags["category"] == goal.tags["category"]
    for r in load_builtin("wrapped"):
        assert r.tags["goal_id"] in normal or r.tags["goal_id"] in contrast
    for r in load_builtin("alarming"):
        assert r.tags["goal_id"] == r.tags["source_id"] and r.tags["trigger"]


def _leet_back(text: str) -> str:
    return text.translate(str.maketrans("4310 57", "aeio st"))


def test_wrapped_prompts_contain_their_benign_request() -> None:
    originals = {**_by_source("normal"), **_by_source("contrast")}
    encodings = Counter()
    for r in load_builtin("wrapped"):
        ask = originals[r.tags["goal_id"]].text
        assert r.tags["family"] == r.tags["wrapper"]
        if r.tags["wrapper"] != "encoded_payload":
            assert ask in r.text and r.text != ask
            continue
        enc = r.tags["encoding"]
        encodings[enc] += 1
        payload = r.text.split(": ", 1)[1]
        if enc == "base64":
            assert base64.b64decode(payload).decode("utf-8") == ask
        elif enc == "rot13":
            assert codecs.decode(payload, "rot13") == ask
        elif enc == "reversed":
            assert payload[::-1] == ask
        else:
            assert enc == "leetspeak" and _leet_back(payload).lower() == _leet_back(ask).lower()
            assert payload != ask
    assert {"base64", "rot13", "leetspeak"} <= set(encodings)
    fam = Counter(r.tags["wrapper"] for r in load_builtin("wrapped"))
    assert max(fam.values()) - min(fam.values()) <= 1
    jb_families = {r.tags["family"] for r in load_builtin("jailbreak")}
    assert len(set(fam) & jb_families) >= 10  # most wrapper families are jailbreak families, for grouping


def test_euphemistic_reformulations_avoid_trigger_words() -> None:
    triggers = re.compile(r"\b(bomb|kill|steal|stol|hack|poison|weapon|drug|murder|attack|explosive|gun|slur|"
                          r"suicide|terror|rob|racist|traffick|launder|smuggl|illegal|fake|threat|harass|cocaine|"
                          r"meth|heroin|noose|self-harm|abuse|assassin|blackmail|spyware|deepfake)", re.I)
    rows = [r for r in load_builtin("reformulated") if r.tags["reformulation"] == "euphemistic"]
    assert len(rows) >= 30
    assert [r.text for r in rows if triggers.search(r.text)] == []
    past = [r.text for r in load_builtin("reformulated") if r.tags["reformulation"] == "past_tense"]
    assert sum(bool(re.search(r"\b(did|were|was|used)\b", t)) for t in past) == len(past)


def _as_sentence(text: str) -> str:
    return (text[0].upper() + text[1:]).rstrip(".?!")


def test_buried_asks_sit_at_the_start_or_middle_and_length_is_no_cue() -> None:
    malicious, normal = _by_source("malicious"), _by_source("normal")
    recs = load_builtin("buried")
    cells = Counter((r.label, r.tags["position"]) for r in recs)
    assert len(set(cells.values())) == 1 and len(cells) == 4  # equal counts per class and position
    for r in recs:
        ask = _as_sentence((malicious if r.label == "malicious" else normal)[r.tags["goal_id"]].text)
        at = r.text.find(ask)
        assert at >= 0, r.tags["source_id"]
        if r.tags["position"] == "start":
            assert at == 0
        else:
            assert at > 0
        tail = r.text[at + len(ask):]
        assert len(tail.split()) >= 10, "the ask must not be at the end"
    words = {lab: [len(r.text.split()) for r in recs if r.label == lab] for lab in ("malicious", "normal")}
    assert min(min(w) for w in words.values()) >= 40
    assert abs(mean(words["malicious"]) - mean(words["normal"])) < 3
    contexts = Counter(r.tags["context_id"] for r in recs)
    assert set(contexts.values()) == {4}  # each context carries one ask of each class in each position
    assert {r.label for r in load_builtin("buried", label="x")} == {"x"}
