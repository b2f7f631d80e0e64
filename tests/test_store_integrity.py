"""Store integrity: shard checksums, quarantine on resume, manifest schema, the writer lock, shards cut by rows
and by time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import alternating_records
from ihs.errors import StoreError
from ihs.extraction import ExtractOptions, extract, rows_per_shard
from ihs.store import ActivationStore, StoreWriter, read_manifest, store_problem
from ihs.store_integrity import StoreLock, shard_files

TEXTS = [f"prompt number {i} " * (1 + i % 3) for i in range(12)]
OPTS = ExtractOptions(batch_size=2, shard_rows=4)


@pytest.fixture
def store(tmp_path, tiny_llama):
    out = tmp_path / "store"
    extract(tiny_llama, alternating_records(TEXTS), out, OPTS, progress=False)
    return out


def test_shards_cut_by_rows_and_checksums_recorded(store):
    manifest = read_manifest(store)
    shards = shard_files(store / "shards")
    assert len(shards) == 3 and manifest["format_version"] == 2
    assert set(manifest["shards"]) == {s.name for s in shards}
    assert all(entry["rows"] == 4 and len(entry["sha256"]) == 64 for entry in manifest["shards"].values())
    assert store_problem(store) is None and not (store / ".lock").exists()
    assert rows_per_shard(2, 32, ExtractOptions()) == 64


def test_shards_also_close_on_time(tmp_path, tiny_llama, monkeypatch):
    """A shard closes once ``shard_seconds`` of work went into it, with fewer rows than the row bound."""
    import ihs.extraction as extraction

    records = alternating_records(TEXTS)
    untimed = extract(tiny_llama, records, tmp_path / "untimed",
                      ExtractOptions(batch_size=2, max_batch_tokens=4096, shard_seconds=0), progress=False)
    assert [e["rows"] for e in read_manifest(tmp_path / "untimed")["shards"].values()] == [12]  # 0 = no time bound
    now = [0.0]

    def clock() -> float:  # every reading 10 s later: each batch takes 10 s, 10 s pass between batches
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr(extraction, "_clock", clock)
    timed = extract(tiny_llama, records, tmp_path / "timed",
                    ExtractOptions(batch_size=2, max_batch_tokens=4096, shard_rows=64, shard_seconds=25.0), progress=False)
    assert [e["rows"] for e in read_manifest(tmp_path / "timed")["shards"].values()] == [4, 4, 4]  # 30 s >= 25 s
    np.testing.assert_array_equal(timed.hidden, untimed.hidden)
    monkeypatch.undo()
    tiny = extract(tiny_llama, records, tmp_path / "tiny",
                   ExtractOptions(batch_size=2, max_batch_tokens=4096, shard_seconds=1e-9), progress=False)
    assert [e["rows"] for e in read_manifest(tmp_path / "tiny")["shards"].values()] == [2] * 6
    assert tiny.ids == untimed.ids and store_problem(tmp_path / "tiny") is None


def test_damaged_shard_is_named_on_load_and_recomputed_on_resume(store, tiny_llama, capsys):
    reference = ActivationStore.load(store)
    victim = shard_files(store / "shards")[1]
    victim.write_bytes(victim.read_bytes()[:-40])  # truncated
    with pytest.raises(StoreError, match=victim.name):
        ActivationStore.load(store)
    assert victim.name in store_problem(store)
    resumed = extract(tiny_llama, alternating_records(TEXTS), store, OPTS, progress=False)
    assert victim.name in capsys.readouterr().err
    assert (store / "quarantine").is_dir() and store_problem(store) is None
    np.testing.assert_array_equal(resumed.hidden, reference.hidden)
    assert resumed.ids == reference.ids


def test_deleted_or_flipped_shard_is_a_problem(store):
    shards = shard_files(store / "shards")
    data = bytearray(shards[0].read_bytes())
    data[-1] ^= 1
    shards[0].write_bytes(bytes(data))
    assert "checksum" in store_problem(store)
    shards[0].unlink()
    assert "missing" in store_problem(store)


@pytest.mark.parametrize("text, match", [("[1, 2]", "JSON object"), ("{}", "'model'"), ("{", "not valid JSON"),
                                         ('{"model": {}, "num_layers": 2, "hidden_size": 32, "status": 1}',
                                          "'status'")])
def test_manifest_schema(store, text, match):
    (store / "manifest.json").write_text(text)
    with pytest.raises(StoreError, match=match):
        ActivationStore.load(store)
    assert store_problem(store)


def test_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path, store, tiny_llama):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (store / ".lock").write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename}))
        with pytest.raises(StoreError, match=f"pid {child.pid}"):
            extract(tiny_llama, alternating_records(TEXTS), store, OPTS, progress=False)
    finally:
        child.kill()
        child.wait()
    extract(tiny_llama, alternating_records(TEXTS), store, OPTS, progress=False)  # the holder is dead now
    assert not (store / ".lock").exists()
    lock = StoreLock(tmp_path / "x").acquire()
    holder = json.loads(lock.file.read_text())
    lock.file.write_text(json.dumps({**holder, "pid": 1}))  # pid 1 on this host: alive
    with pytest.raises(StoreError, match="pid 1 "):
        StoreLock(tmp_path / "x").acquire()
    lock.release()
    assert not (tmp_path / "x" / ".lock").exists()


def test_writer_keeps_lock_until_closed(tmp_path):
    manifest = {"model": {"id": "x", "fingerprint": "f"}, "num_layers": 1, "hidden_size": 2, "plan_fingerprint": "p"}
    writer = StoreWriter(tmp_path / "s", manifest, [{"id": "a", "text": "a", "label": "x"}])
    assert (tmp_path / "s" / ".lock").exists()
    writer.close(complete=False)
    assert not (tmp_path / "s" / ".lock").exists()


def test_run_recomputes_a_damaged_store_instead_of_reporting_cached(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from conftest import make_tiny, save_tiny
    from ihs.cli import app

    model = save_tiny(make_tiny("llama"), tmp_path / "tiny")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"models": [str(model)], "limit": 4, "analyses": ["probe"],
                                      "data": {"normal": "builtin:normal", "malicious": "builtin:malicious"},
                                      "extract": {"batch_size": 2}, "probe": {"folds": 2}}))
    args = ["run", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args)
    assert "extract: cached" in " ".join(again.output.split())
    store = next((tmp_path / "run").glob("*/extract/store"))
    victim = shard_files(store / "shards")[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    third = CliRunner().invoke(app, args)
    text = " ".join(third.output.split())
    assert third.exit_code == 0 and "extract: cached" not in text and victim.name in text, third.output
    assert store_problem(store) is None
