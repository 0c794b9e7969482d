"""The materialised training path (DESIGN.md section 2) and the cost rule that picks it.

For one adapter over all ``T`` rows of a layer, ``W' = W + U (diag(dl) + S) V^T`` is built
once (two ``out x n x n`` GEMMs) and the layer runs one GEMM. Backward, with
``G = dY^T X`` (out, n) and ``P = G V``::

    dX     = dY W'
    d dl_i = sum_o U[o, i] P[o, i]            = diag(U^T G V)
    d s_j  = sum_o U[o, r_j] P[o, c_j]        = (U^T G V)[r_j, c_j]

(``P`` and k dot products of length ``out``: no ``n x n`` product.)
``W'`` is built as ``W + dW`` rather than ``U diag(l + dl) V^T + U S V^T``: equal in exact
arithmetic (``W = U diag(l) V^T``), but exact at ``dl = s = 0`` in low precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .delta import compute_dtype, delta_weight


def _pattern_grad(U: Tensor, P: Tensor, rows: Tensor, cols: Tensor, chunk: int) -> Tensor:
    out = torch.empty(rows.shape[0], dtype=P.dtype, device=P.device)
    r, c = rows.long(), cols.long()
    for j in range(0, r.shape[0], chunk):
        out[j:j + chunk] = (U.index_select(1, r[j:j + chunk])
                            * P.index_select(1, c[j:j + chunk])).sum(0)
    return out


class DenseFrodLinear(torch.autograd.Function):
    """``y = x (W + U (diag(dl) + S) V^T)^T + b`` with one GEMM; see the module docstring.

    Inputs: x (T, n), W (out, n), b (out,) or None, U (out, n), V (n, n), dl (n,), s (k,),
    rows/cols (k,) int. U and V are frozen (no gradient); W gets ``G`` if it requires grad.
    """

    @staticmethod
    def forward(ctx, x, W, b, U, V, dl, s, rows, cols):
        Wp = W + delta_weight(U, V, dl, s, rows, cols, dtype=W.dtype)
        ctx.save_for_backward(x, Wp, U, V, rows, cols)
        ctx.has_bias = b is not None
        return F.linear(x, Wp, b)

    @staticmethod
    def backward(ctx, gy):
        x, Wp, U, V, rows, cols = ctx.saved_tensors
        need_x, need_W, need_b, _, _, need_dl, need_s = ctx.needs_input_grad[:7]
        gx = gW = gb = gdl = gs = None
        if need_x:
            gx = gy @ Wp
        if need_b and ctx.has_bias:
            gb = gy.sum(0)
        if need_W or need_dl or need_s:
            acc = compute_dtype(x.dtype)
            G = gy.to(acc).T @ x.to(acc)                    # (out, n)
            if need_W:
                gW = G.to(Wp.dtype)
            if need_dl or need_s:
                Ua = U.to(acc)
                P = G @ V.to(acc)                          # (out, n)
                if need_dl:
                    gdl = (Ua * P).sum(0)
                if need_s:
                    chunk = max(1, (1 << 22) // max(1, U.shape[0]))
                    gs = _pattern_grad(Ua, P, rows, cols, chunk)
        return gx, gW, gb, None, None, gdl, gs, None, None


def dense_frod_linear(x: Tensor, W: Tensor, b: Tensor | None, U: Tensor, V: Tensor, dl: Tensor,
                      s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Functional form of :class:`DenseFrodLinear` (x (T, n) -> (T, out))."""
    return DenseFrodLinear.apply(x, W, b, U, V, dl, s, rows, cols)


def prefer_dense(T: int, out_features: int, in_features: int) -> bool:
    """Cost rule for one adapter over T rows, counting forward + backward multiply-adds.

    factored: fwd ``T n out`` (base) + ``T n n`` (XV) + ``T n out`` (HU^T);
              bwd dX through W, U, V and dH = dY U: ``3 T n out + T n n``;
    dense:    fwd ``out n n`` (build W') + ``T n out``; bwd dX, G = dY^T X: ``2 T n out``,
              P = G V: ``out n n``.
    Dense wins when ``2 out n^2 < 2 T n (out + n)``, i.e. ``T > out n / (out + n)``
    (``T > n/2`` for a square layer; always true when ``T > n``).
    """
    n, o = in_features, out_features
    return T * (o + n) > o * n
