"""OpenAI request bodies (pydantic) and their translation to ``SamplingParams``.

Supported fields follow OpenAI's completions / chat completions API. Options the engine
cannot honour (``n`` > 1, ``best_of`` > 1, ``logprobs``, ``echo``, ``suffix``, non-zero
penalties, ``logit_bias``, tools) are refused with 400 naming the field rather than silently
ignored. Extra engine options (as in vLLM): ``top_k``, ``ignore_eos``, ``stop_token_ids``;
and ``adapter_weights`` ({adapter: weight}, a blend served as one virtual adapter).

Types are strict (``max_tokens: true`` or ``"5"`` is a 400, not 1 or 5). Unknown fields, at
any depth, are collected by ``unknown_fields`` and refused with a 400 naming them unless the
server runs with ``strict_fields=False`` (``--allow-unknown-fields``).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict

from .errors import APIError


_LENIENT = ConfigDict(extra="allow", strict=True)


class StreamOptions(BaseModel):
    model_config = _LENIENT
    include_usage: bool = False


class _Common(BaseModel):
    model_config = _LENIENT
    model: str
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # engine extras
    top_k: Optional[int] = None
    ignore_eos: Optional[bool] = None
    stop_token_ids: Optional[list[int]] = None
    # a blend of adapters instead of one (``model`` = the base's name); see docs/server.md
    adapter_weights: Optional[dict[str, float]] = None


class CompletionRequest(_Common):
    """POST /v1/completions. ``prompt``: a string, a list of strings, a list of token ids
    or a list of token-id lists (one choice per prompt)."""
    prompt: Union[str, list[str], list[int], list[list[int]]]
    best_of: Optional[int] = None
    echo: Optional[bool] = None
    logprobs: Optional[int] = None
    suffix: Optional[str] = None


class ContentPart(BaseModel):
    model_config = _LENIENT
    type: str
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = _LENIENT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_call_id: Optional[str] = None


class ChatRequest(_Common):
    """POST /v1/chat/completions."""
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list[Any]] = None
    response_format: Optional[dict] = None


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``model`` (and of its nested models and lists of
    models) that the schema does not define, e.g. ``["temprature", "messages.0.foo"]``."""
    out = [prefix + k for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        v = getattr(model, name)
        items = list(enumerate(v)) if isinstance(v, list) else [(None, v)]
        for i, item in items:
            if isinstance(item, BaseModel):
                sub = f"{prefix}{name}." + (f"{i}." if i is not None else "")
                out += unknown_fields(item, sub)
    return out


def check_unknown_fields(model: BaseModel) -> None:
    """400 naming the unknown fields of a request body."""
    bad = unknown_fields(model)
    if bad:
        raise APIError(400, f"unknown field(s): {', '.join(bad)} (the server refuses fields "
                       "it does not implement; see docs/server.md)", param=bad[0],
                       code="unknown_field")


def _refuse(field: str, why: str) -> APIError:
    return APIError(400, f"{field}: {why}", param=field, code="unsupported_parameter")


def check_unsupported(req: _Common) -> None:
    """Raise 400 for options this server does not implement."""
    if req.n not in (None, 1):
        raise _refuse("n", "only n=1 is supported (send several requests instead)")
    for f in ("presence_penalty", "frequency_penalty"):
        v = getattr(req, f)
        if v not in (None, 0, 0.0):
            raise _refuse(f, "penalties are not supported (use 0)")
    if req.logit_bias:
        raise _refuse("logit_bias", "not supported")
    if isinstance(req, CompletionRequest):
        if req.best_of not in (None, 1):
            raise _refuse("best_of", "only best_of=1 is supported")
        if req.echo:
            raise _refuse("echo", "not supported")
        if req.logprobs is not None:
            raise _refuse("logprobs", "not supported")
        if req.suffix:
            raise _refuse("suffix", "not supported")
    if isinstance(req, ChatRequest):
        if req.logprobs or req.top_logprobs:
            raise _refuse("logprobs", "not supported")
        if req.tools:
            raise _refuse("tools", "tool calls are not supported")
        if req.response_format and req.response_format.get("type") not in (None, "text"):
            raise _refuse("response_format", "only {'type': 'text'} is supported")


def sampling_dict(req: _Common, default_max_tokens: int) -> dict:
    """The request's sampling options as ``SamplingParams`` keywords (validated later by
    the engine; its ValueError becomes 400 naming the field). OpenAI defaults: temperature 1,
    top_p 1; max_tokens defaults to ``default_max_tokens``."""
    mt = req.max_tokens
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        mt = req.max_completion_tokens
    sp: dict = {"max_tokens": default_max_tokens if mt is None else mt,
                "temperature": 1.0 if req.temperature is None else req.temperature,
                "top_p": 1.0 if req.top_p is None else req.top_p}
    if req.stop is not None:
        sp["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.seed is not None:
        sp["seed"] = req.seed
    if req.top_k is not None:
        sp["top_k"] = req.top_k
    if req.ignore_eos is not None:
        sp["ignore_eos"] = req.ignore_eos
    if req.stop_token_ids is not None:
        sp["stop_token_ids"] = list(req.stop_token_ids)
    return sp


def prompts_of(req: CompletionRequest) -> list:
    """The request's prompts as a list (each a string or a list of token ids)."""
    return entries_of(req.prompt, "prompt")


def entries_of(value, field: str) -> list:
    """A string, list of strings, token-id list or list of token-id lists -> a list of
    entries (strings or token-id lists); 400 naming ``field`` for an empty list."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise APIError(400, f"{field}: empty", param=field)
    if all(isinstance(x, int) for x in value):
        return [list(value)]
    return list(value)
