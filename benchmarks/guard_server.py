"""Latency per prompt and throughput of `ihs guard serve`, measured over loopback HTTP.

Starts the real service (``ihs guard serve GUARD --port P`` in a subprocess), waits for /healthz,
then runs three phases with built-in prompts (normal and malicious, alternating):

1. sequential: one client, one prompt per request -> latency per prompt (median, p90);
2. concurrent: ``--clients`` clients, one prompt per request -> throughput (prompts/s), latency,
   and the mean number of prompts per forward pass (the micro-batching at work, from /healthz);
3. batched requests: one client, ``--batch`` prompts per request -> throughput.

    .venv/bin/python benchmarks/guard_server.py --guard runs/guard/smollm2-builtin \
        --out benchmarks/results/guard_server_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def start_server(guard: str) -> tuple[subprocess.Popen, int, str, float]:
    """``ihs guard serve GUARD`` on a free loopback port, waited for until healthy: (process, port, url, seconds)."""
    port = free_port()
    ihs_bin = str(Path(sys.executable).with_name("ihs"))
    proc = subprocess.Popen([ihs_bin, "guard", "serve", guard, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return proc, port, url, time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    except BaseException:
        proc.terminate()
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", required=True)
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=400)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batched-requests", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from ihs.data.prepare import prepare

    records, _ = prepare(["normal=builtin:normal", "malicious=builtin:malicious"], limit=200)
    prompts = [r.text for r in records]
    proc, _, url, startup = start_server(args.guard)
    try:
        health0 = httpx.get(url + "/healthz").json()

        with httpx.Client(base_url=url, timeout=120) as http:
            for p in prompts[:4]:  # warm-up
                http.post("/v1/score", json={"prompts": [p]})
            seq = []
            for i in range(args.sequential):
                t = time.perf_counter()
                r = http.post("/v1/score", json={"prompts": [prompts[i % len(prompts)]]})
                seq.append(time.perf_counter() - t)
                r.raise_for_status()

        stats_before = httpx.get(url + "/healthz").json()["stats"]
        lat: list[float] = []
        lock = threading.Lock()

        def client(w: int) -> None:
            with httpx.Client(base_url=url, timeout=300) as http:
                for i in range(w, args.concurrent, args.clients):
                    t = time.perf_counter()
                    r = http.post("/v1/score", json={"prompts": [prompts[i % len(prompts)]]})
                    r.raise_for_status()
                    with lock:
                        lat.append(time.perf_counter() - t)

        t = time.perf_counter()
        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        conc_wall = time.perf_counter() - t
        stats_after = httpx.get(url + "/healthz").json()["stats"]
        batches = stats_after["batches"] - stats_before["batches"]

        with httpx.Client(base_url=url, timeout=300) as http:
            t = time.perf_counter()
            for i in range(args.batched_requests):
                chunk = [prompts[(i * args.batch + j) % len(prompts)] for j in range(args.batch)]
                http.post("/v1/score", json={"prompts": chunk}).raise_for_status()
            batched_wall = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    result = {
        "guard": args.guard, "model": health0["model"], "layer": health0["layer"], "num_layers": health0["num_layers"],
        "server_startup_seconds": startup, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sequential": {"requests": len(seq), "latency_median_ms": 1000 * statistics.median(seq),
                       "latency_p90_ms": 1000 * pct(seq, 0.9), "prompts_per_s": len(seq) / sum(seq)},
        "concurrent": {"clients": args.clients, "requests": args.concurrent, "wall_seconds": conc_wall,
                       "prompts_per_s": args.concurrent / conc_wall,
                       "latency_median_ms": 1000 * statistics.median(lat), "latency_p90_ms": 1000 * pct(lat, 0.9),
                       "forward_passes": batches, "mean_prompts_per_pass": args.concurrent / max(batches, 1)},
        "batched_requests": {"prompts_per_request": args.batch, "requests": args.batched_requests,
                             "prompts_per_s": args.batch * args.batched_requests / batched_wall},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
