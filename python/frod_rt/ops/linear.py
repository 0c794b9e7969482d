"""``frod_linear``: a linear layer with many FRoD adapters applied per segment of rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .plans import PlanTable, SlotPatterns
from .rotate import rotate_segments, rotate_slots
from .validate import FLOAT_DTYPES, require_device, require_dtype, require_tensor


def check_linear_args(x, weight, bias, V, U) -> None:
    """Validate the dense operands of frod_linear (the rotation arguments are checked by
    rotate_segments)."""
    for t, name in ((x, "x"), (weight, "weight"), (V, "V"), (U, "U")):
        require_tensor(t, name)
    require_dtype(x, "x", FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension (..., in_features)")
    n = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != n:
        raise ValueError(f"weight: expected shape (out_features, {n}), got {tuple(weight.shape)}")
    out = weight.shape[0]
    if V.dim() != 2 or tuple(V.shape) != (n, n):
        raise ValueError(f"V: expected shape ({n}, {n}), got {tuple(V.shape)}")
    if U.dim() != 2 or tuple(U.shape) != (out, n):
        raise ValueError(f"U: expected shape ({out}, {n}), got {tuple(U.shape)}")
    others = [(weight, "weight"), (V, "V"), (U, "U")]
    if bias is not None:
        require_tensor(bias, "bias")
        if bias.dim() != 1 or bias.shape[0] != out:
            raise ValueError(f"bias: expected shape ({out},), got {tuple(bias.shape)}")
        others.append((bias, "bias"))
    for t, name in others:
        require_device(t, name, x.device)
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match x's dtype {x.dtype}")


def frod_linear(x: Tensor, weight: Tensor, bias: Tensor | None, V: Tensor, U: Tensor,
                seg_indptr: Tensor, seg_adapter: Tensor, dl: Tensor, s: Tensor,
                rows: Tensor | None = None, cols: Tensor | None = None, *,
                table: SlotPatterns | PlanTable | None = None) -> Tensor:
    """``y = x W^T + b + H U^T`` with ``H = rotate(x V)`` (factored form): the rotation is
    :func:`rotate_segments` with the ``(rows, cols)`` pattern, or :func:`rotate_slots` with a
    per-slot plan ``table`` (then ``s`` is ``(A, kcap)`` and slot a uses ``s[a, :k_a]``).

    Row ``t`` of the flattened ``x`` gets the weight ``W + U (diag(dl_a) + S_a) V^T`` of its
    segment's adapter ``a`` (or plain ``W`` when ``a = -1``). The three dense GEMMs are shared
    by all adapters of the batch; only the rotation is per segment.

    Args:
        x: (..., n) input; the segments index the rows of ``x.reshape(-1, n)``.
        weight: (out, n); bias: (out,) or None; V: (n, n) shared basis; U: (out, n).
        seg_indptr, seg_adapter, dl, s, rows, cols: as in :func:`rotate_segments`.
        table: instead of rows/cols, as in :func:`rotate_slots`.

    Returns:
        (..., out), x's dtype. Differentiable in x, weight, bias, V, U, dl and s.
    """
    check_linear_args(x, weight, bias, V, U)
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    z = torch.matmul(x2, V)
    if table is not None:
        if rows is not None or cols is not None:
            raise ValueError("frod_linear: pass either rows/cols or table, not both")
        h = rotate_slots(z, seg_indptr, seg_adapter, dl, s, table)
    else:
        h = rotate_segments(z, seg_indptr, seg_adapter, dl, s, rows, cols)
    y = F.linear(x2, weight, bias)
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias, V, U, dl, s)):
        y = torch.addmm(y, h, U.t())
    else:
        y.addmm_(h, U.t())
    return y.reshape(*x.shape[:-1], weight.shape[0])
