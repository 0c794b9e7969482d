"""Adapter pools: registry, host (CPU) pool, device pool with slots, background loading.

* Registry: every adapter added by name (its directory). ``add`` reads and validates the
  file synchronously (``read_adapter`` + ``check_against`` the base decomposition), so a bad
  adapter is refused with a clear ``AdapterError`` and nothing already loaded changes.
* Host pool: parsed adapter files on the CPU, LRU, ``host_capacity`` entries. An adapter
  evicted from it is re-read from disk by a background thread when a request needs it.
* Device pool: ``device_capacity`` slots. Per adapted layer the tables ``ldl`` (A_slots, n)
  = l + dl, ``s`` (A_slots, k) and the patterns (A_slots, k) are allocated once (``k`` grows
  only when an adapter with a longer pattern arrives); a batch indexes slots. A slot is pinned
  while a running request uses it; unpinned slots are evicted LRU.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .errors import UnknownAdapterError
from .scheduler import AdapterUnavailable

_PAD = (0, 1)   # an off-diagonal (row, col) used to pad patterns; its value is always 0


class _Entry:
    """One registered adapter."""

    def __init__(self, name: str, path: Path, file):
        self.name = name
        self.path = path
        self.file = file               # AdapterFile while in the host pool, else None
        self.layers = sorted(file.layers)
        self.slot = -1
        self.pins = 0
        self.removed = False
        self.loading = None            # Future while re-read from disk
        self.error: str | None = None  # set when a background re-read failed


class LayerTables:
    """Device tables of one adapted layer: the base basis and the per-slot values.

    V (n, n) of the layer's category, U (out, n), l (n,); ``ldl`` (A, n) holds l + dl per
    slot, ``s`` (A, kcap) the sparse values (zero-padded), ``rows_slots``/``cols_slots``
    (A, kcap) int32 each slot's pattern (padded with (0, 1) entries whose value is 0);
    ``target_slots`` the slots whose adapter targets this layer; ``merged`` the W' of hot
    adapters' slots. ``kcap`` only grows when an adapter with a longer pattern arrives.
    """

    def __init__(self, name: str, category: str, V, U, l, A: int, shared: dict):
        self.name, self.category, self.V, self.U, self.l = name, category, V, U, l
        self.A, self.n, self.kcap = A, l.shape[0], 1
        dev = l.device
        self.ldl = l.new_zeros(A, self.n)
        self.s = l.new_zeros(A, 1)
        self.rows_slots = torch.full((A, 1), _PAD[0], dtype=torch.int32, device=dev)
        self.cols_slots = torch.full((A, 1), _PAD[1], dtype=torch.int32, device=dev)
        self.slot_key: list = [None] * A
        self.shared = shared                   # pattern key -> (rows, cols) (k,), manager-wide
        self.target_slots: set[int] = set()
        self.merged: dict[int, torch.Tensor] = {}

    def _grow(self, k: int) -> None:
        if k <= self.kcap:
            return
        pad = k - self.kcap
        full = lambda v: torch.full((self.A, pad), v, dtype=torch.int32,  # noqa: E731
                                    device=self.l.device)
        self.rows_slots = torch.cat([self.rows_slots, full(_PAD[0])], 1)
        self.cols_slots = torch.cat([self.cols_slots, full(_PAD[1])], 1)
        self.s = torch.cat([self.s, self.s.new_zeros(self.A, pad)], 1)
        self.kcap = k

    def set_slot(self, a: int, key, rows: torch.Tensor, cols: torch.Tensor, ldl: torch.Tensor,
                 s: torch.Tensor) -> None:
        """Write one adapter's values and pattern into slot ``a``."""
        k = rows.shape[0]
        self._grow(k)
        dev = self.l.device
        self.rows_slots[a].fill_(_PAD[0])
        self.cols_slots[a].fill_(_PAD[1])
        self.rows_slots[a, :k] = rows.to(dev)
        self.cols_slots[a, :k] = cols.to(dev)
        self.ldl[a] = ldl
        self.s[a].zero_()
        self.s[a, :k] = s
        self.slot_key[a] = (key, k)
        if (key, k) not in self.shared:
            self.shared[(key, k)] = (rows.to(dev, torch.int32).contiguous(),
                                     cols.to(dev, torch.int32).contiguous())

    def pattern(self, slots) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) for a rotate_segments call over ``slots``: the shared (k,) pattern
        when all of them use one of length kcap, else the per-slot (A, kcap) tables."""
        keys = {self.slot_key[a] for a in slots}
        if len(keys) == 1:
            key = next(iter(keys))
            if key[1] == self.kcap:
                return self.shared[key]
        return self.rows_slots, self.cols_slots


class AdapterManager:
    """Registry + host pool + device pool (see module docstring).

    Args:
        model: the loaded HF base model (for the decomposition).
        device, dtype: where and in which dtype the tables live.
        device_capacity: adapter slots on the device (A_slots).
        host_capacity: parsed adapters kept on the CPU.
        cache_dir: decomposition cache (None: the method's default).
    """

    def __init__(self, model, device, dtype, device_capacity: int = 16,
                 host_capacity: int = 64, cache_dir=None, progress: bool = False,
                 merge_hot=()):
        if device_capacity < 1:
            raise ValueError(f"device_adapter_capacity: expected >= 1, got {device_capacity}")
        if host_capacity < 1:
            raise ValueError(f"host_adapter_capacity: expected >= 1, got {host_capacity}")
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.A = device_capacity
        self.host_capacity = host_capacity
        self.cache_dir = cache_dir
        self.progress = progress
        if isinstance(merge_hot, str):
            merge_hot = [merge_hot]
        self.hot: set[str] = set(merge_hot or ())
        self.lock = threading.RLock()          # registry, pools, slot tables
        self._add_lock = threading.Lock()       # one add() at a time (may decompose)
        self.entries: dict[str, _Entry] = {}
        self.host_lru: OrderedDict[str, None] = OrderedDict()
        self.slot_entry: list[_Entry | None] = [None] * self.A
        self.device_lru: OrderedDict[int, None] = OrderedDict()   # unpinned resident slots
        self.decomposition = None          # on CPU, float64-free: model dtype
        self.targets: list[str] = []
        self.tables: dict[str, LayerTables] = {}
        self._patterns: dict = {}          # pattern key -> (rows, cols) on the device
        self._V: dict[str, torch.Tensor] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frod-adapter-load")
        self.evictions_total = 0
        self.host_evictions_total = 0
        self.loads_total = 0             # host -> device copies
        self.disk_reads_total = 0
        self.heads: dict = {}      # name -> models.layers.AdapterHead (set by the engine)

    # ---- registry --------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self.lock:
            return sorted(self.entries)

    def __contains__(self, name) -> bool:
        return name in self.entries

    def _decomposition_for(self, file):
        """The base decomposition covering ``file``'s layers. When a new adapter targets
        layers not decomposed yet, the base is decomposed again over the union of the layer
        names (cached on disk per category, so categories already served are unchanged)."""
        import math

        from ..method.decompose import decompose
        d = self.decomposition
        if d is not None and (all(n in d.layers for n in file.layers)
                              or not math.isclose(d.alpha, file.config.alpha, rel_tol=1e-12)):
            return d                      # covered, or check_against reports the alpha clash
        names = set(d.layers) if d is not None else set()
        for c in file.config.categories.values():
            names.update(c["layers"])
        return decompose(self.model, sorted(names), alpha=file.config.alpha,
                         cache_dir=self.cache_dir, progress=self.progress)

    def _read(self, name: str, path: Path):
        from ..method.adapter_io import check_against, read_adapter
        f = read_adapter(path, name=name)
        self._check_heads(f)
        d = self._decomposition_for(f)     # outside the lock: may decompose (slow, cached)
        check_against(f, d)
        return f, d

    def _check_heads(self, f) -> None:
        """An adapter's ``modules_to_save`` must be heads this model serves, same shapes."""
        from ..method.adapter_io import AdapterError
        for mname, sd in f.modules.items():
            if mname not in self.heads:
                raise AdapterError(f"adapter {f.name!r}: carries module {mname!r}; this engine "
                                   f"serves trained heads {sorted(self.heads)} only")
            own = self.heads[mname].expected()
            got = {k: tuple(t.shape) for k, t in sd.items()}
            if own != got:
                raise AdapterError(f"adapter {f.name!r}: head {mname!r} has tensors {got}, the "
                                   f"model's are {own}")



    def add(self, name: str, path) -> None:
        """Register adapter ``name`` from directory ``path`` (read + validated now)."""
        from ..method.adapter_io import AdapterError
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"adapter name: expected a non-empty string without '/', got {name!r}")
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"adapter {name!r}: directory not found: {p}")
        with self.lock:
            if name in self.entries:
                raise ValueError(f"adapter {name!r} is already loaded; remove it first")
        with self._add_lock:
            try:
                f, d = self._read(name, p)
            except AdapterError as e:
                raise type(e)(f"adapter {name!r} ({p}) refused: {e}") from e
            self._register(name, p, f, d)

    def _register(self, name: str, p: Path, f, d) -> None:
        with self.lock:
            if name in self.entries:
                raise ValueError(f"adapter {name!r} is already loaded; remove it first")
            if d is not self.decomposition:
                self._adopt(d)
            e = _Entry(name, p, f)
            self.entries[name] = e
            self._host_insert(e)

    def remove(self, name: str) -> None:
        """Unregister ``name``. Requests already running with it finish; queued ones abort."""
        with self.lock:
            e = self.entries.pop(name, None)
            if e is None:
                raise UnknownAdapterError(name, self.entries)
            e.removed = True
            self.host_lru.pop(name, None)
            e.file = None
            if e.slot >= 0 and e.pins == 0:
                self._free_slot(e.slot)

    def _adopt(self, d) -> None:
        """Switch to a decomposition covering more layers; bases of layers already served must
        be identical (they are: a category's basis depends only on its own weights)."""
        for name, lt in self.tables.items():
            lb = d.layers.get(name)
            if lb is None or not torch.equal(lb.U.to(self.device, self.dtype), lt.U):
                raise ValueError(f"layer {name}: the new base decomposition does not match the "
                                 "one in use; cannot serve both adapters")
        self.decomposition = d
        self.targets = list(d.target_modules)

    # ---- host pool ---------------------------------------------------------------------------
    def _host_insert(self, e: _Entry) -> None:
        self.host_lru[e.name] = None
        self.host_lru.move_to_end(e.name)
        while len(self.host_lru) > self.host_capacity:
            victim, _ = self.host_lru.popitem(last=False)
            ve = self.entries.get(victim)
            if ve is not None:
                ve.file = None
                self.host_evictions_total += 1

    def prefetch(self, name: str | None) -> None:
        """Make sure ``name`` is (being) read into the host pool, off the hot path."""
        if name is None:
            return
        with self.lock:
            e = self.entries.get(name)
            if e is None or e.file is not None or e.slot >= 0 or e.loading is not None:
                return
            e.error = None
            e.loading = self._loader.submit(self._background_read, e)

    def _background_read(self, e: _Entry) -> None:
        try:
            f, _ = self._read(e.name, e.path)
            err = None
        except Exception as exc:       # noqa: BLE001 - reported to the waiting requests
            f, err = None, f"adapter {e.name!r} could not be re-read from {e.path}: {exc}"
        with self.lock:
            e.loading = None
            self.disk_reads_total += 1
            if e.removed:
                return
            if err is not None:
                e.error = err
                return
            e.file = f
            self._host_insert(e)

    # ---- device pool -----------------------------------------------------------------------
    def acquire(self, name: str | None) -> int | None:
        """Pin ``name`` on the device for a request. Returns its slot (-1 for the base model),
        None when it is not ready yet (loading, or every slot pinned); raises
        AdapterUnavailable when it never will be (removed, or its file went bad)."""
        if name is None:
            return -1
        with self.lock:
            e = self.entries.get(name)
            if e is None:
                raise AdapterUnavailable(f"adapter {name!r} was removed")
            if e.slot >= 0:
                if e.pins == 0:
                    self.device_lru.pop(e.slot, None)
                e.pins += 1
                return e.slot
            if e.error is not None:
                err = e.error
                e.error = None          # a later request may retry the read
                raise AdapterUnavailable(err)
            if e.file is None:
                self.prefetch(name)
                return None
            slot = self._free_slot_index()
            if slot is None:
                return None
            self._fill(slot, e)
            e.slot = slot
            e.pins = 1
            self.slot_entry[slot] = e
            self.host_lru.move_to_end(name)
            return slot

    def release(self, slot: int) -> None:
        """Unpin a slot acquired by a request that finished or was preempted."""
        if slot < 0:
            return
        with self.lock:
            e = self.slot_entry[slot]
            if e is None:
                return
            e.pins -= 1
            if e.pins == 0:
                if e.removed:
                    self._free_slot(slot)
                else:
                    self.device_lru[slot] = None

    def _free_slot_index(self) -> int | None:
        for a in range(self.A):
            if self.slot_entry[a] is None:
                return a
        if not self.device_lru:
            return None
        a, _ = self.device_lru.popitem(last=False)
        self._free_slot(a)
        self.evictions_total += 1
        return a

    def _free_slot(self, a: int) -> None:
        e = self.slot_entry[a]
        if e is None:
            return
        for name in e.layers:
            lt = self.tables.get(name)
            if lt is not None:
                lt.target_slots.discard(a)
                lt.merged.pop(a, None)
        self.device_lru.pop(a, None)
        e.slot = -1
        self.slot_entry[a] = None
        for head in self.heads.values():
            head.reset_slot(a)

    def _layer_tables(self, name: str) -> LayerTables:
        lt = self.tables.get(name)
        if lt is not None:
            return lt
        d = self.decomposition
        lb = d.layers[name]
        cat = d.categories[lb.category]
        V = self._V.get(cat.key)
        if V is None:
            V = cat.V.to(self.device, self.dtype).contiguous()
            self._V[cat.key] = V
        lt = LayerTables(name, cat.key, V, lb.U.to(self.device, self.dtype).contiguous(),
                         lb.l.to(self.device, self.dtype), self.A, self._patterns)
        self.tables[name] = lt
        return lt

    def _fill(self, a: int, e: _Entry) -> None:
        """Copy adapter ``e`` into slot ``a`` of every layer table it targets."""
        from ..method.config import pattern_seed_string
        from ..method.patterns import sparse_pattern
        f = e.file
        for name in e.layers:
            delta = f.layers[name]
            lt = self._layer_tables(name)
            k = int(delta.s.shape[0])
            if delta.rows is not None:           # the file's own pattern (imported adapters)
                key = ("own", e.name, id(f), name)
                rows, cols = delta.rows, delta.cols
            else:                                # the base's default pattern of the category
                seed_key = pattern_seed_string(self.decomposition.pattern_seed_key(lt.category),
                                               f.config.seed)
                key = ("std", seed_key, lt.category)
                cached = self._patterns.get((key, k))
                rows, cols = cached if cached is not None else \
                    sparse_pattern(seed_key, lt.category, lt.n, k)
            ldl = (lt.l.double() + delta.dl.double().to(self.device)).to(self.dtype)
            lt.set_slot(a, key, rows.to(torch.int32), cols.to(torch.int32), ldl,
                        delta.s.to(self.device, self.dtype))
            lt.target_slots.add(a)
            if e.name in self.hot:
                lt.merged[a] = self._merge(lt, a, k)
        for hname, head in self.heads.items():       # modules_to_save copies
            if hname in f.modules:
                head.set_slot(a, f.modules[hname])
            else:
                head.reset_slot(a)
        self.loads_total += 1

    def _merge(self, lt: LayerTables, a: int, k: int) -> torch.Tensor:
        """W' = U (diag(l + dl) + S) V^T of slot ``a`` in float64, stored in the model dtype."""
        M = torch.diag(lt.ldl[a].double())
        rows, cols = lt.rows_slots[a, :k].long(), lt.cols_slots[a, :k].long()
        M.index_put_((rows, cols), lt.s[a, :k].double(), accumulate=True)
        return (lt.U.double() @ M @ lt.V.double().T).to(self.dtype).contiguous()

    def layer_tables(self, name: str) -> LayerTables | None:
        """Tables of layer ``name``, or None when no adapter ever targeted it."""
        return self.tables.get(name)

    def ensure_host(self, name: str, timeout: float | None = None) -> None:
        """Block until ``name`` is in the host pool (used by embed/classify)."""
        self.prefetch(name)
        with self.lock:
            e = self.entries.get(name)
            fut = e.loading if e is not None else None
        if fut is not None:
            fut.result(timeout)

    def stats(self) -> dict:
        with self.lock:
            return {
                "adapters_loaded": len(self.entries),
                "adapters_on_device": sum(1 for x in self.slot_entry if x is not None),
                "adapters_on_host": sum(1 for e in self.entries.values() if e.file is not None),
                "adapters_pinned": sum(1 for x in self.slot_entry if x is not None and x.pins),
                "adapter_slots": self.A,
                "adapter_evictions_total": self.evictions_total,
                "adapter_host_evictions_total": self.host_evictions_total,
                "adapter_device_loads_total": self.loads_total,
                "adapter_disk_reads_total": self.disk_reads_total,
            }

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
