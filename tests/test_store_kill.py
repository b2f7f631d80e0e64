"""kill -9 at seeded random points of ``ihs extract`` and ``ihs run``, then a re-run; two writers on one store.

Each trial starts a child process that runs the real CLI (``ihs extract`` or ``ihs run`` with the
probe analysis) on 40 prompts of a tiny saved model (2 per batch, 4 rows per shard, a short sleep
per batch so kills land everywhere from model load to the last step), kills it with SIGKILL after a
seeded random delay, checks what is on disk, and re-runs the same command in this process: it must
succeed, the store must be complete, its rows unique, its states equal to an uninterrupted run's, and
the rows lost to the kill at most one shard (plus the batch in flight). Trials run until
IHS_KILL_BUDGET_S seconds per command are spent (at least MIN_TRIALS), or exactly IHS_KILL_TRIALS
trials per command when that is set.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny, save_tiny
from ihs.errors import StoreError
from ihs.extraction import ExtractOptions, extract
from ihs.store import ActivationStore, store_problem

TRIAL_BUDGET_S = float(os.environ.get("IHS_KILL_BUDGET_S", "10"))  # per command
TRIALS = int(os.environ.get("IHS_KILL_TRIALS", "0"))  # exactly this many per command when set
MIN_TRIALS = 2
SEED = 20261130
N, BATCH, SHARD_ROWS = 40, 2, 4
SLEEP = 0.05  # seconds added to each batch of a CLI child, so that kills land between batches too
OPTS = ExtractOptions(batch_size=BATCH, shard_rows=SHARD_ROWS, max_batch_tokens=4096)
CHILD = textwrap.dedent(f"""
    import os, sys, time
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    import ihs.extraction as ex
    from ihs.extraction import ExtractOptions, extract
    real = ex.forward_last_states
    done = [0]
    def slow(lm, ids, prefix=None):
        out = real(lm, ids, prefix)
        time.sleep(float(sys.argv[2]))
        done[0] += len(ids)
        print("rows", done[0], flush=True)
        while os.path.exists(sys.argv[1] + ".hold"):  # the test holds this writer mid-run
            time.sleep(0.05)
        return out
    ex.forward_last_states = slow
    ex.rows_per_shard = lambda *a, **k: {SHARD_ROWS}
    if sys.argv[3] == "api":
        from conftest import make_tiny, save_tiny
        from test_store_kill import records
        lm = make_tiny("llama")
        print("ready", flush=True)
        try:
            extract(lm, records(), sys.argv[1], ExtractOptions(batch_size={BATCH}, shard_rows={SHARD_ROWS},
                    max_batch_tokens=4096), progress=False)
        except Exception as exc:
            print("refused", exc, flush=True)
            sys.exit(3)
        print("finished", flush=True)
    else:  # the real CLI: ihs ARGS... (imported before "ready", so the kill window is the command's work)
        from ihs.cli import app
        print("ready", flush=True)
        try:
            app(sys.argv[3:], prog_name="ihs")
        finally:
            print("finished", flush=True)
""")


def records() -> list[dict]:
    texts = [f"prompt number {i} " * (1 + i % 5) for i in range(N)]
    return [dict(id=f"p{i}", text=t, label="a" if i % 2 else "b", dataset="t", tags={}) for i, t in enumerate(texts)]


def start_child(tmp: Path, out: Path, sleep: float, args: list[str] | None = None) -> subprocess.Popen:
    """A child writing ``out``: the extraction API (``args`` None) or ``ihs ARGS``, ``sleep`` s per batch."""
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(script), str(out), str(sleep), *(args or ["api"])],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def wait_for(child: subprocess.Popen, word: str) -> None:
    for line in child.stdout:
        if line.startswith(word):
            return
    raise AssertionError(f"child ended before {word!r}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return extract(make_tiny("llama"), records(), tmp_path_factory.mktemp("ref") / "s", OPTS, progress=False)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """A tiny saved model, two prompt files, an ``ihs run`` config, and the uninterrupted run of each command."""
    import yaml
    from typer.testing import CliRunner

    from ihs.cli import app

    tmp = tmp_path_factory.mktemp("cli")
    model = save_tiny(make_tiny("llama"), tmp / "tiny")
    recs = records()
    for label in ("a", "b"):
        (tmp / f"{label}.txt").write_text("".join(r["text"] + "\n" for r in recs if r["label"] == label))
    data = {"a": str(tmp / "a.txt"), "b": str(tmp / "b.txt")}
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump({"models": [str(model)], "data": data, "analyses": ["probe"],
                                      "extract": {"batch_size": BATCH}, "probe": {"folds": 2}}))

    def command(kind: str, out: Path) -> list[str]:
        if kind == "extract":
            return ["extract", "--model", str(model), *[a for k, v in data.items() for a in ("--data", f"{k}={v}")],
                    "--batch-size", str(BATCH), "--out", str(out)]
        return ["run", "--config", str(config), "--no-progress", "--out", str(out)]

    def invoke(args: list[str]) -> str:
        with pytest.MonkeyPatch.context() as mp:  # the children's shard size, without their sleep
            mp.setattr("ihs.extraction.rows_per_shard", lambda *a, **k: SHARD_ROWS)
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"ihs {' '.join(args)}\n{result.output}"
        return result.output

    refs = {}
    for kind in ("extract", "run"):
        out = tmp / f"ref-{kind}"
        invoke(command(kind, out))
        refs[kind] = ActivationStore.load(store_of(kind, out))
    return command, invoke, refs


def store_of(kind: str, out: Path) -> Path:
    """Where the store of ``ihs extract --out OUT`` or ``ihs run --out OUT`` lies."""
    if kind == "extract":
        return out
    found = list(out.glob("*/extract/store"))
    return found[0] if found else out / "none"


def kill_somewhere(child: subprocess.Popen, rng: random.Random, phase: int, rows_at: list[float],
                   span: float) -> tuple[str, int]:
    """SIGKILL ``child`` at a seeded point: phases 0 and 2 after a random batch (plus up to one batch's
    sleep), phase 1 at a random time in 1.2 times an uninterrupted run, phase 3 after the last batch
    (writing the last shard, or ``ihs run``'s later steps). Returns where, and the rows seen computed."""
    computed = 0
    if phase == 1:
        delay = rng.uniform(0.0, 1.2 * span)
        time.sleep(delay)
        where = f"at {delay:.2f} s"
    else:
        target = rng.randint(1, N // BATCH) * BATCH if phase in (0, 2) else N
        for line in child.stdout:
            if line.startswith("rows"):
                computed = int(line.split()[1])
                if computed >= target:
                    break
        extra = rng.uniform(0.0, SLEEP) if phase in (0, 2) else rng.uniform(0.0, max(0.1, span - rows_at[-1]))
        time.sleep(extra)
        where = f"{extra:.2f} s after row {target}"
    child.send_signal(signal.SIGKILL)
    return where, computed


@pytest.mark.parametrize("kind", ["extract", "run"])
def test_kill9_at_random_points_then_rerun(tmp_path, cli, kind):
    command, invoke, refs = cli
    reference = refs[kind]
    rng = random.Random(f"{SEED}-{kind}")
    timing = start_child(tmp_path, tmp_path / "timing", SLEEP, command(kind, tmp_path / "timing"))
    wait_for(timing, "ready")
    t0, rows_at = time.monotonic(), []
    for line in timing.stdout:  # when an uninterrupted child computes its batches, and when it ends
        if line.startswith("rows"):
            rows_at.append(time.monotonic() - t0)
        if line.startswith("finished"):
            break
    span = time.monotonic() - t0
    timing.wait()
    started, trials, worst_lost, outcomes = time.monotonic(), 0, 0, []
    while (trials < TRIALS) if TRIALS else (trials < MIN_TRIALS or time.monotonic() - started < TRIAL_BUDGET_S):
        out = tmp_path / f"t{trials}"
        child = start_child(tmp_path, out, SLEEP, command(kind, out))
        wait_for(child, "ready")
        where, computed = kill_somewhere(child, rng, trials % 4, rows_at, span)
        rest = child.stdout.read()
        child.wait()
        computed = max([computed] + [int(x.split()[1]) for x in rest.splitlines() if x.startswith("rows")])
        store, kept = store_of(kind, out), 0
        if (store / "manifest.json").exists():
            partial = ActivationStore.load(store, allow_partial=True)
            rows = [r["row"] for r in partial.records]
            assert len(rows) == len(set(rows))
            kept = len(rows)
        lost = computed - kept if child.returncode == -9 else 0
        worst_lost = max(worst_lost, lost)
        outcomes.append(f"{where}: {'killed' if child.returncode == -9 else 'finished'},"
                        f"{computed} computed,{kept} on disk")
        output = invoke(command(kind, out))  # the re-run must succeed
        store = store_of(kind, out)
        assert store_problem(store) is None and not (store / ".lock").exists()
        resumed = ActivationStore.load(store)
        assert resumed.ids == reference.ids and len(set(resumed.ids)) == N
        # equal up to float32 rounding: a resumed run's batches can differ from the uninterrupted run's
        np.testing.assert_allclose(resumed.hidden, reference.hidden, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(resumed.lens_ids, reference.lens_ids)
        if kind == "run":
            assert "failed" not in output and list(out.glob("*/probe/*")), output
        trials += 1
    print(f"\nkill -9 of ihs {kind}: {trials} trials (seed {SEED}-{kind}; uninterrupted: batches at "
          f"{rows_at[0]:.2f}..{rows_at[-1]:.2f} s, end at {span:.2f} s); "
          f"most rows lost to one kill: "
          f"{worst_lost} (shard {SHARD_ROWS} rows, batch {BATCH}); " + "; ".join(outcomes))
    assert worst_lost <= SHARD_ROWS + BATCH


def test_two_writers_one_refuses(tmp_path, reference):
    out = tmp_path / "s"
    hold = Path(f"{out}.hold")
    hold.write_text("")
    first = start_child(tmp_path, out, sleep=0.0)
    wait_for(first, "rows")  # the first holds the lock now, and waits while the hold file exists
    second = start_child(tmp_path, out, sleep=0.0)
    second_out = second.communicate(timeout=300)[0]
    hold.unlink()
    first_out = first.communicate(timeout=120)[0]
    assert second.returncode == 3 and "being written by pid" in second_out, second_out
    assert first.returncode == 0 and "finished" in first_out
    assert store_problem(out) is None
    np.testing.assert_allclose(ActivationStore.load(out).hidden, reference.hidden, rtol=1e-5, atol=1e-6)
    with pytest.raises(StoreError, match="incomplete|missing"):
        (out / "shards" / "shard-000001.safetensors").unlink()
        (out / "manifest.json").write_text((out / "manifest.json").read_text().replace('"complete"', '"in_progress"'))
        ActivationStore.load(out)
