"""What the engine hands back: per-step deltas and finished results."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    """One per request per engine step that produced something (or finished it)."""
    request_id: str
    new_token_ids: list[int]
    new_text: str                   # detokenized delta ("" while a UTF-8 char is incomplete)
    finished: bool
    finish_reason: str | None       # "stop" | "length" | "abort" | "error" | None
    error: str | None = None        # why the request failed ("error") or could not be served


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
