"""A small saved toy Llama with a few adapters, for the server tests that start their own
servers (limits, security, load)."""
from __future__ import annotations

from pathlib import Path

from frod_rt.engine import Engine
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer

TARGETS = [["q_proj", "v_proj"], ["gate_proj", "up_proj", "down_proj"], ["o_proj", "k_proj"]]


def make_toy(root: Path, n_adapters: int = 3) -> dict:
    """``root/toybase`` (model + tokenizer), adapters ``root/adapters/a<i>``, cache."""
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3)
    base = save_toy_model(model, tok, root / "toybase")
    cache = root / "cache"
    ads = {}
    for i in range(n_adapters):
        ads[f"a{i}"] = root / "adapters" / f"a{i}"
        random_adapter(model, ads[f"a{i}"], TARGETS[i % len(TARGETS)], seed=40 + i,
                       cache_dir=cache)
    return {"root": root, "base": base, "cache": cache, "adapters": ads,
            "adapter_root": root / "adapters"}


def engine(toy: dict, adapters=None, **kw) -> Engine:
    kw.setdefault("device_adapter_capacity", 4)
    return Engine.load(toy["base"], adapters=toy["adapters"] if adapters is None else adapters,
                       cache_dir=toy["cache"], **kw)
