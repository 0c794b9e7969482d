"""Token sampling: greedy, temperature, top-k, top-p, with a generator per request."""
from __future__ import annotations

import torch

from .sequence import Sequence


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and the top-p nucleus of a (V,) row."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = (torch.cumsum(probs, -1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


class Sampler:
    """Picks the next token of each sequence from its logits row.

    Greedy rows (temperature 0) take the argmax (lowest id on ties). Other rows divide by the
    temperature, apply top-k then top-p and draw with the sequence's own generator, so a
    seeded request gives the same tokens whatever its batch mates.
    """

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits: (B, V) float32, one row per sequence. Returns B token ids."""
        out: list[int] = []
        greedy = torch.argmax(logits, dim=-1).tolist()
        for i, seq in enumerate(seqs):
            sp = seq.sampling
            if sp.temperature == 0.0:
                out.append(int(greedy[i]))
                continue
            row = logits[i].float().cpu() / sp.temperature
            row = _filter(row, sp.top_k, sp.top_p)
            probs = torch.softmax(row, -1)
            out.append(int(torch.multinomial(probs, 1, generator=seq.generator).item()))
        return out
