"""Run-time adapter routes: frod_rt's own and vLLM's, under the same rules.

    POST   /v1/adapters               {"name", "path"}           -> 201 + model card
    DELETE /v1/adapters/{name}                                    -> {"id", "deleted": true}
    POST   /v1/load_lora_adapter      {"lora_name", "lora_path"}  -> 200 "Success: ..." (vLLM)
    POST   /v1/unload_lora_adapter    {"lora_name"}               -> 200 "Success: ..." (vLLM)

All four answer 403 unless the server was started with ``--allow-adapter-loading ROOT``
(``ServerConfig.allow_adapter_loading``). A path is taken relative to ROOT (or absolute),
resolved with every symlink followed, and refused with 403 when the result is not inside
ROOT -- before anything under it is opened. Error messages show ROOT as ``<adapter-root>``,
never the server's absolute paths. Status codes of the vLLM routes follow vLLM: 400 for a
name already loaded or a bad adapter, 404 for a missing directory or an unknown name.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from ..engine.errors import UnknownAdapterError
from .errors import APIError

ROOT_LABEL = "<adapter-root>"


class AdapterLoadRequest(BaseModel):
    """POST /v1/adapters: load the adapter directory ``path`` under ``name``."""
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    path: str


class LoadLoRAAdapterRequest(BaseModel):
    """POST /v1/load_lora_adapter (vLLM's body)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    """POST /v1/unload_lora_adapter (vLLM's body; ``lora_int_id`` is accepted and unused)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    lora_name: str
    lora_int_id: int | None = None


def resolve_under_root(root: Path, given: str, param: str = "path") -> Path:
    """``given`` (absolute, or relative to ``root``) with symlinks resolved; APIError 403 when
    it lies outside ``root`` (the resolved root). Only path components are resolved: nothing
    inside the target is opened or listed."""
    if not given or "\x00" in given:
        raise APIError(400, f"{param}: expected a non-empty path", param=param)
    cand = Path(given)
    if not cand.is_absolute():
        cand = root / cand
    real = Path(os.path.realpath(cand))
    if real != root and root not in real.parents:
        raise APIError(403, f"{param}: the path is outside the directory the server may load "
                       "adapters from", param=param, code="path_not_allowed")
    return real


def loading_root(config) -> Path:
    """The resolved adapter root of ``config`` (a ``ServerConfig``); APIError 403 when
    run-time loading is disabled."""
    root = config.adapter_root()
    if root is None:
        raise APIError(403, "run-time adapter loading is disabled (start the server with "
                       "--allow-adapter-loading ROOT)", code="adapter_loading_disabled")
    return root


def check_adapter_name(name: str, base_name: str, vllm: bool = False,
                       forbidden: str = "/") -> None:
    """APIError 400 unless ``name`` is non-empty, free of the characters in ``forbidden``
    and differs from the base model's name."""
    nname = "lora_name" if vllm else "name"
    if not name or name == base_name or any(c in name for c in forbidden):
        shown = ", ".join(repr(c) for c in forbidden)
        raise APIError(400, f"{nname}: {name!r} is not a valid adapter name (it must be "
                       f"non-empty, without {shown}, and differ from the base model's name)",
                       param=nname)


def already_loaded(name: str, vllm: bool = False) -> APIError:
    if vllm:
        return APIError(400, f"The lora adapter '{name}' has already been loaded.",
                        param="lora_name", code="adapter_exists")
    return APIError(409, f"adapter {name!r} is already loaded; delete it first",
                    param="name", code="adapter_exists")


def not_loaded(name: str, vllm: bool = False) -> APIError:
    msg = (f"The lora adapter '{name}' cannot be found." if vllm
           else f"adapter {name!r} is not loaded")
    return APIError(404, msg, param="lora_name" if vllm else "name", code="model_not_found")


def load_failure(e: Exception, root: Path, name: str, vllm: bool = False) -> APIError:
    """The APIError for ``Engine.add_adapter`` raising ``e`` on a path under ``root``; the
    message shows ``root`` as ``<adapter-root>``."""
    pname = "lora_path" if vllm else "path"
    msg = str(e).replace(str(root), ROOT_LABEL)
    if isinstance(e, FileNotFoundError):
        return APIError(404 if vllm else 400, msg, param=pname, code="adapter_not_found")
    if "already loaded" in msg:
        return already_loaded(name, vllm)
    return APIError(400, msg, param=pname, code="invalid_adapter")


LOAD_ERRORS = (ValueError, TypeError, OSError)   # what add_adapter raises for a bad adapter


class AdapterAdmin:
    """Loading and unloading through the engine, serialised, with the rules above."""

    def __init__(self, state):
        self.state = state
        self.lock = asyncio.Lock()

    async def load(self, name: str, path: str, vllm: bool = False) -> None:
        """Raise APIError, or return once ``name`` serves."""
        root = loading_root(self.state.config)
        eng = self.state.engine
        check_adapter_name(name, eng.base_name, vllm)
        async with self.lock:
            if name in eng.adapters():
                raise already_loaded(name, vllm)
            real = resolve_under_root(root, path, "lora_path" if vllm else "path")
            try:
                await asyncio.to_thread(eng.add_adapter, name, str(real))
            except LOAD_ERRORS as e:
                raise load_failure(e, root, name, vllm) from None
            self.state.metrics.adapter_loads.inc()

    async def unload(self, name: str, vllm: bool = False) -> None:
        loading_root(self.state.config)
        async with self.lock:
            try:
                self.state.engine.remove_adapter(name)
            except UnknownAdapterError:
                raise not_loaded(name, vllm) from None
            self.state.metrics.adapter_unloads.inc()
        self.state.metrics.sweep()


def add_adapter_routes(app: FastAPI, state) -> AdapterAdmin:
    admin = AdapterAdmin(state)

    @app.post("/v1/adapters", status_code=201)
    async def load_adapter(req: AdapterLoadRequest):
        await admin.load(req.name, req.path)
        return state.model_card(req.name)

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str):
        await admin.unload(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoRAAdapterRequest):
        await admin.load(req.lora_name, req.lora_path, vllm=True)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added "
                                 "successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoRAAdapterRequest):
        await admin.unload(req.lora_name, vllm=True)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed "
                                 "successfully.")

    return admin
