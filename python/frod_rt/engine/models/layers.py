"""Building blocks shared by the model forwards: the FRoD-routed linear layer and paged
attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...ops import paged_decode_attention, rotate_slots
from .batch import AdapterBatch, AttnBatch
from .slots import PatternStore, SlotTables, SlotValues


def linear_out_in(module) -> torch.Tensor:
    """(out, in) weight of an nn.Linear, or a transposed view of a transformers Conv1D."""
    if isinstance(module, torch.nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D":          # transformers.pytorch_utils.Conv1D (in, out)
        return module.weight.t()
    raise TypeError(f"unsupported linear module type {type(module).__name__}")


class AdaptedLinear:
    """A base linear layer whose rows may be adapted, per row, by FRoD adapters.

    Row ``t`` with no adapter (or whose adapter does not target this layer) computes
    ``x W^T + b``. Row ``t`` of an adapter ``a`` that targets the layer computes the 'replace'
    form of ``x W'_a^T + b``, ``W'_a = U (diag(l + dl_a) + S_a) V^T``::

        Z = x V ;  H = Z * (l + dl_a) + S_a Z  (rotate_slots) ;  y = H U^T + b

    The GEMMs ``X V`` and ``H U^T`` are shared by all adapted rows of the batch whose adapters
    are expressed in one basis; adapters on several bases of the same base model (frod_rt's,
    PEFT's, an imported file's) form one group per basis, each computing its own ``X V_b`` and
    ``H U_b^T`` in the same step. The row split depends only on each row's own adapter (batch
    invariance). Adapters marked hot
    (``merge_hot``, opt-in) instead use a materialised ``W'_a`` while on the device: one GEMM
    per hot adapter's rows.

    The layer owns its adapter state (``slots``, a :class:`SlotTables`), created by
    ``create_slots`` and written only through ``set_slot`` / ``reset_slot``; the forward reads
    nothing else.
    """

    def __init__(self, name: str, module):
        self.name = name
        self.weight = linear_out_in(module)            # (out, in), a view of the HF weight
        self.bias = module.bias
        self.out_features, self.in_features = self.weight.shape
        self.slots: SlotTables | None = None

    # ---- adapter slots (called by the adapter manager) --------------------------------------
    def create_slots(self, A: int, V: torch.Tensor, U: torch.Tensor, l: torch.Tensor,
                     store: PatternStore, basis: str | None = None) -> None:
        """Allocate ``A`` empty slots over the layer's basis: V (n, n), U (out, n), l (n,) in
        the serving dtype and device, registered as ``basis``. Once per layer."""
        if self.slots is not None:
            raise RuntimeError(f"{self.name}: slots already created")
        if tuple(U.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{self.name}: U has shape {tuple(U.shape)}, expected "
                             f"{(self.out_features, self.in_features)}")
        self.slots = SlotTables(A, V, U, l, store, basis)

    def add_basis(self, basis: str, V: torch.Tensor, U: torch.Tensor, l: torch.Tensor) -> None:
        """Register another basis of this layer (see ``SlotTables.add_basis``)."""
        self.slots.add_basis(basis, V, U, l)

    def set_slot(self, slot: int, values: SlotValues) -> None:
        """Put one adapter's values (``SlotValues``: dl, s, pattern, merge) into ``slot``."""
        self.slots.set_slot(slot, values)

    def reset_slot(self, slot: int) -> None:
        """Empty ``slot`` (its rows then run as base rows in this layer)."""
        if self.slots is not None:
            self.slots.reset_slot(slot)

    # ---- forward ----------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, ab: AdapterBatch | None) -> torch.Tensor:
        st = self.slots
        if ab is None or not ab.any_adapted or st is None:
            return F.linear(x, self.weight, self.bias)
        plan = ab.plan(st.target_slots, st.merged)
        if plan.num_r == 0 and not plan.hot_runs:
            return F.linear(x, self.weight, self.bias)
        if plan.num_r == 0 and plan.num_w == 0 and len(plan.hot_runs) == 1:
            return F.linear(x, st.merged[plan.hot_runs[0][2]], self.bias)   # one merged adapter
        groups = st.basis_groups(plan.slots)
        if len(groups) > 1:
            return self._multi_basis(x, ab, plan, groups)
        yr = None
        if plan.num_r:
            V, U, _ = st.bases[next(iter(groups))]
            dl, s, patterns = st.rotation_args()
            z = x[plan.r_rows] @ V
            h = rotate_slots(z, plan.seg_indptr, plan.seg_slot, dl, s, patterns)
            yr = F.linear(h, U, self.bias)
            if plan.num_w == 0 and not plan.hot_runs:
                return yr
        yw = F.linear(x[plan.w_rows], self.weight, self.bias) if plan.num_w else None
        if plan.contiguous:
            return torch.cat([yw, yr], 0)
        y = torch.empty(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)
        if yw is not None:
            y.index_copy_(0, plan.w_rows, yw)
        if yr is not None:
            y.index_copy_(0, plan.r_rows, yr)
        for s0, e0, a in plan.hot_runs:          # opt-in merged weights of hot adapters
            y[s0:e0] = F.linear(x[s0:e0], st.merged[a], self.bias)
        return y

    def _multi_basis(self, x: torch.Tensor, ab: AdapterBatch, plan, groups: dict) -> torch.Tensor:
        """Adapted rows on several bases: per basis group its own ``X V_b``, rotation and
        ``H U_b^T`` (a row's arithmetic is that of its group alone); W rows and hot rows as in
        the one-basis case."""
        st = self.slots
        y = torch.empty(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)
        if plan.num_w:
            y[plan.w_rows] = F.linear(x[plan.w_rows], self.weight, self.bias)
        for basis, slots in groups.items():
            p = ab.plan(set(slots), st.merged)
            if not p.num_r:
                continue
            V, U, _ = st.bases[basis]
            dl, s, patterns = st.rotation_args()
            h = rotate_slots(x[p.r_rows] @ V, p.seg_indptr, p.seg_slot, dl, s, patterns)
            y[p.r_rows] = F.linear(h, U, self.bias)
        for s0, e0, a in plan.hot_runs:
            y[s0:e0] = F.linear(x[s0:e0], st.merged[a], self.bias)
        return y


def only_logit_rows(x: torch.Tensor, o: torch.Tensor, ab: AdapterBatch | None,
                    logit_rows: torch.Tensor | None):
    """After the last layer's attention only the rows whose logits are wanted still matter
    (every row's K/V is already in the cache): returns ``(x, o, ab, logit_rows)`` restricted
    to those rows, ``logit_rows`` then None (all rows). x, o: (T, ...); logit_rows: int64."""
    if logit_rows is None or len(logit_rows) == x.shape[0]:
        return x, o, ab, logit_rows
    sub = ab.subset(logit_rows) if ab is not None else None
    return x[logit_rows], o[logit_rows], sub, None


def row_slots_of(ab: AdapterBatch | None, rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """Slot of each row of the flat batch (-1: base), or of ``rows`` of it; None without an
    adapter batch."""
    if ab is None or not ab.any_adapted:
        return None
    slots = torch.empty(ab.num_rows, dtype=torch.long)
    for s, e, a in ab.runs:
        slots[s:e] = a
    return slots if rows is None else slots[rows.cpu()]


class AdapterHead:
    """A head module (nn.Linear: a classifier, an LM head) that adapters may replace with their
    own trained copy (``modules_to_save``). Like :class:`AdaptedLinear`'s tables, the per-slot
    weights are owned here; the adapter manager calls ``set_slot`` / ``reset_slot``.

    ``apply(y, x, slots)`` replaces the rows of ``y = head(x)`` whose slot has a copy by
    ``x W_a^T + b_a``; other rows keep the base head's result.
    """

    def __init__(self, name: str, module: torch.nn.Linear):
        self.name = name
        self.module = module
        self.slots: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def expected(self) -> dict[str, tuple]:
        """State-dict key -> shape an adapter's copy must have."""
        return {k: tuple(t.shape) for k, t in self.module.state_dict().items()}

    def set_slot(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        w = self.module.weight
        self.slots[slot] = (state["weight"].to(w.device, w.dtype).contiguous(),
                            state["bias"].to(w.device, w.dtype) if "bias" in state else None)

    def reset_slot(self, slot: int) -> None:
        self.slots.pop(slot, None)

    def apply(self, y: torch.Tensor, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None or not self.slots:
            return y
        for a in sorted({int(t) for t in slots.unique().tolist() if t >= 0}):
            wb = self.slots.get(a)
            if wb is None:
                continue
            idx = (slots == a).nonzero().flatten().to(x.device)
            y[idx] = F.linear(x[idx], *wb).to(y.dtype)
        return y


def adapted_layers(model) -> dict[str, AdaptedLinear]:
    """Every :class:`AdaptedLinear` of a wrapped model (found in its attributes, lists and
    dicts), by HF module name."""
    found: dict[str, AdaptedLinear] = {}

    def visit(v):
        if isinstance(v, AdaptedLinear):
            found[v.name] = v
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
    for v in vars(model).values():
        visit(v)
    return found


# False runs CPU decode rows through the padded gather + SDPA path that other devices use
# (tests do this to cover that path without a GPU)
PAGED_DECODE_ON_CPU = True


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, attn: AttnBatch,
              scale: float) -> torch.Tensor:
    """Multi-head attention of the flat batch.

    q: (T, Hq, D); k, v: (T, Hkv, D) for the batch's new tokens. With a KV cache the new K/V
    are written to their slots first and every sequence attends to its gathered blocks;
    without one (encoders) each sequence attends to its own rows. Returns (T, Hq * D).
    Fresh prompts of one length are computed in one batched call, other prefill chunks one
    sequence at a time; decode rows (one new token each) on CPU through the paged decode
    kernel (:func:`frod_rt.ops.paged_decode_attention`), elsewhere in one padded, masked call.
    """
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    cache = attn.kv_cache
    if cache is not None:
        kc, vc = cache.k[layer], cache.v[layer]                      # (NB, bs, Hkv, D)
        kc.view(-1, Hkv, D).index_copy_(0, attn.slot_mapping, k)
        vc.view(-1, Hkv, D).index_copy_(0, attn.slot_mapping, v)
    out = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)
    gqa = Hq != Hkv
    paged = q.device.type == "cpu" and PAGED_DECODE_ON_CPU
    # CPU: every decode row through the paged kernel (even alone, so a row's arithmetic never
    # depends on its batch); elsewhere groups of two or more through padded SDPA
    group = attn.decode_group(q.device, 1 if paged else 2) if cache is not None else None
    done = set()
    if group is not None and paged:
        # straight from the blocks: no gathered copy, no padding (frod_rt.ops.paged_attention)
        idx, rows, bt, ctx = group
        out[rows] = paged_decode_attention(q[rows], kc, vc, bt, ctx, scale)
        done = set(idx)
    elif group is not None:
        # decode rows together: their blocks gathered into a padded (B, L) context, padding
        # masked out (masked keys get weight exactly 0, so a row's result does not depend on
        # how far its batch mates' contexts reach)
        idx, rows, bt, _ = group
        B, nb = bt.shape
        ks = kc[bt].reshape(B, nb * kc.shape[1], Hkv, D).transpose(1, 2)
        vs = vc[bt].reshape(B, nb * kc.shape[1], Hkv, D).transpose(1, 2)
        o = F.scaled_dot_product_attention(q[rows][:, :, None, :], ks, vs,
                                           attn_mask=attn.decode_mask(q.device),
                                           scale=scale, enable_gqa=gqa)
        out[rows] = o[:, :, 0, :]
        done = set(idx)
    for idx, rows, L in attn.prompt_groups(q.device):
        # prompts of one length that see only their own rows: one batched call; the mask
        # is the one the per-sequence path uses, so a row's result is the same either way
        B = len(idx)
        qb = q[rows].view(B, L, Hq, D).transpose(1, 2)
        kb = k[rows].view(B, L, Hkv, D).transpose(1, 2)
        vb = v[rows].view(B, L, Hkv, D).transpose(1, 2)
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=attn.causal_mask(L, L, q.device),
                                           scale=scale, enable_gqa=gqa)
        out[rows] = o.transpose(1, 2).reshape(B * L, Hq, D)
        done.update(idx)
    for i, s in enumerate(attn.starts):
        if i in done:
            continue
        ql, cl = attn.q_lens[i], attn.ctx_lens[i]
        if cache is None or cl == ql:
            ki, vi = k[s:s + ql], v[s:s + ql]
        else:
            bt = attn.block_tables[i]
            ki = kc[bt].reshape(-1, Hkv, D)[:cl]
            vi = vc[bt].reshape(-1, Hkv, D)[:cl]
        mask = attn.causal_mask(ql, cl, q.device)
        o = F.scaled_dot_product_attention(
            q[s:s + ql].transpose(0, 1), ki.transpose(0, 1), vi.transpose(0, 1),
            attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[s:s + ql] = o.transpose(0, 1)
    return out.reshape(T, Hq * D)
