"""Layers that read one input, computed together: Llama q,k,v and gate,up, BERT query,key,value.

For a mixed batch the members' row plans are usually identical (an adapter targets q, k and v
together). Then

* base rows (and rows whose adapter targets none of the members) run **one** fused GEMM
  ``x [W_1; ...; W_m]^T`` (:class:`FusedLinear`, the HF weights are views of its tensor);
* adapted rows compute ``Z = x V`` **once per distinct basis**: members of one shared-input
  category (DESIGN.md 2.1) hold the same ``V`` tensor, so q, k, v share one ``X V``; per-role
  categories still get one ``X V`` each. Then per member one rotation
  (:func:`frod_rt.ops.rotate_slots` over the member's slot tables) and one ``H U^T``. When the
  batch's adapters sit on several bases of the base model (frod_rt's, PEFT's, an imported
  file's), the adapted rows are grouped by basis as :class:`AdaptedLinear` groups them: per
  basis group its own ``X V_b`` (again once per distinct ``V_b`` within the group of roles),
  rotation and ``H U_b^T``.
* rows of an adapter with merged weights (``merge_hot`` or automatic merging) run one GEMM
  with the members' ``W'`` fused into one tensor when that adapter holds every row.

A row's arithmetic still depends only on its own adapter: base rows always go through the
fused weight, adapted rows through the replace form (the fallback for batches whose members'
plans differ computes each member as :class:`AdaptedLinear` does, where a base row's dot
products run over the member's own weight instead of the fused one: same values, summed by the
same GEMM kernel over the same ``in``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...ops import rotate_slots
from .batch import AdapterBatch
from .fused import FusedLinear
from .layers import AdaptedLinear


class LinearGroup:
    """Members ``layers`` (AdaptedLinear, same input) with their fused base weight."""

    def __init__(self, layers: list[AdaptedLinear], fused: FusedLinear):
        self.layers = layers
        self.fused = fused
        self._merged: dict[int, tuple[tuple[int, ...], torch.Tensor, torch.Tensor | None]] = {}

    def _fused_merged(self, slot: int, sts) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[W'_1; ...; W'_m] of ``slot`` (built once per set of merged tensors; the members'
        own merged tensors are then replaced by views of it, so memory is not doubled)."""
        ids = tuple(st.merged[slot].data_ptr() for st in sts)
        hit = self._merged.get(slot)
        if hit is not None and hit[0] == ids:
            return hit[1], hit[2]
        W = torch.cat([st.merged[slot] for st in sts], 0).contiguous()
        off = 0
        for st in sts:
            o = st.merged[slot].shape[0]
            st.merged[slot] = W[off:off + o]
            off += o
        self._merged = {a: v for a, v in self._merged.items()
                        if all(a in st.merged for st in sts)}
        entry = (tuple(st.merged[slot].data_ptr() for st in sts), W, self.fused.bias)
        self._merged[slot] = entry
        return W, self.fused.bias

    def __call__(self, x: torch.Tensor, ab: AdapterBatch | None) -> tuple[torch.Tensor, ...]:
        """x (T, in) -> one (T, out_i) output per member."""
        if ab is None or not ab.any_adapted:
            return self.fused(x)
        sts = [m.slots for m in self.layers]
        if all(st is None for st in sts):
            return self.fused(x)
        if any(st is None for st in sts):
            return tuple(m(x, ab) for m in self.layers)
        plans = [ab.plan(st.target_slots, st.merged) for st in sts]
        plan = plans[0]
        if any(p is not plan for p in plans[1:]):
            return tuple(m(x, ab) for m in self.layers)
        if plan.num_r == 0 and not plan.hot_runs:
            return self.fused(x)
        T = x.shape[0]
        if plan.num_r == 0 and plan.num_w == 0 and len(plan.hot_runs) == 1:
            s0, e0, a = plan.hot_runs[0]
            if s0 == 0 and e0 == T:                 # one merged adapter holds every row
                W, b = self._fused_merged(a, sts)
                return F.linear(x, W, b).split(self.fused.splits, dim=-1)
        yw = self.fused(x[plan.w_rows]) if plan.num_w else None
        xs: dict[int, torch.Tensor] = {}                 # id(row plan) -> x[rows]
        zs: dict[tuple[int, int], torch.Tensor] = {}     # (id(V), id(row plan)) -> x[rows] V

        def xv(V: torch.Tensor, p) -> torch.Tensor:
            z = zs.get((id(V), id(p)))
            if z is None:                        # once per basis (shared-input: once for q,k,v)
                xr = xs.get(id(p))
                if xr is None:
                    xr = xs[id(p)] = x[p.r_rows]
                z = zs[(id(V), id(p))] = xr @ V
            return z

        yr: list = [None] * len(sts)          # per member: H U^T of the rows of ``plan.r_rows``
        by_basis: list = [None] * len(sts)    # or, with several bases: [(row plan, H U_b^T)]
        if plan.num_r:
            for i, (m, st) in enumerate(zip(self.layers, sts)):
                dl, s, patterns = st.rotation_args()
                groups = st.basis_groups(plan.slots)
                if len(groups) == 1:
                    V, U, _ = st.bases[next(iter(groups))]
                    h = rotate_slots(xv(V, plan), plan.seg_indptr, plan.seg_slot, dl, s, patterns)
                    yr[i] = F.linear(h, U, m.bias)
                    continue
                parts = []
                for basis, slots in groups.items():
                    p = ab.plan(set(slots), st.merged)
                    if not p.num_r:
                        continue
                    V, U, _ = st.bases[basis]
                    h = rotate_slots(xv(V, p), p.seg_indptr, p.seg_slot, dl, s, patterns)
                    parts.append((p, F.linear(h, U, m.bias)))
                by_basis[i] = parts
        outs = []
        for i, (m, st) in enumerate(zip(self.layers, sts)):
            w_part = yw[i] if yw is not None else None
            if plan.contiguous and by_basis[i] is None:
                parts = [p for p in (w_part, yr[i]) if p is not None]
                outs.append(parts[0] if len(parts) == 1 else torch.cat(parts, 0))
                continue
            y = torch.empty(T, m.out_features, dtype=x.dtype, device=x.device)
            if w_part is not None:
                y[plan.w_rows] = w_part
            if yr[i] is not None:
                y[plan.r_rows] = yr[i]
            for p, yp in by_basis[i] or ():
                y[p.r_rows] = yp
            for s0, e0, a in plan.hot_runs:
                y[s0:e0] = F.linear(x[s0:e0], st.merged[a], m.bias)
            outs.append(y)
        return tuple(outs)
