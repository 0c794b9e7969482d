"""Adapter manager: the registry of adapter instances and the two LRU tiers (host, device).

* Registry: every adapter added by name (its directory). ``add`` reads and validates the
  file synchronously (``read_adapter`` + ``check_against`` the base decomposition), so a bad
  adapter is refused with a clear ``AdapterError`` and nothing already loaded changes. Each
  add creates a new :class:`AdapterInstance`; requests bind to the instance (``bind``), not
  the name, so removing and re-adding a name never changes what an earlier request computes.
* Host tier: parsed adapter files on the CPU, LRU, ``host_capacity`` entries. An adapter
  evicted from it is re-read from disk by a background thread when a request needs it.
* Device tier: ``device_capacity`` slots. The adapted layers own their slot tables
  (``AdaptedLinear.set_slot`` / ``reset_slot``, see ``models/slots.py``); the manager only
  decides which instance sits in which slot and calls those two methods. A slot is pinned
  while a running request uses it; unpinned slots are evicted LRU.
* Bases: adapters trained on frod_rt's own decomposition of the base share its basis; an
  adapter whose category fingerprints do not match it is served on its own basis of the same
  base model — the decomposition saved next to it (``<adapter>/decomposition/``, written by
  ``frod-rt import`` / PEFT imports on load; checked to reconstruct the base's weights), or
  PEFT's basis (``decompose(..., basis="peft")``). Each layer holds every basis in use
  (``AdaptedLinear.add_basis``) and computes one group per basis in a step. The native
  decomposition has the category mode of the first adapter; an adapter of the other mode
  (per-role next to shared-input, e.g. a PEFT import next to new frod_rt adapters) is served
  on its own decomposition of the same base in its mode, as one more basis.
* ``remove`` unregisters the name at once. Requests that have not started yet end with
  "adapter ... was removed" when the scheduler next looks at them; requests that have started
  (running, or preempted and waiting to be recomputed) keep computing with their instance:
  a removed instance keeps its device slot and parsed file (neither is evicted any more)
  until its last bound request ends. It is never re-read from disk (the directory may hold
  the new version): if it was already out of memory when removed, a preempted request ends
  with the same error.
* Virtual instances (``virtual``): an in-memory file under no registered name, e.g. a blend
  of adapters (``engine/blends.py``); bound by instance, never evicted from the host tier,
  ended with ``retire``.
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..method.categories import decomposition_category_mode
from ..method.fingerprint import NATIVE_BASIS
from ..method.patterns import delta_pattern
from .errors import UnknownAdapterError
from .models.slots import PatternStore, SlotValues
from .scheduler import AdapterUnavailable

_instance_ids = itertools.count(1)


def _file_layers(file) -> set[str]:
    """Every layer an adapter file's categories name."""
    names: set[str] = set()
    for c in file.config.categories.values():
        names.update(c["layers"])
    return names


class AdapterInstance:
    """One registered version of an adapter (a new one at each ``add``)."""

    def __init__(self, name: str, path: Path, file, patterns: dict):
        self.id = next(_instance_ids)
        self.name = name
        self.path = path
        self.file = file               # AdapterFile while in the host tier, else None
        self.patterns = patterns       # layer -> LayerPattern, with ``file``
        self.layers = sorted(file.layers)
        self.decomposition = None      # the decomposition (basis) its values are expressed in
        self.slot = -1
        self.pins = 0                  # running requests (and encoder calls) using the slot
        self.requests = 0              # unfinished requests bound to this instance
        self.removed = False
        self.loading = None            # Future while re-read from disk
        self.error: str | None = None  # set when a background re-read failed

    def __repr__(self) -> str:
        return (f"AdapterInstance({self.name!r}, id={self.id}, slot={self.slot}, "
                f"removed={self.removed})")


class AdapterManager:
    """Registry + host tier + device tier (see module docstring).

    Args:
        model: the loaded HF base model (for the decomposition).
        layers: the engine's adapted layers by HF module name (``AdaptedLinear``); the
            manager writes adapters into their slots through ``set_slot`` / ``reset_slot``.
        device, dtype: where and in which dtype the slot tables live.
        device_capacity: adapter slots on the device (A_slots).
        host_capacity: parsed adapters kept on the CPU.
        cache_dir: decomposition cache (None: the method's default).
        merge_hot: adapter names whose slots also keep a merged weight (opt-in).
    """

    def __init__(self, model, layers: dict, device, dtype, device_capacity: int = 16,
                 host_capacity: int = 64, cache_dir=None, progress: bool = False,
                 merge_hot=()):
        if device_capacity < 1:
            raise ValueError(f"device_adapter_capacity: expected >= 1, got {device_capacity}")
        if host_capacity < 1:
            raise ValueError(f"host_adapter_capacity: expected >= 1, got {host_capacity}")
        self.model = model
        self.layers = dict(layers)
        self.device = torch.device(device)
        self.dtype = dtype
        self.A = device_capacity
        self.host_capacity = host_capacity
        self.cache_dir = cache_dir
        self.progress = progress
        if isinstance(merge_hot, str):
            merge_hot = [merge_hot]
        self.hot: set[str] = set(merge_hot or ())
        self.lock = threading.RLock()          # registry and tiers
        self._add_lock = threading.Lock()       # one add() at a time (may decompose)
        self.entries: dict[str, AdapterInstance] = {}      # current instance of each name
        self.host_lru: OrderedDict[AdapterInstance, None] = OrderedDict()
        self.slot_entry: list[AdapterInstance | None] = [None] * self.A
        self.device_lru: OrderedDict[int, None] = OrderedDict()   # unpinned resident slots
        self.decomposition = None          # on CPU, in the model dtype
        self.targets: list[str] = []
        self.patterns = PatternStore(self.device)     # device patterns, keyed by content
        self._V: dict[str, torch.Tensor] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frod-adapter-load")
        self.evictions_total = 0
        self.host_evictions_total = 0
        self.loads_total = 0             # host -> device copies
        self.disk_reads_total = 0
        self.heads: dict = {}      # name -> models.layers.AdapterHead (set by the engine)
        self._other_modes: dict = {}   # (category mode, layers, alpha) -> decomposition

    # ---- registry --------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self.lock:
            return sorted(self.entries)

    def __contains__(self, name) -> bool:
        return name in self.entries

    def bind(self, name: str | AdapterInstance | None) -> AdapterInstance | None:
        """The current instance of ``name`` (None for the base model; an instance itself for
        a virtual one), counted as used by one more request until :meth:`unbind`. Raises
        UnknownAdapterError."""
        if name is None:
            return None
        with self.lock:
            if isinstance(name, AdapterInstance):
                name.requests += 1
                return name
            e = self.entries.get(name)
            if e is None:
                raise UnknownAdapterError(name, self.entries)
            e.requests += 1
            return e

    def unbind(self, e: AdapterInstance | None) -> None:
        """A request bound by :meth:`bind` has ended."""
        if e is None:
            return
        with self.lock:
            e.requests -= 1
            self._drop_if_unused(e)

    def _decomposition_for(self, file):
        """The base decomposition covering ``file``'s layers. When a new adapter targets
        layers not decomposed yet, the base is decomposed again over the union of the layer
        names (cached on disk per category, so categories already served are unchanged)."""
        import math
        d = self.decomposition
        mode = decomposition_category_mode(file.config.categories)
        if d is not None and decomposition_category_mode(d.categories) != mode:
            return self._other_mode(file, mode)
        if d is not None and (all(n in d.layers for n in file.layers)
                              or not math.isclose(d.alpha, file.config.alpha, rel_tol=1e-12)):
            return d                      # covered, or check_against reports the alpha clash
        return self._decompose(file, mode, set(d.layers) if d is not None else set())

    def _other_mode(self, file, mode: str):
        """The decomposition of ``file``'s layers in the category mode ``mode``, which is not
        the engine's (per-role next to shared-input or the reverse): served as a basis of its
        own beside the native one, never adopted as native. One per (mode, layers, alpha),
        kept for the engine's life (decompositions are cached on disk per category too)."""
        key = (mode, tuple(sorted(_file_layers(file))), float(file.config.alpha))
        d = self._other_modes.get(key)
        if d is None:
            d = self._other_modes[key] = self._decompose(file, mode, set())
        return d

    def _decompose(self, file, mode: str, layers: set[str]):
        """The base decomposed over ``layers`` and every layer ``file``'s categories name, in
        the category mode ``mode`` (cached on disk per category)."""
        from ..method.decompose import decompose
        names = sorted(layers | _file_layers(file))
        return decompose(self.model, names, alpha=file.config.alpha, cache_dir=self.cache_dir,
                         progress=self.progress, category_mode=mode)

    def _basis_for(self, file, path: Path):
        """The decomposition ``file`` fits: frod_rt's own (``_decomposition_for``), else the one
        saved with the adapter (``path/decomposition``), else PEFT's basis; raises the
        AdapterError of frod_rt's basis when none fits."""
        from ..method.adapter_io import AdapterError, check_against
        from ..method.decompose import decompose
        from .adapter_sources import saved_basis
        d = self._decomposition_for(file)
        try:
            check_against(file, d)
            return d
        except AdapterError as native_error:
            first = native_error
        names = sorted(file.layers)
        for make in (lambda: saved_basis(path, self.model),
                     lambda: decompose(self.model, names, alpha=file.config.alpha, basis="peft",
                                       cache_dir=self.cache_dir, progress=False)):
            other = make()
            if other is None:
                continue
            try:
                check_against(file, other)
                return other
            except AdapterError:
                continue
        raise first

    def _read(self, name: str, path: Path, file=None):
        """Read (unless ``file``, already parsed from ``path``, is given) and validate
        ``path``; returns (file, decomposition, layer -> LayerPattern) (patterns resolved
        here, off the scheduling path: imported ones are hashed)."""
        from ..method.adapter_io import AdapterError, read_adapter
        f = file if file is not None else read_adapter(path, name=name)
        self._check_heads(f)
        d = self._basis_for(f, path)       # outside the lock: may decompose (slow, cached)
        missing = [n for n in f.layers if n not in self.layers]
        if missing:
            raise AdapterError(f"adapts {missing[0]!r}, which the engine's forward does not "
                               "route through FRoD (adaptable: attention/MLP projections)")
        patterns = {n: delta_pattern(delta, d, d.layers[n].category, f.config.seed)
                    for n, delta in f.layers.items()}
        return f, d, patterns

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



    def add(self, name: str, path, file=None) -> None:
        """Register adapter ``name`` from directory ``path`` (read + validated now; ``file``:
        the adapter already parsed from ``path`` by the caller, not read again)."""
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
                f, d, patterns = self._read(name, p, file)
            except AdapterError as e:
                raise type(e)(f"adapter {name!r} ({p}) refused: {e}") from e
            self._register(name, p, f, d, patterns)

    def _register(self, name: str, p: Path, f, d, patterns: dict) -> None:
        with self.lock:
            if name in self.entries:
                raise ValueError(f"adapter {name!r} is already loaded; remove it first")
            if d is not self.decomposition and d.basis == NATIVE_BASIS and (
                    self.decomposition is None or decomposition_category_mode(d.categories)
                    == decomposition_category_mode(self.decomposition.categories)):
                self._adopt(d)            # (a decomposition of the other mode is one more basis)
            e = AdapterInstance(name, p, f, patterns)
            e.decomposition = d
            self.entries[name] = e
            self._host_insert(e)

    def remove(self, name: str) -> None:
        """Unregister ``name``. Requests already bound to its instance keep it (module
        docstring); new requests cannot name it."""
        with self.lock:
            e = self.entries.pop(name, None)
            if e is None:
                raise UnknownAdapterError(name, self.entries)
            self.retire(e)

    def retire(self, e: AdapterInstance) -> None:
        """End instance ``e`` (``remove`` does this for a name; blends call it directly):
        requests bound to it that started keep it, the others end as for a removed adapter."""
        with self.lock:
            e.removed = True
            self.host_lru.pop(e, None)        # no longer evictable: its requests may need it
            if e.slot >= 0 and e.pins == 0:
                self.device_lru.pop(e.slot, None)
            self._drop_if_unused(e)

    def host_file(self, name: str):
        """The parsed file of the current instance of ``name`` (read from its directory again
        if it left the host tier). Raises UnknownAdapterError."""
        with self.lock:
            e = self.entries.get(name)
            if e is None:
                raise UnknownAdapterError(name, self.entries)
            f, path = e.file, e.path
        return f if f is not None else self._read(name, path)[0]

    def virtual(self, name: str, file) -> AdapterInstance:
        """An instance of the in-memory ``file`` under no registered name (module docstring):
        checked against the native decomposition, else against the bases of the adapters
        loaded (a blend of adapters served on another basis or category mode lives in
        theirs); its patterns resolved as for a file read."""
        from ..method.adapter_io import AdapterError, check_against
        with self.lock:
            cands = [self.decomposition]
            for e in self.entries.values():
                if e.decomposition is not None and not any(e.decomposition is c for c in cands):
                    cands.append(e.decomposition)
        first = None
        for d in cands:
            try:
                check_against(file, d)
                break
            except AdapterError as err:
                first = first or err
        else:
            raise first
        patterns = {n: delta_pattern(delta, d, d.layers[n].category, file.config.seed)
                    for n, delta in file.layers.items()}
        inst = AdapterInstance(name, None, file, patterns)
        inst.decomposition = d
        return inst

    def _drop_if_unused(self, e: AdapterInstance) -> None:
        """Free a removed instance's slot and file once no request uses it."""
        if e.removed and e.requests <= 0 and e.pins <= 0:
            e.file = e.patterns = None
            if e.slot >= 0:
                self._free_slot(e.slot)

    def _adopt(self, d) -> None:
        """Switch to a decomposition covering more layers; bases of layers already served must
        be identical (they are: a category's basis depends only on its own weights)."""
        old = self.decomposition
        for name, layer in self.layers.items():
            if layer.slots is None or old is None or name not in old.layers:
                continue
            lb = d.layers.get(name)
            have = layer.slots.bases.get(old.categories[old.layers[name].category].fingerprint)
            if lb is None or (have is not None
                              and not torch.equal(lb.U.to(self.device, self.dtype), have[1])):
                raise ValueError(f"layer {name}: the new base decomposition does not match the "
                                 "one in use; cannot serve both adapters")
        self.decomposition = d
        self.targets = list(d.target_modules)

    # ---- host tier ---------------------------------------------------------------------------
    def _host_insert(self, e: AdapterInstance) -> None:
        self.host_lru[e] = None
        self.host_lru.move_to_end(e)
        while len(self.host_lru) > self.host_capacity:
            victim, _ = self.host_lru.popitem(last=False)
            victim.file = victim.patterns = None
            self.host_evictions_total += 1

    def prefetch(self, e: AdapterInstance | None) -> None:
        """Make sure instance ``e`` is (being) read into the host tier, off the hot path."""
        if e is None:
            return
        with self.lock:
            if e.removed or e.file is not None or e.slot >= 0 or e.loading is not None:
                return
            e.error = None
            e.loading = self._loader.submit(self._background_read, e)

    def _background_read(self, e: AdapterInstance) -> None:
        try:
            f, _, patterns = self._read(e.name, e.path)
            err = None
        except Exception as exc:       # noqa: BLE001 - reported to the waiting requests
            f, patterns = None, None
            err = f"adapter {e.name!r} could not be re-read from {e.path}: {exc}"
        with self.lock:
            e.loading = None
            self.disk_reads_total += 1
            if e.removed:
                return
            if err is not None:
                e.error = err
                return
            e.file, e.patterns = f, patterns
            self._host_insert(e)

    # ---- device tier -------------------------------------------------------------------------
    def acquire(self, e: AdapterInstance | None, resume: bool = False) -> int | None:
        """Pin instance ``e`` on the device for a request. Returns its slot (-1 for the base
        model, ``e`` None), None when it is not ready yet (loading, or every slot pinned);
        raises AdapterUnavailable when it never will be (removed — unless ``resume``, for a
        request that already ran with it, and it is still in memory — or its file went bad)."""
        if e is None:
            return -1
        with self.lock:
            if e.removed and not resume:
                raise AdapterUnavailable(f"adapter {e.name!r} was removed")
            if e.slot >= 0:
                if e.pins == 0:
                    self.device_lru.pop(e.slot, None)
                e.pins += 1
                return e.slot
            if e.removed and e.file is None:
                raise AdapterUnavailable(f"adapter {e.name!r} was removed")
            if e.error is not None:
                err = e.error
                e.error = None          # a later request may retry the read
                raise AdapterUnavailable(err)
            if e.file is None:
                self.prefetch(e)
                return None
            slot = self._free_slot_index()
            if slot is None:
                return None
            self._fill(slot, e)
            e.slot = slot
            e.pins = 1
            self.slot_entry[slot] = e
            if e in self.host_lru:             # (removed and virtual instances are not)
                self.host_lru.move_to_end(e)
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
                    self._drop_if_unused(e)      # else kept resident for its bound requests
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
            self.layers[name].reset_slot(a)
        self.device_lru.pop(a, None)
        e.slot = -1
        self.slot_entry[a] = None
        for head in self.heads.values():
            head.reset_slot(a)

    def _layer(self, name: str, d):
        """The adapted layer ``name`` with decomposition ``d``'s basis registered (slots are
        created with the first basis used); returns (layer, basis key = category fingerprint)."""
        layer = self.layers[name]
        lb = d.layers[name]
        cat = d.categories[lb.category]
        key = cat.fingerprint
        if layer.slots is None or key not in layer.slots.bases:
            V = self._V.get(key)
            if V is None:
                V = self._V[key] = cat.V.to(self.device, self.dtype).contiguous()
            U = lb.U.to(self.device, self.dtype).contiguous()
            l = lb.l.to(self.device, self.dtype)
            if layer.slots is None:
                layer.create_slots(self.A, V, U, l, self.patterns, basis=key)
            else:
                layer.add_basis(key, V, U, l)
        return layer, key

    def _fill(self, a: int, e: AdapterInstance) -> None:
        """Write instance ``e`` into slot ``a`` of every layer it targets (in its basis)."""
        d = e.decomposition or self.decomposition
        for name in e.layers:
            delta = e.file.layers[name]
            layer, key = self._layer(name, d)
            layer.set_slot(a, SlotValues(delta.dl, delta.s, e.patterns[name],
                                         merge=e.name in self.hot, basis=key))
        for hname, head in self.heads.items():       # modules_to_save copies
            if hname in e.file.modules:
                head.set_slot(a, e.file.modules[hname])
            else:
                head.reset_slot(a)
        self.loads_total += 1

    def ensure_host(self, e: AdapterInstance, timeout: float | None = None) -> None:
        """Block until instance ``e`` is in the host tier (used by embed/classify)."""
        self.prefetch(e)
        with self.lock:
            fut = e.loading
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
                "adapter_patterns_cached": len(self.patterns),
                "adapter_evictions_total": self.evictions_total,
                "adapter_host_evictions_total": self.host_evictions_total,
                "adapter_device_loads_total": self.loads_total,
                "adapter_disk_reads_total": self.disk_reads_total,
            }

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
