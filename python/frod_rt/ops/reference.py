"""Pure-PyTorch references of the FRoD ops (any device and dtype, differentiable).

These are the ground truth in tests and the fallback for devices without compiled kernels.
They are written for clarity, not speed.
"""
from __future__ import annotations

import torch


def _segment_ids(seg_indptr: torch.Tensor, seg_adapter: torch.Tensor, T: int) -> torch.Tensor:
    lengths = (seg_indptr[1:] - seg_indptr[:-1]).long()
    return torch.repeat_interleave(seg_adapter.long(), lengths, output_size=T)


def rotate_segments_reference(z, seg_indptr, seg_adapter, dl, s, rows, cols) -> torch.Tensor:
    """H[t] = Z[t] * dl[a] + (S_a Z[t]^T)^T for rows t with adapter a = a(t); 0 for a = -1.

    Shapes: z (T, n), seg_indptr (G+1,), seg_adapter (G,), dl (A, n), s (A, k),
    rows/cols (k,) shared or (A, k) per adapter.
    """
    T, n = z.shape
    ids = _segment_ids(seg_indptr, seg_adapter, T)
    h = torch.zeros_like(z)
    for a in torch.unique(ids).tolist():
        if a < 0:
            continue
        sel = (ids == a).nonzero().squeeze(1)
        za = z.index_select(0, sel)
        r = (rows[a] if rows.dim() == 2 else rows).long()
        c = (cols[a] if cols.dim() == 2 else cols).long()
        ha = za * dl[a]
        ha = ha.index_add(1, r, za.index_select(1, c) * s[a])
        h = h.index_copy(0, sel, ha)
    return h


def frod_linear_reference(x, weight, bias, V, U, seg_indptr, seg_adapter, dl, s, rows, cols):
    """Row-by-row dense reference: y[t] = x[t] (W + dW_a(t))^T + b, dW_a = U (diag(dl_a)+S_a) V^T."""
    from ..method.delta import delta_weight   # lazy: frod_rt.method imports frod_rt.ops
    T = x.shape[0]
    ids = _segment_ids(seg_indptr, seg_adapter, T)
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    out = y.clone()
    for a in torch.unique(ids).tolist():
        if a < 0:
            continue
        sel = (ids == a).nonzero().squeeze(1)
        r = rows[a] if rows.dim() == 2 else rows
        c = cols[a] if cols.dim() == 2 else cols
        dW = delta_weight(U, V, dl[a], s[a], r, c, compute=U.dtype)
        out[sel] = y[sel] + x[sel] @ dW.T
    return out


def rotate_slots_reference(z, seg_indptr, seg_adapter, dl, s, table) -> torch.Tensor:
    """:func:`frod_rt.ops.rotate_slots` in plain torch: slot a uses its plan's pattern
    (rows, cols) with values ``s[a, :k_a]``; a slot without a plan only ``dl``.

    ``table``: a SlotPatterns or a PlanTable.
    """
    table = getattr(table, "table", table)
    T, n = z.shape
    ids = _segment_ids(seg_indptr.cpu(), seg_adapter.cpu(), T)
    slot_plan = table.slot_plan.cpu().tolist()
    h = torch.zeros_like(z)
    for a in torch.unique(ids).tolist():
        if a < 0:
            continue
        sel = (ids == a).nonzero().squeeze(1).to(z.device)
        za = z.index_select(0, sel)
        ha = za * dl[a]
        if slot_plan[a] >= 0:
            plan = table.plans[slot_plan[a]]
            r, c = plan.rows.long().to(z.device), plan.cols.long().to(z.device)
            ha = ha.index_add(1, r, za.index_select(1, c) * s[a, : plan.k])
        h = h.index_copy(0, sel, ha)
    return h
