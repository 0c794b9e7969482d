"""Shared checks of the CUDA-only ops (``cuda_linear``, ``cuda_grouped``).

The CUDA ops exist only in builds with the CUDA kernels (``frod_rt.cuda_kernels_built()``) and
run only on CUDA tensors; anything else is a ``TypeError`` that says which.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._core import _C, contiguous, cuda_kernels_built, view
from .cuda_fallback import ERROR_BITS, raise_for_error_bits  # noqa: F401 (re-exported)
from .plans import table_for_pattern
from .validate import check_rotate_args, require_tensor

GEMM_DTYPES = (torch.bfloat16, torch.float16)


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


def check_rotate_indices_cuda(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor,
                              s: Tensor, rows: Tensor, cols: Tensor) -> None:
    """Checks the index *values* of a CUDA rotation call (synchronises: copies the segments
    to the host) and raises the same ``ValueError`` the CPU path raises.

    The CUDA kernels never read indices on the host: bad entries are skipped, never used to
    address memory, and flagged in the device error word (see :func:`check_cuda_errors`).
    Patterns are validated when they are planned (:func:`frod_rt.ops.register_pattern`).
    """
    require_cuda_op("check_rotate_indices_cuda", z, "z")
    check_rotate_args(z, seg_indptr, seg_adapter, dl, s, rows, cols)
    table_for_pattern(rows, cols, z.shape[1], dl.shape[0])  # validates the pattern
    indptr_cpu, adapter_cpu = contiguous(seg_indptr.cpu(), seg_adapter.cpu())
    _C.validate_segments(view(indptr_cpu), view(adapter_cpu), z.shape[0], dl.shape[0])
