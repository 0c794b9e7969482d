"""Helpers shared by the engine tests: random prompts and Hugging Face greedy references."""
from __future__ import annotations

import torch


def random_prompts(n: int, vocab: int, gen: torch.Generator, lo: int = 2, hi: int = 20):
    """n token-id prompts with lengths in [lo, hi) and ids in [3, vocab)."""
    lens = torch.randint(lo, hi, (n,), generator=gen).tolist()
    return [torch.randint(3, vocab, (L,), generator=gen).tolist() for L in lens]


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Exactly n greedy tokens from Hugging Face ``generate`` after ``prompt``. The attention
    mask is given (all ones): otherwise generate infers one from the pad token and masks
    prompt tokens that happen to equal it, which the engine (rightly) never does."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()

