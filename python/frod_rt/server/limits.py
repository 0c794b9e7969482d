"""Request limits checked on the event loop before any heavy work, and tokenization off it.

Everything here is O(request size) with small constants (``len`` of strings and lists), so a
huge prompt is refused in microseconds; tokenizing, which can take seconds for megabytes of
text, runs in a worker thread (``tokenize_prompts``) so ``/health`` and other clients are
never stalled by it.
"""
from __future__ import annotations

import asyncio

from .errors import APIError


def check_prompts(prompts: list, char_limit: int, max_model_len: int,
                  field: str = "prompt") -> None:
    """400 (``param``: ``field``) for a text prompt over ``char_limit`` characters or a
    token-id prompt over ``max_model_len`` ids."""
    for p in prompts:
        if isinstance(p, str) and len(p) > char_limit:
            raise APIError(400, f"{field}: {len(p)} characters is more than this server "
                           f"accepts ({char_limit})", param=field, code="prompt_too_long")
        if isinstance(p, list) and len(p) > max_model_len:
            raise APIError(400, f"{field}: {len(p)} tokens is more than the model's context "
                           f"({max_model_len})", param=field, code="prompt_too_long")


def check_messages(messages, char_limit: int) -> None:
    """400 (``param: messages``) when the chat contents together exceed ``char_limit``."""
    total = 0
    for m in messages:
        c = m.content
        if isinstance(c, str):
            total += len(c)
        elif c:
            total += sum(len(part.text or "") for part in c)
    if total > char_limit:
        raise APIError(400, f"messages: {total} characters is more than this server accepts "
                       f"({char_limit})", param="messages", code="prompt_too_long")


def check_stops(req, config) -> None:
    """Count and length of ``stop`` strings and of ``stop_token_ids``."""
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > config.max_stop_strings:
        raise APIError(400, f"stop: {len(stops)} strings; at most {config.max_stop_strings}",
                       param="stop")
    if any(len(s) > config.max_stop_chars for s in stops):
        raise APIError(400, f"stop: a string longer than {config.max_stop_chars} characters",
                       param="stop")
    if req.stop_token_ids and len(req.stop_token_ids) > config.max_stop_token_ids:
        raise APIError(400, f"stop_token_ids: {len(req.stop_token_ids)} ids; at most "
                       f"{config.max_stop_token_ids}", param="stop_token_ids")


def _tokenize_all(tokenizer, prompts: list) -> list:
    out = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise APIError(400, "prompt: text needs a tokenizer; send token ids",
                               param="prompt")
            out.append(list(tokenizer(p)["input_ids"]))
        else:
            out.append(p)
    return out


async def tokenize_prompts(tokenizer, prompts: list, max_model_len: int) -> list:
    """Token ids of every prompt (text is tokenized in a worker thread, exactly as
    ``Engine.add_request`` would); 400 when one has more tokens than the context holds."""
    if not any(isinstance(p, str) for p in prompts):
        return prompts
    ids = await asyncio.to_thread(_tokenize_all, tokenizer, prompts)
    check_prompts([x for x in ids if isinstance(x, list)], 1 << 62, max_model_len)
    return ids
