"""Request sets for the engine suite: prompts and per-request adapters."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Workload:
    """``prompts[i]`` (token ids) is served with adapter ``adapters[i]`` (index or None)."""
    prompts: list[list[int]]
    adapters: list[int | None]
    num_adapters: int
    popularity: str
    max_tokens: int

    @property
    def distinct(self) -> int:
        return len({a for a in self.adapters if a is not None})

    def groups(self) -> dict:
        """Request indices per adapter, in first-seen order."""
        out: dict = {}
        for i, a in enumerate(self.adapters):
            out.setdefault(a, []).append(i)
        return out


def adapter_draw(num_requests: int, num_adapters: int, popularity: str,
                 gen: torch.Generator, zipf_s: float = 1.1) -> list[int]:
    """Adapter index per request. ``uniform``: every adapter equally often (round-robin,
    shuffled), so min(requests, adapters) distinct ones appear; ``zipf``: P(a) ~ 1/(a+1)^s."""
    if popularity == "uniform":
        ids = torch.arange(num_requests) % num_adapters
        ids = ids[torch.randperm(num_requests, generator=gen)]
    elif popularity == "zipf":
        w = 1.0 / torch.arange(1, num_adapters + 1, dtype=torch.float64) ** zipf_s
        ids = torch.multinomial(w, num_requests, replacement=True, generator=gen)
    else:
        raise ValueError(f"popularity: expected 'uniform' or 'zipf', got {popularity!r}")
    return ids.tolist()


def make_workload(num_requests: int, num_adapters: int, popularity: str, prompt_len: int,
                  max_tokens: int, vocab: int, seed: int = 0, base_only: bool = False) -> Workload:
    """Seeded prompts (ids in [1, vocab)) and adapters; ``base_only`` serves all requests
    with the base model (adapter None)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, vocab, (num_requests, prompt_len), generator=g).tolist()
    ads = [None] * num_requests if base_only else adapter_draw(num_requests, num_adapters,
                                                                popularity, g)
    return Workload(prompts, ads, num_adapters, "none" if base_only else popularity, max_tokens)
