"""``Guard``: the ASGI middleware in front of every route.

In order, for each HTTP request:
1. ``Host`` header allow-list (``ServerConfig.allowed_hosts``): 400 for another host
   (DNS rebinding: a web page cannot make a browser talk to the server under a foreign name).
2. Bearer authentication (``ServerConfig.api_key``) on every path but ``/health``: 401.
3. Body size: a ``Content-Length`` above ``max_body_bytes`` gets 413 at once; a body is read
   here in full (at most ``max_body_bytes``, each chunk within ``body_timeout_s``, else 413 /
   408) before the route sees it, so no route ever parses an oversized body.
Errors use OpenAI's body (``frod_rt.server.errors``).
"""
from __future__ import annotations

import asyncio
import hmac

from .config import ServerConfig
from .errors import APIError

OPEN_PATHS = frozenset({"/health"})


def _header(scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return None


def host_of(value: bytes | None) -> str:
    """The host name of a Host header value, lower-case, without the port."""
    h = (value or b"").decode("latin-1").strip().lower()
    if h.startswith("["):                       # [::1]:8000
        return h[: h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Guard:
    """Wraps an ASGI app; ``on_error(status)`` is called for each refusal (metrics)."""

    def __init__(self, app, config: ServerConfig, on_error=None):
        self.app = app
        self.config = config
        self.on_error = on_error
        key = config.api_key
        self._key = key.encode() if key else None

    async def _refuse(self, send, err: APIError) -> None:
        if self.on_error is not None:
            self.on_error(err.status)
        resp = err.response()
        await send({"type": "http.response.start", "status": resp.status_code,
                    "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    def _check(self, scope) -> APIError | None:
        cfg = self.config
        if cfg.allowed_hosts and "*" not in cfg.allowed_hosts:
            if host_of(_header(scope, b"host")) not in cfg.allowed_hosts:
                return APIError(400, "invalid Host header", code="invalid_host")
        if self._key is not None and scope.get("path") not in OPEN_PATHS:
            auth = _header(scope, b"authorization") or b""
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(),
                                                                        self._key):
                return APIError(401, "missing or invalid API key (send 'Authorization: "
                                "Bearer <key>')", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = self._check(scope)
        if err is not None:
            return await self._refuse(send, err)
        limit = self.config.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._refuse(send, APIError(400, "invalid Content-Length"))
            if n > limit:
                return await self._refuse(send, _too_large(limit))
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE") and length is None:
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), self.config.body_timeout_s)
            except asyncio.TimeoutError:
                return await self._refuse(send, APIError(
                    408, f"the request body did not arrive within "
                    f"{self.config.body_timeout_s:g} s", code="request_timeout"))
            if msg["type"] == "http.disconnect":
                return None
            body = msg.get("body", b"")
            size += len(body)
            if size > limit:
                return await self._refuse(send, _too_large(limit))
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body too large (limit {limit} bytes)",
                    code="request_too_large")
