"""One engine loop for all clients: a background thread calling ``engine.step()``.

Every HTTP request becomes one engine request (``Engine.add_request``, thread-safe). The
loop thread runs ``step()`` whenever the engine has work, so requests of all clients and all
adapters share each batch. Each request owns an ``asyncio.Queue`` on the server's event loop;
the thread hands every step's ``RequestOutput``s to those queues with one
``call_soon_threadsafe`` per step. A request whose client went away is aborted with
``Engine.abort_request`` (it finishes with reason "abort" at the next step).

An optional ``observer`` (``frod_rt.server.metrics.ServerMetrics``) is told, from the loop
thread, when a request is submitted, when its tokens arrive (time to first token, time since
its previous output) and when it finishes (end-to-end and queue time).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("frod_rt.server")


class EngineFailure(RuntimeError):
    """``engine.step()`` raised; the requests in flight at that moment are failed with it."""


@dataclass
class Handle:
    """A request submitted through the loop: its engine id and its output queue.

    The queue receives ``RequestOutput`` objects, the last one with ``finished=True``, or one
    ``EngineFailure`` if the engine failed."""
    request_id: str
    queue: asyncio.Queue
    prompt_tokens: int = 0
    created: float = field(default_factory=time.time)


@dataclass
class _Route:
    """Where a request's outputs go, and what the metrics need to know about it."""
    aloop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    label: str
    submitted: float                   # time.monotonic() at submission
    last: float | None = None          # time.monotonic() of its previous output with tokens


class EngineLoop:
    """Runs ``engine.step()`` on one thread and routes outputs to per-request queues.

    Args:
        engine: a ``frod_rt.Engine`` (decoder model).
        idle_wait_s: how long the idle thread sleeps between checks (it is also woken at
            once by every submit).
        rate_window_s: window of the tokens-per-second gauge.
    """

    def __init__(self, engine, idle_wait_s: float = 0.05, rate_window_s: float = 10.0,
                 observer=None):
        self.engine = engine
        self.observer = observer               # metrics hooks (see the module docstring)
        self._handles: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running = threading.Event()       # cleared = paused
        self._running.set()
        self._stop = False
        self._idle_wait = idle_wait_s
        self._window = rate_window_s
        self._rate: deque[tuple[float, int]] = deque()
        self.step_errors_total = 0
        self.aborts_total = 0                   # abort() calls for requests still in flight
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="frod-engine-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still in flight are aborted and finish with "abort"."""
        if self._thread is None:
            return
        with self._lock:
            ids = list(self._handles)
        for rid in ids:
            self.engine.abort_request(rid)
        self._running.set()
        deadline = time.monotonic() + timeout
        while ids and self.engine.has_unfinished() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)
            with self._lock:
                ids = list(self._handles)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pause(self) -> None:
        """Stop stepping (submitted requests stay queued) until ``resume()``: for maintenance
        and for tests that need a full queue."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        self._wake.set()

    # ---- requests ---------------------------------------------------------------------------
    def submit(self, prompt, adapter, sampling, queue: asyncio.Queue | None = None,
               label: str | None = None) -> Handle:
        """Queue a request (call from the event loop). Its outputs go to ``queue`` (a new
        one by default; several requests may share one). ``label``: the metrics' adapter
        label (default: the adapter's name, or the base model's). Raises what
        ``Engine.add_request`` raises (UnknownAdapterError, ValueError,
        EngineOverloadedError), and EngineFailure when the loop thread is not running."""
        if not self.alive:
            raise EngineFailure("the engine loop is not running")
        aloop = asyncio.get_running_loop()
        q: asyncio.Queue = queue if queue is not None else asyncio.Queue()
        ids = self._token_ids(prompt)
        if label is None:
            label = adapter if isinstance(adapter, str) and adapter else self.engine.base_name
        with self._lock:                   # register before the thread can see the request
            rid = self.engine.add_request(ids, adapter, sampling)
            self._handles[rid] = _Route(aloop, q, label, time.monotonic())
        self._wake.set()
        if self.observer is not None:
            self.observer.request_submitted(label, len(ids))
        return Handle(rid, q, prompt_tokens=len(ids))

    def _token_ids(self, prompt) -> list[int]:
        """Text prompts are tokenized here exactly as ``Engine.add_request`` would
        (``tokenizer(text)["input_ids"]``), so the prompt's token count is known without
        reading the engine's sequence, which a fast step may already have retired."""
        if isinstance(prompt, str):
            if self.engine.tokenizer is None:
                raise ValueError("prompt: text needs a tokenizer; send token ids")
            return list(self.engine.tokenizer(prompt)["input_ids"])
        if isinstance(prompt, (list, tuple)) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        raise ValueError("prompt: expected a string or a list of token ids")

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe; unknown or finished ids are ignored)."""
        with self._lock:
            known = request_id in self._handles
        if known:
            self.aborts_total += 1
            self.engine.abort_request(request_id)
            self._wake.set()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._handles)

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last ``rate_window_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._rate and now - self._rate[0][0] > self._window:
                self._rate.popleft()
            total = sum(n for _, n in self._rate)
        return total / self._window

    # ---- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        while not self._stop:
            if not self._running.is_set() or not eng.has_unfinished():
                self._wake.wait(self._idle_wait)
                self._wake.clear()
                continue
            try:
                outs = eng.step()
            except Exception as exc:      # noqa: BLE001 - reported to the requests in flight
                self._fail_all(exc)
                continue
            if outs:
                self._dispatch(outs)

    def _dispatch(self, outs) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        ntok = 0
        now = time.monotonic()
        seen: list[tuple[_Route, object]] = []
        with self._lock:
            for out in outs:
                ntok += len(out.new_token_ids)
                h = self._handles.get(out.request_id)
                if out.finished:
                    self._handles.pop(out.request_id, None)
                if h is not None:
                    by_loop.setdefault(h.aloop, []).append((h.queue, out))
                    seen.append((h, out))
            if ntok:
                self._rate.append((now, ntok))
        if self.observer is not None:
            self._observe(seen, now)
        for aloop, items in by_loop.items():
            try:
                aloop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:          # the event loop is closed (server shutting down)
                pass

    def _observe(self, seen, now: float) -> None:
        """Hand each output's timing to the observer (loop thread, outside the lock)."""
        obs = self.observer
        for h, out in seen:
            n = len(out.new_token_ids)
            if n:
                ttft = now - h.submitted if h.last is None else None
                itl = now - h.last if h.last is not None else None
                h.last = now
                obs.tokens(h.label, n, ttft, itl)
            if out.finished and out.finish_reason not in ("abort", "error"):
                queued = (out.timings or {}).get("queued_s")
                obs.finished(now - h.submitted, queued)

    def _fail_all(self, exc: Exception) -> None:
        self.step_errors_total += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.exception("engine step failed; failing the requests in flight")
        with self._lock:
            handles = dict(self._handles)
            self._handles.clear()
        err = EngineFailure(f"engine step failed: {self.last_error}")
        by_loop: dict = {}
        for rid, h in handles.items():
            try:
                self.engine.abort_request(rid)
            except Exception:             # noqa: BLE001
                pass
            by_loop.setdefault(h.aloop, []).append((h.queue, err))
        for aloop, items in by_loop.items():
            try:
                aloop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:
                pass
        time.sleep(0.01)


def _put_all(items) -> None:
    for q, item in items:
        q.put_nowait(item)
