"""A random multi-adapter FRoD layer problem (weights, adapters, a batch of rows)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from frod_rt.ops import segments_from_ids


@dataclass
class LayerProblem:
    """One layer ``W = U diag(l) V^T`` (out x n) with ``A`` adapters and ``T`` rows.

    Rows are sorted by adapter (row t uses adapter ``t * A // T``), as an engine groups them.
    ``dl (A, n)``, ``s (A, k)`` and the shared off-diagonal pattern ``rows/cols (k,)`` int32.
    """
    x: torch.Tensor
    W: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    l: torch.Tensor
    dl: torch.Tensor
    s: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    ids: torch.Tensor          # (T,) int64 adapter per row
    seg_indptr: torch.Tensor   # (G+1,) int32
    seg_adapter: torch.Tensor  # (G,) int32

    @property
    def num_adapters(self) -> int:
        return self.dl.shape[0]


def off_diagonal_pattern(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` distinct off-diagonal (row, col) pairs of an n x n matrix, sorted, int32."""
    k = min(k, n * (n - 1))
    flat = torch.randperm(n * (n - 1), generator=gen)[:k].sort().values
    r = flat // (n - 1)
    c = flat % (n - 1)
    c = c + (c >= r).long()
    return r.to(torch.int32), c.to(torch.int32)


def make_problem(tokens: int, hidden: int, adapters: int, sparse_rate: float, *,
                 out_features: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> LayerProblem:
    """Build a seeded random problem; ``adapters`` must not exceed ``tokens``."""
    if not 1 <= adapters <= tokens:
        raise ValueError(f"adapters must be in [1, tokens={tokens}], got {adapters}")
    n, out = hidden, out_features or hidden
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(n, n, generator=g) / n ** 0.5
    U = torch.randn(out, n, generator=g)
    U = U / U.norm(dim=0, keepdim=True)
    l = torch.rand(n, generator=g) + 0.5
    W = (U * l) @ V.T
    k = round(n * n * sparse_rate)
    rows, cols = off_diagonal_pattern(n, k, g)
    dl = 0.01 * torch.randn(adapters, n, generator=g)
    s = 0.01 * torch.randn(adapters, rows.numel(), generator=g)
    x = torch.randn(tokens, n, generator=g)
    ids = torch.arange(tokens) * adapters // tokens
    indptr, seg_adapter = segments_from_ids(ids, adapters)
    to = dict(device=device, dtype=dtype)
    return LayerProblem(x=x.to(**to), W=W.to(**to), U=U.to(**to), V=V.to(**to), l=l.to(**to),
                        dl=dl.to(**to), s=s.to(**to), rows=rows.to(device), cols=cols.to(device),
                        ids=ids.to(device), seg_indptr=indptr.to(device),
                        seg_adapter=seg_adapter.to(device))
