"""Sparse off-diagonal index patterns for S (DESIGN.md 1.2), drawn without an n x n meshgrid.

The pattern of a category depends only on (fingerprint, category, k): every adapter trained
on one base shares it, so per-adapter storage is values only. Off-diagonal position ``p`` in
``[0, n(n-1))`` maps to ``row = p // (n-1)``, ``c = p % (n-1)``, ``col = c + (c >= row)``; this
map is increasing in ``p``, so sorting positions sorts the pattern by (row, col).
"""
from __future__ import annotations

import hashlib

import torch

__all__ = ["pattern_size", "sparse_pattern", "pattern_seed"]


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
    p = _sample_positions(N, k, gen)
    rows = p // (n - 1)
    c = p % (n - 1)
    cols = c + (c >= rows).to(torch.int64)
    return rows.to(torch.int32), cols.to(torch.int32)
