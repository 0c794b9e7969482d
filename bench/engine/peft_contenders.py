"""PEFT-side contenders of the engine suite (each builds its model once per adapter count).

    peft_frod      upstream PEFT FRoD (``peft.FrodConfig``), one adapter active at a time:
                   requests grouped by adapter, ``set_adapter`` then ``generate`` per group
    merged         the same PEFT FRoD adapters, per group ``merge_adapter`` (W' = W + dW
                   materialised into the base weights), ``generate``, ``unmerge_adapter``
    peft_lora      PEFT LoRA of similar trainable size, mixed batches through
                   ``generate(..., adapter_names=[...])`` (one adapter name per row)
"""
from __future__ import annotations

import time

from .hf_serve import chunks, serve_batches
from .model import TARGETS, clone


def adapter_name(i: int) -> str:
    return f"a{i}"


def build_peft_frod(base, num_adapters: int, sparse_rate: float, seed: int = 0,
                    targets=TARGETS):
    """A PeftModel with ``num_adapters`` FRoD adapters of random non-zero values.
    Returns (model, setup_seconds)."""
    import torch
    from peft import FrodConfig, get_peft_model
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = dict(target_modules=list(targets), sparse_rate=sparse_rate, init_weights=False,
               progressbar=False)
    model = get_peft_model(clone(base), FrodConfig(**cfg), adapter_name=adapter_name(0))
    for i in range(1, num_adapters):
        model.add_adapter(adapter_name(i), FrodConfig(**cfg))
    model.eval()
    return model, time.perf_counter() - t0


def lora_rank(base, sparse_rate: float, targets=TARGETS) -> int:
    """LoRA rank whose trainable size matches FRoD's ``in + k`` per layer (summed over the
    targeted layers of ``base``), at least 1."""
    import torch.nn as nn
    frod = lora_per_rank = 0
    for name, mod in base.named_modules():
        if isinstance(mod, nn.Linear) and name.split(".")[-1] in targets:
            n = mod.in_features
            frod += n + round(n * n * sparse_rate)
            lora_per_rank += mod.in_features + mod.out_features
    return max(1, round(frod / max(lora_per_rank, 1)))


def build_peft_lora(base, num_adapters: int, rank: int, seed: int = 0, targets=TARGETS):
    """A PeftModel with ``num_adapters`` LoRA adapters (random non-zero A and B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = dict(target_modules=list(targets), r=rank, lora_alpha=2 * rank, init_lora_weights=False)
    model = get_peft_model(clone(base), LoraConfig(**cfg), adapter_name=adapter_name(0))
    for i in range(1, num_adapters):
        model.add_adapter(adapter_name(i), LoraConfig(**cfg))
    model.eval()
    return model, time.perf_counter() - t0


def serve_peft_frod(model, wl, device: str, max_batch: int) -> dict:
    def batches():
        for a, idx in wl.groups().items():
            name = adapter_name(a)
            for part in chunks(idx, max_batch):
                yield (lambda n=name: model.set_adapter(n)), part, {}
    return serve_batches(batches(), model, wl, device)


def serve_merged(model, wl, device: str, max_batch: int) -> dict:
    def switch(name: str) -> None:
        if _any_merged(model):
            model.unmerge_adapter()
        model.set_adapter(name)
        model.merge_adapter([name])

    def batches():
        for a, idx in wl.groups().items():
            for j, part in enumerate(chunks(idx, max_batch)):
                yield ((lambda n=adapter_name(a): switch(n)) if j == 0 else None), part, {}
    try:
        return serve_batches(batches(), model, wl, device)
    finally:
        if _any_merged(model):
            model.unmerge_adapter()


def _any_merged(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) and m.merged for m in model.modules())


def serve_peft_lora(model, wl, device: str, max_batch: int) -> dict:
    def batches():
        for part in chunks(list(range(len(wl.prompts))), max_batch):
            names = [adapter_name(wl.adapters[i]) for i in part]
            yield None, part, {"adapter_names": names}
    return serve_batches(batches(), model, wl, device)
