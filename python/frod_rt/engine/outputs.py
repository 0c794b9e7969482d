"""What the engine hands back: per-step deltas and finished results.

``Engine.step()`` / ``Engine.stream()`` yield :class:`RequestOutput`: the *delta* of one step
(``new_token_ids``, ``new_text``) and, shaped as vLLM's ``RequestOutput``, ``outputs[0]``
(a :class:`CompletionOutput`) with the *cumulative* ``text`` and ``token_ids`` so far, so code
written for vLLM's streaming (``out.outputs[0].text``) reads the same thing here.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """vLLM-shaped completion: everything emitted so far for one request (``n = 1``)."""
    index: int
    text: str                       # cumulative text (stop strings cut, held-back text excluded)
    token_ids: list[int]            # cumulative generated token ids
    finish_reason: str | None


@dataclass
class RequestOutput:
    """One per request per engine step that produced something (or finished it).

    ``new_token_ids`` / ``new_text``: what this step added (``new_text`` is "" while a UTF-8
    character is incomplete or a possible stop string is held back). ``outputs[0].text`` /
    ``outputs[0].token_ids``: all of it so far (vLLM's field names). ``finished`` and
    ``finish_reason`` ("stop" | "length" | "abort" | None) as in vLLM."""
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None       # "stop" | "length" | "abort" | "error" | None
    error: str | None = None        # why the request failed ("error") or could not be served
    timings: dict | None = None     # on the finishing output: Sequence.timings() (queued_s, ...)
    outputs: list[CompletionOutput] = field(default_factory=list)


@dataclass
class GenerationResult:
    """A finished request."""
    request_id: str
    adapter: str | None
    prompt: str | list[int]
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    timings: dict = field(default_factory=dict)   # queued_s, ttft_s, total_s, tokens_per_s
    error: str | None = None        # set when finish_reason is "error" (or an adapter failed)
