"""Stop a running alignment job once a given checkpoint is exported, recording its time and peak memory.

Used when a run must end early (a shared machine, a deadline)::

    .venv/bin/python scripts/align_stop.py --run-dir runs/align/gemma-sft/run --pid PID --step 30 \
        --out runs/align/gemma-sft/stopped.json

It waits for ``RUN/checkpoints/step-NNNNNN/ihs_align.json``, reads the process's peak resident memory
(``VmHWM`` in /proc/PID/status), sends it SIGTERM, and writes the checkpoints' export times, the
wall seconds from the step-0 export to the last one, seconds per step and the load average.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from datetime import datetime
from pathlib import Path

from ihs.align import list_checkpoints
from ihs.io import read_json, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--deadline", default=None,
                        help="HH:MM (local clock): stop then even if step --step is not exported yet (the run keeps "
                             "its last exported checkpoint and trainer state and can be resumed)")
    args = parser.parse_args()
    target = Path(args.run_dir) / "checkpoints" / f"step-{args.step:06d}" / "ihs_align.json"
    while not target.is_file():
        if args.deadline and datetime.now().strftime("%H:%M") >= args.deadline:
            break
        time.sleep(5)
    status = Path(f"/proc/{args.pid}/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    os.kill(args.pid, signal.SIGTERM)
    stamps = {step: read_json(folder / "ihs_align.json")["created_at"] for step, folder in
              list_checkpoints(args.run_dir)}
    times = {s: datetime.fromisoformat(t) for s, t in stamps.items()}
    first, last = min(times), max(times)
    wall = (times[last] - times[first]).total_seconds()
    log = [r for r in read_json_lines(Path(args.run_dir) / "log.jsonl")
           if r.get("loss") is not None and int(r.get("step", 0)) <= last]
    write_json(args.out, {
        "command": f".venv/bin/python scripts/align_stop.py --run-dir {args.run_dir} --pid PID --step {args.step} "
                   f"--out {args.out}" + (f" --deadline {args.deadline}" if args.deadline else ""),
        "stopped_at_step": max(stamps) if stamps else None, "asked_step": args.step,
        "deadline": args.deadline, "checkpoints": stamps, "wall_seconds": wall,
        "seconds_per_step": round(wall / max(last - first, 1), 1), "peak_rss_mib": round(peak_kb / 1024, 1),
        "loss_first": log[0]["loss"] if log else None, "loss_last": log[-1]["loss"] if log else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "note": "wall time runs from the step-0 export to the last export (model loading and data building "
                "are not counted); the machine's 2 cores were shared with other jobs",
    })


def read_json_lines(path: Path) -> list[dict]:
    from ihs.io import read_jsonl

    return read_jsonl(path) if path.is_file() else []


if __name__ == "__main__":
    main()
