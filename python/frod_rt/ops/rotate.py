"""``frod_rt::rotate_segments``: the per-segment FRoD rotation as a torch.library custom op.

Registered with an autograd formula (gradients to ``z``, ``dl`` and ``s``) and fake
implementations, so it works with ``torch.compile`` and passes ``torch.library.opcheck``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._core import _C, contiguous, stream_of, view
from .validate import check_rotate_args


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _rows_contig(t: Tensor) -> Tensor:
    """C++ kernels need unit inner stride; anything else is copied."""
    return t if (t.dim() == 2 and (t.shape[1] <= 1 or t.stride(1) == 1)
                 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1])) else t.contiguous()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rotate_forward(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                    rows: Tensor, cols: Tensor) -> Tensor:
    """Runs the compiled forward kernel and returns a new H."""
    # Contiguous copies are bound to names so they outlive the C++ call (a view() of a
    # temporary keeps only its pointer).
    z = _rows_contig(z)
    seg_indptr, seg_adapter, dl, s, rows, cols = contiguous(seg_indptr, seg_adapter, dl, s,
                                                            rows, cols)
    h = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    _C.rotate_forward(view(z), view(seg_indptr), view(seg_adapter), view(dl), view(s),
                      view(rows), view(cols), view(h), _threads(), stream_of(z))
    return h


@torch.library.custom_op("frod_rt::rotate_segments", mutates_args=(), device_types=("cpu", "cuda"))
def _rotate_segments_op(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor,
                        s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    return _rotate_forward(z, seg_indptr, seg_adapter, dl, s, rows, cols)


@_rotate_segments_op.register_fake
def _(z, seg_indptr, seg_adapter, dl, s, rows, cols):
    return torch.empty(z.shape, dtype=z.dtype, device=z.device)


@torch.library.custom_op("frod_rt::rotate_segments_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _rotate_segments_backward_op(z: Tensor, grad_h: Tensor, seg_indptr: Tensor,
                                 seg_adapter: Tensor, dl: Tensor, s: Tensor, rows: Tensor,
                                 cols: Tensor, need_z: bool, need_params: bool
                                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (grad_z (T, n) in z's dtype, grad_dl (A, n), grad_s (A, k)) in the
    accumulation dtype (float32, or float64 for float64). Unneeded outputs are zeros."""
    z = _rows_contig(z)
    grad_h = _rows_contig(grad_h)
    seg_indptr, seg_adapter, dl, s, rows, cols = contiguous(seg_indptr, seg_adapter, dl, s,
                                                            rows, cols)
    acc = _acc_dtype(z.dtype)
    grad_z = (torch.empty if need_z else torch.zeros)(z.shape, dtype=z.dtype, device=z.device)
    grad_dl = torch.zeros(dl.shape, dtype=acc, device=z.device)
    grad_s = torch.zeros(s.shape, dtype=acc, device=z.device)
    _C.rotate_backward(view(z), view(grad_h), view(seg_indptr), view(seg_adapter),
                       view(dl), view(s), view(rows), view(cols),
                       view(grad_z) if need_z else None,
                       view(grad_dl) if need_params else None,
                       view(grad_s) if need_params else None, _threads(), stream_of(z))
    return grad_z, grad_dl, grad_s


@_rotate_segments_backward_op.register_fake
def _(z, grad_h, seg_indptr, seg_adapter, dl, s, rows, cols, need_z, need_params):
    acc = _acc_dtype(z.dtype)
    return (torch.empty(z.shape, dtype=z.dtype, device=z.device),
            torch.empty(dl.shape, dtype=acc, device=z.device),
            torch.empty(s.shape, dtype=acc, device=z.device))


def _setup_context(ctx, inputs, output):
    z, seg_indptr, seg_adapter, dl, s, rows, cols = inputs
    ctx.save_for_backward(z, seg_indptr, seg_adapter, dl, s, rows, cols)


def _backward(ctx, grad_h):
    z, seg_indptr, seg_adapter, dl, s, rows, cols = ctx.saved_tensors
    need_z = ctx.needs_input_grad[0]
    need_params = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
    if not (need_z or need_params):
        return None, None, None, None, None, None, None
    gz, gdl, gs = torch.ops.frod_rt.rotate_segments_backward(
        z, grad_h, seg_indptr, seg_adapter, dl, s, rows, cols, need_z, need_params)
    return (gz if need_z else None, None, None,
            gdl.to(dl.dtype) if ctx.needs_input_grad[3] else None,
            gs.to(s.dtype) if ctx.needs_input_grad[4] else None, None, None)


_rotate_segments_op.register_autograd(_backward, setup_context=_setup_context)


def rotate_segments(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                    rows: Tensor, cols: Tensor) -> Tensor:
    """Per-segment FRoD rotation ``H = rotate(Z)`` (DESIGN.md section 2).

    For each row ``t`` of segment ``g`` (rows ``seg_indptr[g]:seg_indptr[g+1]``) with adapter
    ``a = seg_adapter[g]``::

        H[t] = Z[t] * dl[a] + (S_a @ Z[t])      S_a[rows_j, cols_j] = s[a, j]

    and ``H[t] = 0`` when ``a == -1``.

    Args:
        z: (T, n) float32 / bfloat16 / float16 / float64.
        seg_indptr: (G+1,) int32, non-decreasing, from 0 to T.
        seg_adapter: (G,) int32 in [-1, A).
        dl: (A, n) scaling deltas, z's dtype.
        s: (A, k) sparse values, z's dtype.
        rows, cols: (k,) int32 pattern shared by all adapters, or (A, k) per adapter;
            entries in [0, n) and off the diagonal.

    Returns:
        H: (T, n), z's dtype. Differentiable in z, dl and s.

    Raises:
        TypeError / ValueError naming the argument for wrong dtypes, devices, shapes,
        out-of-range indices, diagonal pattern entries or a bad ``seg_indptr``.
    """
    check_rotate_args(z, seg_indptr, seg_adapter, dl, s, rows, cols)
    if _plain_eager_inference(z, dl, s):
        # Same kernel, without the dispatcher round trip (~40 us per call on CPU), which
        # matters for serving small layers.
        return _rotate_forward(z, seg_indptr, seg_adapter, dl, s, rows, cols)
    return torch.ops.frod_rt.rotate_segments(z, seg_indptr, seg_adapter, dl, s, rows, cols)


def _plain_eager_inference(*tensors: Tensor) -> bool:
    """True when no autograd graph is needed and nothing traces the call (torch.compile,
    fake or subclassed tensors): then the custom op would only forward to the kernel."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch.compiler.is_compiling():
        return False
    return all(type(t) is torch.Tensor for t in tensors)
