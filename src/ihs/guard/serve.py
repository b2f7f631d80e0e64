"""The guard as an HTTP service: FastAPI app factory, micro-batching worker, uvicorn runner.

``POST /v1/score`` takes ``{"prompts": [...]}`` and answers one probability and verdict per
prompt; ``GET /healthz`` says the service is up and what it runs; ``/openapi.json`` and ``/docs``
describe it. One worker thread owns the model and the tokenizer: request handlers only validate
and queue, and the worker takes every request that arrives within ``batch_window_ms`` of the
first (up to ``max_batch_prompts`` prompts) into one early-exit forward pass.

Bad input never reaches the model and never takes the service down: a body over
``max_body_bytes``, more than ``max_prompts`` prompts, or a prompt over ``max_prompt_chars``
characters or ``max_prompt_tokens`` tokens get 413; malformed JSON, non-UTF-8 bytes, a wrong
shape or an empty list get 422; each with a one-line ``detail``. Slow senders hold a connection, never
the worker: a connection without a request's headers after ``header_timeout_s`` is closed, and a body
not received within ``body_timeout_s`` gets 408.

Each client has a token bucket (:class:`ClientBudget`): ``client_tokens_per_s`` tokens of formatted
prompt text per second, up to ``client_burst_tokens`` saved up. The worker charges a request's tokens
before scoring it; a request the bucket cannot pay gets 429 with ``Retry-After`` (the seconds until it
could), and costs nothing. A client is its API key when one is configured (so with one key, every
holder shares one bucket), else its address (behind a reverse proxy, or on loopback, every client has
the same address and so shares one bucket).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.special import expit

from ihs.guard.guard import Guard
from ihs.guard.http_security import MAX_JSON_DEPTH, body_problem, install_security

log = logging.getLogger(__name__)


@dataclass
class ServeLimits:
    """Request limits and batching settings of the service."""

    max_prompts: int = 64
    max_prompt_chars: int = 16000
    max_prompt_tokens: int = 2048
    max_body_bytes: int = 1_000_000
    batch_window_ms: float = 5.0
    max_batch_prompts: int = 64
    max_batch_tokens: int = 8192
    max_queue: int = 4096
    max_request_tokens: int = 16384  # tokens of one request after formatting, all prompts together (413 above)
    request_timeout_s: float = 60.0  # a request waiting longer for its scores gets 503
    max_json_depth: int = MAX_JSON_DEPTH  # deeper request bodies get 422 before decoding
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers by then is closed
    body_timeout_s: float = 10.0  # a request body not received in full by then gets 408
    api_key: str | None = field(default=None, repr=False)  # when set, every request needs it (401 without)
    client_tokens_per_s: float = 500.0  # each client's bucket refills this fast (tokens after formatting); 0 = off
    client_burst_tokens: int = 16384  # ... and holds at most this many (one request of max_request_tokens); 0 = off
    max_clients: int = 10_000  # buckets kept; idle clients whose bucket refilled are forgotten first


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(..., description="Prompts to score (raw user text; the guard applies the chat template).")


class PromptScore(BaseModel):
    probability: float = Field(..., description="P(malicious) from the probe.")
    malicious: bool = Field(..., description="probability > threshold (the guard's calibrated threshold).")
    n_tokens: int = Field(..., description="Tokens the model saw for this prompt (after formatting).")


class ScoreResponse(BaseModel):
    model: str
    layer: int
    kind: str
    threshold: float
    results: list[PromptScore]


class RequestError(Exception):
    """A request the service refuses, with its HTTP status (and, for 429, the seconds to wait)."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class ClientBudget:
    """Token buckets per client: ``rate`` tokens per second, at most ``burst`` saved up; off when either is 0.

    Memory is bounded: a client idle for ``burst / rate`` seconds has a full bucket again, which is
    the same as no entry, so it is forgotten; beyond ``max_clients`` the least recently seen client is
    forgotten too (it then starts again with a full bucket). Thread-safe; ``clock`` is replaceable for tests.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_clients, self.clock = float(rate), int(burst), max(1, int(max_clients)), clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when), oldest first
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, n: float, *, charge: bool = True) -> float | None:
        """Charge ``n`` tokens to ``client``: None when its bucket holds them (then they are spent unless
        ``charge`` is False), else the seconds until it will (``inf`` when ``n`` is over the burst)."""
        if not self.enabled:
            return None
        with self._lock:
            now = self.clock()
            full_after = self.burst / self.rate
            while self._buckets:  # forget clients idle long enough to be full again (oldest first)
                oldest, (_, when) = next(iter(self._buckets.items()))
                if now - when < full_after:
                    break
                del self._buckets[oldest]
            tokens, when = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - when) * self.rate)
            wait = None if n <= tokens else math.inf if n > self.burst else (n - tokens) / self.rate
            if wait is None and charge:
                tokens -= n
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


def client_id(request: Request, api_key: str | None) -> str:
    """Who a request counts against: its API key (hashed) when keys are configured, else its address."""
    if api_key is not None:
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        return "key:" + hashlib.sha256(given.encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "unknown")


@dataclass
class _Job:
    prompts: list[str]
    future: concurrent.futures.Future
    client: str = ""


class MicroBatcher:
    """One thread that owns the model: gathers queued requests into batches and scores them."""

    def __init__(self, guard: Guard, limits: ServeLimits, budget: ClientBudget | None = None) -> None:
        self.guard = guard
        self.limits = limits
        self.budget = budget if budget is not None else ClientBudget(0, 0)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=limits.max_queue)
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "prompts": 0, "batches": 0, "busy_seconds": 0.0, "largest_batch": 0,
                      "over_budget": 0}

    def start(self) -> MicroBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ihs-guard-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, prompts: list[str], client: str = "") -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait(_Job(prompts, fut, client))
        except queue.Full:
            fut.set_exception(RequestError(503, "the service is overloaded (queue full); retry later"))
        return fut

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.prompts)
        deadline = time.perf_counter() + self.limits.batch_window_ms / 1000
        while n < self.limits.max_batch_prompts:
            wait = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            n += len(job.prompts)
        return jobs, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            try:
                self._score(jobs)
            except Exception as exc:  # never let one bad batch kill the worker
                log.exception("guard worker failed on a batch")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RequestError(500, f"scoring failed: {type(exc).__name__}: {exc}"))
            if stop:
                return

    def _score(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        guard = self.guard
        live: list[tuple[_Job, list[Any]]] = []
        for job in jobs:
            if job.future.done():  # cancelled: its request timed out while queued
                continue
            formatted = guard.format(job.prompts)
            total = sum(len(f.ids) for f in formatted)
            if total > self.limits.max_request_tokens:
                job.future.set_exception(RequestError(413, f"request is {total} tokens after formatting, over the "
                                                           f"budget of {self.limits.max_request_tokens} per request"))
                continue
            long = [(i, len(f.ids)) for i, f in enumerate(formatted) if len(f.ids) > self.limits.max_prompt_tokens]
            if long:
                i, n = long[0]
                job.future.set_exception(RequestError(
                    413, f"prompt {i} is {n} tokens after formatting, over the limit of {self.limits.max_prompt_tokens}"))
                continue
            wait = self.budget.take(job.client, total)
            if wait is not None:
                self.stats["over_budget"] += 1
                job.future.set_exception(over_budget(total, wait, self.budget))
                continue
            live.append((job, formatted))
        if not live:
            return
        ids = [f.ids for _, fs in live for f in fs]
        decision = guard.decision_ids(ids, batch_size=self.limits.max_batch_prompts,
                                      max_batch_tokens=self.limits.max_batch_tokens)
        prob = expit(decision)
        start = 0
        for job, fs in live:
            end = start + len(fs)
            job.future.set_result([
                {"probability": float(prob[i]), "malicious": bool(decision[i] > guard.threshold_logit),
                 "n_tokens": len(f.ids)} for i, f in zip(range(start, end), fs, strict=True)])
            start = end
        s = self.stats
        s["requests"] += len(live)
        s["prompts"] += len(ids)
        s["batches"] += 1
        s["largest_batch"] = max(s["largest_batch"], len(ids))
        s["busy_seconds"] += time.perf_counter() - t0


def over_budget(n: float, wait: float, budget: ClientBudget) -> RequestError:
    """The refusal of a request of ``n`` tokens that ``budget`` cannot pay for ``wait`` seconds."""
    if math.isinf(wait):
        return RequestError(413, f"request is {n:g} tokens after formatting, over the per-client burst of "
                                 f"{budget.burst} tokens")
    return RequestError(429, f"over this client's token budget ({budget.rate:g} tokens/s, burst {budget.burst}); "
                             f"retry in {math.ceil(wait)} s", retry_after=wait)


def _parse(body: bytes, limits: ServeLimits) -> list[str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(422, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(422, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        req = ScoreRequest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise RequestError(422, f'expected {{"prompts": [string, ...]}}: {where}: {first.get("msg")}') from None
    if not req.prompts:
        raise RequestError(422, "prompts is an empty list; send at least one prompt")
    if len(req.prompts) > limits.max_prompts:
        raise RequestError(413, f"{len(req.prompts)} prompts in one request, over the limit of {limits.max_prompts}")
    for i, p in enumerate(req.prompts):
        if len(p) > limits.max_prompt_chars:
            raise RequestError(413, f"prompt {i} is {len(p)} characters, over the limit of {limits.max_prompt_chars}")
        if not p.strip():
            raise RequestError(422, f"prompt {i} is empty")
    return req.prompts


async def _read_body(request: Request, limit: int) -> bytearray | None:
    """The request body, or None once it is over ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def http_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a header deadline: a connection that has not sent the headers of a
    request within ``header_timeout_s`` of opening (or of its previous answer) is closed, so slowloris
    clients that trickle header lines cannot hold connections open for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _expire(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no complete request headers yet: a slow or idle sender

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol


def create_app(guard: Guard, limits: ServeLimits | None = None) -> Any:
    """A FastAPI app serving ``guard`` (any kind; its model must be attached, which checks that it is the card's)."""
    import ihs

    limits = limits or ServeLimits()
    if guard.lm is None:
        raise ValueError("create_app needs a guard with its model attached (Guard.load(dir, lm=...))")
    guard.check_model(guard.lm)  # a model set by hand is checked too: another model would answer with nonsense
    budget = ClientBudget(limits.client_tokens_per_s, limits.client_burst_tokens, max_clients=limits.max_clients)
    batcher = MicroBatcher(guard, limits, budget)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="ihs guard", version=ihs.__version__, lifespan=lifespan,
                  description=f"Probe-based harmful-request detector on {guard.model_name}, kind {guard.kind} "
                              f"(early exit after layer {guard.layer}), threshold {guard.threshold:.4g} for a {guard.target_fpr:.2%} target FPR.")
    install_security(app, api_key=limits.api_key)
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.budget = budget

    def error(status: int, detail: str, retry_after: float | None = None) -> JSONResponse:
        headers = {"retry-after": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": guard.model_name, "layer": guard.layer, "kind": guard.kind, "num_layers":
                guard.model.get("num_layers"), "threshold": guard.threshold, "target_fpr": guard.target_fpr,
                "queued": batcher.queued, "stats": dict(batcher.stats), "clients": len(budget),
                "limits": {k: v for k, v in asdict(limits).items() if k != "api_key"}}

    body_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": ScoreRequest.model_json_schema()}}}}
    err = {"description": "refused: see detail", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"detail": {"type": "string"}}}}}}
    err_retry = {**err, "description": "over the client's token budget: retry after Retry-After seconds",
                 "headers": {"Retry-After": {"description": "seconds until the request would fit the budget",
                                             "schema": {"type": "integer"}}}}

    @app.post("/v1/score", response_model=ScoreResponse, openapi_extra=body_schema,
              responses={401: err, 408: err, 413: err, 415: err, 422: err, 429: err_retry, 503: err})
    async def score(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limits.max_body_bytes:
                    return error(413, f"request body of {int(declared)} bytes, over the limit of {limits.max_body_bytes}")
            except ValueError:
                return error(422, "bad Content-Length header")
        try:
            body = await asyncio.wait_for(_read_body(request, limits.max_body_bytes), limits.body_timeout_s)
        except TimeoutError:  # a slow sender holds a connection, not the worker; it is cut off here
            return JSONResponse({"detail": f"request body not received within {limits.body_timeout_s:g} s"},
                                status_code=408, headers={"connection": "close"})
        if body is None:
            return error(413, f"request body over the limit of {limits.max_body_bytes} bytes")
        problem = body_problem(bytes(body), limits.max_json_depth)
        if problem:
            return error(422, problem)
        try:
            prompts = _parse(bytes(body), limits)
            client = client_id(request, limits.api_key)
            wait = budget.take(client, 1, charge=False)  # an empty bucket is refused before queueing
            if wait is not None:
                raise over_budget(1, wait, budget)
            future = batcher.submit(prompts, client)
            results = await asyncio.wait_for(asyncio.wrap_future(future), limits.request_timeout_s)
        except RequestError as exc:
            return error(exc.status, exc.detail, exc.retry_after)
        except TimeoutError:
            future.cancel()
            return error(503, f"scoring took over {limits.request_timeout_s:g} s; retry later or send fewer prompts")
        return {"model": guard.model_name, "layer": guard.layer, "kind": guard.kind, "threshold": guard.threshold,
                "results": results}

    return app


class BackgroundServer:
    """A real uvicorn server on a background thread (tests, benchmarks): ``with BackgroundServer(app) as url``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        limits = getattr(getattr(app, "state", None), "limits", None) or ServeLimits()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                                    access_log=False, http=http_protocol(limits.header_timeout_s)))
        self.thread = threading.Thread(target=self.server.run, name="ihs-guard-server", daemon=True)
        self.host = host
        self.port = port

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the guard server did not start")
            time.sleep(0.02)
        if self.port == 0:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_server(guard: Guard, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
               log_level: str = "info") -> None:
    """Serve ``guard`` with uvicorn until interrupted."""
    import uvicorn

    limits = limits or ServeLimits()
    uvicorn.run(create_app(guard, limits), host=host, port=port, log_level=log_level, access_log=False,
                http=http_protocol(limits.header_timeout_s))
