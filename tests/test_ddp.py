"""Data-parallel training (DistributedDataParallel, gloo, 2 CPU processes) without
``find_unused_parameters`` and without broadcasting the frozen FRoD buffers: the adapters
saved after 3 steps equal those of one process on the same global batch."""
from __future__ import annotations

import os
import time

import pytest
import torch

STEPS = 3
NAMES = ["a", "a", "b", "b"]           # rank 0 sees only "a", rank 1 only "b"; "c" is idle


def _model():
    from frod_rt import FrodConfig, get_frod_model
    from frod_models import LLAMA_TARGETS, tiny_llama
    cfg = lambda seed: FrodConfig(LLAMA_TARGETS, sparse_rate=0.1, seed=seed, progress=False)
    fm = get_frod_model(tiny_llama(dtype=torch.float64), cfg(0), adapter_name="a")
    fm.add_adapter("b", cfg(1))
    fm.add_adapter("c", cfg(0))
    return fm.train()


def _data():
    return torch.randint(1, 60, (STEPS, len(NAMES), 9), generator=torch.Generator().manual_seed(0))


def _train(fm, module, ids_all, names, rows):
    opt = torch.optim.AdamW(fm.optimizer_param_groups(lr_s=1e-2, lr_dl=1e-2))
    for ids in ids_all:
        ids = ids[rows]
        loss = module(input_ids=ids, labels=ids, adapter_names=[names[i] for i in rows]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fm = _model()
        ddp = DDP(fm)                      # find_unused_parameters=False, broadcast_buffers=True
        frod_bufs = {id(b) for n, b in fm.named_buffers() if "frod_" in n or "state." in n}
        assert frod_bufs and not frod_bufs & {id(b) for b in ddp.modules_buffers}
        per = len(NAMES) // world
        _train(fm, ddp, _data(), NAMES, list(range(rank * per, (rank + 1) * per)))
        if rank == 0:
            fm.save_pretrained(out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, monkeypatch):
    import torch.multiprocessing as mp
    from frod_rt import read_adapter
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    ref = _model()
    _train(ref, ref, _data(), NAMES, list(range(len(NAMES))))
    ref.save_pretrained(tmp_path / "one")
    ctx = mp.start_processes(_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "two")),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-process DDP run did not finish in 240 s")
    for name, sub in (("a", ""), ("b", "b"), ("c", "c")):
        one = read_adapter(tmp_path / "one" / sub)
        two = read_adapter(tmp_path / "two" / sub)
        assert one.name == two.name == name
        for layer, d in one.layers.items():
            torch.testing.assert_close(two.layers[layer].dl, d.dl, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(two.layers[layer].s, d.s, rtol=1e-9, atol=1e-12)
        moved = any(bool(d.dl.any()) for d in one.layers.values())
        assert moved == (name != "c")
