"""Serving past one engine: N engine replicas as one Ray Serve deployment (docs/scale-out.md).

    client ──HTTP──> Ray Serve proxy ──> FrodRouter (ingress, 1 replica, no CPU reserved)
                                           │ reads "model" from the body; an adapter is a
                                           │ multiplexed model: handle.options(
                                           │   multiplexed_model_id="<adapter>@<gen>")
                                           ▼
                         FrodEngine replica 1 .. N   (one Engine + the single-process app each)

* Every engine replica runs the app of ``create_app(engine)`` in-process (``asgi_call``): the
  routes, protocol, errors and metrics of the single-process server are reused as they are.
  The router forwards method, path, headers and body and streams the answer back; it adds
  the header ``x-frod-rt-replica`` (the Ray Serve replica id that answered).
* Adapters are Ray Serve multiplexed models keyed ``<name>@<generation>`` (the generation
  changes when a name is deleted and loaded again with another path). Ray Serve sends a
  request for an adapter to a replica that already holds it (the handle-side equivalent of
  the ``serve_multiplexed_model_id`` HTTP header); each replica keeps its own LRU of at most
  ``adapters_per_replica`` adapters (``Engine.add_adapter`` on load, ``remove_adapter`` on
  eviction once the adapter's requests on that replica have finished).
* A replica that dies is restarted by Ray Serve (its health check is the engine loop). The
  requests it was answering end with 503 ``replica_unavailable`` (``Retry-After: 1``; in a
  stream: an error event, then ``[DONE]``); the other replicas keep serving.
* The adapter catalog (name -> path, generation) lives in a detached actor of its own
  (``AdapterCatalog``), not in the router: adapters loaded at run time survive a router that
  Ray Serve restarts, and generations keep increasing across restarts (a name reloaded with
  another file never reuses a generation a replica still holds). ``shutdown_app`` (called
  by ``frod-rt serve`` on exit) removes it; a local Ray's shutdown does too.
* ``/health`` and ``/metrics`` aggregate the replicas: each replica posts its own
  ``/health`` body and ``/metrics`` text to a small board actor every ``report_period_s``;
  the router sums them (``aggregate``) over the replicas that reported recently.

Entry points: ``build_app(base, adapters, replicas=N, ...)`` returns the Ray Serve
``Application``; ``run_app(app, host, port)`` starts Ray (or joins ``ray_address``) and Serve
and deploys it. ``frod-rt serve --replicas N`` does both.
"""
# no `from __future__ import annotations`: Ray Serve re-reads the FastAPI signatures of
# the router in the replica, where string annotations could not be resolved
import asyncio
import dataclasses
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve

from .adapter_routes import (LOAD_ERRORS, AdapterLoadRequest, LoadLoRAAdapterRequest,
                             UnloadLoRAAdapterRequest, already_loaded, check_adapter_name,
                             load_failure, loading_root, not_loaded, resolve_under_root)
from .aggregate import merge_health, merge_metrics
from .asgi_call import Lifespan, call_app
from .config import ServerConfig
from .errors import APIError, unknown_model
from .guard import Guard

REPLICA_HEADER = "x-frod-rt-replica"
APP_NAME = "frod_rt"
_DROP_HEADERS = {b"content-length", b"transfer-encoding", b"connection"}
# the death of the replica serving a request (retryable: another replica will answer)
_REPLICA_GONE = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                 ray.exceptions.NodeDiedError, ray.exceptions.OwnerDiedError,
                 ray.exceptions.TaskCancelledError, serve.exceptions.BackPressureError,
                 serve.exceptions.RequestCancelledError)


def replica_unavailable(exc: BaseException, replica: str | None = None) -> APIError:
    who = f"engine replica {replica}" if replica else "the engine replica"
    return APIError(503, f"{who} serving this request failed ({type(exc).__name__}); it is "
                    "being restarted and the other replicas keep serving: retry the request",
                    code="replica_unavailable")


@ray.remote(num_cpus=0)
class ReplicaBoard:
    """The latest report (``/health`` body, ``/metrics`` text) of every engine replica."""

    def __init__(self):
        self.reports: dict[str, tuple[float, dict]] = {}

    def put(self, replica: str, report: dict) -> None:
        self.reports[replica] = (time.monotonic(), report)

    def fresh(self, max_age_s: float) -> dict[str, dict]:
        now = time.monotonic()
        for r in [r for r, (t, _) in self.reports.items() if now - t > 10 * max_age_s]:
            del self.reports[r]
        return {r: rep for r, (t, rep) in self.reports.items() if now - t <= max_age_s}


def _board(name: str):
    return ReplicaBoard.options(name=name, namespace=APP_NAME, get_if_exists=True,
                                lifetime=None).remote()


@ray.remote(num_cpus=0, max_restarts=-1)
class AdapterCatalog:
    """The adapters of one deployment: name -> (resolved path, generation). Generations only
    increase (from the clock, so an actor restarted by Ray never hands out one it gave
    before). ``claim(token, initial)`` starts the catalog of a new deployment (``token`` from
    ``build_app``) and leaves that of a running one (a restarted router) as it is."""

    def __init__(self):
        self.token = None
        self.entries: dict[str, tuple[str, int]] = {}
        self.gen = time.time_ns() // 1000

    def claim(self, token: str, initial: dict) -> dict:
        if token != self.token:
            self.token = token
            self.entries = {n: (p, 0) for n, p in initial.items()}
        return dict(self.entries)

    def add(self, name: str, path: str) -> int | None:
        """The new generation, or None when ``name`` is taken."""
        if name in self.entries:
            return None
        self.gen += 1
        self.entries[name] = (path, self.gen)
        return self.gen

    def remove(self, name: str) -> bool:
        return self.entries.pop(name, None) is not None


_ROUTER_METRICS = None


def router_metrics():
    """This process's router counters, ``(registry, ApiCounters)`` (created on first use, in
    the router's own process: prometheus_client objects do not travel with the pickled router
    class). They are the replicas' API counters (server/metrics.py ``ApiCounters``), so
    ``merge_metrics`` adds them up: ``frod_rt_http_errors_total{status}`` for what the router
    refuses or answers itself (Guard's 400/401/403/413, unknown models, 503 for a replica
    gone, adapter route errors), ``frod_rt_adapter_loads_total`` /
    ``frod_rt_adapter_unloads_total`` for the catalog."""
    global _ROUTER_METRICS
    if _ROUTER_METRICS is None:
        from prometheus_client import CollectorRegistry

        from .metrics import ApiCounters
        r = CollectorRegistry(auto_describe=True)
        _ROUTER_METRICS = (r, ApiCounters(r))
    return _ROUTER_METRICS


def count_router_error(status: int) -> None:
    """Guard's ``on_error`` in the router (a module function: pickled by reference)."""
    router_metrics()[1].http_errors.labels(status=str(int(status))).inc()


def _catalog(name: str):
    """The deployment's catalog actor (detached: it outlives a router that Ray Serve
    restarts; ``shutdown_app`` removes it)."""
    return AdapterCatalog.options(name=name, namespace=APP_NAME, get_if_exists=True,
                                  lifetime="detached").remote()


def shutdown_app(app_name: str = APP_NAME) -> None:
    """Delete the Serve application ``app_name`` and its adapter catalog actor (detached: it
    would otherwise outlive the application on a Ray cluster that keeps running)."""
    try:
        serve.delete(app_name)
    except Exception:                       # noqa: BLE001 - not running / Serve down
        pass
    try:
        ray.kill(ray.get_actor(f"catalog:{app_name}", namespace=APP_NAME))
    except Exception:                       # noqa: BLE001 - never created / already gone
        pass


class _Resident:
    """An adapter held by one replica (the multiplexed "model"). Ray Serve calls
    ``__del__`` (in a thread) when its LRU evicts it: wait for the adapter's requests on
    this replica to finish, then ``Engine.remove_adapter``. Later calls (GC) do nothing."""

    def __init__(self, replica, name: str, gen: int):
        self.replica, self.name, self.gen = replica, name, gen
        self._released = False

    def __del__(self):
        if self._released:
            return
        self._released = True
        rep = self.replica
        deadline = time.monotonic() + 300
        while rep.in_use[self.name] > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if rep.generation.get(self.name) == self.gen:
            rep.generation.pop(self.name, None)
            try:
                rep.engine.remove_adapter(self.name)
            except Exception:             # noqa: BLE001 - already gone / engine closed
                pass


def _engine_replica_class(adapters_per_replica: int):
    """The engine deployment's class (its multiplex LRU size is fixed at class creation)."""

    class FrodEngine:
        """One ``Engine`` and the single-process app over it, inside one Ray Serve replica."""

        async def __init__(self, spec: dict):
            import torch

            from ..engine import Engine
            from .app import create_app
            if spec.get("threads"):
                torch.set_num_threads(int(spec["threads"]))
            self.replica_id = serve.get_replica_context().replica_id.unique_id
            opts = dict(spec.get("engine_options") or {})
            if isinstance(opts.get("dtype"), str):
                opts["dtype"] = getattr(torch, opts["dtype"])
            self.engine = await asyncio.to_thread(Engine.load, spec["base"], **opts)
            self.engine.base_name = spec["base_name"]
            self.app = create_app(self.engine, default_max_tokens=spec["default_max_tokens"],
                                  config=replica_config(spec["config"]))
            self.lifespan = Lifespan(self.app)
            await self.lifespan.startup()
            self.paths: dict[str, str] = {}          # adapter model id -> directory
            self.generation: dict[str, int] = {}     # adapter name -> generation loaded
            self.in_use: Counter = Counter()         # adapter name -> requests answering
            self.board_name = spec["board"]
            self.report_period = float(spec["report_period_s"])
            self._board = None
            self._reporter = asyncio.ensure_future(self._report_forever())
            self._closed = False

        # ---- adapters as multiplexed models ---------------------------------------------
        @serve.multiplexed(max_num_models_per_replica=adapters_per_replica)
        async def _adapter(self, model_id: str) -> _Resident:
            name, _, gen = model_id.rpartition("@")
            gen = int(gen)
            old = self.generation.get(name)
            if old is not None and old != gen:           # the name now means another file
                self.generation.pop(name, None)
                await asyncio.to_thread(self.engine.remove_adapter, name)
            if name not in self.engine.adapters():
                await asyncio.to_thread(self.engine.add_adapter, name, self.paths[model_id])
            self.generation[name] = gen
            return _Resident(self, name, gen)

        async def handle(self, method: str, path: str, query: bytes, headers: list,
                         body: bytes, adapter_path: str | None = None,
                         client: tuple = ("127.0.0.1", 0)):
            """Answer one HTTP request with the in-process app (``client``: the caller's
            address as the router saw it). Yields ``("start", status, headers, body or
            None, replica id)``, then the body chunks of a stream. The adapter is the
            request's multiplexed model id."""
            model_id = serve.get_multiplexed_model_id()
            name = None
            if model_id:
                name = model_id.rpartition("@")[0]
                self.paths[model_id] = adapter_path
                try:
                    await self._adapter(model_id)
                except Exception as e:               # noqa: BLE001 - bad file: this request
                    err = APIError(400, f"adapter {name!r} could not be loaded: {e}",
                                   param="model", code="invalid_adapter")
                    yield ("start", 400, [(b"content-type", b"application/json")],
                           json.dumps(err.body()).encode(), self.replica_id)
                    return
                self.in_use[name] += 1
            try:
                first = True
                async for part in call_app(self.app, method, path, query, headers, body,
                                           client=tuple(client)):
                    if first:
                        first = False
                        yield (*part, self.replica_id)
                    else:
                        yield part
            finally:
                if name is not None:
                    self.in_use[name] -= 1

        async def check_adapter(self, path: str, name: str, root: str,
                                vllm: bool = False) -> tuple | None:
            """None if the adapter directory ``path`` (already resolved under ``root``)
            loads on this base, else ``(status, message, param, code)`` of the error the
            single-process server answers (``adapter_routes.load_failure``)."""
            probe = f"__frod_rt_check_{os.getpid()}_{time.monotonic_ns()}"
            try:
                await asyncio.to_thread(self.engine.add_adapter, probe, path)
            except LOAD_ERRORS as e:
                err = load_failure(e, Path(root), name, vllm)
                return err.status, err.message, err.param, err.code
            self.engine.remove_adapter(probe)
            return None

        # ---- reports for /health and /metrics --------------------------------------------
        async def report(self) -> dict:
            """This replica's ``/health`` body and ``/metrics`` text (from its own app)."""
            out = {"replica": self.replica_id, "pid": os.getpid(),
                   "threads": int(__import__("torch").get_num_threads())}
            for route in ("/health", "/metrics"):
                async for part in call_app(self.app, "GET", route):
                    body = part[3]
                    if route == "/health":
                        out["health"] = json.loads(body)
                        out["health"]["status_code"] = part[1]
                    else:
                        out["metrics"] = body.decode()
            out["health"].update(replica=self.replica_id, pid=out["pid"],
                                 threads=out["threads"],
                                 resident_adapters=sorted(self.generation))
            return out

        async def _report_forever(self) -> None:
            while True:
                try:
                    if self._board is None:
                        self._board = _board(self.board_name)
                    await self._board.put.remote(self.replica_id, await self.report())
                except Exception:                    # noqa: BLE001 - board restarting
                    self._board = None
                await asyncio.sleep(self.report_period)

        def check_health(self) -> None:
            """Ray Serve's health check: the engine loop thread must be running."""
            if not self.app.state.server.loop.alive:
                raise RuntimeError("the engine loop is not running")

        def __del__(self):
            if getattr(self, "_closed", True):
                return
            self._closed = True
            self._reporter.cancel()
            self.app.state.server.loop.stop()
            self.engine.close()

    return FrodEngine


def replica_config(config: ServerConfig) -> ServerConfig:
    """The config of a replica's in-process app: the router already enforced the API key,
    the Host allow-list and the body size (the replicas are reachable only through it), and
    loads adapters itself; the request limits (strict fields, prompt and stop sizes) hold."""
    return dataclasses.replace(config, api_key=None, allowed_hosts=(), enable_docs=False,
                               allow_adapter_loading=None)


def _router_class(config: ServerConfig):
    """The ingress deployment's class (FastAPI routes bound by ``serve.ingress``), behind
    the single-process server's ``Guard`` for ``config`` (Host allow-list, API key on
    every route but /health, body size)."""
    docs = config.enable_docs
    fapp = FastAPI(title="frod_rt (Ray Serve)", version="0.1.0",
                   docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                   openapi_url="/openapi.json" if docs else None)
    fapp.add_middleware(Guard, config=config, on_error=count_router_error)

    @serve.ingress(fapp)
    class FrodRouter:
        """Resolves ``model``, routes adapters by multiplexing, aggregates the replicas."""

        def __init__(self, engine, spec: dict):
            self.engine = engine
            self.config = spec["config"]
            self.base_name = spec["base_name"]
            # name -> (path, generation): a copy of the catalog actor's, which outlives this
            # router (run-time loads survive a restart of the router by Ray Serve)
            self.catalog_actor = _catalog(spec["catalog"])
            self.catalog: dict[str, tuple[str, int]] = ray.get(
                self.catalog_actor.claim.remote(spec["catalog_token"], spec["adapters"]))
            self.replicas = int(spec["replicas"])
            self.stale_s = 4 * float(spec["report_period_s"]) + 1.0
            self.board = _board(spec["board"])
            self.started = int(time.time())
            self.me = "router:" + serve.get_replica_context().replica_id.unique_id
            self.lock = asyncio.Lock()

        def _headers(self) -> dict:
            return {REPLICA_HEADER: self.me}

        def _error(self, e: APIError) -> JSONResponse:
            count_router_error(e.status)
            r = e.response()
            r.headers[REPLICA_HEADER] = self.me
            return r

        def _card(self, name: str) -> dict:
            b = self.base_name
            return {"id": name, "object": "model", "created": self.started,
                    "owned_by": "frod_rt", "root": b, "parent": None if name == b else b}

        async def _parse(self, request: Request, model):
            """The body as ``model`` (a pydantic class); 400 naming the problem."""
            try:
                return model.model_validate_json(await request.body())
            except ValueError as e:                  # pydantic ValidationError / JSON
                raise APIError(400, f"body: {e}", code="invalid_request") from None

        # ---- models and adapters (the router's catalog) ---------------------------------
        @fapp.get("/v1/models")
        async def models(self):
            names = [self.base_name] + list(self.catalog)
            return JSONResponse({"object": "list", "data": [self._card(n) for n in names]},
                                headers=self._headers())

        @fapp.get("/v1/models/{name}")
        async def model(self, name: str):
            if name != self.base_name and name not in self.catalog:
                return self._error(unknown_model(name))
            return JSONResponse(self._card(name), headers=self._headers())

        async def _load(self, name: str, path: str, vllm: bool) -> None:
            """The single server's rules (adapter_routes): 403 unless --allow-adapter-loading,
            the path resolved under the root, then one replica checks the adapter loads on
            the base; the catalog records the resolved path under a new generation."""
            root = loading_root(self.config)
            check_adapter_name(name, self.base_name, vllm, forbidden="/@")
            async with self.lock:
                if name in self.catalog:
                    raise already_loaded(name, vllm)
                real = resolve_under_root(root, path, "lora_path" if vllm else "path")
                try:
                    bad = await self.engine.check_adapter.remote(str(real), name, str(root),
                                                                 vllm)
                except _REPLICA_GONE as e:
                    raise replica_unavailable(e) from None
                if bad:
                    raise APIError(*bad)
                gen = await self.catalog_actor.add.remote(name, str(real))
                if gen is None:                  # taken by another router meanwhile
                    raise already_loaded(name, vllm)
                self.catalog[name] = (str(real), gen)
                router_metrics()[1].adapter_loads.inc()

        async def _unload(self, name: str, vllm: bool) -> None:
            loading_root(self.config)
            async with self.lock:
                if name not in self.catalog:
                    raise not_loaded(name, vllm)
                await self.catalog_actor.remove.remote(name)
                del self.catalog[name]
                router_metrics()[1].adapter_unloads.inc()

        @fapp.post("/v1/adapters")
        async def load_adapter(self, request: Request):
            try:
                req = await self._parse(request, AdapterLoadRequest)
                await self._load(req.name, req.path, vllm=False)
            except APIError as e:
                return self._error(e)
            return JSONResponse(self._card(req.name), status_code=201,
                                headers=self._headers())

        @fapp.delete("/v1/adapters/{name}")
        async def unload_adapter(self, name: str):
            try:
                await self._unload(name, vllm=False)
            except APIError as e:
                return self._error(e)
            return JSONResponse({"id": name, "object": "model", "deleted": True},
                                headers=self._headers())

        @fapp.post("/v1/load_lora_adapter")
        async def load_lora_adapter(self, request: Request):
            try:
                req = await self._parse(request, LoadLoRAAdapterRequest)
                await self._load(req.lora_name, req.lora_path, vllm=True)
            except APIError as e:
                return self._error(e)
            return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added "
                                     "successfully.", headers=self._headers())

        @fapp.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(self, request: Request):
            try:
                req = await self._parse(request, UnloadLoRAAdapterRequest)
                await self._unload(req.lora_name, vllm=True)
            except APIError as e:
                return self._error(e)
            return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed "
                                     "successfully.", headers=self._headers())

        # ---- operations: aggregated over the replicas -------------------------------------
        async def _reports(self) -> dict[str, dict]:
            return await self.board.fresh.remote(self.stale_s)

        @fapp.get("/health")
        async def health(self):
            reps = await self._reports()
            code, body = merge_health(self.base_name, {r: v["health"] for r, v in
                                                       reps.items()}, self.replicas)
            body["adapters"] = len(self.catalog)
            body["router"] = {"replica": self.me, "pid": os.getpid()}
            return JSONResponse(body, status_code=code, headers=self._headers())

        @fapp.get("/metrics")
        async def metrics(self):
            reps = await self._reports()
            from prometheus_client import generate_latest
            own = generate_latest(router_metrics()[0]).decode()
            text = merge_metrics({r: v["metrics"] for r, v in reps.items()}, extra=(own,))
            return PlainTextResponse(text, media_type="text/plain; version=0.0.4",
                                     headers=self._headers())

        # ---- everything else: forwarded to an engine replica -------------------------------
        @fapp.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
        async def forward(self, path: str, request: Request):
            body = await request.body()
            model = None
            if request.method == "POST" and body:
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None                  # the replica's app answers 400
                if isinstance(parsed, dict):
                    model = parsed.get("model")
                    if parsed.get("adapter_weights") is not None:
                        return self._error(APIError(
                            400, "adapter_weights: blends of adapters are not served with "
                            "--replicas > 1 (each replica holds only some adapters); use one "
                            "engine (--replicas 1) for blends", param="adapter_weights",
                            code="unsupported_in_scale_out"))
            handle = self.engine.options(stream=True, method_name="handle")
            apath = None
            if isinstance(model, str) and model != self.base_name:
                if model not in self.catalog:
                    return self._error(unknown_model(model))
                apath, gen = self.catalog[model]
                handle = handle.options(multiplexed_model_id=f"{model}@{gen}")
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
            client = ((request.client.host, request.client.port) if request.client
                      else ("127.0.0.1", 0))
            gen_ = handle.remote(request.method, request.url.path,
                                 request.url.query.encode(), headers, body, apath, client)
            try:
                _, status, hdrs, full, replica = await gen_.__anext__()
            except _REPLICA_GONE as e:
                return self._error(replica_unavailable(e))
            out = {k.decode("latin-1"): v.decode("latin-1") for k, v in hdrs
                   if k.lower() not in _DROP_HEADERS}
            out[REPLICA_HEADER] = replica
            if full is not None:
                return Response(content=full, status_code=status, headers=out)
            return StreamingResponse(_relay(gen_, replica), status_code=status, headers=out)

    return FrodRouter


async def _relay(gen, replica: str):
    """The rest of a streamed answer; if the replica dies meanwhile, one SSE error event
    (503 ``replica_unavailable``) and ``[DONE]`` end the stream."""
    done = False
    try:
        async for chunk in gen:
            yield chunk
        done = True
    except _REPLICA_GONE as e:
        done = True
        body = replica_unavailable(e, replica).body()
        yield f"data: {json.dumps(body)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        if not done:                               # the client went away
            gen.cancel()


def build_app(base, adapters: dict | None = None, replicas: int = 2, *,
              served_name: str | None = None, default_max_tokens: int = 16,
              engine_options: dict | None = None, threads_per_replica: int | None = 1,
              replica_cpus: float = 1, replica_gpus: float = 0,
              adapters_per_replica: int = 16, health_check_period_s: float = 2.0,
              report_period_s: float = 0.5, app_name: str = APP_NAME,
              config: ServerConfig | None = None):
    """The Ray Serve application: ``replicas`` engine replicas behind one router.

    Args:
        base: Hugging Face model directory (the same path must exist on every node).
        adapters: ``{name: directory}`` served from the start (more via POST /v1/adapters).
        replicas: engine replicas (one ``Engine`` each).
        served_name: the base model's name (default: the basename of ``base``).
        engine_options: keyword arguments of ``Engine.load`` (limits, ``device``, ``dtype``
            as a name such as "float16", ``cache_dir``).
        threads_per_replica: ``torch.set_num_threads`` in each replica (None: Ray's default).
        replica_cpus / replica_gpus: Ray resources reserved per engine replica.
        adapters_per_replica: size of each replica's multiplex LRU of adapters.
        health_check_period_s: how often Ray Serve checks each replica's engine loop.
        report_period_s: how often replicas post their /health and /metrics to the board.
        config: the single-process server's limits and security options
            (``ServerConfig``; defaults open nothing), enforced by the router on every
            route (API key, Host, body size, run-time adapter loading under its root) and
            by the replicas' apps (strict fields, prompt and stop limits).
    Returns:
        a ``ray.serve`` Application for ``serve.run`` (``run_app`` does it).
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if adapters_per_replica < 1:
        raise ValueError(f"adapters_per_replica must be >= 1, got {adapters_per_replica}")
    adapters = {str(n): str(Path(p)) for n, p in (adapters or {}).items()}
    base_name = served_name or Path(base).name
    bad = [n for n in adapters if n == base_name or "@" in n or not n]
    if bad:
        raise ValueError(f"adapter name(s) {bad}: must be non-empty, differ from the base "
                         f"model's name {base_name!r} and not contain '@'")
    spec = {"base": str(base), "base_name": base_name,
            "default_max_tokens": int(default_max_tokens),
            "engine_options": dict(engine_options or {}), "threads": threads_per_replica,
            "board": f"board:{app_name}", "report_period_s": report_period_s,
            "catalog": f"catalog:{app_name}", "catalog_token": uuid.uuid4().hex,
            "adapters": adapters, "replicas": replicas,
            "config": config if config is not None else ServerConfig()}
    engine_dep = serve.deployment(
        _engine_replica_class(adapters_per_replica), name="FrodEngine",
        num_replicas=replicas, health_check_period_s=health_check_period_s,
        health_check_timeout_s=max(30.0, 3 * health_check_period_s),
        max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus})
    router_dep = serve.deployment(_router_class(spec["config"]), name="FrodRouter", num_replicas=1,
                                  max_ongoing_requests=4096,
                                  ray_actor_options={"num_cpus": 0})
    # the engine replicas never see the API key (only the router checks it)
    engine_spec = {**spec, "config": replica_config(spec["config"])}
    return router_dep.bind(engine_dep.bind(engine_spec), spec)


def worker_env() -> dict:
    """``{"PYTHONPATH": ...}`` that lets local Ray workers import the ``frod_rt`` this
    process runs when it is not installed in site-packages (a source checkout run with
    ``PYTHONPATH=python``): its absolute source root first. Empty when installed."""
    import site

    import frod_rt
    src = str(Path(frod_rt.__file__).resolve().parents[1])
    sites = {str(Path(p).resolve()) for p in site.getsitepackages()}
    if src in sites:
        return {}
    parts = [src] + [str(Path(p).resolve())
                     for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}


def run_app(app, host: str = "127.0.0.1", port: int = 8000, *, ray_address: str | None = None,
            num_cpus: int | None = None, app_name: str = APP_NAME, after_init=None):
    """Start Ray (a local one, or join ``ray_address``) and Serve's HTTP proxy on
    ``host:port``, deploy ``app`` under ``app_name`` and wait until every replica is up.
    A local Ray gets ``num_cpus`` CPUs (default: all), no dashboard, and workers that import
    the same ``frod_rt`` as this process (``worker_env``). Returns the router's
    ``DeploymentHandle``. ``shutdown_app()``, ``serve.shutdown()`` and ``ray.shutdown()``
    undo it.
    ``after_init()`` is called once Ray is up, before deploying (``frod-rt serve`` installs
    its SIGINT/SIGTERM handlers there: ``ray.init`` replaces them with one that aborts)."""
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False}
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            saved = os.environ.get("PYTHONPATH")
            os.environ.update(worker_env())     # the local workers inherit it
            try:
                # address="local": always a new local instance; with no address Ray joins a
                # local cluster it finds running (another process's), whose shutdown then
                # kills this one's actors
                ray.init(address="local", num_cpus=num_cpus, **kw)
            finally:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
    if after_init is not None:
        after_init()
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    return serve.run(app, name=app_name, route_prefix="/")
