"""Good clients against `ihs guard serve` while hostile clients attack it, over loopback HTTP.

Starts the real service (``ihs guard serve GUARD --port P`` in a subprocess), scores every prompt of a
pool once on a quiet server (the reference answers), then runs three timed phases with the same
good clients (one prompt per request, back to back, built-in normal and malicious prompts):

1. ``quiet``: the good clients alone;
2. ``abusive``: the good clients while hostile clients send, as fast as they can, bodies nested
   50,000 levels deep, 2 MB bodies (with a Content-Length and chunked without one), valid JSON as
   ``text/plain`` and without a content type, and while slow senders hold connections: slowloris
   clients that send a header line every few seconds and never finish, and slow-body clients that
   send their headers, then one byte of the body every few seconds;
3. ``flood``: as ``abusive``, plus many concurrent clients sending valid requests back to back.

A good answer is correct when its status is 200 and its probability equals the reference answer's
(1e-4; batching moves it by about 1e-6) with the same verdict. The result gives, per phase, the
good clients' success rate and latency (p50, p95, max), every hostile kind's status codes (or
``closed`` / ``open`` for slow senders: closed by the server, or still open at the end), and the
server's open file descriptors, resident memory and counters (/healthz).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/guard_hostile_load.py --guard runs/hostile/guard-smollm2 \
        --out benchmarks/results/guard_hostile_smollm2.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from guard_server import start_server

DEEP = b'{"prompts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
BIG = json.dumps({"prompts": ["x" * 1000] * 2000}).encode()  # about 2 MB


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def server_resources(pid: int) -> dict[str, int | None]:
    """Open file descriptors and resident memory (kB) of the server process (Linux /proc)."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return {"open_fds": None, "rss_kb": None}
    return {"open_fds": fds, "rss_kb": rss}


class Phase:
    """Shared state of one timed phase: a stop flag and the results of every client."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.good: list[tuple[float, int, bool]] = []  # (latency s, status, correct)
        self.hostile: dict[str, Counter] = {}
        self.flood: list[tuple[float, int]] = []  # (latency s, status) of flooding clients

    def count(self, kind: str, outcome: object) -> None:
        with self.lock:
            self.hostile.setdefault(kind, Counter())[str(outcome)] += 1


def good_client(url: str, prompts: list[str], ref: dict[str, dict], phase: Phase, start: int) -> None:
    with httpx.Client(base_url=url, timeout=300) as http:
        for i in itertools.count(start):
            if phase.stop.is_set():
                return
            p = prompts[i % len(prompts)]
            t = time.perf_counter()
            try:
                r = http.post("/v1/score", json={"prompts": [p]})
                status = r.status_code
                got = r.json()["results"][0] if status == 200 else None
            except (httpx.HTTPError, ValueError, KeyError):
                status, got = -1, None
            latency = time.perf_counter() - t
            want = ref[p]
            ok = got is not None and abs(got["probability"] - want["probability"]) <= 1e-4 \
                and got["malicious"] == want["malicious"]
            with phase.lock:
                phase.good.append((latency, status, ok))


def flood_client(url: str, prompts: list[str], phase: Phase, start: int) -> None:
    with httpx.Client(base_url=url, timeout=300) as http:
        for i in itertools.count(start):
            if phase.stop.is_set():
                return
            t = time.perf_counter()
            try:
                status = http.post("/v1/score", json={"prompts": [prompts[i % len(prompts)]]}).status_code
            except httpx.HTTPError:
                status = -1
            with phase.lock:
                phase.flood.append((time.perf_counter() - t, status))


def chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


HOSTILE: dict[str, Callable[[httpx.Client], httpx.Response]] = {
    "deep_json": lambda h: h.post("/v1/score", content=DEEP, headers={"content-type": "application/json"}),
    "oversize_declared": lambda h: h.post("/v1/score", content=BIG, headers={"content-type": "application/json"}),
    "oversize_chunked": lambda h: h.post("/v1/score", content=chunks(BIG), headers={"content-type": "application/json"}),
    "text_plain": lambda h: h.post("/v1/score", content=b'{"prompts": ["hi"]}', headers={"content-type": "text/plain"}),
    "no_content_type": lambda h: h.post("/v1/score", content=b'{"prompts": ["hi"]}', headers={"content-type": ""}),
}


def hostile_client(url: str, kind: str, phase: Phase, rate: float) -> None:
    """Send ``kind`` requests at ``rate`` per second (0: back to back) until the phase stops."""
    send = HOSTILE[kind]
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as http:  # reconnects when the server closes the connection
        for i in itertools.count():
            if rate > 0:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            if phase.stop.is_set():
                return
            try:
                phase.count(kind, send(http).status_code)
            except httpx.HTTPError as exc:
                phase.count(kind, type(exc).__name__)


def attacker(url: str, port: int, kinds: list[str], rate: float, flood: int, prompts: list[str], seconds: float,
             args: dict, results) -> None:
    """The hostile clients of one phase, in a process of their own (their CPU and GIL are not the good
    clients'): every kind in ``kinds`` and ``flood`` flooding clients, for ``seconds``; puts what they saw
    on ``results``."""
    phase = Phase()
    threads = [threading.Thread(target=hostile_client, args=(url, kind, phase, rate)) for kind in HOSTILE
               if kind in kinds]
    if "slow" in kinds:
        threads.append(threading.Thread(target=slow_senders, args=(port, phase), kwargs=args))
    threads += [threading.Thread(target=flood_client, args=(url, prompts, phase, 11 * w)) for w in range(flood)]
    for th in threads:
        th.start()
    time.sleep(seconds)
    phase.stop.set()
    for th in threads:
        th.join()
    results.put({"hostile": {k: dict(v) for k, v in sorted(phase.hostile.items())}, "flood": phase.flood})


def slow_senders(port: int, phase: Phase, *, slowloris: int, slow_body: int, every_s: float) -> None:
    """Hold ``slowloris`` connections that never finish their headers and ``slow_body`` ones that send a
    body one byte at a time; every ``every_s`` seconds each sends one more line or byte. Counts how each
    ended: an HTTP status, ``closed`` (by the server, no answer) or ``open`` at the end of the phase."""
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, dict] = {}
    for i in range(slowloris + slow_body):
        kind = "slowloris" if i < slowloris else "slow_body"
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            phase.count(kind, f"connect failed: {type(exc).__name__}")
            continue
        s.setblocking(False)
        head = b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if kind == "slow_body":
            head += b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        s.sendall(head)
        conns[s] = {"kind": kind, "opened": time.monotonic(), "data": b""}
        sel.register(s, selectors.EVENT_READ)
    last = time.monotonic()
    while conns and not phase.stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            c = conns[s]
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            c["data"] += data
            if data and b"\r\n" not in c["data"]:
                continue
            head = c["data"].split(b"\r\n", 1)[0].split()  # an answer's status line, or nothing: closed
            outcome = int(head[1]) if len(head) > 1 and head[1].isdigit() else "closed"
            phase.count(c["kind"], outcome)
            phase.count(c["kind"] + "_seconds_to_end", round(time.monotonic() - c["opened"]))
            sel.unregister(s)
            s.close()
            del conns[s]
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            for s, c in list(conns.items()):
                try:
                    s.send(b"X-Slow: 1\r\n" if c["kind"] == "slowloris" else b" ")
                except OSError:
                    pass
    for s, c in conns.items():
        phase.count(c["kind"], "open")
        s.close()


def run_phase(name: str, url: str, port: int, prompts: list[str], ref: dict[str, dict], args, pid: int) -> dict:
    import multiprocessing as mp

    phase = Phase()
    threads = [threading.Thread(target=good_client, args=(url, prompts, ref, phase, 7 * w))
               for w in range(args.good_clients)]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    attackers = []
    if name != "quiet":
        slow = dict(slowloris=args.slowloris, slow_body=args.slow_body, every_s=args.slow_every_s)
        attackers.append(ctx.Process(target=attacker, args=(url, port, args.hostile.split(","), args.hostile_rate, 0,
                                                            prompts, args.duration, slow, results)))
    if name == "flood":
        attackers.append(ctx.Process(target=attacker, args=(url, port, [], 0, args.flood_clients, prompts,
                                                            args.duration, {}, results)))
    before = httpx.get(url + "/healthz", timeout=60).json()["stats"]
    for a in attackers:
        a.start()
    time.sleep(2.0 if attackers else 0.0)  # the attackers' interpreters start before the good clients do
    for th in threads:
        th.start()
    time.sleep(args.duration * 0.8)
    during = server_resources(pid)  # while the slow senders hold their connections
    time.sleep(args.duration * 0.2)
    phase.stop.set()
    for th in threads:
        th.join()
    seen = [results.get(timeout=300) for _ in attackers]
    for a in attackers:
        a.join()
    after = httpx.get(url + "/healthz", timeout=60).json()["stats"]
    lat = [x[0] for x in phase.good]
    ok = [x for x in phase.good if x[2]]
    result = {
        "seconds": args.duration,
        "good": {"clients": args.good_clients, "requests": len(phase.good),
                 "correct": len(ok), "success_rate": len(ok) / max(1, len(phase.good)),
                 "statuses": dict(Counter(str(x[1]) for x in phase.good)),
                 "latency_p50_ms": 1000 * statistics.median(lat) if lat else None,
                 "latency_p95_ms": 1000 * pct(lat, 0.95) if lat else None,
                 "latency_max_ms": 1000 * max(lat) if lat else None,
                 "prompts_per_s": len(ok) / args.duration},
        "hostile": {k: v for r in seen for k, v in r["hostile"].items()},
        "server_during": during,
        "server_counters": {k: after[k] - before[k] for k in ("requests", "prompts", "batches")},
    }
    flood = [x for r in seen for x in r["flood"]]
    if flood:
        fl = [x[0] for x in flood]
        result["flood"] = {"clients": args.flood_clients, "requests": len(fl),
                           "statuses": dict(Counter(str(x[1]) for x in flood)),
                           "latency_p50_ms": 1000 * statistics.median(fl), "latency_p95_ms": 1000 * pct(fl, 0.95)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=float, default=60.0, help="Seconds per phase.")
    ap.add_argument("--good-clients", type=int, default=4)
    ap.add_argument("--flood-clients", type=int, default=32)
    ap.add_argument("--slowloris", type=int, default=300)
    ap.add_argument("--slow-body", type=int, default=100)
    ap.add_argument("--slow-every-s", type=float, default=5.0)
    ap.add_argument("--pool", type=int, default=24, help="Good prompts (half normal, half malicious).")
    ap.add_argument("--phases", default="quiet,abusive,flood")
    ap.add_argument("--hostile-rate", type=float, default=10.0,
                    help="Requests per second of each hostile kind (0: back to back, as fast as the server answers).")
    ap.add_argument("--hostile", default=",".join([*HOSTILE, "slow"]), help="Hostile kinds of the abusive phases.")
    args = ap.parse_args()

    from ihs.data.prepare import prepare
    from ihs.io import write_json

    records, _ = prepare(["normal=builtin:normal", "malicious=builtin:malicious"], limit=args.pool // 2)
    prompts = [r.text for r in records]
    proc, port, url, startup = start_server(args.guard)
    phases: dict[str, dict] = {}
    try:
        health = httpx.get(url + "/healthz").json()
        ref: dict[str, dict] = {}
        with httpx.Client(base_url=url, timeout=300) as http:  # reference answers, one prompt at a time
            for p in prompts:
                r = http.post("/v1/score", json={"prompts": [p]})
                r.raise_for_status()
                ref[p] = r.json()["results"][0]
        for name in args.phases.split(","):
            phases[name] = run_phase(name, url, port, prompts, ref, args, proc.pid)
            print(name, json.dumps(phases[name]), flush=True)
        alive = proc.poll() is None and httpx.get(url + "/healthz", timeout=60).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = {
        "guard": args.guard, "model": health["model"], "layer": health["layer"], "kind": health.get("kind"),
        "num_layers": health["num_layers"], "server_command": ["ihs", "guard", "serve", args.guard, "--port", str(port)], "limits": health["limits"],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "server_startup_seconds": startup,
        "load_average_at_end": os.getloadavg(), "good_prompts": len(prompts),
        "malicious_in_reference": sum(r["malicious"] for r in ref.values()),
        "hostile_clients": {"deep_json": "50,000 levels", "oversize": f"{len(BIG)} bytes",
                            "slowloris": args.slowloris, "slow_body": args.slow_body,
                            "slow_every_s": args.slow_every_s, "flood_clients": args.flood_clients,
                            "requests_per_s_per_kind": args.hostile_rate},
        "server_alive_at_end": alive, "phases": phases,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
