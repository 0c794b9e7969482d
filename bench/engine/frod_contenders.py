"""frod_rt-side contenders of the engine suite: the ``frod_rt.Engine`` serving the base alone
(``frod_base``) and serving N adapters in mixed batches (``frod_engine``)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..timing import sync
from .model import TARGETS, clone


def write_frod_adapters(base, num_adapters: int, sparse_rate: float, folder: Path,
                        seed: int = 0, scale: float = 0.01, targets=TARGETS,
                        category_mode: str = "per_role") -> tuple[dict[str, Path], float]:
    """Write ``num_adapters`` frod_rt adapter files with random non-zero ``dl`` and ``s``
    (magnitude ``scale``) for every targeted layer of ``base``, on the decomposition of
    ``category_mode``. Returns ({name: dir}, seconds)."""
    from frod_rt.method import (AdapterConfig, AdapterFile, LayerDelta, decompose,
                                pattern_size, write_adapter)
    from frod_rt.method.adapter_io import FORMAT_VERSION, base_fields
    t0 = time.perf_counter()
    d = decompose(base, list(targets), cache_dir=folder / "decomposition-cache", progress=False,
                  category_mode=category_mode)
    cats = {key: {"out": c.out_features, "in": c.in_features,
                  "k": pattern_size(c.in_features, sparse_rate), "layers": list(c.layers),
                  "fingerprint": c.fingerprint} for key, c in d.categories.items()}
    cfg = AdapterConfig(format_version=FORMAT_VERSION, decomposition_fingerprint=d.fingerprint,
                        target_modules=list(targets), sparse_rate=sparse_rate, seed=0,
                        alpha=d.alpha, categories=cats, extra={"made_by": "bench"},
                        **base_fields(d))
    g = torch.Generator().manual_seed(seed)
    paths = {}
    for i in range(num_adapters):
        layers = {}
        for key, c in d.categories.items():
            k = cats[key]["k"]
            for name in c.layers:
                layers[name] = LayerDelta(dl=scale * torch.randn(c.in_features, generator=g),
                                          s=scale * torch.randn(k, generator=g))
        name = f"a{i}"
        write_adapter(AdapterFile(name, cfg, layers), folder / name)
        paths[name] = folder / name
    return paths, time.perf_counter() - t0


def build_engine(base, adapters: dict[str, Path], device: str, max_batch: int,
                 max_len: int, cache_dir: Path, merge_hot=(), auto_merge: bool = False):
    """A frod_rt Engine over a copy of ``base`` with every adapter resident on the device
    (``merge_hot``: adapter names served through materialised weights, the engine's opt-in
    merged variant; ``auto_merge``: the engine's opt-in automatic merging of a dominant
    adapter). Returns (engine, setup_seconds)."""
    from frod_rt.engine import Engine
    t0 = time.perf_counter()
    n = max(1, len(adapters))
    eng = Engine.load(clone(base), adapters=adapters or None, device=device,
                      max_num_seqs=max_batch, max_batch_tokens=max(2 * max_batch, 512),
                      kv_cache_tokens=max_batch * max_len * 2, max_waiting=1 << 20,
                      device_adapter_capacity=n, host_adapter_capacity=n, cache_dir=cache_dir,
                      **({"merge_hot": list(merge_hot)} if merge_hot else {}),
                      **({"auto_merge": True} if auto_merge else {}))
    return eng, time.perf_counter() - t0


def serve_engine(eng, wl, device: str) -> dict:
    """Queue every request at t=0, run ``step()`` until done; latency = finish time."""
    from frod_rt.engine import SamplingParams
    sp = SamplingParams(max_tokens=wl.max_tokens, temperature=0.0, ignore_eos=True)
    ids = {}
    lat = [0.0] * len(wl.prompts)
    generated = 0
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        for i, (p, a) in enumerate(zip(wl.prompts, wl.adapters)):
            rid = eng.add_request(p, adapter=None if a is None else f"a{a}", sampling=sp)
            ids[rid] = i
        while eng.has_unfinished():
            for out in eng.step():
                generated += len(out.new_token_ids)
                if out.finished:
                    if out.finish_reason != "length":
                        raise AssertionError(f"request {out.request_id} finished with "
                                             f"{out.finish_reason!r}")
                    sync(device)
                    lat[ids[out.request_id]] = time.perf_counter() - t0
                    eng._seqs.pop(out.request_id, None)
        sync(device)
        wall = time.perf_counter() - t0
    if generated != wl.max_tokens * len(wl.prompts):
        raise AssertionError(f"frod_rt engine generated {generated} tokens, expected "
                             f"{wl.max_tokens * len(wl.prompts)}")
    return {"wall_s": wall, "tokens": generated, "latencies_s": lat}
