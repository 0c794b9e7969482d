"""The FastAPI application: OpenAI-compatible endpoints over one ``EngineLoop``.

    POST   /v1/completions          text completion (``stream`` -> server-sent events)
    POST   /v1/chat/completions     chat completion (tokenizer's chat template, else
                                    ``frod_rt.server.chat.simple_template``)
    POST   /v1/embeddings           embeddings (encoder bases; ``frod_rt.server.encoders``)
    POST   /v1/classify, /classify  classification logits/probabilities (encoder bases)
    GET    /v1/models               the base model and every adapter
    POST   /v1/adapters             load {"name", "path"} at run time
    DELETE /v1/adapters/{name}      unload an adapter
    GET    /health                  200 while the engine loop runs, else 503
    GET    /metrics                 Prometheus text (``frod_rt.server.metrics``)

``model`` selects the adapter by name; the base model's name (``engine.base_name``) selects
no adapter. Errors use OpenAI's shape (see ``frod_rt.server.errors``).
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.errors import UnknownAdapterError
from .metrics import ServerMetrics
from .chat import chat_prompt
from .encoders import add_encoder_routes
from .errors import APIError
from .generation import Batch, ClientGone, collect, new_id, stream_chunks, usage
from .loop import EngineLoop
from .protocol import (AdapterLoadRequest, ChatRequest, CompletionRequest, check_unsupported,
                       prompts_of, sampling_dict)


class ServerState:
    """What the routes share: the engine, its loop and the app's metrics (``metrics``, a
    :class:`ServerMetrics` whose hooks the engine loop calls too)."""

    def __init__(self, engine, loop: EngineLoop, default_max_tokens: int = 16,
                 max_adapter_labels: int = 256):
        self.engine = engine
        self.loop = loop
        self.default_max_tokens = default_max_tokens
        self.started = int(time.time())
        self.metrics = ServerMetrics(engine, loop, max_adapter_labels)
        loop.observer = self.metrics
        self.adapter_lock = asyncio.Lock()

    def count_rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()

    def resolve_model(self, model: str) -> str | None:
        """The adapter name for ``model`` (None = base); 404 for an unknown model."""
        if model == self.engine.base_name:
            return None
        names = self.engine.adapters()
        if model in names:
            return model
        avail = ", ".join([self.engine.base_name] + names)
        raise APIError(404, f"model {model!r} not found; available: {avail}", param="model",
                       code="model_not_found")

    def model_card(self, name: str) -> dict:
        base = self.engine.base_name
        return {"id": name, "object": "model", "created": self.started, "owned_by": "frod_rt",
                "root": base, "parent": None if name == base else base}


def create_app(engine, default_max_tokens: int = 16, loop: EngineLoop | None = None,
               max_adapter_labels: int = 256) -> FastAPI:
    """The app serving ``engine`` (a ``frod_rt.Engine``). The engine loop thread
    starts with the app (lifespan) and stops with it; ``app.state.server`` is the
    :class:`ServerState`. The waiting queue bound is the engine's ``max_waiting``.
    ``max_adapter_labels``: adapter names with their own ``adapter`` label in /metrics."""
    loop = loop or EngineLoop(engine)
    state = ServerState(engine, loop, default_max_tokens, max_adapter_labels)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loop.stop)

    app = FastAPI(title="frod_rt", version="0.1.0", lifespan=lifespan)
    app.state.server = state

    # ---- errors -------------------------------------------------------------------------------
    def _err(e: APIError) -> JSONResponse:
        state.metrics.http_errors.labels(status=str(e.status)).inc()
        return e.response()

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _err(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return _err(APIError(400, f"request body is not valid JSON: {first.get('msg')}",
                                 code="invalid_json"))
        param = ".".join(loc) or None
        msg = f"{param or 'body'}: {first.get('msg', 'invalid')}"
        if len(errs) > 1:
            msg += f" (and {len(errs) - 1} more problem(s))"
        return _err(APIError(422, msg, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _err(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return _err(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    # ---- generation ------------------------------------------------------------------------------
    async def _respond(request: Request, req, prompts, chat: bool):
        adapter = state.resolve_model(req.model)
        if getattr(engine, "is_encoder", False):
            raise APIError(400, f"model {req.model!r} is an encoder: use /v1/embeddings or "
                           "/v1/classify", param="model", code="unsupported_model")
        label = state.metrics.label_for(req.model)
        try:
            check_unsupported(req)
            sp = sampling_dict(req, state.default_max_tokens)
            batch = Batch(state, prompts, adapter, sp, label)
            if req.stream:
                inc = bool(req.stream_options and req.stream_options.include_usage)
                return StreamingResponse(stream_chunks(batch, request, req.model, chat, inc),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            texts, reasons, ntok = await collect(batch, request)
        except ClientGone:
            return JSONResponse({}, status_code=499)     # nobody is listening
        except APIError:
            state.metrics.request_error(label)
            raise
        ptok, ctok = sum(batch.prompt_tokens), sum(ntok)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t},
                        "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
            body = {"id": new_id("chatcmpl"), "object": "chat.completion"}
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
            body = {"id": new_id("cmpl"), "object": "text_completion"}
        body.update(created=int(time.time()), model=req.model, choices=choices,
                    usage=usage(ptok, ctok))
        return JSONResponse(body)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await _respond(request, req, prompts_of(req), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        state.resolve_model(req.model)
        prompt = chat_prompt(engine.tokenizer, req.messages)
        return await _respond(request, req, [prompt], chat=True)

    add_encoder_routes(app, state)

    # ---- models and adapters ------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        names = [engine.base_name] + engine.adapters()
        return {"object": "list", "data": [state.model_card(n) for n in names]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        state.resolve_model(name)
        return state.model_card(name)

    @app.post("/v1/adapters", status_code=201)
    async def load_adapter(req: AdapterLoadRequest):
        if not req.name or req.name == engine.base_name:
            raise APIError(400, f"name: {req.name!r} is not a valid adapter name (it must be "
                           "non-empty and differ from the base model's name)", param="name")
        async with state.adapter_lock:
            if req.name in engine.adapters():
                raise APIError(409, f"adapter {req.name!r} is already loaded; delete it first",
                               param="name", code="adapter_exists")
            try:
                await asyncio.to_thread(engine.add_adapter, req.name, req.path)
            except FileNotFoundError as e:
                raise APIError(400, str(e), param="path", code="adapter_not_found") from None
            except (ValueError, TypeError, OSError) as e:
                code = "adapter_exists" if "already loaded" in str(e) else "invalid_adapter"
                raise APIError(409 if code == "adapter_exists" else 400, str(e),
                               param="path" if code == "invalid_adapter" else "name",
                               code=code) from None
            state.metrics.adapter_loads.inc()
        return state.model_card(req.name)

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str):
        async with state.adapter_lock:
            try:
                engine.remove_adapter(name)
            except UnknownAdapterError as e:
                raise APIError(404, str(e), param="name", code="model_not_found") from None
            state.metrics.adapter_unloads.inc()
        state.metrics.sweep()
        return {"id": name, "object": "model", "deleted": True}

    # ---- operations ---------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        ok = loop.alive
        body = {"status": "ok" if ok else "engine loop not running", "model": engine.base_name,
                "adapters": len(engine.adapters()), "in_flight": loop.in_flight()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return app
