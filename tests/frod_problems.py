"""Random FRoD problems for the op tests: segments, per-adapter tables and patterns."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def random_pattern(n: int, k: int, g: torch.Generator, sort: bool = False):
    """k distinct off-diagonal (row, col) pairs of an n x n matrix, int32."""
    flat = torch.randperm(n * (n - 1), generator=g)[:k]
    r = flat // (n - 1)
    c = flat % (n - 1)
    c = c + (c >= r).long()  # skip the diagonal
    if sort:
        order = torch.argsort(r * n + c)
        r, c = r[order], c[order]
    return r.to(torch.int32), c.to(torch.int32)


@dataclass
class Problem:
    z: torch.Tensor
    seg_indptr: torch.Tensor
    seg_adapter: torch.Tensor
    dl: torch.Tensor
    s: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    def args(self):
        return (self.z, self.seg_indptr, self.seg_adapter, self.dl, self.s, self.rows, self.cols)


def make_problem(T=131, n=67, A=5, k=37, *, seg_lengths=None, seg_adapters=None,
                 per_adapter=False, sort=False, dtype=torch.float64, seed=0) -> Problem:
    """Defaults: odd sizes, an empty segment, rows with no adapter, an adapter owning two
    segments, and a segment longer than one 32-row tile."""
    g = torch.Generator().manual_seed(seed)
    if seg_lengths is None:
        seg_lengths = [10, 0, 40, 1, 39, 5, T - 95]
        seg_adapters = [0, 3, -1, 2, 0, 4, 1]
    assert sum(seg_lengths) == T
    indptr = torch.tensor([0] + list(torch.tensor(seg_lengths).cumsum(0)), dtype=torch.int32)
    seg = torch.tensor(seg_adapters, dtype=torch.int32)
    z = torch.randn(T, n, generator=g, dtype=torch.float64).to(dtype)
    dl = torch.randn(A, n, generator=g, dtype=torch.float64).to(dtype)
    s = torch.randn(A, k, generator=g, dtype=torch.float64).to(dtype)
    if per_adapter:
        pats = [random_pattern(n, k, g, sort) for _ in range(A)]
        rows = torch.stack([p[0] for p in pats])
        cols = torch.stack([p[1] for p in pats])
    else:
        rows, cols = random_pattern(n, k, g, sort)
    return Problem(z, indptr, seg, dl, s, rows, cols)


# Relative (to max |ref|) tolerances per dtype for outputs of O(k/n) summed products.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().clamp_min(1e-30)
    return ((out.double() - ref.double()).abs().max() / scale).item()
