"""Training contenders. Each trains ``N`` adapters, ``b`` rows per adapter per step, on the same
random token batches, and returns per-step seconds (time to advance ALL N adapters by one
optimizer step), setup seconds and peak memory.

    frod_mixed   frod_rt FrodModel holding N adapters; one forward/backward/AdamW step over a
                 mixed batch of N*b rows routed with ``adapter_names`` (each adapter gets only
                 its own gradients; the loss is scaled by N so each adapter sees the gradient of
                 its own mean loss, as in a separate run)
    peft_seq     N sequential PEFT FRoD runs (``peft.FrodConfig``), one model per run, each
                 stepping on its own b rows; the step time is the sum over runs
"""
from __future__ import annotations

import gc
import time

import torch

from ..engine.model import TARGETS, clone
from ..timing import sync
from .memory import PeakMemory, module_bytes

LR = 1e-3


def batches(N: int, rows: int, seq_len: int, vocab: int, steps: int, seed: int = 0):
    """``steps`` batches of (N*rows, seq_len) token ids; rows i*rows..(i+1)*rows belong to
    adapter i."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (N * rows, seq_len), generator=g) for _ in range(steps)]


def frod_mixed(base, N: int, data: list, rows: int, st: dict, device: str, cache_dir) -> dict:
    from frod_rt import FrodConfig, get_frod_model
    t0 = time.perf_counter()
    cfg = FrodConfig(target_modules=list(TARGETS), sparse_rate=st["sparse_rate"],
                     progress=False, cache_dir=cache_dir)
    fm = get_frod_model(clone(base), cfg, adapter_name="a0")
    for i in range(1, N):
        fm.add_adapter(f"a{i}", cfg)
    fm.to(device).train()
    opt = torch.optim.AdamW(fm.optimizer_param_groups(lr_s=LR, lr_dl=LR))
    names = [f"a{i}" for i in range(N) for _ in range(rows)]
    setup = time.perf_counter() - t0
    times, losses = [], []
    with PeakMemory(device) as pm:
        for j, ids in enumerate(data):
            ids = ids.to(device)
            sync(device)
            t = time.perf_counter()
            loss = fm(input_ids=ids, labels=ids, adapter_names=names).loss * N
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if j > 0:                      # the first step is the warm-up
                times.append(time.perf_counter() - t)
            losses.append(float(loss.detach()) / N)
    out = {"step_s": times, "setup_s": setup, "memory": pm.result(),
           "model_bytes": module_bytes(fm), "loss_first": losses[0], "loss_last": losses[-1]}
    del fm, opt
    gc.collect()
    return out


def peft_seq(base, N: int, data: list, rows: int, st: dict, device: str, cache_dir) -> dict:
    from peft import FrodConfig, get_peft_model
    steps = len(data) - 1
    per_step = [0.0] * steps
    setup, model_bytes, losses = 0.0, 0, []
    with PeakMemory(device) as pm:
        for i in range(N):
            t0 = time.perf_counter()
            model = get_peft_model(clone(base), FrodConfig(
                target_modules=list(TARGETS), sparse_rate=st["sparse_rate"], progressbar=False))
            model.to(device).train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
            setup += time.perf_counter() - t0
            model_bytes = max(model_bytes, module_bytes(model))
            for j, full in enumerate(data):
                ids = full[i * rows:(i + 1) * rows].to(device)
                sync(device)
                t = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync(device)
                if j > 0:
                    per_step[j - 1] += time.perf_counter() - t
                if i == 0:
                    losses.append(float(loss.detach()))
            del model, opt
            gc.collect()
    return {"step_s": per_step, "setup_s": setup, "memory": pm.result(),
            "model_bytes": model_bytes, "loss_first": losses[0], "loss_last": losses[-1]}


CONTENDERS = {"frod_mixed": frod_mixed, "peft_seq": peft_seq}
