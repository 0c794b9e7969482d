"""Token sampling: greedy, temperature, top-k, top-p, with a generator per request.

Sampling never raises for one row's numbers: a row whose logits hold NaN or +inf (or are all
-inf) is reported as failed (that request ends with an error) and the other rows are sampled
as usual. Temperatures below ``GREEDY_BELOW`` are treated as greedy (as vLLM does), because
dividing logits by them overflows float32 and no distribution is left to draw from.
"""
from __future__ import annotations

import torch

from .sequence import Sequence

GREEDY_BELOW = 1e-5     # temperatures below this sample greedily (argmax)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and the top-p nucleus of a (V,) row.
    The highest logit is always kept."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        # drop a token when the tokens ranked above it already reach top_p
        drop = (torch.cumsum(probs, -1) - probs) >= top_p
        drop[0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def bad_rows(logits: torch.Tensor) -> list[int]:
    """Rows of a (B, V) tensor that no sampler can use: any NaN or +inf, or no finite value."""
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | \
        ~torch.isfinite(logits).any(-1)
    return torch.nonzero(bad).flatten().tolist()


class Sampler:
    """Picks the next token of each sequence from its logits row.

    Greedy rows (temperature < ``GREEDY_BELOW``, 0 included) take the argmax (lowest id on
    ties). Other rows subtract the row's maximum and divide by the temperature (so the
    largest value is 0 and nothing overflows to NaN), apply top-k then top-p and draw with the sequence's own
    generator, so a seeded request gives the same tokens whatever its batch mates.
    """

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]
                 ) -> tuple[list[int | None], dict[int, str]]:
        """logits: (B, V), one row per sequence. Returns (B token ids, errors): a failed row
        has token None and ``errors[row]`` says why."""
        out: list[int | None] = []
        errors: dict[int, str] = {}
        bad = set(bad_rows(logits))
        greedy = torch.argmax(logits, dim=-1).tolist()
        for i, seq in enumerate(seqs):
            if i in bad:
                errors[i] = "the model produced non-finite logits (NaN or inf) for this request"
                out.append(None)
                continue
            sp = seq.sampling
            if sp.temperature < GREEDY_BELOW:
                out.append(int(greedy[i]))
                continue
            try:
                row = logits[i].float().cpu()
                row = (row - row.max()) / sp.temperature
                row = _filter(row, sp.top_k, sp.top_p)
                probs = torch.softmax(row, -1)
                out.append(int(torch.multinomial(probs, 1, generator=seq.generator).item()))
            except Exception as exc:     # noqa: BLE001 - this row fails, the others go on
                errors[i] = f"sampling failed: {type(exc).__name__}: {exc}"
                out.append(None)
        return out, errors
