"""The FastAPI application: OpenAI-compatible endpoints over one ``EngineLoop``.

    POST   /v1/completions          text completion (``stream`` -> server-sent events)
    POST   /v1/chat/completions     chat completion (tokenizer's chat template, else
                                    ``frod_rt.server.chat.simple_template``)
    POST   /v1/embeddings           embeddings (encoder bases; ``frod_rt.server.encoders``)
    POST   /v1/classify, /classify  classification logits/probabilities (encoder bases)
    GET    /v1/models               the base model and every adapter
    POST   /v1/adapters             load {"name", "path"} at run time  (adapter_routes.py;
    DELETE /v1/adapters/{name}      unload an adapter                   only with
    POST   /v1/load_lora_adapter    vLLM's load route                   allow_adapter_loading)
    POST   /v1/unload_lora_adapter  vLLM's unload route
    GET    /health                  200 while the engine loop runs, else 503 (no auth)
    GET    /metrics                 Prometheus text (``frod_rt.server.metrics``)

``model`` selects the adapter by name; the base model's name (``engine.base_name``) selects
no adapter. Errors use OpenAI's shape (see ``frod_rt.server.errors``). Limits and security
options: ``ServerConfig`` (config.py), enforced by ``Guard`` (guard.py) and limits.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.errors import UnknownAdapterError
from .adapter_routes import add_adapter_routes
from .chat import chat_prompt
from .config import ServerConfig
from .encoders import add_encoder_routes
from .errors import APIError, unknown_model
from .generation import Batch, ClientGone, collect, new_id, stream_chunks, usage
from .guard import Guard
from .limits import check_messages, check_prompts, check_stops, tokenize_prompts
from .loop import EngineLoop
from .metrics import BLEND, ServerMetrics
from .protocol import (ChatRequest, CompletionRequest, check_unknown_fields, check_unsupported,
                       prompts_of, sampling_dict)

log = logging.getLogger("frod_rt.server")


class ServerState:
    """What the routes share: the engine, its loop, the config and the app's metrics
    (``metrics``, a :class:`ServerMetrics` whose hooks the engine loop calls too)."""

    def __init__(self, engine, loop: EngineLoop, default_max_tokens: int = 16,
                 config: ServerConfig | None = None):
        self.engine = engine
        self.loop = loop
        self.default_max_tokens = default_max_tokens
        self.config = config or ServerConfig()
        self.started = int(time.time())
        self.metrics = ServerMetrics(engine, loop, self.config.max_adapter_labels)
        loop.observer = self.metrics

    def count_rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()

    def count_http_error(self, status: int) -> None:
        self.metrics.http_errors.labels(status=str(status)).inc()

    @contextlib.contextmanager
    def counting_errors(self, model: str, adapter):
        """Yields the metrics' adapter label of a request for ``model`` (``adapter`` as
        ``resolve_adapter`` gave it) and counts an APIError raised inside under it."""
        label = self.metrics.label_for(BLEND if isinstance(adapter, dict) else model)
        try:
            yield label
        except APIError:
            self.metrics.request_error(label)
            raise

    def resolve_adapter(self, model: str, adapter_weights: dict | None):
        """What a request runs: ``resolve_model(model)``, or with ``adapter_weights`` the
        blend {name: weight} (then ``model`` must be the base's name; 400 / 404 naming
        ``adapter_weights`` for bad weights or unknown adapters)."""
        adapter = self.resolve_model(model)
        if adapter_weights is None:
            return adapter
        if adapter is not None:
            raise APIError(400, f"adapter_weights: send model={self.engine.base_name!r} (the "
                           f"base model) with a blend, not the adapter {model!r}",
                           param="adapter_weights")
        try:
            self.engine.blends.spec(adapter_weights)
        except UnknownAdapterError as e:
            raise APIError(404, f"adapter_weights: adapter {e.name!r} not found",
                           param="adapter_weights", code="model_not_found") from None
        except ValueError as e:
            raise APIError(400, str(e), param="adapter_weights") from None
        return dict(adapter_weights)

    def resolve_model(self, model: str) -> str | None:
        """The adapter name for ``model`` (None = base); 404 for an unknown model (the message
        does not list the adapters: ``GET /v1/models`` does, to whoever may call it)."""
        if model == self.engine.base_name:
            return None
        if model in self.engine.adapters():
            return model
        raise unknown_model(model)

    def model_card(self, name: str) -> dict:
        base = self.engine.base_name
        return {"id": name, "object": "model", "created": self.started, "owned_by": "frod_rt",
                "root": base, "parent": None if name == base else base}


def create_app(engine, default_max_tokens: int = 16, loop: EngineLoop | None = None,
               config: ServerConfig | None = None):
    """The FastAPI app serving ``engine`` (a ``frod_rt.Engine``), its routes behind
    the :class:`Guard` middleware (Host allow-list, API key, body size). ``config``: limits and
    security options (:class:`ServerConfig`; defaults open nothing). The engine loop thread
    starts with the app (lifespan) and stops with it; ``app.state.server`` is the
    :class:`ServerState`. The waiting queue bound is the engine's ``max_waiting``. A decoder
    base serves the generation routes, an encoder base /v1/embeddings and /v1/classify."""
    config = config or ServerConfig()
    loop = loop or EngineLoop(engine)
    state = ServerState(engine, loop, default_max_tokens, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loop.stop)

    docs = config.enable_docs
    app = FastAPI(title="frod_rt", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.server = state
    char_limit = config.prompt_char_limit(engine.max_model_len)

    # ---- errors -------------------------------------------------------------------------------
    def _err(e: APIError) -> JSONResponse:
        state.count_http_error(e.status)
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
        return _err(APIError(400, msg, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _err(APIError(exc.status_code, str(exc.detail), code=code,
                             headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.error("unexpected error in %s %s", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return _err(APIError(500, f"internal error ({type(exc).__name__}; details are in "
                                  "the server log)"))

    # ---- generation ------------------------------------------------------------------------------
    def _check(req):
        """Everything that can be refused without work: fields, options, model, sizes.
        Returns the adapter name, None (base) or a blend {name: weight}."""
        if config.strict_fields:
            check_unknown_fields(req)
        check_unsupported(req)
        check_stops(req, config)
        adapter = state.resolve_adapter(req.model, req.adapter_weights)
        if getattr(engine, "is_encoder", False):
            raise APIError(400, f"model {req.model!r} is an encoder: use /v1/embeddings or "
                           "/v1/classify", param="model", code="unsupported_model")
        return adapter

    async def _respond(request: Request, req, prompts, chat: bool, adapter, label):
        sp = sampling_dict(req, state.default_max_tokens)
        prompts = await tokenize_prompts(engine.tokenizer, prompts, engine.max_model_len)
        batch = Batch(state, prompts, adapter, sp, label)
        if req.stream:
            inc = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(stream_chunks(batch, request, req.model, chat, inc),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            texts, reasons, ntok = await collect(batch, request)
        except ClientGone:
            return JSONResponse({}, status_code=499)     # nobody is listening
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
        adapter = _check(req)
        with state.counting_errors(req.model, adapter) as label:
            prompts = prompts_of(req)
            check_prompts(prompts, char_limit, engine.max_model_len)
            return await _respond(request, req, prompts, False, adapter, label)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        adapter = _check(req)
        with state.counting_errors(req.model, adapter) as label:
            check_messages(req.messages, char_limit)
            prompt = await asyncio.to_thread(chat_prompt, engine.tokenizer, req.messages)
            return await _respond(request, req, [prompt], True, adapter, label)

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

    add_adapter_routes(app, state)

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

    app.add_middleware(Guard, config=config, on_error=state.count_http_error)
    return app
