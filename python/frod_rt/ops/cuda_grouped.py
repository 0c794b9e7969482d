"""CUDA-only segment-grouped GEMM for rows of hot adapters with merged weights
(DESIGN.md section 2, *merged* variant), as the ``torch.library`` custom op
``frod_rt::grouped_gemm``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._core import _C, contiguous, stream_of, view
from .cuda_common import opt_view, require_cuda_op, require_gemm_dtype, require_like
from .validate import require_device, require_dtype, require_shape


@torch.library.custom_op("frod_rt::grouped_gemm", mutates_args=(), device_types="cuda")
def _grouped_op(x: Tensor, weights: Tensor, bias: Tensor | None, seg_indptr: Tensor,
                seg_slot: Tensor) -> Tensor:
    x, weights, bias, seg_indptr, seg_slot = contiguous(x, weights, bias, seg_indptr, seg_slot)
    y = torch.zeros((x.shape[0], weights.shape[1]), dtype=x.dtype, device=x.device)
    _C.segment_gemm(view(x), view(weights), opt_view(bias), view(seg_indptr), view(seg_slot),
                    view(y), None, stream_of(x))
    return y


@_grouped_op.register_fake
def _(x, weights, bias, seg_indptr, seg_slot):
    return x.new_empty((x.shape[0], weights.shape[1]))


def grouped_gemm(x: Tensor, weights: Tensor, bias: Tensor | None, seg_indptr: Tensor,
                 seg_slot: Tensor) -> Tensor:
    """One CUTLASS grouped GEMM over the segments of hot adapters::

        for g with w = seg_slot[g] >= 0:
            y[seg_indptr[g]:seg_indptr[g+1]] = x[seg_indptr[g]:seg_indptr[g+1]] @ weights[w]^T + bias
        rows of segments with slot -1 are 0

    Args:
        x: (T, K) CUDA bfloat16 / float16.
        weights: (num_weights, N, K) merged weights ``W'_w = W + U (diag(dl) + S) V^T``.
        bias: (N,) or None.
        seg_indptr: (G+1,) int32 on x's device; seg_slot: (G,) int32 in [-1, num_weights).

    Returns: (T, N) in x's dtype. K and N must be multiples of 8.
    """
    op = "grouped_gemm"
    require_cuda_op(op, x)
    require_gemm_dtype(op, x)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D (T, K), got shape {tuple(x.shape)}")
    if not isinstance(weights, Tensor) or weights.dim() != 3:
        raise ValueError(f"{op}: weights must be a 3-D tensor (num_weights, N, K)")
    require_like(op, weights, "weights", x, (weights.shape[0], weights.shape[1], x.shape[1]))
    require_like(op, bias, "bias", x, (weights.shape[1],))
    for t, name in ((seg_indptr, "seg_indptr"), (seg_slot, "seg_slot")):
        require_dtype(t, name, (torch.int32,))
        require_device(t, name, x.device)
    if seg_slot.dim() != 1:
        raise ValueError(f"{op}: seg_slot must be 1-D (G,), got shape {tuple(seg_slot.shape)}")
    require_shape(seg_indptr, "seg_indptr", (seg_slot.shape[0] + 1,))
    return torch.ops.frod_rt.grouped_gemm(x.contiguous(), weights.contiguous(), bias,
                                          seg_indptr.contiguous(), seg_slot.contiguous())
