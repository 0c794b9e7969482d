"""State shared by every FRoD layer of one model: category bases V, sparse patterns, the
active adapter and the per-row routing of the current forward call.

Registered once on the FrodModel (so ``.to(device)`` moves it once); layers keep a plain
reference and look tensors up by name at forward time.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from .. import ops
from .config import BASE
from .patterns import LayerPattern


class Routing:
    """Per-batch-row adapter names for one forward call (None = base), with cached ids."""

    def __init__(self, names: list[str | None]):
        self.names = [None if (n is None or n == BASE) else n for n in names]
        self._cache: dict = {}

    def ids_for(self, adapters: tuple[str, ...], device) -> tuple[torch.Tensor, list[str]]:
        """(per-batch-row index into ``used`` or -1, ``used`` = adapters that occur, in order
        of first occurrence) restricted to ``adapters`` (the ones a layer holds)."""
        key = (adapters, str(device))
        hit = self._cache.get(key)
        if hit is None:
            present = set(adapters)
            used: list[str] = []
            ids = []
            for n in self.names:
                if n is None or n not in present:
                    ids.append(-1)
                    continue
                if n not in used:
                    used.append(n)
                ids.append(used.index(n))
            hit = (torch.tensor(ids, dtype=torch.int32, device=device), used)
            self._cache[key] = hit
        return hit


    def segments_for(self, adapters: tuple[str, ...], device, per: int
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(seg_indptr, seg_adapter, used) for a layer input with ``per`` rows per batch row,
        cached: layers holding the same adapters share them within one forward call."""
        key = ("seg", adapters, str(device), per)
        hit = self._cache.get(key)
        if hit is None:
            batch_ids, used = self.ids_for(adapters, device)
            ids = batch_ids if per == 1 else torch.repeat_interleave(batch_ids, per)
            hit = (*ops.segments_from_ids(ids, max(1, len(used))), used)
            self._cache[key] = hit
        return hit

    def all_rows_one_adapter(self, adapters: tuple[str, ...], device) -> bool:
        batch_ids, used = self.ids_for(adapters, device)
        key = ("one", adapters, str(device))
        if key not in self._cache:
            self._cache[key] = len(used) == 1 and bool((batch_ids == 0).all())
        return self._cache[key]


class FrodState(nn.Module):
    """Holds the V of each category (buffer ``V_<i>``) and the shared patterns (buffers
    ``P_<j>_rows`` / ``P_<j>_cols``), all non-persistent (they derive from the base)."""

    def __init__(self):
        super().__init__()
        self._v_names: dict[str, str] = {}
        self._p_names: dict[tuple, str] = {}
        self.active: str | None = None
        self.disabled = False
        self.routing: Routing | None = None
        self._xv: tuple | None = None       # see xv()
        self.share_xv = False               # set by FrodModel for the duration of a call

    def add_category(self, key: str, V: torch.Tensor) -> None:
        name = f"V_{len(self._v_names)}"
        self.register_buffer(name, V, persistent=False)
        self._v_names[key] = name

    def V(self, key: str) -> torch.Tensor:
        return getattr(self, self._v_names[key])

    def shared_pattern(self, pattern: LayerPattern) -> str:
        """Name of the buffer pair holding ``pattern`` (one per content key), registered on
        first use."""
        name = self._p_names.get(pattern.key)
        if name is None:
            name = f"P_{len(self._p_names)}"
            dev = next((b.device for b in self.buffers()), torch.device("cpu"))
            self.register_buffer(name + "_rows", pattern.rows.to(dev, copy=True), persistent=False)
            self.register_buffer(name + "_cols", pattern.cols.to(dev, copy=True), persistent=False)
            self._p_names[pattern.key] = name
        return name

    def pattern(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, name + "_rows"), getattr(self, name + "_cols")

    def xv(self, x: torch.Tensor, x2: torch.Tensor, V: torch.Tensor,
           dtype: torch.dtype) -> torch.Tensor:
        """``Z = x2 @ V.to(dtype)`` (x2: x as (T, n)), computed once for layers that read the
        same input ``x`` through the same basis ``V``: the roles of a shared-input category
        (q, k, v; gate, up) called one after the other on one tensor. Inside a
        ``FrodModel`` call (``share_xv``, also restored for checkpoint recomputation) with
        gradients enabled, the last result is kept and reused when the next call passes the
        same ``x`` object, unmodified (``_version``), the same ``V`` and dtype; autograd then
        sums the roles' gradients into one ``Z``, so the backward also runs one ``dZ V^T``.
        The memo is dropped when the call ends."""
        if not (self.share_xv and torch.is_grad_enabled()):
            return x2 @ V.to(dtype)
        m = self._xv
        if m is not None and m[0]() is x and m[1] == x._version and m[2] is V and m[3] == dtype:
            return m[4]
        z = x2 @ V.to(dtype)
        self._xv = (weakref.ref(x), x._version, V, dtype, z)
        return z

    def clear_xv(self) -> None:
        """Drop the kept ``X V`` (end of a forward call)."""
        self._xv = None

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_xv"] = None                # a weakref does not pickle; the memo is per call
        return state
