"""Calling an ASGI app in-process: its lifespan, and one HTTP request as an async generator.

The Ray Serve application (``ray_app.py``) runs the very app of ``create_app(engine)`` inside
each engine replica and hands it the requests the router forwards, so every route, error and
metric of the single-process server is reused as it is.

    Lifespan(app)                    await .startup() / .shutdown()
    call_app(app, method, path, ...) async generator of response parts:
        first  ("start", status, headers, body_or_None)   body given when not a stream
        then   (bytes, ...)                               the body chunks of a stream
"""
from __future__ import annotations

import asyncio
import contextlib

STREAM_TYPE = "text/event-stream"


class Lifespan:
    """Drives the ASGI lifespan protocol of ``app`` (startup/shutdown events)."""

    def __init__(self, app):
        self.app = app
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def _receive(self):
        return await self._inbox.get()

    async def _send(self, msg):
        await self._outbox.put(msg)

    async def _expect(self, kind: str, timeout: float):
        msg = await asyncio.wait_for(self._outbox.get(), timeout)
        if msg["type"] != kind:
            raise RuntimeError(f"app lifespan: expected {kind}, got {msg['type']}: "
                               f"{msg.get('message', '')}")

    async def startup(self, timeout: float = 120.0) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": {}}
        self._task = asyncio.ensure_future(self.app(scope, self._receive, self._send))
        await self._inbox.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete", timeout)

    async def shutdown(self, timeout: float = 60.0) -> None:
        if self._task is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await self._expect("lifespan.shutdown.complete", timeout)
        self._task = None


async def call_app(app, method: str, path: str, query: bytes = b"",
                   headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
                   client: tuple[str, int] = ("127.0.0.1", 0)):
    """Run one HTTP request through ``app`` and yield its response (see the module doc).

    A non-streaming response (any content type but ``text/event-stream``) is yielded whole
    as the first item. When the consumer stops iterating (its client went away), the app
    receives ``http.disconnect`` and its task is cancelled."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": method.upper(), "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query,
             "root_path": "", "headers": list(headers or []), "client": client,
             "server": ("127.0.0.1", 0), "state": {}}
    disconnected = asyncio.Event()
    sent_body = False
    out: asyncio.Queue = asyncio.Queue()

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        await out.put(msg)

    async def run():
        try:
            await app(scope, receive, send)
        finally:
            await out.put(None)

    task = asyncio.ensure_future(run())
    try:
        start = await out.get()
        if start is None:
            raise RuntimeError(f"the app sent no response for {method} {path}")
        status, hdrs = start["status"], list(start.get("headers", []))
        ctype = next((v for k, v in hdrs if k.lower() == b"content-type"), b"").decode()
        streaming = ctype.startswith(STREAM_TYPE)
        if not streaming:
            chunks = []
            while (msg := await out.get()) is not None:
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    break
            yield ("start", status, hdrs, b"".join(chunks))
            return
        yield ("start", status, hdrs, None)
        while (msg := await out.get()) is not None:
            chunk = msg.get("body", b"")
            if chunk:
                yield chunk
            if not msg.get("more_body", False):
                break
    finally:
        disconnected.set()
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            except (asyncio.TimeoutError, Exception):     # noqa: BLE001
                task.cancel()
