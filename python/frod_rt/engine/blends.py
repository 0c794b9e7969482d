"""Blended adapters served as virtual adapters (``adapters=[{"a": .5, "b": .5}]``).

A request may name a blend ``{adapter: weight, ...}`` instead of one adapter. The engine
builds the blend's values once (``frod_rt.method.blend.blend_adapters``: per layer
``dl = sum w_a dl_a``, ``s = sum w_a s_a`` on the shared pattern) and makes them an adapter
*instance* of the manager (``AdapterManager.virtual``): unregistered (no name in the registry,
so not listed among the adapters), held in memory (never evicted from the host tier), taking a
device slot like any other instance. Requests bind to it as to any adapter instance, so its
rows run in the same mixed batch through the same kernels.

Blends are cached by their canonical spec (sorted names and weights), at most ``capacity``
of them: building a new one first retires the least recently used blends that no request is
bound to (so the cap is exceeded only while more distinct blends are in use at once).
Removing a component adapter retires every blend containing it, with the instance semantics
of a removed adapter (requests that started finish with it, queued ones end with "adapter ...
was removed").
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from ..method.blend import blend_adapters, normalize_weights
from .errors import UnknownAdapterError

PREFIX = "blend/"          # adapter names cannot contain '/', so a virtual name never clashes


def blend_name(spec) -> str:
    """The virtual adapter name of a canonical spec ((name, weight), ...)."""
    return PREFIX + ",".join(f"{n}={w!r}" for n, w in spec)


class BlendCache:
    """The engine's blended virtual adapters (see the module docstring).

    Args:
        pool: the ``AdapterManager`` (``host_file``, ``virtual``, ``bind``, ``retire``).
        capacity: blends kept; beyond it the least recently used unused ones are retired
            when a new blend is built.
    """

    def __init__(self, pool, capacity: int = 32):
        if capacity < 1:
            raise ValueError(f"blend_cache_capacity: expected >= 1, got {capacity}")
        self.pool = pool
        self.capacity = capacity
        self._lock = threading.Lock()
        self._blends: OrderedDict[tuple, object] = OrderedDict()   # spec -> AdapterInstance
        self.builds_total = 0

    def spec(self, weights) -> tuple:
        """Validate ``{name: weight}`` -> canonical spec. ValueError for bad weights,
        UnknownAdapterError for a name that is not loaded."""
        spec = normalize_weights(weights)
        for n, _ in spec:
            if n not in self.pool:
                raise UnknownAdapterError(n, self.pool.names())
        return spec

    def bind(self, spec: tuple):
        """The blend's adapter instance, built now if needed, bound to one more request
        (``AdapterManager.bind``; the request's end unbinds it). Raises BlendError when the
        adapters cannot be blended, UnknownAdapterError when one was removed meanwhile."""
        with self._lock:
            e = self._blends.get(spec)
            if e is None:
                self._evict(self.capacity - 1)
                name = blend_name(spec)
                parts = [(self.pool.host_file(n), w) for n, w in spec]
                e = self.pool.virtual(name, blend_adapters(parts, name=name))
                self._blends[spec] = e
                self.builds_total += 1
            self._blends.move_to_end(spec)
            return self.pool.bind(e)

    def drop_component(self, adapter: str) -> None:
        """Retire every blend that contains ``adapter`` (it is being removed): requests that
        started keep computing with it, queued ones end as for a removed adapter."""
        with self._lock:
            for spec in [s for s in self._blends if any(n == adapter for n, _ in s)]:
                self.pool.retire(self._blends.pop(spec))

    def _evict(self, keep: int) -> None:
        """Retire least recently used blends no request uses until at most ``keep`` remain
        (blends in use stay, so the cache exceeds its capacity only while they are used)."""
        for spec in list(self._blends):
            if len(self._blends) <= keep:
                return
            e = self._blends[spec]
            if e.requests <= 0 and e.pins <= 0:
                self.pool.retire(self._blends.pop(spec))

    def __len__(self) -> int:
        return len(self._blends)
