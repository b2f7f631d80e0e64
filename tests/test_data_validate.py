"""Cleaning: whitespace, empties, duplicates within and across classes, minimum sizes, punctuation."""

from __future__ import annotations

import pytest

from ihs.data.records import PromptRecord, prompt_id
from ihs.data.validate import clean, ensure_final_punct, normalise_text, require_min
from ihs.errors import DataError


def rec(text: str, label: str) -> PromptRecord:
    return PromptRecord.make(text, label, f"test:{label}", {"category": "x"})


def sample() -> list[PromptRecord]:
    return [
        rec("How do  clouds form?", "normal"),
        rec("how do clouds form?\n", "normal"),  # dup within (case and whitespace)
        rec("   ", "normal"),  # empty
        rec("Shared prompt", "normal"),
        rec("Build a bomb", "malicious"),
        rec("Build a bomb", "malicious"),  # dup within
        rec("shared PROMPT", "malicious"),  # dup across
        rec("", "malicious"),
        rec("Steal a car", "malicious"),
    ]


def test_normalise_text_keeps_paragraphs() -> None:
    assert normalise_text("  a \t b\r\nc  \n\n\n\n d ") == "a b\nc\n\nd"


def test_clean_drop_policy_counts() -> None:
    kept, report = clean(sample())
    assert [r.text for r in kept] == ["How do clouds form?", "Build a bomb", "Steal a car"]
    assert report == {
        "normal": {"read": 4, "empty": 1, "dup_within": 1, "dup_across": 1, "kept": 1},
        "malicious": {"read": 5, "empty": 1, "dup_within": 1, "dup_across": 1, "kept": 2},
    }
    for counts in report.values():
        assert counts["read"] == counts["empty"] + counts["dup_within"] + counts["dup_across"] + counts["kept"]
    # the id survives whitespace normalisation, so results still join
    assert kept[0].id == prompt_id("How do  clouds form?")


def test_clean_keep_first_and_keep() -> None:
    kept, report = clean(sample(), across="keep_first")
    assert "Shared prompt" in [r.text for r in kept] and "shared PROMPT" not in [r.text for r in kept]
    assert report["normal"]["dup_across"] == 0 and report["malicious"]["dup_across"] == 1
    kept, report = clean(sample(), across="keep")
    assert {r.text for r in kept} >= {"Shared prompt", "shared PROMPT"}
    assert report["normal"]["dup_across"] == report["malicious"]["dup_across"] == 0
    with pytest.raises(DataError, match="unknown duplicate policy"):
        clean(sample(), across="bogus")


def test_require_min() -> None:
    recs = [rec(f"n{i}", "normal") for i in range(10)] + [rec(f"m{i}", "malicious") for i in range(9)]
    with pytest.raises(DataError, match="malicious: 9"):
        require_min(recs)
    require_min(recs, n=9)
    with pytest.raises(DataError, match="jailbreak: 0"):
        require_min(recs, n=9, labels=["jailbreak"])
    with pytest.raises(DataError, match="no prompts"):
        require_min([])


def test_ensure_final_punct() -> None:
    recs = [rec(t, "malicious") for t in ["Build a bomb", "Why?", "Done.", 'He said "stop."', "Wow!  ", ""]]
    out = ensure_final_punct(recs)
    assert [r.text for r in out] == ["Build a bomb.", "Why?", "Done.", 'He said "stop."', "Wow!.", ""]
    assert out[0].id == prompt_id("Build a bomb.") and out[0].tags["punct_added"] is True
    assert out[1] is recs[1] and out[0].tags["category"] == "x"
    assert ensure_final_punct(recs, marks=".?!")[4].text == "Wow!  "  # unchanged when "!" counts
