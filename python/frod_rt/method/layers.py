"""``FrodLinear``: a base linear layer (nn.Linear or GPT-2 Conv1D) with FRoD adapters.

The layer keeps the base module's own ``weight`` and ``bias`` Parameters (so the base's
state-dict keys do not change), its per-layer factors ``frod_U`` (out, n) and ``frod_l`` (n,)
as non-persistent buffers shared by all adapters, and per adapter the trainable
``frod_dl[name]`` (n,) and ``frod_s[name]`` (k,). ``V`` and the shared patterns live in the
model's :class:`FrodState`.

Forward, for rows routed to adapters ``a`` (DESIGN.md section 2)::

    y = x W^T + b + H U^T,   H[t] = Z[t] * dl_a + (S_a Z[t]^T)^T,  Z = x V

through ``frod_rt.ops.frod_linear`` (C++ kernel), or, when one adapter covers every row and
the cost rule prefers it, through the materialised ``W' = W + U (diag(dl) + S) V^T``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .categories import is_conv1d
from .delta import delta_weight
from .dense_path import dense_frod_linear, training_path
from .state import FrodState


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a linear layer on ``x`` in, or None when autocast is off
    for x's device (or x is float64, which autocast leaves alone)."""
    dev = x.device.type
    if x.dtype == torch.float64 or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def tie_idle(y: torch.Tensor, params, state) -> torch.Tensor:
    """``y`` plus ``0 * sum(p)`` over the trainable ``params()`` a call did not use, when idle
    adapters must take part in the graph: under ``torch.distributed`` (auto) or when
    ``state.tie_idle`` is True. DistributedDataParallel then reduces a zero gradient for them
    and needs no ``find_unused_parameters``; on one process (auto) they keep ``grad=None``.
    Note: an optimizer treats a zero gradient as a step (Adam moments decay)."""
    tie = getattr(state, "tie_idle", None)
    if tie is None:
        tie = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not tie or not torch.is_grad_enabled():
        return y
    idle = [p for p in params() if p.requires_grad]
    if not idle:
        return y
    zero = torch.stack([p.sum().to(torch.float32) for p in idle]).sum() * 0
    return y + zero.to(y.dtype)


class FrodLinear(nn.Module):
    """See the module docstring. Built by FrodModel; not meant to be created directly."""

    def __init__(self, base: nn.Module, name: str, category: str, U: torch.Tensor,
                 l: torch.Tensor, state: FrodState, compute_path: str = "auto"):
        super().__init__()
        self.base_layer_name = name
        self.category = category
        self.fan_in_fan_out = is_conv1d(base)
        self.weight = base.weight
        self.bias = base.bias
        self.out_features, self.in_features = U.shape
        self.register_buffer("frod_U", U, persistent=False)
        self.register_buffer("frod_l", l, persistent=False)
        self.frod_dl = nn.ParameterDict()
        self.frod_s = nn.ParameterDict()
        self.compute_path = compute_path
        # adapter -> ("shared", state pattern name) or ("own", layer buffer prefix)
        self._patterns: dict[str, tuple[str, str]] = {}
        self.merged_adapter: str | None = None
        self._weight_before_merge: torch.Tensor | None = None
        object.__setattr__(self, "_base_module", base)
        object.__setattr__(self, "_state", state)

    # ---- adapters -------------------------------------------------------------------------
    def add_adapter(self, name: str, dl: torch.Tensor, s: torch.Tensor,
                    pattern: tuple[str, str] | tuple[torch.Tensor, torch.Tensor]) -> None:
        """Add adapter ``name`` with values dl (n,), s (k,) and either a shared pattern
        (``("shared", state name)``) or its own (rows, cols) int32 (k,) tensors."""
        if isinstance(pattern[0], str):
            self._patterns[name] = pattern
        else:
            rows, cols = pattern
            self.register_buffer(f"frod_rows_{name}", rows.to(self.frod_U.device, torch.int32),
                                 persistent=False)
            self.register_buffer(f"frod_cols_{name}", cols.to(self.frod_U.device, torch.int32),
                                 persistent=False)
            self._patterns[name] = ("own", name)
        self.frod_dl[name] = nn.Parameter(dl.to(self.frod_U.device))
        self.frod_s[name] = nn.Parameter(s.to(self.frod_U.device))

    def delete_adapter(self, name: str) -> None:
        if self.merged_adapter == name:
            raise ValueError(f"adapter {name!r} is merged into {self.base_layer_name}; "
                             "unmerge_adapter() first")
        kind, _ = self._patterns.pop(name)
        del self.frod_dl[name]
        del self.frod_s[name]
        if kind == "own":
            delattr(self, f"frod_rows_{name}")
            delattr(self, f"frod_cols_{name}")

    def pattern(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) int32 (k,) of adapter ``name`` in this layer."""
        kind, ref = self._patterns[name]
        if kind == "shared":
            return self._state.pattern(ref)
        return getattr(self, f"frod_rows_{ref}"), getattr(self, f"frod_cols_{ref}")

    def has_own_pattern(self, name: str) -> bool:
        return self._patterns[name][0] == "own"

    @property
    def V(self) -> torch.Tensor:
        return self._state.V(self.category)

    def weight_oi(self) -> torch.Tensor:
        """The base weight as (out, in) (a view for Conv1D)."""
        return self.weight.t() if self.fan_in_fan_out else self.weight

    def delta_weight(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dW = U (diag(dl) + S) V^T`` (out, in) of adapter ``name``."""
        rows, cols = self.pattern(name)
        return delta_weight(self.frod_U, self.V, self.frod_dl[name], self.frod_s[name], rows,
                            cols, dtype=dtype or self.weight.dtype)

    # ---- merge ----------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, name: str, keep_copy: bool = True) -> None:
        """Add dW of ``name`` into the base weight (a copy of the old weight is kept for
        :meth:`unmerge` unless ``keep_copy`` is False)."""
        if self.merged_adapter is not None:
            raise ValueError(f"{self.base_layer_name}: adapter {self.merged_adapter!r} is "
                             "already merged; unmerge first")
        dW = self.delta_weight(name, dtype=torch.float64 if self.weight.dtype == torch.float64
                               else torch.float32)
        if keep_copy:
            self._weight_before_merge = self.weight.detach().clone()
        w = self.weight.data
        merged = (w.to(dW.dtype) + (dW.t() if self.fan_in_fan_out else dW)).to(w.dtype)
        w.copy_(merged)
        self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_adapter is None:
            return
        if self._weight_before_merge is None:
            raise ValueError(f"{self.base_layer_name}: merged without a copy, cannot unmerge")
        self.weight.data.copy_(self._weight_before_merge)
        self._weight_before_merge = None
        self.merged_adapter = None

    # ---- forward --------------------------------------------------------------------------
    def _route(self, x: torch.Tensor):
        """(segments or None, adapter names used) for the flattened rows of x.

        ``segments`` is None when every row uses ``used[0]`` (or ``used`` is empty: base);
        otherwise (seg_indptr, seg_adapter) int32 indexing into ``used``.
        """
        st = self._state
        if st.routing is None:
            if st.active is None or st.active not in self.frod_dl:
                return None, []
            return None, [st.active]
        adapters = tuple(self.frod_dl.keys())
        batch_ids, used = st.routing.ids_for(adapters, x.device)
        B = batch_ids.shape[0]
        T = x.numel() // self.in_features if self.in_features else 0
        # (B, ..., n) inputs: dim 0 is the batch; 2-D (B*S, n) inputs: rows batch-major
        if not ((x.dim() >= 3 and x.shape[0] == B) or (x.dim() <= 2 and B and T % B == 0)):
            raise ValueError(f"{self.base_layer_name}: got {B} adapter names for an input of "
                             f"shape {tuple(x.shape)}; pass one name per batch row")
        if not used:
            return None, []
        if st.routing.all_rows_one_adapter(adapters, x.device):
            return None, used
        seg_indptr, seg_adapter, used = st.routing.segments_for(adapters, x.device, T // B)
        return (seg_indptr, seg_adapter), used

    def _stack(self, used: list[str], dtype: torch.dtype):
        """(dl, s, rows, cols, table) of the used adapters for ``ops.frod_linear``: one shared
        pattern as (k,) rows/cols, otherwise a plan table (each adapter its own planned pattern,
        ``s`` zero-padded to the largest k; no pattern is padded)."""
        dl = torch.stack([self.frod_dl[a].to(dtype) for a in used])
        refs = [self._patterns[a] for a in used]
        if all(r == refs[0] for r in refs) and refs[0][0] == "shared":
            rows, cols = self.pattern(used[0])
            s = torch.stack([self.frod_s[a].to(dtype) for a in used])
            return dl, s, rows, cols, None
        n = self.in_features
        plans = [ops.plan_of(*self.pattern(a), n) for a in used]
        kmax = max(p.k for p in plans)
        s = torch.stack([F.pad(self.frod_s[a].to(dtype), (0, kmax - p.k))
                         for a, p in zip(used, plans)])
        return dl, s, None, None, ops.table_of_plans(plans, n, plans[0].device)

    def _path(self, T: int, name: str) -> str:
        """Compute path for one adapter ``name`` over all T rows: "factored" (the delta form,
        what inference uses: a row's arithmetic never depends on T), or while training the
        cheaper of "replace" / "dense" (:func:`training_path`); ``compute_path`` forces one."""
        if self.compute_path != "auto":
            return self.compute_path
        training = torch.is_grad_enabled() and (self.frod_dl[name].requires_grad
                                                or self.frod_s[name].requires_grad)
        return training_path(T, self.out_features, self.in_features) if training else "factored"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, used = self._forward(x)
        return tie_idle(y, lambda: [p for a in self.frod_dl if a not in used
                                    for p in (self.frod_dl[a], self.frod_s[a])], self._state)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """(output, adapters whose values were used)."""
        st = self._state
        W, b = self.weight_oi(), self.bias
        if st.disabled:
            if self.merged_adapter is not None:
                raise ValueError(f"{self.base_layer_name}: adapters are disabled but "
                                 f"{self.merged_adapter!r} is merged; unmerge first")
            return F.linear(x, W, b), []
        segments, used = self._route(x)
        if self.merged_adapter is not None:
            if used == [self.merged_adapter] and segments is None:
                return F.linear(x, W, b), used
            raise ValueError(f"{self.base_layer_name}: adapter {self.merged_adapter!r} is merged; "
                             "unmerge_adapter() before running other adapters or base rows")
        if not used:
            return F.linear(x, W, b), used
        dt = autocast_dtype(x)
        if dt is not None:  # run the adapted math in autocast's dtype, with autocast off
            with torch.autocast(x.device.type, enabled=False):
                return self._adapted(x.to(dt), W, b, segments, used), used
        return self._adapted(x, W, b, segments, used), used

    def _adapted(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, segments,
                 used: list[str]) -> torch.Tensor:
        """The adapted forward in x's dtype (base weight, factors and adapter values cast)."""
        dt = x.dtype
        W = W.to(dt)
        b = b.to(dt) if b is not None else None
        U, V = self.frod_U.to(dt), self.V.to(dt)
        n = self.in_features
        x2 = x.reshape(-1, n)
        T = x2.shape[0]
        path = self._path(T, used[0]) if segments is None else "factored"
        if path == "dense":
            a = used[0]
            rows, cols = self.pattern(a)
            y = dense_frod_linear(x2, W, b, U, V, self.frod_dl[a].to(dt), self.frod_s[a].to(dt),
                                  rows, cols)
            return y.reshape(*x.shape[:-1], self.out_features)
        if segments is None:  # one adapter on every row: a single segment
            seg_indptr = torch.tensor([0, T], dtype=torch.int32, device=x.device)
            seg_adapter = torch.zeros(1, dtype=torch.int32, device=x.device)
        else:
            seg_indptr, seg_adapter = segments
        if path == "replace":
            # W' = U (diag(l + dl) + S) V^T as two GEMMs: y = (Z (l + dl) + S Z) U^T + b,
            # Z = x V (W = U diag(l) V^T: the base is computed through its factors)
            a = used[0]
            rows, cols = self.pattern(a)
            lam = (self.frod_l.to(dt) + self.frod_dl[a].to(dt))[None]
            z = self._state.xv(x, x2, self.V, dt)      # shared by q, k, v of one input
            h = ops.rotate_segments(z, seg_indptr, seg_adapter, lam,
                                    self.frod_s[a].to(dt)[None], rows, cols)
            return F.linear(h, U, b).reshape(*x.shape[:-1], self.out_features)
        dl, s, rows, cols, table = self._stack(used, dt)
        return ops.frod_linear(x, W, b, V, U, seg_indptr, seg_adapter, dl, s, rows, cols,
                               table=table)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, category={self.category!r}, "
                f"adapters={list(self.frod_dl.keys())}, merged={self.merged_adapter!r}")
