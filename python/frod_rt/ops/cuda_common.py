"""Shared checks of the CUDA-only ops (``cuda_linear``, ``cuda_grouped``).

The CUDA ops exist only in builds with the CUDA kernels (``frod_rt.cuda_kernels_built()``) and
run only on CUDA tensors; anything else is a ``TypeError`` that says which.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._core import _C, contiguous, cuda_kernels_built, stream_of, view
from .validate import check_rotate_args, require_tensor

GEMM_DTYPES = (torch.bfloat16, torch.float16)

#: Error bits of the CUDA rotation and grouped GEMM (cpp/include/frod/rotate_cuda.h).
ERROR_BITS = {
    1: "seg_indptr: an entry is outside [0, T], decreasing, or does not run from 0 to T",
    2: "seg_adapter / seg_slot: an id is outside [-1, A)",
    4: "rows/cols: a pattern entry is outside [0, n) or on the diagonal",
}


def require_cuda_op(op: str, x: Tensor, name: str = "x") -> None:
    """TypeError unless this build has CUDA kernels and ``x`` is a CUDA tensor."""
    require_tensor(x, name)
    if not cuda_kernels_built():
        raise TypeError(f"{op}: this build of frod_rt has no CUDA kernels (it was built without "
                        "nvcc / nvidia-cutlass); use frod_rt.ops.frod_linear instead")
    if x.device.type != "cuda":
        raise TypeError(f"{op}: {name} must be a CUDA tensor, got one on {x.device}; "
                        "use frod_rt.ops.frod_linear for CPU tensors")


def require_gemm_dtype(op: str, x: Tensor, name: str = "x") -> None:
    if x.dtype not in GEMM_DTYPES:
        raise TypeError(f"{op}: {name} must be bfloat16 or float16 (CUTLASS GEMMs), got {x.dtype}")


def require_like(op: str, t: Tensor | None, name: str, x: Tensor, shape: tuple) -> None:
    """``t`` (if given) is on x's device, has x's dtype and the given shape."""
    if t is None:
        return
    require_tensor(t, name)
    if t.device != x.device:
        raise TypeError(f"{op}: {name} must be on {x.device} like x, got {t.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {t.dtype} does not match x's dtype {x.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def opt_view(t: Tensor | None):
    return None if t is None else view(t)


def raise_for_error_bits(bits: int, op: str) -> None:
    """ValueError listing the problems flagged by a CUDA kernel's error word."""
    if bits:
        msgs = [m for b, m in ERROR_BITS.items() if bits & b]
        raise ValueError(f"{op}: invalid indices: " + "; ".join(msgs))


def check_rotate_indices_cuda(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor,
                              s: Tensor, rows: Tensor, cols: Tensor) -> None:
    """Checks the index *values* of a CUDA rotation call on the device (synchronises).

    The CUDA kernels never read indices on the host: bad entries are skipped, never used to
    address memory, but the output is then incomplete. Call this (e.g. in tests or when the
    segments come from an untrusted source) to get the same ``ValueError`` the CPU path raises.
    """
    require_cuda_op("check_rotate_indices_cuda", z, "z")
    check_rotate_args(z, seg_indptr, seg_adapter, dl, s, rows, cols)
    z, seg_indptr, seg_adapter, dl, s, rows, cols = contiguous(
        z, seg_indptr, seg_adapter, dl, s, rows, cols)
    bits = _C.rotate_validate(view(z), view(seg_indptr), view(seg_adapter), view(dl), view(s),
                              view(rows), view(cols), stream_of(z))
    raise_for_error_bits(int(bits), "rotate_segments (CUDA)")
