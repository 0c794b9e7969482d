"""One request's state while the engine serves it."""
from __future__ import annotations

import enum
import time

import torch

from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """A request: prompt tokens, generated tokens, its KV blocks and its adapter.

    ``tokens`` = prompt + generated ids. ``num_computed`` tokens already have K/V in the
    cache (positions ``0..num_computed-1``); the next forward feeds
    ``tokens[num_computed : num_computed + chunk]``. ``block_table`` lists the KV blocks in
    position order. ``adapter`` is the adapter name (None = base model) and ``adapter_ref``
    the adapter *instance* it was submitted with (what it computes with, even after the name is
    removed and added again); ``slot`` is its device slot while the sequence is running (-1
    for the base model).
    """

    def __init__(self, request_id: str, prompt, prompt_ids: list[int], adapter: str | None,
                 sampling: SamplingParams, arrival: float | None = None, adapter_ref=None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_len = len(prompt_ids)
        self.tokens: list[int] = list(prompt_ids)
        self.adapter = adapter
        self.adapter_ref = adapter_ref
        self.sampling = sampling
        self.status = Status.WAITING
        self.num_computed = 0
        self.block_table: list[int] = []
        self.slot = -1
        self.finish_reason: str | None = None
        self.error: str | None = None   # why an aborted request could not be served
        self.text = ""                  # detokenized output, stop strings cut off
        self.emitted_text_len = 0       # chars of ``text`` already handed out
        self.emitted_tokens = 0         # output tokens already handed out
        self.held_text = ""             # decoded text not yet emitted (possible stop-string prefix)
        seed = sampling.seed if sampling.seed is not None else int(
            torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)
        self.arrival = time.perf_counter() if arrival is None else arrival
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.finished_at: float | None = None
        self.logits: list[torch.Tensor] | None = None   # filled when the engine records logits
        self.preemptions = 0

    # ---- token bookkeeping -------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED

    def remaining_prefill(self) -> int:
        """Tokens whose K/V are not yet in the cache (1 while decoding)."""
        return self.num_tokens - self.num_computed

    def timings(self) -> dict:
        end = self.finished_at or time.perf_counter()
        total = end - self.arrival
        queued = (self.first_scheduled or end) - self.arrival
        ttft = (self.first_token - self.arrival) if self.first_token else None
        gen_time = end - (self.first_scheduled or self.arrival)
        return {"queued_s": queued, "ttft_s": ttft, "total_s": total,
                "tokens_per_s": self.num_output / gen_time if gen_time > 0 else 0.0}

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, adapter={self.adapter!r}, "
                f"status={self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed})")
