"""The materialised training path (DESIGN.md section 2) and the cost rule that picks it.

For one adapter over all ``T`` rows of a layer, ``W' = W + U (diag(dl) + S) V^T`` is built
once per step and the layer runs one GEMM. ``U (diag(dl) + S)`` is the rotation kernel
applied to the rows of ``U`` (``out (n + k)`` work), so the build costs one ``out x n x n``
GEMM. Backward, with ``G = dY^T X`` (out, n) and ``P = G V``::

    dX     = dY W'
    d dl_i = sum_o U[o, i] P[o, i]            = diag(U^T G V)
    d s_j  = sum_o U[o, r_j] P[o, c_j]        = (U^T G V)[r_j, c_j]

(``P`` and the rotation kernel's parameter gradient, an SDDMM over the ``out`` rows: no
``n x n`` product.)
``W'`` is built as ``W + dW`` rather than ``U diag(l + dl) V^T + U S V^T``: equal in exact
arithmetic (``W = U diag(l) V^T``), but exact at ``dl = s = 0`` in low precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from .delta import compute_dtype, delta_weight


def _one_segment(T: int, device) -> tuple[Tensor, Tensor]:
    return (torch.tensor([0, T], dtype=torch.int32, device=device),
            torch.zeros(1, dtype=torch.int32, device=device))


def rotated_factor(U: Tensor, dl: Tensor, s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``U (diag(dl) + S)`` (out, n) through the rotation kernel: its row ``o`` is
    ``rotate(U[o])`` with the pattern transposed, ``out * (n + k)`` work instead of the
    ``out * n * n`` of a dense ``U @ M``."""
    indptr, seg = _one_segment(U.shape[0], U.device)
    return ops.rotate_segments(U, indptr, seg, dl[None], s[None], cols, rows)


def rotation_grads(U: Tensor, P: Tensor, dl: Tensor, s: Tensor, rows: Tensor, cols: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """``(diag(U^T P), (U^T P)[rows_j, cols_j])`` without forming ``U^T P``: the rotation
    kernel's parameter gradient (an SDDMM over the ``out`` rows), ``out * (n + k)`` work."""
    indptr, seg = _one_segment(U.shape[0], U.device)
    _, gdl, gs = torch.ops.frod_rt.rotate_segments_backward(
        P, U, indptr, seg, dl[None], s[None], rows, cols, False, True)
    return gdl[0], gs[0]


class DenseFrodLinear(torch.autograd.Function):
    """``y = x (W + U (diag(dl) + S) V^T)^T + b`` with one GEMM; see the module docstring.

    Inputs: x (T, n), W (out, n), b (out,) or None, U (out, n), V (n, n), dl (n,), s (k,),
    rows/cols (k,) int. U and V are frozen (no gradient); W gets ``G`` if it requires grad.
    """

    @staticmethod
    def forward(ctx, x, W, b, U, V, dl, s, rows, cols):
        acc = compute_dtype(W.dtype)
        dl_a, s_a = dl.detach().to(acc), s.detach().to(acc)
        UM = rotated_factor(U.to(acc), dl_a, s_a, rows, cols)        # (out, n)
        Wp = (W.to(acc) + UM @ V.to(acc).T).to(W.dtype)
        ctx.save_for_backward(x, Wp, U, V, rows, cols, dl_a, s_a)
        ctx.has_bias = b is not None
        ctx.out_dtype = Wp.dtype
        return F.linear(x, Wp, b)

    @staticmethod
    def backward(ctx, gy):
        # autocast never applies inside: every operand already has its forward dtype
        with torch.autocast(gy.device.type, enabled=False):
            return DenseFrodLinear._backward(ctx, gy.to(ctx.out_dtype))

    @staticmethod
    def _backward(ctx, gy):
        x, Wp, U, V, rows, cols, dl_a, s_a = ctx.saved_tensors
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
                P = G @ V.to(acc)                          # (out, n)
                gdl, gs = rotation_grads(U.to(acc), P, dl_a, s_a, rows, cols)
                gdl = gdl if need_dl else None
                gs = gs if need_s else None
        return gx, gW, gb, None, None, gdl, gs, None, None


def dense_frod_linear(x: Tensor, W: Tensor, b: Tensor | None, U: Tensor, V: Tensor, dl: Tensor,
                      s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Functional form of :class:`DenseFrodLinear` (x (T, n) -> (T, out))."""
    return DenseFrodLinear.apply(x, W, b, U, V, dl, s, rows, cols)


def training_path(T: int, out_features: int, in_features: int) -> str:
    """Cheaper exact path for one adapter over all T rows while training: "replace" or
    "dense", counting forward + backward multiply-adds of an ``out x n`` layer:

    replace:  fwd ``T n n`` (Z = XV) + ``T n out`` (H U^T, H = Z (l + dl) + S Z); bwd
              ``T n out`` (dH = dY U) + ``T n n`` (dX = dZ V^T): ``2 T n (n + out)``;
    dense:    ``2 out n^2 + 3 T n out`` (see :func:`prefer_dense`).

    (The factored delta form, ``5 T n out + 2 T n^2``, is never cheaper than replace; it
    stays for mixed batches with base rows.) Dense wins when ``2 out n^2 + 3 T n out <
    2 T n (n + out)``, i.e. ``2 out n < T (2 n - out)``: for a square layer ``T > 2n``; never
    when ``out >= 2n``; MiniLM's 1536 -> 384 output layer past ``T = 438``.
    """
    n, o = in_features, out_features
    return "dense" if 2 * o * n < T * (2 * n - o) else "replace"


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
