"""CUDA-only FRoD linear forms on CUTLASS GEMMs, as ``torch.library`` custom ops.

* :func:`cutlass_linear`      ``y = x W^T + b`` through frod_rt's CUTLASS GEMM (for tests/bench);
* :func:`fused_frod_linear`   ``Z = X V``, ``H = rotate(Z)``, ``Y = [X | H] [W | U]^T + b``;
* :func:`replace_frod_linear` ``Y = (Z diag(l + dl_a) + S_a Z) U^T + b`` for adapted rows.

They are inference ops (no autograd; training uses :func:`frod_rt.ops.frod_linear`, whose
rotation also runs on CUDA), with fake implementations for ``torch.compile``. bfloat16 /
float16 only; ``n`` and ``out`` multiples of 8 (CUTLASS 16-byte vector loads). Weights are
passed pre-arranged (see :func:`fused_weights`), so a serving loop does no per-call copies
of them.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core import _C, contiguous, stream_of, view
from .cuda_fallback import error_word
from .linear import frod_linear
from .plans import table_for_pattern
from .rotate import rotate_segments
from .cuda_common import opt_view, require_cuda_op, require_gemm_dtype, require_like
from .validate import check_rotate_args


def fused_weights(weight: Tensor, V: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """Arranges a layer's weights for :func:`fused_frod_linear` (do it once per layer).

    Args: weight (out, n), V (n, n), U (out, n).
    Returns: ``(vt, wu)`` with ``vt = V^T`` (n, n) and ``wu = [W | U]`` (out, 2n), contiguous.
    """
    return V.t().contiguous(), torch.cat([weight, U], dim=1).contiguous()


# ---- dense GEMM ------------------------------------------------------------------------------
@torch.library.custom_op("frod_rt::cutlass_linear", mutates_args=(), device_types="cuda")
def _cutlass_linear_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    x, weight, bias = contiguous(x, weight, bias)  # named: they must outlive the C++ call
    y = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    _C.gemm(view(x), view(weight), opt_view(bias), view(y), stream_of(x))
    return y


@_cutlass_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


def cutlass_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y = x @ weight^T + bias`` on frod_rt's CUTLASS GEMM (float32 accumulate).

    Args: x (T, n) CUDA bfloat16/float16; weight (out, n); bias (out,) or None.
    Returns: (T, out) in x's dtype.
    """
    op = "cutlass_linear"
    require_cuda_op(op, x)
    require_gemm_dtype(op, x)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D (T, n), got shape {tuple(x.shape)}")
    require_tensor_2d(op, weight, "weight")
    require_like(op, weight, "weight", x, (weight.shape[0], x.shape[1]))
    require_like(op, bias, "bias", x, (weight.shape[0],))
    return torch.ops.frod_rt.cutlass_linear(x.contiguous(), weight.contiguous(), bias)


_fallback_warned: set[str] = set()


def _cutlass_can_run(op: str, x: Tensor, *dims: int) -> bool:
    """True when frod_rt's CUTLASS GEMMs serve this device and shape (dims multiples of 8, a
    compiled family for the GPU). Otherwise warns once per op: the caller then runs the same
    math on torch GEMMs + the rotation kernel."""
    major, minor = torch.cuda.get_device_capability(x.device)
    families = set(_C.cutlass_gemm_families())
    arch_ok = ((major == 8 and "sm80_cutlass2x" in families)
               or ((major, minor) == (9, 0) and "sm90a_cutlass3x" in families))
    if arch_ok and all(d % 8 == 0 for d in dims):
        return True
    if op not in _fallback_warned:
        _fallback_warned.add(op)
        why = (f"no CUTLASS GEMM for compute capability {major}.{minor} in this build"
               if not arch_ok else f"sizes {dims} are not all multiples of 8")
        warnings.warn(f"{op}: {why}; running torch GEMMs + the rotation kernel instead",
                      RuntimeWarning, stacklevel=3)
    return False


def require_tensor_2d(op: str, t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be a 2-D tensor, got {shape}")


# ---- fused form -------------------------------------------------------------------------------
@torch.library.custom_op("frod_rt::fused_frod_linear", mutates_args=(), device_types="cuda")
def _fused_op(x: Tensor, vt: Tensor, wu: Tensor, bias: Tensor | None, seg_indptr: Tensor,
              seg_adapter: Tensor, dl: Tensor, s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    x, vt, wu, bias, seg_indptr, seg_adapter, dl, s = contiguous(
        x, vt, wu, bias, seg_indptr, seg_adapter, dl, s)
    table = table_for_pattern(rows, cols, x.shape[1], dl.shape[0])
    T, n = x.shape
    xh = torch.empty((T, 2 * n), dtype=x.dtype, device=x.device)
    xh[:, :n].copy_(x)
    z = torch.empty((T, n), dtype=x.dtype, device=x.device)
    y = torch.empty((T, wu.shape[0]), dtype=x.dtype, device=x.device)
    _C.frod_linear_fused(view(xh), view(vt), view(wu), opt_view(bias), view(seg_indptr),
                         view(seg_adapter), view(dl), view(s),
                         *[view(t) for t in table.tensors()], view(z), view(y),
                         opt_view(error_word(x)), stream_of(x))
    return y


@_fused_op.register_fake
def _(x, vt, wu, bias, seg_indptr, seg_adapter, dl, s, rows, cols):
    return x.new_empty((x.shape[0], wu.shape[0]))


def fused_frod_linear(x: Tensor, vt: Tensor, wu: Tensor, bias: Tensor | None,
                      seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                      rows: Tensor, cols: Tensor) -> Tensor:
    """Multi-adapter FRoD linear, fused form (CUDA, CUTLASS)::

        Z = X @ V                          (T, n)
        H[t] = Z[t] * dl[a] + S_a Z[t]     per segment; 0 for adapter -1
        Y = [X | H] @ [W | U]^T + b        one GEMM with K = 2n  == X W^T + H U^T + b

    Same result as :func:`frod_rt.ops.frod_linear` (up to rounding) for every row.

    Args:
        x: (..., n) CUDA bfloat16 / float16; segments index the rows of ``x.reshape(-1, n)``.
        vt, wu: from :func:`fused_weights` (``V^T`` (n, n) and ``[W | U]`` (out, 2n)).
        bias: (out,) or None.
        seg_indptr, seg_adapter, dl, s, rows, cols: as :func:`frod_rt.ops.rotate_segments`.

    Returns: (..., out) in x's dtype.
    Raises: TypeError (no CUDA build, CPU tensors, dtypes), ValueError (shapes). When n or out
        is not a multiple of 8, or the build has no CUTLASS GEMM for the GPU, it warns once and
        computes :func:`frod_rt.ops.frod_linear` (torch GEMMs + the rotation kernel).
    """
    op = "fused_frod_linear"
    require_cuda_op(op, x)
    require_gemm_dtype(op, x)
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    require_tensor_2d(op, wu, "wu")
    out = wu.shape[0]
    require_like(op, vt, "vt", x, (n, n))
    require_like(op, wu, "wu", x, (out, 2 * n))
    require_like(op, bias, "bias", x, (out,))
    check_rotate_args(x2, seg_indptr, seg_adapter, dl, s, rows, cols)
    if not _cutlass_can_run(op, x, n, out):
        return frod_linear(x, wu[:, :n], bias, vt.t(), wu[:, n:], seg_indptr, seg_adapter, dl,
                           s, rows, cols)
    y = torch.ops.frod_rt.fused_frod_linear(x2, vt.contiguous(), wu, bias, seg_indptr,
                                            seg_adapter, dl, s, rows, cols)
    return y.reshape(*x.shape[:-1], out)


# ---- replace form -----------------------------------------------------------------------------
@torch.library.custom_op("frod_rt::replace_frod_linear", mutates_args=(), device_types="cuda")
def _replace_op(x: Tensor, vt: Tensor, U: Tensor, l: Tensor, bias: Tensor | None,
                seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor, rows: Tensor,
                cols: Tensor) -> Tensor:
    x, vt, U, l, bias, seg_indptr, seg_adapter, dl, s = contiguous(
        x, vt, U, l, bias, seg_indptr, seg_adapter, dl, s)
    table = table_for_pattern(rows, cols, x.shape[1], dl.shape[0])
    T, n = x.shape
    z = torch.empty((T, n), dtype=x.dtype, device=x.device)
    h = torch.empty((T, n), dtype=x.dtype, device=x.device)
    y = torch.empty((T, U.shape[0]), dtype=x.dtype, device=x.device)
    _C.frod_linear_replace(view(x), view(vt), view(U), view(l), opt_view(bias), view(seg_indptr),
                           view(seg_adapter), view(dl), view(s),
                           *[view(t) for t in table.tensors()], view(z), view(h), view(y),
                           opt_view(error_word(x)), stream_of(x))
    return y


@_replace_op.register_fake
def _(x, vt, U, l, bias, seg_indptr, seg_adapter, dl, s, rows, cols):
    return x.new_empty((x.shape[0], U.shape[0]))


def replace_frod_linear(x: Tensor, vt: Tensor, U: Tensor, l: Tensor, bias: Tensor | None,
                        seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                        rows: Tensor, cols: Tensor) -> Tensor:
    """Multi-adapter FRoD linear, replace form, for rows that have an adapter (CUDA)::

        Z = X @ V;   H[t] = Z[t] * (l + dl[a]) + S_a Z[t];   Y = H @ U^T + b

    Since ``W = U diag(l) V^T``, this equals ``X W'^T + b`` with ``W' = U (diag(l+dl) + S) V^T``
    without reading W. Rows of adapter -1 get ``Y = b`` (route base rows through W instead).

    Args:
        x: (..., n) CUDA bfloat16 / float16; vt = V^T (n, n); U (out, n); l (n,); bias (out,)
        or None; the rotation arguments as :func:`frod_rt.ops.rotate_segments`.

    Returns: (..., out) in x's dtype. Unsupported sizes / GPUs: as :func:`fused_frod_linear`
    (one warning, then torch GEMMs around the rotation kernel, same semantics).
    """
    op = "replace_frod_linear"
    require_cuda_op(op, x)
    require_gemm_dtype(op, x)
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    require_tensor_2d(op, U, "U")
    out = U.shape[0]
    require_like(op, vt, "vt", x, (n, n))
    require_like(op, U, "U", x, (out, n))
    require_like(op, l, "l", x, (n,))
    require_like(op, bias, "bias", x, (out,))
    check_rotate_args(x2, seg_indptr, seg_adapter, dl, s, rows, cols)
    if not _cutlass_can_run(op, x, n, out):
        h = rotate_segments(x2 @ vt.t(), seg_indptr, seg_adapter, dl + l, s, rows, cols)
        return F.linear(h, U, bias).reshape(*x.shape[:-1], out)
    y = torch.ops.frod_rt.replace_frod_linear(x2, vt.contiguous(), U.contiguous(), l.contiguous(),
                                              bias, seg_indptr, seg_adapter, dl, s, rows, cols)
    return y.reshape(*x.shape[:-1], out)
