"""Timing helper: warm-up, repeats, median and spread (IQR) of wall-clock seconds."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: str | torch.device) -> None:
    """Wait for queued device work (CUDA); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def summarize(samples: list[float]) -> dict:
    """Median, quartiles and IQR of a list of samples (the list is kept as ``repeats``)."""
    if not samples:
        raise ValueError("summarize: no samples")
    xs = sorted(float(x) for x in samples)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"repeats": [float(x) for x in samples], "median": statistics.median(xs),
            "q1": q1, "q3": q3, "iqr": q3 - q1, "min": xs[0], "max": xs[-1]}


def measure(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 1,
            repeats: int = 5, inner: int = 1) -> dict:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls.

    Each sample is the mean seconds of ``inner`` back-to-back calls (use ``inner > 1`` for
    calls much shorter than a millisecond). On CUDA the device is synchronised before the
    clock starts and after it stops. Returns :func:`summarize` of the samples (seconds).
    """
    if repeats < 1 or inner < 1 or warmup < 0:
        raise ValueError("measure: repeats and inner must be >= 1, warmup >= 0")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync(device)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            samples.append((time.perf_counter() - t0) / inner)
    return summarize(samples)


def auto_inner(fn: Callable[[], object], *, device: str = "cpu", target_s: float = 0.02,
               cap: int = 64) -> int:
    """How many calls make one sample last about ``target_s`` (one probing call)."""
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
    return int(max(1, min(cap, target_s / max(dt, 1e-6))))


def measure_interleaved(fns: dict[str, Callable[[], object]], inners: dict[str, int], *,
                        device: str = "cpu", warmup: int = 1, repeats: int = 5) -> dict:
    """Like :func:`measure` for several callables, sampled round-robin (repeat r times every
    callable once before repeat r+1), so a burst of load from other processes hits all of them
    alike and their ratios stay meaningful. Returns {name: summarize(samples)}."""
    if repeats < 1 or warmup < 0:
        raise ValueError("measure_interleaved: repeats must be >= 1, warmup >= 0")
    samples: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for k, fn in fns.items():
            for _ in range(warmup):
                fn()
        sync(device)
        for _ in range(repeats):
            for k, fn in fns.items():
                n = inners.get(k, 1)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                sync(device)
                samples[k].append((time.perf_counter() - t0) / n)
    return {k: summarize(v) for k, v in samples.items()}
