"""Serving the engine workload with Hugging Face ``generate``: timing and latency bookkeeping
shared by the PEFT FRoD, PEFT LoRA and merged-per-adapter contenders.

All requests arrive at t=0 (offline batch); a request's latency is the time from t=0 until the
``generate`` call holding it returns. Batches hold at most ``max_batch`` prompts.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from ..timing import sync


def generate(model, prompts: list[list[int]], max_tokens: int, **kw) -> torch.Tensor:
    """Greedy generation of exactly ``max_tokens`` new tokens for equal-length prompts."""
    ids = torch.tensor(prompts, device=model.device)
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                          max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                          pad_token_id=0, **kw)


def chunks(idx: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(idx), size):
        yield idx[i:i + size]


def serve_batches(batches: Iterable[tuple[Callable[[], None] | None, list[int], dict]], model,
                  wl, device: str) -> dict:
    """Run ``(before, request_indices, generate_kwargs)`` batches in order; ``before`` (e.g.
    set_adapter / merge) runs inside the timed region. Returns tokens/s and latencies."""
    lat = [0.0] * len(wl.prompts)
    generated = 0
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        for before, idx, kw in batches:
            if before is not None:
                before()
            out = generate(model, [wl.prompts[i] for i in idx], wl.max_tokens, **kw)
            sync(device)
            generated += (out.shape[1] - len(wl.prompts[idx[0]])) * len(idx)
            now = time.perf_counter() - t0
            for i in idx:
                lat[i] = now
        wall = time.perf_counter() - t0
    if generated != wl.max_tokens * len(wl.prompts):
        raise AssertionError(f"generated {generated} tokens, expected "
                             f"{wl.max_tokens * len(wl.prompts)}")
    return {"wall_s": wall, "tokens": generated, "latencies_s": lat}
