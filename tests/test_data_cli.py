"""``ihs data list/show/baseline`` through the root app, on fake built-ins and fixture files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ihs.data.builtin as builtin
from ihs.cli import app, main

FIX = Path(__file__).parent / "fixtures" / "data"
REAL = Path(builtin.__file__).parent / "builtin"
runner = CliRunner()
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def fake_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "_resource", lambda filename: FIX / "builtin" / filename)


def test_list_table_and_json(fake_builtin: None) -> None:
    res = runner.invoke(app, ["data", "list"], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "jailbreak-templates" in res.output and "0.1-test" in res.output
    res = runner.invoke(app, ["data", "list", "--json"])
    sets = json.loads(res.output)
    assert [s["name"] for s in sets][:2] == ["normal", "malicious"] and sets[0]["size"] == 12


def test_show_builtin_and_file(fake_builtin: None) -> None:
    res = runner.invoke(app, ["data", "show", "malicious", "--n", "2"], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "12 prompts" in res.output and "bomb" in res.output and "category=weapons" in res.output
    res = runner.invoke(app, ["data", "show", "builtin:jailbreak", "--n", "3", "--seed", "1"], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "family=" in res.output and "template_id=" in res.output
    res = runner.invoke(app, ["data", "show", str(FIX / "harmbench.csv"), "-n", "1"], env=WIDE)
    assert res.exit_code == 0 and "chemical_biological" in res.output


def test_show_escapes_markup(tmp_path: Path) -> None:
    f = tmp_path / "evil.txt"
    f.write_text("[bold red]shout[/bold red] and [link=http://x]click[/link]\n", encoding="utf-8")
    res = runner.invoke(app, ["data", "show", str(f)], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "[bold red]shout[/bold red]" in res.output and "[link=http://x]" in res.output


def test_errors_exit_nonzero_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    res = runner.invoke(app, ["data", "show", str(FIX / "missing_col.csv")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1
    assert "Traceback" not in res.output
    # the real entry point turns it into one line on stderr and exit status 2
    monkeypatch.setattr(sys, "argv", ["ihs", "data", "show", "builtin:nope"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown built-in set 'nope'") and "\n" not in err


def test_baseline_json_and_table(fake_builtin: None) -> None:
    args = ["data", "baseline", "--folds", "3"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["n"] == {"normal": 12, "malicious": 12, "contrast": 6}
    assert 0.0 <= rep["cv_accuracy"]["mean"] <= 1.0 and rep["contrast_called_malicious"] is not None
    assert rep["cleaning"]["normal"]["kept"] == 12 and rep["specs"]["contrast"] == "builtin:contrast"
    res = runner.invoke(app, [*args, "--contrast", "none"], env=WIDE)
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "shuffled labels" in res.output and "contrast called" not in res.output


def test_baseline_too_small_is_a_data_error() -> None:
    res = runner.invoke(app, ["data", "baseline", "--normal", str(FIX / "bom.csv"), "--malicious", str(FIX / "advbench.csv"), "--contrast", "none"])
    assert res.exit_code == 2 and "too few prompts" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(
    not all((REAL / f).exists() for f in ("normal.jsonl", "malicious.jsonl", "contrast.jsonl")),
    reason="built-in prompt files not written yet",
)
def test_baseline_on_real_builtins() -> None:
    res = runner.invoke(app, ["data", "baseline", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["cv_accuracy"]["mean"] > 0.6
    assert rep["shuffled_accuracy"]["mean"] < rep["chance"] + 0.1
