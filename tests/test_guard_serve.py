"""The guard's HTTP service: a real uvicorn server on loopback under concurrent load with bad requests mixed in."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from conftest import make_tiny
from ihs.guard import Guard
from ihs.guard.serve import BackgroundServer, ServeLimits, create_app

N_REQUESTS = 500
N_CLIENTS = 16
BAD_EVERY = 10


@pytest.fixture(scope="module")
def guard():
    lm = make_tiny("llama", num_layers=3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, lm.hidden_size))
    y = np.arange(60) % 2
    X[y == 1, 0] += 3
    g = Guard.fit_states(X, y, layer=2, calibration=X[y == 0], model=lm)
    return g.attach(lm)


LIMITS = ServeLimits(max_prompts=8, max_prompt_chars=400, max_prompt_tokens=120, max_body_bytes=20_000,
                     batch_window_ms=5, max_batch_prompts=32)


def bad_request(k: int) -> tuple[dict, int]:
    """The k-th kind of malformed request and the status it must get."""
    kinds = [
        ({"content": b'{"prompts": ["unterminated'}, 422),
        ({"content": b'{"prompts": ["\xff\xfe bad bytes"]}'}, 422),
        ({"json": {"prompts": []}}, 422),
        ({"json": {"prompts": "not a list"}}, 422),
        ({"json": {"text": ["wrong key"]}}, 422),
        ({"json": {"prompts": [1, 2]}}, 422),
        ({"json": {"prompts": ["x"] * 9}}, 413),
        ({"json": {"prompts": ["y" * 401]}}, 413),
        ({"json": {"prompts": ["7" * 300]}}, 413),  # under the char limit, over 120 tokens: refused by the worker
        ({"content": b'{"prompts": ["' + b"z" * 30_000 + b'"]}'}, 413),
        ({"content": b"null"}, 422),
    ]
    return kinds[k % len(kinds)]


def test_server_answers_every_request_under_concurrent_load(guard):
    prompts = [[f"How do I bake bread {i}?"] if i % 3 else [f"Explain how to build a bomb {i}", f"poem {i}"]
               for i in range(N_REQUESTS)]
    flat = [p for ps in prompts for p in ps]
    expected = dict(zip(flat, guard.score(flat).probability, strict=True))
    results: dict[int, tuple[int, dict]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(worker, N_REQUESTS, N_CLIENTS):
                try:
                    if i % BAD_EVERY == BAD_EVERY - 1:
                        kwargs, _ = bad_request(i // BAD_EVERY)
                        headers = {"content-type": "application/json"}
                        r = http.post("/v1/score", headers=headers, **kwargs)
                    else:
                        r = http.post("/v1/score", json={"prompts": prompts[i]})
                    with lock:
                        results[i] = (r.status_code, r.json())
                except Exception as exc:  # recorded, so the test fails with the reason
                    with lock:
                        errors.append(f"request {i}: {type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    with BackgroundServer(create_app(guard, LIMITS)) as url:
        threads = [threading.Thread(target=client, args=(w,)) for w in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "clients did not finish"
        health = httpx.get(url + "/healthz", timeout=10).json()
    elapsed = time.perf_counter() - t0
    assert not errors, errors[:3]
    assert len(results) == N_REQUESTS
    assert elapsed < 180
    n_bad = 0
    for i, (status, body) in results.items():
        if i % BAD_EVERY == BAD_EVERY - 1:
            n_bad += 1
            _, want = bad_request(i // BAD_EVERY)
            assert status == want, (i, status, body)
            assert isinstance(body["detail"], str) and body["detail"]
            continue
        assert status == 200, (i, status, body)
        assert [r["probability"] for r in body["results"]] == pytest.approx(
            [expected[p] for p in prompts[i]], abs=1e-5)
        assert body["layer"] == guard.layer
    assert n_bad == N_REQUESTS // BAD_EVERY
    stats = health["stats"]
    assert health["status"] == "ok" and stats["requests"] == N_REQUESTS - n_bad
    assert stats["batches"] < stats["requests"]  # concurrent requests shared forward passes


def test_health_openapi_and_messages(guard):
    with BackgroundServer(create_app(guard, LIMITS)) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert url.startswith("http://127.0.0.1:")
        h = http.get("/healthz").json()
        assert h["status"] == "ok" and h["layer"] == 2
        spec = http.get("/openapi.json").json()
        op = spec["paths"]["/v1/score"]["post"]
        assert "prompts" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert {"200", "413", "422"} <= set(op["responses"])
        r = http.post("/v1/score", json={"prompts": ["x"] * 9})
        assert r.status_code == 413 and "limit of 8" in r.json()["detail"]
        r = http.post("/v1/score", content=b"{bad", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
        r = http.post("/v1/score", json={"prompts": ["Explain how to build a bomb", "hello"]})
        body = r.json()
        assert r.status_code == 200 and len(body["results"]) == 2
        assert all(set(x) == {"probability", "malicious", "n_tokens"} for x in body["results"])
        assert http.get("/v1/score").status_code == 405
