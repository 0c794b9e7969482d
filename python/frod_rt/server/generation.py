"""Running one OpenAI completion / chat request through the engine loop.

``submit_all`` queues one engine request per prompt (all sharing one output queue);
``collect`` waits for them (non-streaming) and ``stream_chunks`` yields server-sent events.
Both poll the client connection every ``POLL_S`` seconds (also while tokens flow) and abort
the engine requests when the client goes away.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from ..engine.errors import EngineOverloadedError, UnknownAdapterError
from ..method.blend import BlendError
from .errors import APIError
from .loop import EngineFailure

_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stop_token_ids",
           "ignore_eos", "prompt")
POLL_S = 0.25          # how often a waiting request checks that its client is still there


class ClientGone(Exception):
    """The client disconnected; its engine requests were aborted."""


def to_api_error(exc: Exception) -> APIError:
    """Map an engine exception raised while queueing a request to an APIError."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UnknownAdapterError):
        return APIError(404, f"model {exc.name!r} not found (GET /v1/models lists the served "
                        "models)", param="model", code="model_not_found")
    if isinstance(exc, EngineFailure):
        return APIError(503, str(exc), code="engine_unavailable")
    if isinstance(exc, EngineOverloadedError):
        return APIError(429, str(exc), code="queue_full")
    if isinstance(exc, BlendError):
        return APIError(400, f"adapter_weights: {exc}", param="adapter_weights",
                        code="blend_refused")
    if isinstance(exc, (ValueError, TypeError)):
        msg = str(exc)
        head = msg.split(":", 1)[0].strip()
        param = head if head in _FIELDS else None
        if "max_model_len" in msg:
            param = "max_tokens"
        return APIError(400, msg, param=param)
    return APIError(500, f"{type(exc).__name__}: {exc}")


class Batch:
    """The engine requests of one HTTP request (one per prompt / choice). ``label``: the
    metrics' adapter label (``ServerMetrics.label_for``)."""

    def __init__(self, state, prompts, adapter, sampling: dict, label: str | None = None):
        self.state = state
        self.label = label
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[str] = []
        self.prompt_tokens: list[int] = []
        try:
            for p in prompts:
                h = state.loop.submit(p, adapter, sampling, queue=self.queue, label=label)
                self.ids.append(h.request_id)
                self.prompt_tokens.append(h.prompt_tokens)
        except Exception as exc:
            self.abort()
            err = to_api_error(exc)
            if err.status == 429:
                state.count_rejected("overload")
            raise err from None
        self.index = {rid: i for i, rid in enumerate(self.ids)}
        self.pending = set(self.ids)

    def count_error(self) -> None:
        """Count this request under its adapter's errors (a stream that ended in an error)."""
        if self.label is not None:
            self.state.metrics.request_error(self.label)

    def abort(self) -> None:
        for rid in self.ids:
            self.state.loop.abort(rid)

    async def outputs(self, request):
        """Yield (choice index, RequestOutput) until every request finished. Raises
        ClientGone (after aborting) when the client disconnects, EngineFailure when the
        engine failed."""
        getter = None
        checked = time.monotonic()
        try:
            while self.pending:
                if getter is None:
                    getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=POLL_S)
                # check the client every POLL_S, also while outputs keep coming
                if getter not in done or time.monotonic() - checked >= POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        raise ClientGone()
                if getter not in done:
                    continue
                item, getter = getter.result(), None
                if isinstance(item, EngineFailure):
                    raise item
                if item.request_id not in self.pending:
                    continue
                if item.finished:
                    self.pending.discard(item.request_id)
                yield self.index[item.request_id], item
        finally:
            if getter is not None:
                getter.cancel()
            if self.pending:                 # client gone, failure or generator closed
                self.abort()


async def collect(batch: Batch, request) -> tuple[list[str], list[str], list[int]]:
    """Wait for every choice: (texts, finish reasons, completion token counts)."""
    n = len(batch.ids)
    texts, reasons, ntok = [""] * n, [None] * n, [0] * n
    try:
        async for i, out in batch.outputs(request):
            texts[i] += out.new_text
            ntok[i] += len(out.new_token_ids)
            if out.finished:
                reasons[i] = out.finish_reason
                if out.finish_reason == "error":
                    raise failed_error(out)
    except EngineFailure as e:
        raise APIError(503, str(e), code="engine_failure") from None
    if "abort" in reasons:
        raise APIError(503, "request aborted by the server (its adapter was removed or the "
                       "server is shutting down)", code="aborted")
    return texts, reasons, ntok


def failed_error(out) -> APIError:
    """The error of a request the engine failed alone (non-finite logits, a forward that
    failed for this request only): 500, its batch mates are not affected."""
    return APIError(500, f"generation failed: {out.error or 'unknown error'}",
                    code="generation_failed")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_chunks(batch: Batch, request, model: str, chat: bool, include_usage: bool):
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    rid = new_id("chatcmpl" if chat else "cmpl")
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, **extra):
        return sse({"id": rid, "object": obj, "created": created, "model": model,
                    "choices": choices, **extra})

    def choice(i, text, reason):
        if chat:
            delta = {"content": text} if text or reason is None else {}
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"index": i, "text": text, "logprobs": None, "finish_reason": reason}

    ntok = [0] * len(batch.ids)
    try:
        if chat:
            for i in range(len(batch.ids)):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
        async for i, out in batch.outputs(request):
            ntok[i] += len(out.new_token_ids)
            if out.finished and out.finish_reason == "error":
                batch.count_error()
                yield sse(failed_error(out).body())
                break
            if out.finished and out.finish_reason == "abort":
                batch.count_error()
                yield sse(APIError(503, "request aborted by the server (its adapter was "
                                   "removed or the server is shutting down)",
                                   code="aborted").body())
                break
            if out.new_text or out.finished:
                yield chunk([choice(i, out.new_text, out.finish_reason if out.finished
                                    else None)])
        else:
            if include_usage:
                yield chunk([], usage=usage(sum(batch.prompt_tokens), sum(ntok)))
    except ClientGone:
        return
    except EngineFailure as e:
        batch.count_error()
        yield sse(APIError(503, str(e), code="engine_failure").body())
    yield "data: [DONE]\n\n"
