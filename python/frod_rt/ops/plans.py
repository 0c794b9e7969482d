"""Rotation plans: each sparse pattern compressed once, in C++, and tables of them per slot.

A :class:`PatternPlan` is a pattern ``(rows, cols)`` of ``k`` off-diagonal entries of an
``n x n`` matrix, validated and compressed by the C++ core (``frod/pattern_plan.h``) into the
CSR / CSC order the CPU and CUDA kernels traverse, and uploaded once to its device. Plans are
identified by content: :func:`register_pattern` returns the same object for the same
``(rows, cols, n, device)``, from a bounded LRU cache.

A :class:`SlotPatterns` assigns a plan (or none) to each adapter slot of a serving layer; the
rotation ops read it as four tensors (:class:`PlanTable`), so slots with patterns of different
``k`` (each slot uses ``s[a, :k_a]``) share one call.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import torch
from torch import Tensor

from .._core import _C, view

#: Most distinct plans kept by register_pattern's cache (least recently used dropped first).
PLAN_CACHE_SIZE = 256


class PatternPlan:
    """One pattern's rotation plan on one device (immutable; make with :func:`register_pattern`).

    Attributes:
        n, k: matrix width and number of entries.
        device: where ``ptr`` / ``idx`` live.
        rows, cols: (k,) int32 CPU, the pattern in its own order (``s[a, j]`` belongs to
            ``(rows[j], cols[j])``).
        ptr: (2, n+1) int32 CSR row / CSC column pointers; idx: (4, k) int32
            ``[csr cols, csr j, csc rows, csc j]`` (see ``cpp/include/frod/pattern_plan.h``).
        identity: the pattern was sorted by row (CSR order == pattern order).
        key: content digest (with n).
    """

    __slots__ = ("n", "k", "device", "rows", "cols", "ptr", "idx", "identity", "key",
                 "__weakref__")

    def __init__(self, rows: Tensor, cols: Tensor, n: int, device: torch.device, key: str,
                 adapter: int = -1):
        k = rows.shape[0]
        ptr = torch.empty((2, n + 1), dtype=torch.int32)
        idx = torch.empty((4, k), dtype=torch.int32)
        self.identity = bool(_C.build_pattern_plan(view(rows), view(cols), n, adapter, view(ptr),
                                                   view(idx)))
        self.n, self.k, self.device, self.key = n, k, device, key
        self.rows, self.cols = rows, cols
        self.ptr = ptr.to(device)
        self.idx = idx.to(device)

    def __repr__(self) -> str:
        return f"PatternPlan(n={self.n}, k={self.k}, device={self.device}, key={self.key[:12]})"


_cache: OrderedDict[tuple, PatternPlan] = OrderedDict()
_lock = threading.Lock()


def _pattern_cpu(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor (k,), got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected an integer dtype, got {x.dtype}")
    x = x.detach().to("cpu")
    if x.dtype != torch.int32:
        if x.numel() and (int(x.min()) < -(2 ** 31) or int(x.max()) >= 2 ** 31):
            raise ValueError(f"{name}: entries do not fit int32")
        x = x.to(torch.int32)
    return x.contiguous()


def register_pattern(rows, cols, n: int, device=None, *, adapter: int = -1) -> PatternPlan:
    """The rotation plan of pattern ``(rows, cols)`` for width ``n`` on ``device``.

    Validates the pattern (entries in ``[0, n)``, off the diagonal; errors name ``rows[j]`` /
    ``cols[j]``, or ``rows[adapter, j]`` when ``adapter >= 0`` is given), builds the plan in
    the C++ core and uploads it once. The same content, ``n`` and device give the same object;
    at most :data:`PLAN_CACHE_SIZE` plans are kept (LRU), and a plan stays valid for as long as
    someone holds it.

    Args:
        rows, cols: (k,) integer tensors (any device, any integer dtype that fits int32).
        n: the matrix width.
        device: where the kernels will run (default: rows' device).

    Returns:
        PatternPlan.
    """
    if device is None:
        device = rows.device if isinstance(rows, Tensor) else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n = int(n)
    if n < 0:
        raise ValueError(f"n: expected a non-negative width, got {n}")
    r = _pattern_cpu(rows, "rows")
    c = _pattern_cpu(cols, "cols")
    if c.shape != r.shape:
        raise ValueError(f"cols: expected shape {tuple(r.shape)} like rows, got {tuple(c.shape)}")
    h = hashlib.blake2b(digest_size=20)
    h.update(n.to_bytes(8, "little"))
    h.update(r.numpy().tobytes())
    h.update(c.numpy().tobytes())
    key = (h.hexdigest(), str(device))
    with _lock:
        plan = _cache.get(key)
        if plan is not None:
            _cache.move_to_end(key)
            return plan
    plan = PatternPlan(r, c, n, device, key[0], adapter)
    with _lock:
        plan = _cache.setdefault(key, plan)
        _cache.move_to_end(key)
        while len(_cache) > PLAN_CACHE_SIZE:
            _cache.popitem(last=False)
    return plan


def plan_cache_size() -> int:
    """Number of plans currently held by register_pattern's cache."""
    return len(_cache)


class PlanTable:
    """Slot -> plan map as the four tensors the rotation ops take (``frod/pattern_plan.h``).

    Attributes (all on ``device``):
        slot_plan: (A,) int32, plan index of each slot or -1 (no pattern: S = 0).
        meta: (P, 2) int64, ``[entry offset into idx, identity flag]`` per plan.
        ptr: (P, 2, n+1) int32; idx: (4, E) int32, the plans' arrays concatenated.
        plans: the P distinct PatternPlans, in table order.
    """

    __slots__ = ("n", "device", "plans", "kmax", "slot_plan", "meta", "ptr", "idx", "__weakref__")

    def __init__(self, n: int, device: torch.device, slot_plans: list[PatternPlan | None]):
        self.n, self.device = n, device
        index: dict[int, int] = {}
        plans: list[PatternPlan] = []
        slots = []
        for p in slot_plans:
            if p is None:
                slots.append(-1)
                continue
            if p.n != n or p.device != device:
                raise ValueError(f"plan for n={p.n} on {p.device} does not fit a table for "
                                 f"n={n} on {device}")
            if id(p) not in index:
                index[id(p)] = len(plans)
                plans.append(p)
            slots.append(index[id(p)])
        offsets, off = [], 0
        for p in plans:
            offsets.append([off, int(p.identity)])
            off += p.k
        self.plans = plans
        self.kmax = max((p.k for p in plans), default=0)
        self.slot_plan = torch.tensor(slots, dtype=torch.int32).to(device)
        self.meta = torch.tensor(offsets, dtype=torch.int64).reshape(len(plans), 2).to(device)
        self.ptr = (torch.stack([p.ptr for p in plans]) if plans
                    else torch.zeros((0, 2, n + 1), dtype=torch.int32, device=device))
        self.idx = (torch.cat([p.idx for p in plans], dim=1) if plans
                    else torch.zeros((4, 0), dtype=torch.int32, device=device))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.slot_plan, self.meta, self.ptr, self.idx

    def max_k(self) -> int:
        """Largest k of the table's plans (s needs at least this many columns)."""
        return self.kmax


class SlotPatterns:
    """Per-slot pattern plans of one adapted layer (serving).

    ``set(slot, plan)`` / ``clear(slot)`` change the map (the table tensors are rebuilt then,
    never per call); :func:`frod_rt.ops.rotate_slots` reads it. Slot ``a`` uses
    ``s[a, :plan.k]``; a cleared slot has no pattern (only ``dl`` applies).

    Args:
        n: the layer's input width (plans must have this n).
        num_slots: A, rows of the dl / s tables.
        device: where the plans and the table live.
    """

    def __init__(self, n: int, num_slots: int, device=None):
        if num_slots < 0 or n < 0:
            raise ValueError(f"SlotPatterns: n and num_slots must be >= 0, got {n}, {num_slots}")
        self.n, self.num_slots = int(n), int(num_slots)
        self.device = torch.device(device if device is not None else "cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._plans: list[PatternPlan | None] = [None] * self.num_slots
        self.table = PlanTable(self.n, self.device, self._plans)

    def _check_slot(self, slot: int) -> int:
        slot = int(slot)
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} is out of range [0, {self.num_slots})")
        return slot

    def set(self, slot: int, plan: PatternPlan) -> None:
        """Slot ``slot`` uses ``plan`` (its n and device must match the table's)."""
        slot = self._check_slot(slot)
        if not isinstance(plan, PatternPlan):
            raise TypeError(f"plan: expected a PatternPlan (from register_pattern), got "
                            f"{type(plan).__name__}")
        if plan.n != self.n:
            raise ValueError(f"plan: built for n = {plan.n}, the layer has n = {self.n}")
        if plan.device != self.device:
            raise ValueError(f"plan: lives on {plan.device}, the table on {self.device}")
        if self._plans[slot] is plan:
            return
        self._plans[slot] = plan
        self.table = PlanTable(self.n, self.device, self._plans)

    def clear(self, slot: int) -> None:
        """Slot ``slot`` has no pattern any more."""
        slot = self._check_slot(slot)
        if self._plans[slot] is None:
            return
        self._plans[slot] = None
        self.table = PlanTable(self.n, self.device, self._plans)

    def plan(self, slot: int) -> PatternPlan | None:
        return self._plans[self._check_slot(slot)]

    def k(self, slot: int) -> int:
        """Entries of slot's pattern (0 when none): the slot's values are ``s[slot, :k]``."""
        p = self.plan(slot)
        return 0 if p is None else p.k

    def max_k(self) -> int:
        """Largest k of the slots (the narrowest s table that fits)."""
        return self.table.max_k()


# ---- tables for rotate_segments' (rows, cols) arguments -------------------------------------
_TABLE_CACHE_SIZE = 64
_tables: OrderedDict[tuple, tuple] = OrderedDict()


def _version(t: Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return None


def _remembered(key: tuple, tensors: tuple[Tensor, ...], make):
    """``make()``, remembered under ``key`` while ``tensors`` are alive and unmodified (same
    objects, same version counters), so repeated calls with the same tensors skip hashing."""
    ver = tuple(_version(t) for t in tensors)
    with _lock:
        hit = _tables.get(key)
        if hit is not None:
            refs, v, value = hit
            if all(r() is t for r, t in zip(refs, tensors)) and v == ver and None not in ver:
                _tables.move_to_end(key)
                return value
    value = make()
    if None not in ver:
        with _lock:
            _tables[key] = (tuple(weakref.ref(t) for t in tensors), ver, value)
            while len(_tables) > _TABLE_CACHE_SIZE:
                _tables.popitem(last=False)
    return value


def _device_of(t: Tensor) -> torch.device:
    d = t.device
    return torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d


def plan_of(rows: Tensor, cols: Tensor, n: int) -> PatternPlan:
    """:func:`register_pattern` for (k,) tensors on the kernels' device, remembered per tensor
    (no hashing while the same unmodified tensors come back)."""
    return _remembered(("plan", id(rows), id(cols), n), (rows, cols),
                       lambda: register_pattern(rows, cols, n, _device_of(rows)))


def table_of_plans(plans: list[PatternPlan | None], n: int, device) -> PlanTable:
    """A PlanTable with slot a -> ``plans[a]``, remembered for the same plan objects."""
    key = ("plans", n, str(device), tuple(id(p) for p in plans))
    with _lock:
        hit = _tables.get(key)
        if hit is not None:
            _tables.move_to_end(key)
            return hit[2]
    table = PlanTable(n, torch.device(device), list(plans))   # holds the plans: ids stay valid
    with _lock:
        _tables[key] = ((), (), table)
        while len(_tables) > _TABLE_CACHE_SIZE:
            _tables.popitem(last=False)
    return table


def table_for_pattern(rows: Tensor, cols: Tensor, n: int, num_slots: int) -> PlanTable:
    """The plan table of a rotate_segments pattern: (k,) shared by all ``num_slots`` slots,
    or (A, k) one per slot. Plans come from :func:`register_pattern` (content-keyed); the
    table is remembered for these very tensors while they are alive and unmodified, so a
    repeated call does not even hash them."""
    def make():
        device = _device_of(rows)
        if rows.dim() == 1:
            slot_plans = [register_pattern(rows, cols, n, device)] * num_slots
        else:
            rc, cc = rows.to("cpu"), cols.to("cpu")
            slot_plans = [register_pattern(rc[a], cc[a], n, device, adapter=a)
                          for a in range(num_slots)]
        return PlanTable(n, device, slot_plans)
    return _remembered(("pattern", id(rows), id(cols), n, num_slots), (rows, cols), make)
