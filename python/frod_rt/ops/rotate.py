"""The per-segment FRoD rotation as torch.library custom ops, on planned patterns.

* ``frod_rt::rotate_planned`` (+ ``_backward``): the rotation with a plan table
  (:class:`frod_rt.ops.plans.PlanTable` tensors: slot -> pattern plan); what
  :func:`rotate_slots` (serving, per-slot patterns of any k) runs.
* ``frod_rt::rotate_segments`` (+ ``_backward``): the same with a raw ``(rows, cols)``
  pattern, shared ``(k,)`` or per adapter ``(A, k)``, for training and tests; its
  implementation looks the plan table up by content (:func:`frod_rt.ops.plans.table_for_pattern`).

Both have autograd formulas (gradients to ``z``, ``dl``, ``s``) and fake implementations, so
they work with ``torch.compile`` and pass ``torch.library.opcheck``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._core import _C, contiguous, stream_of, view
from .cuda_fallback import cuda_rotation_unavailable, error_word, raise_if_flagged
from .plans import PlanTable, SlotPatterns, table_for_pattern
from .reference import rotate_slots_reference
from .validate import check_plan_table, check_rotate_args


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _rows_contig(t: Tensor) -> Tensor:
    """C++ kernels need unit inner stride; anything else is copied."""
    return t if (t.dim() == 2 and (t.shape[1] <= 1 or t.stride(1) == 1)
                 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1])) else t.contiguous()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward(z, seg_indptr, seg_adapter, dl, s, slot_plan, meta, ptr, idx) -> Tensor:
    """Runs the compiled forward kernel and returns a new H."""
    # Contiguous copies are bound to names so they outlive the C++ call (a view() of a
    # temporary keeps only its pointer).
    z = _rows_contig(z)
    seg_indptr, seg_adapter, dl, s = contiguous(seg_indptr, seg_adapter, dl, s)
    h = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    err = error_word(z)
    _C.rotate_forward(view(z), view(seg_indptr), view(seg_adapter), view(dl), view(s),
                      view(slot_plan), view(meta), view(ptr), view(idx), view(h), _threads(),
                      stream_of(z), None, None if err is None else view(err))
    raise_if_flagged(err, "rotate (CUDA)")
    return h


def _backward_kernel(z, grad_h, seg_indptr, seg_adapter, dl, s, slot_plan, meta, ptr, idx,
                     need_z: bool, need_params: bool):
    z = _rows_contig(z)
    grad_h = _rows_contig(grad_h)
    seg_indptr, seg_adapter, dl, s = contiguous(seg_indptr, seg_adapter, dl, s)
    acc = _acc_dtype(z.dtype)
    grad_z = (torch.empty if need_z else torch.zeros)(z.shape, dtype=z.dtype, device=z.device)
    grad_dl = torch.zeros(dl.shape, dtype=acc, device=z.device)
    grad_s = torch.zeros(s.shape, dtype=acc, device=z.device)
    err = error_word(z)
    _C.rotate_backward(view(z), view(grad_h), view(seg_indptr), view(seg_adapter), view(dl),
                       view(s), view(slot_plan), view(meta), view(ptr), view(idx),
                       view(grad_z) if need_z else None,
                       view(grad_dl) if need_params else None,
                       view(grad_s) if need_params else None, _threads(), stream_of(z),
                       None if err is None else view(err))
    raise_if_flagged(err, "rotate backward (CUDA)")
    return grad_z, grad_dl, grad_s


def _table_of(z: Tensor, dl: Tensor, rows: Tensor, cols: Tensor) -> PlanTable:
    return table_for_pattern(rows, cols, z.shape[1], dl.shape[0])


# ---- frod_rt::rotate_planned -----------------------------------------------------------------
@torch.library.custom_op("frod_rt::rotate_planned", mutates_args=(), device_types=("cpu", "cuda"))
def _rotate_planned_op(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                       slot_plan: Tensor, plan_meta: Tensor, plan_ptr: Tensor,
                       plan_idx: Tensor) -> Tensor:
    return _forward(z, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx)


@_rotate_planned_op.register_fake
def _(z, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx):
    return torch.empty(z.shape, dtype=z.dtype, device=z.device)


@torch.library.custom_op("frod_rt::rotate_planned_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _rotate_planned_backward_op(z: Tensor, grad_h: Tensor, seg_indptr: Tensor,
                                seg_adapter: Tensor, dl: Tensor, s: Tensor, slot_plan: Tensor,
                                plan_meta: Tensor, plan_ptr: Tensor, plan_idx: Tensor,
                                need_z: bool, need_params: bool
                                ) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_z in z's dtype, grad_dl (A, n), grad_s (A, kcap) in the accumulation dtype)."""
    return _backward_kernel(z, grad_h, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta,
                            plan_ptr, plan_idx, need_z, need_params)


def _fake_backward(z, dl, s):
    acc = _acc_dtype(z.dtype)
    return (torch.empty(z.shape, dtype=z.dtype, device=z.device),
            torch.empty(dl.shape, dtype=acc, device=z.device),
            torch.empty(s.shape, dtype=acc, device=z.device))


@_rotate_planned_backward_op.register_fake
def _(z, grad_h, seg_indptr, seg_adapter, dl, s, slot_plan, plan_meta, plan_ptr, plan_idx,
      need_z, need_params):
    return _fake_backward(z, dl, s)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grads(ctx, gz, gdl, gs, dl, s, extra):
    need_z, need_dl, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
    return (gz if need_z else None, None, None,
            gdl.to(dl.dtype) if need_dl else None,
            gs.to(s.dtype) if need_s else None) + (None,) * extra


def _planned_backward(ctx, grad_h):
    z, seg_indptr, seg_adapter, dl, s, slot_plan, meta, ptr, idx = ctx.saved_tensors
    need_z = ctx.needs_input_grad[0]
    need_params = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
    if not (need_z or need_params):
        return (None,) * 9
    gz, gdl, gs = torch.ops.frod_rt.rotate_planned_backward(
        z, grad_h, seg_indptr, seg_adapter, dl, s, slot_plan, meta, ptr, idx, need_z,
        need_params)
    return _grads(ctx, gz, gdl, gs, dl, s, 4)


_rotate_planned_op.register_autograd(_planned_backward, setup_context=_setup_context)


# ---- frod_rt::rotate_segments ----------------------------------------------------------------
@torch.library.custom_op("frod_rt::rotate_segments", mutates_args=(), device_types=("cpu", "cuda"))
def _rotate_segments_op(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor,
                        s: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    return _forward(z, seg_indptr, seg_adapter, dl, s, *_table_of(z, dl, rows, cols).tensors())


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
    return _backward_kernel(z, grad_h, seg_indptr, seg_adapter, dl, s,
                            *_table_of(z, dl, rows, cols).tensors(), need_z, need_params)


@_rotate_segments_backward_op.register_fake
def _(z, grad_h, seg_indptr, seg_adapter, dl, s, rows, cols, need_z, need_params):
    return _fake_backward(z, dl, s)


def _segments_backward(ctx, grad_h):
    z, seg_indptr, seg_adapter, dl, s, rows, cols = ctx.saved_tensors
    need_z = ctx.needs_input_grad[0]
    need_params = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
    if not (need_z or need_params):
        return (None,) * 7
    gz, gdl, gs = torch.ops.frod_rt.rotate_segments_backward(
        z, grad_h, seg_indptr, seg_adapter, dl, s, rows, cols, need_z, need_params)
    return _grads(ctx, gz, gdl, gs, dl, s, 2)


_rotate_segments_op.register_autograd(_segments_backward, setup_context=_setup_context)


# ---- public functions ------------------------------------------------------------------------
def rotate_segments(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                    rows: Tensor, cols: Tensor) -> Tensor:
    """Per-segment FRoD rotation ``H = rotate(Z)`` (DESIGN.md section 2).

    For each row ``t`` of segment ``g`` (rows ``seg_indptr[g]:seg_indptr[g+1]``) with adapter
    ``a = seg_adapter[g]``::

        H[t] = Z[t] * dl[a] + (S_a @ Z[t])      S_a[rows_j, cols_j] = s[a, j]

    and ``H[t] = 0`` when ``a == -1``. The pattern is planned once per content (see
    :func:`frod_rt.ops.register_pattern`); serving layers with per-slot patterns use
    :func:`rotate_slots` instead.

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
    if cuda_rotation_unavailable(z):
        from .reference import rotate_segments_reference
        return rotate_segments_reference(z, seg_indptr, seg_adapter, dl, s, rows, cols)
    if _plain_eager_inference(z, dl, s):
        # Same kernel, without the dispatcher round trip (~40 us per call on CPU), which
        # matters for serving small layers.
        return _forward(z, seg_indptr, seg_adapter, dl, s, *_table_of(z, dl, rows, cols).tensors())
    return torch.ops.frod_rt.rotate_segments(z, seg_indptr, seg_adapter, dl, s, rows, cols)


def rotate_slots(z: Tensor, seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                 table: SlotPatterns | PlanTable) -> Tensor:
    """Per-segment FRoD rotation with a pattern per adapter slot (serving)::

        H[t] = Z[t] * dl[a] + S_a Z[t],   S_a[rows_j, cols_j] = s[a, j], j < k_a

    where ``(rows, cols)`` is the pattern of the plan that ``table`` gives slot ``a`` and
    ``k_a`` its size (a slot without a plan: ``H[t] = Z[t] * dl[a]``); ``H[t] = 0`` for
    ``a == -1``. Segments of slots with different patterns share one call; short segments
    (decode) of slots that share a plan are packed into the same vector tiles, whatever the
    other slots' k. Per call only the segment-to-tile map is computed.

    Args:
        z: (T, n) float32 / bfloat16 / float16 / float64.
        seg_indptr: (G+1,) int32; seg_adapter: (G,) int32 in [-1, A).
        dl: (A, n); s: (A, kcap) with kcap >= every used slot's k (z's dtype).
        table: a :class:`SlotPatterns` (or its ``.table``) with ``num_slots == A`` on z's device.

    Returns:
        H: (T, n), z's dtype. Differentiable in z, dl and s (through ``frod_rt::rotate_planned``).
    """
    tab = table.table if isinstance(table, SlotPatterns) else table
    check_plan_table(z, seg_indptr, seg_adapter, dl, s, tab)
    if cuda_rotation_unavailable(z):
        return rotate_slots_reference(z, seg_indptr, seg_adapter, dl, s, tab)
    if _plain_eager_inference(z, dl, s):
        return _forward(z, seg_indptr, seg_adapter, dl, s, *tab.tensors())
    return torch.ops.frod_rt.rotate_planned(z, seg_indptr, seg_adapter, dl, s, *tab.tensors())


def _plain_eager_inference(*tensors: Tensor) -> bool:
    """True when no autograd graph is needed and nothing traces or records the call
    (torch.compile, fake or subclassed tensors, a running torch.profiler): then the custom op
    would only forward to the kernel. Under the profiler the op runs, so the rotation shows up
    as ``frod_rt::rotate_planned`` / ``frod_rt::rotate_segments`` instead of vanishing."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch.compiler.is_compiling() or torch.autograd._profiler_enabled():
        return False
    return all(type(t) is torch.Tensor for t in tensors)
