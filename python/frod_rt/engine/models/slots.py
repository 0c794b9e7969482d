"""Per-slot adapter state of one adapted layer, owned by the layer (DESIGN.md 2.2).

The adapter manager decides which adapter sits in which slot and calls the layer's
``set_slot(slot, values)`` / ``reset_slot(slot)`` (as vLLM's LoRA layers do); the forward
reads only these tables, never the manager.

* ``SlotTables`` (one per adapted layer): the layer's bases, each ``V`` (n, n) (shared by the
  category), ``U`` (out, n), ``l`` (n,) and keyed by its category fingerprint (frod_rt's own
  basis, PEFT's, an imported file's: several bases of one base model can be served at once,
  each slot on one of them); per slot ``ldl[a] = l_b + dl_a`` (A, n) in its basis and the
  sparse values ``s[a, :k_a]`` of one ``(A, kcap)`` table (kcap = the largest k of the slots in
  use; it shrinks again when that slot goes); the slot -> pattern plan table
  (:class:`frod_rt.ops.SlotPatterns`) that :func:`frod_rt.ops.rotate_slots` reads, so slots
  with different patterns (and k) share one rotation without padding; the slots whose adapter
  targets the layer; merged ``W'`` of hot slots (``merge_hot``, automatic merging), built
  by ``merged_weight`` from the slot's own ``dl``, ``s`` (references kept per slot).
* ``PatternStore``: the engine's patterns in use, as rotation plans on the device
  (:func:`frod_rt.ops.register_pattern`: planned once, keyed by content), reference-counted
  by the slots that use them and dropped when none does.

Threads: the manager calls ``set_slot`` / ``reset_slot`` under its lock (so writes never
overlap), and never on a slot that a running request has pinned; a forward pass reads only
the slots of its own batch, so it needs no lock.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...method.delta import adapted_weight
from ...method.patterns import LayerPattern
from ...ops import PatternPlan, SlotPatterns, register_pattern


@dataclass
class SlotValues:
    """One adapter's values for one layer: ``dl`` (n,), ``s`` (k,) (any float dtype and
    device), its ``pattern`` (k entries), whether to keep a merged ``W'`` (``merge``) and the
    basis they are expressed in (``basis``: a key given to ``SlotTables.add_basis``; None =
    the basis the tables were created with)."""
    dl: torch.Tensor
    s: torch.Tensor
    pattern: LayerPattern
    merge: bool = False
    basis: str | None = None


class PatternStore:
    """The rotation plans of the patterns in use, keyed by content (``LayerPattern.key``),
    shared by every layer of one engine and reference-counted: ``acquire`` returns the plan
    (planned and uploaded on first use), ``release`` drops it when its last user goes."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._entries: dict[tuple, list] = {}     # key -> [plan, refs]

    def acquire(self, pattern: LayerPattern, n: int) -> PatternPlan:
        e = self._entries.get(pattern.key)
        if e is None:
            e = self._entries[pattern.key] = [register_pattern(pattern.rows, pattern.cols, n,
                                                               self.device), 0]
        e[1] += 1
        return e[0]

    def release(self, pattern_key: tuple) -> None:
        e = self._entries.get(pattern_key)
        if e is not None:
            e[1] -= 1
            if e[1] <= 0:
                del self._entries[pattern_key]

    def __len__(self) -> int:
        return len(self._entries)


class SlotTables:
    """The per-slot tables of one adapted layer (see the module docstring).

    V (n, n), U (out, n), l (n,) on the serving device and dtype; ``A`` slots.
    """

    def __init__(self, A: int, V: torch.Tensor, U: torch.Tensor, l: torch.Tensor,
                 store: PatternStore, basis: str | None = None):
        self.A, self.V, self.U, self.l = A, V, U, l      # the first basis (``basis``)
        self.n = l.shape[0]
        self.first_basis = basis
        self.bases: dict[str | None, tuple] = {basis: (V, U, l)}
        self.slot_basis: list[str | None] = [None] * A
        self.ldl = l.new_zeros(A, self.n)
        self.s = l.new_zeros(A, 0)                      # (A, kcap): slot a uses s[a, :k_a]
        self.patterns = SlotPatterns(self.n, A, l.device)
        self.store = store
        self._key_of_slot: list[tuple | None] = [None] * A
        self._dl_s: list[tuple | None] = [None] * A     # the slot's own (dl, s), for merging
        self.target_slots: set[int] = set()
        self.merged: dict[int, torch.Tensor] = {}

    def add_basis(self, basis: str, V: torch.Tensor, U: torch.Tensor, l: torch.Tensor) -> None:
        """Register another basis of the layer (V (n, n), U (out, n), l (n,), serving dtype and
        device) under ``basis``; slots name it in ``SlotValues.basis``."""
        if tuple(V.shape) != tuple(self.V.shape) or tuple(U.shape) != tuple(self.U.shape) \
                or tuple(l.shape) != tuple(self.l.shape):
            raise ValueError(f"basis {basis!r}: shapes {tuple(V.shape)}, {tuple(U.shape)}, "
                             f"{tuple(l.shape)} differ from the layer's")
        self.bases.setdefault(basis, (V, U, l))

    def basis_groups(self, slots) -> dict:
        """``{basis: [slots]}`` of ``slots`` (each slot's adapter is in one basis)."""
        out: dict = {}
        for a in slots:
            out.setdefault(self.slot_basis[a], []).append(a)
        return out

    def set_slot(self, slot: int, values: SlotValues) -> None:
        """Write one adapter's values and pattern into ``slot`` (in basis ``values.basis``)."""
        if not 0 <= slot < self.A:
            raise IndexError(f"slot {slot} out of range [0, {self.A})")
        basis = self.first_basis if values.basis is None else values.basis
        if basis not in self.bases:
            raise KeyError(f"basis {basis!r} is not registered with this layer (add_basis)")
        V, U, l = self.bases[basis]
        k = values.pattern.k
        if tuple(values.dl.shape) != (self.n,) or tuple(values.s.shape) != (k,):
            raise ValueError(f"slot values: expected dl ({self.n},) and s ({k},), got "
                             f"{tuple(values.dl.shape)} and {tuple(values.s.shape)}")
        plan = self.store.acquire(values.pattern, self.n)   # before release: a kept one stays
        self._release(slot)
        self.patterns.set(slot, plan)
        self._key_of_slot[slot] = values.pattern.key
        self.merged.pop(slot, None)
        self._fit_kcap()
        dev, dt = self.l.device, self.l.dtype
        self.slot_basis[slot] = basis
        self.ldl[slot] = (l.double() + values.dl.to(dev, torch.float64)).to(dt)
        self.s[slot].zero_()
        self.s[slot, :k] = values.s.to(dev, dt)
        self._dl_s[slot] = (values.dl, values.s)
        if values.merge:
            self.merged[slot] = self.merged_weight(slot)
        self.target_slots.add(slot)

    def merged_weight(self, slot: int, compute: torch.dtype = torch.float64) -> torch.Tensor:
        """``W' = U (diag(l + dl) + S) V^T`` (out, n) of the adapter in ``slot``, in its basis
        (:func:`frod_rt.method.delta.adapted_weight`, computed in ``compute``, returned in the
        tables' dtype, contiguous). ``merge_hot`` and automatic merging both use it."""
        if self._dl_s[slot] is None:
            raise KeyError(f"slot {slot} is empty")
        V, U, l = self.bases[self.slot_basis[slot]]
        dl, s = self._dl_s[slot]
        plan = self.patterns.plan(slot)
        dev = self.l.device
        return adapted_weight(U, l, V, dl.to(dev), s.to(dev), plan.rows.to(dev),
                              plan.cols.to(dev), dtype=self.l.dtype, compute=compute).contiguous()

    def reset_slot(self, slot: int) -> None:
        """Empty ``slot`` (no-op when it is empty); the values table shrinks when the slot held
        the longest pattern, and patterns no slot uses are released."""
        self.target_slots.discard(slot)
        self.slot_basis[slot] = None
        self.merged.pop(slot, None)
        self._dl_s[slot] = None
        if self._key_of_slot[slot] is None:
            return
        self.ldl[slot].zero_()
        self.s[slot].zero_()
        self._release(slot)
        self.patterns.clear(slot)
        self._fit_kcap()

    def _release(self, slot: int) -> None:
        key, self._key_of_slot[slot] = self._key_of_slot[slot], None
        if key is not None:
            self.store.release(key)

    def _fit_kcap(self) -> None:
        """Resize the values table to the largest k in use (copying the slots' values)."""
        kcap = self.patterns.max_k()
        if kcap != self.s.shape[1]:
            s = self.l.new_zeros(self.A, kcap)
            keep = min(kcap, self.s.shape[1])
            s[:, :keep] = self.s[:, :keep]
            self.s = s

    def rotation_args(self) -> tuple[torch.Tensor, torch.Tensor, SlotPatterns]:
        """(ldl (A, n), s (A, kcap), slot patterns) for :func:`frod_rt.ops.rotate_slots`."""
        return self.ldl, self.s, self.patterns
