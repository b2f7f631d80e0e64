"""HTTP hardening of the guard service: API key, JSON-only bodies, bounded JSON, security headers, no CDN docs.

:func:`install_security` wraps a FastAPI app (see :mod:`ihs.guard.serve`) in one ASGI middleware that

* answers 401 without the API key when one is set (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``,
  compared in constant time), for every path;
* answers 415 to a POST whose ``Content-Type`` is not ``application/json``: a browser page cannot send
  JSON to another origin without a CORS preflight, which this service never grants, so a page on
  another site cannot make it compute;
* adds ``X-Content-Type-Options: nosniff``, ``Cache-Control: no-store``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY`` and a strict ``Content-Security-Policy`` (nothing may load) to every answer;

and removes the Swagger UI and ReDoc pages (they load scripts from a CDN); ``/openapi.json`` stays.
:func:`body_problem` bounds the nesting depth and the number of values of a JSON body before it is
decoded (a deeply nested body would otherwise exhaust the parser's recursion).
"""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path
from typing import Any

from ihs.errors import IhsError

CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"content-security-policy", CSP.encode())]
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 10_000
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def read_api_key(path: str | Path | None = None, *, env: str = "IHS_API_KEY") -> str | None:
    """The API key from ``path`` (first line) or the environment variable ``env``; None when neither is set."""
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise IhsError(f"--api-key-file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        if not key:
            raise IhsError(f"--api-key-file {path} is empty")
    else:
        key = os.environ.get(env, "").strip() or None
    if key is not None and len(key) < 16:
        raise IhsError("the API key must be at least 16 characters")
    return key


def body_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH, max_values: int = MAX_JSON_VALUES) -> str | None:
    """Why a JSON body is refused before decoding (nesting deeper than ``max_depth``, more than
    ``max_values`` arrays, objects and separators), or None. Brackets inside strings do not count."""
    skeleton = _STRING.sub(b'""', body)
    if skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{") > max_values:
        return f"JSON body has more than {max_values} values"
    depth = deepest = 0
    for ch in skeleton.translate(None, _NOT_BRACKETS):
        depth += 1 if ch in b"[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                return f"JSON body is nested deeper than {max_depth} levels"
    return None


class SecurityMiddleware:
    """The ASGI middleware of :func:`install_security`."""

    def __init__(self, app: Any, api_key: str | None = None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *[h for h in HEADERS if h[0] not in have]]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> tuple[int, str, list] | None:
        if self.api_key is not None:
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not hmac.compare_digest(given, self.api_key):
                return 401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)", [
                    (b"www-authenticate", b"Bearer")]
        if scope.get("method") == "POST":
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media != b"application/json":
                return 415, "send the body as Content-Type: application/json", []
        return None


async def _answer(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *HEADERS, *extra]})
    await send({"type": "http.response.body", "body": body})


def install_security(app: Any, *, api_key: str | None = None) -> Any:
    """Harden a FastAPI app in place (see the module docstring); returns it."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in DOC_PATHS]
    app.docs_url = app.redoc_url = None
    app.add_middleware(SecurityMiddleware, api_key=api_key)
    return app
