"""The dense update of an adapter layer and its adapted weight (DESIGN.md 1.2), one
implementation for training, merging, serving (``merge_hot``), interop and tests::

    dW = U (diag(dl) + S) V^T          W' = U (diag(l + dl) + S) V^T

``S`` is ``n x n`` with ``S[rows_j, cols_j] += s_j`` (duplicate positions accumulate).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["compute_dtype", "rotation_matrix", "delta_weight", "adapted_weight"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rotation_matrix(diag: Tensor, s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Dense ``M = diag(diag) + S`` (n, n) with ``S[rows_j, cols_j] += s_j`` (differentiable)."""
    M = torch.diag(diag)
    if s.numel():
        M = M.index_put((rows.to(M.device, torch.long), cols.to(M.device, torch.long)),
                        s.to(M.dtype), accumulate=True)
    return M


def delta_weight(U: Tensor, V: Tensor, dl: Tensor, s: Tensor, rows: Tensor, cols: Tensor,
                 dtype: torch.dtype | None = None, compute: torch.dtype | None = None) -> Tensor:
    """``dW = U (diag(dl) + S) V^T`` (out, n) of one adapter layer.

    U (out, n), V (n, n), dl (n,), s (k,), rows/cols (k,) int. Computed in ``compute``
    (default: float32, float64 for float64 U) and returned in ``dtype`` (default U's dtype)."""
    acc = compute or compute_dtype(U.dtype)
    M = rotation_matrix(dl.to(acc), s.to(acc), rows, cols)
    return ((U.to(acc) @ M) @ V.to(acc).T).to(dtype or U.dtype)


def adapted_weight(U: Tensor, l: Tensor, V: Tensor, dl: Tensor, s: Tensor, rows: Tensor,
                   cols: Tensor, dtype: torch.dtype | None = None,
                   compute: torch.dtype | None = None) -> Tensor:
    """``W' = U (diag(l + dl) + S) V^T`` (out, n): :func:`delta_weight` with the diagonal
    ``l + dl`` (summed in ``compute``), e.g. the merged weight of a hot adapter."""
    acc = compute or compute_dtype(U.dtype)
    return delta_weight(U, V, l.to(acc) + dl.to(acc), s, rows, cols, dtype=dtype, compute=acc)
