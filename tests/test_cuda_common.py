"""Random FRoD problems for the CUDA tests (odd sizes, mixed / empty / repeated segments).

Holds no tests itself: imported by the other tests/test_cuda_*.py modules.
"""
from __future__ import annotations

import torch

import frod_rt

# ‖out - ref‖ / ‖ref‖ bounds per dtype (float64 reference).
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}

needs_cuda_build = frod_rt.cuda_kernels_built()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    assert not torch.isnan(out).any(), "NaN in output (unwritten element?)"
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)


def random_pattern(g: torch.Generator, n: int, k: int, A: int | None = None):
    """Off-diagonal pattern (rows, cols) int32: (k,) shared or (A, k) per adapter."""
    shape = (k,) if A is None else (A, k)
    r = torch.randint(0, n, shape, generator=g)
    c = (r + torch.randint(1, n, shape, generator=g)) % n
    return r.to(torch.int32), c.to(torch.int32)


def segments(lengths: list[int], adapters: list[int]):
    """(seg_indptr, seg_adapter) int32 from segment lengths and adapter ids."""
    indptr = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0).to(torch.int32)
    return indptr, torch.tensor(adapters, dtype=torch.int32)


# Segment layouts: (lengths, adapters) with A = 3 adapters. Mixed lengths, empty segments,
# rows without adapter (-1), an adapter owning several segments, single-row (decode) segments.
LAYOUTS = {
    "mixed": ([5, 0, 17, 3, 0, 9, 1], [0, 1, -1, 2, 2, 0, 1]),
    "decode": ([1] * 13, [0, 1, 2, -1, 0, 0, 1, 2, -1, 1, 0, 2, 2]),
    "long": ([41, 0, 30], [1, 0, 2]),
    "base_only": ([7, 4], [-1, -1]),
}


def rotation_problem(g: torch.Generator, layout: str, n: int, k: int, dtype, per_adapter: bool,
                     A: int = 3):
    """CPU tensors (z, seg_indptr, seg_adapter, dl, s, rows, cols); values O(1)."""
    lengths, adapters = LAYOUTS[layout]
    indptr, adapter = segments(lengths, adapters)
    T = int(indptr[-1])
    z = torch.randn(T, n, generator=g, dtype=torch.float64).to(dtype)
    dl = (0.5 * torch.randn(A, n, generator=g, dtype=torch.float64)).to(dtype)
    s = (0.5 * torch.randn(A, k, generator=g, dtype=torch.float64)).to(dtype)
    rows, cols = random_pattern(g, n, k, A if per_adapter else None)
    return z, indptr, adapter, dl, s, rows, cols


def to_cuda(*ts):
    return tuple(None if t is None else t.cuda() for t in ts)
