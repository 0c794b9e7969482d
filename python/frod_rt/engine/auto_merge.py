"""Automatic merged serving of a dominant adapter (dLoRA's idea, issue 13).

When one adapter slot holds at least ``share`` of the rows fed over the last ``window`` steps,
its adapted weight ``W' = U (diag(l + dl) + S) V^T`` is materialised in every layer it targets
(within ``budget_bytes``) and its rows run one GEMM ``x W'^T`` instead of the replace form's two
(``(x V)`` then ``H U^T``). When its share falls below ``share / 2`` (or it leaves its slot)
the merged weights are dropped.

Batch invariance: a merged row rounds differently from the replace form (~1e-7 relative in
float32), and *when* an adapter is merged depends on the traffic, so with automatic merging a
request's logits can differ in the last bits between runs (greedy tokens can flip on exact
ties). ``Engine.load(auto_merge=False)`` (the default) keeps exact invariance: every row's form
is then a function of its own adapter only (DESIGN.md 2).
"""
from __future__ import annotations

from collections import Counter, deque

import torch

from ..method.delta import compute_dtype


def merged_weight(st, slot: int) -> torch.Tensor:
    """``W' = U (diag(l + dl) + S) V^T`` (out, n) of ``slot`` of a layer's SlotTables, in the
    slot's basis: ``SlotTables.merged_weight`` (:func:`frod_rt.method.delta.adapted_weight`),
    computed in float64 for float64 tables, else float32; returned in the tables' dtype."""
    return st.merged_weight(slot, compute=compute_dtype(st.l.dtype))


class AutoMerger:
    """Watches the rows per slot of each step and merges/unmerges the dominant slot.

    Args:
        layers: the model's AdaptedLinear layers (their ``slots`` tables).
        window: steps over which row shares are counted.
        share: merge a slot holding at least this fraction of the window's rows.
        budget_bytes: most bytes of merged weights at once (over all layers and slots).
    """

    def __init__(self, layers, window: int = 8, share: float = 0.5,
                 budget_bytes: int | None = None):
        if window < 1 or not 0.0 < share <= 1.0:
            raise ValueError(f"auto merge: window must be >= 1 and share in (0, 1], got "
                             f"{window}, {share}")
        self.layers = list(layers)
        self.window, self.share = window, share
        if budget_bytes is None:      # one full copy of the adapted weights
            budget_bytes = sum(m.weight.numel() * m.weight.element_size() for m in self.layers)
        self.budget = int(budget_bytes)
        self.hist: deque[tuple[Counter, int]] = deque()
        self.counts: Counter = Counter()
        self.total = 0
        self.merged: dict[int, int] = {}          # slot -> bytes held
        self.merges_total = 0
        self.unmerges_total = 0

    def _bytes(self, slot: int) -> int:
        return sum(m.weight.numel() * m.weight.element_size() for m in self.layers
                   if m.slots is not None and slot in m.slots.target_slots)

    def _drop(self, slot: int) -> None:
        for m in self.layers:
            if m.slots is not None:
                m.slots.merged.pop(slot, None)
        self.merged.pop(slot, None)
        self.unmerges_total += 1

    def _merge(self, slot: int) -> None:
        for m in self.layers:
            st = m.slots
            if st is not None and slot in st.target_slots and slot not in st.merged:
                st.merged[slot] = merged_weight(st, slot)
        self.merged[slot] = self._bytes(slot)
        self.merges_total += 1

    def observe(self, row_slots: list[int]) -> None:
        """Account one step's rows (slot per row, -1 = base) and merge/unmerge before it runs."""
        c = Counter(row_slots)
        self.hist.append((c, len(row_slots)))
        self.counts.update(c)
        self.total += len(row_slots)
        while len(self.hist) > self.window:
            old, n = self.hist.popleft()
            self.counts.subtract(old)
            self.total -= n
        for slot in list(self.merged):    # the slot was refilled or emptied meanwhile
            if not any(m.slots is not None and slot in m.slots.merged for m in self.layers):
                self.merged.pop(slot)
        if self.total == 0:
            return
        for slot in list(self.merged):
            if self.counts[slot] < 0.5 * self.share * self.total:
                self._drop(slot)
        for slot, rows in self.counts.most_common(2):
            if slot < 0 or slot in self.merged or rows < self.share * self.total:
                continue
            if any(m.slots is not None and slot in m.slots.merged for m in self.layers):
                continue                  # merged already by merge_hot (static, never dropped here)
            need = self._bytes(slot)
            if need and sum(self.merged.values()) + need <= self.budget:
                self._merge(slot)
