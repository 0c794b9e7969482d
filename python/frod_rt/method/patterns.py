"""Sparse off-diagonal index patterns for S (DESIGN.md 1.2), drawn without an n x n meshgrid.

The pattern of a category depends only on (fingerprint, category, k): every adapter trained
on one base shares it, so per-adapter storage is values only. Off-diagonal position ``p`` in
``[0, n(n-1))`` maps to ``row = p // (n-1)``, ``c = p % (n-1)``, ``col = c + (c >= row)``; this
map is increasing in ``p``, so sorting positions sorts the pattern by (row, col).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch

from .config import pattern_seed_string

__all__ = ["pattern_size", "sparse_pattern", "pattern_seed", "positions_to_pairs",
           "LayerPattern", "layer_pattern", "own_pattern", "delta_pattern"]


def pattern_size(n: int, sparse_rate: float, rounding: str = "round") -> int:
    """``k = round(n*n*sparse_rate)`` (``rounding="floor"``: ``floor``, as PEFT and the
    official code), capped at the ``n*(n-1)`` off-diagonal positions."""
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not (0.0 <= float(sparse_rate) <= 1.0):
        raise ValueError(f"sparse_rate must be in [0, 1], got {sparse_rate!r}")
    n = int(n)
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    k = n * n * float(sparse_rate)
    return min(int(round(k)) if rounding == "round" else int(k), n * (n - 1))


def pattern_seed(fingerprint: str, category: str, k: int) -> int:
    """63-bit generator seed: the first 8 bytes of sha256("fingerprint|category|k")."""
    digest = hashlib.sha256(f"{fingerprint}|{category}|{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _sample_positions(N: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct integers of [0, N), uniformly without replacement, sorted ascending.

    Dense regime (k > N/2): a permutation of N (N < 2k, so memory stays O(k)). Sparse regime:
    draw batches with torch.randint and keep values in order of first appearance (sequential
    rejection of duplicates, hence uniform) until k are distinct.
    """
    if 2 * k > N:
        return torch.randperm(N, generator=gen, dtype=torch.int64)[:k].sort().values
    drawn = torch.empty(0, dtype=torch.int64)
    while True:
        missing = k - (torch.unique(drawn).numel() if drawn.numel() else 0)
        if missing <= 0:
            break
        # expected duplicates are at most ~k/N of the draws: 25% slack + a constant
        m = missing + missing // 4 + 16
        drawn = torch.cat([drawn, torch.randint(0, N, (m,), generator=gen, dtype=torch.int64)])
    uniq, inverse = torch.unique(drawn, return_inverse=True)
    first = torch.full((uniq.numel(),), drawn.numel(), dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, torch.arange(drawn.numel()), reduce="amin")
    keep = uniq[first.argsort()[:k]]
    return keep.sort().values


def sparse_pattern(fingerprint: str, category: str, n: int, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-entry off-diagonal pattern of an ``n x n`` S.

    Args:
        fingerprint: the seed string (frod_rt uses the *category* fingerprint of the base,
            see ``Decomposition.pattern_seed_key``; FrodConfig mixes in a non-zero seed).
        category: category key.
        n: S is n x n; k: number of entries, 0 <= k <= n*(n-1).

    Returns:
        rows, cols: int32 (k,) on CPU, distinct pairs with rows != cols, sorted by (row, col);
        the same on every call, machine and torch version using the same generator algorithm.
    """
    n, k = int(n), int(k)
    if n < 0 or k < 0:
        raise ValueError(f"sparse_pattern: n and k must be >= 0, got n={n}, k={k}")
    N = n * (n - 1)
    if k > N:
        raise ValueError(f"sparse_pattern: k={k} exceeds the {N} off-diagonal positions of a "
                         f"{n}x{n} matrix")
    if k == 0:
        z = torch.empty(0, dtype=torch.int32)
        return z, z.clone()
    gen = torch.Generator(device="cpu").manual_seed(pattern_seed(fingerprint, category, k))
    return positions_to_pairs(_sample_positions(N, k, gen), n)


def positions_to_pairs(p: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-diagonal positions ``p`` in ``[0, n(n-1))`` (int64) -> int32 (rows, cols) with
    ``row = p // (n-1)``, ``col = c + (c >= row)``, ``c = p % (n-1)`` (monotone in ``p``)."""
    rows = p // (n - 1)
    c = p % (n - 1)
    cols = c + (c >= rows).to(torch.int64)
    return rows.to(torch.int32), cols.to(torch.int32)


@dataclass(frozen=True, eq=False)
class LayerPattern:
    """The sparse pattern of one adapter layer: int32 (k,) ``rows``/``cols`` on the CPU and a
    ``key`` that identifies the *content* (equal keys <=> equal patterns), so caches can be
    keyed by it (never by object identity). Treat the tensors as read-only: they are shared."""
    key: tuple
    rows: torch.Tensor
    cols: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.rows.shape[0])


@functools.lru_cache(maxsize=64)
def _default_pattern(seed_string: str, category: str, n: int, k: int) -> LayerPattern:
    rows, cols = sparse_pattern(seed_string, category, n, k)
    return LayerPattern(("default", seed_string, category, n, k), rows, cols)


def layer_pattern(decomposition, category: str, seed: int, k: int) -> LayerPattern:
    """The default pattern of an adapter layer of ``category`` with pattern seed ``seed``
    (``FrodConfig.seed``) and ``k`` entries: ``sparse_pattern(pattern_seed_string(category
    fingerprint, seed), category, in, k)``. Every adapter with the same (seed, k) on one base
    shares it. ``decomposition``: a :class:`Decomposition` (its ``pattern_seed_key`` and the
    category's ``in_features``). Results are cached (bounded LRU, keyed by content)."""
    n = decomposition.categories[category].in_features
    return _default_pattern(pattern_seed_string(decomposition.pattern_seed_key(category), int(seed)),
                            category, int(n), int(k))


def own_pattern(rows: torch.Tensor, cols: torch.Tensor) -> LayerPattern:
    """A pattern given explicitly (imported adapters), keyed by a sha256 of its content."""
    r = rows.detach().to("cpu", torch.int32).contiguous()
    c = cols.detach().to("cpu", torch.int32).contiguous()
    if r.shape != c.shape or r.dim() != 1:
        raise ValueError(f"pattern rows/cols: expected two (k,) tensors, got {tuple(r.shape)} "
                         f"and {tuple(c.shape)}")
    h = hashlib.sha256(r.numpy().tobytes())
    h.update(c.numpy().tobytes())
    return LayerPattern(("own", int(r.shape[0]), h.hexdigest()), r, c)


def delta_pattern(delta, decomposition, category: str, seed: int) -> LayerPattern:
    """The pattern of one adapter layer given its ``LayerDelta``: the delta's own rows/cols
    when it carries them (imported adapters), else ``layer_pattern(decomposition, category,
    seed, k)`` with ``k = len(delta.s)``."""
    if delta.rows is not None:
        return own_pattern(delta.rows, delta.cols)
    return layer_pattern(decomposition, category, seed, int(delta.s.shape[0]))
