"""Per-slot adapter state of one adapted layer, owned by the layer (DESIGN.md 2.2).

The adapter manager decides which adapter sits in which slot and calls the layer's
``set_slot(slot, values)`` / ``reset_slot(slot)`` (as vLLM's LoRA layers do); the forward
reads only these tables, never the manager.

* ``SlotTables`` (one per adapted layer): the layer's basis ``V`` (n, n) (shared by the
  category), ``U`` (out, n), ``l`` (n,); per slot ``ldl[a] = l + dl_a`` (A, n) and the sparse
  values, stored per pattern length ``k`` in ``(A, k)`` tables (a slot's values live in the
  table of its own ``k``; no table is ever padded to another slot's length); the slots whose
  adapter targets the layer; merged ``W'`` of hot slots (``merge_hot``).
* ``SlotPatterns``: which pattern each slot uses, and the ``(rows, cols)`` of a
  ``rotate_segments`` call over a set of slots. This is the one place that knows the pattern
  representation the rotation op takes.
* ``PatternStore``: device copies of patterns keyed by content (``LayerPattern.key``),
  reference-counted by the slots that use them and dropped when none does, so the number of
  entries is bounded by the patterns in use.

Threads: the manager calls ``set_slot`` / ``reset_slot`` under its lock (so writes never
overlap), and never on a slot that a running request has pinned; a forward pass reads only
the slots of its own batch, so it needs no lock.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...method.delta import adapted_weight
from ...method.patterns import LayerPattern

_PAD = (0, 1)   # an off-diagonal (row, col) used to pad mixed patterns; its value is always 0


@dataclass
class SlotValues:
    """One adapter's values for one layer: ``dl`` (n,), ``s`` (k,) (any float dtype and
    device), its ``pattern`` (k entries) and whether to keep a merged ``W'`` (``merge``)."""
    dl: torch.Tensor
    s: torch.Tensor
    pattern: LayerPattern
    merge: bool = False


class DevicePattern:
    """A pattern's int32 (k,) ``rows``/``cols`` on the device, with its content key."""

    def __init__(self, key: tuple, rows: torch.Tensor, cols: torch.Tensor):
        self.key, self.rows, self.cols = key, rows, cols
        self.k = int(rows.shape[0])
        self.refs = 0


class PatternStore:
    """Device patterns keyed by content, shared by every layer of one engine and
    reference-counted: ``acquire`` returns the entry (uploading the pattern on first use),
    ``release`` drops it when its last user goes."""

    def __init__(self, device):
        self.device = torch.device(device)
        self._entries: dict[tuple, DevicePattern] = {}

    def acquire(self, pattern: LayerPattern) -> DevicePattern:
        e = self._entries.get(pattern.key)
        if e is None:
            e = DevicePattern(pattern.key,
                              pattern.rows.to(self.device, torch.int32, copy=True).contiguous(),
                              pattern.cols.to(self.device, torch.int32, copy=True).contiguous())
            self._entries[pattern.key] = e
        e.refs += 1
        return e

    def release(self, entry: DevicePattern) -> None:
        entry.refs -= 1
        if entry.refs <= 0:
            self._entries.pop(entry.key, None)

    def __len__(self) -> int:
        return len(self._entries)


class SlotPatterns:
    """Which pattern each of ``A`` slots uses (``set`` / ``clear``) and the pattern arguments
    of a rotation over some slots (``for_slots``)."""

    def __init__(self, A: int, store: PatternStore):
        self.A = A
        self.store = store
        self.of_slot: list[DevicePattern | None] = [None] * A

    def set(self, slot: int, pattern: LayerPattern) -> DevicePattern:
        new = self.store.acquire(pattern)       # before release: the same pattern stays put
        self.clear(slot)
        self.of_slot[slot] = new
        return new

    def clear(self, slot: int) -> None:
        old, self.of_slot[slot] = self.of_slot[slot], None
        if old is not None:
            self.store.release(old)

    def shared(self, slots) -> DevicePattern | None:
        """The one pattern all ``slots`` use, or None when they use several."""
        first = None
        for a in slots:
            p = self.of_slot[a]
            if first is None:
                first = p
            elif p is not first:
                return None
        return first


class SlotTables:
    """The per-slot tables of one adapted layer (see the module docstring).

    V (n, n), U (out, n), l (n,) on the serving device and dtype; ``A`` slots.
    """

    def __init__(self, A: int, V: torch.Tensor, U: torch.Tensor, l: torch.Tensor,
                 store: PatternStore):
        self.A, self.V, self.U, self.l = A, V, U, l
        self.n = l.shape[0]
        self.ldl = l.new_zeros(A, self.n)
        self.s_by_k: dict[int, torch.Tensor] = {}      # k -> (A, k) values of slots with length k
        self.patterns = SlotPatterns(A, store)
        self.target_slots: set[int] = set()
        self.merged: dict[int, torch.Tensor] = {}
        self._mixed: dict[frozenset, tuple] = {}       # cached padded tables of mixed batches

    def set_slot(self, slot: int, values: SlotValues) -> None:
        """Write one adapter's values and pattern into ``slot``."""
        if not 0 <= slot < self.A:
            raise IndexError(f"slot {slot} out of range [0, {self.A})")
        k = values.pattern.k
        if tuple(values.dl.shape) != (self.n,) or tuple(values.s.shape) != (k,):
            raise ValueError(f"slot values: expected dl ({self.n},) and s ({k},), got "
                             f"{tuple(values.dl.shape)} and {tuple(values.s.shape)}")
        old = self.patterns.of_slot[slot]
        p = self.patterns.set(slot, values.pattern)    # a pattern kept by the slot stays put
        self.merged.pop(slot, None)
        self._mixed.clear()
        if old is not None and old.k != k:
            self._drop_values(slot, old.k)
        dev, dt = self.l.device, self.l.dtype
        self.ldl[slot] = (self.l.double() + values.dl.to(dev, torch.float64)).to(dt)
        table = self.s_by_k.get(k)
        if table is None:
            table = self.s_by_k[k] = self.l.new_zeros(self.A, k)
        table[slot] = values.s.to(dev, dt)
        if values.merge:
            self.merged[slot] = adapted_weight(self.U, self.l, self.V, values.dl.to(dev),
                                               values.s.to(dev), p.rows, p.cols, dtype=dt,
                                               compute=torch.float64).contiguous()
        self.target_slots.add(slot)

    def reset_slot(self, slot: int) -> None:
        """Empty ``slot`` (no-op when it is empty); tables of a length no slot uses any more
        and patterns no slot uses are released."""
        p = self.patterns.of_slot[slot]
        self.target_slots.discard(slot)
        self.merged.pop(slot, None)
        self._mixed.clear()
        if p is None:
            return
        self.ldl[slot].zero_()
        self.patterns.clear(slot)
        self._drop_values(slot, p.k)

    def _drop_values(self, slot: int, k: int) -> None:
        """Zero ``slot``'s row of the length-``k`` table, or drop the table when no slot has a
        pattern of length ``k`` any more."""
        if any(q is not None and q.k == k for q in self.patterns.of_slot):
            self.s_by_k[k][slot].zero_()
        else:
            del self.s_by_k[k]

    def rotation_args(self, slots) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor]:
        """(dl, s, rows, cols) for ``rotate_segments`` over rows of ``slots`` (slot indices
        used as adapter ids). When the slots share one pattern (whatever other slots hold):
        that (k,) pattern with its (A, k) values. Otherwise per-slot (A, kmax) patterns and
        values, the shorter ones padded with (0, 1) entries of value 0 (cached until a slot
        changes)."""
        p = self.patterns.shared(slots)
        if p is not None:
            return self.ldl, self.s_by_k[p.k], p.rows, p.cols
        key = frozenset(slots)
        hit = self._mixed.get(key)
        if hit is None:
            kmax = max(self.patterns.of_slot[a].k for a in key)
            dev = self.l.device
            rows = torch.full((self.A, kmax), _PAD[0], dtype=torch.int32, device=dev)
            cols = torch.full((self.A, kmax), _PAD[1], dtype=torch.int32, device=dev)
            s = self.l.new_zeros(self.A, kmax)
            for a in key:
                q = self.patterns.of_slot[a]
                rows[a, :q.k] = q.rows
                cols[a, :q.k] = q.cols
                s[a, :q.k] = self.s_by_k[q.k][a]
            if len(self._mixed) >= 32:      # bounded: slot sets seen since the last change
                self._mixed.clear()
            hit = self._mixed[key] = (s, rows, cols)
        return (self.ldl, *hit)
