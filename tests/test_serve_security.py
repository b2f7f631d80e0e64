"""The guard service's HTTP hardening: JSON only, bounded bodies, token budgets per request and per client,
timeout, API key, headers, no CDN."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import make_tiny
from ihs.errors import IhsError
from ihs.guard import Guard
from ihs.guard.http_security import body_problem, read_api_key
from ihs.guard.serve import ClientBudget, ServeLimits, client_id, create_app

KEY = "k" * 24


@pytest.fixture(scope="module")
def guard():
    lm = make_tiny("llama", num_layers=3)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, lm.hidden_size))
    y = np.arange(40) % 2
    X[y == 1, 0] += 3
    return Guard.fit_states(X, y, layer=2, calibration=X[y == 0], model=lm).attach(lm)


@pytest.fixture(scope="module")
def client(guard):
    with TestClient(create_app(guard, ServeLimits(max_request_tokens=200, max_prompt_chars=2000,
                                                  max_prompt_tokens=1000))) as c:
        yield c


def test_json_only(client):
    ok = client.post("/v1/score", json={"prompts": ["hello there"]})
    assert ok.status_code == 200
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = client.post("/v1/score", content=b'{"prompts": ["hi"]}', headers=headers)
        assert r.status_code == 415, headers
    r = client.post("/v1/score", content=b'{"prompts": ["hi"]}', headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


@pytest.mark.parametrize("body", [b"[" * 50_000 + b"]" * 50_000, b'{"prompts": ' + b"[" * 40 + b"]" * 40 + b"}",
                                  b'{"prompts": [' + b"1," * 20_000 + b"1]}"])
def test_deep_or_huge_bodies_are_422(client, body):
    r = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (413, 422) and "detail" in r.json()


def test_body_problem_ignores_brackets_in_strings():
    assert body_problem(b'{"prompts": ["' + b"[" * 100 + b'"]}') is None
    assert body_problem(b'{"prompts": ["\\"' + b"[" * 100 + b'"]}') is None
    assert "deeper" in body_problem(b"[" * 33 + b"]" * 33)
    assert body_problem(b"[" * 32 + b"]" * 32) is None


def test_token_budget_per_request(client):
    r = client.post("/v1/score", json={"prompts": ["word " * 60, "word " * 60, "word " * 60]})
    assert r.status_code == 413 and "budget" in r.json()["detail"]


def test_security_headers_and_no_cdn_docs(client):
    r = client.get("/healthz")
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    assert "api_key" not in r.json()["limits"]


def test_api_key(guard, tmp_path, monkeypatch):
    with TestClient(create_app(guard, ServeLimits(api_key=KEY))) as c:
        assert c.post("/v1/score", json={"prompts": ["hi"]}).status_code == 401
        assert c.get("/healthz").status_code == 401
        bad = c.post("/v1/score", json={"prompts": ["hi"]}, headers={"authorization": "Bearer " + "x" * 24})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/score", json={"prompts": ["hi"]}, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/v1/score", json={"prompts": ["hi"]}, headers={"x-api-key": KEY}).status_code == 200
        assert "api_key" not in c.get("/healthz", headers={"x-api-key": KEY}).json()["limits"]
    (tmp_path / "key").write_text(KEY + "\n")
    assert read_api_key(tmp_path / "key") == KEY
    monkeypatch.setenv("IHS_API_KEY", KEY)
    assert read_api_key() == KEY
    monkeypatch.delenv("IHS_API_KEY")
    assert read_api_key() is None
    (tmp_path / "short").write_text("abc")
    with pytest.raises(IhsError, match="16"):
        read_api_key(tmp_path / "short")
    with pytest.raises(IhsError, match="cannot be read"):
        read_api_key(tmp_path / "absent")


def test_timeout_answers_503(guard):
    import time

    app = create_app(guard, ServeLimits(request_timeout_s=0.2))
    batcher = app.state.batcher
    real = batcher._score

    def sleepy(jobs):
        time.sleep(0.6)
        real(jobs)

    batcher._score = sleepy
    with TestClient(app) as c:
        r = c.post("/v1/score", json={"prompts": ["hi"]})
    assert r.status_code == 503 and "took over" in r.json()["detail"]


# -- per-client token budget ------------------------------------------------------------------------------------

PROMPT = "please score this prompt"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_budget_buckets_refill_and_memory_is_bounded():
    clock = FakeClock()
    budget = ClientBudget(10, 100, max_clients=3, clock=clock)
    assert budget.take("a", 60) is None and budget.take("a", 40) is None
    assert budget.take("a", 5) == pytest.approx(0.5)  # empty: 5 tokens at 10/s
    assert budget.take("b", 100) is None  # another client has its own bucket
    assert budget.take("a", 101) == float("inf")  # over the burst: never
    clock.now += 2
    assert budget.take("a", 20, charge=False) is None and budget.take("a", 21) == pytest.approx(0.1)
    assert budget.take("a", 20) is None and budget.take("a", 1) is not None
    for name in "cdef":
        budget.take(name, 1)
    assert len(budget) == 3  # at most max_clients buckets: the least recently seen are dropped
    clock.now += 10  # idle for burst / rate: every bucket is full again, so none is kept
    assert budget.take("g", 1) is None and len(budget) == 1
    off = ClientBudget(0, 100, clock=clock)
    assert not off.enabled and all(off.take("a", 10**6) is None for _ in range(100)) and len(off) == 0
    assert ClientBudget(10, 0).take("a", 10**6) is None


def test_client_identity_is_the_key_when_keys_are_configured():
    from starlette.requests import Request

    def request(address: str, headers: list) -> Request:
        return Request({"type": "http", "headers": headers, "client": (address, 1234)})

    assert client_id(request("10.0.0.1", []), None) != client_id(request("10.0.0.2", []), None)
    bearer = [(b"authorization", b"Bearer " + KEY.encode())]
    assert client_id(request("10.0.0.1", bearer), KEY) == client_id(request("10.0.0.2", [(b"x-api-key", KEY.encode())]), KEY)
    assert KEY not in client_id(request("10.0.0.1", bearer), KEY)


def test_client_over_budget_gets_429_while_another_is_served(guard):
    n = sum(len(f.ids) for f in guard.format([PROMPT]))
    app = create_app(guard, ServeLimits(client_tokens_per_s=n, client_burst_tokens=3 * n))
    clock = app.state.budget.clock = FakeClock()
    with TestClient(app, client=("10.0.0.1", 1111)) as a:
        b = TestClient(app, client=("10.0.0.2", 2222))  # shares a's app (and its running worker)
        for _ in range(3):
            assert a.post("/v1/score", json={"prompts": [PROMPT]}).status_code == 200
        refused = a.post("/v1/score", json={"prompts": [PROMPT]})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
        assert "token budget" in refused.json()["detail"]
        clock.now += 0.5  # half a request's worth: two prompts pass the empty-bucket check, then the worker refuses
        again = a.post("/v1/score", json={"prompts": [PROMPT, PROMPT]})
        assert again.status_code == 429 and again.headers["retry-after"] == "2"  # (2n - n/2) / n = 1.5 s
        clock.now += 0.5  # the refusals cost nothing: now exactly one request's worth
        served = b.post("/v1/score", json={"prompts": [PROMPT]})
        assert served.status_code == 200 and served.json()["results"][0]["n_tokens"] == n
        assert a.post("/v1/score", json={"prompts": [PROMPT]}).status_code == 200
        assert a.post("/v1/score", json={"prompts": [PROMPT]}).status_code == 429
        clock.now += 3.0
        assert a.post("/v1/score", json={"prompts": [PROMPT] * 3}).status_code == 200  # the whole burst
        clock.now += 3.0
        too_big = a.post("/v1/score", json={"prompts": [PROMPT] * 4})
        assert too_big.status_code == 413 and "burst" in too_big.json()["detail"]  # waiting would never help
        health = a.get("/healthz").json()
        assert health["stats"]["over_budget"] >= 2 and health["clients"] == 1  # b, idle for burst / rate s, is forgotten
        assert health["limits"]["client_burst_tokens"] == 3 * n
    responses = app.openapi()["paths"]["/v1/score"]["post"]["responses"]
    assert "Retry-After" in responses["429"]["headers"]


@pytest.mark.parametrize("limits", [{"client_tokens_per_s": 0}, {"client_burst_tokens": 0}])
def test_disabled_budget_never_refuses(guard, limits):
    n = sum(len(f.ids) for f in guard.format([PROMPT]))
    app = create_app(guard, ServeLimits(**{"client_tokens_per_s": 1e-3, "client_burst_tokens": n, **limits}))
    with TestClient(app) as c:
        codes = {c.post("/v1/score", json={"prompts": [PROMPT] * 4}).status_code for _ in range(12)}
    assert codes == {200} and len(app.state.budget) == 0


# -- schemathesis against the real server on loopback (bounded in examples and time) --------------------------

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from ihs.guard.serve import BackgroundServer  # noqa: E402


def test_fuzzed_requests_never_get_a_server_error(guard):
    """Every operation of the OpenAPI schema, 25 generated requests each, against uvicorn on loopback: never a
    5xx, and every status, content type and body is one the schema documents."""
    from hypothesis import given

    limits = ServeLimits(max_prompts=4, max_prompt_chars=200)
    with BackgroundServer(create_app(guard, limits)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert operations

        for operation in operations:
            @given(operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call(base_url=url, timeout=30)
                case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                         content_type_conformance, response_schema_conformance])
                assert response.status_code in (200, 405, 413, 415, 422), (response.status_code, response.text)
                assert response.headers.get("x-content-type-options") == ["nosniff"]

            check()


def test_slow_senders_are_cut_off_and_good_clients_still_answered(guard):
    """Slowloris (headers never finished) is closed after header_timeout_s; a body trickled one byte at a time
    gets 408 after body_timeout_s; a good request meanwhile is answered at once (real uvicorn on loopback)."""
    import socket
    import time

    import httpx

    from ihs.guard.serve import BackgroundServer

    limits = ServeLimits(header_timeout_s=1.0, body_timeout_s=1.0)
    with BackgroundServer(create_app(guard, limits)) as url:
        port = int(url.rsplit(":", 1)[1])
        loris = socket.create_connection(("127.0.0.1", port))
        loris.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\n")
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        t0 = time.monotonic()
        assert httpx.post(url + "/v1/score", json={"prompts": ["hello"]}, timeout=30).status_code == 200
        loris.settimeout(10)
        slow.settimeout(10)
        loris.sendall(b"X-Slow: 1\r\n")
        assert loris.recv(100) == b""  # closed without an answer
        answer = b""
        while chunk := slow.recv(4096):  # the answer, then the server closes the connection
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in answer, answer
        assert time.monotonic() - t0 < 8
        loris.close()
        slow.close()
